#pragma once

// A JSON request body of Ollama's API (or its OpenAI-compatible one) read
// the way Ollama reads it, incrementally, so that the values sluice checks
// and rewrites are the values Ollama will use.
//
// Ollama decodes request bodies with Go's encoding/json into structs:
//   - an object key names a struct field case-insensitively under Unicode
//     simple folding ("MODEL", "Model" and "\u006dodel" all set `model`;
//     U+017F (long s) folds to 's' and U+212A (Kelvin sign) to 'k'), after
//     its escapes are decoded;
//   - of a key given twice (after that matching) the last one wins;
//   - `options` is a map (map[string]any): its keys match exactly, the last
//     of a duplicate wins, and a later top-level "options" object is merged
//     into the first (its keys override, the others stay);
//   - unknown keys are ignored; Ollama reads the first JSON value of the
//     body and ignores what follows it.
// The reader is stricter where that cannot hide a value from sluice: the
// body must be exactly one JSON object (whitespace around it), in valid
// JSON syntax (strings without raw control characters, numbers in JSON's
// grammar, nesting at most kMaxBodyDepth); anything else is an error.
//
// Memory is constant (a few hundred bytes plus one bit per open container,
// at most kMaxBodyDepth) whatever the body's size: string contents (base64
// images of many megabytes) are skipped, not kept, except the decoded text
// of the fields below (at most kMaxFieldText bytes each).

#include <bitset>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::policy {

// Which API a body belongs to: decides which fields are looked for.
enum class BodyApi : uint8_t {
  kNative,  // /api/generate, /api/chat, /api/embed, /api/embeddings, /api/pull, /api/create...
  kOpenAi,  // /v1/chat/completions, /v1/completions, /v1/embeddings
};

// The fields sluice reads. Top-level keys unless the comment says otherwise;
// a field of the other API is never set.
enum class BodyField : uint8_t {
  kModel,          // "model" (both)
  kName,           // "name" (native: /api/pull's older spelling of model)
  kKeepAlive,      // "keep_alive" (native)
  kOptions,        // "options" (native): the object itself
  kNumCtx,         // options.num_ctx (native; exact key)
  kNumPredict,     // options.num_predict (native; exact key)
  kMaxTokens,      // "max_tokens" (OpenAI)
  kMaxCompletion,  // "max_completion_tokens" (OpenAI)
  kStream,         // "stream" (both)
  kStreamOptions,  // "stream_options" (OpenAI): the object itself
  kIncludeUsage,   // stream_options.include_usage (OpenAI)
  kInsecure,       // "insecure" (native: /api/pull)
  kFrom,           // "from" (native: /api/create)
  kCount,
};

// A JSON value's type.
enum class BodyValueKind : uint8_t { kString, kNumber, kTrue, kFalse, kNull, kObject, kArray };

// Longest decoded text kept for a field's string value (longer: cut).
inline constexpr size_t kMaxFieldText = 512;
// Deepest nesting of arrays and objects accepted (Go's own limit is 10000).
inline constexpr size_t kMaxBodyDepth = 512;

// What the body says about one field: its last occurrence (the one Ollama
// uses) and how many there were.
struct BodyValue {
  // Occurrences of the key, as Go matches it (folded, escapes decoded; for
  // options.* the exact key, in every top-level "options" object). > 1:
  // the body gives it twice and the last one wins.
  uint32_t count = 0;
  // false when some occurrence's key was not written exactly as the field's
  // name ("Model", "mod\u0065l", "stream" with a long s).
  bool exact_key = true;
  BodyValueKind kind = BodyValueKind::kNull;
  // Offsets in the body of the last occurrence: its key's opening quote,
  // and its value [value_begin, value_end) (an object or array from its
  // opening bracket through its closing one; a string with its quotes).
  uint64_t key_begin = 0;
  uint64_t value_begin = 0;
  uint64_t value_end = 0;
  // A string: its decoded text (UTF-8; at most kMaxFieldText bytes,
  // text_cut when longer). A number: its bytes as written. Else empty.
  std::string text;
  bool text_cut = false;

  bool present() const { return count > 0; }
};

// Reads one request body fed in pieces split anywhere. Not thread-safe; one
// per request.
class RequestBodyReader {
 public:
  explicit RequestBodyReader(BodyApi api);

  // Reads the next bytes of the body (de-chunked). Returns false once the
  // body is known not to be one valid JSON object; error() says why and
  // nothing more is read.
  bool Feed(std::string_view bytes);
  // The body ended. Returns false when it is not one complete JSON object
  // (or was already known bad).
  bool Finish();

  // Why the body is refused, e.g. "invalid JSON at byte 17: expected ':'",
  // "the body is not a JSON object", "the body ends inside a string",
  // "JSON nested deeper than 512 levels". Empty while the body is fine.
  const std::string& error() const { return error_; }
  bool failed() const { return !error_.empty(); }
  // The root object has closed (later bytes may only be whitespace).
  bool complete() const;
  // Bytes fed so far.
  uint64_t offset() const { return offset_; }

  const BodyValue& Get(BodyField field) const { return fields_[static_cast<size_t>(field)]; }
  // Offsets of the root object's '{' and (once complete) its '}', and
  // whether it has no member (so an insertion needs no comma).
  uint64_t root_begin() const { return root_begin_; }
  uint64_t root_end() const { return root_end_; }
  bool root_empty() const { return root_members_ == 0; }
  // Of the last top-level "options" object: its '{' offset and whether it
  // has no member (valid when Get(kOptions) is an object).
  uint64_t options_begin() const { return options_begin_; }
  bool options_empty() const { return options_members_ == 0; }

  // Images the request carries and their size as written (base64 and
  // quotes excluded; escapes counted as written): the strings of the
  // top-level "images" array and of messages[*].images (native); the
  // image_url parts of messages[*].content (OpenAI: content[*].image_url,
  // a string or an object's "url").
  uint32_t images() const { return images_; }
  uint64_t image_bytes() const { return image_bytes_; }
  // Bytes of the text a prompt is made of, as written: "prompt",
  // "system", "suffix", messages[*].content (a string, or the "text" of
  // its parts), "input" (a string or an array of strings).
  uint64_t prompt_bytes() const { return prompt_bytes_; }

 private:
  // Keys longer than this match no field (the longest name has 21 bytes).
  static constexpr size_t kMaxKeyBytes = 64;
  // Containers whose role and start are remembered; deeper ones hold no
  // field (the deepest read is messages[*].content[*].image_url.url).
  static constexpr size_t kTracked = 8;

  enum class State : uint8_t {
    kStart,       // before the root object
    kValue,       // a value: after ':', or after ',' in an array
    kValueOrEnd,  // after '[': a value or ']'
    kKeyOrEnd,    // after '{': a key or '}'
    kKey,         // after ',' in an object: a key
    kColon,       // after a key
    kAfter,       // after a value in a container: ',' or its closer
    kDone,        // the root object closed: only whitespace may follow
    kString,
    kEscape,  // after a backslash in a string
    kHex,     // in the 4 hex digits of a \u escape
    kNumber,
    kLiteral,  // true, false, null
    kFailed,
  };
  enum class NumState : uint8_t {
    kStart,
    kMinus,
    kZero,
    kInt,
    kDot,
    kFrac,
    kExp,
    kExpSign,
    kExpDigits,
  };
  // What a container or a value is to the reader.
  enum class Role : uint8_t {
    kOther,
    kRoot,
    kOptions,         // root.options (native)
    kStreamOptions,   // root.stream_options (OpenAI)
    kMessages,        // root.messages
    kMessage,         // messages[*]
    kImages,          // root.images, messages[*].images (native)
    kImage,           // a string that is an image
    kPrompt,          // a string that is prompt text
    kPromptOrInputs,  // prompt, system, suffix, input: a string or strings
    kInputs,          // an array of prompt strings
    kContent,         // messages[*].content (OpenAI): a string or parts
    kParts,           // messages[*].content as an array
    kPart,            // content[*]
    kImageUrl,        // content[*].image_url: a string or {"url"}
    kImageUrlObject,  // content[*].image_url as an object
  };
  static constexpr const char* kLiterals[] = {"true", "false", "null"};

  bool Fail(std::string why);
  const char* Step(const char* p, const char* end);
  const char* StepStructure(const char* p);
  void StartValue(char c);
  void OpenContainer(bool array);
  void CloseContainer(bool array);
  void StartString(bool key);
  void Take(const char* from, const char* to);
  void Keep(std::string_view bytes);
  void ReadEscape(char c);
  void ReadHex(char c);
  void FlushSurrogate();
  void EndString();
  // False at the number's end (the byte is not part of it) or on an error.
  bool ReadNumber(char c);
  void EndNumber();
  void EndValue(BodyValueKind kind, uint64_t value_end);
  void EndKey();
  void RootKey(std::string_view key, bool native);
  Role ElementRole() const;
  Role RoleAt(size_t d) const { return d < kTracked ? frames_[d].role : Role::kOther; }
  bool in_array() const { return arrays_[depth_ - 1]; }

  BodyApi api_;
  std::string error_;
  State state_ = State::kStart;
  uint64_t offset_ = 0;  // bytes fed before the current piece
  // The current piece: its start, and its first byte's body offset.
  const char* begin_ = nullptr;
  uint64_t base_ = 0;
  uint64_t at_ = 0;  // body offset of the byte being read
  // Open containers: whether each is an array, and for the first kTracked
  // its role, start and the field it is the value of.
  size_t depth_ = 0;
  std::bitset<kMaxBodyDepth> arrays_;
  struct Frame {
    Role role = Role::kOther;
    BodyField field = BodyField::kCount;
    uint64_t value_begin = 0;
    uint64_t key_begin = 0;
    bool key_exact = true;
  };
  Frame frames_[kTracked];
  // The value about to be read, or being read.
  Role role_ = Role::kOther;
  BodyField field_ = BodyField::kCount;  // kCount: none
  uint64_t field_key_begin_ = 0;
  bool field_key_exact_ = true;
  uint64_t value_begin_ = 0;
  // The string being read.
  bool in_key_ = false;
  bool keep_text_ = false;
  bool escaped_ = false;  // it had an escape
  uint64_t key_begin_ = 0;
  uint64_t string_bytes_ = 0;  // as written, between the quotes
  std::string text_;           // decoded, for keys and fields
  bool text_cut_ = false;
  uint8_t hex_count_ = 0;
  uint16_t hex_value_ = 0;
  uint16_t high_surrogate_ = 0;
  // A number or literal being read.
  NumState num_state_ = NumState::kStart;
  std::string number_;
  bool number_cut_ = false;
  uint8_t literal_ = 0;
  uint8_t literal_pos_ = 0;
  // What was found.
  BodyValue fields_[static_cast<size_t>(BodyField::kCount)];
  uint64_t root_begin_ = 0;
  uint64_t root_end_ = 0;
  uint32_t root_members_ = 0;
  uint64_t options_begin_ = 0;
  uint32_t options_members_ = 0;
  uint64_t pending_options_begin_ = 0;
  uint32_t pending_options_members_ = 0;
  uint32_t images_ = 0;
  uint64_t image_bytes_ = 0;
  uint64_t prompt_bytes_ = 0;
};

// How long a model stays loaded after a request, as Ollama reads its
// "keep_alive" (api.Duration): a number is seconds (its fraction dropped),
// a string is a Go duration ("5m", "1h30m", "-1s"); a negative one keeps
// the model loaded forever; null or absent leaves the server's default.
// Anything else (true, an object, "5 minutes") Ollama refuses.
struct KeepAlive {
  enum class Kind : uint8_t { kDefault, kForever, kFor, kInvalid };
  Kind kind = Kind::kDefault;
  int64_t ns = 0;  // kFor: how long (0: unload at once)
};
KeepAlive ReadKeepAlive(const BodyValue& value);

// Go's time.ParseDuration: a sign, then one or more decimal numbers each
// with a unit (ns, us, \u00b5s, \u03bcs, ms, s, m, h), e.g. "300ms",
// "-1.5h", "2h45m"; "0" alone is allowed. Returns false where Go returns
// an error (no unit, unknown unit, overflow past int64 nanoseconds).
bool ParseGoDuration(std::string_view text, int64_t* ns);

}  // namespace sluice::policy
