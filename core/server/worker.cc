#include "core/server/worker.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/observe/log.h"
#include "core/proxy/client_connection.h"
#include "core/upstream/backend_set.h"

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

Worker::Worker(int index, const Config& config, std::vector<Listener> listeners, int cpu)
    : index_(index),
      config_(config),
      listeners_(std::move(listeners)),
      loop_(LoopOptions(config, cpu)),
      shard_(index, config, &loop_),
      drain_timer_([] {}) {
  for (size_t i = 0; i < listeners_.size(); ++i) {
    loop_.AddListener(listeners_[i].fd, static_cast<int>(i), this);
  }
}

// The loop owns the listening sockets and closes them.
Worker::~Worker() = default;

absl::Status Worker::Init() {
  SetLogWorker(index_);
  return loop_.Init();
}

void Worker::RequestStop() {
  loop_.Post([this] {
    if (!shard_.draining()) BeginDrain();
  });
}

void Worker::OnAccepted(int tag, int fd) {
  const Listener& listener = listeners_[static_cast<size_t>(tag)];
  MetricsShard& metrics = shard_.metrics();
  ++metrics.connections_accepted;
  const bool over_limit = shard_.AtConnectionCap();
  if (over_limit && loop_.now_ns() - overload_logged_ns_ >= 1'000'000'000) {
    overload_logged_ns_ = loop_.now_ns();
    LOG_WARN(
        "at the connection cap (%zu per worker, --max_connections): "
        "new connections get 503",
        static_cast<size_t>(config_.max_connections_per_worker));
  }
  if (over_limit && shard_.OverLimitAllowanceUsed()) {
    ::close(fd);
    ++metrics.connections_dropped;
    return;
  }
  ++metrics.connections_handled;
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  std::shared_ptr<const tls::TlsContext> tls;
  if (listener.kind == ListenerKind::kTls) tls = shard_.TlsContextForNewConnection();
  auto* conn = new ClientConnection(&shard_, fd, PeerAddress(fd), listener.kind, std::move(tls));
  if (over_limit) conn->MarkOverLimit();
  LOG_DEBUG("*%llu client %s: accepted%s", static_cast<unsigned long long>(conn->number()),
            conn->client_addr().c_str(), over_limit ? " past the connection cap" : "");
  conn->Start();
  // Accepted by the kernel before the listener closed (the completion was
  // on its way): the client has a connection, so it is served as a
  // draining one (its request answered with Connection: close), not reset;
  // in a restart the socket stays open for the new process.
  if (shard_.draining()) conn->Drain();
}

void Worker::OnAcceptError(int tag, int res) {
  // EMFILE/ENFILE/ENOBUFS: the connection stays in the backlog; log and
  // keep accepting once something is freed.
  LOG_WARN("accept: %s", strerror(-res));
}

void Worker::BeginDrain() {
  shard_.set_draining();
  drain_deadline_ns_ = loop_.now_ns() + config_.drain_timeout_ns;
  loop_.DeadlineTimers()->ArmAt(&drain_timer_, drain_deadline_ns_);
  // Closing the listeners makes the kernel refuse new connections to this
  // worker's sockets (the others close theirs at the same time).
  loop_.CloseListeners();
  shard_.CloseIdleUpstreams();
  std::vector<ClientConnection*> conns(shard_.connections().begin(), shard_.connections().end());
  for (ClientConnection* c : conns) c->Drain();
  LOG_INFO("draining %zu connection(s)", shard_.connections().size());
}

bool Worker::KeepGoing() {
  if (!shard_.draining()) return true;
  if (shard_.connections().empty()) return false;
  if (loop_.now_ns() >= drain_deadline_ns_) {
    if (!drain_timed_out_) {
      drain_timed_out_ = true;
      LOG_WARN("drain timeout: closing %zu connection(s)", shard_.connections().size());
    }
    return false;
  }
  return true;
}

void Worker::Run() {
  loop_.Run([this] { return KeepGoing(); });
  shard_.FlushAccessLog();
}

}  // namespace sluice::core
