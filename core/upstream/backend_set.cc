#include "core/upstream/backend_set.h"

namespace sluice::core {

BackendSet::BackendSet(Shard* shard, const std::vector<BackendConfig>& backends,
                       Balance balance)
    : balance_(balance), credit_(backends.size(), 0) {
  for (const BackendConfig& b : backends) {
    pools_.push_back(std::make_unique<UpstreamPool>(shard, &b));
    total_weight_ += b.weight;
  }
}

UpstreamPool& BackendSet::Pick() {
  if (pools_.size() == 1) return *pools_[0];
  const size_t i = balance_ == Balance::kLeastConn ? PickLeastConn() : PickRoundRobin();
  return *pools_[i];
}

size_t BackendSet::PickRoundRobin() {
  size_t best = 0;
  for (size_t i = 0; i < pools_.size(); ++i) {
    credit_[i] += pools_[i]->backend().weight;
    if (credit_[i] > credit_[best]) best = i;
  }
  credit_[best] -= total_weight_;
  return best;
}

size_t BackendSet::PickLeastConn() {
  // in_use / weight compared as cross products; the scan starts after the
  // last pick so that ties rotate.
  const size_t n = pools_.size();
  size_t best = next_ % n;
  for (size_t k = 1; k < n; ++k) {
    const size_t i = (next_ + k) % n;
    const uint64_t load_i = pools_[i]->in_use() * static_cast<uint64_t>(pools_[best]->backend().weight);
    const uint64_t load_best = pools_[best]->in_use() * static_cast<uint64_t>(pools_[i]->backend().weight);
    if (load_i < load_best) best = i;
  }
  next_ = best + 1;
  return best;
}

void BackendSet::CloseIdle() {
  for (auto& p : pools_) p->CloseIdle();
}

size_t BackendSet::open_count() const {
  size_t n = 0;
  for (const auto& p : pools_) n += p->open_count();
  return n;
}

size_t BackendSet::idle_count() const {
  size_t n = 0;
  for (const auto& p : pools_) n += p->idle_count();
  return n;
}

}  // namespace sluice::core
