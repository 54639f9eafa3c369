// The bodies of the simulator's embedding answers: /api/embed,
// /api/embeddings and OpenAI's /v1/embeddings. Every input gets the same
// fixed 8-dimensional vector, so tests can predict the bytes.
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace sluice::sim {

// POST /api/embed: one vector per element of an "input" array, else one.
std::string OllamaEmbedBody(absl::string_view request_body, absl::string_view model);

// POST /api/embeddings (the older single-prompt endpoint).
std::string OllamaEmbeddingBody();

// POST /v1/embeddings: one list item per element of an "input" array (else
// one), each a float array, or with "encoding_format":"base64" the base64 of
// its little-endian float32 values, as OpenAI's API gives them.
std::string OpenAiEmbeddingsBody(absl::string_view request_body, absl::string_view model);

}  // namespace sluice::sim
