#include "core/proxy/relay.h"

#include <cerrno>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

#include "core/proxy/auth_verifier.h"
#include "core/observe/log.h"
#include "core/observe/observability.h"
#include "core/server/shard.h"
#include "http/serialize.h"

namespace sluice::core {
namespace {
// A retry resends the body, so it is kept (copied) while a retry is
// possible: only for reused links and only up to this size. Larger bodies
// (images) are streamed without a safety net, as nginx does when it has not
// buffered the body.
constexpr size_t kMaxReplayBytes = 64 * 1024;
// A scrape answers with the shards it has after this long (a worker that
// already stopped never answers).
constexpr int64_t kScrapeTimeoutNs = 1'000'000'000;
constexpr std::string_view kOverloadError = "server at its connection limit, retry later";
}  // namespace

// Error log lines about a request name its connection and client.
#define RELAY_LOG(level, fmt, ...)                                          \
  LOG_##level("*%llu client %s: " fmt, static_cast<unsigned long long>(connection_), \
              client_addr_.c_str(), ##__VA_ARGS__)

Relay::Relay(Shard* shard, Downstream* downstream, http::RequestHead head,
             std::string_view client_addr, const policy::IpAddress& peer,
             std::string_view proto, uint64_t connection)
    : shard_(shard),
      downstream_(downstream),
      head_(std::move(head)),
      client_addr_(client_addr),
      peer_(peer),
      proto_(proto),
      parser_(this),
      read_timer_([this] {
        fail_cause_ = "no response within --read_timeout";
        LinkFailed(504, "upstream timeout");
      }),
      send_timer_([this] {
        fail_cause_ = "request not taken within --send_timeout";
        LinkFailed(504, "upstream timeout");
      }),
      delay_timer_([this] {
        if (!finished_) Proceed();
      }),
      connection_(connection),
      start_ns_(shard->now_ns()),
      start_unix_ns_(shard->now_unix_ns()),
      scrape_timer_([this] {
        RELAY_LOG(WARN, "scrape: %d worker(s) did not answer", scrape_->pending);
        AnswerScrape();
      }) {
  ++shard_->metrics().active_streams;
}

Relay::~Relay() {
  DropLink();
  if (ticket_) ticket_->relay = nullptr;
  if (scrape_) scrape_->relay = nullptr;
  policy::Policy::Release(&admission_, shard_->config().conn_table);
  --shard_->metrics().active_streams;
  Account();
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
  int authorization = 0, x_api_key = 0;
  for (const http::Header& h : head_.headers) {
    authorization += http::EqualsIgnoreCase(h.name, "authorization");
    x_api_key += http::EqualsIgnoreCase(h.name, "x-api-key");
  }
  f.repeated_credentials = authorization > 1 || x_api_key > 1;
  f.forwarded_for = field("x-forwarded-for");
  f.origin = field("origin");
  f.ac_request_method = field("access-control-request-method");
  f.ac_request_headers = field("access-control-request-headers");
  return f;
}

void Relay::Start() {
  policy_ = shard_->policy().get();
  const Observability& obs = shard_->obs();
  if (head_.method != "OPTIONS" || head_.target != "*") {
    std::string_view path = head_.target;
    path = path.substr(0, path.find('?'));
    if (!obs.status_path.empty() && path == obs.status_path) {
      ServeInternal(false);
      return;
    }
    if (obs.metrics && !obs.metrics_path.empty() && path == obs.metrics_path) {
      ServeInternal(true);
      return;
    }
  }
  if (downstream_->over_limit()) {
    admission_.status = 503;
    admission_.error = kOverloadError;
    admission_.headers.emplace_back("Retry-After", "1");
    downstream_->CloseAfterResponse();
    AnswerPolicy();
    return;
  }
  if (obs.accounting() && head_.has_body()) request_scan_.emplace();
  const policy::RequestFacts facts = Facts();
  if (!policy_->Screen(facts, &admission_)) {
    AnswerPolicy();
    return;
  }
  switch (policy_->Authenticate(facts, &admission_, &shard_->auth_cache(),
                                shard_->now_ns(), shard_->config().rate_table)) {
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
  policy_hold_ = shard_->last_policy();
  ticket_ = std::make_shared<VerifyTicket>(VerifyTicket{this});
  Shard* w = shard_;
  AuthVerifier::Job job{policy_hold_, admission_.basic_user, admission_.basic_password,
                        [w, t = ticket_](bool valid) {
                          w->Post([t, valid] {
                            if (t->relay) t->relay->OnVerified(valid);
                          });
                        }};
  if (!shard_->config().auth_verifier->Submit(std::move(job))) {
    RELAY_LOG(WARN, "password checks queue full: 503");
    policy_->ForgoVerify(&admission_, shard_->config().rate_table, shard_->now_ns());
    admission_.status = 503;
    admission_.error = "authentication busy, retry later";
    admission_.headers.emplace_back("Retry-After", "1");
    AnswerPolicy();
  }
}

void Relay::OnVerified(bool valid) {
  ticket_.reset();
  if (finished_ || gate_ != Gate::kVerifying) return;
  if (!policy_->FinishBasic(valid, &admission_, &shard_->auth_cache(), shard_->now_ns(),
                            shard_->config().rate_table)) {
    AnswerPolicy();
    return;
  }
  Admit();
}

void Relay::Admit() {
  const Config& cfg = shard_->config();
  policy::LimitStep step =
      policy_->Limit(&admission_, cfg.rate_table, cfg.conn_table, shard_->now_ns());
  switch (step.kind) {
    case policy::LimitStep::kRefuse:
      AnswerPolicy();
      return;
    case policy::LimitStep::kDelay:
      // limit_req without nodelay: the request waits its turn, its body
      // unread.
      gate_ = Gate::kDelayed;
      if (!policy_hold_) policy_hold_ = shard_->last_policy();
      HoldReading();
      shard_->DeadlineTimers()->ArmAt(&delay_timer_, shard_->now_ns() + step.delay_ns);
      return;
    case policy::LimitStep::kAdmit:
      break;
  }
  Proceed();
}

void Relay::AnswerPolicy() {
  finished_ = true;
  status_ = admission_.status;
  if (!admission_.error.empty()) {
    body_bytes_sent_ = http::JsonErrorBody(admission_.error).size();
  }
  MetricsShard& m = shard_->metrics();
  switch (admission_.status) {
    case 401:
      ++m.rejected_auth;
      break;
    case 403:
      ++m.rejected_denied;
      break;
    case 429:
      if (admission_.error == "too many concurrent requests") {
        ++m.rejected_concurrency;
      } else {
        ++m.rejected_rate;
      }
      break;
    case 503:
      if (admission_.error == kOverloadError) {
        ++m.rejected_overload;
      } else {
        ++m.rejected_busy;
      }
      break;
    default:
      break;
  }
  if (admission_.status == 401 || admission_.status == 403) {
    RELAY_LOG(INFO, "%s %s: %d %s", head_.method.c_str(), head_.target.c_str(),
              admission_.status, admission_.error.c_str());
  }
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
  if (admission_.path.forward != "*") {
    original_target_ = std::move(head_.target);
    head_.target = admission_.path.forward;
  }
  const bool drop_credentials = policy_->auth_mode() != policy::AuthMode::kNone;
  std::erase_if(head_.headers, [&](const http::Header& h) {
    return http::EqualsIgnoreCase(h.name, "origin") ||
           (drop_credentials && (http::EqualsIgnoreCase(h.name, "authorization") ||
                                 http::EqualsIgnoreCase(h.name, "x-api-key")));
  });
  const Config& cfg = shard_->config();
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
  link_ = shard_->pool().Acquire(this, fresh, &err);
  if (upstream_start_ns_ < 0) upstream_start_ns_ = shard_->now_ns();
  if (link_ == nullptr) {
    ++shard_->metrics().upstream_connect_failures;
    fail_cause_ = absl::StrCat("no socket: ", strerror(-err));
    FailBeforeResponse(502, "upstream unavailable");
    return false;
  }
  parser_.Begin(head_.is_head(), head_.upgrade);
  link_->stream().WriteCopy(request_bytes_);
  if (!replay_.empty()) link_->stream().WriteCopy(replay_);
  if (request_done_) {
    shard_->Timers(shard_->config().read_timeout_ns)->Arm(&read_timer_, shard_->now_ns());
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
  if (request_scan_) request_scan_->Feed(piece.view());
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
  if (tunnel_) {
    body_bytes_sent_ += data.size();
    downstream_->SendTunnelData(std::move(data));
  } else {
    if (request_done_) {
      shard_->Timers(shard_->config().read_timeout_ns)->Arm(&read_timer_, shard_->now_ns());
    }
    replay_.clear();
    while (!data.empty()) {
      absl::StatusOr<size_t> n = parser_.Dispatch(data);
      if (!n.ok()) {
        fail_cause_ = absl::StrCat("invalid response: ", n.status().message());
        LinkFailed(502, "upstream unavailable");
        return;
      }
      data.RemovePrefix(*n);
      if (complete_) {
        // Bytes after a complete response mean the link is out of step.
        Finish(data.empty() && response_.keep_alive);
        return;
      }
      if (parser_.upgraded()) {
        tunnel_ = true;
        read_timer_.Disarm();
        if (!data.empty()) {
          body_bytes_sent_ += data.size();
          downstream_->SendTunnelData(data);
        }
        break;
      }
      if (*n == 0) break;
    }
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
  status_ = response_.status;
  // Only the generation routes answer with tokens; a model list or a pull's
  // progress is not read.
  if (shard_->obs().accounting() && response_.status >= 200 &&
      response_.status < 300 && !head_.is_head() &&
      policy::IsGenerationPath(admission_.path.match)) {
    const http::Header* ct = response_.Find("content-type");
    const http::BodyFormat format =
        http::FormatForContentType(ct ? std::string_view(ct->value) : std::string_view());
    if (format != http::BodyFormat::kOther) tokens_ = std::make_unique<TokenTrack>(format);
  }
  downstream_->SendResponseHead(response_);
}

void Relay::OnResponseBody(Slice data) {
  body_bytes_sent_ += data.size();
  if (tokens_) {
    if (size_t events = tokens_->scanner.Feed(data.view())) OnTokens(events);
  }
  downstream_->SendResponseBody(std::move(data));
}

void Relay::OnResponseComplete() {
  complete_ = true;
  if (tokens_) {
    if (size_t events = tokens_->scanner.Finish()) OnTokens(events);
  }
}

void Relay::OnTokens(size_t events) {
  // Events that arrive in one read share its time: the gaps between them
  // are zero, as the client sees them.
  const int64_t now = shard_->now_ns();
  TokenTrack& t = *tokens_;
  if (t.first_ns < 0) {
    t.first_ns = now;
    t.last_ns = now;
    --events;
  }
  for (; events > 0; --events) {
    const int64_t gap = now - t.last_ns;
    t.gaps.Add(gap);
    t.gap_histogram.Observe(gap);
    t.last_ns = now;
  }
}

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
  if (link_ && link_->reused() && !retried_ && replayable_ &&
      !parser_.started() && status == 502) {
    retried_ = true;
    RELAY_LOG(DEBUG, "reused upstream link failed (%s): retrying on a fresh one",
              fail_cause_.c_str());
    DropLink();
    AttachLink(true);
    return;
  }
  FailBeforeResponse(status, message);
}

void Relay::FailBeforeResponse(int status, std::string_view message) {
  if (head_sent_) {
    RELAY_LOG(WARN, "%s %s: response cut short: upstream %s", head_.method.c_str(),
              head_.target.c_str(), fail_cause_.c_str());
  } else {
    RELAY_LOG(WARN, "%s %s: %d %s: upstream %s", head_.method.c_str(), head_.target.c_str(),
              status, std::string(message).c_str(), fail_cause_.c_str());
  }
  EndWithError(status, message);
}

void Relay::EndWithError(int status, std::string_view message) {
  finished_ = true;
  DropLink();
  if (head_sent_) {
    downstream_->AbortResponse();
    return;
  }
  status_ = status;
  body_bytes_sent_ = http::JsonErrorBody(message).size();
  downstream_->SendError(status, message);
}

void Relay::Finish(bool reusable) {
  finished_ = true;
  read_timer_.Disarm();
  send_timer_.Disarm();
  if (link_) {
    if (reusable && request_done_ && link_->stream().write_idle()) {
      shard_->pool().Release(link_);
    } else {
      shard_->pool().Discard(link_);
    }
    link_ = nullptr;
  }
  downstream_->SendResponseEnd();
}

void Relay::DropLink() {
  read_timer_.Disarm();
  send_timer_.Disarm();
  if (link_) {
    shard_->pool().Discard(link_);
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
  if (!finished_ && !tunnel_) {
    cancelled_ = true;
    RELAY_LOG(DEBUG, "%s %s: client went away, upstream link closed", head_.method.c_str(),
              head_.target.c_str());
  }
  finished_ = true;
  DropLink();
  delay_timer_.Disarm();
  held_body_.clear();
}

void Relay::AbandonRequest(int status, std::string_view message) {
  if (finished_) return;
  delay_timer_.Disarm();
  held_body_.clear();
  RELAY_LOG(INFO, "%s %s: %d %s", head_.method.c_str(), head_.target.c_str(), status,
            std::string(message).c_str());
  EndWithError(status, message);
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

void Relay::ServeInternal(bool metrics) {
  const Observability& obs = shard_->obs();
  admission_.group = "internal";
  const http::Header* xff = head_.Find("x-forwarded-for");
  const policy::IpAddress client = policy_->ResolveClient(
      peer_, xff ? absl::string_view(xff->value) : absl::string_view());
  admission_.client_text = client.ToString();
  if (!obs.status_allow.Contains(client)) {
    // As nginx's `allow 127.0.0.1; deny all;` around stub_status.
    admission_.status = 403;
    admission_.error = "access denied for this address";
    AnswerPolicy();
    return;
  }
  if (head_.method != "GET" && head_.method != "HEAD") {
    admission_.status = 405;
    admission_.error = "method not allowed";
    admission_.headers.emplace_back("Allow", "GET, HEAD");
    AnswerPolicy();
    return;
  }
  scrape_metrics_ = metrics;
  HoldReading();
  // Every worker copies its own counters on its own thread (they are plain
  // integers nobody else touches) and posts the copy back here.
  scrape_ = std::make_shared<ScrapeTicket>(
      ScrapeTicket{this, shard_, 0, shard_->SnapshotMetrics()});
  for (Shard* w : obs.shards) {
    if (w == shard_) continue;
    ++scrape_->pending;
    w->Post([t = scrape_, w] {
      auto shard = std::make_shared<MetricsShard>(w->SnapshotMetrics());
      t->origin->Post([t, shard] {
        t->total.Merge(*shard);
        if (--t->pending == 0 && t->relay) t->relay->AnswerScrape();
      });
    });
  }
  if (scrape_->pending == 0) {
    AnswerScrape();
  } else {
    shard_->Timers(kScrapeTimeoutNs)->Arm(&scrape_timer_, shard_->now_ns());
  }
}

void Relay::AnswerScrape() {
  if (finished_) return;
  finished_ = true;
  scrape_timer_.Disarm();
  const Observability& obs = shard_->obs();
  std::string body;
  http::ResponseHead head;
  head.status = 200;
  if (scrape_metrics_) {
    ProcessInfo info = obs.info;
    if (obs.access_log) info.access_log_dropped_lines = obs.access_log->dropped_lines();
    body = RenderPrometheus(scrape_->total, info);
    head.headers.push_back(
        http::Header{"Content-Type", "text/plain; version=0.0.4; charset=utf-8"});
  } else {
    body = RenderStubStatus(scrape_->total);
    head.headers.push_back(http::Header{"Content-Type", "text/plain"});
  }
  head.headers.push_back(http::Header{"Cache-Control", "no-store"});
  head.content_length = body.size();
  scrape_->relay = nullptr;
  scrape_.reset();
  status_ = 200;
  head_sent_ = true;
  complete_ = true;
  if (!head_.is_head()) body_bytes_sent_ = body.size();
  if (gate_paused_) {
    gate_paused_ = false;
    downstream_->ResumeReading();
  }
  downstream_->SendResponseHead(head);
  downstream_->SendResponseBody(Slice::FromString(std::move(body)));
  downstream_->SendResponseEnd();
}

void Relay::Account() {
  const Observability& obs = shard_->obs();
  if (!obs.accounting()) return;
  const int64_t now = shard_->now_ns();
  // nginx logs 499 for a request whose client closed the connection first.
  const int status = cancelled_ ? 499 : status_;
  const int64_t request_ns = now - start_ns_;
  const int64_t upstream_ns = upstream_start_ns_ >= 0 ? now - upstream_start_ns_ : -1;
  const std::string_view group =
      admission_.group.empty() ? std::string_view("other") : std::string_view(admission_.group);
  const std::string_view principal =
      admission_.principal.empty() ? std::string_view("-") : std::string_view(admission_.principal);
  std::string_view model;
  if (request_scan_ && !request_scan_->model().empty()) model = request_scan_->model();
  if (model.empty() && tokens_ && !tokens_->scanner.usage().model.empty()) {
    model = tokens_->scanner.usage().model;
  }
  int64_t prompt = -1;
  int64_t completion = -1;
  if (tokens_) {
    const http::TokenUsage& u = tokens_->scanner.usage();
    if (u.prompt_tokens) prompt = *u.prompt_tokens;
    if (u.completion_tokens) {
      completion = *u.completion_tokens;
    } else if (u.token_events > 0) {
      // A stream cut short (or without a final count): what was relayed.
      completion = static_cast<int64_t>(u.token_events);
    }
  }

  if (obs.metrics) {
    MetricsShard& m = shard_->metrics();
    RouteStats& route = m.Route(group);
    ++route.by_status[status];
    route.request.Observe(request_ns);
    if (upstream_ns >= 0) route.upstream.Observe(upstream_ns);
    if (cancelled_) ++m.client_cancellations;
    if (tokens_) {
      if (tokens_->first_ns >= 0) route.first_token.Observe(tokens_->first_ns - start_ns_);
      route.token_gap.Merge(tokens_->gap_histogram);
      if (prompt >= 0 || completion >= 0) {
        m.AddTokens(principal, model.empty() ? std::string_view("-") : model, prompt,
                    completion);
      }
    }
  }

  if (obs.access_log == nullptr) return;
  AccessRecord r;
  DescribeRequest(head_, &r);
  if (!original_target_.empty()) r.target = original_target_;
  r.start_unix_ns = start_unix_ns_;
  r.remote_addr = admission_.client_text.empty() ? std::string_view(client_addr_)
                                                 : std::string_view(admission_.client_text);
  // As nginx's $remote_user: the Basic user name sent, whether or not its
  // password was right (a refused key names no one).
  r.user = !admission_.user_name.empty() ? std::string_view(admission_.user_name)
                                         : std::string_view(admission_.basic_user);
  r.status = status;
  r.body_bytes_sent = body_bytes_sent_;
  r.request_time_ns = request_ns;
  r.upstream_time_ns = upstream_ns;
  r.principal = admission_.principal;
  r.route = group;
  r.model = model;
  if (tokens_) {
    r.stream = tokens_->scanner.format() == http::BodyFormat::kNdjson ||
               tokens_->scanner.format() == http::BodyFormat::kSse;
    if (tokens_->first_ns >= 0) r.ttft_ns = tokens_->first_ns - start_ns_;
    r.gap_p50_ns = tokens_->gaps.p50_ns();
    r.gap_max_ns = tokens_->gaps.max_ns();
  }
  r.prompt_tokens = prompt;
  r.completion_tokens = completion;
  r.cancelled = cancelled_;
  r.worker = shard_->index();
  r.connection = connection_;
  shard_->LogAccess(r);
}

}  // namespace sluice::core
