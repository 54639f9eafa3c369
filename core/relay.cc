#include "core/relay.h"

#include <cerrno>
#include <optional>

#include "absl/strings/match.h"

#include "core/auth_verifier.h"
#include "core/log.h"
#include "core/worker.h"
#include "http/serialize.h"

namespace sluice::core {
namespace {
// A retry resends the body, so it is kept (copied) while a retry is
// possible: only for reused links and only up to this size. Larger bodies
// (images) are streamed without a safety net, as nginx does when it has not
// buffered the body.
constexpr size_t kMaxReplayBytes = 64 * 1024;
}  // namespace

Relay::Relay(Worker* worker, Downstream* downstream, http::RequestHead head,
             std::string_view client_addr, const policy::IpAddress& peer,
             std::string_view proto)
    : worker_(worker),
      downstream_(downstream),
      head_(std::move(head)),
      client_addr_(client_addr),
      peer_(peer),
      proto_(proto),
      parser_(this),
      read_timer_([this] { LinkFailed(504, "upstream timeout"); }),
      send_timer_([this] { LinkFailed(504, "upstream timeout"); }),
      delay_timer_([this] {
        if (!finished_) Proceed();
      }) {}

Relay::~Relay() {
  DropLink();
  if (ticket_) ticket_->relay = nullptr;
  policy::Policy::Release(&admission_, worker_->config().conn_table);
}

policy::RequestFacts Relay::Facts() const {
  auto field = [this](std::string_view name) -> absl::string_view {
    const http::Header* h = head_.Find(name);
    return h ? absl::string_view(h->value) : absl::string_view();
  };
  policy::RequestFacts f;
  f.method = head_.method;
  f.target = head_.target;
  f.scheme = proto_;
  f.host = head_.host;
  f.peer = peer_;
  f.authorization = field("authorization");
  f.x_api_key = field("x-api-key");
  f.forwarded_for = field("x-forwarded-for");
  f.origin = field("origin");
  f.ac_request_method = field("access-control-request-method");
  f.ac_request_headers = field("access-control-request-headers");
  return f;
}

void Relay::Start() {
  policy_ = worker_->policy().get();
  const policy::RequestFacts facts = Facts();
  if (!policy_->Screen(facts, &admission_)) {
    AnswerPolicy();
    return;
  }
  switch (policy_->Authenticate(facts, &admission_, &worker_->auth_cache(),
                                worker_->now_ns())) {
    case policy::AuthStep::kRefused:
      AnswerPolicy();
      return;
    case policy::AuthStep::kNeedVerify:
      StartVerify();
      return;
    case policy::AuthStep::kDone:
      break;
  }
  Admit();
}

void Relay::HoldReading() {
  if (!gate_paused_) {
    gate_paused_ = true;
    downstream_->PauseReading();
  }
}

void Relay::StartVerify() {
  gate_ = Gate::kVerifying;
  HoldReading();
  // Still the snapshot Start took: nothing ran on this worker in between.
  policy_hold_ = worker_->last_policy();
  ticket_ = std::make_shared<VerifyTicket>(VerifyTicket{this});
  Worker* w = worker_;
  AuthVerifier::Job job{policy_hold_, admission_.basic_user, admission_.basic_password,
                        [w, t = ticket_](bool valid) {
                          w->Post([t, valid] {
                            if (t->relay) t->relay->OnVerified(valid);
                          });
                        }};
  if (!worker_->config().auth_verifier->Submit(std::move(job))) {
    LOG_WARN("client %s: password checks queue full", client_addr_.c_str());
    admission_.status = 503;
    admission_.error = "authentication busy, retry later";
    admission_.headers.emplace_back("Retry-After", "1");
    AnswerPolicy();
  }
}

void Relay::OnVerified(bool valid) {
  ticket_.reset();
  if (finished_ || gate_ != Gate::kVerifying) return;
  if (!policy_->FinishBasic(valid, &admission_, &worker_->auth_cache(),
                            worker_->now_ns())) {
    AnswerPolicy();
    return;
  }
  Admit();
}

void Relay::Admit() {
  const Config& cfg = worker_->config();
  policy::LimitStep step =
      policy_->Limit(&admission_, cfg.rate_table, cfg.conn_table, worker_->now_ns());
  switch (step.kind) {
    case policy::LimitStep::kRefuse:
      AnswerPolicy();
      return;
    case policy::LimitStep::kDelay:
      // limit_req without nodelay: the request waits its turn, its body
      // unread.
      gate_ = Gate::kDelayed;
      if (!policy_hold_) policy_hold_ = worker_->last_policy();
      HoldReading();
      worker_->DeadlineTimers()->ArmAt(&delay_timer_, worker_->now_ns() + step.delay_ns);
      return;
    case policy::LimitStep::kAdmit:
      break;
  }
  Proceed();
}

void Relay::AnswerPolicy() {
  finished_ = true;
  std::vector<http::Header> headers;
  headers.reserve(admission_.headers.size());
  for (auto& [name, value] : admission_.headers) {
    headers.push_back(http::Header{name, value});
  }
  downstream_->SendPolicyAnswer(admission_.status, admission_.error, headers);
}

void Relay::Proceed() {
  gate_ = Gate::kOpen;
  // Ollama sees exactly the path the rules were checked against. The
  // proxy's own credentials and the Origin (CORS is answered here; Ollama
  // would refuse origins it does not know) stay here.
  if (admission_.path.forward != "*") head_.target = admission_.path.forward;
  const bool drop_credentials = policy_->auth_mode() != policy::AuthMode::kNone;
  std::erase_if(head_.headers, [&](const http::Header& h) {
    return http::EqualsIgnoreCase(h.name, "origin") ||
           (drop_credentials && (http::EqualsIgnoreCase(h.name, "authorization") ||
                                 http::EqualsIgnoreCase(h.name, "x-api-key")));
  });
  const Config& cfg = worker_->config();
  http::ForwardContext ctx{client_addr_, proto_, cfg.upstream_host,
                          admission_.client_text};
  http::AppendUpstreamRequestHead(head_, ctx, &request_bytes_);
  if (!AttachLink(false)) return;
  downstream_->OnAdmitted();
  if (gate_paused_) {
    gate_paused_ = false;
    downstream_->ResumeReading();
  }
  std::vector<Slice> held;
  held.swap(held_body_);
  for (Slice& piece : held) OnRequestBody(std::move(piece));
  if (!head_.has_body() || end_held_) OnRequestEnd();
}

bool Relay::AttachLink(bool fresh) {
  int err = 0;
  link_ = worker_->pool().Acquire(this, fresh, &err);
  if (link_ == nullptr) {
    LOG_WARN("upstream socket: %s", strerror(-err));
    FailBeforeResponse(502, "upstream unavailable");
    return false;
  }
  parser_.Begin(head_.is_head());
  link_->stream().WriteCopy(request_bytes_);
  if (!replay_.empty()) link_->stream().WriteCopy(replay_);
  if (request_done_) {
    worker_->Timers(worker_->config().read_timeout_ns)->Arm(&read_timer_, worker_->now_ns());
  }
  ArmSendTimer();
  return true;
}

void Relay::WriteUp(Slice piece) {
  if (link_ == nullptr) return;
  if (replayable_ && link_->reused() && !retried_ && !parser_.started()) {
    if (replay_.size() + piece.size() <= kMaxReplayBytes) {
      replay_.append(piece.data(), piece.size());
    } else {
      replayable_ = false;
      replay_.clear();
    }
  }
  link_->stream().Write(std::move(piece));
}

void Relay::WriteUpCopy(std::string_view bytes) {
  if (link_ == nullptr) return;
  if (replayable_ && link_->reused() && !retried_ && !parser_.started()) {
    replay_.append(bytes);
  }
  link_->stream().WriteCopy(bytes);
}

void Relay::OnRequestBody(Slice piece) {
  if (gate_ != Gate::kOpen) {
    if (!finished_ && !piece.empty()) held_body_.push_back(std::move(piece));
    return;
  }
  if (link_ == nullptr || piece.empty()) return;
  if (head_.chunked) {
    char hdr[http::kMaxChunkHeader];
    WriteUpCopy(std::string_view(hdr, http::FormatChunkHeader(piece.size(), hdr)));
    WriteUp(std::move(piece));
    WriteUpCopy(http::kCrlf);
  } else {
    WriteUp(std::move(piece));
  }
  ArmSendTimer();
  if (link_->stream().congested() && !downstream_paused_) {
    downstream_paused_ = true;
    downstream_->PauseReading();
  }
}

void Relay::OnRequestEnd() {
  if (gate_ != Gate::kOpen) {
    end_held_ = true;
    return;
  }
  if (request_done_) return;
  request_done_ = true;
  if (link_ == nullptr) return;
  if (head_.chunked) WriteUpCopy(http::kLastChunk);
  // proxy_read_timeout semantics: the time between two reads from the
  // upstream, counted once the request has been sent.
  worker_->Timers(worker_->config().read_timeout_ns)->Arm(&read_timer_, worker_->now_ns());
}

void Relay::ArmSendTimer() {
  if (link_ == nullptr) return;
  if (link_->stream().write_idle()) {
    send_timer_.Disarm();
  } else {
    worker_->Timers(worker_->config().send_timeout_ns)->Arm(&send_timer_, worker_->now_ns());
  }
}

void Relay::OnLinkConnected(int res) {
  if (res == 0) return;
  if (res == -ECANCELED || res == -ETIMEDOUT) {
    LOG_WARN("upstream connect timed out");
    LinkFailed(504, "upstream timeout");
  } else {
    LOG_WARN("upstream connect failed: %s", strerror(-res));
    LinkFailed(502, "upstream unavailable");
  }
}

void Relay::OnLinkData(Slice data) {
  if (finished_) return;
  if (tunnel_) {
    downstream_->SendTunnelData(std::move(data));
  } else {
    if (request_done_) {
      worker_->Timers(worker_->config().read_timeout_ns)->Arm(&read_timer_, worker_->now_ns());
    }
    replay_.clear();
    current_ = &data;
    while (!data.empty()) {
      absl::StatusOr<size_t> n = parser_.Dispatch(data.view());
      if (!n.ok()) {
        LOG_WARN("%s", std::string(n.status().message()).c_str());
        current_ = nullptr;
        LinkFailed(502, "upstream unavailable");
        return;
      }
      data.RemovePrefix(*n);
      if (complete_) {
        current_ = nullptr;
        // Bytes after a complete response mean the link is out of step.
        Finish(data.empty() && response_.keep_alive);
        return;
      }
      if (parser_.upgraded()) {
        tunnel_ = true;
        read_timer_.Disarm();
        if (!data.empty()) downstream_->SendTunnelData(data);
        break;
      }
      if (*n == 0) break;
    }
    current_ = nullptr;
  }
  if (link_ && downstream_->congested() && !upstream_paused_) {
    upstream_paused_ = true;
    link_->stream().StopReading();
  }
}

void Relay::OnResponseHead(http::ResponseHead head) {
  response_ = std::move(head);
  if (!admission_.cors_origin.empty()) {
    std::erase_if(response_.headers, [](const http::Header& h) {
      return absl::StartsWithIgnoreCase(h.name, "access-control-");
    });
    for (auto& [name, value] : admission_.ResponseHeaders()) {
      response_.headers.push_back(http::Header{name, value});
    }
  }
  head_sent_ = true;
  downstream_->SendResponseHead(response_);
}

void Relay::OnResponseBody(std::string_view data) {
  downstream_->SendResponseBody(current_->SubOf(data));
}

void Relay::OnResponseComplete() { complete_ = true; }

void Relay::OnLinkReadEnd(int res) {
  if (finished_) return;
  if (tunnel_) {
    finished_ = true;
    DropLink();
    downstream_->EndTunnel();
    return;
  }
  if (parser_.started()) {
    absl::Status st = parser_.Finish();
    if (st.ok() && complete_) {
      Finish(false);
      return;
    }
    LOG_WARN("upstream closed mid-response: %s", std::string(st.message()).c_str());
  }
  LinkFailed(502, "upstream unavailable");
}

void Relay::OnLinkWriteProgress() {
  ArmSendTimer();
  if (downstream_paused_ && link_ && link_->stream().drained()) {
    downstream_paused_ = false;
    downstream_->ResumeReading();
  }
}

void Relay::OnLinkWriteError(int res) {
  if (finished_) return;
  // The response may still be readable (an upstream that answered early and
  // closed); wait for the read side unless nothing came at all.
  if (parser_.started()) return;
  LinkFailed(502, "upstream unavailable");
}

void Relay::LinkFailed(int status, std::string_view message) {
  if (finished_) return;
  // RFC 9110 9.2.2: only a request that never reached the upstream's
  // application (the link died before any response byte) is retried, and only
  // once, on a fresh link.
  if (link_ && link_->reused() && !retried_ && replayable_ &&
      !parser_.started() && status == 502) {
    retried_ = true;
    DropLink();
    AttachLink(true);
    return;
  }
  FailBeforeResponse(status, message);
}

void Relay::FailBeforeResponse(int status, std::string_view message) {
  finished_ = true;
  DropLink();
  if (head_sent_) {
    downstream_->AbortResponse();
  } else {
    downstream_->SendError(status, message);
  }
}

void Relay::Finish(bool reusable) {
  finished_ = true;
  read_timer_.Disarm();
  send_timer_.Disarm();
  if (link_) {
    if (reusable && request_done_ && link_->stream().write_idle()) {
      worker_->pool().Release(link_);
    } else {
      worker_->pool().Discard(link_);
    }
    link_ = nullptr;
  }
  downstream_->SendResponseEnd();
}

void Relay::DropLink() {
  read_timer_.Disarm();
  send_timer_.Disarm();
  if (link_) {
    worker_->pool().Discard(link_);
    link_ = nullptr;
  }
}

void Relay::OnDownstreamDrained() {
  if (upstream_paused_ && link_ && !downstream_->congested()) {
    upstream_paused_ = false;
    link_->stream().StartReading();
  }
}

void Relay::Cancel() {
  finished_ = true;
  DropLink();
  delay_timer_.Disarm();
  held_body_.clear();
}

void Relay::OnTunnelData(Slice data) {
  if (link_ == nullptr) return;
  link_->stream().Write(std::move(data));
  if (link_->stream().congested() && !downstream_paused_) {
    downstream_paused_ = true;
    downstream_->PauseReading();
  }
}

void Relay::OnTunnelEnd() {
  finished_ = true;
  DropLink();
}

}  // namespace sluice::core
