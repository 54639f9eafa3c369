#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "core/engine/buffer.h"
#include "core/server/config.h"
#include "core/observe/metrics.h"
#include "core/observe/access_log.h"
#include "core/engine/ring.h"
#include "core/engine/send_queue.h"
#include "core/engine/timer.h"
#include "http/message.h"
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
struct Observability;

// A bound, listening SO_REUSEPORT socket a worker owns, and what it serves.
struct Listener {
  int fd = -1;
  ListenerKind kind;
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
  SendPool& send_pool() { return send_pool_; }
  const Config& config() const { return config_; }
  // Logs and metrics settings (defaults when the config names none).
  const Observability& obs() const { return *obs_; }
  int64_t now_ns() const { return now_ns_; }
  UpstreamPool& pool() { return *pool_; }
  // This worker's counters: plain integers, touched only on this thread. A
  // scrape asks for a copy (SnapshotMetrics) through Post.
  MetricsShard& metrics() { return metrics_; }
  // A copy of the counters with the gauges filled in (pool, connections).
  MetricsShard SnapshotMetrics() const;
  // Wall clock of this loop turn (for log time stamps).
  int64_t now_unix_ns() const { return now_unix_ns_; }
  // A number for a new client connection, unique in the process (log lines
  // and the JSON access log name connections by it, as nginx's "*N").
  uint64_t NextConnectionNumber() {
    return ++connections_numbered_ * static_cast<uint64_t>(config_.threads) +
           static_cast<uint64_t>(index_) + 1 - static_cast<uint64_t>(config_.threads);
  }
  // Counts and logs a request answered without a relay (a 400 from the
  // codec, a 408, a redirect): `head` may be null when no request head was
  // read.
  void AccountBare(const http::RequestHead* head, std::string_view client, int status,
                   uint64_t body_bytes, int64_t start_ns, int64_t start_unix_ns,
                   uint64_t connection, std::string_view group);
  // Formats one access log line into this worker's buffer; the buffer goes
  // to the log file's thread when it is full or --access_log_flush after
  // its first line. No-op with --access_log=off.
  void LogAccess(const AccessRecord& record);
  // Hands the buffered lines to the log file's thread now.
  void FlushAccessLog();
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

  size_t OverLimitAllowance() const;
  void AddConnection(ClientConnection* c, bool over_limit) {
    connections_.insert(c);
    over_limit_connections_ += over_limit;
  }
  void RemoveConnection(ClientConnection* c, bool over_limit) {
    connections_.erase(c);
    over_limit_connections_ -= over_limit;
  }

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
  SendPool send_pool_;
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
  // Of connections_, those accepted past the cap (answered 503, then closed).
  size_t over_limit_connections_ = 0;
  int64_t overload_logged_ns_ = 0;  // last "connection limit" warning
  // This worker's copy of the TLS context and the slot generation it is of.
  std::shared_ptr<const tls::TlsContext> tls_context_;
  uint64_t tls_generation_ = ~0ull;
  std::unique_ptr<UpstreamPool> pool_;
  const Observability* obs_;
  MetricsShard metrics_;
  int64_t now_unix_ns_ = 0;
  uint64_t connections_numbered_ = 0;
  std::unique_ptr<AccessLogFormatter> access_formatter_;
  std::string access_buf_;
  uint64_t access_lines_ = 0;
  Timer access_flush_timer_;
  static constexpr int64_t kBufferTrimNs = 1'000'000'000;
  Timer buffer_trim_timer_;
  std::shared_ptr<const policy::Policy> policy_;
  uint64_t policy_generation_ = ~0ull;
  std::unique_ptr<policy::BasicAuthCache> auth_cache_;
  TimerList* deadline_timers_ = nullptr;
  std::mutex post_mu_;
  std::vector<std::function<void()>> posted_;
};

}  // namespace sluice::core
