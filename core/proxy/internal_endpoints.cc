#include "core/proxy/internal_endpoints.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/observe/log.h"
#include "core/observe/observability.h"
#include "core/server/shard.h"
#include "core/upstream/resolver.h"
#include "core/upstream/slot_scheduler.h"
#include "http/serialize.h"

namespace sluice::core {
namespace {
// A scrape answers with the shards it has after this long (a worker that
// already stopped never answers).
constexpr int64_t kScrapeTimeoutNs = 1'000'000'000;
}  // namespace

#define ENDPOINT_LOG(level, fmt, ...)                                                       \
  LOG_##level("*%llu client %s: " fmt, static_cast<unsigned long long>(client_.connection), \
              client_.addr.c_str(), ##__VA_ARGS__)

std::optional<InternalEndpoint::Kind> InternalEndpoint::Match(const Observability& obs,
                                                              const http::RequestHead& head) {
  if (head.method == "OPTIONS" && head.target == "*") return std::nullopt;
  std::string_view path = head.target;
  path = path.substr(0, path.find('?'));
  if (!obs.status_path.empty() && path == obs.status_path) return Kind::kStatus;
  if (obs.metrics && !obs.metrics_path.empty() && path == obs.metrics_path) {
    return Kind::kMetrics;
  }
  return std::nullopt;
}

InternalEndpoint::InternalEndpoint(Shard* shard, Downstream* downstream, http::RequestHead head,
                                   ClientInfo client, Kind kind)
    : shard_(shard),
      downstream_(downstream),
      head_(std::move(head)),
      client_(std::move(client)),
      kind_(kind),
      record_(shard->obs().accounting(), client_.connection, shard->index(), shard->now_ns(),
              shard->now_unix_ns()),
      gate_(shard, downstream, &head_, &client_),
      scrape_timer_([this] {
        ENDPOINT_LOG(WARN, "scrape: %d worker(s) did not answer", scrape_->pending);
        Answer();
      }) {
  ++shard_->metrics().active_streams;
}

InternalEndpoint::~InternalEndpoint() {
  if (scrape_) scrape_->endpoint = nullptr;
}

void InternalEndpoint::Start() {
  gate_.StartInternal(shard_->obs().status_allow, [this](const AdmissionGate::Verdict& v) {
    if (v.admitted) {
      Scrape();
    } else {
      finished_ = true;
      AnswerVerdict(v, &record_, downstream_);
    }
  });
}

void InternalEndpoint::Scrape() {
  gate_.PauseReading();
  // Every worker copies its own counters on its own thread (they are plain
  // integers nobody else touches) and posts the copy back here.
  scrape_ =
      std::make_shared<ScrapeTicket>(ScrapeTicket{this, shard_, 0, shard_->SnapshotMetrics()});
  for (Shard* w : shard_->obs().shards) {
    if (w == shard_) continue;
    ++scrape_->pending;
    w->Post([t = scrape_, w] {
      auto shard = std::make_shared<MetricsShard>(w->SnapshotMetrics());
      t->origin->Post([t, shard] {
        t->total.Merge(*shard);
        if (--t->pending == 0 && t->endpoint) t->endpoint->Answer();
      });
    });
  }
  if (scrape_->pending == 0) {
    Answer();
  } else {
    shard_->Timers(kScrapeTimeoutNs)->Arm(&scrape_timer_, shard_->now_ns());
  }
}

std::string RenderStatusJson(const MetricsShard& total) {
  std::string out = "{";
  const std::pair<const char*, int64_t> fields[] = {
      {"active_connections",
       total.connections_reading + total.connections_writing + total.connections_waiting},
      {"accepts", static_cast<int64_t>(total.connections_accepted)},
      {"handled", static_cast<int64_t>(total.connections_handled)},
      {"requests", static_cast<int64_t>(total.requests)},
      {"reading", total.connections_reading},
      {"writing", total.connections_writing},
      {"waiting", total.connections_waiting},
  };
  for (const auto& [name, value] : fields) absl::StrAppend(&out, "\"", name, "\":", value, ",");
  out += "\"backends\":[";
  static constexpr const char* kKinds[] = {"loaded", "queued", "spill", "cold"};
  bool first = true;
  for (const BackendStats& b : total.backends) {
    if (b.hidden) continue;
    if (!first) out += ",";
    first = false;
    out += "{\"name\":\"";
    http::AppendJsonEscaped(b.name, &out);
    if (!b.address.empty()) absl::StrAppend(&out, "\",\"address\":\"", b.address);
    absl::StrAppend(&out, "\",\"up\":", b.up ? "true" : "false", ",\"in_flight\":", b.in_flight,
                    ",\"requests\":", b.requests, ",\"failures\":", b.failures,
                    ",\"failovers\":", b.failovers, ",\"loaded\":[");
    for (size_t m = 0; m < b.loaded.size(); ++m) {
      out += m > 0 ? ",\"" : "\"";
      http::AppendJsonEscaped(b.loaded[m], &out);
      out += "\"";
    }
    out += "],\"routed\":{";
    for (size_t k = 0; k < 4; ++k) {
      absl::StrAppend(&out, k > 0 ? "," : "", "\"", kKinds[k], "\":", b.routed[k]);
    }
    out += "}}";
  }
  out += "],\"queues\":[";
  for (size_t i = 0; i < total.queues.size(); ++i) {
    const QueueGauge& q = total.queues[i];
    out += i > 0 ? ",{\"backend\":\"" : "{\"backend\":\"";
    http::AppendJsonEscaped(q.backend, &out);
    out += "\",\"model\":\"";
    http::AppendJsonEscaped(q.model, &out);
    absl::StrAppend(&out, "\",\"slots\":", q.slots, ",\"in_use\":", q.in_use,
                    ",\"waiting\":", q.waiting, "}");
  }
  // Slot time per principal, in seconds, sorted.
  std::vector<std::pair<std::string, int64_t>> slot_time(total.slot_ns.begin(),
                                                         total.slot_ns.end());
  std::sort(slot_time.begin(), slot_time.end());
  out += "],\"slot_seconds\":{";
  for (size_t i = 0; i < slot_time.size(); ++i) {
    out += i > 0 ? ",\"" : "\"";
    http::AppendJsonEscaped(slot_time[i].first, &out);
    absl::StrAppend(&out, "\":", absl::StrFormat("%.3f", slot_time[i].second / 1e9));
  }
  out += "}}\n";
  return out;
}

// The slot queues now, from the scheduler all workers share.
void NoteQueues(const SlotScheduler* scheduler, MetricsShard* total) {
  if (scheduler == nullptr) return;
  for (SlotScheduler::QueueStats& q : scheduler->Stats()) {
    total->queues.push_back(QueueGauge{std::move(q.backend), std::move(q.model), q.slots, q.in_use,
                                       static_cast<int64_t>(q.waiting)});
  }
}

void NoteAddresses(const std::vector<BackendConfig>& backends, MetricsShard* total) {
  for (size_t i = 0; i < backends.size() && i < total->backends.size(); ++i) {
    const BackendConfig& b = backends[i];
    if (b.dns == nullptr) continue;
    BackendStats& s = total->backends[i];
    if (SocketAddress a; CurrentAddress(b, &a)) {
      s.address = AddressText(a);
    } else {
      s.up = 0;
      s.hidden = b.dns_slot > 0 && s.requests == 0;
    }
  }
}

void InternalEndpoint::Answer() {
  if (finished_) return;
  finished_ = true;
  scrape_timer_.Disarm();
  NoteAddresses(shard_->config().backends, &scrape_->total);
  NoteQueues(shard_->config().slot_scheduler, &scrape_->total);
  const Observability& obs = shard_->obs();
  std::string body;
  http::ResponseHead head;
  head.status = 200;
  if (kind_ == Kind::kMetrics) {
    ProcessInfo info = obs.info;
    if (obs.access_log) info.access_log_dropped_lines = obs.access_log->dropped_lines();
    body = RenderPrometheus(scrape_->total, info);
    head.headers.push_back(
        http::Header{"Content-Type", "text/plain; version=0.0.4; charset=utf-8"});
  } else if (absl::StrContains(head_.target, "format=json")) {
    body = RenderStatusJson(scrape_->total);
    head.headers.push_back(http::Header{"Content-Type", "application/json"});
  } else {
    body = RenderStubStatus(scrape_->total);
    head.headers.push_back(http::Header{"Content-Type", "text/plain"});
  }
  head.headers.push_back(http::Header{"Cache-Control", "no-store"});
  head.content_length = body.size();
  scrape_->endpoint = nullptr;
  scrape_.reset();
  head_sent_ = true;
  record_.Answered(200, head_.is_head() ? 0 : body.size());
  gate_.ResumeReading();
  downstream_->SendResponseHead(head);
  downstream_->SendResponseBody(Slice::FromString(std::move(body)));
  downstream_->SendResponseEnd();
}

void InternalEndpoint::Cancel() {
  if (!finished_) {
    record_.Cancelled();
    ENDPOINT_LOG(DEBUG, "%s %s: client went away, upstream link closed", head_.method.c_str(),
                 head_.target.c_str());
  }
  finished_ = true;
  gate_.Cancel();
}

void InternalEndpoint::AbandonRequest(int status, std::string_view message) {
  if (finished_) return;
  gate_.Cancel();
  ENDPOINT_LOG(INFO, "%s %s: %d %s", head_.method.c_str(), head_.target.c_str(), status,
               std::string(message).c_str());
  finished_ = true;
  record_.Answered(status, http::JsonErrorBody(message).size());
  downstream_->SendError(status, message);
}

void InternalEndpoint::Close() {
  if (closed_) return;
  closed_ = true;
  if (scrape_) scrape_->endpoint = nullptr;
  gate_.Close();
  --shard_->metrics().active_streams;
  record_.Account(shard_, head_, gate_.admission(), client_.addr);
}

}  // namespace sluice::core
