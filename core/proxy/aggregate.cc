#include "core/proxy/aggregate.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/observe/log.h"
#include "core/observe/observability.h"
#include "core/server/shard.h"
#include "core/upstream/backend_set.h"
#include "core/upstream/upstream_pool.h"
#include "http/h1_response_parser.h"
#include "http/serialize.h"

namespace sluice::core {
namespace {
// A model list is a few KiB per hundred models; a backend's answer past
// this is not one.
constexpr size_t kMaxAnswerBytes = 8u << 20;
}  // namespace

#define AGGREGATE_LOG(level, client, fmt, ...)                                               \
  LOG_##level("*%llu client %s: " fmt, static_cast<unsigned long long>((client).connection), \
              (client).addr.c_str(), ##__VA_ARGS__)

// One backend's GET: a link from its pool, the response read whole into
// `body_`. Ends once (answered, failed or dropped); on an answer or a
// failure it tells its exchange (FetchDone) as the last thing it does.
class Aggregate::Fetch final : public LinkUser, public http::H1ResponseSink {
 public:
  Fetch(Aggregate* owner, UpstreamPool* pool, std::string request)
      : owner_(owner), pool_(pool), request_(std::move(request)), parser_(this) {}
  ~Fetch() override { Drop(); }

  // Sends the request (may fail, and so end, before returning).
  void Start() { Attach(false); }
  // Ends the fetch without telling the exchange (timeout, cancel): the
  // link closes.
  void Abandon(std::string_view cause) {
    if (!done_) {
      done_ = true;
      cause_ = cause;
    }
    Drop();
  }
  bool ok() const { return done_ && cause_.empty(); }
  const std::string& cause() const { return cause_; }
  const std::string& body() const { return body_; }
  const std::string& name() const { return pool_->backend().name; }

 private:
  void Attach(bool fresh) {
    int err = 0;
    pool_->TakeProbe(owner_->shard_->now_ns());
    link_ = pool_->Acquire(this, fresh, &err);
    if (link_ == nullptr) {
      ++owner_->shard_->metrics().upstream_connect_failures;
      Fail(absl::StrCat("no socket: ", strerror(-err)));
      return;
    }
    parser_.Begin(false);
    link_->stream().WriteCopy(request_);
  }
  void Drop() {
    if (link_) {
      link_->pool()->Discard(link_);
      link_ = nullptr;
    }
  }
  // A failure before any response byte: a reused link may have been closed
  // by the backend meanwhile, so it is tried once more on a fresh one; a
  // fresh link's failure counts against the backend.
  void FailEarly(std::string cause) {
    if (link_->reused() && !retried_) {
      retried_ = true;
      Drop();
      Attach(true);
      return;
    }
    pool_->ReportFailure(owner_->shard_->now_ns());
    Fail(std::move(cause));
  }
  void Fail(std::string cause) {
    done_ = true;
    cause_ = std::move(cause);
    Drop();
    owner_->FetchDone();
  }
  void Succeed(bool reusable) {
    done_ = true;
    if (reusable && link_->stream().write_idle()) {
      link_->pool()->Release(link_);
    } else {
      link_->pool()->Discard(link_);
    }
    link_ = nullptr;
    if (!reject_.empty()) {
      cause_ = std::move(reject_);
      body_.clear();
    }
    owner_->FetchDone();
  }

  // LinkUser
  void OnLinkConnected(int res) override {
    if (res == 0 || done_) return;
    ++owner_->shard_->metrics().upstream_connect_failures;
    pool_->ReportFailure(owner_->shard_->now_ns());
    Fail(res == -ECANCELED || res == -ETIMEDOUT ? std::string("connect timed out")
                                                : absl::StrCat("connect failed: ", strerror(-res)));
  }
  void OnLinkData(Slice data) override {
    if (done_) return;
    while (!data.empty()) {
      absl::StatusOr<size_t> n = parser_.Dispatch(data);
      if (!n.ok()) {
        Fail(absl::StrCat("invalid response: ", n.status().message()));
        return;
      }
      data.RemovePrefix(*n);
      if (body_.size() > kMaxAnswerBytes) {
        Fail("answer larger than 8 MiB");
        return;
      }
      if (complete_) {
        // Bytes after a complete response mean the link is out of step.
        Succeed(data.empty() && response_.keep_alive);
        return;
      }
      if (*n == 0) return;
    }
  }
  void OnLinkReadEnd(int res) override {
    if (done_) return;
    if (!parser_.started()) {
      FailEarly(res < 0 ? absl::StrCat("read failed: ", strerror(-res))
                        : std::string("closed the link before answering"));
      return;
    }
    absl::Status st = parser_.Finish();
    if (st.ok() && complete_) {
      Succeed(false);
      return;
    }
    Fail(st.ok() ? std::string("closed the link mid-response")
                 : absl::StrCat("closed mid-response: ", st.message()));
  }
  void OnLinkWriteProgress() override {}
  void OnLinkWriteError(int res) override {
    // The answer may still be readable; wait for the read side unless
    // nothing came at all.
    if (done_ || parser_.started()) return;
    FailEarly(absl::StrCat("write failed: ", strerror(-res)));
  }

  // H1ResponseSink
  void OnResponseHead(http::ResponseHead head) override {
    response_ = std::move(head);
    pool_->ReportSuccess();
    if (response_.status != 200) {
      reject_ = absl::StrCat("answered ", response_.status);
    } else if (const http::Header* ce = response_.Find("content-encoding");
               ce != nullptr && !http::EqualsIgnoreCase(ce->value, "identity")) {
      reject_ = absl::StrCat("answered with Content-Encoding ", ce->value);
    }
  }
  void OnResponseBody(Slice data) override {
    // A refused answer is read to its end only to keep the link.
    if (reject_.empty()) body_.append(data.data(), data.size());
  }
  void OnResponseComplete() override { complete_ = true; }

  Aggregate* owner_;
  UpstreamPool* pool_;
  const std::string request_;
  UpstreamLink* link_ = nullptr;
  http::H1ResponseParser parser_;
  http::ResponseHead response_;
  std::string body_;
  std::string reject_;  // why a complete answer is not used
  std::string cause_;   // why the fetch failed; empty: answered
  bool retried_ = false;
  bool complete_ = false;
  bool done_ = false;
};

std::optional<ModelList> Aggregate::Match(const http::RequestHead& head, size_t backends,
                                          bool filtered) {
  if ((backends < 2 && !filtered) || head.upgrade || head.has_body() ||
      (head.method != "GET" && head.method != "HEAD")) {
    return std::nullopt;
  }
  std::string_view path = head.target;
  path = path.substr(0, path.find('?'));
  if (path == "/api/tags") return ModelList::kTags;
  if (path == "/api/ps") return ModelList::kPs;
  if (path == "/v1/models") return ModelList::kOpenAi;
  return std::nullopt;
}

Aggregate::Aggregate(Shard* shard, Downstream* downstream, http::RequestHead head,
                     ClientInfo client, ModelList kind)
    : shard_(shard),
      downstream_(downstream),
      head_(std::move(head)),
      client_(std::move(client)),
      kind_(kind),
      record_(shard->obs().accounting(), client_.connection, shard->index(), shard->now_ns(),
              shard->now_unix_ns()),
      gate_(shard, downstream, &head_, &client_),
      deadline_([this] { TimedOut(); }) {
  ++shard_->metrics().active_streams;
}

Aggregate::~Aggregate() = default;

void Aggregate::Start() {
  gate_.Start([this](const AdmissionGate::Verdict& v) { OnVerdict(v); });
}

void Aggregate::OnVerdict(const AdmissionGate::Verdict& verdict) {
  if (!verdict.admitted) {
    finished_ = true;
    AnswerVerdict(verdict, &record_, downstream_);
    return;
  }
  downstream_->OnAdmitted();
  gate_.ResumeReading();
  FanOut();
}

void Aggregate::FanOut() {
  const policy::Admission& admission = gate_.admission();
  // What every backend is sent: the request as the Relay would forward it
  // (normalised path, the proxy's credentials and the Origin dropped),
  // asked as a GET for the whole list (a HEAD is answered from it), and
  // without what could make a backend answer other than a plain 200 JSON
  // body (compression, conditions, ranges).
  http::RequestHead up = head_;
  up.method = "GET";
  if (admission.path.forward != "*") up.target = admission.path.forward;
  const bool drop_credentials =
      gate_.policy().AuthFor(gate_.admission()) != policy::AuthMode::kNone;
  std::erase_if(up.headers, [&](const http::Header& h) {
    return http::EqualsIgnoreCase(h.name, "origin") ||
           http::EqualsIgnoreCase(h.name, "accept-encoding") ||
           http::EqualsIgnoreCase(h.name, "range") || absl::StartsWithIgnoreCase(h.name, "if-") ||
           (drop_credentials && (http::EqualsIgnoreCase(h.name, "authorization") ||
                                 http::EqualsIgnoreCase(h.name, "x-api-key")));
  });
  const int64_t now = shard_->now_ns();
  BackendSet& backends = shard_->backends();
  for (const std::unique_ptr<UpstreamPool>& pool : backends.pools()) {
    if (!backends.Usable(pool.get())) continue;
    std::string request;
    http::ForwardContext ctx{client_.addr, client_.scheme, pool->backend().host_header,
                             admission.client_text};
    http::AppendUpstreamRequestHead(up, ctx, &request);
    fetches_.push_back(std::make_unique<Fetch>(this, pool.get(), std::move(request)));
  }
  if (fetches_.empty()) {
    AnswerNoBackend();
    return;
  }
  record_.UpstreamStarted(now);
  shard_->Timers(shard_->config().health_timeout_ns)->Arm(&deadline_, now);
  // A fetch that fails at once (no socket) reports before the others have
  // started: the answer waits until all have.
  pending_ = fetches_.size();
  starting_ = true;
  for (const std::unique_ptr<Fetch>& fetch : fetches_) fetch->Start();
  starting_ = false;
  if (pending_ == 0) Answer();
}

void Aggregate::FetchDone() {
  --pending_;
  if (pending_ == 0 && !starting_ && !finished_) Answer();
}

void Aggregate::TimedOut() {
  for (const std::unique_ptr<Fetch>& fetch : fetches_) {
    fetch->Abandon("no answer within --health_timeout");
  }
  Answer();
}

void Aggregate::Answer() {
  finished_ = true;
  deadline_.Disarm();
  ModelListMerger merger(kind_);
  // A client whose policy lists its models sees only those.
  const policy::ModelPolicy* models = gate_.admission().model_policy;
  if (models != nullptr && !models->models.empty()) merger.set_filter(models);
  size_t answered = 0;
  for (const std::unique_ptr<Fetch>& fetch : fetches_) {
    absl::Status st =
        fetch->ok() ? merger.Add(fetch->body()) : absl::UnavailableError(fetch->cause());
    if (st.ok()) {
      ++answered;
    } else {
      AGGREGATE_LOG(WARN, client_, "%s %s: backend %s left out: %s", head_.method.c_str(),
                    head_.target.c_str(), fetch->name().c_str(), std::string(st.message()).c_str());
    }
  }
  if (answered == 0) {
    AGGREGATE_LOG(WARN, client_, "%s %s: 502 upstream unavailable: no backend answered",
                  head_.method.c_str(), head_.target.c_str());
    AnswerError(502, "upstream unavailable");
    return;
  }
  std::string body = merger.Finish();
  http::ResponseHead response;
  response.status = 200;
  response.headers.push_back(http::Header{"Content-Type", "application/json; charset=utf-8"});
  const policy::Admission& admission = gate_.admission();
  if (!admission.cors_origin.empty()) {
    for (auto& [name, value] : admission.ResponseHeaders()) {
      response.headers.push_back(http::Header{name, value});
    }
  }
  response.content_length = body.size();
  head_sent_ = true;
  record_.Answered(200, head_.is_head() ? 0 : body.size());
  downstream_->SendResponseHead(response);
  downstream_->SendResponseBody(Slice::FromString(std::move(body)));
  downstream_->SendResponseEnd();
}

// As the Relay's: every backend is left out for failures, 503 with the
// time until the first comes back.
void Aggregate::AnswerNoBackend() {
  finished_ = true;
  const int64_t wait_ns = shard_->backends().NextAvailableNs() - shard_->now_ns();
  const int64_t seconds = std::max<int64_t>(1, (wait_ns + 999'999'999) / 1'000'000'000);
  constexpr std::string_view kMessage = "no Ollama backend available";
  AGGREGATE_LOG(WARN, client_, "%s %s: 503 %s", head_.method.c_str(), head_.target.c_str(),
                kMessage.data());
  record_.Answered(503, http::JsonErrorBody(kMessage).size());
  downstream_->SendPolicyAnswer(503, kMessage,
                                {http::Header{"Retry-After", absl::StrCat(seconds)}});
}

void Aggregate::AnswerError(int status, std::string_view message) {
  finished_ = true;
  DropFetches();
  record_.Answered(status, http::JsonErrorBody(message).size());
  downstream_->SendError(status, message);
}

void Aggregate::DropFetches() {
  deadline_.Disarm();
  for (const std::unique_ptr<Fetch>& fetch : fetches_) fetch->Abandon("cancelled");
}

void Aggregate::Cancel() {
  if (!finished_) {
    record_.Cancelled();
    AGGREGATE_LOG(DEBUG, client_, "%s %s: client went away, upstream links closed",
                  head_.method.c_str(), head_.target.c_str());
  }
  finished_ = true;
  DropFetches();
  gate_.Cancel();
}

void Aggregate::AbandonRequest(int status, std::string_view message) {
  if (finished_) return;
  gate_.Cancel();
  AGGREGATE_LOG(INFO, client_, "%s %s: %d %s", head_.method.c_str(), head_.target.c_str(), status,
                std::string(message).c_str());
  AnswerError(status, message);
}

void Aggregate::Close() {
  if (closed_) return;
  closed_ = true;
  DropFetches();
  gate_.Close();
  --shard_->metrics().active_streams;
  record_.Account(shard_, head_, gate_.admission(), client_.addr);
}

}  // namespace sluice::core
