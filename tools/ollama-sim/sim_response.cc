// The response side of a Connection: a parsed request becomes a plan
// (PlanResponse), which is answered at once, played out over time (delayed
// and streamed generations, with X-Sim-Close-After and -Reset-After), turned
// into a fault (hang, garbage, a protocol switch) or a WebSocket echo.
#include <errno.h>
#include <sys/socket.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "sim_config.h"
#include "sim_connection.h"
#include "sim_server.h"

namespace sluice::sim {
namespace {

// Token items emitted back to back (zero delay) before yielding to the loop,
// so one fast stream cannot starve the other connections of this worker.
constexpr int kItemsPerTurn = 64;
// How often a generation queued on its model asks the scheduler again.
constexpr int64_t kModelPollNs = 1'000'000;

}  // namespace

void Connection::Dispatch(HttpRequest request) {
  // X-Sim-Drop-Next-Request on the previous request: behave like an upstream
  // whose keepalive timeout closed the link just as this request arrived.
  if (drop_next_request_) {
    Close();
    return;
  }
  drop_next_request_ = request.drop_next_request;
  bool count = true;
  ResponsePlan plan = PlanResponse(request, worker_->config(), &count);
  if (count) GlobalStats().requests.fetch_add(1, std::memory_order_relaxed);
  // Otherwise "closed" could exceed "opened" right after a reset, racing
  // with the client closing the reset's own connection.
  if (plan.stats_reset) count_close_ = false;
  bool http10 = request.http_major == 1 && request.http_minor == 0;
  // An Upgrade request the simulator does not honour leaves unparsed bytes
  // of another protocol behind it, so the connection cannot continue.
  bool keep_alive =
      request.keep_alive && !plan.close &&
      !(request.upgrade && plan.kind != PlanKind::kWebSocket && plan.kind != PlanKind::kSwitch);
  switch (plan.kind) {
    case PlanKind::kImmediate:
      AppendSimpleResponse(plan, keep_alive, http10);
      if (!keep_alive) close_when_flushed_ = true;
      return;
    case PlanKind::kGarbage:
      out_.append(kGarbageBytes.data(), kGarbageBytes.size());
      close_when_flushed_ = true;
      return;
    case PlanKind::kHang:
      state_ = State::kHung;
      active_ = Active{.kind = PlanKind::kHang, .spec = {}, .start_ns = MonotonicNowNs()};
      queue_.clear();
      return;
    case PlanKind::kWebSocket: {
      out_.append(
          absl::StrCat("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Accept: ",
                       plan.ws_accept, "\r\n\r\n"));
      state_ = State::kWebSocket;
      // 64 MiB: the largest message the echo tests send is far smaller.
      ws_parser_ = std::make_unique<WsFrameParser>(kMaxBodyBytes);
      queue_.clear();
      std::string early = std::move(after_upgrade_);
      after_upgrade_.clear();
      if (!early.empty()) OnWebSocketBytes(early.data(), early.size());
      return;
    }
    case PlanKind::kSwitch: {
      out_.append(absl::StrCat("HTTP/1.1 101 Switching Protocols\r\nUpgrade: ", plan.switch_to,
                               "\r\nConnection: Upgrade\r\n\r\n"));
      state_ = State::kRawEcho;
      queue_.clear();
      parser_stopped_ = true;
      std::string early = std::move(after_upgrade_);
      after_upgrade_.clear();
      out_.append(early);
      return;
    }
    case PlanKind::kStream:
    case PlanKind::kDelayed:
      StartGeneration(std::move(plan), keep_alive, http10);
      return;
  }
}

void Connection::StartGeneration(ResponsePlan plan, bool keep_alive, bool http10) {
  int64_t now = MonotonicNowNs();
  std::unique_ptr<ModelLease> lease;
  ModelGrant grant{.ready_ns = now, .load_ns = plan.stream.load_duration_ns};
  bool waiting = false;
  if (!plan.stream.model_key.empty()) {
    lease = std::make_unique<ModelLease>(plan.stream.model_key, plan.stream.keep_alive_ns);
    ModelScheduler::Admission admission = lease->Admit(now, &grant);
    if (admission == ModelScheduler::Admission::kQueueFull) {
      AppendSimpleResponse(ErrorPlan(plan.stream.format, 503, kMaxQueueError), keep_alive, http10);
      if (!keep_alive) close_when_flushed_ = true;
      return;
    }
    waiting = admission == ModelScheduler::Admission::kQueued;
  }
  active_ = Active{.kind = plan.kind,
                   .spec = std::move(plan.stream),
                   .start_ns = now,
                   .gen_start_ns = grant.ready_ns,
                   .next_item = 0,
                   // HTTP/1.0 has no chunked coding: a streamed body ends
                   // with the connection.
                   .keep_alive = keep_alive && !(http10 && plan.kind == PlanKind::kStream),
                   .chunked = !http10,
                   .http10 = http10,
                   .headers_sent = false,
                   .lease = std::move(lease),
                   .waiting = waiting};
  if (!waiting) active_->spec.load_duration_ns = grant.load_ns;
  RunActive();
}

bool Connection::WaitForModel(int64_t now) {
  Active& a = *active_;
  if (!a.waiting) return true;
  ModelGrant grant;
  if (!a.lease->TryStart(now, &grant)) {
    // Another worker may free the slot: ask again shortly.
    worker_->ScheduleTimer(this, now + kModelPollNs);
    return false;
  }
  a.waiting = false;
  a.gen_start_ns = grant.ready_ns;
  a.spec.load_duration_ns = grant.load_ns;
  return true;
}

void Connection::RunActive() {
  if (dead_ || !active_ || active_->kind == PlanKind::kHang) return;
  int64_t now = MonotonicNowNs();
  if (!WaitForModel(now)) return;
  Active& a = *active_;
  const StreamSpec& spec = a.spec;
  int items = spec.ItemCount();
  bool closes = spec.close_after >= 0 && spec.close_after < items;

  if (a.kind == PlanKind::kDelayed) {
    int waited_items = closes ? spec.close_after : items - 1;
    int64_t deadline = a.gen_start_ns + spec.ttft_ns + int64_t{waited_items} * spec.token_delay_ns;
    if (now < deadline) {
      worker_->ScheduleTimer(this, deadline);
      return;
    }
    if (closes) {
      // X-Sim-Close-After on a stream:false request: die without answering.
      if (spec.close_by_rst) SetLingerZero();
      active_.reset();
      Close();
      return;
    }
    ResponsePlan plan;
    plan.body = BuildNonStreamBody(spec, now - a.start_ns, RealtimeNowUs());
    AppendSimpleResponse(plan, a.keep_alive, a.http10);
    FinishActive();
    return;
  }

  for (int budget = kItemsPerTurn; active_; --budget) {
    if (OutPending() >= kOutHighWater) {
      waiting_for_drain_ = true;  // Resumed from OnEvents on EPOLLOUT.
      return;
    }
    int i = a.next_item;
    int64_t deadline = a.gen_start_ns + spec.ttft_ns + int64_t{i} * spec.token_delay_ns;
    // "Close after N": right after the Nth item went out; for N = 0, when the
    // first item would have (so the headers still arrive first).
    if (closes && i == spec.close_after && (i > 0 || now >= deadline)) {
      if (!a.headers_sent) AppendStreamHeaders();
      Flush();
      if (dead_) return;
      if (spec.close_by_rst) SetLingerZero();
      active_.reset();
      Close();
      return;
    }
    if (now < deadline) {
      worker_->ScheduleTimer(this, deadline);
      return;
    }
    if (budget == 0) {
      worker_->ScheduleTimer(this, now);
      return;
    }
    if (!a.headers_sent) AppendStreamHeaders();
    payloads_.clear();
    BuildStreamItem(spec, i, now - a.start_ns, RealtimeNowUs(), &payloads_);
    for (const std::string& payload : payloads_) AppendChunk(payload);
    ++a.next_item;
    if (a.next_item == items) {
      if (a.chunked) out_.append("0\r\n\r\n");
      Flush();
      if (!dead_) FinishActive();
      return;
    }
    Flush();
    if (dead_) return;
    now = MonotonicNowNs();
  }
}

void Connection::FinishActive() {
  bool keep_alive = active_->keep_alive;
  active_.reset();
  if (!keep_alive) {
    close_when_flushed_ = true;
    Flush();
    return;
  }
  ProcessQueue();
}

void Connection::AppendSimpleResponse(const ResponsePlan& plan, bool keep_alive, bool http10) {
  absl::StrAppend(&out_, "HTTP/1.1 ", plan.status, " ", StatusReason(plan.status), "\r\n");
  if (!plan.content_type.empty()) {
    absl::StrAppend(&out_, "Content-Type: ", plan.content_type, "\r\n");
  }
  absl::StrAppend(&out_, "Content-Length: ", plan.body.size(), "\r\n", plan.extra_headers);
  if (!keep_alive) {
    out_.append("Connection: close\r\n");
  } else if (http10) {
    out_.append("Connection: keep-alive\r\n");
  }
  out_.append("\r\n");
  if (!plan.head_only) out_.append(plan.body);
}

void Connection::AppendStreamHeaders() {
  Active& a = *active_;
  absl::StrAppend(&out_, "HTTP/1.1 200 OK\r\nContent-Type: ", StreamContentType(a.spec.format),
                  "\r\n");
  if (a.chunked) out_.append("Transfer-Encoding: chunked\r\n");
  if (a.spec.format == StreamFormat::kOpenAiChat ||
      a.spec.format == StreamFormat::kOpenAiCompletion) {
    out_.append("Cache-Control: no-cache\r\n");
  }
  if (!a.keep_alive) out_.append("Connection: close\r\n");
  out_.append("\r\n");
  a.headers_sent = true;
}

void Connection::AppendChunk(absl::string_view payload) {
  if (active_->chunked) {
    char size_line[24];
    int n = snprintf(size_line, sizeof(size_line), "%zx\r\n", payload.size());
    out_.append(size_line, n);
    out_.append(payload.data(), payload.size());
    out_.append("\r\n");
  } else {
    out_.append(payload.data(), payload.size());
  }
}

void Connection::Flush() {
  if (dead_) return;
  while (out_offset_ < out_.size()) {
    ssize_t n = send(fd_, out_.data() + out_offset_, out_.size() - out_offset_, MSG_NOSIGNAL);
    if (n > 0) {
      out_offset_ += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // Reclaim the sent prefix once it is large, so a slow reader does not
      // make the buffer grow by the total bytes ever sent.
      if (out_offset_ > 1024 * 1024) {
        out_.erase(0, out_offset_);
        out_offset_ = 0;
      }
      return;  // EPOLLOUT (edge) will call again.
    }
    OnPeerGone();
    return;
  }
  out_.clear();
  out_offset_ = 0;
  if (close_when_flushed_) Close();
}

void Connection::OnWebSocketBytes(const char* data, size_t length) {
  if (ws_closing_) return;
  ws_frames_.clear();
  if (!ws_parser_->Feed(absl::string_view(data, length), &ws_frames_)) {
    // RFC 6455 7.4.1: 1002 protocol error (1009 for oversize is close
    // enough to the same outcome for a test server).
    AppendWsFrame(true, kWsClose, absl::string_view("\x03\xea", 2), &out_);
    ws_closing_ = true;
    close_when_flushed_ = true;
    Flush();
    return;
  }
  for (WsFrame& frame : ws_frames_) {
    switch (frame.opcode) {
      case kWsPing:
        AppendWsFrame(true, kWsPong, frame.payload, &out_);
        break;
      case kWsPong:
        break;
      case kWsClose:
        // Echo the status code back, then end the connection (RFC 6455
        // 5.5.1: the server closes the TCP connection first).
        AppendWsFrame(true, kWsClose, frame.payload, &out_);
        ws_closing_ = true;
        close_when_flushed_ = true;
        Flush();
        return;
      default:
        AppendWsFrame(frame.fin, frame.opcode, frame.payload, &out_);
        break;
    }
  }
  Flush();
}

}  // namespace sluice::sim
