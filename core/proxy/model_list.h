#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "policy/model_policy.h"

namespace sluice::core {

// The model lists that sluice answers for all its backends at once.
enum class ModelList {
  kTags,    // GET /api/tags: {"models":[...]}, entries keyed by "name"
  kPs,      // GET /api/ps: {"models":[...]}, entries keyed by "name"
  kOpenAi,  // GET /v1/models: {"object":"list","data":[...]}, keyed by "id"
};

// Merges the backends' answers to one model list request into one answer:
// the union of their entries in the order they were added (backend by
// backend), an entry whose key was seen already left out (the first
// backend's entry wins). Each entry is copied verbatim, every field as the
// backend wrote it, so clients that show sizes or details see what Ollama
// sent.
class ModelListMerger {
 public:
  explicit ModelListMerger(ModelList kind) : kind_(kind) {}
  // Keeps only the models `policy` allows (null: all). It outlives this.
  void set_filter(const policy::ModelPolicy* policy) { filter_ = policy; }

  // Adds one backend's answer body. An answer that is not such a list (not
  // valid JSON, no array under "models" or "data", an entry that is not an
  // object with a string key) adds nothing: InvalidArgumentError.
  absl::Status Add(std::string_view body);
  // The merged answer (an empty list when nothing was added).
  std::string Finish() const;
  // Entries kept so far.
  size_t size() const { return seen_.size(); }

 private:
  ModelList kind_;
  const policy::ModelPolicy* filter_ = nullptr;
  absl::flat_hash_set<std::string> seen_;
  std::string entries_;  // the kept entries, comma-separated
};

}  // namespace sluice::core
