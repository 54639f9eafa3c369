#include "http/h1_server_codec.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/engine/slice.h"
#include "gtest/gtest.h"

namespace sluice::http {
namespace {

using core::Slice;

// The codec reads Slices; the tests give it a fresh copy of their bytes.
absl::StatusOr<size_t> Dispatch(H1ServerCodec& codec, std::string_view bytes) {
  return codec.Dispatch(Slice::Copy(bytes));
}

// Records every event as text so runs can be compared.
class Recorder : public H1RequestSink {
 public:
  void OnRequestHead(RequestHead head) override {
    heads.push_back(head);
    log += "head:" + head.method + " " + head.target + "|";
  }
  void OnRequestBody(Slice data) override { bodies.back_or_new() += data.view(); }
  void OnRequestComplete() override {
    log += "body:" + bodies.current + "|end|";
    bodies.current.clear();
  }
  struct Bodies {
    std::string current;
    std::string& back_or_new() { return current; }
  } bodies;
  std::vector<RequestHead> heads;
  std::string log;
};

struct Outcome {
  std::string log;
  std::vector<RequestHead> heads;
  absl::Status status;
  bool upgraded = false;
  std::string rest;  // unconsumed bytes (tunnel)
};

// Feeds `input` split into the given pieces, as a connection would: bytes
// a paused codec did not consume are fed again after Resume, in front of
// the next piece.
Outcome Feed(const std::string& input, const std::vector<size_t>& cuts, H1Limits limits = {}) {
  Recorder rec;
  H1ServerCodec codec(&rec, limits);
  Outcome out;
  std::string pending;
  size_t prev = 0;
  std::vector<size_t> ends = cuts;
  ends.push_back(input.size());
  for (size_t end : ends) {
    pending += input.substr(prev, end - prev);
    prev = end;
    while (!pending.empty()) {
      if (codec.paused()) codec.Resume();
      absl::StatusOr<size_t> n = Dispatch(codec, pending);
      if (!n.ok()) {
        out.status = n.status();
        out.log = rec.log;
        out.heads = rec.heads;
        return out;
      }
      pending.erase(0, *n);
      if (codec.upgraded()) break;
      if (*n == 0 && !codec.paused()) break;
    }
    if (codec.upgraded()) {
      pending += input.substr(prev);
      break;
    }
  }
  out.log = rec.log;
  out.heads = rec.heads;
  out.upgraded = codec.upgraded();
  out.rest = pending;
  return out;
}

// Every split into two pieces, and one byte at a time, gives the same
// events and the same error as the whole input at once.
Outcome RunAllSplits(const std::string& input, H1Limits limits = {}) {
  Outcome whole = Feed(input, {}, limits);
  for (size_t cut = 1; cut < input.size(); ++cut) {
    Outcome split = Feed(input, {cut}, limits);
    EXPECT_EQ(split.log, whole.log) << "split at " << cut;
    EXPECT_EQ(split.status.code(), whole.status.code()) << "split at " << cut;
    EXPECT_EQ(split.rest, whole.rest) << "split at " << cut;
  }
  std::vector<size_t> bytes;
  for (size_t i = 1; i < input.size(); ++i) bytes.push_back(i);
  Outcome bytewise = Feed(input, bytes, limits);
  EXPECT_EQ(bytewise.log, whole.log);
  EXPECT_EQ(bytewise.status.code(), whole.status.code());
  return whole;
}

TEST(H1ServerCodecTest, SimpleGet) {
  Outcome o = RunAllSplits("GET /api/tags HTTP/1.1\r\nHost: a\r\nUser-Agent: x\r\n\r\n");
  ASSERT_TRUE(o.status.ok()) << o.status;
  EXPECT_EQ(o.log, "head:GET /api/tags|body:|end|");
  ASSERT_EQ(o.heads.size(), 1u);
  EXPECT_EQ(o.heads[0].host, "a");
  EXPECT_TRUE(o.heads[0].keep_alive);
  EXPECT_FALSE(o.heads[0].has_body());
  ASSERT_NE(o.heads[0].Find("user-agent"), nullptr);
  EXPECT_EQ(o.heads[0].Find("user-agent")->value, "x");
}

TEST(H1ServerCodecTest, ContentLengthBody) {
  Outcome o =
      RunAllSplits("POST /api/chat HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world");
  ASSERT_TRUE(o.status.ok()) << o.status;
  EXPECT_EQ(o.log, "head:POST /api/chat|body:hello world|end|");
  EXPECT_EQ(o.heads[0].content_length, 11u);
}

TEST(H1ServerCodecTest, ChunkedBodyWithExtensionAndTrailer) {
  Outcome o = RunAllSplits(
      "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
  ASSERT_TRUE(o.status.ok()) << o.status;
  EXPECT_EQ(o.log, "head:POST /x|body:hello world|end|");
  EXPECT_TRUE(o.heads[0].chunked);
}

TEST(H1ServerCodecTest, PipelinedRequestsInOrder) {
  Outcome o = RunAllSplits(
      "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
      "POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
      "GET /3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  ASSERT_TRUE(o.status.ok()) << o.status;
  EXPECT_EQ(o.log, "head:GET /1|body:|end|head:POST /2|body:hi|end|head:GET /3|body:|end|");
  ASSERT_EQ(o.heads.size(), 3u);
  EXPECT_FALSE(o.heads[2].keep_alive);
}

TEST(H1ServerCodecTest, PausesAfterEachRequest) {
  Recorder rec;
  H1ServerCodec codec(&rec, {});
  std::string two = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
  absl::StatusOr<size_t> n = Dispatch(codec, two);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, two.size() / 2);
  EXPECT_TRUE(codec.paused());
  EXPECT_EQ(*Dispatch(codec, two.substr(*n)), 0u);  // stays paused
  codec.Resume();
  EXPECT_EQ(*Dispatch(codec, two.substr(*n)), two.size() / 2);
  EXPECT_EQ(rec.heads.size(), 2u);
}

// An owner whose release the test can see.
struct WatchedOwner : core::SliceOwner {
  WatchedOwner() {
    release = [](core::SliceOwner* o) { static_cast<WatchedOwner*>(o)->released = true; };
  }
  bool released = false;
};

// Keeps every body Slice it is given.
class KeepingSink : public H1RequestSink {
 public:
  void OnRequestHead(RequestHead) override {}
  void OnRequestBody(Slice data) override { kept.push_back(std::move(data)); }
  void OnRequestComplete() override {}
  std::vector<Slice> kept;
};

// Body bytes reach the sink as views of the Slice given to Dispatch: inside
// its memory and holding its owner (no copy), valid after the call.
TEST(H1ServerCodecTest, BodyIsAViewOfTheInputSlice) {
  const std::string bytes =
      "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
  WatchedOwner owner;
  KeepingSink sink;
  {
    H1ServerCodec codec(&sink, {});
    const Slice in(&owner, bytes.data(), bytes.size());
    ASSERT_EQ(*codec.Dispatch(in), bytes.size());
  }
  ASSERT_EQ(sink.kept.size(), 2u);
  EXPECT_EQ(sink.kept[0].view(), "abc");
  EXPECT_EQ(sink.kept[1].view(), "de");
  for (const Slice& s : sink.kept) {
    EXPECT_GE(s.data(), bytes.data());
    EXPECT_LE(s.data() + s.size(), bytes.data() + bytes.size());
  }
  EXPECT_EQ(owner.refs, 2u);  // the input is gone, the views hold the owner
  EXPECT_FALSE(owner.released);
  sink.kept.clear();
  EXPECT_TRUE(owner.released);
}

TEST(H1ServerCodecTest, ExpectContinue) {
  Outcome o = RunAllSplits(
      "POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nz");
  ASSERT_TRUE(o.status.ok());
  EXPECT_TRUE(o.heads[0].expect_continue);
  Outcome bad =
      Feed("POST /x HTTP/1.1\r\nHost: a\r\nExpect: magic\r\nContent-Length: 1\r\n\r\nz", {});
  EXPECT_EQ(HttpStatusForError(bad.status), 417);
}

TEST(H1ServerCodecTest, UpgradeStopsAtEndOfHead) {
  Outcome o = RunAllSplits(
      "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
      "\x81\x85tunnel");
  ASSERT_TRUE(o.status.ok()) << o.status;
  EXPECT_TRUE(o.upgraded);
  EXPECT_TRUE(o.heads[0].upgrade);
  EXPECT_EQ(o.rest, "\x81\x85tunnel");
}

// An Upgrade to anything but websocket (h2c, TLS, a made-up protocol) is
// dropped: the request is ordinary HTTP/1.1 and the bytes after it are the
// next request, not a tunnel.
TEST(H1ServerCodecTest, OtherUpgradesAreServedAsHttp) {
  for (const char* proto : {"h2c", "TLS/1.2", "foo", "websocketx"}) {
    Outcome o = RunAllSplits(absl::StrCat(
        "GET /a HTTP/1.1\r\nHost: a\r\nUpgrade: ", proto,
        "\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        "GET /b HTTP/1.1\r\nHost: a\r\n\r\n"));
    ASSERT_TRUE(o.status.ok()) << proto << ": " << o.status;
    EXPECT_FALSE(o.upgraded) << proto;
    ASSERT_EQ(o.heads.size(), 2u) << proto;
    EXPECT_FALSE(o.heads[0].upgrade) << proto;
    EXPECT_TRUE(o.heads[0].keep_alive) << proto;
    EXPECT_EQ(o.log, "head:GET /a|body:|end|head:GET /b|body:|end|") << proto;
  }
}

TEST(H1ServerCodecTest, WebSocketKeyMustBeSixteenBytesInBase64) {
  EXPECT_TRUE(ValidWebSocketKey("dGhlIHNhbXBsZSBub25jZQ=="));
  EXPECT_TRUE(ValidWebSocketKey("AAAAAAAAAAAAAAAAAAAAAA=="));
  EXPECT_TRUE(ValidWebSocketKey("/////////////////////w=="));
  EXPECT_FALSE(ValidWebSocketKey(""));
  EXPECT_FALSE(ValidWebSocketKey("x"));
  EXPECT_FALSE(ValidWebSocketKey("dGhlIHNhbXBsZSBub25jZQ="));    // 23
  EXPECT_FALSE(ValidWebSocketKey("dGhlIHNhbXBsZSBub25jZQ==="));  // 25
  EXPECT_FALSE(ValidWebSocketKey("dGhlIHNhbXBsZSBub25jZR=="));   // padding bits set
  EXPECT_FALSE(ValidWebSocketKey("dGhlIHNhbXBsZSBub25j-Q=="));   // base64url
  EXPECT_FALSE(ValidWebSocketKey("dGhlIHNhbXBsZSBub25jZQA="));   // 17 bytes
}

TEST(H1ServerCodecTest, AuthoritySyntax) {
  for (const char* good :
       {"a", "localhost:11434", "127.0.0.1", "[::1]", "[::1]:8080", "ollama.example",
        "xn--bcher-kva.example:443", "a%41b", "host:", "[fe80::1%25eth0]:80"}) {
    EXPECT_TRUE(ValidAuthority(good)) << good;
  }
  for (const char* bad :
       {"",        "user:pw@host", "@host",       "host/path", "host?q", "host#f", "host:80/x",
        "ho st",   "host:abc",     "host:123456", "[::1",      "[]",     "[::1]x", "[zz::1]",
        "[::1/8]", "[::1@x]",      ":80",         "host\\x",   "a\"b",   "a%4"}) {
    EXPECT_FALSE(ValidAuthority(bad)) << bad;
  }
}

TEST(H1ServerCodecTest, AbsoluteFormTargetUsesItsAuthority) {
  Outcome o = RunAllSplits("GET http://ollama:11434/api/tags?x=1 HTTP/1.1\r\nHost: other\r\n\r\n");
  ASSERT_TRUE(o.status.ok()) << o.status;
  EXPECT_EQ(o.heads[0].target, "/api/tags?x=1");
  EXPECT_EQ(o.heads[0].host, "ollama:11434");
}

TEST(H1ServerCodecTest, Http10WithoutHostIsFine) {
  Outcome o = RunAllSplits("GET / HTTP/1.0\r\n\r\n");
  ASSERT_TRUE(o.status.ok()) << o.status;
  EXPECT_FALSE(o.heads[0].keep_alive);
}

TEST(H1ServerCodecTest, HeaderLimitGives431) {
  H1Limits limits;
  limits.max_header_bytes = 1024;
  std::string big = "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + std::string(2000, 'a') + "\r\n\r\n";
  Outcome o = RunAllSplits(big, limits);
  EXPECT_EQ(HttpStatusForError(o.status), 431);
}

// Thousands of empty fields are few bytes each on the wire but a list
// slot each once parsed: every field counts kHeaderFieldCost.
TEST(H1ServerCodecTest, ManyEmptyFieldsCountAgainstTheHeaderLimit) {
  H1Limits limits;
  limits.max_header_bytes = 64 * 1024;
  std::string head = "GET / HTTP/1.1\r\nHost: a\r\n";
  for (int i = 0; i < 5000; ++i) head += "a:\r\n";  // 20 KB on the wire
  Outcome o = RunAllSplits(head + "\r\n", limits);
  EXPECT_EQ(HttpStatusForError(o.status), 431);
  std::string few = "GET / HTTP/1.1\r\nHost: a\r\n";
  for (int i = 0; i < 100; ++i) few += "a:\r\n";
  Outcome ok = RunAllSplits(few + "\r\n", limits);
  EXPECT_TRUE(ok.status.ok()) << ok.status;
}

TEST(H1ServerCodecTest, BodyLimitGives413) {
  H1Limits limits;
  limits.max_body_bytes = 10;
  Outcome declared =
      RunAllSplits("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n", limits);
  EXPECT_EQ(HttpStatusForError(declared.status), 413);
  Outcome streamed = RunAllSplits(
      "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
      "6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n",
      limits);
  EXPECT_EQ(HttpStatusForError(streamed.status), 413);
  EXPECT_EQ(streamed.log, "head:POST /|");
}

// Request smuggling shapes and other inputs RFC 9112 says a proxy must
// reject. Each must fail with 400 (or the status given), never parse.
struct BadCase {
  const char* name;
  std::string input;
  int status;
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

class H1ServerCodecRejects : public testing::TestWithParam<BadCase> {};

TEST_P(H1ServerCodecRejects, WithStatus) {
  const BadCase& c = GetParam();
  Outcome o = RunAllSplits(c.input);
  ASSERT_FALSE(o.status.ok()) << c.name << " was accepted: " << o.log;
  EXPECT_EQ(HttpStatusForError(o.status), c.status) << c.name << ": " << o.status;
}

INSTANTIATE_TEST_SUITE_P(
    Smuggling, H1ServerCodecRejects,
    testing::Values(
        BadCase{"ClAndTe",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: "
                "chunked\r\n\r\n0\r\n\r\n",
                400},
        BadCase{"TeAndCl",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: "
                "5\r\n\r\n0\r\n\r\n",
                400},
        BadCase{
            "TwoContentLengths",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            400},
        BadCase{"SameContentLengthTwice",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
                400},
        BadCase{"ContentLengthList",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", 400},
        BadCase{"ContentLengthPlus",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400},
        BadCase{"ContentLengthHex",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello", 400},
        BadCase{
            "ChunkedThenIdentity",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            400},
        BadCase{"GzipOnly", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nxx", 400},
        BadCase{"IdentityOnly",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\nxx", 400},
        // RFC 9112 6.1: a coding the proxy does not relay (the body would
        // go on de-chunked but still gzip'd) is 501, never dropped.
        BadCase{"GzipThenChunked",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                501},
        // llhttp itself refuses a chunked that is not the last coding of
        // its field (RFC 9112 6.1: chunked is applied at most once).
        BadCase{
            "ChunkedTwice",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            400},
        BadCase{"ChunkedInTwoFields",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: "
                "chunked\r\n\r\n0\r\n\r\n",
                400},
        BadCase{"TwoTeFields",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: "
                "chunked\r\n\r\n0\r\n\r\n",
                501},
        BadCase{"HostWithPath", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400},
        BadCase{"HostWithUserinfo", "GET / HTTP/1.1\r\nHost: u:p@a\r\n\r\n", 400},
        BadCase{"HostWithQuery", "GET / HTTP/1.1\r\nHost: a?x\r\n\r\n", 400},
        BadCase{"AbsoluteFormWithPort", "GET http://a:b/ HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        BadCase{"WsKeyMissing",
                "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: "
                "Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
                400},
        BadCase{"WsKeyShort",
                "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: "
                "Upgrade\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n",
                400},
        BadCase{"WsKeyTwice",
                "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: "
                "Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: "
                "dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                400},
        BadCase{"WsVersion12",
                "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: "
                "Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: "
                "12\r\n\r\n",
                400},
        BadCase{"WsNoVersion",
                "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: "
                "Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                400},
        BadCase{"WsKeyNamedByConnection",
                "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade, "
                "Sec-WebSocket-Key\r\nSec-WebSocket-Key: "
                "dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                400},
        BadCase{"WsPost",
                "POST /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: "
                "Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: "
                "13\r\n\r\n",
                400},
        BadCase{"WsHttp10",
                "GET /ws HTTP/1.0\r\nHost: a\r\nUpgrade: websocket\r\nConnection: "
                "Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: "
                "13\r\n\r\n",
                400},
        BadCase{"WsNoConnectionUpgrade",
                "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nSec-WebSocket-Key: "
                "dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                400},
        BadCase{"WsWithBody",
                "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: "
                "Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: "
                "13\r\nContent-Length: 2\r\n\r\nxx",
                400},
        BadCase{"XChunked",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400},
        BadCase{"TeSpaceBeforeColon",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400},
        BadCase{"TeLeadingTabName",
                "POST / HTTP/1.1\r\nHost: a\r\n\tTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
        BadCase{"ObsFold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400},
        BadCase{"ObsFoldTab", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", 400},
        BadCase{"TeOnHttp10", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                400},
        BadCase{"MissingHost", "GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n", 400},
        BadCase{"DuplicateHost", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
        BadCase{"HostSpaceBeforeColon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400},
        BadCase{"BadChunkSize",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: "
                "chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
                400},
        BadCase{"ChunkSizeOverflow",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: "
                "chunked\r\n\r\nffffffffffffffffff\r\nx\r\n0\r\n\r\n",
                400},
        BadCase{
            "ChunkMissingCrlf",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            400},
        BadCase{"BareLfLines", "GET / HTTP/1.1\nHost: a\n\n", 400},
        BadCase{"BareLfAfterHeader", "GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400},
        BadCase{"NulInValue", std::string("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", 35), 400},
        BadCase{"CrInValue", "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400},
        BadCase{"EmptyHeaderName", "GET / HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n", 400},
        BadCase{"BadNameChar", "GET / HTTP/1.1\r\nHost: a\r\nX(y): z\r\n\r\n", 400},
        BadCase{"SpaceInTarget", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        BadCase{"RelativeTarget", "GET api/tags HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        BadCase{"Http2Version", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400},
        BadCase{"Connect", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501}),
    [](const testing::TestParamInfo<BadCase>& info) { return info.param.name; });

}  // namespace
}  // namespace sluice::http
