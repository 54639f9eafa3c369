#include "core/server/worker.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
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

int64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
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
      cpu_(cpu),
      access_flush_timer_([this] { FlushAccessLog(); }),
      buffer_trim_timer_([this] {
        if (buffers_.Trim()) Timers(kBufferTrimNs)->Arm(&buffer_trim_timer_, now_ns_);
      }) {
  static const Observability kDefaults;
  obs_ = config_.obs ? config_.obs : &kDefaults;
  if (obs_->access_log) {
    access_formatter_ = std::make_unique<AccessLogFormatter>(obs_->access_log_format);
  }
  for (const Listener& l : listeners) {
    auto op = std::make_unique<AcceptOp>();
    op->w = this;
    op->listener = l;
    accept_ops_.push_back(std::move(op));
  }
  wake_op_.w = this;
  pool_ = std::make_unique<UpstreamPool>(this);
  wake_fd_ = eventfd(0, EFD_CLOEXEC);
  // 4096 remembered credentials per worker, about 150 KiB. A positive
  // answer holds until a reload (the generation changes) or 10 minutes; a
  // wrong password is remembered for a minute, so repeating it costs no
  // bcrypt.
  auth_cache_ = std::make_unique<policy::BasicAuthCache>(4096, absl::Minutes(10),
                                                         absl::Minutes(1));
  timer_lists_.push_back(std::make_unique<TimerList>(-1));
  deadline_timers_ = timer_lists_.back().get();
}

void Worker::Post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    posted_.push_back(std::move(fn));
  }
  uint64_t one = 1;
  ssize_t ignored = ::write(wake_fd_, &one, sizeof(one));
  (void)ignored;
}

const std::shared_ptr<const policy::Policy>& Worker::policy() {
  const uint64_t gen = config_.policy_slot->generation();
  if (gen != policy_generation_) {
    policy_ = config_.policy_slot->Get();
    policy_generation_ = gen;
  }
  return policy_;
}

Worker::~Worker() {
  for (auto& op : accept_ops_) {
    if (op->listener.fd >= 0) ::close(op->listener.fd);
  }
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

absl::Status Worker::Init() {
  SetLogWorker(index_);
  if (cpu_ >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu_, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
  }
  if (absl::Status s = ring_.Init(4096); !s.ok()) return s;
  if (absl::Status s = buffers_.Init(ring_.raw(), config_.recv_buffers,
                                     config_.recv_buffer_size);
      !s.ok()) {
    return s;
  }
  UpdateClock();
  for (auto& op : accept_ops_) ArmAccept(op.get());
  ArmWake();
  return absl::OkStatus();
}

void Worker::RequestStop() {
  stop_requested_.store(true, std::memory_order_release);
  uint64_t one = 1;
  ssize_t ignored = ::write(wake_fd_, &one, sizeof(one));
  (void)ignored;
}

TimerList* Worker::Timers(int64_t duration_ns) {
  for (auto& list : timer_lists_) {
    if (list->duration_ns() == duration_ns) return list.get();
  }
  timer_lists_.push_back(std::make_unique<TimerList>(duration_ns));
  return timer_lists_.back().get();
}

void Worker::RemoveStarved(Stream* s) {
  starved_.erase(std::remove(starved_.begin(), starved_.end(), s), starved_.end());
}

void Worker::ArmAccept(AcceptOp* op) {
  io_uring_sqe* sqe = ring_.GetSqe();
  io_uring_prep_multishot_accept(sqe, op->listener.fd, nullptr, nullptr,
                                 SOCK_CLOEXEC);
  io_uring_sqe_set_data(sqe, op);
  op->armed = true;
}

void Worker::ArmWake() {
  io_uring_sqe* sqe = ring_.GetSqe();
  io_uring_prep_read(sqe, wake_fd_, &wake_buf_, sizeof(wake_buf_), 0);
  io_uring_sqe_set_data(sqe, &wake_op_);
}

// Past --max_connections a worker still takes in this many more, to tell
// them 503 with Retry-After (a client then knows to back off, where a
// closed socket looks like a crash); past that allowance a socket is closed
// at accept, which costs nothing. stub_status counts those as accepted but
// not handled, as nginx does when worker_connections runs out.
size_t Worker::OverLimitAllowance() const {
  return std::max<size_t>(16, static_cast<size_t>(config_.max_connections_per_worker) / 8);
}

void Worker::OnAccept(AcceptOp* op, int res, uint32_t flags) {
  if (!(flags & IORING_CQE_F_MORE)) op->armed = false;
  if (res >= 0) {
    ++metrics_.connections_accepted;
    const size_t cap = static_cast<size_t>(config_.max_connections_per_worker);
    const bool over_limit =
        cap > 0 && connections_.size() - over_limit_connections_ >= cap && !draining_;
    if (over_limit && now_ns_ - overload_logged_ns_ >= 1'000'000'000) {
      overload_logged_ns_ = now_ns_;
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
      if (op->listener.kind == ListenerKind::kTls && config_.tls_slot) {
        uint64_t gen = config_.tls_slot->generation();
        if (gen != tls_generation_) {
          tls_context_ = config_.tls_slot->Get();
          tls_generation_ = gen;
        }
        tls = tls_context_;
      }
      auto* conn = new ClientConnection(this, res, PeerAddress(res), op->listener.kind,
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
  } else if (res != -ECANCELED) {
    // EMFILE/ENFILE/ENOBUFS: the connection stays in the backlog; log and
    // keep accepting once something is freed.
    LOG_WARN("accept: %s", strerror(-res));
  }
  if (!op->armed && !draining_) ArmAccept(op);
}

void Worker::OnWake(int res) {
  std::vector<std::function<void()>> posted;
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    posted.swap(posted_);
  }
  for (auto& fn : posted) fn();
  if (stop_requested_.load(std::memory_order_acquire) && !draining_) {
    BeginDrain();
  }
  // Still armed while draining: requests in flight may wait for a post.
  ArmWake();
}

void Worker::BeginDrain() {
  draining_ = true;
  drain_deadline_ns_ = now_ns_ + config_.drain_timeout_ns;
  for (auto& op : accept_ops_) {
    if (op->armed) {
      io_uring_sqe* sqe = ring_.GetSqe();
      io_uring_prep_cancel64(sqe, reinterpret_cast<uint64_t>(op.get()), 0);
      io_uring_sqe_set_data64(sqe, 0);
    }
    // Closing the listener makes the kernel refuse new connections to this
    // worker's socket (the others close theirs at the same time).
    ::close(op->listener.fd);
    op->listener.fd = -1;
  }
  pool_->CloseIdle();
  std::vector<ClientConnection*> conns(connections_.begin(), connections_.end());
  for (ClientConnection* c : conns) c->Drain();
  LOG_INFO("draining %zu connection(s)", connections_.size());
}

void Worker::UpdateClock() {
  now_ns_ = MonotonicNs();
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  now_unix_ns_ = static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

MetricsShard Worker::SnapshotMetrics() const {
  MetricsShard copy = metrics_;
  copy.upstream_open = static_cast<int64_t>(pool_->open_count());
  copy.upstream_idle = static_cast<int64_t>(pool_->idle_count());
  copy.recv_buffers_in_use = buffers_.in_use();
  copy.recv_buffer_copies = buffers_.copied();
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
    Timers(obs_->access_log_flush_ns)->Arm(&access_flush_timer_, now_ns_);
  }
}

void Worker::AccountBare(const http::RequestHead* head, std::string_view client, int status,
                         uint64_t body_bytes, int64_t start_ns, int64_t start_unix_ns,
                         uint64_t connection, std::string_view group) {
  if (obs_->metrics) {
    RouteStats& route = metrics_.Route(group);
    ++route.by_status[status];
    route.request.Observe(now_ns_ - start_ns);
  }
  if (!access_formatter_) return;
  AccessRecord r;
  r.start_unix_ns = start_unix_ns;
  r.remote_addr = client;
  if (head) DescribeRequest(*head, &r);
  r.status = status;
  r.body_bytes_sent = body_bytes;
  r.request_time_ns = now_ns_ - start_ns;
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

int64_t Worker::NextTimeout() const {
  int64_t next = -1;
  for (const auto& list : timer_lists_) {
    int64_t d = list->next_deadline();
    if (d >= 0 && (next < 0 || d < next)) next = d;
  }
  if (draining_ && (next < 0 || drain_deadline_ns_ < next)) next = drain_deadline_ns_;
  if (next < 0) return -1;
  return std::max<int64_t>(0, next - now_ns_);
}

void Worker::RunDeferred() {
  while (!deferred_.empty()) {
    std::vector<std::function<void()>> batch;
    batch.swap(deferred_);
    for (auto& fn : batch) fn();
  }
}

void Worker::CancelFlush(Flushable* f) {
  for (Flushable*& p : flush_) {
    if (p == f) p = nullptr;
  }
}

void Worker::RunFlushes() {
  // Flushing may queue more (a TLS session's records go to its Stream),
  // so the list can grow while it runs.
  for (size_t i = 0; i < flush_.size(); ++i) {
    if (Flushable* f = flush_[i]) f->Flush();
  }
  flush_.clear();
}

void Worker::Run() {
  for (;;) {
    int ret = ring_.SubmitAndWait(NextTimeout(), config_.busy_poll_ns);
    if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EBUSY) {
      LOG_ERROR("io_uring_enter: %s", strerror(-ret));
    }
    UpdateClock();
    ring_.DispatchCompletions();
    RunDeferred();
    for (auto& list : timer_lists_) list->Expire(now_ns_);
    RunDeferred();
    // Receives parked on -ENOBUFS re-arm once buffers came back.
    if (!starved_.empty() && buffers_.recycled() != recycled_seen_) {
      std::vector<Stream*> starved;
      starved.swap(starved_);
      for (Stream* s : starved) s->RetryAfterBuffers();
    }
    recycled_seen_ = buffers_.recycled();
    // Gives the pages of buffers unused for a while back, and stops once
    // nothing is left to trim (an idle worker sleeps).
    if (!buffer_trim_timer_.armed() && buffers_.wants_trim()) {
      Timers(kBufferTrimNs)->Arm(&buffer_trim_timer_, now_ns_);
    }
    RunFlushes();
    if (draining_) {
      if (connections_.empty()) break;
      if (now_ns_ >= drain_deadline_ns_) {
        LOG_WARN("drain timeout: closing %zu connection(s)", connections_.size());
        break;
      }
    }
  }
  FlushAccessLog();
}

}  // namespace sluice::core
