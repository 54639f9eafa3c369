#include "tests/integration/json_lite.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"

namespace sluice::integration {

class JsonParser {
 public:
  explicit JsonParser(absl::string_view text) : text_(text) {}

  bool ParseDocument(JsonValue* out) {
    if (!ParseValue(out, 0)) return false;
    SkipSpace();
    return pos_ == text_.size();
  }

 private:
  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  bool Consume(absl::string_view literal) {
    if (text_.substr(pos_, literal.size()) != literal) return false;
    pos_ += literal.size();
    return true;
  }

  bool ParseValue(JsonValue* out, int depth) {
    if (depth > JsonValue::kMaxDepth) return false;
    SkipSpace();
    if (pos_ >= text_.size()) return false;
    char c = text_[pos_];
    if (c == '{') return ParseObject(out, depth);
    if (c == '[') return ParseArray(out, depth);
    if (c == '"') {
      out->type_ = JsonValue::Type::kString;
      return ParseString(&out->string_);
    }
    if (Consume("true")) {
      out->type_ = JsonValue::Type::kBool;
      out->bool_ = true;
      return true;
    }
    if (Consume("false")) {
      out->type_ = JsonValue::Type::kBool;
      return true;
    }
    if (Consume("null")) {
      out->type_ = JsonValue::Type::kNull;
      return true;
    }
    return ParseNumber(out);
  }

  bool ParseNumber(JsonValue* out) {
    size_t start = pos_;
    if (pos_ < text_.size() && text_[pos_] == '-') ++pos_;
    size_t digits = pos_;
    while (pos_ < text_.size() &&
           (absl::ascii_isdigit(text_[pos_]) || text_[pos_] == '.' || text_[pos_] == 'e' ||
            text_[pos_] == 'E' || text_[pos_] == '+' || text_[pos_] == '-')) {
      ++pos_;
    }
    if (pos_ == digits) return false;
    out->type_ = JsonValue::Type::kNumber;
    out->string_ = std::string(text_.substr(start, pos_ - start));
    double ignored;
    return absl::SimpleAtod(out->string_, &ignored);
  }

  static bool HexValue(char c, int* v) {
    if (c >= '0' && c <= '9') {
      *v = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      *v = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      *v = c - 'A' + 10;
    } else {
      return false;
    }
    return true;
  }

  bool ParseHex4(uint32_t* code) {
    if (pos_ + 4 > text_.size()) return false;
    *code = 0;
    for (int i = 0; i < 4; ++i) {
      int v;
      if (!HexValue(text_[pos_ + i], &v)) return false;
      *code = *code * 16 + v;
    }
    pos_ += 4;
    return true;
  }

  static void AppendUtf8(uint32_t code, std::string* out) {
    if (code < 0x80) {
      out->push_back(static_cast<char>(code));
    } else if (code < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (code >> 6)));
      out->push_back(static_cast<char>(0x80 | (code & 0x3F)));
    } else if (code < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (code >> 12)));
      out->push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (code & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (code >> 18)));
      out->push_back(static_cast<char>(0x80 | ((code >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (code & 0x3F)));
    }
  }

  bool ParseString(std::string* out) {
    if (!Consume("\"")) return false;
    out->clear();
    while (pos_ < text_.size()) {
      char c = text_[pos_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (pos_ >= text_.size()) return false;
      char e = text_[pos_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out->push_back(e);
          break;
        case 'b':
          out->push_back('\b');
          break;
        case 'f':
          out->push_back('\f');
          break;
        case 'n':
          out->push_back('\n');
          break;
        case 'r':
          out->push_back('\r');
          break;
        case 't':
          out->push_back('\t');
          break;
        case 'u': {
          uint32_t code;
          if (!ParseHex4(&code)) return false;
          if (code >= 0xD800 && code < 0xDC00 && Consume("\\u")) {
            uint32_t low;
            if (!ParseHex4(&low) || low < 0xDC00 || low > 0xDFFF) return false;
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          }
          AppendUtf8(code, out);
          break;
        }
        default:
          return false;
      }
    }
    return false;
  }

  bool ParseArray(JsonValue* out, int depth) {
    ++pos_;  // '['
    out->type_ = JsonValue::Type::kArray;
    SkipSpace();
    if (Consume("]")) return true;
    while (true) {
      JsonValue element;
      if (!ParseValue(&element, depth + 1)) return false;
      out->array_.push_back(std::move(element));
      SkipSpace();
      if (Consume("]")) return true;
      if (!Consume(",")) return false;
    }
  }

  bool ParseObject(JsonValue* out, int depth) {
    ++pos_;  // '{'
    out->type_ = JsonValue::Type::kObject;
    SkipSpace();
    if (Consume("}")) return true;
    while (true) {
      SkipSpace();
      std::string key;
      if (!ParseString(&key)) return false;
      SkipSpace();
      if (!Consume(":")) return false;
      JsonValue value;
      if (!ParseValue(&value, depth + 1)) return false;
      out->members_.emplace_back(std::move(key), std::move(value));
      SkipSpace();
      if (Consume("}")) return true;
      if (!Consume(",")) return false;
    }
  }

  absl::string_view text_;
  size_t pos_ = 0;
};

std::optional<JsonValue> JsonValue::Parse(absl::string_view text) {
  JsonValue value;
  JsonParser parser(text);
  if (!parser.ParseDocument(&value)) return std::nullopt;
  return value;
}

const JsonValue* JsonValue::Get(absl::string_view key) const {
  if (type_ != Type::kObject) return nullptr;
  for (const auto& [name, value] : members_) {
    if (name == key) return &value;
  }
  return nullptr;
}

std::optional<int64_t> JsonValue::AsInt64() const {
  int64_t v;
  if (type_ != Type::kNumber || !absl::SimpleAtoi(string_, &v)) {
    return std::nullopt;
  }
  return v;
}

std::optional<std::string> JsonValue::GetString(absl::string_view key) const {
  const JsonValue* v = Get(key);
  if (v == nullptr || v->type_ != Type::kString) return std::nullopt;
  return v->string_;
}

std::optional<int64_t> JsonValue::GetInt(absl::string_view key) const {
  const JsonValue* v = Get(key);
  if (v == nullptr) return std::nullopt;
  return v->AsInt64();
}

bool JsonValue::GetBool(absl::string_view key) const {
  const JsonValue* v = Get(key);
  return v != nullptr && v->boolean();
}

}  // namespace sluice::integration
