#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sluice::core {

// Flags of a completion (the same bits io_uring puts in a CQE, checked where
// the io_uring backend is built, so its completions pass through as they
// are).
inline constexpr uint32_t kIoBuffer = 1u << 0;  // a provided buffer was filled
inline constexpr uint32_t kIoMore = 1u << 1;    // more completions will follow
inline constexpr unsigned kIoBufferShift = 16;  // flags >> shift: its id

// One operation in flight. The backend calls Complete once per result
// (several times for multishot operations, while kIoMore is set); the
// object must outlive the operation.
class Completion {
 public:
  virtual void Complete(int res, uint32_t flags) = 0;

 protected:
  ~Completion() = default;
};

// Where the receive buffers go to be filled: the kernel's provided-buffer
// ring, or the poll backend's own list. BufferRing hands each free buffer
// over through it; a multishot receive takes them in the order given.
class BufferProvider {
 public:
  virtual ~BufferProvider() = default;
  virtual void Provide(uint16_t bid, char* addr, uint32_t len) = 0;
};

// What a worker's loop and its sockets ask of the kernel, in the spirit of
// Seastar's reactor backends: one implementation over io_uring (what sluice
// runs on) and one over poll(2), which needs no io_uring and lets a unit
// test step the loop on its own thread with plain sockets on both sides.
//
// Operations are queued during a loop turn and start at the next Wait;
// their completions are delivered by Dispatch, never from inside the call
// that queued them. Not thread-safe: one loop thread uses it.
class Backend {
 public:
  virtual ~Backend() = default;

  // Sets the backend up on the loop's thread; `entries` sizes io_uring's
  // submission queue.
  virtual absl::Status Init(unsigned entries) = 0;
  // A provider for `count` receive buffers (a power of two), to be given
  // to BufferRing. At most one per backend; it must be destroyed first.
  virtual absl::StatusOr<std::unique_ptr<BufferProvider>> NewBufferProvider(uint32_t count) = 0;

  // Multishot accept on listening socket `fd`: res is a new socket (close
  // on exec) or -errno; it ends without kIoMore after Cancel.
  virtual void Accept(int fd, Completion* op) = 0;
  // Multishot receive on `fd` into provided buffers: res > 0 with
  // kIoBuffer and the buffer's id; it ends without kIoMore on 0 (the peer
  // closed), -errno, -ENOBUFS (no buffer was left) or -ECANCELED (Cancel).
  virtual void Recv(int fd, Completion* op) = 0;
  // One read of up to `len` bytes into `buf`.
  virtual void Read(int fd, void* buf, size_t len, Completion* op) = 0;
  // One sendmsg (MSG_NOSIGNAL); res is the bytes sent, possibly fewer than
  // asked, or -errno. `msg` and what it points at stay valid until then.
  virtual void SendMsg(int fd, const msghdr* msg, Completion* op) = 0;
  // Connects non-blocking socket `fd`: 0, -errno, or -ECANCELED once
  // `timeout_ns` passed. `addr` stays valid until the next Wait.
  virtual void Connect(int fd, const sockaddr* addr, socklen_t len, int64_t timeout_ns,
                       Completion* op) = 0;
  // Ends the operation of `op` early; its last completion follows.
  virtual void Cancel(Completion* op) = 0;
  // Ends every operation on `fd` early.
  virtual void CancelFd(int fd) = 0;

  // Starts what was queued and waits for at least one completion, at most
  // `timeout_ns` (< 0: no limit), after polling for up to `busy_poll_ns`
  // without sleeping. Returns -errno when the wait itself failed
  // (-ETIME, -EINTR: nothing happened).
  virtual int Wait(int64_t timeout_ns, int64_t busy_poll_ns) = 0;
  // Calls Complete for every completion ready; returns how many.
  virtual unsigned Dispatch() = 0;
};

// The io_uring backend (core/engine/uring_backend.cc); Init fails with a
// message that says how to enable io_uring where the kernel refuses it.
std::unique_ptr<Backend> NewUringBackend();
// The poll(2) backend (core/engine/poll_backend.cc), for tests.
std::unique_ptr<Backend> NewPollBackend();

// Message for a failed io_uring_queue_init (-`err`); names the sysctl when
// relevant.
std::string IoUringUnavailableMessage(int err);

}  // namespace sluice::core
