#include "core/proxy/request_record.h"

#include "core/observe/observability.h"
#include "core/server/shard.h"

namespace sluice::core {

RequestRecord::RequestRecord(bool accounting, uint64_t connection, int worker, int64_t start_ns,
                             int64_t start_unix_ns)
    : accounting_(accounting),
      connection_(connection),
      worker_(worker),
      start_ns_(start_ns),
      start_unix_ns_(start_unix_ns) {}

void RequestRecord::ExpectRequestBody() {
  if (accounting_) request_scan_.emplace();
}

void RequestRecord::RequestBody(std::string_view bytes) {
  if (request_scan_) request_scan_->Feed(bytes);
}

std::optional<int64_t> RequestRecord::load_duration_ns() const {
  if (!tokens_) return std::nullopt;
  return tokens_->scanner.usage().load_duration_ns;
}

void RequestRecord::UpstreamStarted(int64_t now_ns) {
  if (upstream_start_ns_ < 0) upstream_start_ns_ = now_ns;
}

void RequestRecord::Answered(int status, uint64_t body_bytes) {
  status_ = status;
  body_bytes_sent_ = body_bytes;
}

void RequestRecord::ResponseStarted(const http::ResponseHead& response, bool head_request,
                                    std::string_view route_match) {
  status_ = response.status;
  // Only the generation routes answer with tokens; a model list or a pull's
  // progress is not read.
  if (!accounting_ || response.status < 200 || response.status >= 300 || head_request ||
      !policy::IsGenerationPath(absl::string_view(route_match.data(), route_match.size()))) {
    return;
  }
  const http::Header* ct = response.Find("content-type");
  const BodyFormat format =
      FormatForContentType(ct ? std::string_view(ct->value) : std::string_view());
  if (format != BodyFormat::kOther) tokens_ = std::make_unique<TokenTrack>(format);
}

void RequestRecord::ResponseBody(std::string_view bytes, int64_t now_ns) {
  body_bytes_sent_ += bytes.size();
  if (tokens_) {
    if (size_t events = tokens_->scanner.Feed(bytes)) OnTokens(events, now_ns);
  }
}

void RequestRecord::ResponseComplete(int64_t now_ns) {
  if (tokens_) {
    if (size_t events = tokens_->scanner.Finish()) OnTokens(events, now_ns);
  }
}

void RequestRecord::OnTokens(size_t events, int64_t now_ns) {
  // Events that arrive in one read share its time: the gaps between them
  // are zero, as the client sees them.
  TokenTrack& t = *tokens_;
  if (t.first_ns < 0) {
    t.first_ns = now_ns;
    t.last_ns = now_ns;
    --events;
  }
  for (; events > 0; --events) {
    const int64_t gap = now_ns - t.last_ns;
    t.gaps.Add(gap);
    t.gap_histogram.Observe(gap);
    t.last_ns = now_ns;
  }
}

void RequestRecord::Count(MetricsShard* m, int status, int64_t request_ns, int64_t upstream_ns,
                          std::string_view group, std::string_view principal,
                          std::string_view model, int64_t prompt, int64_t completion) const {
  RouteStats& route = m->Route(group);
  ++route.by_status[status];
  route.request.Observe(request_ns);
  if (upstream_ns >= 0) route.upstream.Observe(upstream_ns);
  if (cancelled_) ++m->client_cancellations;
  if (!tokens_) return;
  if (tokens_->first_ns >= 0) route.first_token.Observe(tokens_->first_ns - start_ns_);
  route.token_gap.Merge(tokens_->gap_histogram);
  if (prompt >= 0 || completion >= 0) {
    m->AddTokens(principal, model.empty() ? std::string_view("-") : model, prompt, completion);
  }
}

bool RequestRecord::Finish(int64_t now_ns, const http::RequestHead& head,
                           const policy::Admission& admission, std::string_view client_addr,
                           MetricsShard* metrics, AccessRecord* line) {
  if (finished_) return false;
  finished_ = true;
  if (!accounting_) return false;
  // nginx logs 499 for a request whose client closed the connection first.
  const int status = cancelled_ ? 499 : status_;
  const int64_t request_ns = now_ns - start_ns_;
  const int64_t upstream_ns = upstream_start_ns_ >= 0 ? now_ns - upstream_start_ns_ : -1;
  const std::string_view group =
      admission.group.empty() ? std::string_view("other") : std::string_view(admission.group);
  const std::string_view principal =
      admission.principal.empty() ? std::string_view("-") : std::string_view(admission.principal);
  std::string_view model;
  if (request_scan_ && !request_scan_->model().empty()) model = request_scan_->model();
  if (model.empty() && tokens_ && !tokens_->scanner.usage().model.empty()) {
    model = tokens_->scanner.usage().model;
  }
  int64_t prompt = -1;
  int64_t completion = -1;
  if (tokens_) {
    const TokenUsage& u = tokens_->scanner.usage();
    if (u.prompt_tokens) prompt = *u.prompt_tokens;
    if (u.completion_tokens) {
      completion = *u.completion_tokens;
    } else if (u.token_events > 0) {
      // A stream cut short (or without a final count): what was relayed.
      completion = static_cast<int64_t>(u.token_events);
    }
  }
  if (metrics) {
    Count(metrics, status, request_ns, upstream_ns, group, principal, model, prompt, completion);
  }
  if (line == nullptr) return true;
  AccessRecord& r = *line;
  DescribeRequest(head, &r);
  if (!original_target_.empty()) r.target = original_target_;
  r.start_unix_ns = start_unix_ns_;
  r.remote_addr =
      admission.client_text.empty() ? client_addr : std::string_view(admission.client_text);
  // As nginx's $remote_user: the Basic user name sent, whether or not its
  // password was right (a refused key names no one).
  r.user = !admission.user_name.empty() ? std::string_view(admission.user_name)
                                        : std::string_view(admission.basic_user);
  r.status = status;
  r.body_bytes_sent = body_bytes_sent_;
  r.request_time_ns = request_ns;
  r.upstream_time_ns = upstream_ns;
  r.queue_wait_ns = queue_wait_ns_;
  r.backend = backend_;
  r.principal = admission.principal;
  r.route = group;
  r.model = model;
  if (tokens_) {
    r.stream = tokens_->scanner.format() == BodyFormat::kNdjson ||
               tokens_->scanner.format() == BodyFormat::kSse;
    if (tokens_->first_ns >= 0) r.ttft_ns = tokens_->first_ns - start_ns_;
    r.gap_p50_ns = tokens_->gaps.p50_ns();
    r.gap_max_ns = tokens_->gaps.max_ns();
  }
  r.prompt_tokens = prompt;
  r.completion_tokens = completion;
  r.cancelled = cancelled_;
  r.worker = worker_;
  r.connection = connection_;
  return true;
}

void RequestRecord::Account(Shard* shard, const http::RequestHead& head,
                            const policy::Admission& admission, std::string_view client_addr) {
  const Observability& obs = shard->obs();
  AccessRecord line;
  const bool log = obs.access_log != nullptr;
  if (Finish(shard->now_ns(), head, admission, client_addr,
             obs.metrics ? &shard->metrics() : nullptr, log ? &line : nullptr) &&
      log) {
    shard->LogAccess(line);
  }
}

}  // namespace sluice::core
