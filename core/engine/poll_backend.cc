#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <deque>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "core/engine/backend.h"

namespace sluice::core {
namespace {

int64_t MonotonicNs() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<int64_t>(now.tv_sec) * 1000000000 + now.tv_nsec;
}

struct Buffer {
  uint16_t bid;
  char* addr;
  uint32_t len;
};

// Receive buffers handed over by BufferRing, taken in order.
class PollBufferProvider final : public BufferProvider {
 public:
  void Provide(uint16_t bid, char* addr, uint32_t len) override {
    free_.push_back(Buffer{bid, addr, len});
  }
  std::deque<Buffer> free_;
};

// The operations on one socket; at most one of each kind, as Stream and
// Loop use them.
struct FdOps {
  Completion* accept = nullptr;
  Completion* recv = nullptr;
  Completion* read = nullptr;
  void* read_buf = nullptr;
  size_t read_len = 0;
  Completion* send = nullptr;
  const msghdr* send_msg = nullptr;
  Completion* connect = nullptr;
  int64_t connect_deadline_ns = 0;
  bool empty() const { return !accept && !recv && !read && !send && !connect; }
};

// The backend over poll(2): every operation waits for its socket to be
// ready and is then done with a non-blocking system call. Slower than
// io_uring and not meant for production; unit tests drive a loop with it
// on any kernel, one turn at a time.
class PollBackend final : public Backend {
 public:
  absl::Status Init(unsigned) override { return absl::OkStatus(); }

  absl::StatusOr<std::unique_ptr<BufferProvider>> NewBufferProvider(uint32_t) override {
    auto provider = std::make_unique<PollBufferProvider>();
    buffers_ = provider.get();
    return provider;
  }

  void Accept(int fd, Completion* op) override {
    // accept4 has no MSG_DONTWAIT: the listening socket itself must not
    // block.
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    ops_[fd].accept = op;
  }
  void Recv(int fd, Completion* op) override { ops_[fd].recv = op; }
  void Read(int fd, void* buf, size_t len, Completion* op) override {
    FdOps& o = ops_[fd];
    o.read = op;
    o.read_buf = buf;
    o.read_len = len;
  }
  void SendMsg(int fd, const msghdr* msg, Completion* op) override {
    FdOps& o = ops_[fd];
    o.send = op;
    o.send_msg = msg;
  }
  void Connect(int fd, const sockaddr* addr, socklen_t len, int64_t timeout_ns,
               Completion* op) override {
    if (::connect(fd, addr, len) == 0) {
      Ready(op, 0, 0);
    } else if (errno != EINPROGRESS) {
      Ready(op, -errno, 0);
    } else {
      FdOps& o = ops_[fd];
      o.connect = op;
      o.connect_deadline_ns = MonotonicNs() + timeout_ns;
    }
  }

  void Cancel(Completion* op) override {
    for (auto it = ops_.begin(); it != ops_.end(); ++it) {
      FdOps& o = it->second;
      for (Completion** slot : {&o.accept, &o.recv, &o.read, &o.send, &o.connect}) {
        if (*slot != op) continue;
        *slot = nullptr;
        Ready(op, -ECANCELED, 0);
        if (o.empty()) ops_.erase(it);
        return;
      }
    }
  }

  void CancelFd(int fd) override {
    auto it = ops_.find(fd);
    if (it == ops_.end()) return;
    FdOps& o = it->second;
    for (Completion* op : {o.accept, o.recv, o.read, o.send, o.connect}) {
      if (op) Ready(op, -ECANCELED, 0);
    }
    ops_.erase(it);
  }

  int Wait(int64_t timeout_ns, int64_t) override;

  unsigned Dispatch() override {
    // Completions queued while these run (a Cancel from a handler) wait
    // for the next turn, as io_uring's would.
    std::vector<Result> batch;
    batch.swap(ready_);
    for (const Result& r : batch) r.op->Complete(r.res, r.flags);
    return static_cast<unsigned>(batch.size());
  }

 private:
  struct Result {
    Completion* op;
    int res;
    uint32_t flags;
  };
  void Ready(Completion* op, int res, uint32_t flags) { ready_.push_back({op, res, flags}); }
  void DoAccept(int fd, FdOps& o);
  void DoRecv(int fd, FdOps& o);
  void DoRead(int fd, FdOps& o);
  void DoSend(int fd, FdOps& o);
  void DoConnect(int fd, FdOps& o, bool writable);

  PollBufferProvider* buffers_ = nullptr;
  absl::flat_hash_map<int, FdOps> ops_;
  std::vector<Result> ready_;
  std::vector<pollfd> pollfds_;
};

int PollBackend::Wait(int64_t timeout_ns, int64_t) {
  const int64_t now = MonotonicNs();
  pollfds_.clear();
  for (auto& [fd, o] : ops_) {
    short events = 0;
    if (o.accept || o.recv || o.read) events |= POLLIN;
    if (o.send || o.connect) events |= POLLOUT;
    pollfds_.push_back(pollfd{fd, events, 0});
    if (o.connect) {
      const int64_t left = std::max<int64_t>(0, o.connect_deadline_ns - now);
      if (timeout_ns < 0 || left < timeout_ns) timeout_ns = left;
    }
  }
  if (!ready_.empty()) timeout_ns = 0;
  timespec ts{};
  if (timeout_ns >= 0) {
    ts.tv_sec = timeout_ns / 1000000000;
    ts.tv_nsec = timeout_ns % 1000000000;
  }
  int n = ppoll(pollfds_.data(), pollfds_.size(), timeout_ns >= 0 ? &ts : nullptr, nullptr);
  if (n < 0) return -errno;
  const int64_t after = MonotonicNs();
  for (const pollfd& p : pollfds_) {
    auto it = ops_.find(p.fd);
    if (it == ops_.end()) continue;
    FdOps& o = it->second;
    const bool in = p.revents & (POLLIN | POLLHUP | POLLERR);
    const bool out = p.revents & (POLLOUT | POLLHUP | POLLERR);
    if (in && o.accept) DoAccept(p.fd, o);
    if (in && o.recv) DoRecv(p.fd, o);
    if (in && o.read) DoRead(p.fd, o);
    if (out && o.send) DoSend(p.fd, o);
    if (o.connect && (out || after >= o.connect_deadline_ns)) DoConnect(p.fd, o, out);
    if (o.empty()) ops_.erase(it);
  }
  return ready_.empty() ? -ETIME : 0;
}

void PollBackend::DoAccept(int fd, FdOps& o) {
  for (int i = 0; i < 64; ++i) {
    int c = accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c >= 0) {
      Ready(o.accept, c, kIoMore);
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return;
    } else {
      Ready(o.accept, -errno, kIoMore);
      return;
    }
  }
}

void PollBackend::DoRecv(int fd, FdOps& o) {
  // Up to 16 buffers per wake-up, like a multishot receive draining what
  // the socket holds.
  for (int i = 0; i < 16; ++i) {
    if (buffers_ == nullptr || buffers_->free_.empty()) {
      Ready(o.recv, -ENOBUFS, 0);
      o.recv = nullptr;
      return;
    }
    const Buffer b = buffers_->free_.front();
    ssize_t n = ::recv(fd, b.addr, b.len, MSG_DONTWAIT);
    if (n > 0) {
      buffers_->free_.pop_front();
      Ready(o.recv, static_cast<int>(n),
            kIoBuffer | kIoMore | (static_cast<uint32_t>(b.bid) << kIoBufferShift));
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    Ready(o.recv, n == 0 ? 0 : -errno, 0);
    o.recv = nullptr;
    return;
  }
}

void PollBackend::DoRead(int fd, FdOps& o) {
  ssize_t n = ::read(fd, o.read_buf, o.read_len);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
  Ready(o.read, n < 0 ? -errno : static_cast<int>(n), 0);
  o.read = nullptr;
}

void PollBackend::DoSend(int fd, FdOps& o) {
  ssize_t n = ::sendmsg(fd, o.send_msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
  Ready(o.send, n < 0 ? -errno : static_cast<int>(n), 0);
  o.send = nullptr;
}

void PollBackend::DoConnect(int fd, FdOps& o, bool writable) {
  if (writable) {
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    Ready(o.connect, -err, 0);
  } else {
    Ready(o.connect, -ECANCELED, 0);  // the deadline passed
  }
  o.connect = nullptr;
}

}  // namespace

std::unique_ptr<Backend> NewPollBackend() { return std::make_unique<PollBackend>(); }

}  // namespace sluice::core
