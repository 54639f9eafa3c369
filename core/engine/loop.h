#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "core/engine/backend.h"
#include "core/engine/buffer.h"
#include "core/engine/send_queue.h"
#include "core/engine/timer.h"

namespace sluice::core {

class Stream;

// Something with output to finish once per loop turn, after every event of
// the turn was handled and before the batch is submitted: a Stream gathers
// all pieces queued in the turn into one sendmsg; TLS and HTTP/2 sessions
// seal and frame what their streams produced.
class Flushable {
 public:
  virtual void Flush() = 0;

 protected:
  ~Flushable() = default;
};

// Takes the sockets a listener accepts.
class Acceptor {
 public:
  // `fd` is a new connection of the listener added with tag `tag`; the
  // acceptor owns it.
  virtual void OnAccepted(int tag, int fd) = 0;
  // Accepting failed with -errno `res` (EMFILE, ENFILE, ENOBUFS...): the
  // connection stays in the backlog and accepting goes on.
  virtual void OnAcceptError(int tag, int res) = 0;

 protected:
  ~Acceptor() = default;
};

// The event loop of one worker thread: its I/O backend (io_uring, or poll
// in unit tests), provided receive buffers, timers, deferred and posted
// work, end-of-turn flushes and multishot accepts. Everything else in
// sluice reaches the kernel through it and through Stream; nothing outside
// core/engine/ includes liburing.
//
// One turn: submit what was queued and wait (for a completion, the next
// timer, or a posted closure), dispatch completions, run deferred work,
// expire timers, re-arm receives starved of buffers, flush. Not
// thread-safe except Post and Wake.
class Loop {
 public:
  struct Options {
    int cpu = -1;  // pin the thread to this CPU (-1: no pinning)
    unsigned ring_entries = 4096;
    uint32_t recv_buffers = 4096;
    uint32_t recv_buffer_size = 16384;
    int64_t busy_poll_ns = 0;
  };

  // On io_uring.
  explicit Loop(const Options& options);
  // On `backend` (NewPollBackend() in unit tests).
  Loop(const Options& options, std::unique_ptr<Backend> backend);
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  // Sets up the backend and buffers and arms the accepts; runs on the
  // loop's own thread.
  absl::Status Init();

  // Before Init: accept connections on listening socket `fd` (the loop
  // owns it) and hand them to `acceptor` with `tag`.
  void AddListener(int fd, int tag, Acceptor* acceptor);
  // Cancels the accepts and closes the listening sockets: the kernel
  // refuses new connections to them from now on.
  void CloseListeners();

  // Runs turns until `keep_going` returns false (asked after each turn) and
  // the accepts of closed listeners have ended.
  void Run(const std::function<bool()>& keep_going);
  // One turn, waiting at most `max_wait_ns` (< 0: until the next timer or
  // event) for something to happen. Tests step a loop with it.
  void Turn(int64_t max_wait_ns);

  Backend& backend() { return *backend_; }
  BufferRing& buffers() { return buffers_; }
  const BufferRing& buffers() const { return buffers_; }
  SendPool& send_pool() { return send_pool_; }
  // Monotonic and wall clock, read once per turn.
  int64_t now_ns() const { return now_ns_; }
  int64_t now_unix_ns() const { return now_unix_ns_; }

  // The list for timers of `duration_ns` (created on first use).
  TimerList* Timers(int64_t duration_ns);
  // Timers with arbitrary deadlines (TimerList::ArmAt).
  TimerList* DeadlineTimers() { return deadline_timers_; }
  // Runs `fn` after the current batch of completions (safe place to free).
  void Defer(std::function<void()> fn) { deferred_.push_back(std::move(fn)); }
  // Thread-safe: runs `fn` on this loop soon. Dropped if the loop has
  // ended.
  void Post(std::function<void()> fn);

  // Calls f->Flush() at the end of this turn. The caller keeps a flag so
  // that it registers once per turn; it must call CancelFlush before it is
  // destroyed with a flush pending.
  void RequestFlush(Flushable* f) { flush_.push_back(f); }
  void CancelFlush(Flushable* f);

  // Streams whose receive stopped on -ENOBUFS: re-armed once buffers came
  // back.
  void AddStarved(Stream* s) { starved_.push_back(s); }
  void RemoveStarved(Stream* s);

  // An account for the ring buffers of one client connection and the
  // upstream links serving it (see BufferAccount). Before releasing it the
  // owner takes it off its own stream; the upstreams still in it are taken
  // off here.
  BufferAccount* NewAccount();
  void ReleaseAccount(BufferAccount* account);
  // Upstream streams paused because the ring ran low (RelievePressure).
  void AddPaused(Stream* s) { paused_.push_back(s); }
  void RemovePaused(Stream* s);
  size_t paused_count() const { return paused_.size(); }
  // Streams paused so far (a counter).
  uint64_t pressure_pauses() const { return pressure_pauses_; }

 private:
  struct AcceptOp final : Completion {
    Loop* loop;
    Acceptor* acceptor;
    int fd;
    int tag;
    bool armed = false;
    void Complete(int res, uint32_t flags) override { loop->OnAccept(this, res, flags); }
  };
  struct WakeOp final : Completion {
    Loop* loop;
    void Complete(int res, uint32_t flags) override { loop->OnWake(); }
  };

  void ArmAccept(AcceptOp* op);
  void ArmWake();
  void OnAccept(AcceptOp* op, int res, uint32_t flags);
  void OnWake();
  bool AcceptsClosing() const;
  void UpdateClock();
  int64_t NextTimeout() const;
  void RunDeferred();
  void RetryStarved();
  // When the ring ran low this turn: pauses the upstream streams of the
  // accounts that hold the most of it; once it is back under half, resumes
  // them.
  void RelievePressure();
  void RunFlushes();

  static constexpr int64_t kBufferTrimNs = 1'000'000'000;

  Options options_;
  int wake_fd_ = -1;
  uint64_t wake_buf_ = 0;
  std::unique_ptr<Backend> backend_;
  BufferRing buffers_;
  SendPool send_pool_;
  std::vector<std::unique_ptr<AcceptOp>> accept_ops_;
  WakeOp wake_op_;
  int64_t now_ns_ = 0;
  int64_t now_unix_ns_ = 0;
  std::vector<std::unique_ptr<TimerList>> timer_lists_;
  TimerList* deadline_timers_ = nullptr;
  std::vector<std::function<void()>> deferred_;
  std::vector<Stream*> starved_;
  std::vector<Stream*> paused_;
  uint64_t pressure_pauses_ = 0;
  absl::flat_hash_set<BufferAccount*> accounts_;
  std::vector<Flushable*> flush_;
  uint64_t recycled_seen_ = 0;
  Timer buffer_trim_timer_;
  std::mutex post_mu_;
  std::vector<std::function<void()>> posted_;
};

}  // namespace sluice::core
