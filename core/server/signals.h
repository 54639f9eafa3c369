// The main thread's part once the workers run: it waits for signals and
// acts on them.
//   SIGHUP          reload the policy and the certificate (reload.h)
//   SIGUSR1         reopen the log files (after logrotate renamed them)
//   SIGUSR2         restart: start the binary again, handing it the
//                   listening sockets (restart.h); once it serves, drain
//   SIGTERM/SIGINT  stop accepting and drain; a second one exits at once
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "core/observe/log_file.h"
#include "core/server/reload.h"
#include "core/server/restart.h"
#include "core/server/worker.h"
#include "core/server/workers.h"

namespace sluice::core {

// Blocks the signals above (and SIGPIPE, and SIGRTMIN, which a worker
// thread sends when it ends) in the calling thread, so that every thread
// started after it inherits the blocked mask and only the signal loop
// takes them. Returns the set, for SignalLoop.
sigset_t BlockSignals();

// SIGUSR1: each worker hands over the access log lines it holds, so that
// they go to the old file; waits up to a second for them all.
void FlushAccessLogs(const std::vector<std::unique_ptr<Worker>>& workers);

class SignalLoop {
 public:
  // Everything is borrowed and must outlive Run. `access_log` may be null;
  // `listen_fds` are the sockets a restart hands over, in their order.
  SignalLoop(const sigset_t& sigs, Restarter* restarter, Reloader* reloader, WorkerThreads* workers,
             LogFile* access_log, std::vector<int> listen_fds, int64_t drain_timeout_ns);

  // Takes signals and follows a restart in progress until every worker's
  // loop has ended.
  void Run();

 private:
  void CheckRestart();
  void ReopenLogs();
  void StartRestart();
  void Stop(int sig);
  void BeginDrain(const char* why);

  const sigset_t sigs_;
  Restarter* const restarter_;
  Reloader* const reloader_;
  WorkerThreads* const workers_;
  LogFile* const access_log_;
  const std::vector<int> listen_fds_;
  const int64_t drain_timeout_ns_;
  bool stopping_ = false;
  pid_t restart_pid_ = -1;
};

}  // namespace sluice::core
