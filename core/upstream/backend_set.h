#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/server/config.h"
#include "core/upstream/model_router.h"
#include "core/upstream/resolver.h"
#include "core/upstream/upstream_pool.h"

namespace sluice::core {

class Shard;

// A worker's way to its Ollama backends: one keepalive pool per backend
// (--upstream, a DNS name as one per address: ExpandNames) and the choice
// of backend for each request (--balance). Per worker like everything on
// the request path: round robin turns and in-flight counts are this
// worker's own. A backend without an address (a name's unused slot, or a
// name that does not resolve) is never picked.
class BackendSet {
 public:
  // `backends` outlives the set. `counted`: the backends have slots in
  // the per-backend metrics (those of --upstream); a rules-file
  // upstream's have none.
  BackendSet(Shard* shard, const std::vector<BackendConfig>& backends, Balance balance,
             bool counted = true);

  // The pool of the backend for the next request, among those up (by the
  // active checks), not left out for failures and other than `except`;
  // null when none is (with one backend: always that one, as nginx never
  // leaves out a lone server).
  UpstreamPool* Pick(const UpstreamPool* except = nullptr);
  // The pool for a generation of `model` (canonical, see CanonicalModel)
  // by ChooseBackend, and how it was chosen; null with choice->kind
  // kNotFound or kNone. With one backend: always that one (kLoaded).
  UpstreamPool* PickForModel(const std::string& model, const UpstreamPool* except,
                             RouteChoice* choice);
  // The backend named `name` (name= in --upstream, else host:port); null
  // when none is.
  UpstreamPool* Find(std::string_view name);
  // Whether `pool` is up and not left out for failures (with one backend:
  // always).
  bool Usable(const UpstreamPool* pool) const;
  // "a, b, c": every backend's name (error messages); of a name's
  // backends, those with an address and the first.
  std::string Names() const;
  // When the first backend left out comes back (for Retry-After).
  int64_t NextAvailableNs() const;
  // How many backends there are now (CountBackends): with one, it takes
  // every request, as nginx never leaves out a lone server, and the
  // several-backend features (model routing, merged model lists, admin
  // requests naming their backend) stay off. A name with one address is
  // one backend; with three, three.
  size_t size() const { return has_names_ ? CountBackends(*backends_) : pools_.size(); }

  const std::vector<std::unique_ptr<UpstreamPool>>& pools() const { return pools_; }
  // What holds the backends' configs when this set does not outlive them
  // otherwise (a rules-file upstream): kept as long as the set.
  void set_owner(std::shared_ptr<const void> owner) { owner_ = std::move(owner); }
  // Closes every idle link (drain).
  void CloseIdle();
  size_t open_count() const;
  size_t idle_count() const;

 private:
  // Smooth weighted round robin (as nginx's): each pick adds every
  // backend's weight to its credit and takes the one with the most, which
  // then pays the total; weights 2:1 give A B A, A B A...
  size_t PickRoundRobin(const std::vector<bool>& usable);
  // The fewest requests in flight per unit of weight; ties by round robin.
  size_t PickLeastConn(const std::vector<bool>& usable);
  // Fills usable_ (up, not left out, not `except`); false when none is.
  bool MarkUsable(const UpstreamPool* except);
  bool UsableIn(const UpstreamPool* pool, bool lone) const;
  // The one backend with an address, other than `except` (null if none).
  UpstreamPool* Lone(const UpstreamPool* except);

  std::shared_ptr<const void> owner_;  // before pools_: outlives them
  Shard* shard_;
  const std::vector<BackendConfig>* backends_;
  bool has_names_ = false;

  Balance balance_;
  std::vector<std::unique_ptr<UpstreamPool>> pools_;
  std::vector<int64_t> credit_;
  size_t next_ = 0;
  std::vector<bool> usable_;
  std::vector<RouteCandidate> candidates_;
};

}  // namespace sluice::core
