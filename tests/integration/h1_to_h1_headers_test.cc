// HTTP/1.1 client to HTTP/1.1 upstream: what the upstream receives. The
// simulator's /sim/echo returns the request it got (headers in order,
// original case), so each rewrite can be checked exactly.
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {
namespace {

class H1ToH1HeaderRewrite : public ProxyTest {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(StartStack()); }

  // Sends `request` through sluice and parses the echo.
  void Echo(const std::string& request, EchoedRequest* out) {
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, Exchange(proxy_port(), request));
    ASSERT_EQ(r.status, 200) << r.body;
    std::optional<EchoedRequest> echo = ParseEcho(r.body);
    ASSERT_TRUE(echo.has_value()) << "not an echo: " << r.body;
    *out = std::move(*echo);
  }
};

TEST_F(H1ToH1HeaderRewrite, ForwardedHeadersAdded) {
  EchoedRequest echo;
  ASSERT_NO_FATAL_FAILURE(
      Echo(BuildRequest("GET", "/sim/echo?x=1", {{"X-Forwarded-For", "1.2.3.4"}}, "",
                        "client.example:8443"),
           &echo));
  const std::string dump = echo.HeaderDump();
  EXPECT_EQ(echo.method, "GET");
  EXPECT_EQ(echo.target, "/sim/echo?x=1");
  EXPECT_EQ(echo.All("Host"), std::vector<std::string>{absl::StrCat("127.0.0.1:", sim_port())})
      << dump;
  EXPECT_EQ(echo.All("X-Real-IP"), std::vector<std::string>{"127.0.0.1"}) << dump;
  EXPECT_EQ(echo.All("X-Forwarded-For"), std::vector<std::string>{"1.2.3.4, 127.0.0.1"}) << dump;
  EXPECT_EQ(echo.All("X-Forwarded-Proto"), std::vector<std::string>{"http"}) << dump;
  EXPECT_EQ(echo.All("X-Forwarded-Host"), std::vector<std::string>{"client.example:8443"}) << dump;
}

TEST_F(H1ToH1HeaderRewrite, ForwardedForStartsWithPeerWhenAbsent) {
  EchoedRequest echo;
  ASSERT_NO_FATAL_FAILURE(Echo(BuildRequest("GET", "/sim/echo"), &echo));
  EXPECT_EQ(echo.All("X-Forwarded-For"), std::vector<std::string>{"127.0.0.1"})
      << echo.HeaderDump();
  EXPECT_EQ(echo.All("X-Forwarded-Host"), std::vector<std::string>{"127.0.0.1"})
      << echo.HeaderDump();
}

TEST_F(H1ToH1HeaderRewrite, UpstreamHostFlagSetsHost) {
  sluice_.reset();
  const std::string host = absl::StrCat("localhost:", sim_port());
  auto sluice = StartSluice(sim_port(), {"--upstream_host=" + host});
  ASSERT_TRUE(sluice.ok()) << sluice.status();
  sluice_ = std::move(*sluice);
  EchoedRequest echo;
  ASSERT_NO_FATAL_FAILURE(Echo(BuildRequest("GET", "/sim/echo"), &echo));
  EXPECT_EQ(echo.All("Host"), std::vector<std::string>{host}) << echo.HeaderDump();
}

// Several incoming X-Forwarded-For lines form one list (RFC 9110 5.3);
// the peer goes at its end, in a single header.
TEST_F(H1ToH1HeaderRewrite, MultipleForwardedForJoined) {
  EchoedRequest echo;
  ASSERT_NO_FATAL_FAILURE(
      Echo(BuildRequest("GET", "/sim/echo",
                        {{"X-Forwarded-For", "1.1.1.1"}, {"X-Forwarded-For", "2.2.2.2"}}),
           &echo));
  EXPECT_EQ(echo.All("X-Forwarded-For"), std::vector<std::string>{"1.1.1.1, 2.2.2.2, 127.0.0.1"})
      << echo.HeaderDump();
}

// A client cannot pass X-Real-IP of its choosing.
TEST_F(H1ToH1HeaderRewrite, ClientRealIpReplaced) {
  EchoedRequest echo;
  ASSERT_NO_FATAL_FAILURE(
      Echo(BuildRequest("GET", "/sim/echo", {{"X-Real-IP", "6.6.6.6"}}), &echo));
  EXPECT_EQ(echo.All("X-Real-IP"), std::vector<std::string>{"127.0.0.1"}) << echo.HeaderDump();
}

TEST_F(H1ToH1HeaderRewrite, HopByHopHeadersStripped) {
  EchoedRequest echo;
  ASSERT_NO_FATAL_FAILURE(Echo(BuildRequest("GET", "/sim/echo",
                                            {{"Connection", "keep-alive, X-Foo"},
                                             {"X-Foo", "1"},
                                             {"Keep-Alive", "timeout=5"},
                                             {"TE", "trailers"},
                                             {"Proxy-Connection", "keep-alive"},
                                             {"X-End-To-End", "kept"}}),
                               &echo));
  const std::string dump = echo.HeaderDump();
  EXPECT_TRUE(echo.All("X-Foo").empty()) << "listed in Connection:\n" << dump;
  EXPECT_TRUE(echo.All("Keep-Alive").empty()) << dump;
  EXPECT_TRUE(echo.All("TE").empty()) << dump;
  EXPECT_TRUE(echo.All("Proxy-Connection").empty()) << dump;
  for (const std::string& v : echo.All("Connection")) {
    EXPECT_FALSE(ContainsIgnoreCase(v, "X-Foo")) << dump;
  }
  EXPECT_EQ(echo.All("X-End-To-End"), std::vector<std::string>{"kept"}) << dump;
}

// Upgrade without a WebSocket handshake is hop-by-hop like the others.
TEST_F(H1ToH1HeaderRewrite, NonWebSocketUpgradeStripped) {
  EchoedRequest echo;
  ASSERT_NO_FATAL_FAILURE(Echo(BuildRequest("GET", "/sim/echo", {{"Upgrade", "foo/1"}}), &echo));
  EXPECT_TRUE(echo.All("Upgrade").empty()) << echo.HeaderDump();
}

TEST_F(H1ToH1HeaderRewrite, ForeignHostStillServed) {
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse r,
      Exchange(proxy_port(), BuildRequest("GET", "/api/tags", {}, "", "evil.example")));
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(absl::StrContains(r.body, "sim:latest"));
}

TEST_F(H1ToH1HeaderRewrite, ChunkedRequestBodyForwarded) {
  EchoedRequest echo;
  ASSERT_NO_FATAL_FAILURE(
      Echo("POST /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           "Transfer-Encoding: chunked\r\n\r\n"
           "5\r\nhello\r\n3\r\n wo\r\n3;ext=1\r\nrld\r\n0\r\n\r\n",
           &echo));
  EXPECT_EQ(echo.method, "POST");
  EXPECT_EQ(echo.body, "hello world");
}

TEST_F(H1ToH1HeaderRewrite, ChunkedBodySentSlowlyForwarded) {
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(
      conn->Send("POST /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n"));
  for (absl::string_view piece : {"5\r\nhello\r\n", "6\r\n world\r\n", "0\r\n\r\n"}) {
    absl::SleepFor(absl::Milliseconds(50));
    IT_ASSERT_OK(conn->Send(piece));
  }
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse());
  ASSERT_EQ(r.status, 200) << r.body;
  std::optional<EchoedRequest> echo = ParseEcho(r.body);
  ASSERT_TRUE(echo.has_value()) << r.body;
  EXPECT_EQ(echo->body, "hello world");
}

TEST_F(H1ToH1HeaderRewrite, LargeBodyForwardedIntact) {
  std::string body(2 << 20, '\0');
  for (size_t i = 0; i < body.size(); ++i) body[i] = 'a' + (i * 7 + i / 13) % 26;
  EchoedRequest echo;
  ASSERT_NO_FATAL_FAILURE(Echo(BuildRequest("PUT", "/sim/echo", {}, body), &echo));
  EXPECT_EQ(echo.method, "PUT");
  ASSERT_EQ(echo.body.size(), body.size());
  EXPECT_TRUE(echo.body == body) << "2 MiB body corrupted";
}

TEST_F(H1ToH1HeaderRewrite, DeleteWithBodyForwarded) {
  // /api/delete is refused by default; a rules file lets it through.
  const std::string rules = absl::StrCat(::testing::TempDir(), "allow-delete-", getpid(), ".txt");
  {
    std::ofstream out(rules);
    out << "route /api/delete allow\n";
  }
  sluice_.reset();
  auto restarted = StartSluice(sim_port(), {"--rules_file=" + rules});
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  sluice_ = std::move(*restarted);
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse ok, Exchange(proxy_port(), BuildRequest("DELETE", "/api/delete",
                                                           {{"Content-Type", "application/json"}},
                                                           R"({"model":"sim"})")));
  EXPECT_EQ(ok.status, 200) << ok.body;
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse bad,
      Exchange(proxy_port(), BuildRequest("DELETE", "/api/delete", {{"Content-Length", "0"}})));
  EXPECT_EQ(bad.status, 400) << bad.body;
  EXPECT_EQ(JsonError(bad.body), "model is required");
}

class H1ToH1ExpectContinue : public ProxyTest {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(StartStack()); }
};

TEST_F(H1ToH1ExpectContinue, ProxyAnswers100ThenForwardsBody) {
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(
      conn->Send("POST /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Content-Length: 11\r\nExpect: 100-continue\r\n\r\n"));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse interim, conn->ReadResponse(absl::Seconds(3)));
  ASSERT_EQ(interim.status, 100);
  EXPECT_EQ(interim.version, "HTTP/1.1");
  IT_ASSERT_OK(conn->Send("hello world"));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse());
  ASSERT_EQ(r.status, 200) << r.body;
  std::optional<EchoedRequest> echo = ParseEcho(r.body);
  ASSERT_TRUE(echo.has_value()) << r.body;
  EXPECT_EQ(echo->body, "hello world");
  EXPECT_TRUE(echo->All("Expect").empty()) << echo->HeaderDump();
}

// A body that is too large gets its 413 instead of a 100.
TEST_F(H1ToH1ExpectContinue, TooLargeGets413Not100) {
  sluice_.reset();
  auto sluice = StartSluice(sim_port(), {"--client_max_body_size=1k"});
  ASSERT_TRUE(sluice.ok()) << sluice.status();
  sluice_ = std::move(*sluice);
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(
      conn->Send("POST /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n"));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse(absl::Seconds(3)));
  EXPECT_EQ(r.status, 413);
}

// curl waits for the 100 up to --expect100-timeout (here 5 s) before it
// sends the body anyway, so a quick answer proves sluice sent the 100.
TEST_F(H1ToH1ExpectContinue, CurlExpect100) {
  std::string path = absl::StrCat(::testing::TempDir(), "/sluice-it-expect-", getpid());
  std::string body;
  for (int i = 0; i < 2000; ++i) body.push_back('a' + i % 26);
  {
    std::ofstream f(path, std::ios::binary);
    f << body;
  }
  absl::Time start = absl::Now();
  CommandResult res = RunShell(absl::StrCat("curl -s --max-time 20 --expect100-timeout 5 "
                                            "-H 'Expect: 100-continue' --data-binary @",
                                            ShellQuote(path), " ", proxy_url(), "/sim/echo"),
                               absl::Seconds(25));
  absl::Duration took = absl::Now() - start;
  unlink(path.c_str());
  ASSERT_FALSE(res.timed_out);
  ASSERT_EQ(res.exit.code, 0) << res.err;
  std::optional<EchoedRequest> echo = ParseEcho(res.out);
  ASSERT_TRUE(echo.has_value()) << res.out;
  EXPECT_EQ(echo->body, body);
  EXPECT_TRUE(echo->All("Expect").empty()) << echo->HeaderDump();
  EXPECT_LT(took, absl::Seconds(3)) << "curl waited for a 100 that never came";
}

}  // namespace
}  // namespace sluice::integration

namespace sluice::integration {
namespace {

// A client still sending a body that sluice refused must be able to read the
// 413: sluice sends FIN and drains the rest (lingering close) instead of
// closing with unread input, which would make the kernel reset the
// connection and could destroy the answer.
TEST_F(H1ToH1ExpectContinue, OversizeChunkedBodyStillReads413) {
  sluice_.reset();
  auto sluice = StartSluice(sim_port(), {"--client_max_body_size=1k"});
  ASSERT_TRUE(sluice.ok()) << sluice.status();
  sluice_ = std::move(*sluice);
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(
      conn->Send("POST /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n"));
  // 256 KiB in 4 KiB chunks, sent before reading anything.
  std::string chunk = absl::StrCat("1000\r\n", std::string(4096, 'x'), "\r\n");
  for (int i = 0; i < 64; ++i) IT_ASSERT_OK(conn->Send(chunk));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse(absl::Seconds(5)));
  EXPECT_EQ(r.status, 413);
  EXPECT_TRUE(absl::StrContains(r.body, "\"error\"")) << r.body;
  EXPECT_TRUE(conn->ExpectClosed(absl::Seconds(5)).ok());
}

}  // namespace
}  // namespace sluice::integration
