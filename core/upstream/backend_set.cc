#include "core/upstream/backend_set.h"

#include <algorithm>

#include "absl/strings/str_join.h"
#include "core/server/shard.h"
#include "core/upstream/health.h"
#include "core/upstream/resolver.h"

namespace sluice::core {

BackendSet::BackendSet(Shard* shard, const std::vector<BackendConfig>& backends, Balance balance,
                       bool counted)
    : shard_(shard), backends_(&backends), balance_(balance), credit_(backends.size(), 0) {
  for (size_t i = 0; i < backends.size(); ++i) {
    // SIZE_MAX: no metrics slot (every use checks the index).
    pools_.push_back(std::make_unique<UpstreamPool>(shard, &backends[i], counted ? i : SIZE_MAX));
    has_names_ = has_names_ || backends[i].dns != nullptr;
  }
}

bool BackendSet::Usable(const UpstreamPool* pool) const { return UsableIn(pool, size() == 1); }

bool BackendSet::UsableIn(const UpstreamPool* pool, bool lone) const {
  if (!HasAddress(pool->backend())) return false;
  if (lone) return true;
  const BackendHealth* health = pool->backend().health;
  return pool->available(shard_->now_ns()) && (health == nullptr || health->up());
}

bool BackendSet::MarkUsable(const UpstreamPool* except) {
  usable_.assign(pools_.size(), false);
  bool any = false;
  for (size_t i = 0; i < pools_.size(); ++i) {
    pools_[i]->FollowAddress();
    usable_[i] = pools_[i].get() != except && UsableIn(pools_[i].get(), false);
    any = any || usable_[i];
  }
  return any;
}

UpstreamPool* BackendSet::Lone(const UpstreamPool* except) {
  UpstreamPool* lone = nullptr;
  for (auto& p : pools_) {
    p->FollowAddress();  // a name's other places close their idle links
    if (lone == nullptr && HasAddress(p->backend())) lone = p.get();
  }
  return lone == except ? nullptr : lone;
}

UpstreamPool* BackendSet::Pick(const UpstreamPool* except) {
  if (size() == 1) return Lone(except);
  if (!MarkUsable(except)) return nullptr;
  const size_t i =
      balance_ == Balance::kRoundRobin ? PickRoundRobin(usable_) : PickLeastConn(usable_);
  return pools_[i].get();
}

UpstreamPool* BackendSet::PickForModel(const std::string& model, const UpstreamPool* except,
                                       RouteChoice* choice) {
  if (balance_ != Balance::kModel || size() == 1) {
    UpstreamPool* pool = Pick(except);
    *choice = {pool ? RouteChoice::Kind::kLoaded : RouteChoice::Kind::kNone, pool ? 0 : -1};
    return pool;
  }
  MarkUsable(except);
  candidates_.resize(pools_.size());
  for (size_t i = 0; i < pools_.size(); ++i) {
    const BackendConfig& b = pools_[i]->backend();
    RouteCandidate& c = candidates_[i];
    c.usable = usable_[i];
    c.slots = b.slots > 0 ? b.slots : 1;
    c.max_loaded = b.max_loaded;
    c.view = b.models != nullptr ? b.models->Look(model, shard_->now_ns()) : ModelTable::View{};
    // A name's slot without an address is no backend at all (not one that
    // might have the model), unless the name has none yet.
    if (!HasAddress(b) && (b.dns_slot > 0 || b.dns->resolved())) {
      c.view.has = ModelTable::View::Has::kNo;
    }
  }
  *choice = ChooseBackend(candidates_);
  return choice->index >= 0 ? pools_[choice->index].get() : nullptr;
}

UpstreamPool* BackendSet::Find(std::string_view name) {
  for (auto& p : pools_) {
    if (p->backend().name == name) return p.get();
  }
  return nullptr;
}

std::string BackendSet::Names() const {
  std::vector<std::string> names;
  for (const auto& p : pools_) {
    const BackendConfig& b = p->backend();
    if (HasAddress(b) || b.dns_slot == 0) names.push_back(b.name);
  }
  return absl::StrJoin(names, ", ");
}

int64_t BackendSet::NextAvailableNs() const {
  int64_t next = INT64_MAX;
  for (const auto& p : pools_) next = std::min(next, p->out_until_ns());
  return next;
}

size_t BackendSet::PickRoundRobin(const std::vector<bool>& usable) {
  size_t best = pools_.size();
  int64_t total = 0;
  for (size_t i = 0; i < pools_.size(); ++i) {
    if (!usable[i]) continue;
    credit_[i] += pools_[i]->backend().weight;
    total += pools_[i]->backend().weight;
    if (best == pools_.size() || credit_[i] > credit_[best]) best = i;
  }
  credit_[best] -= total;
  return best;
}

size_t BackendSet::PickLeastConn(const std::vector<bool>& usable) {
  // in_use / weight compared as cross products; the scan starts after the
  // last pick so that ties rotate.
  const size_t n = pools_.size();
  size_t best = n;
  for (size_t k = 0; k < n; ++k) {
    const size_t i = (next_ + k) % n;
    if (!usable[i]) continue;
    if (best == n) {
      best = i;
      continue;
    }
    const uint64_t load_i =
        pools_[i]->in_use() * static_cast<uint64_t>(pools_[best]->backend().weight);
    const uint64_t load_best =
        pools_[best]->in_use() * static_cast<uint64_t>(pools_[i]->backend().weight);
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
