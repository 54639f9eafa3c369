#include "core/proxy/h2_downstream.h"

#include <cerrno>

#include "core/observe/log.h"
#include "core/proxy/hsts.h"
#include "core/server/shard.h"
#include "http/serialize.h"

namespace sluice::core {
namespace {

// Output handed to the connection per TakeOutput call; the loop in Flush
// stops as soon as the connection is congested.
constexpr size_t kTakeBytes = 64 * 1024;
// Between the shutdown notice (GOAWAY with the largest stream id) and the
// final GOAWAY: about one round trip, so streams the client opened in the
// meantime are not lost (RFC 9113 6.8).
constexpr int64_t kGoawayGraceNs = 1'000'000'000;

// Stream calls fail only for a stream the client already reset or closed;
// its reset event retires it, so there is nothing else to do.
void Quiet(const absl::Status& st) {
  if (!st.ok()) LOG_DEBUG("h2: %s", std::string(st.message()).c_str());
}

http::H2Options OptionsFor(const Config& cfg) {
  http::H2Options o;
  o.max_header_list_bytes = cfg.max_header_bytes;
  o.max_concurrent_streams = cfg.h2_max_concurrent_streams;
  o.stream_high_watermark = kHighWatermark;
  o.stream_low_watermark = kLowWatermark;
  o.stream_max_pieces = kMaxPieces;
  return o;
}

}  // namespace

H2Downstream::H2Downstream(ClientConnection* conn)
    : conn_(conn),
      shard_(conn->shard()),
      codec_(this, OptionsFor(shard_->config())),
      idle_timer_([this] {
        // An idle connection (or one that never sent a request): say
        // goodbye properly, then close once the GOAWAY is out.
        close_when_done_ = true;
        codec_.GracefulGoaway();
        Wake();
      }),
      send_timer_([this] {
        LOG_INFO("*%llu client %s: HTTP/2 send timeout, closing",
                 static_cast<unsigned long long>(conn_->number()), conn_->client_addr().c_str());
        conn_->Close();
      }),
      goaway_timer_([this] {
        codec_.GracefulGoaway();
        close_when_done_ = true;
        Wake();
      }) {}

H2Downstream::~H2Downstream() {
  // The connection is gone: every upstream link still in use closes now, so
  // the model stops generating for nobody.
  for (auto& [id, st] : streams_) {
    if (st->relay_) {
      st->relay_->Cancel();
      st->relay_->Close();
    }
  }
}

void H2Downstream::Start() {
  conn_->StartReading();
  Wake();  // the server preface (SETTINGS)
  UpdateTimers();
}

void H2Downstream::OnData(Slice data) {
  if (failed_) return;
  absl::Status st = codec_.Dispatch(data);
  if (!st.ok()) {
    LOG_INFO("*%llu client %s: HTTP/2 connection error: %s",
             static_cast<unsigned long long>(conn_->number()), conn_->client_addr().c_str(),
             std::string(st.message()).c_str());
    failed_ = true;
    close_when_done_ = true;
    conn_->StopReading();
  }
  Wake();
}

void H2Downstream::OnReadEnd(int res) {
  // The client closed or reset its connection: nothing more can be sent.
  conn_->Close();
}

void H2Downstream::OnWriteError(int res) { conn_->Close(); }

void H2Downstream::OnWriteProgress() {
  if (!conn_->write_idle() || codec_.WantsWrite()) {
    shard_->Timers(shard_->config().send_timeout_ns)->Arm(&send_timer_, shard_->now_ns());
  }
  if (codec_.WantsWrite() && !conn_->congested()) {
    Wake();
  } else {
    MaybeClose();
  }
}

void H2Downstream::Drain() {
  if (draining_) return;
  draining_ = true;
  codec_.SubmitShutdownNotice();
  shard_->Timers(kGoawayGraceNs)->Arm(&goaway_timer_, shard_->now_ns());
  Wake();
}

void H2Downstream::Flush() {
  if (conn_->closing()) return;
  bool progressed = false;
  while (!conn_->congested() && codec_.WantsWrite()) {
    std::vector<Slice> out;
    codec_.TakeOutput(&out, kTakeBytes);
    if (out.empty()) break;
    for (Slice& s : out) conn_->Write(std::move(s));
    progressed = true;
    if (conn_->closing()) return;
  }
  if (codec_.ShouldClose() && !failed_) close_when_done_ = true;
  if (progressed) {
    shard_->Timers(shard_->config().send_timeout_ns)->Arm(&send_timer_, shard_->now_ns());
  }
  UpdateTimers();
  MaybeClose();
}

void H2Downstream::UpdateTimers() {
  const Config& cfg = shard_->config();
  if (!streams_.empty()) {
    conn_->SetPhase(ClientConnection::Phase::kWriting);
  } else if (seen_request_) {
    conn_->SetPhase(ClientConnection::Phase::kWaiting);
  }
  if (streams_.empty() && !close_when_done_) {
    if (!idle_timer_.armed()) {
      int64_t d = seen_request_ ? cfg.keepalive_timeout_ns : cfg.client_header_timeout_ns;
      shard_->Timers(d)->Arm(&idle_timer_, shard_->now_ns());
    }
  } else {
    idle_timer_.Disarm();
  }
  // A stalled writer (zero window, or a socket the client does not read)
  // gets send_timeout from its last progress, like an HTTP/1.1 client.
  const bool waiting =
      !conn_->write_idle() || codec_.WantsWrite() || codec_.total_queued_bytes() > 0;
  if (!waiting) {
    send_timer_.Disarm();
  } else if (!send_timer_.armed()) {
    shard_->Timers(cfg.send_timeout_ns)->Arm(&send_timer_, shard_->now_ns());
  }
}

void H2Downstream::MaybeClose() {
  if (!close_when_done_ || conn_->closing()) return;
  if (!failed_ && !streams_.empty()) return;
  if (codec_.WantsWrite() || !conn_->write_idle()) return;
  conn_->CloseGracefully();
}

H2Downstream::StreamState* H2Downstream::Find(int32_t id) {
  auto it = streams_.find(id);
  return it == streams_.end() ? nullptr : it->second.get();
}

void H2Downstream::Retire(int32_t id) {
  auto it = streams_.find(id);
  if (it == streams_.end()) return;
  // The relay may be on the call stack (it called us): free it after.
  StreamState* st = it->second.release();
  streams_.erase(it);
  st->body_open_ = false;
  st->body_timer_.Disarm();
  st->stall_timer_.Disarm();
  shard_->Defer([st] {
    if (st->relay_) st->relay_->Close();
    delete st;
  });
  UpdateTimers();
}

void H2Downstream::OnRequestHeaders(int32_t stream_id, http::RequestHead head, bool end_stream) {
  ++shard_->metrics().requests;
  seen_request_ = true;
  conn_->SetPhase(ClientConnection::Phase::kWriting);
  idle_timer_.Disarm();
  const uint64_t max_body = shard_->config().client_max_body_size;
  if (head.content_length && *head.content_length > max_body) {
    // Refused before any byte goes upstream, as an HTTP/1.1 head declaring
    // too much is (and as nginx checks client_max_body_size before access
    // rules). The response ends before the request: nghttp2 follows it with
    // RST_STREAM(NO_ERROR), and the DATA still arriving is consumed so the
    // connection window stays open.
    constexpr std::string_view kTooLarge = "request body too large";
    LOG_INFO("*%llu client %s: stream %d: 413 %s (content-length %llu)",
             static_cast<unsigned long long>(conn_->number()), conn_->client_addr().c_str(),
             stream_id, kTooLarge.data(), static_cast<unsigned long long>(*head.content_length));
    shard_->AccountBare(&head, conn_->client_addr(), 413, http::JsonErrorBody(kTooLarge).size(),
                        shard_->now_ns(), shard_->now_unix_ns(), conn_->number(), "other");
    Quiet(codec_.SubmitJsonError(stream_id, 413, kTooLarge));
    UpdateTimers();
    Wake();
    return;
  }
  auto owned = std::make_unique<StreamState>(this, stream_id);
  StreamState* st = owned.get();
  st->head_request_ = head.is_head();
  st->body_open_ = !end_stream;
  streams_[stream_id] = std::move(owned);
  st->relay_ = NewExchange(shard_, st, std::move(head),
                           ClientInfo{conn_->client_addr(), conn_->peer(),
                                      std::string(conn_->scheme()), conn_->number()});
  // Start may answer at once (no upstream link): `st` can be retired then.
  st->relay_->Start();
  if ((st = Find(stream_id)) != nullptr) st->ArmBodyTimer();
  Wake();
}

void H2Downstream::OnRequestData(int32_t stream_id, Slice data) {
  const size_t n = data.size();
  StreamState* st = Find(stream_id);
  if (st == nullptr || !st->relay_) {
    Quiet(codec_.ConsumeRequestBody(stream_id, n));
    return;
  }
  st->body_bytes_ += n;
  if (st->body_bytes_ > shard_->config().client_max_body_size) {
    // A body sent without content-length grew past the cap: nothing more
    // goes upstream. 413 when the response has not started, else the
    // stream is reset; either way the upstream request is abandoned.
    Quiet(codec_.ConsumeRequestBody(stream_id, n));
    st->body_open_ = false;
    st->relay_->AbandonRequest(413, "request body too large");
    Wake();
    return;
  }
  st->relay_->OnRequestBody(std::move(data));
  st = Find(stream_id);
  if (st) st->ArmBodyTimer();  // bytes came: the gap starts again
  if (st && st->paused_) {
    // The upstream link is congested: the client's window stays closed by
    // these bytes until it drains.
    st->unconsumed_ += n;
  } else {
    Quiet(codec_.ConsumeRequestBody(stream_id, n));
  }
  Wake();
}

void H2Downstream::OnRequestTrailers(int32_t stream_id, std::vector<http::Header> trailers) {
  // Ollama takes no request trailers; they end the body like END_STREAM
  // (OnRequestEnd follows), and are not forwarded, as nginx does.
  LOG_DEBUG("*%llu client %s: stream %d: %zu request trailer field(s) dropped",
            static_cast<unsigned long long>(conn_->number()), conn_->client_addr().c_str(),
            stream_id, trailers.size());
}

void H2Downstream::OnRequestEnd(int32_t stream_id) {
  StreamState* st = Find(stream_id);
  if (st == nullptr) return;
  st->body_open_ = false;
  st->body_timer_.Disarm();
  if (st->relay_) st->relay_->OnRequestEnd();
}

void H2Downstream::OnStreamWritable(int32_t stream_id) {
  StreamState* st = Find(stream_id);
  if (st == nullptr) return;
  st->stall_timer_.Disarm();
  if (st->relay_) st->relay_->OnDownstreamDrained();
}

void H2Downstream::OnStreamClosed(int32_t stream_id) {
  if (StreamState* st = Find(stream_id)) {
    if (st->relay_) st->relay_->Cancel();
    Retire(stream_id);
  }
}

void H2Downstream::OnStreamReset(int32_t stream_id, uint32_t error_code) {
  // RST_STREAM from the client (or a stream error): close its upstream link
  // at once so Ollama stops generating.
  if (StreamState* st = Find(stream_id)) {
    LOG_DEBUG("*%llu client %s: stream %d reset (code %u)",
              static_cast<unsigned long long>(conn_->number()), conn_->client_addr().c_str(),
              stream_id, error_code);
    if (st->relay_) st->relay_->Cancel();
    Retire(stream_id);
  }
}

// --- One stream, as its Relay sees it.

void H2Downstream::StreamState::SendResponseHead(const http::ResponseHead& head) {
  const Config& cfg = session_->shard_->config();
  const bool end = head_request_ || head.status == 204 || head.status == 304;
  if (SendsHsts(cfg, session_->conn_->secure())) {
    http::ResponseHead h = head;
    AddHsts(cfg, true, h.headers);
    Quiet(session_->codec_.SubmitResponse(id_, h, end));
  } else {
    Quiet(session_->codec_.SubmitResponse(id_, head, end));
  }
  session_->Wake();
}

void H2Downstream::StreamState::SendResponseBody(Slice piece) {
  if (piece.empty() || head_request_) return;
  Quiet(session_->codec_.SendData(id_, std::move(piece)));
  WatchStall();
  session_->Wake();
}

void H2Downstream::StreamState::SendResponseEnd() {
  H2Downstream* s = session_;
  Quiet(s->codec_.EndStream(id_));
  s->Retire(id_);
  s->Wake();
}

void H2Downstream::StreamState::SendError(int status, std::string_view message) {
  SendPolicyAnswer(status, message, {});
}

void H2Downstream::StreamState::SendPolicyAnswer(int status, std::string_view message,
                                                 const std::vector<http::Header>& headers) {
  // No body for an empty message (a CORS preflight's 204).
  SendJsonAnswer(status, message.empty() ? std::string() : http::JsonErrorBody(message), headers);
}

void H2Downstream::StreamState::SendJsonAnswer(int status, std::string body,
                                               const std::vector<http::Header>& headers) {
  H2Downstream* s = session_;
  const Config& cfg = s->shard_->config();
  http::ResponseHead h;
  h.status = status;
  if (!body.empty()) h.headers.push_back(http::Header{"content-type", "application/json"});
  AddHsts(cfg, s->conn_->secure(), h.headers);
  h.headers.insert(h.headers.end(), headers.begin(), headers.end());
  h.content_length = body.size();
  const int32_t id = id_;
  const bool no_body = head_request_ || body.empty();
  Quiet(s->codec_.SubmitResponse(id, h, no_body));
  if (!no_body) {
    Quiet(s->codec_.SendData(id, Slice::FromString(std::move(body))));
    Quiet(s->codec_.EndStream(id));
  }
  s->Retire(id);
  s->Wake();
}

void H2Downstream::StreamState::AbortResponse() {
  // The upstream response broke after its head: RST_STREAM tells the client
  // the response is incomplete (a DATA frame with END_STREAM would not).
  H2Downstream* s = session_;
  Quiet(s->codec_.ResetStream(id_, http::kH2InternalError));
  s->Retire(id_);
  s->Wake();
}

void H2Downstream::StreamState::SendTunnelData(Slice) { AbortResponse(); }

void H2Downstream::StreamState::EndTunnel() { AbortResponse(); }

BufferAccount* H2Downstream::StreamState::buffer_account() const {
  return session_->conn_->buffer_account();
}

bool H2Downstream::StreamState::congested() const { return session_->codec_.Congested(id_); }

void H2Downstream::StreamState::WatchStall() {
  if (stall_timer_.armed() || !session_->codec_.Congested(id_)) return;
  Shard* w = session_->shard_;
  stall_mark_ = session_->codec_.SentBytes(id_);
  w->Timers(w->config().send_timeout_ns)->Arm(&stall_timer_, w->now_ns());
}

void H2Downstream::StreamState::OnStall() {
  H2Downstream* s = session_;
  Shard* w = s->shard_;
  const uint64_t sent = s->codec_.SentBytes(id_);
  if (sent != stall_mark_) {
    // Some bytes went out (a window opened a little): a slow reader, not a
    // stalled one. Watch the next period.
    stall_mark_ = sent;
    w->Timers(w->config().send_timeout_ns)->Arm(&stall_timer_, w->now_ns());
    return;
  }
  // The client kept this stream's window shut for --send_timeout while its
  // upstream had more to send: the upstream link closes (the generation
  // stops) and the stream is reset; the connection's other streams go on.
  LOG_INFO("*%llu client %s: stream %d: no window for --send_timeout, stream reset",
           static_cast<unsigned long long>(s->conn_->number()), s->conn_->client_addr().c_str(),
           id_);
  if (relay_) relay_->Cancel();
  Quiet(s->codec_.ResetStream(id_, http::kH2Cancel));
  s->Retire(id_);
  s->Wake();
}

void H2Downstream::StreamState::PauseReading() {
  paused_ = true;
  ArmBodyTimer();
}

void H2Downstream::StreamState::ResumeReading() {
  paused_ = false;
  ArmBodyTimer();
  if (unconsumed_ > 0) {
    Quiet(session_->codec_.ConsumeRequestBody(id_, unconsumed_));
    unconsumed_ = 0;
    session_->Wake();
  }
}

void H2Downstream::StreamState::ArmBodyTimer() {
  if (body_open_ && relay_ && !paused_) {
    Shard* w = session_->shard_;
    w->Timers(w->config().client_body_timeout_ns)->Arm(&body_timer_, w->now_ns());
  } else {
    body_timer_.Disarm();
  }
}

void H2Downstream::StreamState::OnBodyTimeout() {
  // The relay answers 408 (or, past the response head, the stream is
  // reset); the answer ends our side of the stream, and nghttp2 follows a
  // response that ends before the request with RST_STREAM(NO_ERROR), so
  // the client stops sending (RFC 9113 8.1).
  H2Downstream* s = session_;
  body_open_ = false;
  if (relay_) relay_->AbandonRequest(408, "request body timeout");
  s->Wake();
}

bool H2Downstream::StreamState::over_limit() const { return session_->conn_->over_limit(); }

// GOAWAY, as on a drain: the streams in flight are still answered (503
// too), then the connection closes.
void H2Downstream::StreamState::CloseAfterResponse() { session_->Drain(); }

}  // namespace sluice::core
