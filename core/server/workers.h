// The worker threads: how many, on which CPUs, with what share of the
// connection cap, started and stopped together.
#pragma once

#include <atomic>
#include <cstdint>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "core/observe/observability.h"
#include "core/server/config.h"
#include "core/server/worker.h"

namespace sluice::core {

// The CPUs in this thread's affinity mask ({-1}: unknown, do not pin).
std::vector<int> AllowedCpus();

// Raises RLIMIT_NOFILE's soft limit to the hard one, as nginx's
// worker_rlimit_nofile would be set; returns the soft limit in force.
int64_t RaiseOpenFilesLimit();

// --max_connections shared by `workers` (rounded up), or when 0, half the
// open-files limit `nofile` less a reserve for listeners, rings, logs and
// the process's own files: each client connection may hold one upstream
// link.
int ConnectionsPerWorker(int max_connections, int64_t nofile, int workers);

// One thread per worker. A thread whose worker ends (its loop returned, or
// its Init failed) sends SIGRTMIN to the process, to wake the main
// thread's signal loop at once.
class WorkerThreads {
 public:
  // Makes worker i with listeners[i], pinned to cpus[i % cpus.size()], for
  // every i < listeners.size(), and lists each in obs->workers. `config`
  // and `obs` must outlive the workers.
  WorkerThreads(const Config& config, std::vector<std::vector<Listener>> listeners,
                const std::vector<int>& cpus, Observability* obs);
  WorkerThreads(const WorkerThreads&) = delete;
  WorkerThreads& operator=(const WorkerThreads&) = delete;

  // Starts every thread and waits until each worker's Init returned. On an
  // error, stops the workers that did start, joins every thread and
  // returns the first error.
  absl::Status Start();
  // Workers whose loop has not ended yet.
  int running() const { return running_.load(); }
  // Asks every worker to stop accepting and drain.
  void RequestStop();
  void Join();
  const std::vector<std::unique_ptr<Worker>>& workers() const { return workers_; }

 private:
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;
  // Each worker's Init result; kept as long as the threads that set them.
  std::vector<std::promise<absl::Status>> ready_;
  std::atomic<int> running_;
};

}  // namespace sluice::core
