// ResponseScanner::JsonTokenizer (core/observe/usage_scanner.h): the
// incremental JSON state machine both scanners run their bytes through.

#include <cstring>

#include "core/observe/usage_scanner.h"

namespace sluice::core {
namespace {

constexpr const char* kLiterals[] = {"true", "false", "null"};
constexpr uint8_t kLiteralTrue = 0;
constexpr uint8_t kLiteralNull = 2;

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

const char* Find(const char* p, const char* end, char c) {
  const void* hit = std::memchr(p, c, static_cast<size_t>(end - p));
  return hit != nullptr ? static_cast<const char*>(hit) : end;
}

bool Equals(const char* key, size_t len, std::string_view name) {
  return len == name.size() && std::memcmp(key, name.data(), len) == 0;
}

// Ollama decodes requests with Go's encoding/json, which matches a key to
// a field case-insensitively under Unicode simple folding: "Model", and
// "stream" spelled with U+017F (long s), name its fields too. A request
// key is folded the same way here so that sluice reads the model Ollama
// will load; besides ASCII, only U+017F (s) and U+212A (Kelvin sign, k)
// fold onto ASCII letters.
bool FoldEquals(const char* key, size_t len, std::string_view name) {
  size_t i = 0;
  for (char want : name) {
    if (i >= len) return false;
    char c = key[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c == want) {
      ++i;
    } else if (want == 's' && len - i >= 2 && std::memcmp(key + i, "\xC5\xBF", 2) == 0) {
      i += 2;
    } else if (want == 'k' && len - i >= 3 && std::memcmp(key + i, "\xE2\x84\xAA", 3) == 0) {
      i += 3;
    } else {
      return false;
    }
  }
  return i == len;
}

// A cut at kMaxModelBytes may split a UTF-8 sequence: drop its head.
size_t TrimPartialUtf8(const char* s, size_t len) {
  size_t lead = len;
  for (size_t back = 1; back <= 4 && back <= len; ++back) {
    unsigned char c = static_cast<unsigned char>(s[len - back]);
    if ((c & 0xC0) != 0x80) {
      lead = len - back;
      break;
    }
  }
  if (lead == len) return len;  // only continuation bytes: leave as is
  unsigned char c = static_cast<unsigned char>(s[lead]);
  size_t need = c < 0x80             ? 1
                : (c & 0xE0) == 0xC0 ? 2
                : (c & 0xF0) == 0xE0 ? 3
                : (c & 0xF8) == 0xF0 ? 4
                                     : 1;
  return len - lead < need ? lead : len;
}

}  // namespace

void ResponseScanner::JsonTokenizer::Reset(Mode mode) {
  *this = JsonTokenizer();
  mode_ = mode;
}

ResponseScanner::JsonTokenizer::Path ResponseScanner::JsonTokenizer::KeyPath() const {
  if (key_long_ || depth_ == 0) return Path::kNone;
  const char* k = key_;
  size_t n = key_len_;
  switch (path_[depth_ - 1]) {
    case Path::kRoot:
      if (Equals(k, n, "model")) return Path::kModel;
      if (Equals(k, n, "response") || Equals(k, n, "thinking")) return Path::kText;
      if (Equals(k, n, "message")) return Path::kMessage;
      if (Equals(k, n, "choices")) return Path::kChoices;
      if (Equals(k, n, "usage")) return Path::kUsage;
      if (Equals(k, n, "prompt_eval_count")) return Path::kPromptCount;
      if (Equals(k, n, "eval_count")) return Path::kCompletionCount;
      if (Equals(k, n, "load_duration")) return Path::kLoadDuration;
      return Path::kNone;
    case Path::kMessage:
      if (Equals(k, n, "content") || Equals(k, n, "thinking")) return Path::kText;
      return Path::kNone;
    case Path::kChoice:
      if (Equals(k, n, "text")) return Path::kText;
      if (Equals(k, n, "delta")) return Path::kDelta;
      if (Equals(k, n, "message")) return Path::kChoiceMessage;
      return Path::kNone;
    case Path::kDelta:
      if (Equals(k, n, "content") || Equals(k, n, "reasoning")) return Path::kText;
      return Path::kNone;
    case Path::kChoiceMessage:
      if (Equals(k, n, "content")) return Path::kText;
      return Path::kNone;
    case Path::kUsage:
      if (Equals(k, n, "prompt_tokens")) return Path::kPromptCount;
      if (Equals(k, n, "completion_tokens")) return Path::kCompletionCount;
      return Path::kNone;
    case Path::kRequestRoot:
      if (FoldEquals(k, n, "model")) return Path::kModel;
      if (FoldEquals(k, n, "stream")) return Path::kStream;
      return Path::kNone;
    default:
      return Path::kNone;
  }
}

void ResponseScanner::JsonTokenizer::AfterValue() {
  role_ = Path::kNone;
  state_ = depth_ == 0 ? State::kDone : State::kAfter;
}

void ResponseScanner::JsonTokenizer::Open(bool array) {
  if (depth_ == kMaxDepth) {
    skip_depth_ = 1;
    state_ = State::kSkip;
    return;
  }
  Path path = Path::kNone;
  switch (role_) {
    case Path::kChoices:
      if (array) path = role_;
      break;
    case Path::kRoot:
    case Path::kRequestRoot:
    case Path::kMessage:
    case Path::kChoice:
    case Path::kDelta:
    case Path::kChoiceMessage:
    case Path::kUsage:
      if (!array) path = role_;
      break;
    default:
      break;
  }
  path_[depth_] = path;
  if (array) {
    array_bits_ = static_cast<uint16_t>(array_bits_ | (1u << depth_));
  } else {
    array_bits_ = static_cast<uint16_t>(array_bits_ & ~(1u << depth_));
  }
  ++depth_;
  if (array) {
    state_ = State::kValueOrEnd;
    role_ = path == Path::kChoices ? Path::kChoice : Path::kNone;
  } else {
    state_ = State::kKeyOrEnd;
    role_ = Path::kNone;
  }
}

void ResponseScanner::JsonTokenizer::Close() {
  --depth_;
  AfterValue();
}

void ResponseScanner::JsonTokenizer::StartString(Sink sink) {
  sink_ = sink;
  high_surrogate_ = 0;
  if (sink == Sink::kKey) {
    key_len_ = 0;
    key_long_ = false;
  } else if (sink == Sink::kModel) {
    model_len_ = 0;
    model_cut_ = false;
  }
  state_ = State::kString;
}

void ResponseScanner::JsonTokenizer::StartValue(char c) {
  switch (c) {
    case '{':
      Open(false);
      return;
    case '[':
      Open(true);
      return;
    case '"': {
      Sink sink = Sink::kDiscard;
      if (role_ == Path::kModel && (mode_ == Mode::kRequest || !model_done_)) {
        sink = Sink::kModel;
      } else if (role_ == Path::kText && !text_) {
        sink = Sink::kText;
      }
      StartString(sink);
      return;
    }
    case 't':
    case 'f':
    case 'n':
      literal_ = c == 't' ? 0 : c == 'f' ? 1 : 2;
      literal_pos_ = 1;
      state_ = State::kLiteral;
      return;
    case '-':
      num_negative_ = true;
      num_integer_ = true;
      num_overflow_ = false;
      num_value_ = 0;
      state_ = State::kNumMinus;
      return;
    default:
      if (c >= '0' && c <= '9') {
        num_negative_ = false;
        num_integer_ = true;
        num_overflow_ = false;
        num_value_ = static_cast<uint64_t>(c - '0');
        state_ = c == '0' ? State::kNumZero : State::kNumInt;
        return;
      }
      state_ = State::kBroken;
  }
}

void ResponseScanner::JsonTokenizer::EndNumber() {
  if (num_integer_ && !num_negative_ && !num_overflow_) {
    if (role_ == Path::kPromptCount) prompt_tokens_ = static_cast<int64_t>(num_value_);
    if (role_ == Path::kCompletionCount) completion_tokens_ = static_cast<int64_t>(num_value_);
    if (role_ == Path::kLoadDuration) load_duration_ = static_cast<int64_t>(num_value_);
  }
  AfterValue();
}

void ResponseScanner::JsonTokenizer::Emit(char c) {
  if (sink_ == Sink::kKey) {
    if (key_len_ < kMaxKeyBytes) {
      key_[key_len_++] = c;
    } else {
      key_long_ = true;
    }
  } else if (sink_ == Sink::kModel) {
    if (model_len_ < kMaxModelBytes) {
      model_[model_len_++] = c;
    } else {
      model_cut_ = true;
    }
  }
}

void ResponseScanner::JsonTokenizer::EmitCodePoint(uint32_t cp) {
  if (cp < 0x80) {
    Emit(static_cast<char>(cp));
  } else if (cp < 0x800) {
    Emit(static_cast<char>(0xC0 | (cp >> 6)));
    Emit(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    Emit(static_cast<char>(0xE0 | (cp >> 12)));
    Emit(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    Emit(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    Emit(static_cast<char>(0xF0 | (cp >> 18)));
    Emit(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    Emit(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    Emit(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// An unpaired surrogate decodes to U+FFFD, as Go's encoding/json does.
void ResponseScanner::JsonTokenizer::FlushSurrogate() {
  if (high_surrogate_ != 0) {
    high_surrogate_ = 0;
    EmitCodePoint(0xFFFD);
  }
}

void ResponseScanner::JsonTokenizer::EmitCodeUnit(uint32_t cu) {
  if (sink_ != Sink::kKey && sink_ != Sink::kModel) return;
  if (cu >= 0xDC00 && cu <= 0xDFFF && high_surrogate_ != 0) {
    uint32_t cp =
        0x10000 + ((static_cast<uint32_t>(high_surrogate_) - 0xD800) << 10) + (cu - 0xDC00);
    high_surrogate_ = 0;
    EmitCodePoint(cp);
    return;
  }
  FlushSurrogate();
  if (cu >= 0xD800 && cu <= 0xDBFF) {
    high_surrogate_ = static_cast<uint16_t>(cu);
  } else if (cu >= 0xDC00 && cu <= 0xDFFF) {
    EmitCodePoint(0xFFFD);
  } else {
    EmitCodePoint(cu);
  }
}

void ResponseScanner::JsonTokenizer::EndString(Yield* yield) {
  FlushSurrogate();
  switch (sink_) {
    case Sink::kKey:
      role_ = KeyPath();
      state_ = State::kColon;
      return;
    case Sink::kModel:
      if (model_cut_) model_len_ = static_cast<uint8_t>(TrimPartialUtf8(model_, model_len_));
      model_done_ = true;
      if (mode_ == Mode::kRequest) *yield = Yield::kModel;
      break;
    default:
      break;
  }
  if (skip_depth_ > 0) {
    state_ = State::kSkip;
  } else {
    AfterValue();
  }
}

// The steps of Run, one per state (or group of states). Each reads the byte
// it is given (or, for a string, a run of bytes) and moves state_ on. They
// are inline and in this file so that Run stays one loop over the bytes.

// Returns where reading goes on. `quote` caches the next '"' at or after
// the current position (or end), kept across escapes so that a string with
// many escapes ("\/" in base64) is still searched once.
inline const char* ResponseScanner::JsonTokenizer::ReadString(const char* p, const char* end,
                                                              const char** quote, Yield* yield) {
  // Skipped strings (and the rest of a key or model past its limit) are
  // searched with memchr: request bodies carry megabytes of base64.
  if (sink_ == Sink::kDiscard || (sink_ == Sink::kKey && key_long_) ||
      (sink_ == Sink::kModel && model_cut_)) {
    if (*quote == nullptr || *quote < p) *quote = Find(p, end, '"');
    const char* backslash = Find(p, *quote, '\\');
    if (backslash != *quote) {
      state_ = State::kEscape;
      return backslash + 1;
    }
    if (*quote == end) return end;
    EndString(yield);
    return *quote + 1;
  }
  char c = *p++;
  if (c == '"') {
    EndString(yield);
    return p;
  }
  if (sink_ == Sink::kText) {
    // Only "is it non-empty" matters: the rest is skipped.
    text_ = true;
    sink_ = Sink::kDiscard;
  }
  if (c == '\\') {
    state_ = State::kEscape;
  } else {
    FlushSurrogate();
    Emit(c);
  }
  return p;
}

inline void ResponseScanner::JsonTokenizer::ReadEscape(char c) {
  char out;
  switch (c) {
    case '"':
    case '\\':
    case '/':
      out = c;
      break;
    case 'b':
      out = '\b';
      break;
    case 'f':
      out = '\f';
      break;
    case 'n':
      out = '\n';
      break;
    case 'r':
      out = '\r';
      break;
    case 't':
      out = '\t';
      break;
    case 'u':
      hex_count_ = 0;
      hex_value_ = 0;
      state_ = State::kHex;
      return;
    default:
      state_ = State::kBroken;
      return;
  }
  if (sink_ == Sink::kKey || sink_ == Sink::kModel) {
    FlushSurrogate();
    Emit(out);
  }
  state_ = State::kString;
}

inline void ResponseScanner::JsonTokenizer::ReadHexDigit(char c) {
  int d = HexDigit(c);
  if (d < 0) {
    state_ = State::kBroken;
    return;
  }
  hex_value_ = static_cast<uint16_t>((hex_value_ << 4) | d);
  if (++hex_count_ == 4) {
    EmitCodeUnit(hex_value_);
    state_ = State::kString;
  }
}

inline void ResponseScanner::JsonTokenizer::ReadStart(char c) {
  if (IsSpace(c)) return;
  if (c != '{') {
    state_ = State::kBroken;  // an event is an object
    return;
  }
  role_ = mode_ == Mode::kRequest ? Path::kRequestRoot : Path::kRoot;
  Open(false);
}

// kValue, kValueOrEnd.
inline void ResponseScanner::JsonTokenizer::ReadValue(char c) {
  if (IsSpace(c)) return;
  if (c == ']' && state_ == State::kValueOrEnd) {
    Close();
  } else {
    StartValue(c);
  }
}

// kKeyOrEnd, kKey.
inline void ResponseScanner::JsonTokenizer::ReadKey(char c) {
  if (IsSpace(c)) return;
  if (c == '"') {
    StartString(Sink::kKey);
  } else if (c == '}' && state_ == State::kKeyOrEnd) {
    Close();
  } else {
    state_ = State::kBroken;
  }
}

inline void ResponseScanner::JsonTokenizer::ReadColon(char c) {
  if (IsSpace(c)) return;
  state_ = c == ':' ? State::kValue : State::kBroken;
}

inline void ResponseScanner::JsonTokenizer::ReadAfterValue(char c) {
  if (IsSpace(c)) return;
  bool in_array = (array_bits_ >> (depth_ - 1)) & 1;
  if (c == ',') {
    if (in_array) {
      state_ = State::kValue;
      role_ = path_[depth_ - 1] == Path::kChoices ? Path::kChoice : Path::kNone;
    } else {
      state_ = State::kKey;
    }
  } else if (c == (in_array ? ']' : '}')) {
    Close();
  } else {
    state_ = State::kBroken;
  }
}

// The kNum* states. Returns false when c is not part of the number: the
// number ended and c is read again in the state after the value.
inline bool ResponseScanner::JsonTokenizer::ReadNumber(char c) {
  bool digit = c >= '0' && c <= '9';
  State next = State::kBroken;
  bool ends = false;  // c is not part of the number
  switch (state_) {
    case State::kNumMinus:
      if (digit) next = c == '0' ? State::kNumZero : State::kNumInt;
      break;
    case State::kNumZero:
    case State::kNumInt:
      if (digit && state_ == State::kNumInt) {
        next = State::kNumInt;
      } else if (c == '.') {
        next = State::kNumDot;
      } else if (c == 'e' || c == 'E') {
        next = State::kNumExp;
      } else {
        ends = true;
      }
      break;
    case State::kNumDot:
      if (digit) next = State::kNumFrac;
      break;
    case State::kNumFrac:
      if (digit) {
        next = State::kNumFrac;
      } else if (c == 'e' || c == 'E') {
        next = State::kNumExp;
      } else {
        ends = true;
      }
      break;
    case State::kNumExp:
      if (digit) {
        next = State::kNumExpDigits;
      } else if (c == '+' || c == '-') {
        next = State::kNumExpSign;
      }
      break;
    case State::kNumExpSign:
      if (digit) next = State::kNumExpDigits;
      break;
    default:  // kNumExpDigits
      if (digit) {
        next = State::kNumExpDigits;
      } else {
        ends = true;
      }
      break;
  }
  if (ends) {
    EndNumber();
    return false;
  }
  if (next == State::kNumDot || next == State::kNumExp) num_integer_ = false;
  if (digit && (next == State::kNumInt || next == State::kNumZero)) {
    uint64_t d = static_cast<uint64_t>(c - '0');
    if (num_value_ > (static_cast<uint64_t>(INT64_MAX) - d) / 10) {
      num_overflow_ = true;
    } else {
      num_value_ = num_value_ * 10 + d;
    }
  }
  state_ = next;
  return true;
}

inline void ResponseScanner::JsonTokenizer::ReadLiteral(char c, Yield* yield) {
  const char* literal = kLiterals[literal_];
  if (c != literal[literal_pos_]) {
    state_ = State::kBroken;
    return;
  }
  if (literal[++literal_pos_] != '\0') return;
  if (role_ == Path::kStream && literal_ != kLiteralNull) {
    stream_ = literal_ == kLiteralTrue;
    *yield = Yield::kStream;
  }
  AfterValue();
}

// kSkip: inside a container nested deeper than kMaxDepth, only strings and
// brackets matter.
inline void ResponseScanner::JsonTokenizer::ReadSkipped(char c) {
  if (c == '"') {
    StartString(Sink::kDiscard);
  } else if (c == '{' || c == '[') {
    ++skip_depth_;
  } else if (c == '}' || c == ']') {
    if (--skip_depth_ == 0) AfterValue();
  }
}

ResponseScanner::JsonTokenizer::Yield ResponseScanner::JsonTokenizer::Run(const char** pp,
                                                                          const char* end) {
  const char* p = *pp;
  const char* quote = nullptr;  // see ReadString
  Yield yield = Yield::kNone;
  while (p < end && yield == Yield::kNone) {
    switch (state_) {
      case State::kBroken:
        p = end;
        break;
      case State::kString:
        p = ReadString(p, end, &quote, &yield);
        break;
      case State::kEscape:
        ReadEscape(*p++);
        break;
      case State::kHex:
        ReadHexDigit(*p++);
        break;
      case State::kStart:
        ReadStart(*p++);
        break;
      case State::kValue:
      case State::kValueOrEnd:
        ReadValue(*p++);
        break;
      case State::kKeyOrEnd:
      case State::kKey:
        ReadKey(*p++);
        break;
      case State::kColon:
        ReadColon(*p++);
        break;
      case State::kAfter:
        ReadAfterValue(*p++);
        break;
      case State::kDone:
        if (!IsSpace(*p++)) state_ = State::kBroken;
        break;
      case State::kNumMinus:
      case State::kNumZero:
      case State::kNumInt:
      case State::kNumDot:
      case State::kNumFrac:
      case State::kNumExp:
      case State::kNumExpSign:
      case State::kNumExpDigits:
        if (ReadNumber(*p)) ++p;
        break;
      case State::kLiteral:
        ReadLiteral(*p++, &yield);
        break;
      case State::kSkip:
        ReadSkipped(*p++);
        break;
    }
  }
  *pp = p;
  return yield;
}

}  // namespace sluice::core
