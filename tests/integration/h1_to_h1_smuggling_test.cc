// HTTP/1.1 client to HTTP/1.1 upstream: request smuggling. Each malformed or
// ambiguous request is followed, in the same write, by a second request
// that a confused parser could take for its own. sluice must answer 400
// with a JSON body, close the connection, and never let the second request
// reach the upstream. The simulator's `requests` counter tells; it counts
// every request except those to /sim/*, so the cases use /api/ paths.
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {
namespace {

constexpr absl::string_view kSmuggled =
    "GET /api/tags?smuggled=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

struct SmuggleCase {
  const char* name;
  std::string request;  // Sent as is, followed by kSmuggled.
  // The error is visible in the head, so nothing at all may be forwarded.
  // Otherwise (bad chunked body) sluice may have forwarded the head before
  // the body went wrong; still no second request may get through.
  bool head_error;
};

// A POST to a counted endpoint (the answer does not matter, only whether
// the request got through).
std::string Post(absl::string_view headers, absl::string_view body) {
  return absl::StrCat("POST /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n", headers, "\r\n", body);
}

// The same to /sim/echo, which is not counted but shows what arrived.
std::string PostEcho(absl::string_view headers, absl::string_view body) {
  return absl::StrCat("POST /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n", headers, "\r\n", body);
}

std::vector<SmuggleCase> Cases() {
  using std::string_literals::operator""s;
  const std::string chunked_hello = "5\r\nhello\r\n0\r\n\r\n";
  return {
      {"ContentLengthAndTransferEncoding",
       Post("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), true},
      {"TransferEncodingThenContentLength",
       Post("Transfer-Encoding: chunked\r\nContent-Length: 30\r\n", chunked_hello), true},
      {"TwoDifferentContentLengths", Post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
       true},
      {"ContentLengthWithPlus", Post("Content-Length: +5\r\n", "hello"), true},
      {"ContentLengthNegative", Post("Content-Length: -1\r\n", ""), true},
      {"ContentLengthHex", Post("Content-Length: 0x5\r\n", "hello"), true},
      {"TransferEncodingChunkedIdentity",
       Post("Transfer-Encoding: chunked, identity\r\n", chunked_hello), true},
      {"TransferEncodingGzipOnly", Post("Transfer-Encoding: gzip\r\n", "hello"), true},
      {"TransferEncodingXchunked", Post("Transfer-Encoding: xchunked\r\n", chunked_hello), true},
      {"TransferEncodingSpaceBeforeColon", Post("Transfer-Encoding : chunked\r\n", chunked_hello),
       true},
      {"TransferEncodingLeadingSpace",
       Post("X-Pad: 1\r\n Transfer-Encoding: chunked\r\n", chunked_hello), true},
      {"TransferEncodingLeadingTab",
       Post("X-Pad: 1\r\n\tTransfer-Encoding: chunked\r\n", chunked_hello), true},
      {"TransferEncodingVerticalTab",
       Post("Transfer-Encoding:\x0b"
            "chunked\r\n",
            chunked_hello),
       true},
      {"ObsFold", Post("Content-Length: 5\r\nX-Folded: a\r\n  b\r\n", "hello"), true},
      {"TransferEncodingOnHttp10",
       "POST /api/version HTTP/1.0\r\nHost: 127.0.0.1\r\n"
       "Transfer-Encoding: chunked\r\n\r\n" +
           chunked_hello,
       true},
      {"MissingHost", "GET /api/version HTTP/1.1\r\nX-A: 1\r\n\r\n", true},
      {"DuplicateHost",
       "GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: "
       "evil.example\r\n\r\n",
       true},
      {"HostSpaceBeforeColon", "GET /api/version HTTP/1.1\r\nHost : x\r\n\r\n", true},
      {"BadChunkSize", Post("Transfer-Encoding: chunked\r\n", "zz\r\nhello\r\n0\r\n\r\n"), false},
      {"ChunkSizeOverflow",
       Post("Transfer-Encoding: chunked\r\n", "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), false},
      {"ChunkDataMissingCrlf", Post("Transfer-Encoding: chunked\r\n", "5\r\nhelloXX0\r\n\r\n"),
       false},
      {"BareLfEverywhere", "GET /api/version HTTP/1.1\nHost: 127.0.0.1\n\n", true},
      {"BareLfInOneHeader", "GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\nX-A: 1\r\n\r\n", true},
      {"BareLfAfterChunkSize", Post("Transfer-Encoding: chunked\r\n", "5\nhello\r\n0\r\n\r\n"),
       false},
      {"NulInHeaderValue", "GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\0b\r\n\r\n"s,
       true},
      {"CrInHeaderValue", "GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\rb\r\n\r\n",
       true},
      {"ParenInHeaderName", "GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nX(A): 1\r\n\r\n",
       true},
      {"AtInHeaderName", "GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nX@A: 1\r\n\r\n", true},
      {"SpaceInHeaderName", "GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nX A: 1\r\n\r\n", true},
      {"EmptyHeaderName", "GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n: 1\r\n\r\n", true},
  };
}

void PrintTo(const SmuggleCase& c, std::ostream* os) { *os << c.name; }

class H1ToH1Smuggling : public ProxyTest, public ::testing::WithParamInterface<SmuggleCase> {};

TEST_P(H1ToH1Smuggling, RejectedWith400AndClosed) {
  const SmuggleCase& c = GetParam();
  ASSERT_NO_FATAL_FAILURE(StartStack());
  IT_ASSERT_OK(ResetSim(sim_port()));

  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(conn->Send(absl::StrCat(c.request, kSmuggled)));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse(absl::Seconds(5)));
  EXPECT_EQ(r.status, 400) << "answer: " << r.status << " " << r.body;
  EXPECT_TRUE(JsonError(r.body).has_value()) << "not a JSON error: " << r.body;
  absl::Status closed = conn->ExpectClosed(absl::Seconds(2));
  EXPECT_TRUE(closed.ok()) << closed;

  IT_ASSERT_OK_AND_ASSIGN(SimStats stats, FetchSimStats(sim_port()));
  if (c.head_error) {
    EXPECT_EQ(stats.requests, 0) << "a malformed request reached the upstream";
  } else {
    EXPECT_LE(stats.requests, 1) << "the smuggled request reached the upstream";
  }
}

INSTANTIATE_TEST_SUITE_P(Malformed, H1ToH1Smuggling, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<SmuggleCase>& info) {
                           return std::string(info.param.name);
                         });

class H1ToH1SmugglingStrict : public ProxyTest {};

// "Content-Length: 5, 5" is a list of identical values; RFC 9110 lets a
// recipient either reject it or take 5. Either way, the bytes after the 5
// body bytes are a new request that sluice itself answers, never a body
// tail or a request slipped to the upstream unseen.
TEST_F(H1ToH1SmugglingStrict, RepeatedContentLengthValueNotSmuggled) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  IT_ASSERT_OK(ResetSim(sim_port()));
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(conn->Send(absl::StrCat(PostEcho("Content-Length: 5, 5\r\n", "hello"), kSmuggled)));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse(absl::Seconds(5)));
  if (r.status == 400) {
    EXPECT_TRUE(JsonError(r.body).has_value()) << r.body;
    IT_ASSERT_OK(conn->ExpectClosed(absl::Seconds(2)));
    IT_ASSERT_OK_AND_ASSIGN(SimStats stats, FetchSimStats(sim_port()));
    EXPECT_EQ(stats.requests, 0);
    return;
  }
  ASSERT_EQ(r.status, 200) << r.body;
  std::optional<EchoedRequest> echo = ParseEcho(r.body);
  ASSERT_TRUE(echo.has_value()) << r.body;
  EXPECT_EQ(echo->body, "hello");
  EXPECT_EQ(echo->All("Content-Length").size(), 1u) << echo->HeaderDump();
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse second, conn->ReadResponse(absl::Seconds(5)));
  ASSERT_EQ(second.status, 200);
  EXPECT_TRUE(absl::StrContains(second.body, "sim:latest")) << second.body;
  IT_ASSERT_OK_AND_ASSIGN(SimStats stats, FetchSimStats(sim_port()));
  EXPECT_EQ(stats.requests, 1);
}

// Control: a well-formed request followed by the "smuggled" one: both are
// served and the counter sees the second, so the checks above are not
// vacuous.
TEST_F(H1ToH1SmugglingStrict, WellFormedPairIsServedTwice) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  IT_ASSERT_OK(ResetSim(sim_port()));
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(conn->Send(absl::StrCat(
      PostEcho("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), kSmuggled)));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r1, conn->ReadResponse(absl::Seconds(5)));
  ASSERT_EQ(r1.status, 200) << r1.body;
  std::optional<EchoedRequest> echo = ParseEcho(r1.body);
  ASSERT_TRUE(echo.has_value()) << r1.body;
  EXPECT_EQ(echo->body, "hello");
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r2, conn->ReadResponse(absl::Seconds(5)));
  ASSERT_EQ(r2.status, 200);
  EXPECT_TRUE(absl::StrContains(r2.body, "sim:latest")) << r2.body;
  IT_ASSERT_OK_AND_ASSIGN(SimStats stats, FetchSimStats(sim_port()));
  EXPECT_EQ(stats.requests, 1);
}

// In a pipeline, the requests before a malformed one are answered first,
// in order; then the 400, then the close.
TEST_F(H1ToH1SmugglingStrict, PipelinedRequestBeforeMalformedIsAnswered) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  IT_ASSERT_OK(ResetSim(sim_port()));
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(conn->Send(absl::StrCat(BuildRequest("GET", "/api/version"),
                                       Post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
                                       kSmuggled)));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r1, conn->ReadResponse(absl::Seconds(5)));
  EXPECT_EQ(r1.status, 200);
  EXPECT_TRUE(absl::StrContains(r1.body, "version")) << r1.body;
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r2, conn->ReadResponse(absl::Seconds(5)));
  EXPECT_EQ(r2.status, 400) << r2.body;
  IT_ASSERT_OK(conn->ExpectClosed(absl::Seconds(2)));
  IT_ASSERT_OK_AND_ASSIGN(SimStats stats, FetchSimStats(sim_port()));
  EXPECT_EQ(stats.requests, 1);
}

}  // namespace
}  // namespace sluice::integration
