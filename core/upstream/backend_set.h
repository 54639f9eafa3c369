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

  // The pool of the backend for the next request.
  UpstreamPool& Pick();

  const std::vector<std::unique_ptr<UpstreamPool>>& pools() const { return pools_; }
  // Closes every idle link (drain).
  void CloseIdle();
  size_t open_count() const;
  size_t idle_count() const;

 private:
  // Smooth weighted round robin (as nginx's): each pick adds every
  // backend's weight to its credit and takes the one with the most, which
  // then pays the total; weights 2:1 give A B A, A B A...
  size_t PickRoundRobin();
  // The fewest requests in flight per unit of weight; ties by round robin.
  size_t PickLeastConn();

  Balance balance_;
  std::vector<std::unique_ptr<UpstreamPool>> pools_;
  std::vector<int64_t> credit_;
  int64_t total_weight_ = 0;
  size_t next_ = 0;
};

}  // namespace sluice::core
