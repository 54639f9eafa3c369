#include "core/observe/metrics.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <map>
#include <tuple>
#include <vector>

#include "absl/strings/string_view.h"

namespace sluice::core {
namespace {

// Bounds in seconds. Generation requests run for minutes (the baseline's
// proxy_read_timeout is 600 s), so the request and upstream buckets reach
// 600 s; API calls finish in milliseconds, hence the fine low end.
constexpr double kRequestBounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                     2.5,   5,    10,    30,   60,  120,  300, 600};
// Prompt evaluation dominates the first token: tens of ms for a short
// prompt on a warm model, seconds for a long one or a cold load.
constexpr double kFirstTokenBounds[] = {0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60};
// One token takes 5-50 ms on a GPU; batching upstream and TCP coalescing
// make gaps of ~1 ms, model swaps make gaps of seconds.
constexpr double kTokenGapBounds[] = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.05,
                                      0.1,   0.2,    0.5,   1,    2,    5};

// A request waits for a slot from nothing (one free) to a few generations
// (seconds to minutes), up to --queue_timeout (120 s by default).
constexpr double kQueueWaitBounds[] = {0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1,   2.5,
                                       5,     10,   20,   30,  60,   120, 300, 600};

static_assert(std::size(kRequestBounds) <= kMaxBuckets);
static_assert(std::size(kQueueWaitBounds) <= kMaxBuckets);
static_assert(std::size(kFirstTokenBounds) <= kMaxBuckets);
static_assert(std::size(kTokenGapBounds) <= kMaxBuckets);

// The same bounds in integer nanoseconds, so that Observe compares exactly
// (0.005 s is not representable as a double; 5000000 ns is).
struct NsBounds {
  int64_t ns[kMaxBuckets];
  size_t size;
};

template <size_t N>
constexpr NsBounds ToNs(const double (&bounds)[N]) {
  NsBounds out{};
  for (size_t i = 0; i < N; ++i) out.ns[i] = static_cast<int64_t>(bounds[i] * 1e9 + 0.5);
  out.size = N;
  return out;
}

constexpr NsBounds kRequestNs = ToNs(kRequestBounds);
constexpr NsBounds kFirstTokenNs = ToNs(kFirstTokenBounds);
constexpr NsBounds kTokenGapNs = ToNs(kTokenGapBounds);
constexpr NsBounds kQueueWaitNs = ToNs(kQueueWaitBounds);

const NsBounds& NsBoundsOf(HistogramKind kind) {
  switch (kind) {
    case HistogramKind::kFirstToken:
      return kFirstTokenNs;
    case HistogramKind::kTokenGap:
      return kTokenGapNs;
    case HistogramKind::kQueueWait:
      return kQueueWaitNs;
    case HistogramKind::kRequest:
    case HistogramKind::kUpstream:
      break;
  }
  return kRequestNs;
}

absl::string_view ToAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

}  // namespace

BucketSpan BucketBounds(HistogramKind kind) {
  switch (kind) {
    case HistogramKind::kFirstToken:
      return {kFirstTokenBounds, std::size(kFirstTokenBounds)};
    case HistogramKind::kTokenGap:
      return {kTokenGapBounds, std::size(kTokenGapBounds)};
    case HistogramKind::kQueueWait:
      return {kQueueWaitBounds, std::size(kQueueWaitBounds)};
    case HistogramKind::kRequest:
    case HistogramKind::kUpstream:
      break;
  }
  return {kRequestBounds, std::size(kRequestBounds)};
}

void Histogram::Observe(int64_t ns) {
  if (ns < 0) ns = 0;  // a clock step; count it rather than lose it
  const NsBounds& b = NsBoundsOf(kind_);
  // At most 16 bounds: a linear scan beats a binary search here.
  size_t i = 0;
  while (i < b.size && ns > b.ns[i]) ++i;
  ++buckets_[i];
  sum_ns_ += ns;
}

void Histogram::Merge(const Histogram& other) {
  for (size_t i = 0; i < buckets_.size(); ++i) buckets_[i] += other.buckets_[i];
  sum_ns_ += other.sum_ns_;
}

uint64_t Histogram::count() const {
  uint64_t n = 0;
  for (uint64_t b : buckets_) n += b;
  return n;
}

int GapSketch::Slot(int64_t gap_ns) {
  if (gap_ns < 1000) return 0;
  int slot = static_cast<int>(std::floor(8.0 * std::log2(static_cast<double>(gap_ns) / 1000.0)));
  return std::clamp(slot, 0, kSlots - 1);
}

void GapSketch::Add(int64_t gap_ns) {
  if (gap_ns < 0) gap_ns = 0;
  ++slots_[Slot(gap_ns)];
  if (count_ == 0 || gap_ns > max_ns_) max_ns_ = gap_ns;
  ++count_;
}

int64_t GapSketch::p50_ns() const {
  if (count_ == 0) return -1;
  if (count_ == 1) return max_ns_;
  // Nearest rank: the ceil(n/2)-th smallest gap.
  const uint64_t rank = (count_ + 1) / 2;
  uint64_t seen = 0;
  int slot = 0;
  for (; slot < kSlots; ++slot) {
    seen += slots_[slot];
    if (seen >= rank) break;
  }
  // The slot's geometric middle is within 2^(1/16) (4.4 %) of every value
  // in the slot. The first and last slots are open-ended, so the result is
  // also capped at the exact maximum.
  double mid_us = std::exp2((slot + 0.5) / 8.0);
  int64_t mid_ns = static_cast<int64_t>(std::llround(mid_us * 1000.0));
  return std::min(mid_ns, max_ns_);
}

void RouteStats::Merge(const RouteStats& other) {
  for (const auto& [code, n] : other.by_status) by_status[code] += n;
  request.Merge(other.request);
  upstream.Merge(other.upstream);
  first_token.Merge(other.first_token);
  token_gap.Merge(other.token_gap);
}

RouteStats& MetricsShard::Route(std::string_view group) {
  auto it = routes.find(ToAbsl(group));
  if (it != routes.end()) return it->second;
  return routes[std::string(group)];
}

void MetricsShard::AddTokens(std::string_view principal, std::string_view model, int64_t prompt,
                             int64_t completion) {
  std::pair<std::string, std::string> key(principal, model);
  auto it = tokens.find(key);
  if (it == tokens.end()) {
    if (tokens.size() >= kMaxTokenSeries) key.second = "_other";
    it = tokens.try_emplace(std::move(key)).first;
  }
  TokenTotals& t = it->second;
  ++t.requests;
  if (prompt > 0) t.prompt += static_cast<uint64_t>(prompt);
  if (completion > 0) t.completion += static_cast<uint64_t>(completion);
}

void MetricsShard::AddSlotTime(std::string_view principal, int64_t ns) {
  if (ns <= 0) return;
  std::string key(principal.empty() ? "-" : principal);
  auto it = slot_ns.find(key);
  if (it == slot_ns.end()) {
    if (slot_ns.size() >= kMaxTokenSeries) key = "_other";
    it = slot_ns.try_emplace(std::move(key), 0).first;
  }
  it->second += ns;
}

void BackendStats::Merge(const BackendStats& o) {
  if (name.empty()) {
    name = o.name;
    up = o.up;
    loaded = o.loaded;
  }
  in_flight += o.in_flight;
  requests += o.requests;
  failures += o.failures;
  failovers += o.failovers;
  for (size_t k = 0; k < 4; ++k) routed[k] += o.routed[k];
  queue_wait.Merge(o.queue_wait);
}

void MetricsShard::Merge(const MetricsShard& o) {
  if (backends.size() < o.backends.size()) backends.resize(o.backends.size());
  for (size_t i = 0; i < o.backends.size(); ++i) backends[i].Merge(o.backends[i]);
  connections_accepted += o.connections_accepted;
  connections_handled += o.connections_handled;
  requests += o.requests;
  tls_handshakes += o.tls_handshakes;
  tls_resumptions += o.tls_resumptions;
  tls_handshake_failures += o.tls_handshake_failures;
  upstream_connects += o.upstream_connects;
  upstream_reused += o.upstream_reused;
  upstream_connect_failures += o.upstream_connect_failures;
  upstream_failovers += o.upstream_failovers;
  route_loaded += o.route_loaded;
  route_queued += o.route_queued;
  route_spill += o.route_spill;
  route_cold += o.route_cold;
  route_not_found += o.route_not_found;
  rejected_auth += o.rejected_auth;
  rejected_denied += o.rejected_denied;
  rejected_rate += o.rejected_rate;
  rejected_concurrency += o.rejected_concurrency;
  rejected_busy += o.rejected_busy;
  rejected_overload += o.rejected_overload;
  connections_dropped += o.connections_dropped;
  client_cancellations += o.client_cancellations;
  rejected_queue_key += o.rejected_queue_key;
  rejected_queue_full += o.rejected_queue_full;
  rejected_queue_timeout += o.rejected_queue_timeout;
  rejected_model += o.rejected_model;
  rejected_registry += o.rejected_registry;
  rejected_body += o.rejected_body;
  rejected_over_max += o.rejected_over_max;
  rejected_images += o.rejected_images;
  for (size_t i = 0; i < std::size(body_rewrites); ++i) body_rewrites[i] += o.body_rewrites[i];
  connections_reading += o.connections_reading;
  connections_writing += o.connections_writing;
  connections_waiting += o.connections_waiting;
  active_streams += o.active_streams;
  upstream_open += o.upstream_open;
  upstream_idle += o.upstream_idle;
  recv_buffers_in_use += o.recv_buffers_in_use;
  recv_buffer_copies += o.recv_buffer_copies;
  recv_buffer_pressure_pauses += o.recv_buffer_pressure_pauses;
  for (const auto& [name, stats] : o.routes) routes[name].Merge(stats);
  // The total is not capped again: each shard already bounds its own
  // series, so the total holds at most workers * kMaxTokenSeries.
  for (const auto& [key, t] : o.tokens) {
    TokenTotals& mine = tokens[key];
    mine.requests += t.requests;
    mine.prompt += t.prompt;
    mine.completion += t.completion;
  }
  for (const auto& [key, ns] : o.slot_ns) slot_ns[key] += ns;
}

namespace {

using Labels = std::vector<std::pair<std::string_view, std::string_view>>;

void AppendEscapedLabelValue(std::string_view v, std::string* out) {
  for (char c : v) {
    switch (c) {
      case '\\':
        out->append("\\\\");
        break;
      case '"':
        out->append("\\\"");
        break;
      case '\n':
        out->append("\\n");
        break;
      default:
        out->push_back(c);
    }
  }
}

void AppendFamily(std::string* out, std::string_view name, std::string_view type,
                  std::string_view help) {
  out->append("# HELP ").append(name).append(" ").append(help).append("\n");
  out->append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

void AppendSample(std::string* out, std::string_view name, const Labels& labels,
                  std::string_view value) {
  out->append(name);
  if (!labels.empty()) {
    out->push_back('{');
    for (size_t i = 0; i < labels.size(); ++i) {
      if (i) out->push_back(',');
      out->append(labels[i].first).append("=\"");
      AppendEscapedLabelValue(labels[i].second, out);
      out->push_back('"');
    }
    out->push_back('}');
  }
  out->push_back(' ');
  out->append(value);
  out->push_back('\n');
}

std::string U(uint64_t v) { return std::to_string(v); }
std::string I(int64_t v) { return std::to_string(v); }

// Nanoseconds as exact decimal seconds ("1.5", "0.000123", "0"): a sum of
// days of request times keeps every nanosecond, which %g would round away.
std::string NsToSeconds(int64_t ns) {
  const bool neg = ns < 0;
  uint64_t u = neg ? 0 - static_cast<uint64_t>(ns) : static_cast<uint64_t>(ns);
  char buf[40];
  int n = snprintf(buf, sizeof(buf), "%s%" PRIu64 ".%09" PRIu64, neg ? "-" : "", u / 1000000000u,
                   u % 1000000000u);
  while (n > 0 && buf[n - 1] == '0') --n;
  if (n > 0 && buf[n - 1] == '.') --n;
  return std::string(buf, static_cast<size_t>(n));
}

std::string Bound(double b) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%.9g", b);
  return buf;
}

void AppendCounter(std::string* out, std::string_view name, std::string_view help, uint64_t v) {
  AppendFamily(out, name, "counter", help);
  AppendSample(out, name, {}, U(v));
}

void AppendGauge(std::string* out, std::string_view name, std::string_view help, int64_t v) {
  AppendFamily(out, name, "gauge", help);
  AppendSample(out, name, {}, I(v));
}

// One labelled histogram's _bucket (cumulative, ending in +Inf), _sum and
// _count samples; nothing when it is empty.
void AppendHistogramSamples(std::string* out, std::string_view name, std::string_view label,
                            std::string_view value, const Histogram& h) {
  const uint64_t count = h.count();
  if (count == 0) return;
  const std::string bucket_name = std::string(name) + "_bucket";
  BucketSpan bounds = BucketBounds(h.kind());
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds.size; ++i) {
    cumulative += h.buckets()[i];
    std::string le = Bound(bounds.bounds[i]);
    AppendSample(out, bucket_name, {{label, value}, {"le", le}}, U(cumulative));
  }
  AppendSample(out, bucket_name, {{label, value}, {"le", "+Inf"}}, U(count));
  AppendSample(out, std::string(name) + "_sum", {{label, value}}, NsToSeconds(h.sum_ns()));
  AppendSample(out, std::string(name) + "_count", {{label, value}}, U(count));
}

void AppendHistogramFamily(std::string* out, std::string_view name, std::string_view help,
                           const std::vector<const std::string*>& route_names,
                           const MetricsShard& total, const Histogram& (*pick)(const RouteStats&)) {
  AppendFamily(out, name, "histogram", help);
  const std::string bucket_name = std::string(name) + "_bucket";
  const std::string sum_name = std::string(name) + "_sum";
  const std::string count_name = std::string(name) + "_count";
  for (const std::string* route : route_names) {
    AppendHistogramSamples(out, name, "route", *route, pick(total.routes.find(*route)->second));
  }
}

void AppendProcessFamilies(std::string* out, const ProcessInfo& info) {
  AppendFamily(out, "sluice_build_info", "gauge",
               "Always 1; the version label names the running build.");
  AppendSample(out, "sluice_build_info", {{"version", info.version}}, "1");
  AppendFamily(out, "sluice_start_time_seconds", "gauge",
               "Unix time at which the process started.");
  char buf[40];
  snprintf(buf, sizeof(buf), "%.3f", info.start_time_seconds);
  AppendSample(out, "sluice_start_time_seconds", {}, buf);
  AppendGauge(out, "sluice_workers", "Worker threads (one event loop each).", info.workers);
}

void AppendConnectionFamilies(std::string* out, const MetricsShard& total) {
  AppendCounter(out, "sluice_connections_accepted_total",
                "Downstream connections accepted (stub_status accepts).",
                total.connections_accepted);
  AppendCounter(out, "sluice_connections_handled_total",
                "Downstream connections handled (stub_status handled).", total.connections_handled);
  AppendFamily(out, "sluice_connections", "gauge",
               "Open downstream connections by state, as stub_status counts them.");
  AppendSample(out, "sluice_connections", {{"state", "reading"}}, I(total.connections_reading));
  AppendSample(out, "sluice_connections", {{"state", "writing"}}, I(total.connections_writing));
  AppendSample(out, "sluice_connections", {{"state", "waiting"}}, I(total.connections_waiting));
}

// Route names in order, so that the output is deterministic.
std::vector<const std::string*> SortedRouteNames(const MetricsShard& total) {
  std::vector<const std::string*> route_names;
  route_names.reserve(total.routes.size());
  for (const auto& [name, stats] : total.routes) route_names.push_back(&name);
  std::sort(route_names.begin(), route_names.end(),
            [](const std::string* a, const std::string* b) { return *a < *b; });
  return route_names;
}

// Codes ascending within each route.
void AppendRequestCounts(std::string* out, const std::vector<const std::string*>& route_names,
                         const MetricsShard& total) {
  AppendFamily(out, "sluice_http_requests_total", "counter",
               "Responses by route group and status code (0: not a valid code).");
  for (const std::string* route : route_names) {
    std::map<int, uint64_t> codes;
    for (const auto& [code, n] : total.routes.find(*route)->second.by_status) {
      codes[(code >= 100 && code <= 599) ? code : 0] += n;
    }
    for (const auto& [code, n] : codes) {
      std::string code_text = std::to_string(code);
      AppendSample(out, "sluice_http_requests_total", {{"route", *route}, {"code", code_text}},
                   U(n));
    }
  }
}

void AppendRouteHistograms(std::string* out, const std::vector<const std::string*>& route_names,
                           const MetricsShard& total) {
  AppendHistogramFamily(out, "sluice_request_duration_seconds",
                        "From the request head to the last response byte ($request_time).",
                        route_names, total,
                        [](const RouteStats& r) -> const Histogram& { return r.request; });
  AppendHistogramFamily(
      out, "sluice_upstream_response_seconds",
      "From taking an upstream link to the complete upstream response ($upstream_response_time).",
      route_names, total, [](const RouteStats& r) -> const Histogram& { return r.upstream; });
  AppendHistogramFamily(out, "sluice_time_to_first_token_seconds",
                        "From the request head to the first token event relayed.", route_names,
                        total,
                        [](const RouteStats& r) -> const Histogram& { return r.first_token; });
  AppendHistogramFamily(out, "sluice_inter_token_gap_seconds",
                        "Between two token events of one streamed response.", route_names, total,
                        [](const RouteStats& r) -> const Histogram& { return r.token_gap; });
}

// Sorted by principal, then model.
void AppendTokenFamilies(std::string* out, const MetricsShard& total) {
  using TokenEntry = std::pair<const std::pair<std::string, std::string>*, const TokenTotals*>;
  std::vector<TokenEntry> token_entries;
  token_entries.reserve(total.tokens.size());
  for (const auto& [key, t] : total.tokens) token_entries.emplace_back(&key, &t);
  std::sort(token_entries.begin(), token_entries.end(),
            [](const TokenEntry& a, const TokenEntry& b) { return *a.first < *b.first; });
  AppendFamily(out, "sluice_tokens_total", "counter",
               "Tokens by principal and model, as Ollama reported them (model _other: past "
               "the series cap).");
  for (const auto& [key, t] : token_entries) {
    AppendSample(out, "sluice_tokens_total",
                 {{"key", key->first}, {"model", key->second}, {"type", "prompt"}}, U(t->prompt));
    AppendSample(out, "sluice_tokens_total",
                 {{"key", key->first}, {"model", key->second}, {"type", "completion"}},
                 U(t->completion));
  }
  AppendFamily(out, "sluice_token_requests_total", "counter",
               "Requests counted in sluice_tokens_total, by principal and model.");
  for (const auto& [key, t] : token_entries) {
    AppendSample(out, "sluice_token_requests_total", {{"key", key->first}, {"model", key->second}},
                 U(t->requests));
  }
}

void AppendUpstreamFamilies(std::string* out, const MetricsShard& total) {
  AppendGauge(out, "sluice_active_streams", "Requests in flight.", total.active_streams);
  AppendFamily(out, "sluice_upstream_connections", "gauge",
               "Upstream links: open (all, busy or idle) and idle (kept alive in the pool).");
  AppendSample(out, "sluice_upstream_connections", {{"state", "open"}}, I(total.upstream_open));
  AppendSample(out, "sluice_upstream_connections", {{"state", "idle"}}, I(total.upstream_idle));
  AppendCounter(out, "sluice_upstream_connects_total", "Upstream connections opened.",
                total.upstream_connects);
  AppendCounter(out, "sluice_upstream_reused_total", "Requests sent on a kept-alive upstream link.",
                total.upstream_reused);
  AppendCounter(out, "sluice_upstream_connect_failures_total",
                "Upstream connection attempts that failed.", total.upstream_connect_failures);
  AppendCounter(out, "sluice_upstream_failovers_total",
                "Requests sent to another backend after theirs failed before answering.",
                total.upstream_failovers);
  AppendFamily(out, "sluice_route_decisions_total", "counter",
               "Requests routed by the model they name: loaded (where it is loaded, a slot "
               "free), queued (loaded, slots busy), spill (loaded elsewhere on a free backend "
               "rather than wait), cold (loaded nowhere), not_found (404).");
  AppendSample(out, "sluice_route_decisions_total", {{"kind", "loaded"}}, U(total.route_loaded));
  AppendSample(out, "sluice_route_decisions_total", {{"kind", "queued"}}, U(total.route_queued));
  AppendSample(out, "sluice_route_decisions_total", {{"kind", "spill"}}, U(total.route_spill));
  AppendSample(out, "sluice_route_decisions_total", {{"kind", "cold"}}, U(total.route_cold));
  AppendSample(out, "sluice_route_decisions_total", {{"kind", "not_found"}},
               U(total.route_not_found));
}

// Per backend (--upstream), labelled by its name.
void AppendBackendFamilies(std::string* out, const MetricsShard& total) {
  if (total.backends.empty()) return;
  struct Family {
    const char* name;
    const char* type;
    const char* help;
    int64_t (*value)(const BackendStats&);
  };
  static constexpr Family kFamilies[] = {
      {"sluice_backend_up", "gauge", "1 while the backend passes its health checks.",
       [](const BackendStats& b) { return b.up; }},
      {"sluice_backend_in_flight", "gauge", "Requests in flight to the backend.",
       [](const BackendStats& b) { return b.in_flight; }},
      {"sluice_backend_loaded_models", "gauge",
       "Models loaded on the backend, as the router knows them.",
       [](const BackendStats& b) { return static_cast<int64_t>(b.loaded.size()); }},
      {"sluice_backend_requests_total", "counter", "Requests sent to the backend (each attempt).",
       [](const BackendStats& b) { return static_cast<int64_t>(b.requests); }},
      {"sluice_backend_failures_total", "counter",
       "Requests the backend failed before answering (connect, reset, close).",
       [](const BackendStats& b) { return static_cast<int64_t>(b.failures); }},
      {"sluice_backend_failovers_total", "counter",
       "Requests moved from the backend to another (a failure or a 503 before any byte).",
       [](const BackendStats& b) { return static_cast<int64_t>(b.failovers); }},
      {"sluice_backend_model_loads_total", "counter",
       "Generations sent to the backend for a model not loaded there (cold or spill): "
       "the loads routing caused.",
       [](const BackendStats& b) { return static_cast<int64_t>(b.routed[2] + b.routed[3]); }},
  };
  for (const Family& f : kFamilies) {
    AppendFamily(out, f.name, f.type, f.help);
    for (const BackendStats& b : total.backends) {
      if (!b.hidden) AppendSample(out, f.name, {{"backend", b.name}}, I(f.value(b)));
    }
  }
  if (std::any_of(total.backends.begin(), total.backends.end(),
                  [](const BackendStats& b) { return !b.address.empty(); })) {
    AppendFamily(out, "sluice_backend_address", "gauge",
                 "1 for the address a backend given by DNS name has now.");
    for (const BackendStats& b : total.backends) {
      if (b.address.empty() || b.hidden) continue;
      AppendSample(out, "sluice_backend_address", {{"backend", b.name}, {"address", b.address}},
                   "1");
    }
  }
  static constexpr const char* kKinds[] = {"loaded", "queued", "spill", "cold"};
  AppendFamily(out, "sluice_backend_routed_total", "counter",
               "Generations placed on the backend by model routing, by how.");
  for (const BackendStats& b : total.backends) {
    if (b.hidden) continue;
    for (size_t k = 0; k < 4; ++k) {
      AppendSample(out, "sluice_backend_routed_total", {{"backend", b.name}, {"kind", kKinds[k]}},
                   U(b.routed[k]));
    }
  }
}

// The generation-slot queues (backends with slots= above 0): gauges per queue
// while it has a slot in use or a waiter, the waits per backend, the slot
// time per principal.
void AppendQueueFamilies(std::string* out, const MetricsShard& total) {
  struct Gauge {
    const char* name;
    const char* help;
    int64_t QueueGauge::*value;
  };
  static constexpr Gauge kGauges[] = {
      {"sluice_queue_waiting", "Generations waiting in sluice for a slot, by backend and model.",
       &QueueGauge::waiting},
      {"sluice_slots_in_use", "Generation slots in use, by backend and model.",
       &QueueGauge::in_use},
      {"sluice_slots", "Generation slots (the backend's slots=), by backend and model.",
       &QueueGauge::slots},
  };
  for (const Gauge& g : kGauges) {
    AppendFamily(out, g.name, "gauge", g.help);
    for (const QueueGauge& q : total.queues) {
      AppendSample(out, g.name, {{"backend", q.backend}, {"model", q.model}}, I(q.*g.value));
    }
  }
  AppendFamily(out, "sluice_queue_wait_seconds", "histogram",
               "How long generations waited for a slot of the backend (0: one was free).");
  for (const BackendStats& b : total.backends) {
    if (!b.hidden)
      AppendHistogramSamples(out, "sluice_queue_wait_seconds", "backend", b.name, b.queue_wait);
  }
  std::vector<std::pair<std::string_view, int64_t>> slot_time(total.slot_ns.begin(),
                                                              total.slot_ns.end());
  std::sort(slot_time.begin(), slot_time.end());
  AppendFamily(out, "sluice_slot_seconds_total", "counter",
               "Generation slot time held, by principal (- anonymous; _other past the series "
               "cap).");
  for (const auto& [key, ns] : slot_time) {
    AppendSample(out, "sluice_slot_seconds_total", {{"key", key}}, NsToSeconds(ns));
  }
}

void AppendRejectionFamilies(std::string* out, const MetricsShard& total) {
  AppendFamily(out, "sluice_rejections_total", "counter",
               "Requests refused by policy: auth (401), denied (403), rate_limit and "
               "concurrency (429), busy and overload (503); by the slot queue: queue_key "
               "(429), queue_full and queue_timeout (503); by the model policy: model and registry "
               "(403), body, over_max and images (400).");
  AppendSample(out, "sluice_rejections_total", {{"reason", "auth"}}, U(total.rejected_auth));
  AppendSample(out, "sluice_rejections_total", {{"reason", "denied"}}, U(total.rejected_denied));
  AppendSample(out, "sluice_rejections_total", {{"reason", "rate_limit"}}, U(total.rejected_rate));
  AppendSample(out, "sluice_rejections_total", {{"reason", "concurrency"}},
               U(total.rejected_concurrency));
  AppendSample(out, "sluice_rejections_total", {{"reason", "busy"}}, U(total.rejected_busy));
  AppendSample(out, "sluice_rejections_total", {{"reason", "overload"}},
               U(total.rejected_overload));
  AppendSample(out, "sluice_rejections_total", {{"reason", "queue_key"}},
               U(total.rejected_queue_key));
  AppendSample(out, "sluice_rejections_total", {{"reason", "queue_full"}},
               U(total.rejected_queue_full));
  AppendSample(out, "sluice_rejections_total", {{"reason", "queue_timeout"}},
               U(total.rejected_queue_timeout));
  AppendSample(out, "sluice_rejections_total", {{"reason", "model"}}, U(total.rejected_model));
  AppendSample(out, "sluice_rejections_total", {{"reason", "registry"}},
               U(total.rejected_registry));
  AppendSample(out, "sluice_rejections_total", {{"reason", "body"}}, U(total.rejected_body));
  AppendSample(out, "sluice_rejections_total", {{"reason", "over_max"}},
               U(total.rejected_over_max));
  AppendSample(out, "sluice_rejections_total", {{"reason", "images"}}, U(total.rejected_images));
  AppendFamily(out, "sluice_body_rewrites_total", "counter",
               "Request bodies the model policy rewrote, by what it changed: alias (the "
               "model), keep_alive, num_ctx, num_predict (or /v1 max_tokens).");
  constexpr const char* kRewriteKinds[] = {"alias", "keep_alive", "num_ctx", "num_predict"};
  for (size_t i = 0; i < std::size(kRewriteKinds); ++i) {
    AppendSample(out, "sluice_body_rewrites_total", {{"kind", kRewriteKinds[i]}},
                 U(total.body_rewrites[i]));
  }
  AppendCounter(out, "sluice_connections_dropped_total",
                "Connections closed at accept: past --max_connections and its 503 allowance.",
                total.connections_dropped);
}

// Receive buffers, cancellations, TLS handshakes and the access log.
void AppendEngineFamilies(std::string* out, const MetricsShard& total, const ProcessInfo& info) {
  AppendGauge(out, "sluice_recv_buffers_in_use",
              "Provided receive buffers lent out (held by queued data or being read).",
              total.recv_buffers_in_use);
  AppendCounter(out, "sluice_recv_buffer_copies_total",
                "Receives copied out of the buffer ring because it ran low.",
                total.recv_buffer_copies);
  AppendCounter(out, "sluice_recv_buffer_pressure_pauses_total",
                "Upstream links paused because the buffer ring ran low and their "
                "client connection held the most of it.",
                total.recv_buffer_pressure_pauses);
  AppendCounter(out, "sluice_client_cancellations_total",
                "Requests whose client went away first (logged as 499).",
                total.client_cancellations);
  AppendCounter(out, "sluice_tls_handshakes_total", "TLS handshakes completed (full or resumed).",
                total.tls_handshakes);
  AppendCounter(out, "sluice_tls_resumptions_total", "TLS handshakes that resumed a session.",
                total.tls_resumptions);
  AppendCounter(out, "sluice_tls_handshake_failures_total", "TLS handshakes that failed.",
                total.tls_handshake_failures);
  AppendCounter(out, "sluice_access_log_dropped_lines_total",
                "Access log lines dropped because the log writer fell behind or failed.",
                info.access_log_dropped_lines);
}

}  // namespace

std::string RenderPrometheus(const MetricsShard& total, const ProcessInfo& info) {
  std::string out;
  out.reserve(8192);
  AppendProcessFamilies(&out, info);
  AppendConnectionFamilies(&out, total);
  const std::vector<const std::string*> route_names = SortedRouteNames(total);
  AppendRequestCounts(&out, route_names, total);
  AppendRouteHistograms(&out, route_names, total);
  AppendTokenFamilies(&out, total);
  AppendUpstreamFamilies(&out, total);
  AppendBackendFamilies(&out, total);
  AppendQueueFamilies(&out, total);
  AppendRejectionFamilies(&out, total);
  AppendEngineFamilies(&out, total, info);
  return out;
}

std::string RenderStubStatus(const MetricsShard& total) {
  const int64_t active =
      total.connections_reading + total.connections_writing + total.connections_waiting;
  char buf[256];
  int n = snprintf(buf, sizeof(buf),
                   "Active connections: %" PRId64
                   " \n"
                   "server accepts handled requests\n"
                   " %" PRIu64 " %" PRIu64 " %" PRIu64
                   " \n"
                   "Reading: %" PRId64 " Writing: %" PRId64 " Waiting: %" PRId64 " \n",
                   active, total.connections_accepted, total.connections_handled, total.requests,
                   total.connections_reading, total.connections_writing, total.connections_waiting);
  return std::string(buf, static_cast<size_t>(std::max(n, 0)));
}

}  // namespace sluice::core
