#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "core/engine/loop.h"
#include "core/engine/timer.h"
#include "core/server/config.h"
#include "core/server/shard.h"

namespace sluice::core {

enum class ListenerKind;

// A bound, listening SO_REUSEPORT socket a worker owns, and what it serves.
struct Listener {
  int fd = -1;
  ListenerKind kind;
};

// One thread pinned to one CPU: its event loop (core/engine/loop.h:
// io_uring, provided buffers, timers), its SO_REUSEPORT listeners, and its
// shard, the per-core state the proxy runs on (core/server/shard.h).
// Nothing on the request path is shared with other workers.
class Worker final : public Acceptor {
 public:
  // The worker owns the listeners' sockets.
  Worker(int index, const Config& config, std::vector<Listener> listeners, int cpu);
  ~Worker();

  // Sets up the ring and buffers; runs on the worker's thread.
  absl::Status Init();
  // The event loop; returns once stopped and drained.
  void Run();
  // Thread-safe: asks the loop to stop accepting and drain.
  void RequestStop();
  // Thread-safe: runs `fn` on this worker's loop soon.
  void Post(std::function<void()> fn) { loop_.Post(std::move(fn)); }

  Shard* shard() { return &shard_; }
  int index() const { return index_; }

 private:
  void OnAccepted(int tag, int fd) override;
  void OnAcceptError(int tag, int res) override;
  void BeginDrain();
  // Whether the loop goes on after this turn: until drained or past the
  // drain deadline.
  bool KeepGoing();

  const int index_;
  const Config& config_;
  std::vector<Listener> listeners_;
  Loop loop_;
  Shard shard_;
  bool drain_timed_out_ = false;
  int64_t drain_deadline_ns_ = 0;
  Timer drain_timer_;               // wakes the loop at the drain deadline
  int64_t overload_logged_ns_ = 0;  // last "connection limit" warning
};

}  // namespace sluice::core
