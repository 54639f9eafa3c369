#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sluice::core {

// How a response body is laid out, from its Content-Type.
enum class BodyFormat {
  kNdjson,  // application/x-ndjson (Ollama's streams): one JSON object per line
  kSse,     // text/event-stream (OpenAI streams): "data: {...}" events
  kJson,    // application/json: one JSON document (a non-streamed answer)
  kOther,   // anything else: not scanned
};
// Media type compared case-insensitively, parameters ignored
// ("application/json; charset=utf-8" is kJson).
BodyFormat FormatForContentType(std::string_view content_type);

// What an LLM response says about its tokens. Filled as the body is relayed.
struct TokenUsage {
  // Ollama: the final object's prompt_eval_count / eval_count (top level).
  // OpenAI: usage.prompt_tokens / usage.completion_tokens (any object whose
  // top-level "usage" object has them; the last one seen wins).
  std::optional<int64_t> prompt_tokens;
  std::optional<int64_t> completion_tokens;
  // Ollama: the final object's load_duration (nanoseconds spent loading the
  // model for this request; 0 or tiny when it was loaded already).
  std::optional<int64_t> load_duration_ns;
  // The first top-level "model" string seen, at most kMaxModelBytes bytes
  // (longer values are cut there), JSON escapes decoded.
  std::string model;
  // Objects that carried generated text (see ResponseScanner).
  uint64_t token_events = 0;
};

inline constexpr size_t kMaxModelBytes = 128;

// Reads an LLM response body incrementally, as it is relayed: the pieces
// may split the body anywhere (inside a key, a number, an escape, a UTF-8
// sequence, a line ending, an SSE field name). Nothing is buffered beyond a
// few bytes of state (a key being read, at most 32 bytes, and the model
// name), so the cost is one pass over the bytes and the memory is constant.
//
// A "token event" is one JSON object (an NDJSON line, an SSE event's data,
// or the whole kJson document) in which at least one of these is a
// non-empty string:
//   response, thinking                       (Ollama /api/generate)
//   message.content, message.thinking        (Ollama /api/chat)
//   choices[*].delta.content, choices[*].text, choices[*].delta.reasoning,
//   choices[*].message.content               (OpenAI)
// so Ollama's final {"done":true,...} object, OpenAI's role-only first
// delta, its usage-only last chunk and "data: [DONE]" are not events.
//
// Malformed JSON is not an error: the scanner resynchronises at the next
// line (NDJSON) or event (SSE) and counts nothing for the broken object.
// Nesting deeper than 16 levels is skipped (its values are not read).
class ResponseScanner {
 public:
  explicit ResponseScanner(BodyFormat format);

  // Feeds the next bytes of the de-chunked body. Returns how many token
  // events completed inside these bytes (the caller timestamps them).
  size_t Feed(std::string_view bytes);
  // The body ended: a kJson document (or a last NDJSON line without its
  // newline) completes here. Returns the events it completed.
  size_t Finish();

  const TokenUsage& usage() const { return usage_; }
  BodyFormat format() const { return format_; }

 private:
  // RequestScanner reuses JsonTokenizer (a private type of this class).
  friend class RequestScanner;

  // Containers whose keys are read; deeper ones are skipped bracket by
  // bracket. 16 covers every path of interest (the deepest is
  // choices[*].delta.content, 4 levels) with room for wrappers.
  static constexpr size_t kMaxDepth = 16;
  // Keys longer than this match nothing (the longest key read,
  // "prompt_eval_count", has 17 bytes).
  static constexpr size_t kMaxKeyBytes = 32;

  // Incremental JSON tokenizer shared by both scanners: a state machine that
  // may stop at any byte and go on with the next piece. It reads one JSON
  // text (a "frame": an NDJSON line, an SSE event's data, a whole body),
  // remembers the path of the value being read (one Path per open
  // container) and looks only at the values on the paths the scanners read.
  // Its memory is these fields (256 bytes on x86-64); it never allocates.
  struct JsonTokenizer {
    // Which paths are read: those of the ResponseScanner comment, or a
    // request's top-level "model" and "stream".
    enum class Mode : uint8_t { kResponse, kRequest };
    // Why Run() returned before the end of its bytes (kRequest only): a
    // top-level value completed; read it from the fields below.
    enum class Yield : uint8_t { kNone, kModel, kStream };
    enum class State : uint8_t {
      kStart,       // before the root value
      kValue,       // a value: after ':', or after ',' in an array
      kValueOrEnd,  // after '[': a value or ']'
      kKeyOrEnd,    // after '{': a key or '}'
      kKey,         // after ',' in an object: a key
      kColon,       // after a key
      kAfter,       // after a value in a container: ',' or its closer
      kDone,        // the root object closed: only whitespace may follow
      kString,
      kEscape,  // after a backslash in a string
      kHex,     // in the 4 hex digits of a u escape
      kNumMinus,
      kNumZero,
      kNumInt,
      kNumDot,
      kNumFrac,
      kNumExp,  // after 'e'/'E'
      kNumExpSign,
      kNumExpDigits,
      kLiteral,  // true, false, null
      kSkip,     // inside a container nested deeper than kMaxDepth
      kBroken,   // not JSON: the rest of the frame is ignored
    };
    // Where the bytes of the string being read go.
    enum class Sink : uint8_t { kDiscard, kKey, kModel, kText };
    // What a container or a value is, by its path (kNone: not read).
    enum class Path : uint8_t {
      kNone,
      kRoot,             // a response object
      kRequestRoot,      // a request object
      kMessage,          // root.message
      kChoices,          // root.choices
      kChoice,           // root.choices[*]
      kDelta,            // root.choices[*].delta
      kChoiceMessage,    // root.choices[*].message
      kUsage,            // root.usage
      kModel,            // root.model
      kText,             // a string whose non-emptiness makes a token event
      kPromptCount,      // root.prompt_eval_count, root.usage.prompt_tokens
      kCompletionCount,  // root.eval_count, root.usage.completion_tokens
      kLoadDuration,     // root.load_duration
      kStream,           // request root.stream
    };

    // Starts a new frame.
    void Reset(Mode mode);
    // Consumes bytes from *p up to end, advancing *p. Returns kNone with
    // *p == end, or (kRequest only) earlier, right after a top-level
    // "model" string or "stream" boolean completed.
    Yield Run(const char** p, const char* end);

    bool Empty() const { return state_ == State::kStart; }
    bool Complete() const { return state_ == State::kDone; }
    bool Broken() const { return state_ == State::kBroken; }

    // The steps of Run (json_tokenizer.cc), one per state or group.
    const char* ReadString(const char* p, const char* end, const char** quote, Yield* yield);
    void ReadEscape(char c);
    void ReadHexDigit(char c);
    void ReadStart(char c);
    void ReadValue(char c);
    void ReadKey(char c);
    void ReadColon(char c);
    void ReadAfterValue(char c);
    bool ReadNumber(char c);
    void ReadLiteral(char c, Yield* yield);
    void ReadSkipped(char c);
    void StartValue(char c);
    void Open(bool array);
    void Close();
    void AfterValue();
    void StartString(Sink sink);
    void EndString(Yield* yield);
    void EndNumber();
    void Emit(char c);
    void EmitCodePoint(uint32_t cp);
    void EmitCodeUnit(uint32_t cu);
    void FlushSurrogate();
    Path KeyPath() const;

    State state_ = State::kStart;
    Mode mode_ = Mode::kResponse;
    Sink sink_ = Sink::kDiscard;
    Path role_ = Path::kNone;  // the path of the value about to be read
    uint8_t depth_ = 0;        // open containers tracked in path_, <= kMaxDepth
    uint16_t array_bits_ = 0;  // bit i: container i is an array
    Path path_[kMaxDepth] = {};
    uint64_t skip_depth_ = 0;  // containers open beyond kMaxDepth
    // Escapes.
    uint8_t hex_count_ = 0;
    uint16_t hex_value_ = 0;
    uint16_t high_surrogate_ = 0;  // a high surrogate escape awaiting its pair
    // Literals and numbers.
    uint8_t literal_ = 0;  // index into the literal table
    uint8_t literal_pos_ = 0;
    bool num_negative_ = false;
    bool num_integer_ = true;
    bool num_overflow_ = false;
    uint64_t num_value_ = 0;
    // The key being read (decoded); too long keys match nothing.
    uint8_t key_len_ = 0;
    bool key_long_ = false;
    char key_[kMaxKeyBytes];
    // Values read in this frame.
    uint8_t model_len_ = 0;
    bool model_cut_ = false;   // bytes were dropped past kMaxModelBytes
    bool model_done_ = false;  // model_ holds a complete string
    char model_[kMaxModelBytes];
    bool text_ = false;
    bool stream_ = false;
    std::optional<int64_t> prompt_tokens_;
    std::optional<int64_t> completion_tokens_;
    std::optional<int64_t> load_duration_;
  };

  // SSE line parsing: where in a line the scanner is.
  enum class SseState : uint8_t {
    kLineStart,
    kField,      // in a field name
    kDataStart,  // after "data:", where one space is dropped
    kData,       // in a data value: bytes go to the tokenizer
    kIgnore,     // in a comment or another field's line
  };

  size_t FeedNdjson(const char* p, const char* end);
  size_t FeedSse(const char* p, const char* end);
  size_t EndSseLine();
  void BeginSseDataLine();
  // The frame ended: commits a complete object's values to usage_ and
  // starts the next frame. Returns the token events it completed (0 or 1).
  size_t EndFrame();

  BodyFormat format_;
  TokenUsage usage_;
  JsonTokenizer json_;
  bool model_seen_ = false;  // usage_.model is set (maybe to "")
  bool finished_ = false;
  SseState sse_state_ = SseState::kLineStart;
  uint8_t sse_field_matched_ = 0;  // bytes of "data" matched; 5: another name
  bool sse_after_cr_ = false;      // a '\n' right after is part of a CRLF
  bool sse_event_has_data_ = false;
};

// What a JSON request body names at its top level: "model" (a string, at
// most kMaxModelBytes) and "stream" (a boolean). Same incremental contract
// as ResponseScanner: fed the body in pieces, constant memory, string
// contents (base64 images of many megabytes) skipped quickly.
class RequestScanner {
 public:
  RequestScanner();

  void Feed(std::string_view bytes);

  // Empty when the body had no top-level "model" string (yet).
  const std::string& model() const { return model_; }
  // The top-level "stream" boolean, when present.
  std::optional<bool> stream() const { return stream_; }
  // model() was cut at kMaxModelBytes.
  bool model_cut() const { return model_cut_; }
  // The top-level object closed, or the body is not JSON: nothing more
  // will be read.
  bool done() const { return json_.Complete() || json_.Broken(); }

 private:
  std::string model_;
  bool model_cut_ = false;
  std::optional<bool> stream_;
  ResponseScanner::JsonTokenizer json_;
};

}  // namespace sluice::core
