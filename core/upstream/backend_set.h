#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/server/config.h"
#include "core/upstream/upstream_pool.h"

namespace sluice::core {

class Shard;

// A worker's way to its Ollama backends: one keepalive pool per backend
// (--upstream) and the choice of backend for each request (--balance).
// Per worker like everything on the request path: round robin turns and
// in-flight counts are this worker's own.
class BackendSet {
 public:
  BackendSet(Shard* shard, const std::vector<BackendConfig>& backends, Balance balance);

  // The pool of the backend for the next request, among those not left
  // out for failures and other than `except`; null when none is (with one
  // backend: always that one, as nginx never leaves out a lone server).
  UpstreamPool* Pick(const UpstreamPool* except = nullptr);
  // When the first backend left out comes back (for Retry-After).
  int64_t NextAvailableNs() const;
  size_t size() const { return pools_.size(); }

  const std::vector<std::unique_ptr<UpstreamPool>>& pools() const { return pools_; }
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

  Shard* shard_;

  Balance balance_;
  std::vector<std::unique_ptr<UpstreamPool>> pools_;
  std::vector<int64_t> credit_;
  size_t next_ = 0;
  std::vector<bool> usable_;
};

}  // namespace sluice::core
