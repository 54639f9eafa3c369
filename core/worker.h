#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "core/buffer.h"
#include "core/config.h"
#include "core/ring.h"
#include "core/timer.h"
#include "policy/basic_auth_cache.h"
#include "policy/policy.h"
#include "tls/tls_context.h"

namespace sluice::core {

class Stream;
class UpstreamPool;

// Something with output to finish once per loop turn, after every event of
// the turn was handled and before the batch is submitted: a Stream gathers
// all pieces queued in the turn into one sendmsg; TLS and HTTP/2 sessions
// seal and frame what their streams produced.
class Flushable {
 public:
  virtual void Flush() = 0;

 protected:
  ~Flushable() = default;
};
class ClientConnection;
enum class ListenerKind;

// A bound, listening SO_REUSEPORT socket a worker owns, and what it serves.
struct Listener {
  int fd = -1;
  ListenerKind kind;
};

// Per-worker counters, summed by whoever reads them. Written only by the
// owning worker (relaxed atomics, so a reader on another thread is safe).
struct WorkerStats {
  std::atomic<uint64_t> accepted{0};
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> upstream_connects{0};
  std::atomic<uint64_t> upstream_reused{0};
};

// One thread pinned to one CPU with everything it needs: its own io_uring,
// provided buffers, SO_REUSEPORT listener, connections, upstream pool and
// timers. Nothing on the request path is shared with other workers.
class Worker {
 public:
  // The worker owns the listeners' sockets.
  Worker(int index, const Config& config, std::vector<Listener> listeners,
         int cpu);
  ~Worker();

  // Sets up the ring and buffers; runs on the worker's thread.
  absl::Status Init();
  // The event loop; returns once stopped and drained.
  void Run();
  // Thread-safe: asks the loop to stop accepting and drain.
  void RequestStop();

  Ring& ring() { return ring_; }
  BufferRing& buffers() { return buffers_; }
  const Config& config() const { return config_; }
  int64_t now_ns() const { return now_ns_; }
  UpstreamPool& pool() { return *pool_; }
  WorkerStats& stats() { return stats_; }
  bool draining() const { return draining_; }
  int index() const { return index_; }

  // The list for timers of `duration_ns` (created on first use).
  TimerList* Timers(int64_t duration_ns);
  // Runs `fn` after the current batch of completions (safe place to free).
  void Defer(std::function<void()> fn) { deferred_.push_back(std::move(fn)); }
  // Thread-safe: runs `fn` on this worker's loop soon (the rare cross-thread
  // messages: a password check's answer). Dropped if the loop has ended.
  void Post(std::function<void()> fn);
  // Timers with arbitrary deadlines (TimerList::ArmAt): delayed requests.
  TimerList* DeadlineTimers() { return deadline_timers_; }

  // The policy for a new request: the slot's current snapshot, refreshed
  // when its generation moved (one atomic load otherwise).
  const std::shared_ptr<const policy::Policy>& policy();
  // The snapshot policy() last returned, without looking for a newer one.
  const std::shared_ptr<const policy::Policy>& last_policy() const { return policy_; }
  policy::BasicAuthCache& auth_cache() { return *auth_cache_; }
  // Calls f->Flush() at the end of this loop turn. The caller keeps a flag
  // so that it registers once per turn; it must call CancelFlush before it
  // is destroyed with a flush pending.
  void RequestFlush(Flushable* f) { flush_.push_back(f); }
  void CancelFlush(Flushable* f);

  void AddStarved(Stream* s) { starved_.push_back(s); }
  void RemoveStarved(Stream* s);

  void AddConnection(ClientConnection* c) { connections_.insert(c); }
  void RemoveConnection(ClientConnection* c) { connections_.erase(c); }

 private:
  struct AcceptOp final : Completion {
    Worker* w;
    Listener listener;
    bool armed = false;
    void Complete(int res, uint32_t flags) override {
      w->OnAccept(this, res, flags);
    }
  };
  struct WakeOp final : Completion {
    Worker* w;
    void Complete(int res, uint32_t flags) override { w->OnWake(res); }
  };

  void ArmAccept(AcceptOp* op);
  void ArmWake();
  void OnAccept(AcceptOp* op, int res, uint32_t flags);
  void OnWake(int res);
  void BeginDrain();
  void UpdateClock();
  int64_t NextTimeout() const;
  void RunDeferred();
  void RunFlushes();

  const int index_;
  const Config& config_;
  int cpu_;
  int wake_fd_ = -1;
  uint64_t wake_buf_ = 0;
  Ring ring_;
  BufferRing buffers_;
  std::vector<std::unique_ptr<AcceptOp>> accept_ops_;
  WakeOp wake_op_;
  int64_t now_ns_ = 0;
  int64_t drain_deadline_ns_ = 0;
  bool draining_ = false;
  std::atomic<bool> stop_requested_{false};
  std::vector<std::unique_ptr<TimerList>> timer_lists_;
  std::vector<std::function<void()>> deferred_;
  std::vector<Stream*> starved_;
  std::vector<Flushable*> flush_;
  uint64_t recycled_seen_ = 0;
  absl::flat_hash_set<ClientConnection*> connections_;
  // This worker's copy of the TLS context and the slot generation it is of.
  std::shared_ptr<const tls::TlsContext> tls_context_;
  uint64_t tls_generation_ = ~0ull;
  std::unique_ptr<UpstreamPool> pool_;
  WorkerStats stats_;
  std::shared_ptr<const policy::Policy> policy_;
  uint64_t policy_generation_ = ~0ull;
  std::unique_ptr<policy::BasicAuthCache> auth_cache_;
  TimerList* deadline_timers_ = nullptr;
  std::mutex post_mu_;
  std::vector<std::function<void()>> posted_;
};

}  // namespace sluice::core
