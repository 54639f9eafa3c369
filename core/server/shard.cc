#include "core/server/shard.h"

#include <algorithm>

#include "absl/time/time.h"
#include "core/observe/observability.h"
#include "core/server/named_upstream.h"
#include "core/server/snapshot_slot.h"
#include "core/upstream/backend_set.h"
#include "core/upstream/health.h"

namespace sluice::core {

Shard::Shard(int index, const Config& config, Loop* loop)
    : index_(index),
      config_(config),
      loop_(loop),
      access_flush_timer_([this] { FlushAccessLog(); }) {
  static const Observability kDefaults;
  obs_ = config_.obs ? config_.obs : &kDefaults;
  if (obs_->access_log) {
    access_formatter_ = std::make_unique<AccessLogFormatter>(obs_->access_log_format);
  }
  backends_ = std::make_unique<BackendSet>(this, config_.backends, config_.balance);
  metrics_.backends.resize(config_.backends.size());
  // 4096 remembered credentials per worker, about 150 KiB. A positive
  // answer holds until a reload (the generation changes) or 10 minutes; a
  // wrong password is remembered for a minute, so repeating it costs no
  // bcrypt.
  auth_cache_ = std::make_unique<policy::BasicAuthCache>(4096, absl::Minutes(10), absl::Minutes(1));
}

Shard::~Shard() = default;

const std::shared_ptr<const policy::Policy>& Shard::policy() {
  const uint64_t gen = config_.policy_slot->generation();
  if (gen != policy_generation_) {
    policy_ = config_.policy_slot->Get();
    policy_generation_ = gen;
    if (!named_.empty()) RetireNamed();
  }
  if (!retired_.empty()) SweepRetired();
  return policy_;
}

std::shared_ptr<BackendSet> Shard::NamedBackends(
    const std::shared_ptr<const policy::UpstreamTarget>& target) {
  auto it = named_.find(target.get());
  if (it != named_.end()) return it->second;
  const auto& named = static_cast<const core::NamedBackends&>(*target);
  auto set = std::make_shared<BackendSet>(this, named.backends, named.balance, /*counted=*/false);
  set->set_owner(target);
  named_.emplace(target.get(), set);
  return set;
}

void Shard::RetireNamed() {
  for (auto it = named_.begin(); it != named_.end();) {
    const auto& kept = policy_->upstreams();
    const bool named = std::any_of(kept.begin(), kept.end(), [&](const policy::NamedUpstream& u) {
      return u.target.get() == it->first;
    });
    if (named) {
      ++it;
      continue;
    }
    it->second->CloseIdle();
    retired_.push_back(std::move(it->second));
    named_.erase(it++);
  }
}

void Shard::SweepRetired() {
  std::erase_if(retired_, [](const std::shared_ptr<BackendSet>& set) {
    return set.use_count() == 1 && set->open_count() == 0;
  });
}

void Shard::CloseIdleUpstreams() {
  backends_->CloseIdle();
  for (auto& [target, set] : named_) set->CloseIdle();
  for (auto& set : retired_) set->CloseIdle();
}

std::shared_ptr<const tls::TlsContext> Shard::TlsContextForNewConnection() {
  if (!config_.tls_slot) return nullptr;
  uint64_t gen = config_.tls_slot->generation();
  if (gen != tls_generation_) {
    tls_context_ = config_.tls_slot->Get();
    tls_generation_ = gen;
  }
  return tls_context_;
}

bool Shard::AtConnectionCap() const {
  const size_t cap = static_cast<size_t>(config_.max_connections_per_worker);
  return cap > 0 && connections_.size() - over_limit_connections_ >= cap && !draining_;
}

// Past --max_connections a worker still takes in this many more, to tell
// them 503 with Retry-After (a client then knows to back off, where a
// closed socket looks like a crash); past that allowance a socket is closed
// at accept, which costs nothing. stub_status counts those as accepted but
// not handled, as nginx does when worker_connections runs out.
bool Shard::OverLimitAllowanceUsed() const {
  const size_t allowance =
      std::max<size_t>(16, static_cast<size_t>(config_.max_connections_per_worker) / 8);
  return over_limit_connections_ >= allowance;
}

MetricsShard Shard::SnapshotMetrics() const {
  MetricsShard copy = metrics_;
  copy.upstream_open = static_cast<int64_t>(backends_->open_count());
  copy.upstream_idle = static_cast<int64_t>(backends_->idle_count());
  for (const auto& [target, set] : named_) {
    copy.upstream_open += static_cast<int64_t>(set->open_count());
    copy.upstream_idle += static_cast<int64_t>(set->idle_count());
  }
  for (size_t i = 0; i < copy.backends.size(); ++i) {
    const UpstreamPool& pool = *backends_->pools()[i];
    const BackendConfig& b = pool.backend();
    BackendStats& s = copy.backends[i];
    s.name = b.name;
    s.in_flight = static_cast<int64_t>(pool.in_use());
    s.up = b.health == nullptr || b.health->up() ? 1 : 0;
    if (b.models != nullptr) s.loaded = b.models->LoadedModels();
  }
  copy.recv_buffers_in_use = loop_->buffers().in_use();
  copy.recv_buffer_copies = loop_->buffers().copied();
  copy.recv_buffer_pressure_pauses = loop_->pressure_pauses();
  return copy;
}

// A core's buffer goes to the writer thread at this size (one write(2)),
// or --access_log_flush after its first line, whichever comes first.
constexpr size_t kAccessBufferBytes = 64 * 1024;

void Shard::LogAccess(const AccessRecord& record) {
  if (!access_formatter_) return;
  access_formatter_->Append(record, &access_buf_);
  ++access_lines_;
  if (access_buf_.size() >= kAccessBufferBytes) {
    FlushAccessLog();
  } else if (!access_flush_timer_.armed()) {
    Timers(obs_->access_log_flush_ns)->Arm(&access_flush_timer_, now_ns());
  }
}

void Shard::AccountBare(const http::RequestHead* head, std::string_view client, int status,
                        uint64_t body_bytes, int64_t start_ns, int64_t start_unix_ns,
                        uint64_t connection, std::string_view group) {
  if (obs_->metrics) {
    RouteStats& route = metrics_.Route(group);
    ++route.by_status[status];
    route.request.Observe(now_ns() - start_ns);
  }
  if (!access_formatter_) return;
  AccessRecord r;
  r.start_unix_ns = start_unix_ns;
  r.remote_addr = client;
  if (head) DescribeRequest(*head, &r);
  r.status = status;
  r.body_bytes_sent = body_bytes;
  r.request_time_ns = now_ns() - start_ns;
  r.route = group;
  r.worker = index_;
  r.connection = connection;
  LogAccess(r);
}

void Shard::FlushAccessLog() {
  access_flush_timer_.Disarm();
  if (access_buf_.empty() || !obs_->access_log) return;
  std::string lines;
  lines.reserve(kAccessBufferBytes + 1024);
  lines.swap(access_buf_);
  obs_->access_log->Submit(std::move(lines), access_lines_);
  access_lines_ = 0;
}

}  // namespace sluice::core
