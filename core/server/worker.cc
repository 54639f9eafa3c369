#include "core/server/worker.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/proxy/client_connection.h"
#include "core/server/snapshot_slot.h"
#include "core/observe/log.h"
#include "core/observe/observability.h"
#include "absl/time/time.h"
#include "core/engine/stream.h"
#include "core/upstream/upstream_pool.h"

namespace sluice::core {
namespace {

Loop::Options LoopOptions(const Config& config, int cpu) {
  Loop::Options o;
  o.cpu = cpu;
  o.recv_buffers = config.recv_buffers;
  o.recv_buffer_size = config.recv_buffer_size;
  o.busy_poll_ns = config.busy_poll_ns;
  return o;
}

// The TCP peer of an accepted socket ("::" when it already went away).
policy::IpAddress PeerAddress(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) ss.ss_family = AF_UNSPEC;
  return policy::IpAddress::FromSockaddr(reinterpret_cast<const sockaddr*>(&ss));
}

}  // namespace

Worker::Worker(int index, const Config& config, std::vector<Listener> listeners,
               int cpu)
    : index_(index),
      config_(config),
      listeners_(std::move(listeners)),
      loop_(LoopOptions(config, cpu)),
      drain_timer_([] {}),
      access_flush_timer_([this] { FlushAccessLog(); }) {
  static const Observability kDefaults;
  obs_ = config_.obs ? config_.obs : &kDefaults;
  if (obs_->access_log) {
    access_formatter_ = std::make_unique<AccessLogFormatter>(obs_->access_log_format);
  }
  for (size_t i = 0; i < listeners_.size(); ++i) {
    loop_.AddListener(listeners_[i].fd, static_cast<int>(i), this);
  }
  pool_ = std::make_unique<UpstreamPool>(this);
  // 4096 remembered credentials per worker, about 150 KiB. A positive
  // answer holds until a reload (the generation changes) or 10 minutes; a
  // wrong password is remembered for a minute, so repeating it costs no
  // bcrypt.
  auth_cache_ = std::make_unique<policy::BasicAuthCache>(4096, absl::Minutes(10),
                                                         absl::Minutes(1));
}

const std::shared_ptr<const policy::Policy>& Worker::policy() {
  const uint64_t gen = config_.policy_slot->generation();
  if (gen != policy_generation_) {
    policy_ = config_.policy_slot->Get();
    policy_generation_ = gen;
  }
  return policy_;
}

// The loop owns the listening sockets and closes them.
Worker::~Worker() = default;

absl::Status Worker::Init() {
  SetLogWorker(index_);
  return loop_.Init();
}

void Worker::RequestStop() {
  loop_.Post([this] {
    if (!draining_) BeginDrain();
  });
}

// Past --max_connections a worker still takes in this many more, to tell
// them 503 with Retry-After (a client then knows to back off, where a
// closed socket looks like a crash); past that allowance a socket is closed
// at accept, which costs nothing. stub_status counts those as accepted but
// not handled, as nginx does when worker_connections runs out.
size_t Worker::OverLimitAllowance() const {
  return std::max<size_t>(16, static_cast<size_t>(config_.max_connections_per_worker) / 8);
}

void Worker::OnAccepted(int tag, int res) {
  const Listener& listener = listeners_[static_cast<size_t>(tag)];
  {
    ++metrics_.connections_accepted;
    const size_t cap = static_cast<size_t>(config_.max_connections_per_worker);
    const bool over_limit =
        cap > 0 && connections_.size() - over_limit_connections_ >= cap && !draining_;
    if (over_limit && now_ns() - overload_logged_ns_ >= 1'000'000'000) {
      overload_logged_ns_ = now_ns();
      LOG_WARN("at the connection cap (%zu per worker, --max_connections): "
               "new connections get 503",
               cap);
    }
    if (over_limit && over_limit_connections_ >= OverLimitAllowance()) {
      ::close(res);
      ++metrics_.connections_dropped;
    } else {
      ++metrics_.connections_handled;
      int one = 1;
      ::setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      std::shared_ptr<const tls::TlsContext> tls;
      if (listener.kind == ListenerKind::kTls && config_.tls_slot) {
        uint64_t gen = config_.tls_slot->generation();
        if (gen != tls_generation_) {
          tls_context_ = config_.tls_slot->Get();
          tls_generation_ = gen;
        }
        tls = tls_context_;
      }
      auto* conn = new ClientConnection(this, res, PeerAddress(res), listener.kind,
                                        std::move(tls));
      if (over_limit) conn->MarkOverLimit();
      LOG_DEBUG("*%llu client %s: accepted%s", static_cast<unsigned long long>(conn->number()),
                conn->client_addr().c_str(), over_limit ? " past the connection cap" : "");
      conn->Start();
      // Accepted by the kernel before the listener closed (the completion
      // was on its way): the client has a connection, so it is served as
      // a draining one (its request answered with Connection: close), not
      // reset; in a restart the socket stays open for the new process.
      if (draining_) conn->Drain();
    }
  }
}

void Worker::OnAcceptError(int tag, int res) {
  // EMFILE/ENFILE/ENOBUFS: the connection stays in the backlog; log and
  // keep accepting once something is freed.
  LOG_WARN("accept: %s", strerror(-res));
}

void Worker::BeginDrain() {
  draining_ = true;
  drain_deadline_ns_ = now_ns() + config_.drain_timeout_ns;
  loop_.DeadlineTimers()->ArmAt(&drain_timer_, drain_deadline_ns_);
  // Closing the listeners makes the kernel refuse new connections to this
  // worker's sockets (the others close theirs at the same time).
  loop_.CloseListeners();
  pool_->CloseIdle();
  std::vector<ClientConnection*> conns(connections_.begin(), connections_.end());
  for (ClientConnection* c : conns) c->Drain();
  LOG_INFO("draining %zu connection(s)", connections_.size());
}

MetricsShard Worker::SnapshotMetrics() const {
  MetricsShard copy = metrics_;
  copy.upstream_open = static_cast<int64_t>(pool_->open_count());
  copy.upstream_idle = static_cast<int64_t>(pool_->idle_count());
  copy.recv_buffers_in_use = loop_.buffers().in_use();
  copy.recv_buffer_copies = loop_.buffers().copied();
  return copy;
}

// A worker's buffer goes to the writer thread at this size (one write(2)),
// or --access_log_flush after its first line, whichever comes first.
constexpr size_t kAccessBufferBytes = 64 * 1024;

void Worker::LogAccess(const AccessRecord& record) {
  if (!access_formatter_) return;
  access_formatter_->Append(record, &access_buf_);
  ++access_lines_;
  if (access_buf_.size() >= kAccessBufferBytes) {
    FlushAccessLog();
  } else if (!access_flush_timer_.armed()) {
    Timers(obs_->access_log_flush_ns)->Arm(&access_flush_timer_, now_ns());
  }
}

void Worker::AccountBare(const http::RequestHead* head, std::string_view client, int status,
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

void Worker::FlushAccessLog() {
  access_flush_timer_.Disarm();
  if (access_buf_.empty() || !obs_->access_log) return;
  std::string lines;
  lines.reserve(kAccessBufferBytes + 1024);
  lines.swap(access_buf_);
  obs_->access_log->Submit(std::move(lines), access_lines_);
  access_lines_ = 0;
}

bool Worker::KeepGoing() {
  if (!draining_) return true;
  if (connections_.empty()) return false;
  if (now_ns() >= drain_deadline_ns_) {
    if (!drain_timed_out_) {
      drain_timed_out_ = true;
      LOG_WARN("drain timeout: closing %zu connection(s)", connections_.size());
    }
    return false;
  }
  return true;
}

void Worker::Run() {
  loop_.Run([this] { return KeepGoing(); });
  FlushAccessLog();
}

}  // namespace sluice::core
