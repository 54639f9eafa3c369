// HTTP/1.1 client to HTTP/1.1 upstream: the error answers of DESIGN.md
// (413, 431, 502, 504), each a JSON {"error": ...} body.
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {
namespace {

void ExpectJsonError(const HttpResponse& r, int status, absl::string_view message = "") {
  EXPECT_EQ(r.status, status) << r.body;
  EXPECT_TRUE(absl::StartsWith(r.Header("Content-Type").value_or(""), "application/json"))
      << "Content-Type: " << r.Header("Content-Type").value_or("(none)");
  std::optional<std::string> error = JsonError(r.body);
  ASSERT_TRUE(error.has_value()) << "not a JSON error body: " << r.body;
  if (!message.empty()) {
    EXPECT_EQ(*error, message);
  }
}

class H1ToH1BodyLimit : public ProxyTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--client_max_body_size=1k"}));
    IT_ASSERT_OK(ResetSim(sim_port()));
  }
};

// The head alone announces too much: 413 without waiting for the body, and
// nothing reaches the upstream.
TEST_F(H1ToH1BodyLimit, ContentLengthAboveLimitIs413) {
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(
      conn->Send("POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse(absl::Seconds(5)));
  ExpectJsonError(r, 413, "request body too large");
  IT_ASSERT_OK_AND_ASSIGN(SimStats stats, FetchSimStats(sim_port()));
  EXPECT_EQ(stats.requests, 0);
}

TEST_F(H1ToH1BodyLimit, ChunkedBodyAboveLimitIs413) {
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  std::string request =
      "POST /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      "Transfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 3; ++i) {
    absl::StrAppend(&request, "258\r\n", std::string(600, 'a' + i), "\r\n");
  }
  request += "0\r\n\r\n";
  IT_ASSERT_OK(conn->Send(request));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse(absl::Seconds(5)));
  ExpectJsonError(r, 413, "request body too large");
}

TEST_F(H1ToH1BodyLimit, BodyAtLimitPasses) {
  std::string body(1024, 'b');
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r,
                          Exchange(proxy_port(), BuildRequest("POST", "/sim/echo", {}, body)));
  ASSERT_EQ(r.status, 200) << r.body;
  std::optional<EchoedRequest> echo = ParseEcho(r.body);
  ASSERT_TRUE(echo.has_value()) << r.body;
  EXPECT_EQ(echo->body, body);
}

class H1ToH1HeaderLimit : public ProxyTest {};

TEST_F(H1ToH1HeaderLimit, HeaderAboveLimitIs431) {
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--max_header_bytes=4k"}));
  IT_ASSERT_OK(ResetSim(sim_port()));
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse r, Exchange(proxy_port(), BuildRequest("GET", "/api/tags",
                                                          {{"X-Big", std::string(8192, 'h')}})));
  ExpectJsonError(r, 431);
  IT_ASSERT_OK_AND_ASSIGN(SimStats stats, FetchSimStats(sim_port()));
  EXPECT_EQ(stats.requests, 0);

  // Under the limit: served.
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse ok, Exchange(proxy_port(), BuildRequest("GET", "/api/tags",
                                                           {{"X-Big", std::string(2048, 'h')}})));
  EXPECT_EQ(ok.status, 200);
}

class H1ToH1UpstreamError : public ProxyTest {};

TEST_F(H1ToH1UpstreamError, ClosedPortIs502) {
  int port = UnusedPort();
  ASSERT_NE(port, 0);
  auto sluice = StartSluice(port, {"--connect_timeout=2s"});
  ASSERT_TRUE(sluice.ok()) << sluice.status();
  sluice_ = std::move(*sluice);
  absl::Time start = absl::Now();
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, Exchange(proxy_port(), BuildRequest("GET", "/api/tags")));
  ExpectJsonError(r, 502, "upstream unavailable");
  EXPECT_LT(absl::Now() - start, absl::Seconds(1)) << "a refused connect should fail fast";

  // The client connection stays usable after a 502 (keepalive), or is
  // closed cleanly; either way a new request gets the same answer.
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse again,
      Exchange(proxy_port(), BuildRequest("POST", "/api/generate", {}, R"({"model":"sim"})")));
  ExpectJsonError(again, 502, "upstream unavailable");
}

TEST_F(H1ToH1UpstreamError, GarbageUpstreamIs502) {
  ASSERT_NO_FATAL_FAILURE(StartStack({"--mode=garbage"}));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, Exchange(proxy_port(), BuildRequest("GET", "/api/tags")));
  ExpectJsonError(r, 502);
}

TEST_F(H1ToH1UpstreamError, GarbageByHeaderIs502) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse r,
      Exchange(proxy_port(), BuildRequest("GET", "/api/tags", {{"X-Sim-Mode", "garbage"}})));
  ExpectJsonError(r, 502);
  // The broken link is not reused: the next request is fine.
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse ok,
                          Exchange(proxy_port(), BuildRequest("GET", "/api/tags")));
  EXPECT_EQ(ok.status, 200);
}

// An upstream error answer is the upstream's to give: status and body pass
// through unchanged (sluice's own 503 is for its overload/drain only).
TEST_F(H1ToH1UpstreamError, UpstreamErrorStatusPassedThrough) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  const std::string busy = BuildRequest("GET", "/api/tags", {{"X-Sim-Mode", "busy"}});
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse direct, Exchange(sim_port(), busy));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse proxied, Exchange(proxy_port(), busy));
  EXPECT_EQ(proxied.status, direct.status);
  EXPECT_EQ(proxied.body, direct.body);

  const std::string missing = BuildRequest("GET", "/no/such/path");
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse direct404, Exchange(sim_port(), missing));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse proxied404, Exchange(proxy_port(), missing));
  EXPECT_EQ(direct404.status, 404);
  EXPECT_EQ(proxied404.status, 404);
  EXPECT_EQ(proxied404.body, direct404.body);
}

// Ollama restarts: the pooled idle link is dead. The next request must not
// fail for it (nginx retries a request that failed on a cached keepalive
// connection before any byte came back).
TEST_F(H1ToH1UpstreamError, UpstreamRestartDoesNotFailNextRequest) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  const int port = sim_port();
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse first,
                          Exchange(proxy_port(), BuildRequest("GET", "/api/tags")));
  ASSERT_EQ(first.status, 200);

  sim_->Terminate();
  sim_.reset();
  auto sim = StartSim({absl::StrCat("--listen=127.0.0.1:", port)});
  ASSERT_TRUE(sim.ok()) << sim.status();
  sim_ = std::move(*sim);

  IT_ASSERT_OK_AND_ASSIGN(HttpResponse second,
                          Exchange(proxy_port(), BuildRequest("GET", "/api/tags")));
  EXPECT_EQ(second.status, 200) << second.body;
}

class H1ToH1UpstreamTimeout : public ProxyTest {
 protected:
  void ExpectTimeout(const std::string& request) {
    absl::Time start = absl::Now();
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, Exchange(proxy_port(), request, absl::Seconds(10)));
    absl::Duration took = absl::Now() - start;
    ExpectJsonError(r, 504, "upstream timeout");
    EXPECT_GE(took, absl::Milliseconds(900));
    EXPECT_LT(took, absl::Seconds(3)) << "--read_timeout=1s took " << took;
  }
};

TEST_F(H1ToH1UpstreamTimeout, HangingUpstreamIs504) {
  ASSERT_NO_FATAL_FAILURE(StartStack({"--mode=hang"}, {"--read_timeout=1s"}));
  ExpectTimeout(BuildRequest("GET", "/api/tags"));
}

TEST_F(H1ToH1UpstreamTimeout, HangByHeaderIs504) {
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--read_timeout=1s"}));
  ExpectTimeout(BuildRequest("POST", "/api/generate",
                             {{"Content-Type", "application/json"}, {"X-Sim-Mode", "hang"}},
                             R"({"model":"sim","prompt":"hi"})"));
}

// --read_timeout is the gap between two reads, not the whole answer: a
// stream with tokens 300 ms apart, lasting 3 s, completes under a 1 s timeout.
TEST_F(H1ToH1UpstreamTimeout, SlowStreamWithinReadTimeoutCompletes) {
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--read_timeout=1s"}));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r,
                          Exchange(proxy_port(),
                                   BuildRequest("POST", "/api/generate",
                                                {{"Content-Type", "application/json"},
                                                 {"X-Sim-Tokens", "8"},
                                                 {"X-Sim-Token-Delay-Ms", "300"}},
                                                R"({"model":"sim","prompt":"hi"})"),
                                   absl::Seconds(10)));
  ASSERT_EQ(r.status, 200);
  EXPECT_TRUE(r.saw_last_chunk);
  EXPECT_TRUE(absl::StrContains(r.body, "\"done\":true"));
}

}  // namespace
}  // namespace sluice::integration
