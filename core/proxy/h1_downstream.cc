#include "core/proxy/h1_downstream.h"

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "core/observe/log.h"
#include "core/proxy/hsts.h"
#include "core/server/shard.h"

namespace sluice::core {
namespace {
// How often a connection waiting for the rest of a request head checks
// that its client is still there.
constexpr int64_t kEofProbeNs = 1'000'000'000;
}  // namespace

H1Downstream::H1Downstream(ClientConnection* conn)
    : conn_(conn),
      shard_(conn->shard()),
      codec_(this, http::H1Limits{shard_->config().max_header_bytes,
                                  shard_->config().client_max_body_size}),
      keepalive_timer_([this] { conn_->Close(); }),
      header_timer_([this] {
        if (responding_) return;
        std::string out =
            http::JsonErrorResponse(408, "request header timeout", true, 0, ExtraFields());
        LOG_INFO("*%llu client %s: 408 request header timeout",
                 static_cast<unsigned long long>(conn_->number()), conn_->client_addr().c_str());
        shard_->AccountBare(nullptr, conn_->client_addr(), 408,
                            http::JsonErrorBody("request header timeout").size(), shard_->now_ns(),
                            shard_->now_unix_ns(), conn_->number(), "other");
        conn_->WriteOwned(std::move(out));
        CloseAfterDrain();
      }),
      eof_probe_timer_([this] {
        if (responding_ || !header_timer_.armed()) return;
        if (const int r = conn_->PeekReadEnd(); r <= 0) {
          OnReadEnd(r);
          return;
        }
        shard_->Timers(kEofProbeNs)->Arm(&eof_probe_timer_, shard_->now_ns());
      }),
      send_timer_([this] { Abort(); }),
      body_timer_([this] {
        // Armed only with a relay (ArmBodyTimer), which answers, so the
        // access log and metrics count one 408 for the request (its method
        // and path included).
        if (relay_) relay_->AbandonRequest(408, "request body timeout");
      }) {}

H1Downstream::~H1Downstream() {
  if (relay_) relay_->Close();
}

void H1Downstream::Start() {
  conn_->StartReading();
  ArmIdleTimers();
}

std::string_view H1Downstream::ExtraFields() const {
  return HstsFields(shard_->config(), conn_->secure());
}

void H1Downstream::Drain() {
  draining_ = true;
  if (!responding_ && !codec_.in_message() && pending_.empty()) {
    // Idle: its next request (or its first, on a connection accepted a
    // moment before the drain) may be on the way already; closing now
    // would lose it. It gets kDrainGraceNs to arrive, and is answered with
    // Connection: close; a client that sends nothing is closed then.
    shard_->Timers(kDrainGraceNs)->Arm(&keepalive_timer_, shard_->now_ns());
  }
}

void H1Downstream::OnData(Slice data) {
  if (conn_->closing()) return;
  if (tunnel_) {
    if (relay_) relay_->OnTunnelData(std::move(data));
    return;
  }
  pending_bytes_ += data.size();
  pending_.push_back(std::move(data));
  ProcessInput();
  if (body_timer_.armed()) ArmBodyTimer();  // bytes came: the gap starts again
}

void H1Downstream::ProcessInput() {
  if (in_process_) return;  // the running loop below sees the new state
  in_process_ = true;
  while (!conn_->closing() && !close_after_) {
    if (codec_.paused()) {
      if (responding_) break;  // answer in order: next request waits
      codec_.Resume();
    }
    if (codec_.upgraded() || pending_.empty()) break;
    // Held here while the codec runs, whatever its events do to pending_.
    const Slice slice = pending_.front();
    absl::StatusOr<size_t> n = codec_.Dispatch(slice);
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
  if (conn_->closing()) return;
  ArmIdleTimers();
  UpdateReading();
}

void H1Downstream::UpdateReading() {
  // Unparsed pipelined input is bounded; relay backpressure pauses too.
  bool want = !paused_by_relay_ && !close_after_ && pending_bytes_ <= kHighWatermark;
  if (want && !conn_->reading()) {
    conn_->StartReading();
  } else if (!want && conn_->reading()) {
    conn_->StopReading();
  }
}

void H1Downstream::ArmIdleTimers() {
  const Config& cfg = shard_->config();
  if (responding_ || tunnel_ || close_after_) {
    conn_->SetPhase(ClientConnection::Phase::kWriting);
    keepalive_timer_.Disarm();
    header_timer_.Disarm();
  } else if (codec_.in_message() || !pending_.empty()) {
    conn_->SetPhase(ClientConnection::Phase::kReading);
    keepalive_timer_.Disarm();
    if (!header_timer_.armed()) {
      shard_->Timers(cfg.client_header_timeout_ns)->Arm(&header_timer_, shard_->now_ns());
    }
    if (!eof_probe_timer_.armed()) {
      shard_->Timers(kEofProbeNs)->Arm(&eof_probe_timer_, shard_->now_ns());
    }
  } else {
    conn_->SetPhase(ClientConnection::Phase::kWaiting);
    header_timer_.Disarm();
    if (!keepalive_timer_.armed()) {
      shard_->Timers(cfg.keepalive_timeout_ns)->Arm(&keepalive_timer_, shard_->now_ns());
    }
  }
}

void H1Downstream::OnRequestHead(http::RequestHead head) {
  ++shard_->metrics().requests;
  responding_ = true;
  conn_->SetPhase(ClientConnection::Phase::kWriting);
  keepalive_timer_.Disarm();
  header_timer_.Disarm();
  request_has_body_ = head.has_body();
  request_keep_alive_ = head.keep_alive;
  expect_continue_ = head.expect_continue && head.has_body();
  if (conn_->kind() == ListenerKind::kRedirect) {
    Redirect(head);
    return;
  }
  relay_ = NewExchange(shard_, this, std::move(head),
                       ClientInfo{conn_->client_addr(), conn_->peer(), std::string(conn_->scheme()),
                                  conn_->number()});
  relay_->Start();
  ArmBodyTimer();
}

void H1Downstream::OnRequestBody(Slice data) {
  if (relay_) relay_->OnRequestBody(std::move(data));
}

void H1Downstream::OnRequestComplete() {
  body_timer_.Disarm();
  if (relay_) relay_->OnRequestEnd();
}

void H1Downstream::ArmBodyTimer() {
  if (relay_ && request_has_body_ && codec_.in_message() && !paused_by_relay_ && !tunnel_ &&
      !close_after_) {
    shard_->Timers(shard_->config().client_body_timeout_ns)->Arm(&body_timer_, shard_->now_ns());
  } else {
    body_timer_.Disarm();
  }
}

void H1Downstream::SendResponseHead(const http::ResponseHead& head) {
  using http::BodyFraming;
  const bool http10 = relay_ && relay_->head().version_minor == 0;
  const bool no_body = (relay_ && relay_->head().is_head()) || head.status < 200 ||
                       head.status == 204 || head.status == 304;
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
  if (!request_keep_alive_ || draining_ || framing_ == BodyFraming::kClose || codec_.in_message() ||
      (relay_ && relay_->head().upgrade && !upgrade)) {
    close_after_ = true;
  }
  std::string out;
  http::AppendDownstreamResponseHead(head, framing_, close_after_ && !upgrade, &out, ExtraFields());
  conn_->WriteOwned(std::move(out));
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

void H1Downstream::SendResponseBody(Slice piece) {
  if (piece.empty()) return;
  if (framing_ == http::BodyFraming::kChunked) {
    char hdr[http::kMaxChunkHeader];
    conn_->WriteCopy(std::string_view(hdr, http::FormatChunkHeader(piece.size(), hdr)));
    conn_->Write(std::move(piece));
    conn_->WriteStatic(http::kCrlf);
  } else if (framing_ != http::BodyFraming::kNone) {
    conn_->Write(std::move(piece));
  }
  ArmSendTimer();
}

void H1Downstream::SendResponseEnd() {
  if (framing_ == http::BodyFraming::kChunked) conn_->WriteStatic(http::kLastChunk);
  FinishExchange();
}

void H1Downstream::SendError(int status, std::string_view message) {
  SendPolicyAnswer(status, message, {});
}

void H1Downstream::SendPolicyAnswer(int status, std::string_view error,
                                    const std::vector<http::Header>& headers) {
  SendJsonAnswer(status, error.empty() ? std::string() : http::JsonErrorBody(error), headers);
}

void H1Downstream::SendJsonAnswer(int status, std::string json,
                                  const std::vector<http::Header>& headers) {
  // An unread request body leaves the connection unusable.
  if (codec_.in_message() && request_has_body_) close_after_ = true;
  if (!request_keep_alive_ || draining_) close_after_ = true;
  std::string extra(ExtraFields());
  for (const http::Header& h : headers) {
    extra.append(h.name).append(": ").append(h.value).append("\r\n");
  }
  if (json.empty()) {
    http::ResponseHead head;
    head.status = status;
    head.content_length = 0;
    std::string out;
    http::AppendDownstreamResponseHead(head, http::BodyFraming::kNone, close_after_, &out, extra);
    conn_->WriteOwned(std::move(out));
  } else {
    conn_->WriteOwned(http::JsonResponse(status, json, close_after_, 0, extra));
  }
  FinishExchange();
}

void H1Downstream::OnAdmitted() {
  // The body limit was already checked against Content-Length and the
  // policy admitted the request, so the client may send; the expectation
  // is not forwarded.
  if (expect_continue_) {
    expect_continue_ = false;
    conn_->WriteStatic(http::k100Continue);
  }
}

void H1Downstream::AbortResponse() {
  // No last-chunk (or fewer bytes than Content-Length) and a close: the
  // client sees a truncated response, never a complete-looking one.
  close_after_ = true;
  FinishExchange();
}

void H1Downstream::FinishExchange() {
  RetireRelay();
  responding_ = false;
  ArmSendTimer();
  if (close_after_ || draining_) {
    CloseAfterDrain();
    return;
  }
  ProcessInput();
}

void H1Downstream::RetireRelay() {
  paused_by_relay_ = false;
  body_timer_.Disarm();  // the exchange is answered: no more body wanted
  if (!relay_) return;
  // The relay may be on the call stack (it called us); free it after.
  Exchange* r = relay_.release();
  shard_->Defer([r] {
    r->Close();
    delete r;
  });
}

void H1Downstream::CloseAfterDrain() {
  close_after_ = true;
  keepalive_timer_.Disarm();
  header_timer_.Disarm();
  if (conn_->reading()) conn_->StopReading();
  if (conn_->write_idle()) conn_->CloseGracefully();
}

void H1Downstream::CodecError(const absl::Status& status) {
  const int code = http::HttpStatusForError(status);
  LOG_INFO("*%llu client %s: %d %s", static_cast<unsigned long long>(conn_->number()),
           conn_->client_addr().c_str(), code, std::string(status.message()).c_str());
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
  shard_->AccountBare(nullptr, conn_->client_addr(), code, http::JsonErrorBody(msg).size(),
                      shard_->now_ns(), shard_->now_unix_ns(), conn_->number(), "other");
  conn_->WriteOwned(http::JsonErrorResponse(code, msg, true, 0, ExtraFields()));
  CloseAfterDrain();
}

void H1Downstream::SendTunnelData(Slice data) {
  conn_->Write(std::move(data));
  ArmSendTimer();
}

void H1Downstream::EndTunnel() {
  RetireRelay();
  responding_ = false;
  CloseAfterDrain();
}

void H1Downstream::PauseReading() {
  paused_by_relay_ = true;
  UpdateReading();
  ArmBodyTimer();
}

void H1Downstream::ResumeReading() {
  paused_by_relay_ = false;
  UpdateReading();
  ArmBodyTimer();
}

void H1Downstream::ArmSendTimer() {
  if (conn_->write_idle()) {
    send_timer_.Disarm();
  } else if (!send_timer_.armed()) {
    shard_->Timers(shard_->config().send_timeout_ns)->Arm(&send_timer_, shard_->now_ns());
  }
}

void H1Downstream::OnWriteProgress() {
  if (conn_->write_idle()) {
    send_timer_.Disarm();
  } else {
    shard_->Timers(shard_->config().send_timeout_ns)->Arm(&send_timer_, shard_->now_ns());
  }
  if (close_after_ && !responding_ && conn_->write_idle()) {
    conn_->CloseGracefully();
    return;
  }
  if (relay_ && conn_->drained()) relay_->OnDownstreamDrained();
}

void H1Downstream::Abort() {
  if (relay_) {
    relay_->Cancel();
    RetireRelay();
  }
  responding_ = false;
  conn_->Close();
}

void H1Downstream::OnReadEnd(int res) {
  // A client that closes or resets mid-request has gone: drop the upstream
  // link at once so the model stops generating for nobody.
  if (relay_ && !tunnel_) {
    LOG_DEBUG("*%llu client %s went away mid-request (%d)",
              static_cast<unsigned long long>(conn_->number()), conn_->client_addr().c_str(), res);
  }
  if (relay_ || res < 0) {
    Abort();
  } else {
    CloseAfterDrain();  // what is already queued still goes out
  }
}

void H1Downstream::OnWriteError(int res) { Abort(); }

void H1Downstream::Redirect(const http::RequestHead& head) {
  // nginx's `return 301 https://$host$request_uri`: the Host without its
  // port, plus the TLS port when it is not 443. The codec has checked that
  // Host exists and holds only visible characters.
  std::string_view host;
  if (const http::Header* h = head.Find("host")) host = h->value;
  if (!host.empty() && host.front() == '[') {
    size_t close = host.find(']');
    if (close != std::string_view::npos) host = host.substr(0, close + 1);
  } else if (size_t colon = host.find(':'); colon != std::string_view::npos) {
    host = host.substr(0, colon);
  }
  std::string location = "https://";
  location.append(host.data(), host.size());
  const int port = shard_->config().tls_port;
  if (port != 443 && port > 0) absl::StrAppend(&location, ":", port);
  std::string_view target = head.target;
  if (target.empty() || target.front() != '/') target = "/";
  location.append(target.data(), target.size());
  request_has_body_ = head.has_body();
  // The request body (if any) is not read: close after answering.
  const bool close = !head.keep_alive || head.has_body() || draining_;
  if (close) close_after_ = true;
  std::string out = http::RedirectResponse(location, close);
  // $body_bytes_sent: what follows the head (the JSON body naming the
  // new location).
  const size_t head_end = out.find("\r\n\r\n");
  const uint64_t body_bytes = head_end == std::string::npos ? 0 : out.size() - head_end - 4;
  shard_->AccountBare(&head, conn_->client_addr(), 301, body_bytes, shard_->now_ns(),
                      shard_->now_unix_ns(), conn_->number(), "redirect");
  conn_->WriteOwned(std::move(out));
  FinishExchange();
}

}  // namespace sluice::core
