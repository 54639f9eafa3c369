#include "core/engine/stream.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/engine/loop.h"

namespace sluice::core {

Stream::Stream(Loop* loop, int fd, StreamHandler* handler)
    : loop_(loop), fd_(fd), handler_(handler) {
  recv_op_.s = this;
  send_op_.s = this;
  connect_op_.s = this;
}

Stream::~Stream() {
  if (pressure_paused_) loop_->RemovePaused(this);
  pressure_paused_ = false;
  SetAccount(nullptr, false);
  if (starved_) loop_->RemoveStarved(this);
  if (flush_pending_) loop_->CancelFlush(this);
  if (fd_ >= 0) ::close(fd_);
}

void Stream::Connect(const sockaddr* addr, socklen_t len, int64_t timeout_ns) {
  loop_->backend().Connect(fd_, addr, len, timeout_ns, &connect_op_);
  connecting_ = true;
  ++inflight_;
}

void Stream::OnConnect(int res) {
  OpDone();
  connecting_ = false;
  if (closing_) {
    MaybeFinishClose();
    return;
  }
  handler_->OnConnected(res);
  if (res == 0) KickSend();
}

void Stream::StartReading() {
  want_read_ = true;
  if (CanArmRecv()) ArmRecv();
}

void Stream::StopReading() {
  want_read_ = false;
  CancelRecv();
}

void Stream::CancelRecv() {
  if (recv_armed_ && !cancel_pending_) {
    loop_->backend().Cancel(&recv_op_);
    cancel_pending_ = true;
  }
}

void Stream::SetAccount(BufferAccount* account, bool upstream) {
  if (account_ != nullptr && upstream_) {
    auto& list = account_->upstreams;
    list.erase(std::remove(list.begin(), list.end(), this), list.end());
  }
  account_ = account;
  upstream_ = upstream;
  if (account_ != nullptr && upstream_) account_->upstreams.push_back(this);
  // A link handed to another connection is not that connection's reason
  // to wait.
  if (pressure_paused_ && account_ == nullptr) ResumeAfterPressure();
}

void Stream::PauseForPressure() {
  if (pressure_paused_ || closing_) return;
  pressure_paused_ = true;
  loop_->AddPaused(this);
  CancelRecv();
}

void Stream::ResumeAfterPressure() {
  if (!pressure_paused_) return;
  pressure_paused_ = false;
  loop_->RemovePaused(this);
  if (CanArmRecv()) ArmRecv();
}

void Stream::ArmRecv() {
  loop_->backend().Recv(fd_, &recv_op_);
  recv_armed_ = true;
  ++inflight_;
}

int Stream::PeekReadEnd() const {
  if (fd_ < 0 || closing_ || read_ended_) return 1;
  char c;
  const ssize_t n = ::recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0) return 0;
  if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return -errno;
  return 1;
}

bool Stream::PeerHungUp() const {
  if (fd_ < 0 || closing_) return false;
  if (read_ended_) return true;
  pollfd p{fd_, POLLRDHUP, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

void Stream::RetryAfterBuffers() {
  starved_ = false;
  if (CanArmRecv()) ArmRecv();
}

void Stream::OnRecv(int res, uint32_t flags) {
  const bool more = flags & kIoMore;
  if (!more) {
    recv_armed_ = false;
    cancel_pending_ = false;
    OpDone();
  }
  if (res > 0) {
    Slice data =
        loop_->buffers().Take(static_cast<uint16_t>(flags >> kIoBufferShift), res, account_);
    if (!closing_) handler_->OnData(std::move(data));
  } else if (res == -ENOBUFS) {
    // The ring is empty: wait until slices release buffers, then re-arm.
    loop_->buffers().OnEmpty();
    if (!more && !closing_ && !starved_) {
      starved_ = true;
      loop_->AddStarved(this);
    }
    return;
  } else if (res == -ECANCELED) {
    // StopReading, or Close.
  } else {
    // 0: orderly shutdown by the peer; <0: reset or another error.
    read_ended_ = true;
    if (!closing_) handler_->OnReadEnd(res);
  }
  if (closing_) {
    MaybeFinishClose();
    return;
  }
  if (!more && CanArmRecv()) ArmRecv();
}

void Stream::Write(Slice s) {
  if (s.empty() || closing_ || write_failed_) return;
  Piece& p = Queue().emplace_back();
  p.ptr = s.data();
  p.len = s.size();
  p.slice = std::move(s);
  queued_bytes_ += p.len;
  KickSend();
}

void Stream::WriteStatic(std::string_view s) {
  if (s.empty() || closing_ || write_failed_) return;
  Piece& p = Queue().emplace_back();
  p.ptr = s.data();
  p.len = s.size();
  queued_bytes_ += p.len;
  KickSend();
}

void Stream::WriteCopy(std::string_view s) {
  if (s.size() > sizeof(Piece::small)) {
    WriteOwned(std::string(s));
    return;
  }
  if (s.empty() || closing_ || write_failed_) return;
  Piece& p = Queue().emplace_back();
  memcpy(p.small, s.data(), s.size());
  p.ptr = p.small;
  p.len = s.size();
  queued_bytes_ += p.len;
  KickSend();
}

void Stream::WriteOwned(std::string s) {
  if (s.empty() || closing_ || write_failed_) return;
  Piece& p = Queue().emplace_back();
  p.owned = std::move(s);
  p.ptr = p.owned.data();
  p.len = p.owned.size();
  queued_bytes_ += p.len;
  KickSend();
}

SendPieces& Stream::Queue() {
  if (!queue_) queue_ = loop_->send_pool().TakePieces();
  return *queue_;
}

void Stream::ReturnQueue() {
  if (!queue_) return;
  queue_->clear();
  loop_->send_pool().GivePieces(std::move(queue_));
}

void Stream::KickSend() {
  if (send_inflight_ || queue_empty() || closing_ || connecting_ || flush_pending_) {
    return;
  }
  flush_pending_ = true;
  loop_->RequestFlush(this);
}

void Stream::Flush() {
  flush_pending_ = false;
  if (send_inflight_ || queue_empty() || closing_ || connecting_) return;
  if (!scratch_) scratch_ = loop_->send_pool().TakeScratch();
  int n = 0;
  for (auto it = queue_->begin(); it != queue_->end() && n < SendScratch::kMaxIov; ++it, ++n) {
    scratch_->iov[n].iov_base = const_cast<char*>(it->ptr);
    scratch_->iov[n].iov_len = it->len;
  }
  scratch_->msg = msghdr{};
  scratch_->msg.msg_iov = scratch_->iov;
  scratch_->msg.msg_iovlen = n;
  loop_->backend().SendMsg(fd_, &scratch_->msg, &send_op_);
  send_inflight_ = true;
  ++inflight_;
}

void Stream::OnSend(int res) {
  send_inflight_ = false;
  OpDone();
  loop_->send_pool().GiveScratch(std::move(scratch_));
  if (closing_) {
    ReturnQueue();
    MaybeFinishClose();
    return;
  }
  if (res < 0) {
    write_failed_ = true;
    ReturnQueue();
    queued_bytes_ = 0;
    handler_->OnWriteError(res);
    return;
  }
  // A short send leaves the rest of a piece at the front; it goes out next.
  size_t sent = static_cast<size_t>(res);
  queued_bytes_ -= sent;
  while (sent > 0) {
    Piece& p = queue_->front();
    if (sent >= p.len) {
      sent -= p.len;
      queue_->pop_front();
    } else {
      p.ptr += sent;
      p.len -= sent;
      sent = 0;
    }
  }
  if (queue_empty()) {
    ReturnQueue();
    if (shutdown_write_) ::shutdown(fd_, SHUT_WR);
  } else {
    KickSend();
  }
  handler_->OnWriteProgress();
}

void Stream::ShutdownWriteWhenDrained() {
  shutdown_write_ = true;
  if (write_idle()) ::shutdown(fd_, SHUT_WR);
}

void Stream::Close() {
  if (closing_) return;
  closing_ = true;
  want_read_ = false;
  if (pressure_paused_) {
    loop_->RemovePaused(this);
    pressure_paused_ = false;
  }
  if (starved_) {
    loop_->RemoveStarved(this);
    starved_ = false;
  }
  // A send in flight may still read the pieces' bytes: the queue goes back
  // once it completes (OnSend, or the destructor).
  if (!send_inflight_) ReturnQueue();
  queued_bytes_ = 0;
  if (inflight_ > 0) {
    // shutdown() ends a pending receive (EOF) or send (EPIPE) at once and
    // tells the peer now (Ollama stops generating only when its connection
    // closes). Only a connect in flight needs a cancel: a cancel by fd is
    // matched against every request of the ring, so one per connection
    // made a mass close (10 000 timeouts at once) quadratic.
    ::shutdown(fd_, SHUT_RDWR);
    if (connecting_) loop_->backend().CancelFd(fd_);
  }
  MaybeFinishClose();
}

void Stream::OpDone() { --inflight_; }

void Stream::MaybeFinishClose() {
  if (!closing_ || closed_ || inflight_ > 0) return;
  closed_ = true;
  ::close(fd_);
  fd_ = -1;
  loop_->Defer([h = handler_] { h->OnClosed(); });
}

}  // namespace sluice::core
