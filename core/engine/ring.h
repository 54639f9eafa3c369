#pragma once

#include <liburing.h>

#include <cstdint>

#include "absl/status/status.h"

namespace sluice::core {

// One in-flight io_uring operation. The SQE's user_data points at it; the
// loop calls Complete once per CQE (several times for multishot operations,
// while IORING_CQE_F_MORE is set). The object must outlive the operation.
// SQEs whose user_data is 0 (cancellations, linked timeouts) have no
// completion object and their CQEs are dropped.
class Completion {
 public:
  virtual void Complete(int res, uint32_t flags) = 0;

 protected:
  ~Completion() = default;
};

// A worker's io_uring, created on the worker's own thread (SINGLE_ISSUER
// requires the creating task to be the only submitter).
class Ring {
 public:
  Ring() = default;
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // Sets the ring up with SINGLE_ISSUER | DEFER_TASKRUN (COOP_TASKRUN on
  // kernels without DEFER_TASKRUN). Fails with a message that says how to
  // enable io_uring when the kernel refuses it.
  absl::Status Init(unsigned entries);

  // A zeroed SQE; when the submission queue is full it is flushed first, so
  // this never returns null.
  io_uring_sqe* GetSqe();

  // Submits everything queued and waits for at least one completion or
  // until `timeout_ns` (relative, <0: no limit), first polling for up to
  // `busy_poll_ns` without sleeping. Returns -errno or >= 0.
  int SubmitAndWait(int64_t timeout_ns, int64_t busy_poll_ns = 0);

  // Calls Complete on the owner of every ready CQE.
  unsigned DispatchCompletions();

  io_uring* raw() { return &ring_; }

 private:
  io_uring ring_{};
  bool initialized_ = false;
};

// Message for a failed io_uring_queue_init; names the sysctl when relevant.
std::string IoUringUnavailableMessage(int err);

}  // namespace sluice::core
