#include "core/server/workers.h"

#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <future>
#include <utility>

namespace sluice::core {

std::vector<int> AllowedCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int i = 0; i < CPU_SETSIZE; ++i) {
      if (CPU_ISSET(i, &set)) cpus.push_back(i);
    }
  }
  if (cpus.empty()) cpus.push_back(-1);
  return cpus;
}

int64_t RaiseOpenFilesLimit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
  if (rl.rlim_cur < rl.rlim_max) {
    rlimit raised = rl;
    raised.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
  }
  return rl.rlim_cur == RLIM_INFINITY ? int64_t{1} << 20 : static_cast<int64_t>(rl.rlim_cur);
}

int ConnectionsPerWorker(int max_connections, int64_t nofile, int workers) {
  int64_t total = max_connections;
  if (total == 0) total = std::max<int64_t>(16, (nofile - 256) / 2);
  return static_cast<int>((total + workers - 1) / workers);
}

WorkerThreads::WorkerThreads(const Config& config, std::vector<std::vector<Listener>> listeners,
                             const std::vector<int>& cpus, Observability* obs)
    : running_(static_cast<int>(listeners.size())) {
  for (size_t i = 0; i < listeners.size(); ++i) {
    int cpu = cpus[i % cpus.size()];
    workers_.push_back(
        std::make_unique<Worker>(static_cast<int>(i), config, std::move(listeners[i]), cpu));
    obs->shards.push_back(workers_.back()->shard());
  }
}

absl::Status WorkerThreads::Start() {
  const size_t n = workers_.size();
  ready_ = std::vector<std::promise<absl::Status>>(n);
  for (size_t i = 0; i < n; ++i) {
    threads_.emplace_back([this, i] {
      Worker& w = *workers_[i];
      absl::Status st = w.Init();
      ready_[i].set_value(st);
      if (st.ok()) w.Run();
      running_.fetch_sub(1);
      kill(getpid(), SIGRTMIN);  // wake the signal loop
    });
  }
  absl::Status init_error;
  for (size_t i = 0; i < n; ++i) {
    absl::Status st = ready_[i].get_future().get();
    if (!st.ok() && init_error.ok()) init_error = st;
  }
  if (!init_error.ok()) {
    RequestStop();
    Join();
  }
  return init_error;
}

void WorkerThreads::RequestStop() {
  for (auto& w : workers_) w->RequestStop();
}

void WorkerThreads::Join() {
  for (auto& t : threads_) t.join();
}

}  // namespace sluice::core
