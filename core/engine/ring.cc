#include "core/engine/ring.h"

#include <time.h>

#include <algorithm>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"

namespace sluice::core {

Ring::~Ring() {
  if (initialized_) io_uring_queue_exit(&ring_);
}

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
    absl::StrAppend(&msg, ": a seccomp profile (container runtime, systemd "
                    "SystemCallFilter) blocks io_uring_setup although "
                    "kernel.io_uring_disabled=", disabled.empty() ? "?" : disabled,
                    "; allow the io_uring syscalls for sluice");
  } else if (err == ENOSYS) {
    absl::StrAppend(&msg, ": the kernel was built without io_uring (CONFIG_IO_URING)");
  } else if (err == ENOMEM) {
    absl::StrAppend(&msg, ": raise the locked-memory limit (ulimit -l)");
  }
  return msg;
}

absl::Status Ring::Init(unsigned entries) {
  io_uring_params p{};
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
            IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
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

io_uring_sqe* Ring::GetSqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

int Ring::SubmitAndWait(int64_t timeout_ns, int64_t busy_poll_ns) {
  io_uring_cqe* cqe = nullptr;
  if (busy_poll_ns > 0 && io_uring_cq_ready(&ring_) == 0) {
    // Poll for completions a little before sleeping: on virtual machines
    // waking a halted CPU costs hundreds of microseconds, more than the
    // gap between two token chunks under load. With DEFER_TASKRUN
    // completions are posted only when this thread enters the kernel, so
    // polling means io_uring_get_events, not peeking at the CQ ring.
    int ret = io_uring_submit(&ring_);
    if (ret < 0) return ret;
    timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    const int64_t start_ns = static_cast<int64_t>(start.tv_sec) * 1000000000 + start.tv_nsec;
    const int64_t limit = timeout_ns >= 0 ? std::min(timeout_ns, busy_poll_ns) : busy_poll_ns;
    for (;;) {
      io_uring_get_events(&ring_);
      if (io_uring_cq_ready(&ring_) > 0) return 0;
      timespec now;
      clock_gettime(CLOCK_MONOTONIC, &now);
      int64_t elapsed = static_cast<int64_t>(now.tv_sec) * 1000000000 + now.tv_nsec - start_ns;
      if (elapsed >= limit) break;
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

unsigned Ring::DispatchCompletions() {
  unsigned total = 0;
  for (;;) {
    // Dispatch in batches: a handler may queue SQEs, never reap CQEs.
    io_uring_cqe* cqes[256];
    unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, 256);
    if (n == 0) break;
    for (unsigned i = 0; i < n; ++i) {
      uint64_t data = cqes[i]->user_data;
      if (data == 0) continue;
      reinterpret_cast<Completion*>(data)->Complete(cqes[i]->res, cqes[i]->flags);
    }
    io_uring_cq_advance(&ring_, n);
    total += n;
  }
  return total;
}

}  // namespace sluice::core
