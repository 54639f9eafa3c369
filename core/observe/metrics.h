#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "absl/container/flat_hash_map.h"

namespace sluice::core {

// The latency distributions sluice keeps, each with fixed bucket bounds
// (seconds, see BucketBounds).
enum class HistogramKind {
  kRequest,     // request received -> response sent (nginx $request_time)
  kUpstream,    // upstream link taken -> response complete ($upstream_response_time)
  kFirstToken,  // request received -> first token event relayed
  kTokenGap,    // between two token events of one response
  kQueueWait,   // waiting in sluice for a generation slot (0: one was free)
};

// At most this many finite bounds per kind; +Inf is implicit.
inline constexpr size_t kMaxBuckets = 20;

// The upper bounds of `kind`'s buckets in seconds, ascending (without +Inf).
struct BucketSpan {
  const double* bounds;
  size_t size;
};
BucketSpan BucketBounds(HistogramKind kind);

// A Prometheus histogram kept by one worker: plain integers, written only
// by its worker, merged into a total at scrape time.
class Histogram {
 public:
  explicit Histogram(HistogramKind kind = HistogramKind::kRequest) : kind_(kind) {}
  void Observe(int64_t ns);
  void Merge(const Histogram& other);  // same kind
  HistogramKind kind() const { return kind_; }
  // Observations per bucket, not cumulative: [i] counts values <= bound i
  // and > bound i-1; [BucketBounds(kind).size] is the +Inf bucket.
  const std::array<uint64_t, kMaxBuckets + 1>& buckets() const { return buckets_; }
  uint64_t count() const;
  int64_t sum_ns() const { return sum_ns_; }

 private:
  HistogramKind kind_;
  std::array<uint64_t, kMaxBuckets + 1> buckets_{};
  int64_t sum_ns_ = 0;
};

// The median and maximum of one response's inter-token gaps in constant
// memory (a log-scale sketch: the median is exact to within 10 %, the
// maximum exactly), for the access log.
class GapSketch {
 public:
  void Add(int64_t gap_ns);
  uint64_t count() const { return count_; }
  int64_t max_ns() const { return count_ ? max_ns_ : -1; }
  // The nearest-rank median (the ceil(n/2)-th smallest gap) as the
  // geometric middle of its slot, capped at max_ns(); a single gap is
  // returned exactly. -1 when empty.
  int64_t p50_ns() const;

 private:
  // Bucket b holds gaps in [2^(b/8) us, 2^((b+1)/8) us); gaps below 1 us
  // go to bucket 0, above the last bound to the last bucket.
  static constexpr int kSlots = 8 * 28;  // 1 us .. ~268 s
  static int Slot(int64_t gap_ns);
  std::array<uint32_t, kSlots> slots_{};
  uint64_t count_ = 0;
  int64_t max_ns_ = 0;
};

// Per route group ("generation", "api", a rules-file group, "internal" for
// /status and /metrics).
struct RouteStats {
  // Responses by status code (100-599; anything else counts as 0).
  absl::flat_hash_map<int, uint64_t> by_status;
  Histogram request{HistogramKind::kRequest};
  Histogram upstream{HistogramKind::kUpstream};
  Histogram first_token{HistogramKind::kFirstToken};
  Histogram token_gap{HistogramKind::kTokenGap};
  void Merge(const RouteStats& other);
};

// Token totals of one (principal, model) pair.
struct TokenTotals {
  uint64_t requests = 0;
  uint64_t prompt = 0;
  uint64_t completion = 0;
};

// One backend's share of a worker's counts (index: its place in
// --upstream). `up` and `loaded` are the process-wide view, copied in.
struct BackendStats {
  std::string name;
  int64_t up = 1;
  int64_t in_flight = 0;  // upstream links in use
  std::vector<std::string> loaded;
  uint64_t requests = 0;   // requests sent to it (each attempt)
  uint64_t failures = 0;   // connect failures, resets, closes before an answer
  uint64_t failovers = 0;  // requests moved from it to another backend
  // Generations placed on it, by RouteChoice kind: loaded, queued, spill, cold.
  uint64_t routed[4] = {};
  // A DNS name's backend: the address it has now ("" if none); set on the
  // merged copy. `hidden`: a spare slot of a name that never had an
  // address and never a request: not shown.
  std::string address;
  bool hidden = false;
  // Generations that took one of its slots (slots=): how long each waited.
  Histogram queue_wait{HistogramKind::kQueueWait};
  void Merge(const BackendStats& o);
};

// One generation-slot queue (a backend's model) as the SlotScheduler sees
// it at scrape time.
struct QueueGauge {
  std::string backend;
  std::string model;
  int64_t slots = 0;
  int64_t in_use = 0;
  int64_t waiting = 0;
};

// Everything one worker counts. Only its worker writes it, with plain
// integers (no atomics, no locks on the request path); a scrape asks each
// worker for a copy through its mailbox and merges the copies.
struct MetricsShard {
  // Counters.
  uint64_t connections_accepted = 0;
  uint64_t connections_handled = 0;
  uint64_t requests = 0;
  uint64_t tls_handshakes = 0;   // completed (full or resumed)
  uint64_t tls_resumptions = 0;  // of which resumed
  uint64_t tls_handshake_failures = 0;
  uint64_t upstream_connects = 0;
  uint64_t upstream_reused = 0;
  uint64_t upstream_connect_failures = 0;
  uint64_t upstream_failovers = 0;
  // Model-routed requests by how their backend was chosen (RouteChoice).
  uint64_t route_loaded = 0;
  uint64_t route_queued = 0;
  uint64_t route_spill = 0;
  uint64_t route_cold = 0;
  uint64_t route_not_found = 0;
  std::vector<BackendStats> backends;
  // The counters of --upstream's backend `index`; null for one without
  // (a rules-file upstream's).
  BackendStats* backend(size_t index) {
    return index < backends.size() ? &backends[index] : nullptr;
  }
  uint64_t rejected_auth = 0;         // 401
  uint64_t rejected_denied = 0;       // 403 by IP, route or CORS rules
  uint64_t rejected_rate = 0;         // 429 by a rate zone
  uint64_t rejected_concurrency = 0;  // 429 by a stream cap
  uint64_t rejected_busy = 0;         // 503: password checks queue full
  uint64_t rejected_overload = 0;     // 503: connection past --max_connections
  uint64_t connections_dropped = 0;   // closed at accept, past the allowance
  uint64_t client_cancellations = 0;  // logged as 499
  // Generations refused by the slot queue: the key's own backlog is full
  // (429), every queue is full (503), no slot within --queue_timeout (503).
  uint64_t rejected_queue_key = 0;
  uint64_t rejected_queue_full = 0;
  uint64_t rejected_queue_timeout = 0;
  // Generations refused by the model policy on their body: a model the key
  // may not use (403), a body that is not valid JSON or a field Ollama would
  // refuse (400), a value over a maximum with over_max=refuse (400).
  uint64_t rejected_model = 0;
  uint64_t rejected_registry = 0;  // /api/pull or create from another registry (403)
  uint64_t rejected_body = 0;
  uint64_t rejected_over_max = 0;
  uint64_t rejected_images = 0;  // past max_images or max_image_bytes (400)
  // Bodies rewritten by the model policy, by kind (policy::BodyRewrite:
  // alias, keep_alive, num_ctx, num_predict).
  uint64_t body_rewrites[4] = {};
  // Gauges: filled in by the worker when it makes its copy.
  int64_t connections_reading = 0;
  int64_t connections_writing = 0;
  int64_t connections_waiting = 0;
  int64_t active_streams = 0;
  int64_t upstream_open = 0;
  int64_t upstream_idle = 0;
  // The provided receive buffers: lent out now, and receives copied out of
  // the ring because it ran low (a counter kept by the ring itself).
  int64_t recv_buffers_in_use = 0;
  uint64_t recv_buffer_copies = 0;
  uint64_t recv_buffer_pressure_pauses = 0;

  absl::flat_hash_map<std::string, RouteStats> routes;
  // Keyed by (principal, model): principal as Admission::principal
  // ("key:NAME", "user:NAME"; "-" when anonymous), model as the request or
  // response named it ("-" when neither did).
  absl::flat_hash_map<std::pair<std::string, std::string>, TokenTotals> tokens;
  // Generation slot time held, by principal ("-" when anonymous), ns.
  absl::flat_hash_map<std::string, int64_t> slot_ns;
  // The slot queues: filled in on the merged copy at scrape time.
  std::vector<QueueGauge> queues;

  // Distinct (principal, model) pairs kept per shard; past it the pair is
  // counted under model "_other" (request bodies choose the model name, so
  // the label set must stay bounded).
  static constexpr size_t kMaxTokenSeries = 1024;

  RouteStats& Route(std::string_view group);
  void AddTokens(std::string_view principal, std::string_view model, int64_t prompt,
                 int64_t completion);
  // Slot time of `principal` (bounded like tokens: past kMaxTokenSeries
  // principals, "_other").
  void AddSlotTime(std::string_view principal, int64_t ns);
  void Merge(const MetricsShard& other);
};

// Process-wide facts shown with the metrics.
struct ProcessInfo {
  std::string version;
  int workers = 0;
  double start_time_seconds = 0;  // Unix time
  uint64_t access_log_dropped_lines = 0;
};

// The Prometheus text exposition format (version 0.0.4): each family with
// # HELP and # TYPE, label values escaped, histograms with cumulative
// _bucket{le=...} series ending in +Inf plus _sum (seconds) and _count.
// Series with a zero value are still shown for the unlabelled families;
// labelled ones show the label sets seen. Names are listed in README.md
// (Observability).
std::string RenderPrometheus(const MetricsShard& total, const ProcessInfo& info);

// nginx's stub_status page, byte for byte in its layout (including the
// trailing spaces), so existing parsers read it:
//   Active connections: 3 \n
//   server accepts handled requests\n
//    10 10 25 \n
//   Reading: 0 Writing: 1 Waiting: 2 \n
std::string RenderStubStatus(const MetricsShard& total);

}  // namespace sluice::core
