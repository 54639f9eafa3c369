#include "core/proxy/request_record.h"

#include <string>
#include <utility>

#include "gtest/gtest.h"

namespace sluice::core {
namespace {

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kT0 = 5'000 * kMs;  // the request head's arrival
constexpr int64_t kUnixT0 = 1'700'000'000'000'000'000;

http::RequestHead Head(std::string method, std::string target) {
  http::RequestHead h;
  h.method = std::move(method);
  h.target = std::move(target);
  h.version_major = 1;
  h.version_minor = 1;
  h.headers.push_back(http::Header{"User-Agent", "test/1"});
  return h;
}

http::ResponseHead Response(int status, std::string content_type) {
  http::ResponseHead r;
  r.status = status;
  if (!content_type.empty()) r.headers.push_back(http::Header{"Content-Type", content_type});
  return r;
}

policy::Admission Admitted(std::string group, std::string principal) {
  policy::Admission a;
  a.group = std::move(group);
  a.principal = std::move(principal);
  a.client_text = "192.0.2.7";
  a.path.match = "/api/chat";
  return a;
}

RequestRecord NewRecord(bool accounting = true) {
  return RequestRecord(accounting, /*connection=*/42, /*worker=*/3, kT0, kUnixT0);
}

// Two token lines in one read, one more later, then the final count.
constexpr std::string_view kChunk1 =
    "{\"model\":\"m1\",\"message\":{\"content\":\"He\"},\"done\":false}\n"
    "{\"model\":\"m1\",\"message\":{\"content\":\"l\"},\"done\":false}\n";
constexpr std::string_view kChunk2 =
    "{\"model\":\"m1\",\"message\":{\"content\":\"lo\"},\"done\":false}\n";
constexpr std::string_view kFinal =
    "{\"model\":\"m1\",\"message\":{\"content\":\"\"},\"done\":true,"
    "\"prompt_eval_count\":26,\"eval_count\":3}\n";

TEST(RequestRecordTest, StreamedAnswerIsCountedAndLoggedOnce) {
  RequestRecord record = NewRecord();
  const http::RequestHead head = Head("POST", "/api/chat");
  const policy::Admission admission = Admitted("generation", "key:alice");
  record.ExpectRequestBody();
  record.RequestBody("{\"model\":\"m1\",\"stream\":true}");
  record.UpstreamStarted(kT0 + 1 * kMs);
  record.UpstreamStarted(kT0 + 9 * kMs);  // a retry: the first start counts
  record.ResponseStarted(Response(200, "application/x-ndjson"), false, "/api/chat");
  record.ResponseBody(kChunk1, kT0 + 100 * kMs);
  record.ResponseBody(kChunk2, kT0 + 130 * kMs);
  record.ResponseBody(kFinal, kT0 + 140 * kMs);
  record.ResponseComplete(kT0 + 140 * kMs);

  MetricsShard metrics;
  AccessRecord line;
  ASSERT_TRUE(record.Finish(kT0 + 150 * kMs, head, admission, "10.0.0.1:5555", &metrics, &line));
  EXPECT_EQ(line.status, 200);
  EXPECT_EQ(line.method, "POST");
  EXPECT_EQ(line.target, "/api/chat");
  EXPECT_EQ(line.protocol, "HTTP/1.1");
  EXPECT_EQ(line.user_agent, "test/1");
  EXPECT_EQ(line.remote_addr, "192.0.2.7");  // the policy's client, not the peer
  EXPECT_EQ(line.body_bytes_sent, kChunk1.size() + kChunk2.size() + kFinal.size());
  EXPECT_EQ(line.request_time_ns, 150 * kMs);
  EXPECT_EQ(line.upstream_time_ns, 149 * kMs);
  EXPECT_EQ(line.start_unix_ns, kUnixT0);
  EXPECT_EQ(line.principal, "key:alice");
  EXPECT_EQ(line.route, "generation");
  EXPECT_EQ(line.model, "m1");
  EXPECT_TRUE(line.stream);
  EXPECT_EQ(line.ttft_ns, 100 * kMs);
  EXPECT_EQ(line.gap_max_ns, 30 * kMs);  // gaps 0 (same read) and 30 ms
  EXPECT_EQ(line.prompt_tokens, 26);
  EXPECT_EQ(line.completion_tokens, 3);
  EXPECT_FALSE(line.cancelled);
  EXPECT_EQ(line.worker, 3);
  EXPECT_EQ(line.connection, 42u);

  const RouteStats& route = metrics.routes.at("generation");
  EXPECT_EQ(route.by_status.at(200), 1u);
  EXPECT_EQ(route.request.count(), 1u);
  EXPECT_EQ(route.upstream.count(), 1u);
  EXPECT_EQ(route.first_token.count(), 1u);
  EXPECT_EQ(route.token_gap.count(), 2u);
  const TokenTotals& tokens = metrics.tokens.at({"key:alice", "m1"});
  EXPECT_EQ(tokens.requests, 1u);
  EXPECT_EQ(tokens.prompt, 26u);
  EXPECT_EQ(tokens.completion, 3u);
  EXPECT_EQ(metrics.client_cancellations, 0u);

  // Ended once: a second Finish counts and logs nothing.
  AccessRecord again;
  EXPECT_FALSE(record.Finish(kT0 + 200 * kMs, head, admission, "10.0.0.1:5555", &metrics, &again));
  EXPECT_EQ(again.status, 0);
  EXPECT_EQ(route.by_status.at(200), 1u);
  EXPECT_EQ(route.request.count(), 1u);
}

TEST(RequestRecordTest, ClientGoneMidStreamIs499WithTheTokensRelayed) {
  RequestRecord record = NewRecord();
  const http::RequestHead head = Head("POST", "/api/chat");
  const policy::Admission admission = Admitted("generation", "");
  record.UpstreamStarted(kT0);
  record.ResponseStarted(Response(200, "application/x-ndjson"), false, "/api/chat");
  record.ResponseBody(kChunk1, kT0 + 10 * kMs);
  record.Cancelled();

  MetricsShard metrics;
  AccessRecord line;
  ASSERT_TRUE(record.Finish(kT0 + 20 * kMs, head, admission, "10.0.0.1:5555", &metrics, &line));
  EXPECT_EQ(line.status, 499);
  EXPECT_TRUE(line.cancelled);
  EXPECT_EQ(line.prompt_tokens, -1);
  EXPECT_EQ(line.completion_tokens, 2);  // the token events relayed
  EXPECT_EQ(line.model, "m1");           // from the response
  EXPECT_EQ(metrics.client_cancellations, 1u);
  EXPECT_EQ(metrics.routes.at("generation").by_status.at(499), 1u);
  EXPECT_EQ(metrics.tokens.at({"-", "m1"}).completion, 2u);
}

TEST(RequestRecordTest, RefusalIsLoggedUnderTheAnswerItGot) {
  RequestRecord record = NewRecord();
  http::RequestHead head = Head("GET", "/api/tags");
  policy::Admission admission;  // refused before a route was found
  admission.basic_user = "ann";
  record.Answered(401, 57);

  MetricsShard metrics;
  AccessRecord line;
  ASSERT_TRUE(record.Finish(kT0 + 2 * kMs, head, admission, "10.0.0.1:5555", &metrics, &line));
  EXPECT_EQ(line.status, 401);
  EXPECT_EQ(line.body_bytes_sent, 57u);
  EXPECT_EQ(line.route, "other");
  EXPECT_EQ(line.remote_addr, "10.0.0.1:5555");  // no client resolved: the peer
  EXPECT_EQ(line.user, "ann");                   // the Basic user it tried
  EXPECT_EQ(line.upstream_time_ns, -1);
  EXPECT_EQ(line.ttft_ns, -1);
  EXPECT_EQ(line.model, "");
  EXPECT_EQ(metrics.routes.at("other").by_status.at(401), 1u);
  EXPECT_EQ(metrics.routes.at("other").upstream.count(), 0u);
  EXPECT_TRUE(metrics.tokens.empty());
}

TEST(RequestRecordTest, OnlyGenerationSuccessesAreReadForTokens) {
  struct Case {
    int status;
    bool head_request;
    std::string match;
    std::string content_type;
  } cases[] = {
      {200, false, "/api/tags", "application/json"},  // not a generation route
      {500, false, "/api/chat", "application/json"},  // not a 2xx
      {200, true, "/api/chat", "application/json"},   // HEAD: no body
      {200, false, "/api/chat", "text/html"},         // not JSON, NDJSON or SSE
  };
  for (const Case& c : cases) {
    RequestRecord record = NewRecord();
    record.ResponseStarted(Response(c.status, c.content_type), c.head_request, c.match);
    record.ResponseBody(kFinal, kT0 + 5 * kMs);
    record.ResponseComplete(kT0 + 5 * kMs);
    MetricsShard metrics;
    AccessRecord line;
    ASSERT_TRUE(record.Finish(kT0 + 6 * kMs, Head("POST", c.match), Admitted("api", ""), "p",
                              &metrics, &line));
    EXPECT_EQ(line.status, c.status) << c.match;
    EXPECT_EQ(line.body_bytes_sent, kFinal.size()) << c.match;
    EXPECT_EQ(line.completion_tokens, -1) << c.match << " " << c.status;
    EXPECT_EQ(line.ttft_ns, -1) << c.match << " " << c.status;
    EXPECT_FALSE(line.stream);
    EXPECT_TRUE(metrics.tokens.empty());
  }
}

TEST(RequestRecordTest, LogNamesTheTargetTheClientSent) {
  RequestRecord record = NewRecord();
  http::RequestHead head = Head("GET", "/api/tags");  // as forwarded
  record.set_original_target("/api/../api/tags?x=1");
  record.Answered(200, 0);
  AccessRecord line;
  ASSERT_TRUE(record.Finish(kT0, head, Admitted("api", ""), "p", nullptr, &line));
  EXPECT_EQ(line.target, "/api/../api/tags?x=1");
}

TEST(RequestRecordTest, WithoutAccountingNothingIsReadOrCounted) {
  RequestRecord record = NewRecord(/*accounting=*/false);
  record.ExpectRequestBody();
  record.RequestBody("{\"model\":\"m1\"}");
  record.ResponseStarted(Response(200, "application/x-ndjson"), false, "/api/chat");
  record.ResponseBody(kChunk1, kT0 + 1 * kMs);
  MetricsShard metrics;
  AccessRecord line;
  EXPECT_FALSE(record.Finish(kT0 + 2 * kMs, Head("POST", "/api/chat"), Admitted("generation", ""),
                             "p", &metrics, &line));
  EXPECT_TRUE(metrics.routes.empty());
  EXPECT_EQ(line.status, 0);
  EXPECT_TRUE(record.finished());
}

}  // namespace
}  // namespace sluice::core
