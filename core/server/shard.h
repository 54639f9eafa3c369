#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
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

class BackendSet;
class ClientConnection;
enum class ListenerKind;
struct Observability;

// What one core owns besides its loop, handed explicitly to the proxy and
// the upstream pool: the config, the policy snapshot and password cache,
// the TLS context, the upstream pool, the metrics shard and access-log
// buffer, and the registry of client connections (with the connection
// cap). Touched only on its worker's thread, except Post.
class Shard {
 public:
  Shard(int index, const Config& config, Loop* loop);
  ~Shard();
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  int index() const { return index_; }
  const Config& config() const { return config_; }
  // Logs and metrics settings (defaults when the config names none).
  const Observability& obs() const { return *obs_; }
  Loop* loop() { return loop_; }

  // The loop's clocks, timers, deferred and posted work (see Loop).
  int64_t now_ns() const { return loop_->now_ns(); }
  int64_t now_unix_ns() const { return loop_->now_unix_ns(); }
  TimerList* Timers(int64_t duration_ns) { return loop_->Timers(duration_ns); }
  TimerList* DeadlineTimers() { return loop_->DeadlineTimers(); }
  void Defer(std::function<void()> fn) { loop_->Defer(std::move(fn)); }
  // Thread-safe (the rare cross-thread messages: a password check's
  // answer, a scrape). Dropped if the loop has ended.
  void Post(std::function<void()> fn) { loop_->Post(std::move(fn)); }
  void RequestFlush(Flushable* f) { loop_->RequestFlush(f); }
  void CancelFlush(Flushable* f) { loop_->CancelFlush(f); }

  // The backends' keepalive pools and the choice among them.
  BackendSet& backends() { return *backends_; }
  // The pools of a rules-file upstream (a NamedBackends), made in this
  // worker on first use and kept while the policy names it or a request
  // holds it (a reload that drops or changes it retires the old set: its
  // idle links close, and it goes once no link of it is open).
  std::shared_ptr<BackendSet> NamedBackends(
      const std::shared_ptr<const policy::UpstreamTarget>& target);
  // Closes every idle upstream link, of every set (drain).
  void CloseIdleUpstreams();
  // The policy for a new request: the slot's current snapshot, refreshed
  // when its generation moved (one atomic load otherwise).
  const std::shared_ptr<const policy::Policy>& policy();
  // The snapshot policy() last returned, without looking for a newer one.
  const std::shared_ptr<const policy::Policy>& last_policy() const { return policy_; }
  policy::BasicAuthCache& auth_cache() { return *auth_cache_; }
  // The TLS context for a new connection (the slot's current one).
  std::shared_ptr<const tls::TlsContext> TlsContextForNewConnection();

  // This core's counters: plain integers, touched only on this thread. A
  // scrape asks for a copy (SnapshotMetrics) through Post.
  MetricsShard& metrics() { return metrics_; }
  // A copy of the counters with the gauges filled in (pool, buffers).
  MetricsShard SnapshotMetrics() const;
  // Counts and logs a request answered without a relay (a 400 from the
  // codec, a 408, a redirect): `head` may be null when no request head was
  // read.
  void AccountBare(const http::RequestHead* head, std::string_view client, int status,
                   uint64_t body_bytes, int64_t start_ns, int64_t start_unix_ns,
                   uint64_t connection, std::string_view group);
  // Formats one access log line into this core's buffer; the buffer goes
  // to the log file's thread when it is full or --access_log_flush after
  // its first line. No-op with --access_log=off.
  void LogAccess(const AccessRecord& record);
  // Hands the buffered lines to the log file's thread now.
  void FlushAccessLog();

  // Client connections. A number for a new one, unique in the process (log
  // lines and the JSON access log name connections by it, as nginx's
  // "*N").
  uint64_t NextConnectionNumber() {
    return ++connections_numbered_ * static_cast<uint64_t>(config_.threads) +
           static_cast<uint64_t>(index_) + 1 - static_cast<uint64_t>(config_.threads);
  }
  void AddConnection(ClientConnection* c, bool over_limit) {
    connections_.insert(c);
    over_limit_connections_ += over_limit;
  }
  void RemoveConnection(ClientConnection* c, bool over_limit) {
    connections_.erase(c);
    over_limit_connections_ -= over_limit;
  }
  const absl::flat_hash_set<ClientConnection*>& connections() const { return connections_; }
  // Whether a new connection is past --max_connections (it gets 503), and
  // whether the allowance for those is used up too (it is closed at once).
  bool AtConnectionCap() const;
  bool OverLimitAllowanceUsed() const;
  // Set when the worker drains: new requests get Connection: close.
  bool draining() const { return draining_; }
  void set_draining() { draining_ = true; }

 private:
  const int index_;
  const Config& config_;
  Loop* loop_;
  const Observability* obs_;
  bool draining_ = false;
  absl::flat_hash_set<ClientConnection*> connections_;
  // Of connections_, those accepted past the cap (answered 503, then closed).
  size_t over_limit_connections_ = 0;
  uint64_t connections_numbered_ = 0;
  // This core's copy of the TLS context and the slot generation it is of.
  std::shared_ptr<const tls::TlsContext> tls_context_;
  uint64_t tls_generation_ = ~0ull;
  // On a new policy: sets of upstreams it no longer names are retired.
  void RetireNamed();
  // Frees retired sets no request holds and no link of which is open.
  void SweepRetired();

  std::unique_ptr<BackendSet> backends_;
  absl::flat_hash_map<const policy::UpstreamTarget*, std::shared_ptr<BackendSet>> named_;
  std::vector<std::shared_ptr<BackendSet>> retired_;
  MetricsShard metrics_;
  std::unique_ptr<AccessLogFormatter> access_formatter_;
  std::string access_buf_;
  uint64_t access_lines_ = 0;
  Timer access_flush_timer_;
  std::shared_ptr<const policy::Policy> policy_;
  uint64_t policy_generation_ = ~0ull;
  std::unique_ptr<policy::BasicAuthCache> auth_cache_;
};

}  // namespace sluice::core
