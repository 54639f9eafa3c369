#include "core/proxy/relay.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/observe/log.h"
#include "core/observe/observability.h"
#include "core/server/shard.h"
#include "core/upstream/backend_set.h"
#include "core/upstream/resolver.h"
#include "http/serialize.h"

namespace sluice::core {
namespace {
// A retry resends the body, so it is kept (copied) while a retry is
// possible (a reused link, or another backend to fail over to) and only up
// to this size. Larger bodies
// (images) are streamed without a safety net, as nginx does when it has not
// buffered the body.
constexpr size_t kMaxReplayBytes = 64 * 1024;
// A generation routed by its model has been held by the router already
// and a failover is worth more to it (another backend with the model):
// up to 1 MiB of its body is kept, until the response head comes.
constexpr size_t kMaxRoutedReplayBytes = 1024 * 1024;
}  // namespace

// Error log lines about a request name its connection and client.
#define RELAY_LOG(level, fmt, ...)                                                          \
  LOG_##level("*%llu client %s: " fmt, static_cast<unsigned long long>(client_.connection), \
              client_.addr.c_str(), ##__VA_ARGS__)

Relay::Relay(Shard* shard, Downstream* downstream, http::RequestHead head, ClientInfo client)
    : shard_(shard),
      downstream_(downstream),
      head_(std::move(head)),
      client_(std::move(client)),
      record_(shard->obs().accounting(), client_.connection, shard->index(), shard->now_ns(),
              shard->now_unix_ns()),
      gate_(shard, downstream, &head_, &client_),
      tunnel_(downstream, &record_),
      backends_(&shard->backends()),
      parser_(this),
      read_timer_([this] {
        fail_cause_ = "no response within --read_timeout";
        LinkFailed(504, "upstream timeout");
      }),
      send_timer_([this] {
        fail_cause_ = "request not taken within --send_timeout";
        LinkFailed(504, "upstream timeout");
      }),
      queue_timer_([this] { OnQueueTimeout(); }),
      hangup_timer_([this] {
        if (!waiting_slot_ || !parked_paused_) return;
        if (downstream_->PeerGone()) {
          LeaveForGoneClient();
        } else {
          PauseParked();  // looks again in a second
        }
      }) {
  ++shard_->metrics().active_streams;
}

Relay::~Relay() {
  DropLink();
  ReleaseSlot();
}

void Relay::Close() {
  if (closed_) return;
  closed_ = true;
  DropLink();
  ReleaseSlot();
  EndModel(false);
  gate_.Close();
  --shard_->metrics().active_streams;
  record_.Account(shard_, head_, gate_.admission(), client_.addr);
}

void Relay::Start() {
  if (head_.has_body()) record_.ExpectRequestBody();
  gate_.Start([this](const AdmissionGate::Verdict& v) { OnVerdict(v); });
}

void Relay::OnVerdict(const AdmissionGate::Verdict& verdict) {
  if (verdict.admitted) {
    Proceed();
    return;
  }
  finished_ = true;
  AnswerVerdict(verdict, &record_, downstream_);
}

void Relay::Proceed() {
  const policy::Admission& admission = gate_.admission();
  // Ollama sees exactly the path the rules were checked against. The
  // proxy's own credentials and the Origin (CORS is answered here; Ollama
  // would refuse origins it does not know) stay here. A rules-file
  // upstream (a web application) gets the Origin its own checks need.
  if (admission.path.forward != "*") {
    record_.set_original_target(std::move(head_.target));
    head_.target = admission.path.forward;
  }
  const bool drop_credentials = gate_.policy().AuthFor(admission) != policy::AuthMode::kNone;
  const bool drop_origin = admission.route == nullptr || admission.route->upstream < 0;
  std::erase_if(head_.headers, [&](const http::Header& h) {
    return (drop_origin && http::EqualsIgnoreCase(h.name, "origin")) ||
           (drop_credentials && (http::EqualsIgnoreCase(h.name, "authorization") ||
                                 http::EqualsIgnoreCase(h.name, "x-api-key")));
  });
  Route();
}

void Relay::SerializeHead() {
  http::ForwardContext ctx{client_.addr, client_.scheme, pool_->backend().host_header,
                           gate_.admission().client_text};
  request_bytes_.clear();
  http::AppendUpstreamRequestHead(head_, ctx, &request_bytes_);
}

// Every backend is left out for failures: 503 with the time until the
// first comes back.
void Relay::AnswerNoBackend() {
  finished_ = true;
  const int64_t wait_ns = backends_->NextAvailableNs() - shard_->now_ns();
  const int64_t seconds = std::max<int64_t>(1, (wait_ns + 999'999'999) / 1'000'000'000);
  const std::string_view message =
      named_ ? "no backend of the upstream available" : "no Ollama backend available";
  RELAY_LOG(WARN, "%s %s: 503 %s", head_.method.c_str(), head_.target.c_str(), message.data());
  record_.Answered(503, http::JsonErrorBody(message).size());
  downstream_->SendPolicyAnswer(503, message, {http::Header{"Retry-After", absl::StrCat(seconds)}});
}

bool Relay::KeepForReplay() const {
  if (!replayable_ || parser_.started()) return false;
  return (link_->reused() && !retried_) || (!failed_over_ && backends_->size() > 1);
}

bool Relay::AttachLink(bool fresh) {
  int err = 0;
  pool_->TakeProbe(shard_->now_ns());
  link_ = pool_->Acquire(this, fresh, &err);
  record_.UpstreamStarted(shard_->now_ns());
  if (backends_->size() > 1 || named_) record_.set_backend(pool_->backend().name);
  if (BackendStats* stats = shard_->metrics().backend(pool_->index())) ++stats->requests;
  if (link_ == nullptr) {
    ++shard_->metrics().upstream_connect_failures;
    fail_cause_ = absl::StrCat("no socket: ", strerror(-err));
    FailBeforeResponse(502, "upstream unavailable");
    return false;
  }
  parser_.Begin(head_.is_head(), head_.upgrade);
  link_->stream().WriteCopy(request_bytes_);
  if (!replay_.empty()) link_->stream().WriteCopy(replay_);
  if (request_done_) ArmReadTimer();
  ArmSendTimer();
  return true;
}

void Relay::WriteUp(Slice piece) {
  if (link_ == nullptr) return;
  if (KeepForReplay()) {
    const size_t bound = model_.empty() ? kMaxReplayBytes : kMaxRoutedReplayBytes;
    if (replay_.size() + piece.size() <= bound) {
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
  if (KeepForReplay()) replay_.append(bytes);
  link_->stream().WriteCopy(bytes);
}

void Relay::OnRequestBody(Slice piece) {
  if (!gate_.open()) {
    if (!finished_) gate_.Hold(std::move(piece));
    return;
  }
  if (peek_) {
    Peek(std::move(piece));
    return;
  }
  if (tail_ && !resending_ && !CheckTail(piece)) return;
  if (client_gone_) return;  // dropped: the request ends with its connection
  if (waiting_slot_) {
    if (!piece.empty()) ParkBody(std::move(piece));
    return;
  }
  if (link_ == nullptr || piece.empty()) return;
  record_.RequestBody(piece.view());
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
  if (!gate_.open()) {
    gate_.HoldEnd();
    return;
  }
  if (peek_) {
    peek_->end = true;
    RouteByModel();
    return;
  }
  // Every piece of a large body was read before it went up: nothing is
  // left to check at its end.
  tail_.reset();
  if (client_gone_) return;
  if (waiting_slot_) {
    parked_end_ = true;
    return;
  }
  if (request_done_) return;
  request_done_ = true;
  if (link_ == nullptr) return;
  if (head_.chunked) WriteUpCopy(http::kLastChunk);
  ArmReadTimer();
}

// proxy_read_timeout semantics: the time between two reads from the
// upstream, counted once the request has been sent.
void Relay::ArmReadTimer() {
  shard_->Timers(shard_->config().read_timeout_ns)->Arm(&read_timer_, shard_->now_ns());
}

void Relay::ArmSendTimer() {
  if (link_ == nullptr) return;
  if (link_->stream().write_idle()) {
    send_timer_.Disarm();
  } else {
    shard_->Timers(shard_->config().send_timeout_ns)->Arm(&send_timer_, shard_->now_ns());
  }
}

void Relay::OnLinkConnected(int res) {
  if (res == 0) return;
  ++shard_->metrics().upstream_connect_failures;
  // A name's address may have moved: resolve it again soon.
  if (pool_->backend().dns != nullptr) pool_->backend().dns->RequestResolve();
  connect_failed_ = true;
  if (res == -ECANCELED || res == -ETIMEDOUT) {
    fail_cause_ = "connect timed out";
    LinkFailed(504, "upstream timeout");
  } else {
    fail_cause_ = absl::StrCat("connect failed: ", strerror(-res));
    LinkFailed(502, "upstream unavailable");
  }
}

void Relay::OnLinkData(Slice data) {
  if (finished_) return;
  if (tunnel_.open()) {
    tunnel_.FromUpstream(std::move(data));
  } else {
    if (request_done_) ArmReadTimer();
    if (!ParseResponse(std::move(data))) return;
  }
  if (link_ && downstream_->congested() && !upstream_paused_) {
    upstream_paused_ = true;
    link_->stream().StopReading();
  }
}

bool Relay::ParseResponse(Slice data) {
  while (!data.empty()) {
    absl::StatusOr<size_t> n = parser_.Dispatch(data);
    if (!n.ok()) {
      fail_cause_ = absl::StrCat("invalid response: ", n.status().message());
      LinkFailed(502, "upstream unavailable");
      return false;
    }
    data.RemovePrefix(*n);
    if (busy_next_ != nullptr) {
      FailOverBusy();
      return false;
    }
    if (complete_) {
      // Bytes after a complete response mean the link is out of step.
      Finish(data.empty() && response_.keep_alive);
      return false;
    }
    if (parser_.upgraded()) {
      tunnel_.Open();
      read_timer_.Disarm();
      if (!data.empty()) tunnel_.FromUpstream(data);
      return true;
    }
    if (*n == 0) return true;
  }
  return true;
}

void Relay::OnResponseHead(http::ResponseHead head) {
  // Ollama's 503 ("server busy": its queue is full) before anything was
  // relayed: the request goes once to another backend that has the model.
  if (head.status == 503 && request_done_ && replayable_ && !failed_over_ &&
      backends_->size() > 1 && named_ == nullptr) {
    busy_next_ = NextBackend();
    if (busy_next_ != nullptr) return;
  }
  replay_.clear();
  response_ = std::move(head);
  const policy::Admission& admission = gate_.admission();
  if (!admission.cors_origin.empty()) {
    std::erase_if(response_.headers, [](const http::Header& h) {
      return absl::StartsWithIgnoreCase(h.name, "access-control-");
    });
    for (auto& [name, value] : admission.ResponseHeaders()) {
      response_.headers.push_back(http::Header{name, value});
    }
  }
  if (queue_wait_ns_ >= 0) {
    // How long it waited for its generation slot (0: one was free).
    response_.headers.push_back(
        http::Header{"X-Queue-Wait-Ms", absl::StrCat(queue_wait_ns_ / 1'000'000)});
  }
  if (link_) {
    // A backend's own failure answers count against it (503 is Ollama's
    // "busy", not a fault).
    const int s = response_.status;
    if (s == 500 || s == 502 || s == 504) {
      link_->pool()->ReportFailure(shard_->now_ns());
    } else {
      link_->pool()->ReportSuccess();
    }
  }
  response_head_ns_ = shard_->now_ns();
  head_sent_ = true;
  record_.ResponseStarted(response_, head_.is_head(), admission.path.match);
  downstream_->SendResponseHead(response_);
}

void Relay::OnResponseBody(Slice data) {
  if (busy_next_ != nullptr) return;  // a 503's body, not relayed
  record_.ResponseBody(data.view(), shard_->now_ns());
  downstream_->SendResponseBody(std::move(data));
}

void Relay::OnResponseComplete() {
  if (busy_next_ != nullptr) return;
  complete_ = true;
  record_.ResponseComplete(shard_->now_ns());
}

void Relay::OnLinkReadEnd(int res) {
  if (finished_) return;
  if (tunnel_.open()) {
    finished_ = true;
    DropLink();
    tunnel_.UpstreamEnded();
    return;
  }
  if (parser_.started()) {
    absl::Status st = parser_.Finish();
    if (st.ok() && complete_) {
      Finish(false);
      return;
    }
    fail_cause_ = st.ok() ? std::string("closed the link mid-response")
                          : absl::StrCat("closed mid-response: ", st.message());
  } else {
    fail_cause_ = res < 0 ? absl::StrCat("read failed: ", strerror(-res))
                          : std::string("closed the link before answering");
  }
  LinkFailed(502, "upstream unavailable");
}

void Relay::OnLinkWriteProgress() {
  ArmSendTimer();
  if (downstream_paused_ && link_ && link_->stream().drained()) {
    downstream_paused_ = false;
    downstream_->ResumeReading();
  }
  if (link_) tunnel_.OnLinkWriteProgress(&link_->stream());
}

void Relay::OnLinkWriteError(int res) {
  if (finished_) return;
  // The response may still be readable (an upstream that answered early and
  // closed); wait for the read side unless nothing came at all.
  if (parser_.started()) return;
  fail_cause_ = absl::StrCat("write failed: ", strerror(-res));
  LinkFailed(502, "upstream unavailable");
}

void Relay::LinkFailed(int status, std::string_view message) {
  if (finished_) return;
  // RFC 9110 9.2.2: only a request that never reached the upstream's
  // application (the link died before any response byte) is retried, and only
  // once, on a fresh link.
  // A failure before any response byte: the connect failed, or the link
  // was reset or closed before answering (not a read or send timeout,
  // after which the request may be running upstream).
  const bool early = link_ && !parser_.started() && (status == 502 || connect_failed_);
  if (early && link_->reused() && !retried_ && replayable_ && status == 502) {
    retried_ = true;
    RELAY_LOG(DEBUG, "reused upstream link failed (%s): retrying on a fresh one",
              fail_cause_.c_str());
    DropLink();
    AttachLink(true);
    return;
  }
  if (early && !link_->reused()) {
    // A fresh link's failure is the backend's; the request goes once to
    // another backend, its body replayed.
    link_->pool()->ReportFailure(shard_->now_ns());
    UpstreamPool* next = failed_over_ || !replayable_ ? nullptr : NextBackend();
    if (next != nullptr) {
      RELAY_LOG(WARN, "%s %s: backend %s failed (%s): trying %s", head_.method.c_str(),
                head_.target.c_str(), pool_->backend().name.c_str(), fail_cause_.c_str(),
                next->backend().name.c_str());
      SwitchBackend(next);
      AttachLink(true);
      return;
    }
  }
  FailBeforeResponse(status, message);
}

void Relay::SwitchBackend(UpstreamPool* next) {
  if (BackendStats* stats = shard_->metrics().backend(pool_->index())) ++stats->failovers;
  failed_over_ = true;
  connect_failed_ = false;
  ++shard_->metrics().upstream_failovers;
  DropLink();
  EndModel(false);
  pool_ = next;
  MoveSlot();
  BeginModel(route_kind_);
  SerializeHead();
}

void Relay::FailOverBusy() {
  UpstreamPool* next = busy_next_;
  busy_next_ = nullptr;
  RELAY_LOG(WARN, "%s %s: backend %s is busy (503): trying %s", head_.method.c_str(),
            head_.target.c_str(), pool_->backend().name.c_str(), next->backend().name.c_str());
  SwitchBackend(next);
  AttachLink(false);
}

void Relay::FailBeforeResponse(int status, std::string_view message) {
  // No answer within --read_timeout or --send_timeout: the backend's fault.
  if (status == 504 && !connect_failed_ && link_ != nullptr) {
    link_->pool()->ReportFailure(shard_->now_ns());
  }
  if (head_sent_) {
    RELAY_LOG(WARN, "%s %s: response cut short: upstream %s", head_.method.c_str(),
              head_.target.c_str(), fail_cause_.c_str());
  } else {
    RELAY_LOG(WARN, "%s %s: %d %s: upstream %s", head_.method.c_str(), head_.target.c_str(), status,
              std::string(message).c_str(), fail_cause_.c_str());
  }
  EndWithError(status, message);
}

void Relay::EndWithError(int status, std::string_view message) {
  finished_ = true;
  DropLink();
  ReleaseSlot();
  if (head_sent_) {
    downstream_->AbortResponse();
    return;
  }
  record_.Answered(status, http::JsonErrorBody(message).size());
  downstream_->SendError(status, message);
}

void Relay::Finish(bool reusable) {
  finished_ = true;
  ReleaseSlot();
  EndModel(response_.status >= 200 && response_.status < 300);
  read_timer_.Disarm();
  send_timer_.Disarm();
  if (link_) {
    if (reusable && request_done_ && link_->stream().write_idle()) {
      link_->pool()->Release(link_);
    } else {
      link_->pool()->Discard(link_);
    }
    link_ = nullptr;
  }
  downstream_->SendResponseEnd();
}

void Relay::DropLink() {
  read_timer_.Disarm();
  send_timer_.Disarm();
  if (link_) {
    link_->pool()->Discard(link_);
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
  if (!finished_ && !tunnel_.open()) {
    record_.Cancelled();
    RELAY_LOG(DEBUG, "%s %s: client went away, upstream link closed", head_.method.c_str(),
              head_.target.c_str());
  }
  finished_ = true;
  DropLink();
  ReleaseSlot();
  gate_.Cancel();
}

void Relay::AbandonRequest(int status, std::string_view message) {
  if (finished_) return;
  gate_.Cancel();
  RELAY_LOG(INFO, "%s %s: %d %s", head_.method.c_str(), head_.target.c_str(), status,
            std::string(message).c_str());
  EndWithError(status, message);
}

void Relay::OnTunnelData(Slice data) {
  if (link_ == nullptr) return;
  tunnel_.FromClient(&link_->stream(), std::move(data));
}

}  // namespace sluice::core
