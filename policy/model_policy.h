#pragma once

// What a key may ask of Ollama's models, read from its request body: which
// models (names and globs), aliases rewritten to real models, and the most
// keep_alive, num_ctx and num_predict (or /v1 max_tokens) it may set. Flags
// give the defaults; a key's line in the keys file may override each
// setting (README "Model policy").

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "policy/request_body.h"

namespace sluice::policy {

// No limit on a value (max_keep_alive=inf, max_num_ctx=0...).
inline constexpr int64_t kNoLimit = -1;

// The settings as written (flags or one key's line): each unset one takes
// the default's value.
struct ModelSettings {
  std::optional<std::vector<std::string>> models;            // allowed names and globs; empty: any
  std::vector<std::pair<std::string, std::string>> aliases;  // name asked -> model used
  std::optional<int64_t> max_keep_alive_ns;                  // kNoLimit: none
  std::optional<bool> keep_alive_forever;                    // a negative keep_alive allowed
  std::optional<int64_t> max_num_ctx;                        // kNoLimit: none
  std::optional<int64_t> max_num_predict;                    // kNoLimit: none
  std::optional<bool> refuse_over;                     // past a maximum: 400 rather than lowered
  std::optional<std::vector<std::string>> registries;  // pull/create sources
  std::optional<int64_t> max_images;                   // kNoLimit: none
  std::optional<int64_t> max_image_bytes;              // all of a request's, as sent

  bool empty() const;
};

// Parses one setting `name=value` into `s`:
//   models=GLOB[,GLOB...]      allowed models ("*" any; "" none given)
//   alias=NAME=MODEL           NAME is sent to Ollama as MODEL (repeatable)
//   max_keep_alive=DURATION    Go or absl duration ("30m", "1h"), or "inf"
//   keep_alive_forever=yes|no  whether keep_alive may be negative (forever)
//   max_num_ctx=N              0: no limit
//   max_num_predict=N          0: no limit (also /v1 max_tokens)
//   over_max=clamp|refuse      a value past its maximum is lowered or refused
//   pull_registries=HOST,...   registries /api/pull and /api/create "from"
//                              may fetch from ("*": any)
//   max_images=N               images in one request; 0: no limit
//   max_image_bytes=SIZE       their size as sent (base64), 20M, 512k; 0: none
// Returns InvalidArgument naming the setting; NotFound when `name` is none
// of these (the caller may know other settings).
absl::Status ParseModelSetting(absl::string_view name, absl::string_view value, ModelSettings* s);
// The settings back as `name=value` words (for `sluice keys list`).
std::vector<std::string> ModelSettingWords(const ModelSettings& s);

// The settings in force for one key. Built alone it checks nothing but the
// registries; the binary's defaults come from the flags (--max_keep_alive=1h
// and --keep_alive_forever=false among them, core/server/flags.cc).
struct ModelPolicy {
  std::vector<std::string> models;                           // canonical globs; empty: any model
  std::vector<std::pair<std::string, std::string>> aliases;  // canonical name -> model as written
  int64_t max_keep_alive_ns = kNoLimit;
  bool keep_alive_forever = true;
  int64_t max_num_ctx = kNoLimit;
  int64_t max_num_predict = kNoLimit;
  bool refuse_over = false;
  // Registries /api/pull may fetch from and /api/create may build "from"
  // (hosts, lower case; "*": any).
  std::vector<std::string> registries = {"registry.ollama.ai"};
  int64_t max_images = kNoLimit;
  int64_t max_image_bytes = kNoLimit;

  // `over` with the unset settings taken from this one.
  ModelPolicy With(const ModelSettings& over) const;
  // True when the policy checks nothing in a body: no model list, no
  // alias, no maximum, forever allowed.
  bool Open() const;
};

// Ollama's full name for a model name: lower case, ":latest" when no tag,
// its default registry and namespace ("registry.ollama.ai/library/")
// dropped, so "Llama3", "library/llama3" and "llama3:latest" are one.
std::string CanonicalModelName(absl::string_view name);
// Whether `model` (canonical) is one the policy allows: any when the list
// is empty, else one matching a glob (`*` any run, `?` one character).
bool ModelAllowed(const ModelPolicy& p, absl::string_view model);
bool GlobMatch(absl::string_view glob, absl::string_view text);

// A change to the body: bytes [begin, end) become `text` (begin == end: an
// insertion).
struct BodyEdit {
  uint64_t begin = 0;
  uint64_t end = 0;
  std::string text;
};

// What changed, by kind (flags), for metrics and the access log.
enum BodyRewrite : uint32_t {
  kRewriteAlias = 1,
  kRewriteKeepAlive = 2,
  kRewriteNumCtx = 4,
  kRewriteNumPredict = 8,
};
inline constexpr const char* kBodyRewriteNames[] = {"alias", "keep_alive", "num_ctx",
                                                    "num_predict"};

// The policy's answer on one body.
struct BodyVerdict {
  int status = 0;      // 0: forward (with `edits`); else refuse: 400 or 403
  std::string error;   // the refusal's message
  std::string reason;  // the refusal's kind for metrics and logs ("model", "keep_alive"...)
  std::string model;   // the model Ollama will be asked for (after aliases), as written
  std::vector<BodyEdit> edits;  // in body order, not overlapping
  uint32_t rewrites = 0;        // BodyRewrite flags
};

// What a route does with the body's fields.
enum class BodyRoute : uint8_t {
  kGenerate,  // /api/generate, /api/chat, /v1/chat/completions, /v1/completions
  kEmbed,     // /api/embed, /api/embeddings, /v1/embeddings: no num_predict
  kPull,      // /api/pull: the registry and "insecure" only
  kCreate,    // /api/create: the registry of "from" only
};

// The registry a model name fetches from, as Ollama parses names
// (HOST/NAMESPACE/MODEL[:TAG]: the host when there are three parts or
// more), lower case, its port kept; "registry.ollama.ai" otherwise.
std::string ModelRegistry(absl::string_view name);

// Judges a complete body (the reader fed all of it and Finish()ed).
BodyVerdict JudgeBody(const ModelPolicy& p, BodyApi api, BodyRoute route,
                      const RequestBodyReader& body);

// The body with `edits` applied (for tests and small bodies).
std::string ApplyEdits(absl::string_view body, const std::vector<BodyEdit>& edits);

}  // namespace sluice::policy
