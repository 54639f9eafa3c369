#include "core/h1_downstream.h"

#include <cerrno>

#include "core/log.h"
#include "core/worker.h"

namespace sluice::core {

DownstreamConnection::DownstreamConnection(Worker* worker, int fd,
                                           std::string client_addr)
    : worker_(worker),
      stream_(worker, fd, this),
      codec_(this, http::H1Limits{worker->config().max_header_bytes,
                                  worker->config().client_max_body_size}),
      client_addr_(std::move(client_addr)),
      keepalive_timer_([this] { stream_.Close(); }),
      header_timer_([this] {
        if (responding_) return;
        stream_.WriteOwned(http::JsonErrorResponse(408, "request header timeout", true));
        CloseAfterDrain();
      }),
      send_timer_([this] { Abort(); }) {}

DownstreamConnection::~DownstreamConnection() = default;

void DownstreamConnection::Start() {
  worker_->AddConnection(this);
  stream_.StartReading();
  ArmIdleTimers();
}

void DownstreamConnection::Drain() {
  draining_ = true;
  if (!responding_ && !codec_.in_message() && pending_.empty()) {
    stream_.Close();
  }
}

void DownstreamConnection::OnData(Slice data) {
  if (stream_.closing()) return;
  if (tunnel_) {
    if (relay_) relay_->OnTunnelData(std::move(data));
    return;
  }
  pending_bytes_ += data.size();
  pending_.push_back(std::move(data));
  ProcessInput();
}

void DownstreamConnection::ProcessInput() {
  if (in_process_) return;  // the running loop below sees the new state
  in_process_ = true;
  while (!stream_.closing() && !close_after_) {
    if (codec_.paused()) {
      if (responding_) break;  // answer in order: next request waits
      codec_.Resume();
    }
    if (codec_.upgraded() || pending_.empty()) break;
    Slice slice = pending_.front();
    current_ = &slice;
    absl::StatusOr<size_t> n = codec_.Dispatch(slice.view());
    current_ = nullptr;
    if (!n.ok()) {
      in_process_ = false;
      CodecError(n.status());
      return;
    }
    pending_bytes_ -= *n;
    if (*n == pending_.front().size()) {
      pending_.pop_front();
    } else {
      pending_.front().RemovePrefix(*n);
    }
  }
  in_process_ = false;
  if (stream_.closing()) return;
  ArmIdleTimers();
  UpdateReading();
}

void DownstreamConnection::UpdateReading() {
  // Unparsed pipelined input is bounded; relay backpressure pauses too.
  bool want = !paused_by_relay_ && !close_after_ &&
              pending_bytes_ <= kHighWatermark;
  if (want && !stream_.reading()) {
    stream_.StartReading();
  } else if (!want && stream_.reading()) {
    stream_.StopReading();
  }
}

void DownstreamConnection::ArmIdleTimers() {
  const Config& cfg = worker_->config();
  if (responding_ || tunnel_ || close_after_) {
    keepalive_timer_.Disarm();
    header_timer_.Disarm();
  } else if (codec_.in_message() || !pending_.empty()) {
    keepalive_timer_.Disarm();
    if (!header_timer_.armed()) {
      worker_->Timers(cfg.client_header_timeout_ns)->Arm(&header_timer_, worker_->now_ns());
    }
  } else {
    header_timer_.Disarm();
    if (!keepalive_timer_.armed()) {
      worker_->Timers(cfg.keepalive_timeout_ns)->Arm(&keepalive_timer_, worker_->now_ns());
    }
  }
}

void DownstreamConnection::OnRequestHead(http::RequestHead head) {
  worker_->stats().requests.fetch_add(1, std::memory_order_relaxed);
  responding_ = true;
  keepalive_timer_.Disarm();
  header_timer_.Disarm();
  request_has_body_ = head.has_body();
  request_keep_alive_ = head.keep_alive;
  const bool expect_continue = head.expect_continue && head.has_body();
  relay_ = std::make_unique<Relay>(worker_, this, std::move(head), client_addr_, "http");
  // The body limit was already checked against Content-Length, so the
  // client may send; the expectation is not forwarded.
  if (expect_continue) stream_.WriteStatic(http::k100Continue);
  relay_->Start();
}

void DownstreamConnection::OnRequestBody(std::string_view data) {
  if (relay_) relay_->OnRequestBody(current_->SubOf(data));
}

void DownstreamConnection::OnRequestComplete() {
  if (relay_) relay_->OnRequestEnd();
}

void DownstreamConnection::SendResponseHead(const http::ResponseHead& head) {
  using http::BodyFraming;
  const bool http10 = relay_ && relay_->head().version_minor == 0;
  const bool no_body = (relay_ && relay_->head().is_head()) ||
                       head.status < 200 || head.status == 204 ||
                       head.status == 304;
  if (no_body) {
    framing_ = BodyFraming::kNone;
  } else if (head.content_length.has_value()) {
    framing_ = BodyFraming::kContentLength;
  } else if (http10) {
    framing_ = BodyFraming::kClose;
  } else {
    framing_ = BodyFraming::kChunked;
  }
  const bool upgrade = head.status == 101;
  if (!request_keep_alive_ || draining_ || framing_ == BodyFraming::kClose ||
      codec_.in_message() || (relay_ && relay_->head().upgrade && !upgrade)) {
    close_after_ = true;
  }
  std::string out;
  http::AppendDownstreamResponseHead(head, framing_, close_after_ && !upgrade, &out);
  stream_.WriteOwned(std::move(out));
  ArmSendTimer();
  if (upgrade) {
    tunnel_ = true;
    close_after_ = false;
    // Bytes the client sent after its upgrade request belong to the tunnel.
    while (!pending_.empty()) {
      relay_->OnTunnelData(std::move(pending_.front()));
      pending_.pop_front();
    }
    pending_bytes_ = 0;
    UpdateReading();
  }
}

void DownstreamConnection::SendResponseBody(Slice piece) {
  if (piece.empty()) return;
  if (framing_ == http::BodyFraming::kChunked) {
    char hdr[http::kMaxChunkHeader];
    stream_.WriteCopy(std::string_view(hdr, http::FormatChunkHeader(piece.size(), hdr)));
    stream_.Write(std::move(piece));
    stream_.WriteStatic(http::kCrlf);
  } else if (framing_ != http::BodyFraming::kNone) {
    stream_.Write(std::move(piece));
  }
  ArmSendTimer();
}

void DownstreamConnection::SendResponseEnd() {
  if (framing_ == http::BodyFraming::kChunked) stream_.WriteStatic(http::kLastChunk);
  FinishExchange();
}

void DownstreamConnection::SendError(int status, std::string_view message) {
  if (codec_.in_message() && request_has_body_) close_after_ = true;
  if (!request_keep_alive_ || draining_) close_after_ = true;
  stream_.WriteOwned(http::JsonErrorResponse(status, message, close_after_));
  FinishExchange();
}

void DownstreamConnection::AbortResponse() {
  // No last-chunk (or fewer bytes than Content-Length) and a close: the
  // client sees a truncated response, never a complete-looking one.
  close_after_ = true;
  FinishExchange();
}

void DownstreamConnection::FinishExchange() {
  RetireRelay();
  responding_ = false;
  ArmSendTimer();
  if (close_after_ || draining_) {
    CloseAfterDrain();
    return;
  }
  ProcessInput();
}

void DownstreamConnection::RetireRelay() {
  paused_by_relay_ = false;
  if (!relay_) return;
  // The relay may be on the call stack (it called us); free it after.
  Relay* r = relay_.release();
  worker_->Defer([r] { delete r; });
}

void DownstreamConnection::CloseAfterDrain() {
  close_after_ = true;
  keepalive_timer_.Disarm();
  header_timer_.Disarm();
  if (stream_.reading()) stream_.StopReading();
  if (stream_.write_idle()) stream_.Close();
}

void DownstreamConnection::CodecError(const absl::Status& status) {
  const int code = http::HttpStatusForError(status);
  LOG_INFO("client %s: %d %s", client_addr_.c_str(), code,
           std::string(status.message()).c_str());
  pending_.clear();
  pending_bytes_ = 0;
  if (relay_) {
    const bool started = relay_->response_started();
    relay_->Cancel();
    RetireRelay();
    if (started) {
      Abort();
      return;
    }
  }
  responding_ = false;
  close_after_ = true;
  std::string msg(status.message());
  if (code == 413) msg = "request body too large";
  if (code == 431) msg = "request header fields too large";
  stream_.WriteOwned(http::JsonErrorResponse(code, msg, true));
  CloseAfterDrain();
}

void DownstreamConnection::SendTunnelData(Slice data) {
  stream_.Write(std::move(data));
  ArmSendTimer();
}

void DownstreamConnection::EndTunnel() {
  RetireRelay();
  responding_ = false;
  CloseAfterDrain();
}

void DownstreamConnection::PauseReading() {
  paused_by_relay_ = true;
  UpdateReading();
}

void DownstreamConnection::ResumeReading() {
  paused_by_relay_ = false;
  UpdateReading();
}

void DownstreamConnection::ArmSendTimer() {
  if (stream_.write_idle()) {
    send_timer_.Disarm();
  } else if (!send_timer_.armed()) {
    worker_->Timers(worker_->config().send_timeout_ns)->Arm(&send_timer_, worker_->now_ns());
  }
}

void DownstreamConnection::OnWriteProgress() {
  if (stream_.write_idle()) {
    send_timer_.Disarm();
  } else {
    worker_->Timers(worker_->config().send_timeout_ns)->Arm(&send_timer_, worker_->now_ns());
  }
  if (close_after_ && !responding_ && stream_.write_idle()) {
    stream_.Close();
    return;
  }
  if (relay_ && stream_.drained()) relay_->OnDownstreamDrained();
}

void DownstreamConnection::Abort() {
  if (relay_) {
    relay_->Cancel();
    RetireRelay();
  }
  responding_ = false;
  stream_.Close();
}

void DownstreamConnection::OnReadEnd(int res) {
  // A client that closes or resets mid-request has gone: drop the upstream
  // link at once so the model stops generating for nobody.
  if (relay_ && !tunnel_) {
    LOG_DEBUG("client %s went away mid-request (%d)", client_addr_.c_str(), res);
  }
  if (relay_ || res < 0) {
    Abort();
  } else {
    CloseAfterDrain();  // what is already queued still goes out
  }
}

void DownstreamConnection::OnWriteError(int res) { Abort(); }

void DownstreamConnection::OnClosed() {
  worker_->RemoveConnection(this);
  delete this;
}

}  // namespace sluice::core
