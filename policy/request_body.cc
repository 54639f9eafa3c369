// RequestBodyReader (request_body.h): an incremental JSON reader that keeps
// only the fields the model policy looks at, matched as Go's encoding/json
// matches them, and skips everything else at memchr-like speed.

#include "policy/request_body.h"

#include <cstdlib>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

#ifdef __SSE2__
#include <emmintrin.h>
#endif

namespace sluice::policy {
namespace {

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The first byte in [p, end) that a string cannot pass over: '"', '\\' or
// a control character (< 0x20, which JSON forbids raw in strings).
const char* StringStop(const char* p, const char* end) {
#ifdef __SSE2__
  const __m128i quote = _mm_set1_epi8('"');
  const __m128i backslash = _mm_set1_epi8('\\');
  const __m128i space = _mm_set1_epi8(0x20);
  while (end - p >= 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    // Unsigned v < 0x20: min(v, 0x1f) == v.
    const __m128i ctl = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
    const __m128i hit =
        _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)), ctl);
    const int mask = _mm_movemask_epi8(hit);
    if (mask != 0) return p + __builtin_ctz(static_cast<unsigned>(mask));
    p += 16;
  }
  (void)space;
#endif
  for (; p < end; ++p) {
    const unsigned char c = static_cast<unsigned char>(*p);
    if (c == '"' || c == '\\' || c < 0x20) return p;
  }
  return end;
}

// A decoded key folded as Go matches struct fields: ASCII case, and the two
// non-ASCII letters whose simple folding reaches ASCII (U+017F long s, U+212A
// Kelvin sign). False when it holds another non-ASCII character (no field
// name has one).
bool FoldKey(const char* key, size_t len, char* out, size_t* out_len) {
  size_t n = 0;
  for (size_t i = 0; i < len;) {
    const unsigned char c = static_cast<unsigned char>(key[i]);
    if (c < 0x80) {
      out[n++] = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
      ++i;
    } else if (len - i >= 2 && std::memcmp(key + i, "\xC5\xBF", 2) == 0) {
      out[n++] = 's';
      i += 2;
    } else if (len - i >= 3 && std::memcmp(key + i, "\xE2\x84\xAA", 3) == 0) {
      out[n++] = 'k';
      i += 3;
    } else {
      return false;
    }
  }
  *out_len = n;
  return true;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace

RequestBodyReader::RequestBodyReader(BodyApi api) : api_(api) {}

bool RequestBodyReader::complete() const { return state_ == State::kDone; }

bool RequestBodyReader::Fail(std::string why) {
  if (error_.empty()) {
    error_ = absl::StrCat(why, " at byte ", at_);
    state_ = State::kFailed;
  }
  return false;
}

bool RequestBodyReader::Feed(std::string_view bytes) {
  const char* p = bytes.data();
  const char* const end = p + bytes.size();
  base_ = offset_;
  begin_ = p;
  while (p < end && state_ != State::kFailed) p = Step(p, end);
  offset_ += bytes.size();
  return state_ != State::kFailed;
}

bool RequestBodyReader::Finish() {
  if (state_ == State::kFailed) return false;
  at_ = offset_;
  if (state_ == State::kNumber) EndNumber();  // a root number: refused below anyway
  if (state_ == State::kStart) return Fail("the body is empty");
  if (state_ == State::kString || state_ == State::kEscape || state_ == State::kHex) {
    return Fail("the body ends inside a string");
  }
  if (state_ != State::kDone) return Fail("the body ends before its JSON object closes");
  return true;
}

// One step from p: returns where the next one starts.
const char* RequestBodyReader::Step(const char* p, const char* end) {
  at_ = base_ + static_cast<uint64_t>(p - begin_);
  switch (state_) {
    case State::kString: {
      const char* stop = StringStop(p, end);
      Take(p, stop);
      if (stop == end) return end;
      at_ = base_ + static_cast<uint64_t>(stop - begin_);
      if (*stop == '"') {
        EndString();
      } else if (*stop == '\\') {
        state_ = State::kEscape;
        escaped_ = true;
      } else {
        Fail("a raw control character in a string");
      }
      return stop + 1;
    }
    case State::kEscape:
      ReadEscape(*p);
      return p + 1;
    case State::kHex:
      ReadHex(*p);
      return p + 1;
    case State::kNumber:
      if (ReadNumber(*p)) return p + 1;
      if (state_ == State::kFailed) return p;
      EndNumber();
      return p;  // the delimiter is read in the next state
    case State::kLiteral:
      if (*p != kLiterals[literal_][literal_pos_]) {
        Fail("invalid literal");
        return p;
      }
      if (kLiterals[literal_][++literal_pos_] == '\0') {
        EndValue(literal_ == 0   ? BodyValueKind::kTrue
                 : literal_ == 1 ? BodyValueKind::kFalse
                                 : BodyValueKind::kNull,
                 at_ + 1);
      }
      return p + 1;
    default:
      break;
  }
  const char c = *p;
  if (IsSpace(c)) return p + 1;
  switch (state_) {
    case State::kStart:
      if (c != '{') {
        Fail("the body is not a JSON object");
        return p;
      }
      root_begin_ = at_;
      role_ = Role::kRoot;
      OpenContainer(false);
      return p + 1;
    case State::kDone:
      Fail("more after the JSON object");
      return p;
    case State::kKeyOrEnd:
      if (c == '}') {
        CloseContainer(false);
        return p + 1;
      }
      [[fallthrough]];
    case State::kKey:
      if (c != '"') {
        Fail("expected a key");
        return p;
      }
      StartString(/*key=*/true);
      return p + 1;
    case State::kColon:
      if (c != ':') {
        Fail("expected ':'");
        return p;
      }
      state_ = State::kValue;
      return p + 1;
    case State::kValueOrEnd:
      if (c == ']') {
        CloseContainer(true);
        return p + 1;
      }
      [[fallthrough]];
    case State::kValue:
      StartValue(c);
      return state_ == State::kFailed ? p : p + 1;
    case State::kAfter:
      if (c == ',') {
        if (in_array()) {
          role_ = ElementRole();
          state_ = State::kValue;
        } else {
          state_ = State::kKey;
        }
        return p + 1;
      }
      if (c == (in_array() ? ']' : '}')) {
        CloseContainer(in_array());
        return p + 1;
      }
      Fail(in_array() ? "expected ',' or ']'" : "expected ',' or '}'");
      return p;
    default:
      Fail("internal state");
      return p;
  }
}

void RequestBodyReader::StartValue(char c) {
  value_begin_ = at_;
  // What the value is, now that its type shows.
  const bool object = c == '{';
  const bool array = c == '[';
  switch (role_) {
    case Role::kPromptOrInputs:
    case Role::kContent:
      role_ = array    ? (role_ == Role::kContent ? Role::kParts : Role::kInputs)
              : object ? Role::kOther
                       : Role::kPrompt;
      break;
    case Role::kImageUrl:
      role_ = object ? Role::kImageUrlObject : array ? Role::kOther : Role::kImage;
      break;
    case Role::kOptions:
    case Role::kStreamOptions:
    case Role::kMessage:
    case Role::kPart:
    case Role::kImageUrlObject:
      if (!object) role_ = Role::kOther;
      break;
    case Role::kImages:
    case Role::kMessages:
      if (!array) role_ = Role::kOther;
      break;
    default:
      break;
  }
  switch (c) {
    case '{':
    case '[':
      OpenContainer(array);
      return;
    case '"':
      StartString(/*key=*/false);
      return;
    case 't':
    case 'f':
    case 'n':
      literal_ = c == 't' ? 0 : c == 'f' ? 1 : 2;
      literal_pos_ = 1;
      state_ = State::kLiteral;
      return;
    default:
      break;
  }
  if (c == '-' || (c >= '0' && c <= '9')) {
    number_.clear();
    num_state_ = NumState::kStart;
    state_ = State::kNumber;
    ReadNumber(c);
    return;
  }
  Fail("expected a value");
}

void RequestBodyReader::OpenContainer(bool array) {
  if (depth_ >= kMaxBodyDepth) {
    Fail(absl::StrCat("JSON nested deeper than ", kMaxBodyDepth, " levels"));
    return;
  }
  arrays_[depth_] = array;
  if (depth_ < kTracked) {
    frames_[depth_] = Frame{role_, field_, value_begin_, field_key_begin_, field_key_exact_};
  }
  field_ = BodyField::kCount;  // the container's own keys come next
  if (role_ == Role::kOptions) {
    pending_options_begin_ = at_;
    pending_options_members_ = 0;
  }
  ++depth_;
  if (array) {
    role_ = ElementRole();
    state_ = State::kValueOrEnd;
  } else {
    state_ = State::kKeyOrEnd;
  }
}

void RequestBodyReader::CloseContainer(bool array) {
  --depth_;
  const Role closed = RoleAt(depth_);
  if (depth_ == 0) {
    root_end_ = at_;
    state_ = State::kDone;
    return;
  }
  if (closed == Role::kOptions) {
    options_begin_ = pending_options_begin_;
    options_members_ = pending_options_members_;
  }
  role_ = closed;
  if (depth_ < kTracked) {
    const Frame& f = frames_[depth_];
    field_ = f.field;
    value_begin_ = f.value_begin;
    field_key_begin_ = f.key_begin;
    field_key_exact_ = f.key_exact;
  }
  EndValue(array ? BodyValueKind::kArray : BodyValueKind::kObject, at_ + 1);
}

void RequestBodyReader::StartString(bool key) {
  in_key_ = key;
  escaped_ = false;
  text_.clear();
  text_cut_ = false;
  string_bytes_ = 0;
  if (key) {
    key_begin_ = at_;
    keep_text_ = true;
  } else {
    keep_text_ = field_ != BodyField::kCount;
  }
  state_ = State::kString;
}

void RequestBodyReader::Take(const char* from, const char* to) {
  const size_t n = static_cast<size_t>(to - from);
  if (n == 0) return;
  FlushSurrogate();  // a high surrogate escape not followed by its low half
  string_bytes_ += n;
  if (keep_text_) Keep(std::string_view(from, n));
}

void RequestBodyReader::Keep(std::string_view bytes) {
  const size_t cap = in_key_ ? kMaxKeyBytes : kMaxFieldText;
  if (text_.size() + bytes.size() > cap) {
    text_.append(bytes.substr(0, cap > text_.size() ? cap - text_.size() : 0));
    text_cut_ = true;
    return;
  }
  text_.append(bytes);
}

void RequestBodyReader::ReadEscape(char c) {
  ++string_bytes_;
  const char* decoded = nullptr;
  switch (c) {
    case '"':
      decoded = "\"";
      break;
    case '\\':
      decoded = "\\";
      break;
    case '/':
      decoded = "/";
      break;
    case 'b':
      decoded = "\b";
      break;
    case 'f':
      decoded = "\f";
      break;
    case 'n':
      decoded = "\n";
      break;
    case 'r':
      decoded = "\r";
      break;
    case 't':
      decoded = "\t";
      break;
    case 'u':
      hex_count_ = 0;
      hex_value_ = 0;
      state_ = State::kHex;
      return;
    default:
      Fail("an invalid escape in a string");
      return;
  }
  FlushSurrogate();
  if (keep_text_) Keep(decoded);
  state_ = State::kString;
}

void RequestBodyReader::ReadHex(char c) {
  ++string_bytes_;
  const int d = HexDigit(c);
  if (d < 0) {
    Fail("an invalid \\u escape in a string");
    return;
  }
  hex_value_ = static_cast<uint16_t>(hex_value_ << 4 | d);
  if (++hex_count_ < 4) return;
  state_ = State::kString;
  const uint32_t cu = hex_value_;
  if (cu >= 0xD800 && cu < 0xDC00) {
    FlushSurrogate();
    high_surrogate_ = static_cast<uint16_t>(cu);
    return;
  }
  std::string out;
  if (cu >= 0xDC00 && cu < 0xE000 && high_surrogate_ != 0) {
    AppendUtf8(0x10000 + ((static_cast<uint32_t>(high_surrogate_) - 0xD800) << 10) + (cu - 0xDC00),
               &out);
    high_surrogate_ = 0;
  } else {
    FlushSurrogate();
    AppendUtf8(cu >= 0xDC00 && cu < 0xE000 ? 0xFFFD : cu, &out);  // lone low: as Go
  }
  if (keep_text_) Keep(out);
}

// A high surrogate not followed by its low half: Go decodes it as U+FFFD.
void RequestBodyReader::FlushSurrogate() {
  if (high_surrogate_ == 0) return;
  high_surrogate_ = 0;
  if (keep_text_) Keep("\xEF\xBF\xBD");
}

void RequestBodyReader::EndString() {
  FlushSurrogate();
  if (in_key_) {
    EndKey();
    return;
  }
  if (role_ == Role::kImage) {
    ++images_;
    image_bytes_ += string_bytes_;
  } else if (role_ == Role::kPrompt) {
    prompt_bytes_ += string_bytes_;
  }
  EndValue(BodyValueKind::kString, at_ + 1);
}

bool RequestBodyReader::ReadNumber(char c) {
  // JSON's grammar: -? (0 | [1-9][0-9]*) (\.[0-9]+)? ([eE][+-]?[0-9]+)?
  const bool digit = c >= '0' && c <= '9';
  NumState next = num_state_;
  switch (num_state_) {
    case NumState::kStart:
      next = c == '-' ? NumState::kMinus : c == '0' ? NumState::kZero : NumState::kInt;
      break;
    case NumState::kMinus:
      if (!digit) return Fail("a number without digits");
      next = c == '0' ? NumState::kZero : NumState::kInt;
      break;
    case NumState::kZero:
      if (c == '.')
        next = NumState::kDot;
      else if (c == 'e' || c == 'E')
        next = NumState::kExp;
      else if (digit)
        return Fail("a number with a leading zero");
      else
        return false;
      break;
    case NumState::kInt:
      if (c == '.')
        next = NumState::kDot;
      else if (c == 'e' || c == 'E')
        next = NumState::kExp;
      else if (!digit)
        return false;
      break;
    case NumState::kDot:
      if (!digit) return Fail("a number with no digit after '.'");
      next = NumState::kFrac;
      break;
    case NumState::kFrac:
      if (c == 'e' || c == 'E')
        next = NumState::kExp;
      else if (!digit)
        return false;
      break;
    case NumState::kExp:
      if (c == '+' || c == '-')
        next = NumState::kExpSign;
      else if (digit)
        next = NumState::kExpDigits;
      else
        return Fail("a number with no digit in its exponent");
      break;
    case NumState::kExpSign:
      if (!digit) return Fail("a number with no digit in its exponent");
      next = NumState::kExpDigits;
      break;
    case NumState::kExpDigits:
      if (!digit) return false;
      break;
  }
  num_state_ = next;
  if (field_ != BodyField::kCount) {
    if (number_.size() < kMaxFieldText) {
      number_.push_back(c);
    } else {
      number_cut_ = true;
    }
  }
  return true;
}

void RequestBodyReader::EndNumber() {
  if (num_state_ == NumState::kMinus || num_state_ == NumState::kDot ||
      num_state_ == NumState::kExp || num_state_ == NumState::kExpSign) {
    Fail("an incomplete number");
    return;
  }
  text_ = number_;
  text_cut_ = number_cut_;
  number_cut_ = false;
  EndValue(BodyValueKind::kNumber, at_);
}

// A value ended at body offset `value_end`: recorded when it is a field,
// then the container goes on.
void RequestBodyReader::EndValue(BodyValueKind kind, uint64_t value_end) {
  if (field_ != BodyField::kCount) {
    BodyValue& v = fields_[static_cast<size_t>(field_)];
    ++v.count;
    v.exact_key = v.exact_key && field_key_exact_;
    v.kind = kind;
    v.key_begin = field_key_begin_;
    v.value_begin = value_begin_;
    v.value_end = value_end;
    if (kind == BodyValueKind::kString || kind == BodyValueKind::kNumber) {
      v.text = text_;
      v.text_cut = text_cut_;
    } else {
      v.text.clear();
      v.text_cut = false;
    }
    field_ = BodyField::kCount;
  }
  state_ = State::kAfter;
}

RequestBodyReader::Role RequestBodyReader::ElementRole() const {
  switch (RoleAt(depth_ - 1)) {
    case Role::kImages:
      return Role::kImage;
    case Role::kMessages:
      return Role::kMessage;
    case Role::kInputs:
      return Role::kPrompt;
    case Role::kParts:
      return Role::kPart;
    default:
      return Role::kOther;
  }
}

// A key ended: which field or role its value has.
void RequestBodyReader::EndKey() {
  state_ = State::kColon;
  field_ = BodyField::kCount;
  role_ = Role::kOther;
  const Role in = RoleAt(depth_ - 1);
  if (depth_ == 1) ++root_members_;
  if (in == Role::kOptions) ++pending_options_members_;
  if (text_cut_) return;  // longer than any name
  char folded[kMaxKeyBytes];
  size_t n = 0;
  const bool exact_map = in == Role::kOptions;  // a map: keys match exactly
  std::string_view key(text_);
  if (!exact_map) {
    if (!FoldKey(text_.data(), text_.size(), folded, &n)) return;
    key = std::string_view(folded, n);
  }
  field_key_begin_ = key_begin_;
  field_key_exact_ = !escaped_ && key == std::string_view(text_);
  const bool native = api_ == BodyApi::kNative;
  switch (in) {
    case Role::kRoot:
      RootKey(key, native);
      break;
    case Role::kOptions:  // the decoded key, exactly
      if (key == "num_ctx") field_ = BodyField::kNumCtx;
      if (key == "num_predict") field_ = BodyField::kNumPredict;
      break;
    case Role::kStreamOptions:
      if (key == "include_usage") field_ = BodyField::kIncludeUsage;
      break;
    case Role::kMessage:
      if (key == "content") role_ = native ? Role::kPrompt : Role::kContent;
      if (native && key == "images") role_ = Role::kImages;
      break;
    case Role::kPart:
      if (key == "text") role_ = Role::kPrompt;
      if (key == "image_url") role_ = Role::kImageUrl;
      break;
    case Role::kImageUrlObject:
      if (key == "url") role_ = Role::kImage;
      break;
    default:
      break;
  }
}

void RequestBodyReader::RootKey(std::string_view key, bool native) {
  struct Name {
    std::string_view name;
    BodyField field;
    bool native, openai;
  };
  static constexpr Name kFields[] = {
      {"model", BodyField::kModel, true, true},
      {"name", BodyField::kName, true, false},
      {"keep_alive", BodyField::kKeepAlive, true, false},
      {"options", BodyField::kOptions, true, false},
      {"max_tokens", BodyField::kMaxTokens, false, true},
      {"max_completion_tokens", BodyField::kMaxCompletion, false, true},
      {"stream", BodyField::kStream, true, true},
      {"stream_options", BodyField::kStreamOptions, false, true},
      {"insecure", BodyField::kInsecure, true, false},
      {"from", BodyField::kFrom, true, false},
  };
  for (const Name& f : kFields) {
    if (key == f.name && (native ? f.native : f.openai)) {
      field_ = f.field;
      break;
    }
  }
  if (field_ == BodyField::kOptions) role_ = Role::kOptions;
  if (field_ == BodyField::kStreamOptions) role_ = Role::kStreamOptions;
  if (key == "prompt" || key == "system" || key == "suffix") role_ = Role::kPromptOrInputs;
  if (key == "input") role_ = Role::kPromptOrInputs;
  if (key == "messages") role_ = Role::kMessages;
  if (native && key == "images") role_ = Role::kImages;
}

namespace {

constexpr uint64_t kMaxDurationNs = uint64_t{1} << 63;

// Go's leadingInt: the digits at the start of s; false on overflow.
bool LeadingInt(std::string_view* s, uint64_t* x) {
  size_t i = 0;
  *x = 0;
  for (; i < s->size() && (*s)[i] >= '0' && (*s)[i] <= '9'; ++i) {
    if (*x > kMaxDurationNs / 10) return false;
    *x = *x * 10 + static_cast<uint64_t>((*s)[i] - '0');
    if (*x > kMaxDurationNs) return false;
  }
  s->remove_prefix(i);
  return true;
}

// Go's leadingFraction: digits after '.', as x / scale (extra digits that
// would overflow are dropped).
void LeadingFraction(std::string_view* s, uint64_t* x, double* scale) {
  size_t i = 0;
  *x = 0;
  *scale = 1;
  bool overflow = false;
  for (; i < s->size() && (*s)[i] >= '0' && (*s)[i] <= '9'; ++i) {
    if (overflow) continue;
    if (*x > (kMaxDurationNs - 1) / 10) {
      overflow = true;
      continue;
    }
    const uint64_t y = *x * 10 + static_cast<uint64_t>((*s)[i] - '0');
    if (y > kMaxDurationNs) {
      overflow = true;
      continue;
    }
    *x = y;
    *scale *= 10;
  }
  s->remove_prefix(i);
}

uint64_t UnitNs(std::string_view u) {
  if (u == "ns") return 1;
  if (u == "us" || u == "\xC2\xB5s" || u == "\xCE\xBCs") return 1'000;
  if (u == "ms") return 1'000'000;
  if (u == "s") return 1'000'000'000;
  if (u == "m") return 60'000'000'000;
  if (u == "h") return 3'600'000'000'000;
  return 0;
}

}  // namespace

bool ParseGoDuration(std::string_view s, int64_t* ns) {
  bool neg = false;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
    neg = s[0] == '-';
    s.remove_prefix(1);
  }
  if (s == "0") {
    *ns = 0;
    return true;
  }
  if (s.empty()) return false;
  uint64_t d = 0;
  while (!s.empty()) {
    if (!(s[0] == '.' || (s[0] >= '0' && s[0] <= '9'))) return false;
    const size_t before = s.size();
    uint64_t v = 0;
    if (!LeadingInt(&s, &v)) return false;
    const bool pre = before != s.size();
    bool post = false;
    uint64_t f = 0;
    double scale = 1;
    if (!s.empty() && s[0] == '.') {
      s.remove_prefix(1);
      const size_t at = s.size();
      LeadingFraction(&s, &f, &scale);
      post = at != s.size();
    }
    if (!pre && !post) return false;
    size_t i = 0;
    while (i < s.size() && s[i] != '.' && !(s[i] >= '0' && s[i] <= '9')) ++i;
    if (i == 0) return false;  // no unit
    const uint64_t unit = UnitNs(s.substr(0, i));
    s.remove_prefix(i);
    if (unit == 0) return false;
    if (v > kMaxDurationNs / unit) return false;
    v *= unit;
    if (f > 0) {
      v += static_cast<uint64_t>(static_cast<double>(f) * (static_cast<double>(unit) / scale));
      if (v > kMaxDurationNs) return false;
    }
    d += v;
    if (d > kMaxDurationNs) return false;
  }
  if (neg) {
    *ns = d == kMaxDurationNs ? std::numeric_limits<int64_t>::min() : -static_cast<int64_t>(d);
    return true;
  }
  if (d > kMaxDurationNs - 1) return false;
  *ns = static_cast<int64_t>(d);
  return true;
}

KeepAlive ReadKeepAlive(const BodyValue& value) {
  KeepAlive k;
  if (!value.present() || value.kind == BodyValueKind::kNull) return k;
  if (value.kind == BodyValueKind::kNumber) {
    const double seconds = std::strtod(value.text.c_str(), nullptr);
    if (seconds < 0) {
      k.kind = KeepAlive::Kind::kForever;
    } else {
      // Go keeps whole seconds; past int64 nanoseconds it is as long as can be.
      k.kind = KeepAlive::Kind::kFor;
      const double whole =
          static_cast<double>(static_cast<int64_t>(seconds < 9.2e9 ? seconds : 9.2e9));
      k.ns = seconds < 9.2e9 ? static_cast<int64_t>(whole) * 1'000'000'000
                             : std::numeric_limits<int64_t>::max();
    }
    return k;
  }
  if (value.kind == BodyValueKind::kString && !value.text_cut) {
    int64_t ns = 0;
    if (ParseGoDuration(value.text, &ns)) {
      k.kind = ns < 0 ? KeepAlive::Kind::kForever : KeepAlive::Kind::kFor;
      k.ns = ns < 0 ? 0 : ns;
      return k;
    }
  }
  k.kind = KeepAlive::Kind::kInvalid;
  return k;
}

}  // namespace sluice::policy
