#include "core/observe/usage_scanner.h"

#include <cstring>

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

// The first '\r' or '\n' in [p, end), or end. Two memchr passes beat a
// per-byte loop on long data lines.
const char* FindLineEnd(const char* p, const char* end) {
  const char* lf = Find(p, end, '\n');
  return Find(p, lf, '\r');
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

BodyFormat FormatForContentType(std::string_view content_type) {
  size_t semi = content_type.find(';');
  std::string_view type = content_type.substr(0, semi);
  while (!type.empty() && (type.front() == ' ' || type.front() == '\t')) type.remove_prefix(1);
  while (!type.empty() && (type.back() == ' ' || type.back() == '\t')) type.remove_suffix(1);
  auto is = [type](std::string_view name) {
    if (type.size() != name.size()) return false;
    for (size_t i = 0; i < name.size(); ++i) {
      char c = type[i];
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      if (c != name[i]) return false;
    }
    return true;
  };
  if (is("application/x-ndjson")) return BodyFormat::kNdjson;
  if (is("text/event-stream")) return BodyFormat::kSse;
  if (is("application/json")) return BodyFormat::kJson;
  return BodyFormat::kOther;
}

// ---------------------------------------------------------------------------
// JsonTokenizer

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

ResponseScanner::JsonTokenizer::Yield ResponseScanner::JsonTokenizer::Run(const char** pp,
                                                                          const char* end) {
  const char* p = *pp;
  // The next '"' at or after p (or end), kept across escapes so that a
  // string with many escapes ("\/" in base64) is still searched once.
  const char* quote = nullptr;
  Yield yield = Yield::kNone;
  while (p < end && yield == Yield::kNone) {
    switch (state_) {
      case State::kBroken:
        p = end;
        break;

      case State::kString: {
        // Skipped strings (and the rest of a key or model past its limit)
        // are searched with memchr: request bodies carry megabytes of base64.
        if (sink_ == Sink::kDiscard || (sink_ == Sink::kKey && key_long_) ||
            (sink_ == Sink::kModel && model_cut_)) {
          if (quote == nullptr || quote < p) quote = Find(p, end, '"');
          const char* backslash = Find(p, quote, '\\');
          if (backslash != quote) {
            p = backslash + 1;
            state_ = State::kEscape;
          } else if (quote == end) {
            p = end;
          } else {
            p = quote + 1;
            EndString(&yield);
          }
          break;
        }
        char c = *p++;
        if (c == '"') {
          EndString(&yield);
          break;
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
        break;
      }

      case State::kEscape: {
        char c = *p++;
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
            continue;
          default:
            state_ = State::kBroken;
            continue;
        }
        if (sink_ == Sink::kKey || sink_ == Sink::kModel) {
          FlushSurrogate();
          Emit(out);
        }
        state_ = State::kString;
        break;
      }

      case State::kHex: {
        int d = HexDigit(*p++);
        if (d < 0) {
          state_ = State::kBroken;
          break;
        }
        hex_value_ = static_cast<uint16_t>((hex_value_ << 4) | d);
        if (++hex_count_ == 4) {
          EmitCodeUnit(hex_value_);
          state_ = State::kString;
        }
        break;
      }

      case State::kStart: {
        char c = *p++;
        if (IsSpace(c)) break;
        if (c != '{') {
          state_ = State::kBroken;  // an event is an object
          break;
        }
        role_ = mode_ == Mode::kRequest ? Path::kRequestRoot : Path::kRoot;
        Open(false);
        break;
      }

      case State::kValue:
      case State::kValueOrEnd: {
        char c = *p++;
        if (IsSpace(c)) break;
        if (c == ']' && state_ == State::kValueOrEnd) {
          Close();
        } else {
          StartValue(c);
        }
        break;
      }

      case State::kKeyOrEnd:
      case State::kKey: {
        char c = *p++;
        if (IsSpace(c)) break;
        if (c == '"') {
          StartString(Sink::kKey);
        } else if (c == '}' && state_ == State::kKeyOrEnd) {
          Close();
        } else {
          state_ = State::kBroken;
        }
        break;
      }

      case State::kColon: {
        char c = *p++;
        if (IsSpace(c)) break;
        state_ = c == ':' ? State::kValue : State::kBroken;
        break;
      }

      case State::kAfter: {
        char c = *p++;
        if (IsSpace(c)) break;
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
        break;
      }

      case State::kDone: {
        char c = *p++;
        if (!IsSpace(c)) state_ = State::kBroken;
        break;
      }

      case State::kNumMinus:
      case State::kNumZero:
      case State::kNumInt:
      case State::kNumDot:
      case State::kNumFrac:
      case State::kNumExp:
      case State::kNumExpSign:
      case State::kNumExpDigits: {
        char c = *p;
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
          EndNumber();  // c is read again in the state after the value
          break;
        }
        ++p;
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
        break;
      }

      case State::kLiteral: {
        const char* literal = kLiterals[literal_];
        if (*p++ != literal[literal_pos_]) {
          state_ = State::kBroken;
          break;
        }
        if (literal[++literal_pos_] != '\0') break;
        if (role_ == Path::kStream && literal_ != kLiteralNull) {
          stream_ = literal_ == kLiteralTrue;
          yield = Yield::kStream;
        }
        AfterValue();
        break;
      }

      case State::kSkip: {
        char c = *p++;
        if (c == '"') {
          StartString(Sink::kDiscard);
        } else if (c == '{' || c == '[') {
          ++skip_depth_;
        } else if (c == '}' || c == ']') {
          if (--skip_depth_ == 0) AfterValue();
        }
        break;
      }
    }
  }
  *pp = p;
  return yield;
}

// ---------------------------------------------------------------------------
// ResponseScanner

ResponseScanner::ResponseScanner(BodyFormat format) : format_(format) {
  json_.Reset(JsonTokenizer::Mode::kResponse);
}

size_t ResponseScanner::EndFrame() {
  size_t events = 0;
  if (json_.Complete()) {
    if (json_.text_) {
      ++usage_.token_events;
      events = 1;
    }
    if (json_.prompt_tokens_) usage_.prompt_tokens = json_.prompt_tokens_;
    if (json_.completion_tokens_) usage_.completion_tokens = json_.completion_tokens_;
    if (json_.model_done_ && !model_seen_) {
      usage_.model.assign(json_.model_, json_.model_len_);
      model_seen_ = true;
    }
  }
  json_.Reset(JsonTokenizer::Mode::kResponse);
  return events;
}

size_t ResponseScanner::Feed(std::string_view bytes) {
  if (finished_ || bytes.empty()) return 0;
  const char* p = bytes.data();
  const char* end = p + bytes.size();
  switch (format_) {
    case BodyFormat::kNdjson:
      return FeedNdjson(p, end);
    case BodyFormat::kSse:
      return FeedSse(p, end);
    case BodyFormat::kJson:
      json_.Run(&p, end);
      return 0;
    case BodyFormat::kOther:
      return 0;
  }
  return 0;
}

size_t ResponseScanner::Finish() {
  if (finished_) return 0;
  finished_ = true;
  switch (format_) {
    case BodyFormat::kNdjson:
    case BodyFormat::kJson:
      return EndFrame();
    case BodyFormat::kSse:
      // An event without its blank line is discarded (WHATWG HTML,
      // "Server-sent events", end of stream).
    case BodyFormat::kOther:
      return 0;
  }
  return 0;
}

size_t ResponseScanner::FeedNdjson(const char* p, const char* end) {
  size_t events = 0;
  while (p < end) {
    const char* lf = Find(p, end, '\n');
    json_.Run(&p, lf);  // "\r" of a CRLF is JSON whitespace
    if (lf == end) break;
    events += EndFrame();
    p = lf + 1;
  }
  return events;
}

void ResponseScanner::BeginSseDataLine() {
  // Data lines of one event are joined with '\n' (JSON whitespace).
  if (sse_event_has_data_) {
    const char lf = '\n';
    const char* p = &lf;
    json_.Run(&p, p + 1);
  }
  sse_event_has_data_ = true;
}

size_t ResponseScanner::EndSseLine() {
  size_t events = 0;
  switch (sse_state_) {
    case SseState::kLineStart:  // a blank line dispatches the event
      if (sse_event_has_data_) {
        sse_event_has_data_ = false;
        events = EndFrame();
      }
      break;
    case SseState::kField:  // a line without ':' names a field, value ""
      if (sse_field_matched_ == 4) BeginSseDataLine();
      break;
    default:
      break;
  }
  sse_state_ = SseState::kLineStart;
  return events;
}

size_t ResponseScanner::FeedSse(const char* p, const char* end) {
  size_t events = 0;
  while (p < end) {
    char c = *p;
    if (sse_after_cr_) {
      sse_after_cr_ = false;
      if (c == '\n') {
        ++p;
        continue;
      }
    }
    if (c == '\r' || c == '\n') {
      ++p;
      sse_after_cr_ = c == '\r';
      events += EndSseLine();
      continue;
    }
    switch (sse_state_) {
      case SseState::kLineStart:
        if (c == ':') {
          sse_state_ = SseState::kIgnore;  // a comment
          ++p;
        } else {
          sse_state_ = SseState::kField;
          sse_field_matched_ = 0;
        }
        break;
      case SseState::kField:
        ++p;
        if (c == ':') {
          if (sse_field_matched_ == 4) {
            BeginSseDataLine();
            sse_state_ = SseState::kDataStart;
          } else {
            sse_state_ = SseState::kIgnore;
          }
        } else if (sse_field_matched_ < 4 && c == "data"[sse_field_matched_]) {
          ++sse_field_matched_;
        } else {
          sse_field_matched_ = 5;
        }
        break;
      case SseState::kDataStart:
        if (c == ' ') ++p;
        sse_state_ = SseState::kData;
        break;
      case SseState::kData: {
        const char* eol = FindLineEnd(p, end);
        json_.Run(&p, eol);
        break;
      }
      case SseState::kIgnore:
        p = FindLineEnd(p, end);
        break;
    }
  }
  return events;
}

// ---------------------------------------------------------------------------
// RequestScanner

RequestScanner::RequestScanner() { json_.Reset(ResponseScanner::JsonTokenizer::Mode::kRequest); }

void RequestScanner::Feed(std::string_view bytes) {
  using Yield = ResponseScanner::JsonTokenizer::Yield;
  const char* p = bytes.data();
  const char* end = p + bytes.size();
  while (p < end) {
    switch (json_.Run(&p, end)) {
      case Yield::kModel:
        model_.assign(json_.model_, json_.model_len_);
        break;
      case Yield::kStream:
        stream_ = json_.stream_;
        break;
      case Yield::kNone:
        break;
    }
  }
}

}  // namespace sluice::core
