// Requests that two parties could read two ways are refused, never
// guessed, over HTTP/1.1 (raw sockets) and HTTP/2 (raw h2c frames): two
// credentials (400), a Transfer-Encoding other than chunked alone (501, or
// 400 when chunked is not the last coding), a Host or :authority that is
// not a bare authority (400). And a field the client's Connection names
// stops at the proxy, while the fields sluice sets itself are still set.
// None of the refused requests reaches the simulator.
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "tests/integration/h2_frames.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {
namespace {

using Headers = std::vector<std::pair<std::string, std::string>>;

class AmbiguousRequests : public ProxyTest {
 protected:
  // Starts the stack with one key file holding `alice` and `bob`.
  void StartWithKeys() {
    dir_ = absl::StrCat(::testing::TempDir(), "sluice-ambiguous-",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name(), "-",
                        getpid());
    RunShell(absl::StrCat("rm -rf ", ShellQuote(dir_), " && mkdir -p ", ShellQuote(dir_)),
             absl::Seconds(5));
    const std::string keys = dir_ + "/keys.txt";
    for (std::string* key : {&alice_, &bob_}) {
      CommandResult r = RunProgram(
          SluiceBinary(), {"keys", "add", key == &alice_ ? "alice" : "bob", "--keys_file", keys},
          absl::Seconds(10));
      ASSERT_EQ(r.exit.code, 0) << r.err;
      *key = std::string(absl::StripAsciiWhitespace(r.out));
    }
    ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--keys_file=" + keys}));
  }
  void TearDown() override {
    ProxyTest::TearDown();
    if (!dir_.empty()) RunShell(absl::StrCat("rm -rf ", ShellQuote(dir_)), absl::Seconds(5));
  }
  int64_t SimRequests() {
    absl::StatusOr<SimStats> s = FetchSimStats(sim_port());
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? s->requests : -1;
  }
  // One raw request on a fresh connection; the answer, which must be
  // `status` with a JSON error, and the connection closed after it when
  // `closes`.
  void ExpectRefused(const std::string& name, const std::string& raw, int status, bool closes) {
    IT_ASSERT_OK_AND_ASSIGN(auto c, HttpConnection::Connect(proxy_port()));
    IT_ASSERT_OK(c->Send(raw));
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, c->ReadResponse(absl::Seconds(5)));
    EXPECT_EQ(r.status, status) << name << ": " << r.body;
    EXPECT_TRUE(JsonError(r.body).has_value()) << name << ": " << r.body;
    if (closes) EXPECT_TRUE(c->ExpectClosed(absl::Seconds(3)).ok()) << name;
  }
  // One h2c request (prior knowledge) with `fields` on stream 1; the final
  // :status (0 when none came) and the DATA it carried.
  std::pair<int, std::string> H2Request(const h2::HeaderList& fields) {
    auto c = h2::Connection::Connect(proxy_port());
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return {0, ""};
    absl::Status st = (*c)->Establish();
    EXPECT_TRUE(st.ok()) << st;
    st = (*c)->Send(h2::HeadersFrame(1, h2::HpackBlock(fields), /*end_stream=*/true));
    EXPECT_TRUE(st.ok()) << st;
    h2::ReadOutcome o = (*c)->ReadUntilStreamEnd(1, absl::Seconds(5));
    std::string data;
    for (const h2::Frame& f : o.frames) {
      if (f.type == h2::kData && f.stream_id == 1) data += f.payload;
    }
    if (o.StatusOf(1) == 0) ADD_FAILURE() << "no answer on stream 1:\n" << o.Describe();
    return {o.StatusOf(1), data};
  }

  std::string dir_;
  std::string alice_;
  std::string bob_;
};

std::pair<std::string, std::string> Bearer(const std::string& key) {
  return {"Authorization", "Bearer " + key};
}

TEST_F(AmbiguousRequests, H1ToH1TwoCredentialsAre400) {
  ASSERT_NO_FATAL_FAILURE(StartWithKeys());
  const std::vector<std::pair<std::string, Headers>> cases = {
      {"two Authorization, two keys", {Bearer(alice_), Bearer(bob_)}},
      {"two Authorization, one key twice", {Bearer(alice_), Bearer(alice_)}},
      {"Authorization and x-api-key disagree", {Bearer(alice_), {"x-api-key", bob_}}},
      {"Basic and x-api-key",
       {{"Authorization", "Basic " + absl::Base64Escape("ann:pw")}, {"x-api-key", alice_}}},
      {"two x-api-key", {{"x-api-key", alice_}, {"X-Api-Key", bob_}}},
  };
  for (const auto& [name, headers] : cases) {
    ExpectRefused(name, BuildRequest("GET", "/api/tags", headers), 400, false);
  }
  EXPECT_EQ(SimRequests(), 0);
  // One client named twice the same way is not ambiguous.
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse same,
      Exchange(proxy_port(),
               BuildRequest("GET", "/api/tags", {Bearer(alice_), {"x-api-key", alice_}})));
  EXPECT_EQ(same.status, 200) << same.body;
}

TEST_F(AmbiguousRequests, H2ToH1TwoCredentialsAre400) {
  ASSERT_NO_FATAL_FAILURE(StartWithKeys());
  const std::vector<std::pair<std::string, h2::HeaderList>> cases = {
      {"two authorization",
       {{"authorization", "Bearer " + alice_}, {"authorization", "Bearer " + bob_}}},
      {"authorization and x-api-key disagree",
       {{"authorization", "Bearer " + alice_}, {"x-api-key", bob_}}},
  };
  for (const auto& [name, extra] : cases) {
    auto [status, body] = H2Request(h2::RequestFields("GET", "/api/tags", extra));
    EXPECT_EQ(status, 400) << name;
    EXPECT_TRUE(absl::StrContains(JsonError(body).value_or(""), "ambiguous credentials"))
        << name << ": " << body;
  }
  EXPECT_EQ(SimRequests(), 0);
  auto [status, body] =
      H2Request(h2::RequestFields("GET", "/api/tags", {{"authorization", "Bearer " + alice_}}));
  EXPECT_EQ(status, 200) << body;
}

// RFC 9112 6.1: a transfer coding the proxy does not relay is 501 (before,
// "gzip, chunked" was de-chunked and the gzip dropped on the way to
// Ollama); 6.3: without chunked last, the body has no length: 400. Both
// close the connection, and the request smuggled behind never runs.
TEST_F(AmbiguousRequests, H1ToH1TransferEncodingOtherThanChunkedIsRefused) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  const std::string smuggled = "GET /api/tags?smuggled=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  auto post = [&](const std::string& te) {
    return absl::StrCat("POST /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n", te,
                        "\r\n5\r\nhello\r\n0\r\n\r\n", smuggled);
  };
  ExpectRefused("gzip, chunked", post("Transfer-Encoding: gzip, chunked\r\n"), 501, true);
  ExpectRefused("two fields", post("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"),
                501, true);
  ExpectRefused("deflate, chunked", post("Transfer-Encoding: deflate,chunked\r\n"), 501, true);
  ExpectRefused("chunked, chunked", post("Transfer-Encoding: chunked, chunked\r\n"), 400, true);
  ExpectRefused("identity", post("Transfer-Encoding: identity\r\n"), 400, true);
  EXPECT_EQ(SimRequests(), 0);
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse ok,
                          Exchange(proxy_port(), post("Transfer-Encoding: chunked\r\n")));
  EXPECT_EQ(ok.status, 405) << ok.body;  // /api/version answers GET only
}

// RFC 9110 7.2 / RFC 3986 3.2: Host is an authority; a path, userinfo or
// other bytes in it are refused.
TEST_F(AmbiguousRequests, H1ToH1HostThatIsNotAnAuthorityIs400) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  for (const char* host : {"127.0.0.1/api/pull", "user:pw@127.0.0.1", "127.0.0.1?x", "127.0.0.1#x",
                           "127.0.0.1:11434/x", "a\"b"}) {
    ExpectRefused(host, BuildRequest("GET", "/api/tags", {{"Host", host}}, "", ""), 400, true);
  }
  ExpectRefused("absolute form with userinfo",
                "GET http://u:p@127.0.0.1/api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, true);
  EXPECT_EQ(SimRequests(), 0);
  for (const char* host : {"127.0.0.1", "localhost:11434", "[::1]:8080"}) {
    IT_ASSERT_OK_AND_ASSIGN(
        HttpResponse ok,
        Exchange(proxy_port(), BuildRequest("GET", "/api/tags", {{"Host", host}}, "", "")));
    EXPECT_EQ(ok.status, 200) << host << ": " << ok.body;
  }
}

// RFC 9113 8.3.1: :authority must not include userinfo; nor may it or Host
// carry a path or other junk.
TEST_F(AmbiguousRequests, H2ToH1AuthorityWithUserinfoOrJunkIs400) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  for (const char* authority : {"user:pw@127.0.0.1", "@127.0.0.1", "127.0.0.1:80:80"}) {
    h2::HeaderList fields = {
        {":method", "GET"}, {":scheme", "http"}, {":path", "/api/tags"}, {":authority", authority}};
    auto [status, body] = H2Request(fields);
    EXPECT_EQ(status, 400) << authority << ": " << body;
    EXPECT_TRUE(JsonError(body).has_value()) << authority << ": " << body;
  }
  for (const char* host : {"user:pw@127.0.0.1", "127.0.0.1:1x"}) {
    h2::HeaderList fields = {
        {":method", "GET"}, {":scheme", "http"}, {":path", "/api/tags"}, {"host", host}};
    auto [status, body] = H2Request(fields);
    EXPECT_EQ(status, 400) << host << ": " << body;
  }
  // Bytes no authority has ('/', space) nghttp2 itself finds malformed:
  // RST_STREAM PROTOCOL_ERROR, the answer RFC 9113 8.1.1 gives.
  for (const char* authority : {"127.0.0.1/api/pull", "127.0.0.1 x"}) {
    IT_ASSERT_OK_AND_ASSIGN(auto c, h2::Connection::Connect(proxy_port()));
    IT_ASSERT_OK(c->Establish());
    h2::HeaderList fields = {
        {":method", "GET"}, {":scheme", "http"}, {":path", "/api/tags"}, {":authority", authority}};
    IT_ASSERT_OK(c->Send(h2::HeadersFrame(1, h2::HpackBlock(fields), true)));
    h2::ReadOutcome o = c->ReadUntilStreamEnd(1, absl::Seconds(5));
    EXPECT_TRUE(o.StatusOf(1) == 400 || o.ResetCode(1) == h2::kProtocolError) << authority << ":\n"
                                                                              << o.Describe();
  }
  EXPECT_EQ(SimRequests(), 0);
  auto [status, body] = H2Request(h2::RequestFields("GET", "/api/tags"));
  EXPECT_EQ(status, 200) << body;
}

// RFC 9110 7.6.1: a field the client's Connection names is for this hop
// only, whichever it is; sluice's own X-Forwarded-For, X-Real-IP, Host and
// framing are set all the same.
TEST_F(AmbiguousRequests, H1ToH1FieldsNamedByConnectionStopAtTheProxy) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse r,
      Exchange(proxy_port(),
               BuildRequest("POST", "/sim/echo",
                            {{"Connection", "keep-alive, X-Secret, X-Forwarded-For"},
                             {"Connection", "X-Real-IP, Host, Content-Length, Cookie"},
                             {"X-Secret", "s"},
                             {"X-Forwarded-For", "10.6.6.6"},
                             {"X-Real-IP", "10.7.7.7"},
                             {"Cookie", "session=1"},
                             {"X-Kept", "kept"}},
                            "body")));
  ASSERT_EQ(r.status, 200) << r.body;
  std::optional<EchoedRequest> e = ParseEcho(r.body);
  ASSERT_TRUE(e.has_value()) << r.body;
  EXPECT_TRUE(e->All("X-Secret").empty()) << e->HeaderDump();
  EXPECT_TRUE(e->All("Cookie").empty()) << e->HeaderDump();
  EXPECT_EQ(e->All("X-Forwarded-For"), std::vector<std::string>{"127.0.0.1"}) << e->HeaderDump();
  EXPECT_EQ(e->All("X-Real-IP"), std::vector<std::string>{"127.0.0.1"}) << e->HeaderDump();
  EXPECT_EQ(e->All("Host").size(), 1u) << e->HeaderDump();
  EXPECT_EQ(e->First("Content-Length").value_or(""), "4") << e->HeaderDump();
  EXPECT_EQ(e->First("X-Kept").value_or(""), "kept") << e->HeaderDump();
  EXPECT_EQ(e->body, "body");
}

}  // namespace
}  // namespace sluice::integration
