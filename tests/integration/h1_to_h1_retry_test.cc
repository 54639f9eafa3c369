// HTTP/1.1 client to HTTP/1.1 upstream: the retry of a request whose pooled
// keepalive link died before any response byte (RFC 9110 9.2.2, README
// "Behaviour"), and the cases where sluice must not retry.
//
// The simulator's X-Sim-Drop-Next-Request: 1 marks the upstream link that
// carried it; the next request on that link is read and the link closed
// without an answer, as an Ollama whose keepalive timeout fired just then.
// One worker (--threads=1) owns one pool, so "the next request" always
// goes out on the marked link.
//
// Connection counts come from /sim/stats after a reset: every link sluice
// opens counts once, and so does the stats request's own connection.
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {
namespace {

// The largest request body kept for a retry (README: 64 KiB).
constexpr size_t kReplayLimit = 64 * 1024;

class H1ToH1Retry : public ProxyTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--threads=1"}));
    IT_ASSERT_OK(ResetSim(sim_port()));
    IT_ASSERT_OK_AND_ASSIGN(conn_, HttpConnection::Connect(proxy_port()));
  }

  // Sends one request on the client connection and reads its answer.
  absl::StatusOr<HttpResponse> Roundtrip(const std::string& request) {
    absl::Status st = conn_->Send(request);
    if (!st.ok()) return st;
    return conn_->ReadResponse(absl::Seconds(10));
  }

  // A complete answer on a fresh upstream link, which then goes back to the
  // pool marked so that the sim drops the next request sent on it.
  void PoolMarkedLink() {
    IT_ASSERT_OK_AND_ASSIGN(
        HttpResponse r,
        Roundtrip(BuildRequest("GET", "/api/tags", {{"X-Sim-Drop-Next-Request", "1"}})));
    ASSERT_EQ(r.status, 200) << r.body;
    ASSERT_TRUE(absl::StrContains(r.body, "sim:latest")) << r.body;
  }

  // Links sluice opened since the reset: the stats connection is not one.
  absl::StatusOr<int64_t> UpstreamLinksOpened() {
    absl::StatusOr<SimStats> stats = FetchSimStats(sim_port());
    if (!stats.ok()) return stats.status();
    return stats->opened - 1;
  }

  static void ExpectUpstreamUnavailable(const HttpResponse& r) {
    EXPECT_EQ(r.status, 502) << r.body;
    EXPECT_TRUE(absl::StartsWith(r.Header("Content-Type").value_or(""), "application/json"))
        << "Content-Type: " << r.Header("Content-Type").value_or("(none)");
    EXPECT_EQ(JsonError(r.body).value_or("(not a JSON error: " + r.body + ")"),
              "upstream unavailable");
  }

  std::unique_ptr<HttpConnection> conn_;
};

// The request without a body that hits the dead pooled link is sent again
// on a fresh link: the client sees one ordinary 200.
TEST_F(H1ToH1Retry, GetOnDeadPooledLinkIsRetriedOnFreshLink) {
  ASSERT_NO_FATAL_FAILURE(PoolMarkedLink());
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, Roundtrip(BuildRequest("GET", "/api/tags")));
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(absl::StrContains(r.body, "sim:latest")) << r.body;

  IT_ASSERT_OK_AND_ASSIGN(SimStats stats, FetchSimStats(sim_port()));
  // The marked link, the retry's fresh link, the stats connection.
  EXPECT_EQ(stats.opened, 3) << "expected exactly one extra upstream link";
  // The dropped request never reached a handler: two answered requests.
  EXPECT_EQ(stats.requests, 2);

  // The fresh link went back to the pool: the client connection and the
  // pool both keep working without another connect.
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse again, Roundtrip(BuildRequest("GET", "/api/version")));
  EXPECT_EQ(again.status, 200) << again.body;
  IT_ASSERT_OK_AND_ASSIGN(int64_t links, UpstreamLinksOpened());
  EXPECT_EQ(links, 3) << "the marked link, the retry link and the first "
                         "stats connection; nothing new for the last request";
}

// A body is replayed byte for byte on the fresh link, and the request head
// is sent once (no duplicated headers from the first attempt).
TEST_F(H1ToH1Retry, ContentLengthBodyIsReplayedIntact) {
  ASSERT_NO_FATAL_FAILURE(PoolMarkedLink());
  std::string body;
  for (int i = 0; body.size() < 20000; ++i) absl::StrAppend(&body, i, ",");
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse r,
      Roundtrip(BuildRequest("POST", "/sim/echo?retry=1",
                             {{"Content-Type", "text/plain"}, {"X-Trace", "one"}}, body)));
  ASSERT_EQ(r.status, 200) << r.body;
  std::optional<EchoedRequest> echo = ParseEcho(r.body);
  ASSERT_TRUE(echo.has_value()) << r.body;
  EXPECT_EQ(echo->method, "POST");
  EXPECT_EQ(echo->target, "/sim/echo?retry=1");
  EXPECT_EQ(echo->body.size(), body.size());
  EXPECT_TRUE(echo->body == body) << "the replayed body differs";
  EXPECT_EQ(echo->All("X-Trace").size(), 1u) << echo->HeaderDump();
  EXPECT_EQ(echo->All("Host").size(), 1u) << echo->HeaderDump();
  IT_ASSERT_OK_AND_ASSIGN(int64_t links, UpstreamLinksOpened());
  EXPECT_EQ(links, 2);
}

// A chunked request body is replayed with its framing, the last chunk
// included, so the upstream sees one complete request.
TEST_F(H1ToH1Retry, ChunkedBodyIsReplayedIntact) {
  ASSERT_NO_FATAL_FAILURE(PoolMarkedLink());
  std::string request =
      "POST /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      "Transfer-Encoding: chunked\r\n\r\n";
  std::string body;
  for (int i = 0; i < 4; ++i) {
    std::string piece(1000 + i, static_cast<char>('a' + i));
    absl::StrAppend(&request, absl::Hex(piece.size()), "\r\n", piece, "\r\n");
    body += piece;
  }
  request += "0\r\n\r\n";
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, Roundtrip(request));
  ASSERT_EQ(r.status, 200) << r.body;
  std::optional<EchoedRequest> echo = ParseEcho(r.body);
  ASSERT_TRUE(echo.has_value()) << r.body;
  EXPECT_TRUE(echo->body == body) << "echoed " << echo->body.size() << " bytes, sent "
                                  << body.size();
  IT_ASSERT_OK_AND_ASSIGN(int64_t links, UpstreamLinksOpened());
  EXPECT_EQ(links, 2);
}

// Exactly at the replay limit the body is still kept, so the retry happens.
TEST_F(H1ToH1Retry, BodyAtReplayLimitIsRetried) {
  ASSERT_NO_FATAL_FAILURE(PoolMarkedLink());
  std::string body(kReplayLimit, 'r');
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, Roundtrip(BuildRequest("POST", "/sim/echo", {}, body)));
  ASSERT_EQ(r.status, 200) << r.body;
  std::optional<EchoedRequest> echo = ParseEcho(r.body);
  ASSERT_TRUE(echo.has_value()) << r.body;
  EXPECT_EQ(echo->body.size(), body.size());
  EXPECT_TRUE(echo->body == body);
  IT_ASSERT_OK_AND_ASSIGN(int64_t links, UpstreamLinksOpened());
  EXPECT_EQ(links, 2);
}

// One byte over the limit the body was streamed without a copy, so it
// cannot be sent again: 502, and no second link is opened.
TEST_F(H1ToH1Retry, BodyAboveReplayLimitIsNotRetried) {
  ASSERT_NO_FATAL_FAILURE(PoolMarkedLink());
  std::string body(kReplayLimit + 1, 'r');
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, Roundtrip(BuildRequest("POST", "/sim/echo", {}, body)));
  ExpectUpstreamUnavailable(r);
  IT_ASSERT_OK_AND_ASSIGN(int64_t links, UpstreamLinksOpened());
  EXPECT_EQ(links, 1) << "a body that was not kept must not be retried";
}

// Retried once only: when the fresh link fails as well (the sim closes it
// without an answer: X-Sim-Close-After: 0 on a stream:false request), the
// client gets 502 and no third link is tried.
TEST_F(H1ToH1Retry, FreshLinkFailingTooIs502WithoutSecondRetry) {
  ASSERT_NO_FATAL_FAILURE(PoolMarkedLink());
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse r,
      Roundtrip(BuildRequest("POST", "/api/generate",
                             {{"Content-Type", "application/json"}, {"X-Sim-Close-After", "0"}},
                             R"({"model":"sim","prompt":"hi","stream":false})")));
  ExpectUpstreamUnavailable(r);
  IT_ASSERT_OK_AND_ASSIGN(SimStats stats, FetchSimStats(sim_port()));
  EXPECT_EQ(stats.opened - 1, 2) << "the marked link and one retry link, no more";
  // /api/tags, then the generation on the retry link (dropped on the first).
  EXPECT_EQ(stats.requests, 2);

  // The next request is served normally.
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse ok,
                          Exchange(proxy_port(), BuildRequest("GET", "/api/tags")));
  EXPECT_EQ(ok.status, 200) << ok.body;
}

// A fresh link that fails before any response byte is not retried: only a
// reused link may have been closed by the upstream's idle timeout.
TEST_F(H1ToH1Retry, FreshLinkFailureIsNotRetried) {
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse r,
      Roundtrip(BuildRequest("POST", "/api/generate",
                             {{"Content-Type", "application/json"}, {"X-Sim-Close-After", "0"}},
                             R"({"model":"sim","prompt":"hi","stream":false})")));
  ExpectUpstreamUnavailable(r);
  IT_ASSERT_OK_AND_ASSIGN(int64_t links, UpstreamLinksOpened());
  EXPECT_EQ(links, 1);
}

// A link that fails after the response began is not retried either: the
// head already went to the client, whose stream is cut short.
TEST_F(H1ToH1Retry, FailureAfterResponseBytesIsNotRetried) {
  // A plain answer leaves a clean reused link in the pool.
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse warm, Roundtrip(BuildRequest("GET", "/api/version")));
  ASSERT_EQ(warm.status, 200) << warm.body;
  IT_ASSERT_OK(ResetSim(sim_port()));

  IT_ASSERT_OK(conn_->Send(BuildRequest("POST", "/api/generate",
                                        {{"Content-Type", "application/json"},
                                         {"X-Sim-Tokens", "5"},
                                         {"X-Sim-Token-Delay-Ms", "5"},
                                         {"X-Sim-Close-After", "2"}},
                                        R"({"model":"sim","prompt":"hi"})")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse head, conn_->ReadHead(absl::Seconds(10)));
  EXPECT_EQ(head.status, 200);
  absl::Status body = conn_->ReadBody(&head, absl::Seconds(10));
  EXPECT_FALSE(body.ok() && head.saw_last_chunk)
      << "a truncated upstream stream must not end cleanly downstream";
  EXPECT_FALSE(absl::StrContains(head.body, "\"done\":true")) << head.body;

  IT_ASSERT_OK_AND_ASSIGN(SimStats stats, FetchSimStats(sim_port()));
  EXPECT_EQ(stats.opened, 1) << "only the stats connection: no retry link";
  EXPECT_EQ(stats.requests, 1);
}

}  // namespace
}  // namespace sluice::integration
