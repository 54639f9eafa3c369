#include "http/h1_response_parser.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/engine/slice.h"
#include "gtest/gtest.h"

namespace sluice::http {
namespace {

using core::Slice;

// The parser reads Slices; the tests give it a fresh copy of their bytes.
absl::StatusOr<size_t> Dispatch(H1ResponseParser& p, std::string_view bytes) {
  return p.Dispatch(Slice::Copy(bytes));
}

class Recorder : public H1ResponseSink {
 public:
  void OnResponseHead(ResponseHead h) override { heads.push_back(std::move(h)); }
  void OnResponseBody(Slice d) override {
    body += d.view();
    ++pieces;
  }
  void OnResponseComplete() override { ++completes; }
  std::vector<ResponseHead> heads;
  std::string body;
  int pieces = 0;
  int completes = 0;
};

struct Result {
  Recorder rec;
  absl::Status status;
  size_t consumed = 0;
  bool upgraded = false;
};

// Feeds `input` in pieces cut at `cuts`, then EOF if `eof`.
void Parse(Result& r, const std::string& input, std::vector<size_t> cuts, bool head_request = false,
           bool eof = false, bool websocket = false) {
  H1ResponseParser p(&r.rec);
  p.Begin(head_request, websocket);
  cuts.push_back(input.size());
  size_t prev = 0;
  std::string pending;
  for (size_t cut : cuts) {
    pending += input.substr(prev, cut - prev);
    prev = cut;
    absl::StatusOr<size_t> n = Dispatch(p, pending);
    if (!n.ok()) {
      r.status = n.status();
      return;
    }
    r.consumed += *n;
    pending.erase(0, *n);
    if (p.complete() || p.upgraded()) break;
  }
  if (eof) r.status = p.Finish();
  r.upgraded = p.upgraded();
}

TEST(H1ResponseParserTest, ChunkedStreamAtEveryOffset) {
  const std::string in =
      "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
      "Transfer-Encoding: chunked\r\n\r\n"
      "c\r\n{\"t\":\"tok\"}\n\r\nd\r\n{\"done\":true}\r\n0\r\n\r\n";
  for (size_t cut = 0; cut <= in.size(); ++cut) {
    Result r;
    Parse(r, in, cut == 0 ? std::vector<size_t>{} : std::vector<size_t>{cut});
    ASSERT_TRUE(r.status.ok()) << cut << ": " << r.status;
    ASSERT_EQ(r.rec.heads.size(), 1u);
    EXPECT_TRUE(r.rec.heads[0].chunked);
    EXPECT_EQ(r.rec.body, "{\"t\":\"tok\"}\n{\"done\":true}") << cut;
    EXPECT_EQ(r.rec.completes, 1);
    EXPECT_EQ(r.consumed, in.size());
  }
}

TEST(H1ResponseParserTest, StopsAfterCompleteResponse) {
  Result r;
  const std::string one = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  Parse(r, one + "HTTP/1.1 200 OK\r\n", {});
  EXPECT_EQ(r.consumed, one.size());
  EXPECT_EQ(r.rec.completes, 1);
}

TEST(H1ResponseParserTest, HeadResponseHasNoBody) {
  Result r;
  Parse(r, "HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n", {}, /*head_request=*/true);
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.rec.completes, 1);
  EXPECT_EQ(r.rec.heads[0].content_length, 17u);
}

TEST(H1ResponseParserTest, InterimResponsesAreDropped) {
  Result r;
  Parse(r, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", {});
  ASSERT_EQ(r.rec.heads.size(), 1u);
  EXPECT_EQ(r.rec.heads[0].status, 204);
  EXPECT_EQ(r.rec.completes, 1);
}

// Found by fuzz_h1_response: RFC 9112 6.3, a 1xx, 204 or 304 ends at its
// empty line whatever Content-Length or Transfer-Encoding say; the next
// response's bytes are not taken for its body.
TEST(H1ResponseParserTest, BodilessStatusesIgnoreFramingHeaders) {
  for (const std::string head : {"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                                 "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"}) {
    Result r;
    Parse(r, head + "HTTP/1.1 200 OK\r\n", {});
    ASSERT_TRUE(r.status.ok()) << head;
    EXPECT_EQ(r.rec.completes, 1) << head;
    EXPECT_EQ(r.rec.body, "") << head;
    EXPECT_EQ(r.consumed, head.size()) << head;
  }
  Result r;
  Parse(r,
        "HTTP/1.1 100 Continue\r\nContent-Length: 3\r\n\r\n"
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        {});
  ASSERT_TRUE(r.status.ok());
  ASSERT_EQ(r.rec.heads.size(), 1u);
  EXPECT_EQ(r.rec.heads[0].status, 200);
  EXPECT_EQ(r.rec.body, "ok");
}

// Found by fuzz_h1_response: llhttp takes "03" as status 3, which no client
// can be given (HTTP/2 refuses it); it is a bad upstream answer.
TEST(H1ResponseParserTest, StatusBelow100IsAnError) {
  Result r;
  Parse(r, "HTTP/1.1 03 Odd\r\nContent-Length: 0\r\n\r\n", {});
  EXPECT_FALSE(r.status.ok());
  EXPECT_TRUE(r.rec.heads.empty());
}

TEST(H1ResponseParserTest, SwitchingProtocolsLeavesTunnelBytes) {
  Result r;
  const std::string head =
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
  Parse(r, head + "\x81\x02hi", {}, false, false, /*websocket=*/true);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_TRUE(r.upgraded);
  EXPECT_EQ(r.consumed, head.size());
  EXPECT_EQ(r.rec.heads[0].status, 101);
}

// A 101 opens a tunnel only as the answer to a WebSocket handshake, and
// only to websocket: otherwise it is an upstream error, and nothing of it
// reaches the sink.
TEST(H1ResponseParserTest, SwitchingProtocolsOnlyAnswersAWebSocketHandshake) {
  {
    Result r;
    Parse(r,
          "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
          "Connection: Upgrade\r\n\r\nraw",
          {});
    EXPECT_FALSE(r.status.ok());
    EXPECT_FALSE(r.upgraded);
    EXPECT_TRUE(r.rec.heads.empty());
  }
  for (const char* proto : {"h2c", "foo", "websocketx"}) {
    Result r;
    Parse(r,
          absl::StrCat("HTTP/1.1 101 Switching Protocols\r\nUpgrade: ", proto,
                       "\r\nConnection: Upgrade\r\n\r\nraw"),
          {}, false, false, /*websocket=*/true);
    EXPECT_FALSE(r.status.ok()) << proto;
    EXPECT_FALSE(r.upgraded) << proto;
    EXPECT_TRUE(r.rec.heads.empty()) << proto;
  }
  {
    Result r;
    Parse(r, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n", {}, false, false,
          /*websocket=*/true);
    EXPECT_FALSE(r.status.ok());
  }
}

TEST(H1ResponseParserTest, CloseDelimitedBodyEndsAtEof) {
  Result r;
  Parse(r, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nstream until close", {}, false, true);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.rec.body, "stream until close");
  EXPECT_EQ(r.rec.completes, 1);
  EXPECT_FALSE(r.rec.heads[0].keep_alive);
}

TEST(H1ResponseParserTest, TruncatedChunkedBodyIsAnError) {
  Result r;
  Parse(r, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", {}, false, true);
  EXPECT_FALSE(r.status.ok());
  EXPECT_EQ(r.rec.completes, 0);
}

TEST(H1ResponseParserTest, EofBeforeAnyByteIsUnavailable) {
  Recorder rec;
  H1ResponseParser p(&rec);
  p.Begin(false);
  EXPECT_EQ(p.Finish().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(p.started());
}

TEST(H1ResponseParserTest, GarbageIsAnError) {
  Result r;
  Parse(r, "NOT HTTP AT ALL\r\n\r\n", {});
  EXPECT_FALSE(r.status.ok());
}

TEST(H1ResponseParserTest, ObsFoldIsAnError) {
  for (size_t cut = 1; cut < 40; ++cut) {
    Result r;
    Parse(r, "HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 0\r\n\r\n", {cut});
    EXPECT_FALSE(r.status.ok()) << cut;
  }
}

// An owner whose release the test can see.
struct WatchedOwner : core::SliceOwner {
  WatchedOwner() {
    release = [](core::SliceOwner* o) { static_cast<WatchedOwner*>(o)->released = true; };
  }
  bool released = false;
};

// Keeps every body Slice it is given.
class KeepingSink : public H1ResponseSink {
 public:
  void OnResponseHead(ResponseHead) override {}
  void OnResponseBody(Slice data) override { kept.push_back(std::move(data)); }
  void OnResponseComplete() override {}
  std::vector<Slice> kept;
};

// Body bytes reach the sink as views of the Slice given to Dispatch (what
// the relay sends on to the client): inside its memory and holding its
// owner (no copy), valid after the call. A view after a consumed prefix,
// as the relay dispatches what is left of a receive, works the same.
TEST(H1ResponseParserTest, BodyIsAViewOfTheInputSlice) {
  const std::string bytes =
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
  const size_t cut = bytes.find("2\r\nde");
  WatchedOwner owner;
  KeepingSink sink;
  {
    H1ResponseParser p(&sink);
    p.Begin(false);
    Slice in(&owner, bytes.data(), bytes.size());
    const Slice first = in.Sub(0, cut);
    ASSERT_EQ(*p.Dispatch(first), cut);
    in.RemovePrefix(cut);
    ASSERT_EQ(*p.Dispatch(in), bytes.size() - cut);
    EXPECT_TRUE(p.complete());
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

TEST(H1ResponseParserTest, ReusableAcrossResponses) {
  Recorder rec;
  H1ResponseParser p(&rec);
  for (int i = 0; i < 3; ++i) {
    p.Begin(false);
    std::string in = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx";
    ASSERT_EQ(*Dispatch(p, in), in.size());
    EXPECT_TRUE(p.complete());
  }
  EXPECT_EQ(rec.completes, 3);
}

}  // namespace
}  // namespace sluice::http
