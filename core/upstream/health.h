#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "core/server/config.h"
#include "core/upstream/model_router.h"

namespace sluice::core {

// What the active checks know of one backend, shared by every worker: up
// or down, and the models it has (/api/tags) and has loaded (/api/ps).
// Written by the prober's thread, read on the request path with one atomic
// load (up) or a short lock (the model lists, which change rarely).
class BackendHealth {
 public:
  explicit BackendHealth(int max_loaded = 0) : table_(max_loaded) {}

  // Until the first check says otherwise a backend is up.
  bool up() const { return up_.load(std::memory_order_relaxed); }
  std::vector<std::string> models() const;
  std::vector<std::string> loaded() const;
  uint64_t checks() const { return checks_.load(std::memory_order_relaxed); }
  uint64_t failed_checks() const { return failed_.load(std::memory_order_relaxed); }
  // The router's table of this backend's models, fed by the checks too.
  ModelTable* table() { return &table_; }
  const ModelTable* table() const { return &table_; }

 private:
  friend class HealthProber;
  std::atomic<bool> up_{true};
  std::atomic<uint64_t> checks_{0};
  std::atomic<uint64_t> failed_{0};
  int failures_in_row_ = 0;          // the prober's thread only
  uint64_t address_generation_ = 0;  // the prober's thread only
  std::atomic<bool> forgotten_{false};
  mutable std::mutex mu_;
  std::vector<std::string> models_;  // guarded by mu_
  std::vector<std::string> loaded_;  // guarded by mu_
  ModelTable table_;
};

// The "name" of every entry of the "models" array of an /api/tags or
// /api/ps answer.
absl::StatusOr<std::vector<std::string>> ModelNames(std::string_view json);

// One thread for the whole process (not one per worker) that checks every
// backend each `interval_ns`: GET /api/ps (the loaded models; a refused or
// slow connection, or an answer other than 200, is a failed check), and
// GET /api/tags on the first round and every tenth. Two failed checks in a
// row mark a backend down; one good check brings it back. The requests
// are plain blocking HTTP/1.1 with `timeout_ns` for each step, off the
// workers' loops. A name's backend without an address is not checked, and
// no backend is while there is only one (CountBackends: a name with one
// address).
class HealthProber {
 public:
  HealthProber(const std::vector<BackendConfig>& backends, int64_t interval_ns, int64_t timeout_ns);
  ~HealthProber();
  HealthProber(const HealthProber&) = delete;
  HealthProber& operator=(const HealthProber&) = delete;

  void Start();
  void Stop();
  // One round of checks on the caller's thread.
  void CheckAll();
  BackendHealth* health(size_t i) { return health_[i].get(); }
  // Backend `i`'s address changed (any thread): what the checks found is
  // forgotten, as is what the router knew of its models; it is up until a
  // check of its new address says otherwise.
  void Forget(size_t i);

 private:
  void Run();
  void Check(size_t i, bool with_tags);

  std::vector<BackendConfig> backends_;
  std::vector<std::unique_ptr<BackendHealth>> health_;
  const int64_t interval_ns_;
  const int64_t timeout_ns_;
  uint64_t rounds_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// GET `path` from `backend` with Connection: close: the status and body.
struct ProbeAnswer {
  int status = 0;
  std::string body;
};
absl::StatusOr<ProbeAnswer> ProbeGet(const BackendConfig& backend, std::string_view path,
                                     int64_t timeout_ns);

}  // namespace sluice::core
