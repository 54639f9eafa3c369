#include <liburing.h>
#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/engine/backend.h"

namespace sluice::core {

static_assert(kIoBuffer == IORING_CQE_F_BUFFER);
static_assert(kIoMore == IORING_CQE_F_MORE);
static_assert(kIoBufferShift == IORING_CQE_BUFFER_SHIFT);

std::string IoUringUnavailableMessage(int err) {
  std::string disabled;
  std::ifstream f("/proc/sys/kernel/io_uring_disabled");
  if (f) std::getline(f, disabled);
  std::string msg = absl::StrCat("io_uring is unavailable (", strerror(err), ")");
  if (!disabled.empty() && disabled != "0") {
    absl::StrAppend(&msg, ": kernel.io_uring_disabled=", disabled,
                    "; run 'sysctl kernel.io_uring_disabled=0' (or allow this user via "
                    "kernel.io_uring_group)");
  } else if (err == EPERM) {
    // The sysctl allows it, so something around the process refuses it.
    absl::StrAppend(&msg,
                    ": a seccomp profile (container runtime, systemd "
                    "SystemCallFilter) blocks io_uring_setup although "
                    "kernel.io_uring_disabled=",
                    disabled.empty() ? "?" : disabled, "; allow the io_uring syscalls for sluice");
  } else if (err == ENOSYS) {
    absl::StrAppend(&msg, ": the kernel was built without io_uring (CONFIG_IO_URING)");
  } else if (err == ENOMEM) {
    absl::StrAppend(&msg, ": raise the locked-memory limit (ulimit -l)");
  }
  return msg;
}

namespace {

constexpr uint16_t kGroupId = 1;

// The kernel's provided-buffer ring (liburing 2.3 has no
// io_uring_setup_buf_ring helper, so its memory is mapped here and
// registered with io_uring_register_buf_ring).
class UringBufferProvider final : public BufferProvider {
 public:
  UringBufferProvider(io_uring* ring, io_uring_buf_ring* br, size_t bytes, uint32_t count)
      : ring_(ring), br_(br), bytes_(bytes), mask_(io_uring_buf_ring_mask(count)) {}
  ~UringBufferProvider() override {
    io_uring_unregister_buf_ring(ring_, kGroupId);
    munmap(br_, bytes_);
  }
  void Provide(uint16_t bid, char* addr, uint32_t len) override {
    io_uring_buf_ring_add(br_, addr, len, bid, mask_, 0);
    io_uring_buf_ring_advance(br_, 1);
  }

 private:
  io_uring* ring_;
  io_uring_buf_ring* br_;
  size_t bytes_;
  int mask_;
};

class UringBackend final : public Backend {
 public:
  ~UringBackend() override {
    if (initialized_) io_uring_queue_exit(&ring_);
  }

  absl::Status Init(unsigned entries) override {
    io_uring_params p{};
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE |
              IORING_SETUP_SUBMIT_ALL;
    p.cq_entries = entries * 4;
    int ret = io_uring_queue_init_params(entries, &ring_, &p);
    if (ret == -EINVAL) {
      // Kernels before 6.1 lack DEFER_TASKRUN; COOP_TASKRUN is the next best.
      p = io_uring_params{};
      p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN;
      p.cq_entries = entries * 4;
      ret = io_uring_queue_init_params(entries, &ring_, &p);
    }
    if (ret < 0) return absl::UnavailableError(IoUringUnavailableMessage(-ret));
    initialized_ = true;
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<BufferProvider>> NewBufferProvider(uint32_t count) override {
    const size_t bytes = count * sizeof(io_uring_buf);
    void* mem = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED) return absl::ResourceExhaustedError("mmap buffer ring");
    auto* br = static_cast<io_uring_buf_ring*>(mem);
    io_uring_buf_ring_init(br);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<uint64_t>(br);
    reg.ring_entries = count;
    reg.bgid = kGroupId;
    int ret = io_uring_register_buf_ring(&ring_, &reg, 0);
    if (ret < 0) {
      munmap(br, bytes);
      return absl::UnavailableError(
          absl::StrCat("io_uring_register_buf_ring: ", strerror(-ret),
                       " (provided buffer rings need Linux 5.19 or later)"));
    }
    return std::make_unique<UringBufferProvider>(&ring_, br, bytes, count);
  }

  void Accept(int fd, Completion* op) override {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_multishot_accept(sqe, fd, nullptr, nullptr, SOCK_CLOEXEC);
    io_uring_sqe_set_data(sqe, op);
  }

  void Recv(int fd, Completion* op) override {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_recv_multishot(sqe, fd, nullptr, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = kGroupId;
    io_uring_sqe_set_data(sqe, op);
  }

  void Read(int fd, void* buf, size_t len, Completion* op) override {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_read(sqe, fd, buf, static_cast<unsigned>(len), 0);
    io_uring_sqe_set_data(sqe, op);
  }

  void SendMsg(int fd, const msghdr* msg, Completion* op) override {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_sendmsg(sqe, fd, msg, MSG_NOSIGNAL);
    io_uring_sqe_set_data(sqe, op);
  }

  void Connect(int fd, const sockaddr* addr, socklen_t len, int64_t timeout_ns,
               Completion* op) override {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_connect(sqe, fd, addr, len);
    io_uring_sqe_set_data(sqe, op);
    sqe->flags |= IOSQE_IO_LINK;
    // The linked timeout cancels the connect (-ECANCELED) when it expires.
    // The kernel reads the timespec when the SQE is submitted: it is kept
    // until the next Wait.
    __kernel_timespec& ts = timeouts_.emplace_back();
    ts.tv_sec = timeout_ns / 1000000000;
    ts.tv_nsec = timeout_ns % 1000000000;
    io_uring_sqe* tsqe = GetSqe();
    io_uring_prep_link_timeout(tsqe, &ts, 0);
    io_uring_sqe_set_data64(tsqe, 0);
  }

  void Cancel(Completion* op) override {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_cancel64(sqe, reinterpret_cast<uint64_t>(op), 0);
    io_uring_sqe_set_data64(sqe, 0);
  }

  void CancelFd(int fd) override {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, 0);
  }

  int Wait(int64_t timeout_ns, int64_t busy_poll_ns) override {
    int ret = SubmitAndWait(timeout_ns, busy_poll_ns);
    timeouts_.clear();
    return ret;
  }

  unsigned Dispatch() override {
    unsigned total = 0;
    for (;;) {
      // Dispatch in batches: a handler may queue SQEs, never reap CQEs.
      io_uring_cqe* cqes[256];
      unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, 256);
      if (n == 0) break;
      for (unsigned i = 0; i < n; ++i) {
        // SQEs without a completion object (cancels, linked timeouts) have
        // user_data 0; their CQEs are dropped.
        uint64_t data = cqes[i]->user_data;
        if (data == 0) continue;
        reinterpret_cast<Completion*>(data)->Complete(cqes[i]->res, cqes[i]->flags);
      }
      io_uring_cq_advance(&ring_, n);
      total += n;
    }
    return total;
  }

 private:
  // A zeroed SQE; when the submission queue is full it is flushed first, so
  // this never returns null.
  io_uring_sqe* GetSqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    while (sqe == nullptr) {
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    return sqe;
  }

  int SubmitAndWait(int64_t timeout_ns, int64_t busy_poll_ns);

  io_uring ring_{};
  bool initialized_ = false;
  std::deque<__kernel_timespec> timeouts_;
};

int64_t MonotonicNs() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<int64_t>(now.tv_sec) * 1000000000 + now.tv_nsec;
}

int UringBackend::SubmitAndWait(int64_t timeout_ns, int64_t busy_poll_ns) {
  io_uring_cqe* cqe = nullptr;
  if (busy_poll_ns > 0 && io_uring_cq_ready(&ring_) == 0) {
    // Poll for completions a little before sleeping: on virtual machines
    // waking a halted CPU costs hundreds of microseconds, more than the
    // gap between two token chunks under load. With DEFER_TASKRUN
    // completions are posted only when this thread enters the kernel, so
    // polling means io_uring_get_events, not peeking at the CQ ring.
    int ret = io_uring_submit(&ring_);
    if (ret < 0) return ret;
    const int64_t start_ns = MonotonicNs();
    const int64_t limit = timeout_ns >= 0 ? std::min(timeout_ns, busy_poll_ns) : busy_poll_ns;
    for (;;) {
      io_uring_get_events(&ring_);
      if (io_uring_cq_ready(&ring_) > 0) return 0;
      if (MonotonicNs() - start_ns >= limit) break;
    }
    if (timeout_ns >= 0) timeout_ns = std::max<int64_t>(0, timeout_ns - limit);
  }
  if (timeout_ns < 0) {
    return io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, nullptr, nullptr);
  }
  __kernel_timespec ts;
  ts.tv_sec = timeout_ns / 1000000000;
  ts.tv_nsec = timeout_ns % 1000000000;
  return io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
}

}  // namespace

std::unique_ptr<Backend> NewUringBackend() { return std::make_unique<UringBackend>(); }

}  // namespace sluice::core
