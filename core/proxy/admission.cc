#include "core/proxy/admission.h"

#include "core/observe/log.h"
#include "core/observe/metrics.h"
#include "core/proxy/auth_verifier.h"
#include "core/proxy/request_record.h"
#include "core/server/shard.h"
#include "http/serialize.h"

namespace sluice::core {
namespace {
constexpr std::string_view kOverloadError = "server at its connection limit, retry later";
}  // namespace

// Error log lines about a request name its connection and client.
#define GATE_LOG(level, fmt, ...)                                                            \
  LOG_##level("*%llu client %s: " fmt, static_cast<unsigned long long>(client_->connection), \
              client_->addr.c_str(), ##__VA_ARGS__)

void CountRefusal(int status, std::string_view error, MetricsShard* m) {
  switch (status) {
    case 401:
      ++m->rejected_auth;
      break;
    case 403:
      ++m->rejected_denied;
      break;
    case 429:
      if (error == "too many concurrent requests") {
        ++m->rejected_concurrency;
      } else {
        ++m->rejected_rate;
      }
      break;
    case 503:
      if (error == kOverloadError) {
        ++m->rejected_overload;
      } else {
        ++m->rejected_busy;
      }
      break;
    default:
      break;
  }
}

void AnswerVerdict(const AdmissionGate::Verdict& v, RequestRecord* record, Downstream* downstream) {
  record->Answered(v.status, v.error.empty() ? 0 : http::JsonErrorBody(v.error).size());
  downstream->SendPolicyAnswer(v.status, v.error, v.headers);
}

AdmissionGate::AdmissionGate(Shard* shard, Downstream* downstream, const http::RequestHead* head,
                             const ClientInfo* client)
    : shard_(shard), downstream_(downstream), head_(head), client_(client), delay_timer_([this] {
        if (!cancelled_) Admit();
      }) {}

AdmissionGate::~AdmissionGate() {
  if (ticket_) ticket_->gate = nullptr;
}

policy::RequestFacts AdmissionGate::Facts() const {
  const http::RequestHead& head = *head_;
  auto field = [&head](std::string_view name) -> absl::string_view {
    const http::Header* h = head.Find(name);
    return h ? absl::string_view(h->value) : absl::string_view();
  };
  policy::RequestFacts f;
  f.method = head.method;
  f.target = head.target;
  f.scheme = client_->scheme;
  f.host = head.host;
  f.peer = client_->peer;
  f.authorization = field("authorization");
  f.x_api_key = field("x-api-key");
  int authorization = 0, x_api_key = 0;
  for (const http::Header& h : head.headers) {
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

void AdmissionGate::Start(Done done) {
  done_ = std::move(done);
  state_ = State::kChecking;
  policy_ = shard_->policy().get();
  if (downstream_->over_limit()) {
    admission_.headers.emplace_back("Retry-After", "1");
    downstream_->CloseAfterResponse();
    Refuse(503, kOverloadError);
    return;
  }
  const policy::RequestFacts facts = Facts();
  if (!policy_->Screen(facts, &admission_)) {
    Refuse();
    return;
  }
  switch (policy_->Authenticate(facts, &admission_, &shard_->auth_cache(), shard_->now_ns(),
                                shard_->config().rate_table)) {
    case policy::AuthStep::kRefused:
      Refuse();
      return;
    case policy::AuthStep::kNeedVerify:
      StartVerify();
      return;
    case policy::AuthStep::kDone:
      break;
  }
  Limit();
}

void AdmissionGate::StartInternal(const policy::IpSet& allow, Done done) {
  done_ = std::move(done);
  state_ = State::kChecking;
  policy_ = shard_->policy().get();
  admission_.group = "internal";
  const http::Header* xff = head_->Find("x-forwarded-for");
  const policy::IpAddress client = policy_->ResolveClient(
      client_->peer, xff ? absl::string_view(xff->value) : absl::string_view());
  admission_.client_text = client.ToString();
  if (!allow.Contains(client)) {
    // As nginx's `allow 127.0.0.1; deny all;` around stub_status.
    Refuse(403, "access denied for this address");
    return;
  }
  if (head_->method != "GET" && head_->method != "HEAD") {
    admission_.headers.emplace_back("Allow", "GET, HEAD");
    Refuse(405, "method not allowed");
    return;
  }
  Admit();
}

void AdmissionGate::PauseReading() {
  if (!paused_) {
    paused_ = true;
    downstream_->PauseReading();
  }
}

void AdmissionGate::ResumeReading() {
  if (paused_) {
    paused_ = false;
    downstream_->ResumeReading();
  }
}

void AdmissionGate::StartVerify() {
  state_ = State::kVerifying;
  PauseReading();
  // Still the snapshot Start took: nothing ran on this worker in between.
  policy_hold_ = shard_->last_policy();
  ticket_ = std::make_shared<VerifyTicket>(VerifyTicket{this});
  Shard* w = shard_;
  AuthVerifier::Job job{policy_hold_, admission_.basic_user, admission_.basic_password,
                        [w, t = ticket_](bool valid) {
                          w->Post([t, valid] {
                            if (t->gate) t->gate->OnVerified(valid);
                          });
                        }};
  if (!shard_->config().auth_verifier->Submit(std::move(job))) {
    GATE_LOG(WARN, "password checks queue full: 503");
    policy_->ForgoVerify(&admission_, shard_->config().rate_table, shard_->now_ns());
    admission_.headers.emplace_back("Retry-After", "1");
    Refuse(503, "authentication busy, retry later");
  }
}

void AdmissionGate::OnVerified(bool valid) {
  ticket_.reset();
  if (cancelled_ || state_ != State::kVerifying) return;
  if (!policy_->FinishBasic(valid, &admission_, &shard_->auth_cache(), shard_->now_ns(),
                            shard_->config().rate_table)) {
    Refuse();
    return;
  }
  Limit();
}

void AdmissionGate::Limit() {
  const Config& cfg = shard_->config();
  policy::LimitStep step =
      policy_->Limit(&admission_, cfg.rate_table, cfg.conn_table, shard_->now_ns());
  switch (step.kind) {
    case policy::LimitStep::kRefuse:
      Refuse();
      return;
    case policy::LimitStep::kDelay:
      // limit_req without nodelay: the request waits its turn, its body
      // unread.
      state_ = State::kDelayed;
      if (!policy_hold_) policy_hold_ = shard_->last_policy();
      PauseReading();
      shard_->DeadlineTimers()->ArmAt(&delay_timer_, shard_->now_ns() + step.delay_ns);
      return;
    case policy::LimitStep::kAdmit:
      break;
  }
  Admit();
}

void AdmissionGate::Admit() {
  state_ = State::kOpen;
  Verdict admitted;
  admitted.admitted = true;
  done_(admitted);
}

void AdmissionGate::Refuse(int status, std::string_view error) {
  admission_.status = status;
  admission_.error = error;
  Refuse();
}

void AdmissionGate::Refuse() {
  state_ = State::kAnswered;
  CountRefusal(admission_.status, admission_.error, &shard_->metrics());
  if (admission_.status == 401 || admission_.status == 403) {
    GATE_LOG(INFO, "%s %s: %d %s", head_->method.c_str(), head_->target.c_str(), admission_.status,
             admission_.error.c_str());
  }
  Verdict v;
  v.status = admission_.status;
  v.error = admission_.error;
  v.headers.reserve(admission_.headers.size());
  for (auto& [name, value] : admission_.headers) {
    v.headers.push_back(http::Header{name, value});
  }
  done_(v);
}

void AdmissionGate::Hold(Slice piece) {
  if (!piece.empty()) held_body_.push_back(std::move(piece));
}

std::vector<Slice> AdmissionGate::TakeHeld() {
  std::vector<Slice> held;
  held.swap(held_body_);
  return held;
}

void AdmissionGate::Cancel() {
  cancelled_ = true;
  delay_timer_.Disarm();
  held_body_.clear();
}

void AdmissionGate::Close() {
  Cancel();
  if (ticket_) ticket_->gate = nullptr;
  policy::Policy::Release(&admission_, shard_->config().conn_table);
}

}  // namespace sluice::core
