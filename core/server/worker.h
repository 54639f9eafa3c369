#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "core/engine/loop.h"
#include "core/engine/timer.h"
#include "core/observe/access_log.h"
#include "core/observe/metrics.h"
#include "core/server/config.h"
#include "http/message.h"
#include "policy/basic_auth_cache.h"
#include "policy/policy.h"
#include "tls/tls_context.h"

namespace sluice::core {

class UpstreamPool;
class ClientConnection;
enum class ListenerKind;
struct Observability;

// A bound, listening SO_REUSEPORT socket a worker owns, and what it serves.
struct Listener {
  int fd = -1;
  ListenerKind kind;
};

// One thread pinned to one CPU with everything it needs: its event loop
// (core/engine/loop.h: io_uring, provided buffers, timers), SO_REUSEPORT
// listeners, connections, upstream pool, policy snapshot, caches, metrics
// shard and access-log buffer. Nothing on the request path is shared with
// other workers.
class Worker final : public Acceptor {
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

  Loop* loop() { return &loop_; }
  const Config& config() const { return config_; }
  // Logs and metrics settings (defaults when the config names none).
  const Observability& obs() const { return *obs_; }
  int64_t now_ns() const { return loop_.now_ns(); }
  UpstreamPool& pool() { return *pool_; }
  // This worker's counters: plain integers, touched only on this thread. A
  // scrape asks for a copy (SnapshotMetrics) through Post.
  MetricsShard& metrics() { return metrics_; }
  // A copy of the counters with the gauges filled in (pool, connections).
  MetricsShard SnapshotMetrics() const;
  // Wall clock of this loop turn (for log time stamps).
  int64_t now_unix_ns() const { return loop_.now_unix_ns(); }
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

  // The loop's timers, deferred and posted work (see Loop).
  TimerList* Timers(int64_t duration_ns) { return loop_.Timers(duration_ns); }
  void Defer(std::function<void()> fn) { loop_.Defer(std::move(fn)); }
  // Thread-safe (the rare cross-thread messages: a password check's
  // answer). Dropped if the loop has ended.
  void Post(std::function<void()> fn) { loop_.Post(std::move(fn)); }
  // Timers with arbitrary deadlines (TimerList::ArmAt): delayed requests.
  TimerList* DeadlineTimers() { return loop_.DeadlineTimers(); }

  // The policy for a new request: the slot's current snapshot, refreshed
  // when its generation moved (one atomic load otherwise).
  const std::shared_ptr<const policy::Policy>& policy();
  // The snapshot policy() last returned, without looking for a newer one.
  const std::shared_ptr<const policy::Policy>& last_policy() const { return policy_; }
  policy::BasicAuthCache& auth_cache() { return *auth_cache_; }
  // Calls f->Flush() at the end of this loop turn (see Loop).
  void RequestFlush(Flushable* f) { loop_.RequestFlush(f); }
  void CancelFlush(Flushable* f) { loop_.CancelFlush(f); }

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
  bool draining_ = false;
  bool drain_timed_out_ = false;
  int64_t drain_deadline_ns_ = 0;
  Timer drain_timer_;  // wakes the loop at the drain deadline
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
  uint64_t connections_numbered_ = 0;
  std::unique_ptr<AccessLogFormatter> access_formatter_;
  std::string access_buf_;
  uint64_t access_lines_ = 0;
  Timer access_flush_timer_;
  std::shared_ptr<const policy::Policy> policy_;
  uint64_t policy_generation_ = ~0ull;
  std::unique_ptr<policy::BasicAuthCache> auth_cache_;
};

}  // namespace sluice::core
