#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>

#include "core/engine/backend.h"
#include "core/engine/buffer.h"
#include "core/engine/loop.h"
#include "core/engine/send_queue.h"

namespace sluice::core {

class Loop;

// Events of a Stream. They run from the worker loop; a handler may call any
// Stream method, including Close, but must not destroy the Stream inside a
// callback (owners are destroyed from OnClosed, which comes last).
class StreamHandler {
 public:
  virtual ~StreamHandler() = default;
  // Bytes received (one provided buffer's worth, or less).
  virtual void OnData(Slice data) = 0;
  // The peer closed its side (res == 0) or the read failed (-errno).
  virtual void OnReadEnd(int res) = 0;
  // A send completed; queued_bytes() tells how much is still waiting.
  virtual void OnWriteProgress() {}
  // A send failed (-errno). The stream writes nothing more.
  virtual void OnWriteError(int res) = 0;
  // Connect finished: 0 or -errno (-ECANCELED: connect timeout).
  virtual void OnConnected(int res) {}
  // The fd is closed and no operation is in flight: the owner may go.
  virtual void OnClosed() = 0;
};

// Bytes queued in a Stream above which a producer must pause its source,
// and below which it may resume. With 16 KiB provided buffers a paused
// stream pins at most high + what the in-flight receive completes with.
inline constexpr size_t kHighWatermark = 64 * 1024;
inline constexpr size_t kLowWatermark = 16 * 1024;
inline constexpr size_t kMaxPieces = 96;

// A socket driven through the worker's loop (its io_uring): one multishot
// receive into the provided buffers, one send in flight at a time (a second send
// could overtake a retried short one and reorder bytes), and a queue of
// pieces to send, gathered with sendmsg. The Stream owns its fd.
class Stream final : public Flushable {
 public:
  Stream(Loop* loop, int fd, StreamHandler* handler);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // Connects the (non-blocking, unconnected) socket; OnConnected follows.
  void Connect(const sockaddr* addr, socklen_t len, int64_t timeout_ns);

  // Wants data: keeps a multishot receive armed (re-arming after -ENOBUFS
  // once buffers come back). StopReading cancels it; completions already
  // under way may still deliver a little data.
  void StartReading();
  void StopReading();
  bool reading() const { return want_read_; }
  // The peer closed its side or the read failed.
  bool read_ended() const { return read_ended_; }

  // Queue bytes to send. Slices are held until their bytes are sent;
  // views must stay valid until then (static strings); small copies are
  // kept inline in the queue entry, larger strings are owned.
  void Write(Slice s);
  void WriteStatic(std::string_view s);
  void WriteCopy(std::string_view s);
  void WriteOwned(std::string s);

  size_t queued_bytes() const { return queued_bytes_; }
  // Backpressure: a producer pauses its source while congested() and
  // resumes once drained(). Pieces count too, because every queued slice
  // pins a whole provided buffer however few bytes it holds.
  bool congested() const { return queued_bytes_ > kHighWatermark || queued_pieces() > kMaxPieces; }
  bool drained() const {
    return queued_bytes_ <= kLowWatermark && queued_pieces() <= kMaxPieces / 4;
  }
  bool write_idle() const { return queue_empty() && !send_inflight_; }

  // Half-closes the sending side once the queue has drained.
  void ShutdownWriteWhenDrained();

  // Stops everything: cancels operations, closes the fd when none is left in
  // flight, then calls OnClosed. Idempotent.
  void Close();
  bool closing() const { return closing_; }
  int fd() const { return fd_; }

  // Whether the peer closed or reset, seen without taking any byte
  // (MSG_PEEK): 0 at the end of the stream, -errno after a reset, 1
  // otherwise (bytes waiting, nothing yet, or already known). For a
  // connection that waits on a peer: a multishot receive can miss an EOF
  // that follows data at once (a kernel race seen with io_uring), and
  // nothing else would wake it.
  int PeekReadEnd() const;
  // Whether the peer has shut down its side or reset, even with bytes
  // still unread before its FIN (poll's POLLRDHUP), for a connection that
  // is not being read.
  bool PeerHungUp() const;

  // Re-arms a receive that stopped on -ENOBUFS (called by the loop).
  void RetryAfterBuffers();

  // The account charged for the ring buffers this stream receives (null:
  // none). An upstream stream joins its account's list of upstreams, which
  // the loop pauses first when the ring runs low.
  void SetAccount(BufferAccount* account, bool upstream);
  BufferAccount* account() const { return account_; }
  // The ring ran low and this stream's account holds much of it: receives
  // stop until ResumeAfterPressure, whatever StartReading says meanwhile.
  void PauseForPressure();
  void ResumeAfterPressure();
  bool paused_for_pressure() const { return pressure_paused_; }
  // Sends everything queued so far in one sendmsg (called by the loop at
  // the end of a loop turn, so that a chunk's header, payload and CRLF
  // leave together instead of in three sends).
  void Flush() override;

 private:
  using Piece = SendPiece;
  struct RecvOp final : Completion {
    Stream* s;
    void Complete(int res, uint32_t flags) override { s->OnRecv(res, flags); }
  };
  struct SendOp final : Completion {
    Stream* s;
    void Complete(int res, uint32_t flags) override { s->OnSend(res); }
  };
  struct ConnectOp final : Completion {
    Stream* s;
    void Complete(int res, uint32_t flags) override { s->OnConnect(res); }
  };

  void ArmRecv();
  void CancelRecv();
  bool CanArmRecv() const {
    return want_read_ && !recv_armed_ && !closing_ && !read_ended_ && !starved_ &&
           !pressure_paused_;
  }
  // The queue, taken from the worker's pool on the first write; it goes back
  // once everything queued is sent, so an idle stream holds none.
  SendPieces& Queue();
  void ReturnQueue();
  bool queue_empty() const { return !queue_ || queue_->empty(); }
  size_t queued_pieces() const { return queue_ ? queue_->size() : 0; }
  void KickSend();
  void OnRecv(int res, uint32_t flags);
  void OnSend(int res);
  void OnConnect(int res);
  void OpDone();
  void MaybeFinishClose();

  Loop* loop_;
  int fd_;
  StreamHandler* handler_;
  RecvOp recv_op_;
  SendOp send_op_;
  ConnectOp connect_op_;
  std::unique_ptr<SendPieces> queue_;
  size_t queued_bytes_ = 0;
  // The sendmsg in flight's msghdr and iovecs, from the worker's pool.
  std::unique_ptr<SendScratch> scratch_;
  int inflight_ = 0;
  bool want_read_ = false;
  bool recv_armed_ = false;
  bool cancel_pending_ = false;
  bool send_inflight_ = false;
  bool starved_ = false;
  bool closing_ = false;
  bool closed_ = false;
  bool read_ended_ = false;
  bool write_failed_ = false;
  bool shutdown_write_ = false;
  bool connecting_ = false;
  bool flush_pending_ = false;
  bool pressure_paused_ = false;
  bool upstream_ = false;
  BufferAccount* account_ = nullptr;
};

}  // namespace sluice::core
