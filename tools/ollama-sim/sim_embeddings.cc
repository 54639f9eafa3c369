#include "sim_embeddings.h"

#include <cstdint>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "json_scan.h"

namespace sluice::sim {
namespace {

constexpr int kPromptTokensPerInput = 8;
constexpr float kVector[] = {0.125f, -0.25f, 0.375f, -0.5f, 0.625f, -0.75f, 0.875f, -1.0f};
constexpr absl::string_view kVectorJson = "[0.125,-0.25,0.375,-0.5,0.625,-0.75,0.875,-1.0]";

// How many inputs the request carries: the elements of an "input" array of
// strings or token arrays, or one for anything else (a string, a flat token
// array, a missing field).
int InputCount(absl::string_view request_body) {
  std::optional<JsonValue> input = FindJsonField(request_body, "input");
  if (!input || input->is_string) return 1;
  int count = CountJsonArrayElements(input->raw);
  if (count < 0) return 1;
  // A flat array of token ids is one input; an array of strings or of
  // token arrays is one input per element.
  absl::string_view rest = absl::StripLeadingAsciiWhitespace(input->raw.substr(1));
  if (count > 0 && rest[0] != '"' && rest[0] != '[') return 1;
  return count;
}

std::string VectorBase64() {
  std::string bytes;
  for (float value : kVector) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    for (int shift = 0; shift < 32; shift += 8) {
      bytes.push_back(static_cast<char>((bits >> shift) & 0xff));
    }
  }
  return absl::Base64Escape(bytes);
}

}  // namespace

std::string OllamaEmbedBody(absl::string_view request_body, absl::string_view model) {
  int inputs = InputCount(request_body);
  std::string body = absl::StrCat("{\"model\":\"", model, "\",\"embeddings\":[");
  for (int i = 0; i < inputs; ++i) {
    absl::StrAppend(&body, i ? "," : "", kVectorJson);
  }
  absl::StrAppend(&body,
                  "],\"total_duration\":1000000,\"load_duration\":1000,"
                  "\"prompt_eval_count\":",
                  kPromptTokensPerInput * inputs, "}");
  return body;
}

std::string OllamaEmbeddingBody() { return absl::StrCat("{\"embedding\":", kVectorJson, "}"); }

std::string OpenAiEmbeddingsBody(absl::string_view request_body, absl::string_view model) {
  int inputs = InputCount(request_body);
  bool base64 = FindJsonString(request_body, "encoding_format").value_or("") == "base64";
  std::string vector = base64 ? absl::StrCat("\"", VectorBase64(), "\"") : std::string(kVectorJson);
  std::string body = "{\"object\":\"list\",\"data\":[";
  for (int i = 0; i < inputs; ++i) {
    absl::StrAppend(&body, i ? "," : "", "{\"object\":\"embedding\",\"embedding\":", vector,
                    ",\"index\":", i, "}");
  }
  int tokens = kPromptTokensPerInput * inputs;
  absl::StrAppend(&body, "],\"model\":\"", model, "\",\"usage\":{\"prompt_tokens\":", tokens,
                  ",\"total_tokens\":", tokens, "}}");
  return body;
}

}  // namespace sluice::sim
