#include "core/observe/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "tests/integration/prom_text.h"

namespace sluice::core {
namespace {

using integration::FindFamily;
using integration::FindSample;
using integration::ParsePrometheusText;
using integration::PromFamily;

constexpr int64_t kMs = 1000000;
constexpr int64_t kSec = 1000000000;

std::vector<PromFamily> MustParse(const std::string& text) {
  auto parsed = ParsePrometheusText(text);
  EXPECT_TRUE(parsed.ok()) << parsed.status() << "\n" << text;
  return parsed.ok() ? *parsed : std::vector<PromFamily>{};
}

// ---------------------------------------------------------------- Histogram

TEST(HistogramTest, BoundsAreAscendingAndFitKMaxBuckets) {
  for (HistogramKind kind :
       {HistogramKind::kRequest, HistogramKind::kUpstream, HistogramKind::kFirstToken,
        HistogramKind::kTokenGap, HistogramKind::kQueueWait}) {
    BucketSpan span = BucketBounds(kind);
    ASSERT_GT(span.size, 0u);
    ASSERT_LE(span.size, kMaxBuckets);
    for (size_t i = 1; i < span.size; ++i) EXPECT_LT(span.bounds[i - 1], span.bounds[i]);
  }
  BucketSpan request = BucketBounds(HistogramKind::kRequest);
  EXPECT_EQ(request.size, 16u);
  EXPECT_EQ(request.bounds[0], 0.005);
  EXPECT_EQ(request.bounds[15], 600);
  EXPECT_EQ(BucketBounds(HistogramKind::kUpstream).size, 16u);
  EXPECT_EQ(BucketBounds(HistogramKind::kFirstToken).size, 12u);
  EXPECT_EQ(BucketBounds(HistogramKind::kFirstToken).bounds[0], 0.025);
  EXPECT_EQ(BucketBounds(HistogramKind::kTokenGap).size, 12u);
  EXPECT_EQ(BucketBounds(HistogramKind::kTokenGap).bounds[0], 0.001);
}

// le semantics: a value equal to a bound belongs to that bound's bucket.
TEST(HistogramTest, ObservePlacesValuesOnBoundsInTheirBucket) {
  Histogram h(HistogramKind::kRequest);
  h.Observe(0);               // [0] (<= 0.005)
  h.Observe(5 * kMs);         // [0] exactly on 0.005
  h.Observe(5 * kMs + 1);     // [1]
  h.Observe(10 * kMs);        // [1] exactly on 0.01
  h.Observe(2500 * kMs);      // [8] exactly on 2.5
  h.Observe(600 * kSec);      // [15] exactly on 600
  h.Observe(600 * kSec + 1);  // [16] +Inf
  h.Observe(3600 * kSec);     // [16] +Inf
  h.Observe(-5);              // a clock step: counted as 0, in [0]
  const auto& b = h.buckets();
  EXPECT_EQ(b[0], 3u);
  EXPECT_EQ(b[1], 2u);
  EXPECT_EQ(b[8], 1u);
  EXPECT_EQ(b[15], 1u);
  EXPECT_EQ(b[16], 2u);
  EXPECT_EQ(h.count(), 9u);
  EXPECT_EQ(h.sum_ns(), 0 + 5 * kMs + 5 * kMs + 1 + 10 * kMs + 2500 * kMs + 600 * kSec +
                            600 * kSec + 1 + 3600 * kSec);

  Histogram gap(HistogramKind::kTokenGap);
  gap.Observe(1 * kMs);       // [0] on 0.001
  gap.Observe(2500000);       // [1] on 0.0025
  gap.Observe(5 * kSec);      // [11] on 5
  gap.Observe(5 * kSec + 1);  // [12] +Inf
  EXPECT_EQ(gap.buckets()[0], 1u);
  EXPECT_EQ(gap.buckets()[1], 1u);
  EXPECT_EQ(gap.buckets()[11], 1u);
  EXPECT_EQ(gap.buckets()[12], 1u);
  EXPECT_EQ(gap.kind(), HistogramKind::kTokenGap);
}

TEST(HistogramTest, MergeAddsBucketsAndSums) {
  Histogram a(HistogramKind::kFirstToken), b(HistogramKind::kFirstToken);
  a.Observe(30 * kMs);
  a.Observe(70 * kSec);
  b.Observe(30 * kMs);
  b.Observe(1 * kSec);
  a.Merge(b);
  EXPECT_EQ(a.count(), 4u);
  EXPECT_EQ(a.buckets()[1], 2u);   // 0.05
  EXPECT_EQ(a.buckets()[5], 1u);   // 1
  EXPECT_EQ(a.buckets()[12], 1u);  // +Inf
  EXPECT_EQ(a.sum_ns(), 60 * kMs + 71 * kSec);
  EXPECT_EQ(b.count(), 2u);
}

// ---------------------------------------------------------------- GapSketch

TEST(GapSketchTest, EmptyAndSingle) {
  GapSketch s;
  EXPECT_EQ(s.count(), 0u);
  EXPECT_EQ(s.p50_ns(), -1);
  EXPECT_EQ(s.max_ns(), -1);
  s.Add(12345678);
  EXPECT_EQ(s.count(), 1u);
  EXPECT_EQ(s.p50_ns(), 12345678);  // a single gap is exact
  EXPECT_EQ(s.max_ns(), 12345678);
}

int64_t NearestRankMedian(std::vector<int64_t> v) {
  std::sort(v.begin(), v.end());
  return v[(v.size() + 1) / 2 - 1];
}

TEST(GapSketchTest, MedianWithinTenPercentMaxExact) {
  std::mt19937_64 rng(42);
  for (int trial = 0; trial < 200; ++trial) {
    // Log-uniform gaps from 2 us to 100 s, 2..500 of them.
    std::uniform_real_distribution<double> log_gap(std::log(2e3), std::log(1e11));
    std::uniform_int_distribution<int> count(2, 500);
    GapSketch s;
    std::vector<int64_t> gaps(count(rng));
    for (int64_t& g : gaps) {
      g = static_cast<int64_t>(std::exp(log_gap(rng)));
      s.Add(g);
    }
    const int64_t want = NearestRankMedian(gaps);
    ASSERT_EQ(s.count(), gaps.size());
    ASSERT_EQ(s.max_ns(), *std::max_element(gaps.begin(), gaps.end()));
    ASSERT_NEAR(static_cast<double>(s.p50_ns()), static_cast<double>(want), 0.1 * want)
        << "trial " << trial;
  }
}

TEST(GapSketchTest, TypicalStreamAndOutOfRangeGaps) {
  GapSketch s;
  for (int i = 0; i < 99; ++i) s.Add(20 * kMs);
  s.Add(3 * kSec);  // one model stall
  EXPECT_NEAR(static_cast<double>(s.p50_ns()), 20.0 * kMs, 2.0 * kMs);
  EXPECT_EQ(s.max_ns(), 3 * kSec);

  // Below the first slot (sub-microsecond): never above the maximum.
  GapSketch tiny;
  tiny.Add(300);
  tiny.Add(500);
  EXPECT_LE(tiny.p50_ns(), 500);
  EXPECT_GE(tiny.p50_ns(), 0);
  EXPECT_EQ(tiny.max_ns(), 500);

  // Beyond the last slot (~268 s): capped at the exact maximum.
  GapSketch huge;
  huge.Add(1000 * kSec);
  huge.Add(2000 * kSec);
  EXPECT_LE(huge.p50_ns(), 2000 * kSec);
  EXPECT_EQ(huge.max_ns(), 2000 * kSec);
}

// ------------------------------------------------------------ MetricsShard

TEST(MetricsShardTest, RouteCreatesOnceAndReturnsTheSameStats) {
  MetricsShard m;
  RouteStats& a = m.Route("generation");
  a.by_status[200] += 1;
  RouteStats& b = m.Route("generation");
  EXPECT_EQ(&a, &b);
  EXPECT_EQ(b.by_status[200], 1u);
  EXPECT_EQ(m.routes.size(), 1u);
  EXPECT_EQ(b.request.kind(), HistogramKind::kRequest);
  EXPECT_EQ(b.upstream.kind(), HistogramKind::kUpstream);
  EXPECT_EQ(b.first_token.kind(), HistogramKind::kFirstToken);
  EXPECT_EQ(b.token_gap.kind(), HistogramKind::kTokenGap);
}

TEST(MetricsShardTest, AddTokensTreatsNegativeAsUnknownButCountsTheRequest) {
  MetricsShard m;
  m.AddTokens("key:alice", "llama3", 10, 20);
  m.AddTokens("key:alice", "llama3", -1, 5);
  m.AddTokens("key:alice", "llama3", 7, -1);
  m.AddTokens("key:alice", "llama3", -1, -1);
  m.AddTokens("-", "-", 0, 0);
  const TokenTotals& t = m.tokens.at({"key:alice", "llama3"});
  EXPECT_EQ(t.requests, 4u);
  EXPECT_EQ(t.prompt, 17u);
  EXPECT_EQ(t.completion, 25u);
  EXPECT_EQ(m.tokens.at({"-", "-"}).requests, 1u);
  EXPECT_EQ(m.tokens.size(), 2u);
}

TEST(MetricsShardTest, TokenSeriesAreCappedUnderOther) {
  MetricsShard m;
  for (size_t i = 0; i < MetricsShard::kMaxTokenSeries; ++i) {
    m.AddTokens("key:alice", "model" + std::to_string(i), 1, 1);
  }
  ASSERT_EQ(m.tokens.size(), MetricsShard::kMaxTokenSeries);
  // Known pairs still count under their own name.
  m.AddTokens("key:alice", "model0", 1, 1);
  EXPECT_EQ(m.tokens.at({"key:alice", "model0"}).requests, 2u);
  // New ones go to (principal, "_other").
  m.AddTokens("key:alice", "new-a", 3, 4);
  m.AddTokens("key:alice", "new-b", 5, 6);
  m.AddTokens("key:bob", "new-c", 1, -1);
  EXPECT_EQ(m.tokens.size(), MetricsShard::kMaxTokenSeries + 2);
  const TokenTotals& other = m.tokens.at({"key:alice", "_other"});
  EXPECT_EQ(other.requests, 2u);
  EXPECT_EQ(other.prompt, 8u);
  EXPECT_EQ(other.completion, 10u);
  EXPECT_EQ(m.tokens.at({"key:bob", "_other"}).requests, 1u);
  EXPECT_EQ(m.tokens.count({"key:alice", "new-a"}), 0u);

  // The rendered text stays valid with that many series.
  auto families = MustParse(RenderPrometheus(m, ProcessInfo{}));
  EXPECT_EQ(FindSample(families, "sluice_tokens_total",
                       {{"key", "key:alice"}, {"model", "_other"}, {"type", "prompt"}}),
            8);
}

// Every counter and gauge gets a distinct value so that a field merged into
// the wrong one, or not merged, shows.
MetricsShard Numbered(uint64_t base) {
  MetricsShard m;
  uint64_t v = base;
  for (uint64_t* f :
       {&m.connections_accepted, &m.connections_handled,  &m.requests,
        &m.tls_handshakes,       &m.tls_resumptions,      &m.tls_handshake_failures,
        &m.upstream_connects,    &m.upstream_reused,      &m.upstream_connect_failures,
        &m.upstream_failovers,   &m.rejected_auth,        &m.rejected_denied,
        &m.rejected_rate,        &m.rejected_concurrency, &m.rejected_busy,
        &m.rejected_overload,    &m.rejected_model,       &m.rejected_registry,
        &m.rejected_body,        &m.rejected_over_max,    &m.body_rewrites[0],
        &m.body_rewrites[3],     &m.connections_dropped,  &m.client_cancellations}) {
    *f = v++;
  }
  for (int64_t* f : {&m.connections_reading, &m.connections_writing, &m.connections_waiting,
                     &m.active_streams, &m.upstream_open, &m.upstream_idle}) {
    *f = static_cast<int64_t>(v++);
  }
  return m;
}

TEST(MetricsShardTest, MergeSumsCountersGaugesRoutesAndTokens) {
  MetricsShard a = Numbered(1);
  MetricsShard b = Numbered(100);
  a.Route("api").by_status[200] = 3;
  a.Route("api").request.Observe(1 * kMs);
  b.Route("api").by_status[200] = 4;
  b.Route("api").by_status[404] = 1;
  b.Route("api").request.Observe(1 * kSec);
  b.Route("generation").first_token.Observe(100 * kMs);
  a.AddTokens("key:a", "m", 1, 2);
  b.AddTokens("key:a", "m", 10, 20);
  b.AddTokens("key:b", "m", 5, 5);
  a.Merge(b);

  const MetricsShard want_a = Numbered(1), want_b = Numbered(100);
  EXPECT_EQ(a.connections_accepted, want_a.connections_accepted + want_b.connections_accepted);
  EXPECT_EQ(a.connections_handled, want_a.connections_handled + want_b.connections_handled);
  EXPECT_EQ(a.requests, want_a.requests + want_b.requests);
  EXPECT_EQ(a.tls_handshakes, want_a.tls_handshakes + want_b.tls_handshakes);
  EXPECT_EQ(a.tls_resumptions, want_a.tls_resumptions + want_b.tls_resumptions);
  EXPECT_EQ(a.tls_handshake_failures,
            want_a.tls_handshake_failures + want_b.tls_handshake_failures);
  EXPECT_EQ(a.upstream_connects, want_a.upstream_connects + want_b.upstream_connects);
  EXPECT_EQ(a.upstream_reused, want_a.upstream_reused + want_b.upstream_reused);
  EXPECT_EQ(a.upstream_connect_failures,
            want_a.upstream_connect_failures + want_b.upstream_connect_failures);
  EXPECT_EQ(a.upstream_failovers, want_a.upstream_failovers + want_b.upstream_failovers);
  EXPECT_EQ(a.rejected_auth, want_a.rejected_auth + want_b.rejected_auth);
  EXPECT_EQ(a.rejected_denied, want_a.rejected_denied + want_b.rejected_denied);
  EXPECT_EQ(a.rejected_rate, want_a.rejected_rate + want_b.rejected_rate);
  EXPECT_EQ(a.rejected_concurrency, want_a.rejected_concurrency + want_b.rejected_concurrency);
  EXPECT_EQ(a.rejected_busy, want_a.rejected_busy + want_b.rejected_busy);
  EXPECT_EQ(a.rejected_overload, want_a.rejected_overload + want_b.rejected_overload);
  EXPECT_EQ(a.rejected_model, want_a.rejected_model + want_b.rejected_model);
  EXPECT_EQ(a.rejected_registry, want_a.rejected_registry + want_b.rejected_registry);
  EXPECT_EQ(a.rejected_body, want_a.rejected_body + want_b.rejected_body);
  EXPECT_EQ(a.rejected_over_max, want_a.rejected_over_max + want_b.rejected_over_max);
  EXPECT_EQ(a.body_rewrites[0], want_a.body_rewrites[0] + want_b.body_rewrites[0]);
  EXPECT_EQ(a.body_rewrites[3], want_a.body_rewrites[3] + want_b.body_rewrites[3]);
  EXPECT_EQ(a.connections_dropped, want_a.connections_dropped + want_b.connections_dropped);
  EXPECT_EQ(a.client_cancellations, want_a.client_cancellations + want_b.client_cancellations);
  EXPECT_EQ(a.connections_reading, want_a.connections_reading + want_b.connections_reading);
  EXPECT_EQ(a.connections_writing, want_a.connections_writing + want_b.connections_writing);
  EXPECT_EQ(a.connections_waiting, want_a.connections_waiting + want_b.connections_waiting);
  EXPECT_EQ(a.active_streams, want_a.active_streams + want_b.active_streams);
  EXPECT_EQ(a.upstream_open, want_a.upstream_open + want_b.upstream_open);
  EXPECT_EQ(a.upstream_idle, want_a.upstream_idle + want_b.upstream_idle);

  EXPECT_EQ(a.routes.size(), 2u);
  EXPECT_EQ(a.routes.at("api").by_status.at(200), 7u);
  EXPECT_EQ(a.routes.at("api").by_status.at(404), 1u);
  EXPECT_EQ(a.routes.at("api").request.count(), 2u);
  EXPECT_EQ(a.routes.at("api").request.sum_ns(), 1 * kMs + 1 * kSec);
  EXPECT_EQ(a.routes.at("generation").first_token.count(), 1u);
  const TokenTotals& t = a.tokens.at({"key:a", "m"});
  EXPECT_EQ(t.requests, 2u);
  EXPECT_EQ(t.prompt, 11u);
  EXPECT_EQ(t.completion, 22u);
  EXPECT_EQ(a.tokens.at({"key:b", "m"}).prompt, 5u);
}

// ------------------------------------------------------- RenderPrometheus

const std::vector<std::string>& AllFamilies() {
  static const std::vector<std::string> kNames = {
      "sluice_build_info",
      "sluice_start_time_seconds",
      "sluice_workers",
      "sluice_connections_accepted_total",
      "sluice_connections_handled_total",
      "sluice_connections",
      "sluice_http_requests_total",
      "sluice_request_duration_seconds",
      "sluice_upstream_response_seconds",
      "sluice_time_to_first_token_seconds",
      "sluice_inter_token_gap_seconds",
      "sluice_tokens_total",
      "sluice_token_requests_total",
      "sluice_active_streams",
      "sluice_upstream_connections",
      "sluice_upstream_connects_total",
      "sluice_upstream_reused_total",
      "sluice_upstream_connect_failures_total",
      "sluice_upstream_failovers_total",
      "sluice_route_decisions_total",
      "sluice_queue_waiting",
      "sluice_slots_in_use",
      "sluice_slots",
      "sluice_queue_wait_seconds",
      "sluice_slot_seconds_total",
      "sluice_rejections_total",
      "sluice_body_rewrites_total",
      "sluice_connections_dropped_total",
      "sluice_recv_buffers_in_use",
      "sluice_recv_buffer_copies_total",
      "sluice_recv_buffer_pressure_pauses_total",
      "sluice_client_cancellations_total",
      "sluice_tls_handshakes_total",
      "sluice_tls_resumptions_total",
      "sluice_tls_handshake_failures_total",
      "sluice_access_log_dropped_lines_total",
  };
  return kNames;
}

void ExpectAllFamiliesWithHelpAndType(const std::vector<PromFamily>& families) {
  std::vector<std::string> names;
  for (const PromFamily& f : families) {
    names.push_back(f.name);
    EXPECT_FALSE(f.help.empty()) << f.name;
    EXPECT_NE(f.type, "untyped") << f.name;
  }
  EXPECT_EQ(names, AllFamilies());
}

TEST(RenderPrometheusTest, EmptyShardIsValidWithEveryFamily) {
  ProcessInfo info;
  info.version = "0.1.0";
  info.workers = 4;
  info.start_time_seconds = 1795642912.25;
  const std::string text = RenderPrometheus(MetricsShard{}, info);
  auto families = MustParse(text);
  ExpectAllFamiliesWithHelpAndType(families);
  EXPECT_EQ(FindSample(families, "sluice_build_info", {{"version", "0.1.0"}}), 1);
  EXPECT_EQ(FindSample(families, "sluice_workers", {}), 4);
  EXPECT_EQ(FindSample(families, "sluice_start_time_seconds", {}), 1795642912.25);
  EXPECT_EQ(FindSample(families, "sluice_connections_accepted_total", {}), 0);
  for (const char* reason :
       {"auth", "denied", "rate_limit", "concurrency", "busy", "overload", "queue_key",
        "queue_full", "queue_timeout", "model", "registry", "body", "over_max", "images"}) {
    EXPECT_EQ(FindSample(families, "sluice_rejections_total", {{"reason", reason}}), 0) << reason;
  }
  for (const char* name : {"sluice_request_duration_seconds", "sluice_http_requests_total",
                           "sluice_tokens_total", "sluice_token_requests_total"}) {
    const PromFamily* f = FindFamily(families, name);
    ASSERT_NE(f, nullptr) << name;
    EXPECT_TRUE(f->samples.empty()) << name;
  }
  EXPECT_NE(text.find("# HELP sluice_request_duration_seconds "), std::string::npos);
  EXPECT_NE(text.find("# TYPE sluice_request_duration_seconds histogram\n"), std::string::npos);
}

TEST(RenderPrometheusTest, RendersEveryValue) {
  MetricsShard m;
  m.connections_accepted = 11;
  m.connections_handled = 10;
  m.requests = 25;
  m.tls_handshakes = 7;
  m.tls_resumptions = 3;
  m.tls_handshake_failures = 2;
  m.upstream_connects = 5;
  m.upstream_reused = 19;
  m.upstream_connect_failures = 1;
  m.rejected_auth = 4;
  m.rejected_denied = 6;
  m.rejected_rate = 8;
  m.rejected_concurrency = 9;
  m.rejected_busy = 12;
  m.rejected_overload = 15;
  m.rejected_model = 31;
  m.rejected_registry = 32;
  m.rejected_body = 33;
  m.rejected_over_max = 34;
  m.body_rewrites[0] = 35;
  m.body_rewrites[3] = 38;
  m.connections_dropped = 16;
  m.recv_buffers_in_use = 21;
  m.recv_buffer_copies = 22;
  m.recv_buffer_pressure_pauses = 23;
  m.client_cancellations = 13;
  m.connections_reading = 1;
  m.connections_writing = 2;
  m.connections_waiting = 3;
  m.active_streams = 14;
  m.upstream_open = 15;
  m.upstream_idle = 16;
  RouteStats& gen = m.Route("generation");
  gen.by_status[200] = 20;
  gen.by_status[499] = 2;
  gen.request.Observe(5 * kMs);     // le 0.005
  gen.request.Observe(3 * kSec);    // le 5
  gen.request.Observe(700 * kSec);  // +Inf
  gen.upstream.Observe(2 * kSec);
  gen.first_token.Observe(150 * kMs);
  gen.token_gap.Observe(20 * kMs);
  gen.token_gap.Observe(20 * kMs);
  RouteStats& api = m.Route("api");
  api.by_status[200] = 5;
  api.by_status[401] = 4;
  api.request.Observe(1 * kMs);
  m.AddTokens("key:alice", "llama3", 12, 34);
  m.AddTokens("user:bob", "qwen2.5:7b", 1, -1);
  ProcessInfo info{"1.2.3", 2, 1795642912.0, 17};

  auto families = MustParse(RenderPrometheus(m, info));
  ExpectAllFamiliesWithHelpAndType(families);
  const auto v = [&](const std::string& name,
                     const std::vector<std::pair<std::string, std::string>>& labels = {}) {
    return FindSample(families, name, labels).value_or(-1);
  };
  EXPECT_EQ(v("sluice_build_info", {{"version", "1.2.3"}}), 1);
  EXPECT_EQ(v("sluice_workers"), 2);
  EXPECT_EQ(v("sluice_start_time_seconds"), 1795642912.0);
  EXPECT_EQ(v("sluice_connections_accepted_total"), 11);
  EXPECT_EQ(v("sluice_connections_handled_total"), 10);
  EXPECT_EQ(v("sluice_connections", {{"state", "reading"}}), 1);
  EXPECT_EQ(v("sluice_connections", {{"state", "writing"}}), 2);
  EXPECT_EQ(v("sluice_connections", {{"state", "waiting"}}), 3);
  EXPECT_EQ(v("sluice_http_requests_total", {{"route", "generation"}, {"code", "200"}}), 20);
  EXPECT_EQ(v("sluice_http_requests_total", {{"route", "generation"}, {"code", "499"}}), 2);
  EXPECT_EQ(v("sluice_http_requests_total", {{"route", "api"}, {"code", "401"}}), 4);
  EXPECT_EQ(v("sluice_http_requests_total", {{"route", "api"}, {"code", "200"}}), 5);

  // Cumulative buckets with le on the bounds.
  const std::vector<std::pair<std::string, double>> want_buckets = {
      {"0.005", 1}, {"0.01", 1}, {"2.5", 1}, {"5", 2}, {"600", 2}, {"+Inf", 3}};
  for (const auto& [le, n] : want_buckets) {
    EXPECT_EQ(v("sluice_request_duration_seconds_bucket", {{"route", "generation"}, {"le", le}}), n)
        << le;
  }
  EXPECT_EQ(v("sluice_request_duration_seconds_count", {{"route", "generation"}}), 3);
  EXPECT_DOUBLE_EQ(v("sluice_request_duration_seconds_sum", {{"route", "generation"}}), 703.005);
  EXPECT_EQ(v("sluice_request_duration_seconds_count", {{"route", "api"}}), 1);
  EXPECT_EQ(v("sluice_upstream_response_seconds_bucket", {{"route", "generation"}, {"le", "2.5"}}),
            1);
  EXPECT_EQ(v("sluice_upstream_response_seconds_sum", {{"route", "generation"}}), 2);
  // A route without observations of a kind has no series of it.
  EXPECT_FALSE(FindSample(families, "sluice_upstream_response_seconds_count", {{"route", "api"}}));
  EXPECT_EQ(
      v("sluice_time_to_first_token_seconds_bucket", {{"route", "generation"}, {"le", "0.25"}}), 1);
  EXPECT_EQ(
      v("sluice_time_to_first_token_seconds_bucket", {{"route", "generation"}, {"le", "0.1"}}), 0);
  EXPECT_EQ(v("sluice_inter_token_gap_seconds_bucket", {{"route", "generation"}, {"le", "0.02"}}),
            2);
  EXPECT_EQ(v("sluice_inter_token_gap_seconds_sum", {{"route", "generation"}}), 0.04);
  EXPECT_EQ(FindFamily(families, "sluice_inter_token_gap_seconds")->samples.size(),
            BucketBounds(HistogramKind::kTokenGap).size + 1 + 2);

  EXPECT_EQ(
      v("sluice_tokens_total", {{"key", "key:alice"}, {"model", "llama3"}, {"type", "prompt"}}),
      12);
  EXPECT_EQ(
      v("sluice_tokens_total", {{"key", "key:alice"}, {"model", "llama3"}, {"type", "completion"}}),
      34);
  EXPECT_EQ(v("sluice_tokens_total",
              {{"key", "user:bob"}, {"model", "qwen2.5:7b"}, {"type", "completion"}}),
            0);
  EXPECT_EQ(v("sluice_token_requests_total", {{"key", "user:bob"}, {"model", "qwen2.5:7b"}}), 1);
  EXPECT_EQ(v("sluice_active_streams"), 14);
  EXPECT_EQ(v("sluice_upstream_connections", {{"state", "open"}}), 15);
  EXPECT_EQ(v("sluice_upstream_connections", {{"state", "idle"}}), 16);
  EXPECT_EQ(v("sluice_upstream_connects_total"), 5);
  EXPECT_EQ(v("sluice_upstream_reused_total"), 19);
  EXPECT_EQ(v("sluice_upstream_connect_failures_total"), 1);
  EXPECT_EQ(v("sluice_rejections_total", {{"reason", "auth"}}), 4);
  EXPECT_EQ(v("sluice_rejections_total", {{"reason", "denied"}}), 6);
  EXPECT_EQ(v("sluice_rejections_total", {{"reason", "rate_limit"}}), 8);
  EXPECT_EQ(v("sluice_rejections_total", {{"reason", "concurrency"}}), 9);
  EXPECT_EQ(v("sluice_rejections_total", {{"reason", "busy"}}), 12);
  EXPECT_EQ(v("sluice_rejections_total", {{"reason", "overload"}}), 15);
  EXPECT_EQ(v("sluice_rejections_total", {{"reason", "model"}}), 31);
  EXPECT_EQ(v("sluice_rejections_total", {{"reason", "registry"}}), 32);
  EXPECT_EQ(v("sluice_rejections_total", {{"reason", "body"}}), 33);
  EXPECT_EQ(v("sluice_rejections_total", {{"reason", "over_max"}}), 34);
  EXPECT_EQ(v("sluice_body_rewrites_total", {{"kind", "alias"}}), 35);
  EXPECT_EQ(v("sluice_body_rewrites_total", {{"kind", "num_predict"}}), 38);
  EXPECT_EQ(v("sluice_connections_dropped_total"), 16);
  EXPECT_EQ(v("sluice_recv_buffers_in_use"), 21);
  EXPECT_EQ(v("sluice_recv_buffer_copies_total"), 22);
  EXPECT_EQ(v("sluice_recv_buffer_pressure_pauses_total"), 23);
  EXPECT_EQ(v("sluice_client_cancellations_total"), 13);
  EXPECT_EQ(v("sluice_tls_handshakes_total"), 7);
  EXPECT_EQ(v("sluice_tls_resumptions_total"), 3);
  EXPECT_EQ(v("sluice_tls_handshake_failures_total"), 2);
  EXPECT_EQ(v("sluice_access_log_dropped_lines_total"), 17);
}

TEST(RenderPrometheusTest, HistogramTextIsExact) {
  MetricsShard m;
  m.Route("api").request.Observe(7 * kMs);
  m.Route("api").request.Observe(1500 * kMs);
  const std::string text = RenderPrometheus(m, ProcessInfo{});
  const std::string want =
      "# TYPE sluice_request_duration_seconds histogram\n"
      "sluice_request_duration_seconds_bucket{route=\"api\",le=\"0.005\"} 0\n"
      "sluice_request_duration_seconds_bucket{route=\"api\",le=\"0.01\"} 1\n"
      "sluice_request_duration_seconds_bucket{route=\"api\",le=\"0.025\"} 1\n"
      "sluice_request_duration_seconds_bucket{route=\"api\",le=\"0.05\"} 1\n"
      "sluice_request_duration_seconds_bucket{route=\"api\",le=\"0.1\"} 1\n"
      "sluice_request_duration_seconds_bucket{route=\"api\",le=\"0.25\"} 1\n"
      "sluice_request_duration_seconds_bucket{route=\"api\",le=\"0.5\"} 1\n"
      "sluice_request_duration_seconds_bucket{route=\"api\",le=\"1\"} 1\n"
      "sluice_request_duration_seconds_bucket{route=\"api\",le=\"2.5\"} 2\n"
      "sluice_request_duration_seconds_bucket{route=\"api\",le=\"5\"} 2\n"
      "sluice_request_duration_seconds_bucket{route=\"api\",le=\"10\"} 2\n"
      "sluice_request_duration_seconds_bucket{route=\"api\",le=\"30\"} 2\n"
      "sluice_request_duration_seconds_bucket{route=\"api\",le=\"60\"} 2\n"
      "sluice_request_duration_seconds_bucket{route=\"api\",le=\"120\"} 2\n"
      "sluice_request_duration_seconds_bucket{route=\"api\",le=\"300\"} 2\n"
      "sluice_request_duration_seconds_bucket{route=\"api\",le=\"600\"} 2\n"
      "sluice_request_duration_seconds_bucket{route=\"api\",le=\"+Inf\"} 2\n"
      "sluice_request_duration_seconds_sum{route=\"api\"} 1.507\n"
      "sluice_request_duration_seconds_count{route=\"api\"} 2\n"
      "# HELP sluice_upstream_response_seconds ";
  EXPECT_NE(text.find(want), std::string::npos) << text;
}

// Sums are exact decimal seconds, not rounded to a few digits.
TEST(RenderPrometheusTest, SumKeepsNanoseconds) {
  MetricsShard m;
  for (int i = 0; i < 1000; ++i) m.Route("generation").request.Observe(123456 * kSec + 789);
  const std::string text = RenderPrometheus(m, ProcessInfo{});
  EXPECT_NE(
      text.find("sluice_request_duration_seconds_sum{route=\"generation\"} 123456000.000789\n"),
      std::string::npos)
      << text;
  MustParse(text);
}

TEST(RenderPrometheusTest, LabelValuesAreEscapedAndRoundTrip) {
  MetricsShard m;
  const std::string principal = "key:a\"b\\c\nd";
  const std::string model = "we\\ird \"model\"\n{x=\"1\"},";
  const std::string route = "grp\\\"\n";
  m.AddTokens(principal, model, 3, 4);
  m.Route(route).by_status[200] = 1;
  m.Route(route).request.Observe(1);
  ProcessInfo info;
  info.version = "v\"1\\\n";
  const std::string text = RenderPrometheus(m, info);
  EXPECT_NE(
      text.find("{key=\"key:a\\\"b\\\\c\\nd\",model=\"we\\\\ird \\\"model\\\"\\n{x=\\\"1\\\"},\""),
      std::string::npos)
      << text;
  auto families = MustParse(text);
  EXPECT_EQ(FindSample(families, "sluice_tokens_total",
                       {{"key", principal}, {"model", model}, {"type", "completion"}}),
            4);
  EXPECT_EQ(FindSample(families, "sluice_http_requests_total", {{"route", route}}), 1);
  EXPECT_EQ(FindSample(families, "sluice_request_duration_seconds_count", {{"route", route}}), 1);
  EXPECT_EQ(FindSample(families, "sluice_build_info", {{"version", info.version}}), 1);
}

TEST(RenderPrometheusTest, OutputIsSortedAndStable) {
  MetricsShard a, b;
  const std::vector<std::string> routes = {"zeta", "api", "generation", "internal", "m"};
  for (const std::string& r : routes) {
    a.Route(r).by_status[200] = 1;
    a.Route(r).by_status[503] = 2;
    a.Route(r).request.Observe(1 * kMs);
    a.AddTokens("key:" + r, "llama3", 1, 1);
    a.AddTokens("key:" + r, "alpha", 1, 1);
  }
  for (auto it = routes.rbegin(); it != routes.rend(); ++it) {
    b.Route(*it).by_status[503] = 2;
    b.Route(*it).by_status[200] = 1;
    b.Route(*it).request.Observe(1 * kMs);
    b.AddTokens("key:" + *it, "alpha", 1, 1);
    b.AddTokens("key:" + *it, "llama3", 1, 1);
  }
  const std::string text = RenderPrometheus(a, ProcessInfo{});
  EXPECT_EQ(text, RenderPrometheus(b, ProcessInfo{}));
  auto families = MustParse(text);
  const PromFamily* requests = FindFamily(families, "sluice_http_requests_total");
  ASSERT_NE(requests, nullptr);
  std::vector<std::pair<std::string, std::string>> order;
  for (const auto& s : requests->samples)
    order.emplace_back(s.labels[0].second, s.labels[1].second);
  EXPECT_TRUE(std::is_sorted(order.begin(), order.end()));
  EXPECT_EQ(order.front(), std::make_pair(std::string("api"), std::string("200")));
  const PromFamily* tokens = FindFamily(families, "sluice_token_requests_total");
  ASSERT_NE(tokens, nullptr);
  EXPECT_EQ(tokens->samples.front().labels[0].second, "key:api");
  EXPECT_EQ(tokens->samples.front().labels[1].second, "alpha");
}

TEST(RenderPrometheusTest, OddStatusCodesCountAsZero) {
  MetricsShard m;
  m.Route("api").by_status[0] = 1;
  m.Route("api").by_status[42] = 2;
  m.Route("api").by_status[600] = 3;
  m.Route("api").by_status[599] = 4;
  auto families = MustParse(RenderPrometheus(m, ProcessInfo{}));
  EXPECT_EQ(FindSample(families, "sluice_http_requests_total", {{"code", "0"}}), 6);
  EXPECT_EQ(FindSample(families, "sluice_http_requests_total", {{"code", "599"}}), 4);
  EXPECT_EQ(FindFamily(families, "sluice_http_requests_total")->samples.size(), 2u);
}

TEST(RenderPrometheusTest, MergedWorkersRenderTheirSum) {
  MetricsShard w0, w1, total;
  w0.Route("generation").by_status[200] = 2;
  w0.Route("generation").first_token.Observe(40 * kMs);
  w1.Route("generation").by_status[200] = 3;
  w1.Route("generation").first_token.Observe(40 * kMs);
  w0.connections_waiting = 2;
  w1.connections_waiting = 5;
  total.Merge(w0);
  total.Merge(w1);
  auto families = MustParse(RenderPrometheus(total, ProcessInfo{}));
  EXPECT_EQ(FindSample(families, "sluice_http_requests_total", {{"route", "generation"}}), 5);
  EXPECT_EQ(FindSample(families, "sluice_time_to_first_token_seconds_bucket",
                       {{"route", "generation"}, {"le", "0.05"}}),
            2);
  EXPECT_EQ(FindSample(families, "sluice_connections", {{"state", "waiting"}}), 7);
}

// Per backend: workers' counts add up; the shared view (up, loaded) is
// taken once.
TEST(RenderPrometheusTest, BackendFamiliesAddUpPerBackend) {
  MetricsShard w0, w1, total;
  for (MetricsShard* w : {&w0, &w1}) {
    w->backends.resize(2);
    w->backends[0].name = "gpu1";
    w->backends[1].name = "gpu2";
    w->backends[1].up = 0;
    w->backends[0].loaded = {"a:latest", "b:latest"};
  }
  w0.backends[0].requests = 3;
  w1.backends[0].requests = 4;
  w0.backends[0].in_flight = 1;
  w1.backends[0].in_flight = 2;
  w0.backends[1].failovers = 1;
  w0.backends[0].routed[0] = 5;  // loaded
  w1.backends[0].routed[3] = 2;  // cold
  w1.backends[0].routed[2] = 1;  // spill
  total.Merge(w0);
  total.Merge(w1);
  auto families = MustParse(RenderPrometheus(total, ProcessInfo{}));
  EXPECT_EQ(FindSample(families, "sluice_backend_requests_total", {{"backend", "gpu1"}}), 7);
  EXPECT_EQ(FindSample(families, "sluice_backend_in_flight", {{"backend", "gpu1"}}), 3);
  EXPECT_EQ(FindSample(families, "sluice_backend_up", {{"backend", "gpu1"}}), 1);
  EXPECT_EQ(FindSample(families, "sluice_backend_up", {{"backend", "gpu2"}}), 0);
  EXPECT_EQ(FindSample(families, "sluice_backend_loaded_models", {{"backend", "gpu1"}}), 2);
  EXPECT_EQ(FindSample(families, "sluice_backend_failovers_total", {{"backend", "gpu2"}}), 1);
  EXPECT_EQ(FindSample(families, "sluice_backend_model_loads_total", {{"backend", "gpu1"}}), 3);
  EXPECT_EQ(FindSample(families, "sluice_backend_routed_total",
                       {{"backend", "gpu1"}, {"kind", "loaded"}}),
            5);
  EXPECT_EQ(
      FindSample(families, "sluice_backend_routed_total", {{"backend", "gpu2"}, {"kind", "cold"}}),
      0);
}

// The slot queues: gauges per (backend, model) from the scheduler's view,
// waits per backend summed over workers, slot time per principal (capped).
TEST(RenderPrometheusTest, QueueFamilies) {
  MetricsShard w0, w1, total;
  for (MetricsShard* w : {&w0, &w1}) {
    w->backends.resize(2);
    w->backends[0].name = "gpu1";
    w->backends[1].name = "gpu2";
  }
  w0.backends[0].queue_wait.Observe(0);
  w1.backends[0].queue_wait.Observe(2'000'000'000);
  w0.AddSlotTime("key:alice", 1'500'000'000);
  w1.AddSlotTime("key:alice", 500'000'000);
  w1.AddSlotTime("", 250'000'000);
  w1.rejected_queue_key = 2;
  w0.rejected_queue_timeout = 1;
  total.Merge(w0);
  total.Merge(w1);
  total.queues.push_back(QueueGauge{"gpu1", "llama3:8b", 2, 2, 5});
  auto families = MustParse(RenderPrometheus(total, ProcessInfo{}));
  const std::vector<std::pair<std::string, std::string>> q = {{"backend", "gpu1"},
                                                              {"model", "llama3:8b"}};
  EXPECT_EQ(FindSample(families, "sluice_queue_waiting", q), 5);
  EXPECT_EQ(FindSample(families, "sluice_slots_in_use", q), 2);
  EXPECT_EQ(FindSample(families, "sluice_slots", q), 2);
  EXPECT_EQ(FindSample(families, "sluice_queue_wait_seconds_count", {{"backend", "gpu1"}}), 2);
  EXPECT_EQ(FindSample(families, "sluice_queue_wait_seconds_sum", {{"backend", "gpu1"}}), 2);
  EXPECT_EQ(FindSample(families, "sluice_queue_wait_seconds_bucket",
                       {{"backend", "gpu1"}, {"le", "0.001"}}),
            1);
  EXPECT_EQ(FindSample(families, "sluice_queue_wait_seconds_bucket",
                       {{"backend", "gpu1"}, {"le", "2.5"}}),
            2);
  // A backend nothing waited for has no series.
  EXPECT_FALSE(FindSample(families, "sluice_queue_wait_seconds_count", {{"backend", "gpu2"}}));
  EXPECT_EQ(FindSample(families, "sluice_slot_seconds_total", {{"key", "key:alice"}}), 2);
  EXPECT_EQ(FindSample(families, "sluice_slot_seconds_total", {{"key", "-"}}), 0.25);
  EXPECT_EQ(FindSample(families, "sluice_rejections_total", {{"reason", "queue_key"}}), 2);
  EXPECT_EQ(FindSample(families, "sluice_rejections_total", {{"reason", "queue_timeout"}}), 1);

  MetricsShard capped;
  for (size_t i = 0; i < MetricsShard::kMaxTokenSeries + 5; ++i) {
    capped.AddSlotTime("key:k" + std::to_string(i), 1'000'000'000);
  }
  EXPECT_EQ(capped.slot_ns.size(), MetricsShard::kMaxTokenSeries + 1);
  EXPECT_EQ(capped.slot_ns["_other"], 5'000'000'000);
}

// -------------------------------------------------------------- StubStatus

TEST(StubStatusTest, ExactBytesAsNginx) {
  MetricsShard m;
  m.connections_accepted = 10;
  m.connections_handled = 10;
  m.requests = 25;
  m.connections_reading = 0;
  m.connections_writing = 1;
  m.connections_waiting = 2;
  EXPECT_EQ(RenderStubStatus(m),
            "Active connections: 3 \n"
            "server accepts handled requests\n"
            " 10 10 25 \n"
            "Reading: 0 Writing: 1 Waiting: 2 \n");
  EXPECT_EQ(RenderStubStatus(MetricsShard{}),
            "Active connections: 0 \n"
            "server accepts handled requests\n"
            " 0 0 0 \n"
            "Reading: 0 Writing: 0 Waiting: 0 \n");
  MetricsShard big;
  big.connections_accepted = 18446744073709551615u;
  big.connections_reading = 4000000000;
  EXPECT_EQ(RenderStubStatus(big),
            "Active connections: 4000000000 \n"
            "server accepts handled requests\n"
            " 18446744073709551615 0 0 \n"
            "Reading: 4000000000 Writing: 0 Waiting: 0 \n");
}

// ---------------------------------------------------- ParsePrometheusText

TEST(PromTextTest, EmptyTextHasNoFamilies) {
  auto parsed = ParsePrometheusText("");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->empty());
}

TEST(PromTextTest, AcceptsTheFormatsVariety) {
  const std::string text =
      "# a plain comment\n"
      "# HELP http_requests_total The total number of HTTP requests.\n"
      "# TYPE http_requests_total counter\n"
      "http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\n"
      "http_requests_total{method=\"post\",code=\"400\",} 3 1395066363000\n"
      "# TYPE odd:name gauge\n"
      "# HELP odd:name Back\\\\slash and\\nnewline.\n"
      "odd:name{path=\"C:\\\\DIR\\\\FILE.TXT\",error=\"Cannot find file:\\n\\\"FILE.TXT\\\"\"} "
      "-1.5e-3\n"
      "weird_untyped{} +Inf\n"
      "nan_gauge NaN\n"
      "neg_inf -Inf\n"
      "# HELP h A histogram.\n"
      "# TYPE h histogram\n"
      "h_bucket{le=\"0.05\"} 24054\n"
      "h_bucket{le=\"0.1\"} 33444\n"
      "h_bucket{le=\"+Inf\"} 144320\n"
      "h_sum 53423\n"
      "h_count 144320\n"
      "h_bucket{x=\"1\",le=\"1e1\"} 0\n"
      "h_bucket{x=\"1\",le=\"+Inf\"} 0\n"
      "h_sum{x=\"1\"} 0\n"
      "h_count{x=\"1\"} 0\n"
      "# TYPE s summary\n"
      "s{quantile=\"0.5\"} 4773\n"
      "s{quantile=\"0.99\"} 76656\n"
      "s_sum 1.7560473e+07\n"
      "s_count 2693\n";
  auto parsed = ParsePrometheusText(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const auto& f = *parsed;
  ASSERT_EQ(f.size(), 7u);
  EXPECT_EQ(f[0].name, "http_requests_total");
  EXPECT_EQ(f[0].type, "counter");
  EXPECT_EQ(f[0].help, "The total number of HTTP requests.");
  EXPECT_EQ(f[1].name, "odd:name");
  EXPECT_EQ(f[1].help, "Back\\slash and\nnewline.");
  ASSERT_EQ(f[1].samples.size(), 1u);
  EXPECT_EQ(f[1].samples[0].labels[0].second, "C:\\DIR\\FILE.TXT");
  EXPECT_EQ(f[1].samples[0].labels[1].second, "Cannot find file:\n\"FILE.TXT\"");
  EXPECT_EQ(f[1].samples[0].value, -1.5e-3);
  EXPECT_EQ(f[2].type, "untyped");
  EXPECT_TRUE(std::isinf(f[2].samples[0].value));
  EXPECT_TRUE(std::isnan(f[3].samples[0].value));
  EXPECT_EQ(f[4].samples[0].value, -HUGE_VAL);
  EXPECT_EQ(f[5].samples.size(), 9u);
  EXPECT_EQ(FindSample(f, "http_requests_total", {{"code", "400"}}), 3);
  EXPECT_EQ(FindSample(f, "http_requests_total", {}), 1027);  // the first match
  EXPECT_EQ(FindSample(f, "h_bucket", {{"le", "+Inf"}}), 144320);
  EXPECT_EQ(FindSample(f, "h_bucket", {{"x", "1"}, {"le", "+Inf"}}), 0);
  EXPECT_FALSE(FindSample(f, "h_bucket", {{"x", "2"}}).has_value());
  EXPECT_FALSE(FindSample(f, "nope", {}).has_value());
  EXPECT_EQ(FindSample(f, "s", {{"quantile", "0.99"}}), 76656);
}

TEST(PromTextTest, RejectsBrokenInputs) {
  const std::vector<std::pair<const char*, std::string>> cases = {
      {"no final newline", "a 1"},
      {"empty line", "a 1\n\nb 2\n"},
      {"only a newline", "\n"},
      {"bad metric name", "1a 1\n"},
      {"bad char in name", "a-b 1\n"},
      {"bad label name", "a{1x=\"v\"} 1\n"},
      {"reserved label name", "a{__name__=\"v\"} 1\n"},
      {"duplicate label", "a{x=\"1\",x=\"2\"} 1\n"},
      {"unquoted label value", "a{x=1} 1\n"},
      {"unterminated label value", "a{x=\"1} 1\n"},
      {"unterminated label list", "a{x=\"1\" 1\n"},
      {"bad escape in label value", "a{x=\"\\t\"} 1\n"},
      {"bad escape in help", "# HELP a x\\ty\na 1\n"},
      {"missing value", "a\n"},
      {"bad value", "a 1x\n"},
      {"value lower-case inf", "a inf\n"},
      {"hex value", "a 0x10\n"},
      {"bad timestamp", "a 1 12.5\n"},
      {"trailing space", "a 1 \n"},
      {"two spaces", "a  1\n"},
      {"leading space", " a 1\n"},
      {"unknown type", "# TYPE a countr\na 1\n"},
      {"type without name", "# TYPE\n"},
      {"second TYPE", "# TYPE a counter\n# TYPE a counter\na 1\n"},
      {"second HELP", "# HELP a x\n# HELP a y\na 1\n"},
      {"HELP after samples", "# TYPE a counter\na 1\n# HELP a late\n"},
      {"TYPE after samples", "a 1\n# TYPE a gauge\n"},
      {"family repeated", "a 1\nb 2\na{x=\"1\"} 3\n"},
      {"family metadata repeated", "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# HELP a again\n"},
      {"duplicate series", "a{x=\"1\",y=\"2\"} 1\na{y=\"2\",x=\"1\"} 2\n"},
      {"negative counter", "# TYPE a_total counter\na_total -1\n"},
      {"counter sample under another name", "# TYPE a counter\na_sum 1\na 2\n"},
      {"histogram plain sample", "# TYPE h histogram\nh 1\n"},
      {"histogram bucket without le",
       "# TYPE h histogram\nh_bucket 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"},
      {"histogram without +Inf", "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n"},
      {"histogram not cumulative",
       "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"},
      {"histogram le not ascending",
       "# TYPE h histogram\nh_bucket{le=\"2\"} 0\nh_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 0\n"
       "h_sum 0\nh_count 0\n"},
      {"histogram count differs",
       "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n"},
      {"histogram without count", "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\n"},
      {"histogram without sum", "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n"},
      {"histogram bad le", "# TYPE h histogram\nh_bucket{le=\"x\"} 2\n"},
      {"histogram sum with le",
       "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum{le=\"1\"} 1\nh_count 2\n"},
      {"histogram group without buckets",
       "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\nh_sum{x=\"1\"} 1\n"
       "h_count{x=\"1\"} 1\n"},
      {"histogram sample after another family",
       "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\nb 1\nh_count{a=\"b\"} "
       "1\n"},
      {"family named like a histogram's series",
       "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n# TYPE h_sum gauge\n"},
      {"summary without quantile", "# TYPE s summary\ns 1\ns_sum 1\ns_count 1\n"},
      {"CR line ending", "a 1\r\n"},
  };
  for (const auto& [what, text] : cases) {
    auto parsed = ParsePrometheusText(text);
    EXPECT_FALSE(parsed.ok()) << what << ": accepted\n" << text;
    if (!parsed.ok()) {
      EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << what;
    }
  }
}

TEST(PromTextTest, ErrorsNameTheLine) {
  auto parsed = ParsePrometheusText("a 1\nb 2\nc{x=\"\\q\"} 3\n");
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("line 3"), absl::string_view::npos) << parsed.status();
}

}  // namespace
}  // namespace sluice::core
