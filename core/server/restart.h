// Zero-downtime restart (SIGUSR2), as nginx's binary upgrade does it: the
// running process starts its own binary again (the file at the path it was
// started from, so an upgraded binary takes over) with the same arguments,
// handing it the listening sockets. The sockets never close, so no
// connection is refused: until the new process is ready the old one
// accepts, after it both may, and then the old one drains (as on SIGTERM)
// and exits. A new process that fails to start leaves the old one running.
//
// The hand-over is two environment variables of the new process:
//   SLUICE_LISTEN_FDS=3,4,...  the listening sockets, in the order the
//                              process creates them (each listener's
//                              sockets, worker 0 first)
//   SLUICE_READY_FD=N          a pipe the new process writes one byte to
//                              once every worker runs
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/server/config.h"

namespace sluice::core {

// The sockets handed over by a restarting parent (and removes the variable,
// so they are not handed on by accident). Empty when started normally.
absl::StatusOr<std::vector<int>> TakeInheritedListeners();

// Whether `fd` is a listening TCP socket bound to `want` (any port when
// want's port is 0).
bool ListenerMatches(int fd, const SocketAddress& want);

// Tells a restarting parent that this process serves now (no-op when not
// started by a restart).
void NotifyRestartReady();

// The parent's side of a restart.
class Restarter {
 public:
  // Remembers how this process was started: the binary's path (resolved
  // now, so a later upgrade in place is what a restart runs) and argv.
  Restarter(int argc, char** argv);
  ~Restarter();

  // Starts the new process with `listeners` handed over.
  absl::Status Start(const std::vector<int>& listeners);
  bool in_progress() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

  enum class State { kIdle, kWaiting, kReady, kFailed };
  // Non-blocking: has the new process said it is ready, or ended first?
  // kFailed fills `why`; kReady and kFailed end the attempt.
  State Check(std::string* why);

 private:
  void Reset();

  std::string exe_;
  std::vector<std::string> argv_;
  pid_t pid_ = -1;
  int ready_fd_ = -1;  // read end of the readiness pipe
  int64_t started_ns_ = 0;
};

}  // namespace sluice::core
