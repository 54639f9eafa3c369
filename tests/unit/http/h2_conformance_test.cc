// RFC 9113 conformance and hardening of H2ServerCodec, with frames written
// by hand after the client preface: the answer must be the RFC's stream or
// connection error, not an HTTP error page.

#include <nghttp2/nghttp2.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "http/h2_server_codec.h"

namespace sluice::http {
namespace {

using core::Slice;

constexpr uint8_t kData = 0x0;
constexpr uint8_t kHeaders = 0x1;
constexpr uint8_t kPriority = 0x2;
constexpr uint8_t kRstStream = 0x3;
constexpr uint8_t kSettings = 0x4;
constexpr uint8_t kPing = 0x6;
constexpr uint8_t kGoaway = 0x7;
constexpr uint8_t kWindowUpdate = 0x8;
constexpr uint8_t kContinuation = 0x9;

constexpr uint8_t kEndStream = 0x1;
constexpr uint8_t kAck = 0x1;
constexpr uint8_t kEndHeaders = 0x4;
constexpr uint8_t kPadded = 0x8;
constexpr uint8_t kPriorityFlag = 0x20;

const std::string kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

void Put32(std::string* out, uint32_t v) {
  out->push_back(static_cast<char>(v >> 24));
  out->push_back(static_cast<char>(v >> 16));
  out->push_back(static_cast<char>(v >> 8));
  out->push_back(static_cast<char>(v));
}

std::string FrameHeader(uint32_t len, uint8_t type, uint8_t flags, uint32_t stream) {
  std::string h;
  h.push_back(static_cast<char>(len >> 16));
  h.push_back(static_cast<char>(len >> 8));
  h.push_back(static_cast<char>(len));
  h.push_back(static_cast<char>(type));
  h.push_back(static_cast<char>(flags));
  Put32(&h, stream & 0x7fffffff);
  return h;
}

std::string Frame(uint8_t type, uint8_t flags, uint32_t stream, const std::string& payload) {
  return FrameHeader(static_cast<uint32_t>(payload.size()), type, flags, stream) + payload;
}

// HPACK integer with an N-bit prefix (RFC 7541 5.1); `first` holds the
// representation's high bits.
std::string HpackInt(uint32_t v, int prefix_bits, uint8_t first) {
  std::string out;
  uint32_t max = (1u << prefix_bits) - 1;
  if (v < max) {
    out.push_back(static_cast<char>(first | v));
    return out;
  }
  out.push_back(static_cast<char>(first | max));
  v -= max;
  while (v >= 128) {
    out.push_back(static_cast<char>((v % 128) + 128));
    v /= 128;
  }
  out.push_back(static_cast<char>(v));
  return out;
}

std::string HpackString(const std::string& s) {
  return HpackInt(static_cast<uint32_t>(s.size()), 7, 0x00) + s;
}

// Literal Header Field without Indexing, new name (RFC 7541 6.2.2).
std::string Literal(const std::string& name, const std::string& value) {
  return std::string(1, '\0') + HpackString(name) + HpackString(value);
}

using Fields = std::vector<std::pair<std::string, std::string>>;

std::string Block(const Fields& fields) {
  std::string b;
  for (const auto& [n, v] : fields) b += Literal(n, v);
  return b;
}

Fields GetFields(const std::string& path = "/") {
  return {
      {":method", "GET"}, {":scheme", "https"}, {":authority", "example.test"}, {":path", path}};
}

std::string HeadersFrame(uint32_t stream, const Fields& fields, bool end_stream = true) {
  return Frame(kHeaders, kEndHeaders | (end_stream ? kEndStream : 0), stream, Block(fields));
}

std::string RstStream(uint32_t stream, uint32_t code) {
  std::string p;
  Put32(&p, code);
  return Frame(kRstStream, 0, stream, p);
}

std::string WindowUpdate(uint32_t stream, uint32_t inc) {
  std::string p;
  Put32(&p, inc);
  return Frame(kWindowUpdate, 0, stream, p);
}

struct ParsedFrame {
  uint8_t type;
  uint8_t flags;
  uint32_t stream;
  std::string payload;
  uint32_t code() const {  // RST_STREAM and GOAWAY error code
    size_t off = type == kGoaway ? 4 : 0;
    const auto* p = reinterpret_cast<const uint8_t*>(payload.data()) + off;
    return (uint32_t{p[0]} << 24) | (p[1] << 16) | (p[2] << 8) | p[3];
  }
  uint32_t last_stream() const {
    return ParsedFrame{kRstStream, 0, 0, payload}.code() & 0x7fffffff;
  }
};

class CountingSink : public H2StreamSink {
 public:
  void OnRequestHeaders(int32_t id, RequestHead head, bool) override {
    heads.push_back(std::move(head));
    ids.push_back(id);
    ++live;
    max_live = std::max(max_live, live);
  }
  void OnRequestData(int32_t, Slice data) override { body += data.view(); }
  void OnRequestTrailers(int32_t, std::vector<Header>) override {}
  void OnRequestEnd(int32_t) override { ++ends; }
  void OnStreamWritable(int32_t) override {}
  void OnStreamClosed(int32_t) override { --live; }
  void OnStreamReset(int32_t, uint32_t code) override {
    --live;
    ++resets;
    last_reset_code = code;
  }
  std::vector<RequestHead> heads;
  std::vector<int32_t> ids;
  std::string body;
  int ends = 0;
  int live = 0;
  int max_live = 0;
  int resets = 0;
  uint32_t last_reset_code = 0;
};

// A hand-driven client connection.
class RawConn {
 public:
  explicit RawConn(H2Options opts = {}) : codec_(&sink, opts) {
    nghttp2_hd_inflate_new(&inflater_);
  }
  ~RawConn() { nghttp2_hd_inflate_del(inflater_); }

  // Preface, empty SETTINGS; optionally acknowledges the server's SETTINGS.
  void Start(bool ack = true) {
    Send(kPreface + Frame(kSettings, 0, 0, ""));
    Read();
    if (ack) Send(Frame(kSettings, kAck, 0, ""));
  }

  const absl::Status& Send(const std::string& bytes) {
    status = codec_.Dispatch(Slice::Copy(bytes));
    return status;
  }

  // Takes all output and parses it into frames (appended to `frames`).
  std::vector<ParsedFrame> Read() {
    std::vector<Slice> out;
    codec_.TakeOutput(&out);
    for (const Slice& s : out) rx_ += s.view();
    total_out += 0;
    std::vector<ParsedFrame> got;
    while (rx_.size() >= 9) {
      const auto* p = reinterpret_cast<const uint8_t*>(rx_.data());
      uint32_t len = (p[0] << 16) | (p[1] << 8) | p[2];
      if (rx_.size() < 9 + len) break;
      ParsedFrame f{p[3], p[4],
                    ((uint32_t{p[5]} << 24) | (p[6] << 16) | (p[7] << 8) | p[8]) & 0x7fffffff,
                    rx_.substr(9, len)};
      total_out += 9 + len;
      if (f.type == kHeaders) Decode(f);
      got.push_back(f);
      frames.push_back(std::move(f));
      rx_.erase(0, 9 + len);
    }
    return got;
  }

  const ParsedFrame* Find(uint8_t type, uint32_t stream) const {
    for (const ParsedFrame& f : frames) {
      if (f.type == type && f.stream == stream) return &f;
    }
    return nullptr;
  }
  const ParsedFrame* Goaway() const { return Find(kGoaway, 0); }
  int Count(uint8_t type) const {
    int n = 0;
    for (const ParsedFrame& f : frames) n += f.type == type;
    return n;
  }

  H2ServerCodec& codec() { return codec_; }

  // The server's header fields per stream, decoded with a real HPACK
  // decoder (the server's encoder state spans frames).
  std::map<uint32_t, Fields> headers;

  CountingSink sink;
  std::vector<ParsedFrame> frames;
  absl::Status status;
  size_t total_out = 0;

 private:
  void Decode(const ParsedFrame& f) {
    // nghttp2 sends neither padding nor priority on server HEADERS.
    const auto* in = reinterpret_cast<const uint8_t*>(f.payload.data());
    size_t left = f.payload.size();
    for (;;) {
      nghttp2_nv nv;
      int flags = 0;
      ssize_t n = nghttp2_hd_inflate_hd2(inflater_, &nv, &flags, in, left,
                                         /*in_final=*/1);
      ASSERT_GE(n, 0);
      in += n;
      left -= static_cast<size_t>(n);
      if (flags & NGHTTP2_HD_INFLATE_EMIT) {
        headers[f.stream].emplace_back(
            std::string(reinterpret_cast<const char*>(nv.name), nv.namelen),
            std::string(reinterpret_cast<const char*>(nv.value), nv.valuelen));
      }
      if (flags & NGHTTP2_HD_INFLATE_FINAL) {
        nghttp2_hd_inflate_end_headers(inflater_);
        break;
      }
      if ((flags & NGHTTP2_HD_INFLATE_EMIT) == 0 && left == 0) break;
    }
  }

  H2ServerCodec codec_;
  nghttp2_hd_inflater* inflater_ = nullptr;
  std::string rx_;
};

// Sends `frames_bytes` on a fresh connection and returns the RST_STREAM code
// for stream 1, or -1 when there is none.
int64_t ResetCodeFor(const std::string& frames_bytes, RawConn* conn) {
  conn->Start();
  conn->Send(frames_bytes);
  conn->Read();
  const ParsedFrame* rst = conn->Find(kRstStream, 1);
  return rst ? static_cast<int64_t>(rst->code()) : -1;
}

struct MalformedCase {
  const char* name;
  Fields fields;
};

class H2MalformedRequestTest : public ::testing::TestWithParam<MalformedCase> {};

TEST_P(H2MalformedRequestTest, IsStreamErrorProtocolError) {
  RawConn conn;
  EXPECT_EQ(ResetCodeFor(HeadersFrame(1, GetParam().fields), &conn), kH2ProtocolError);
  EXPECT_TRUE(conn.sink.heads.empty());
  EXPECT_EQ(conn.Goaway(), nullptr);
  EXPECT_TRUE(conn.status.ok());
  // The connection survives: the next stream is served.
  conn.Send(HeadersFrame(3, GetFields()));
  EXPECT_EQ(conn.sink.heads.size(), 1u);
}

INSTANTIATE_TEST_SUITE_P(
    H2Rfc9113, H2MalformedRequestTest,
    ::testing::Values(
        MalformedCase{"MissingMethod", {{":scheme", "https"}, {":authority", "a"}, {":path", "/"}}},
        MalformedCase{"MissingPath",
                      {{":method", "GET"}, {":scheme", "https"}, {":authority", "a"}}},
        MalformedCase{"MissingScheme", {{":method", "GET"}, {":authority", "a"}, {":path", "/"}}},
        MalformedCase{"DuplicatePath",
                      {{":method", "GET"},
                       {":scheme", "https"},
                       {":authority", "a"},
                       {":path", "/"},
                       {":path", "/x"}}},
        MalformedCase{"DuplicateMethod",
                      {{":method", "GET"},
                       {":method", "POST"},
                       {":scheme", "https"},
                       {":authority", "a"},
                       {":path", "/"}}},
        MalformedCase{
            "EmptyPath",
            {{":method", "GET"}, {":scheme", "https"}, {":authority", "a"}, {":path", ""}}},
        MalformedCase{"UnknownPseudoHeader",
                      {{":method", "GET"},
                       {":scheme", "https"},
                       {":authority", "a"},
                       {":path", "/"},
                       {":foo", "x"}}},
        MalformedCase{"ResponsePseudoHeaderInRequest",
                      {{":method", "GET"},
                       {":scheme", "https"},
                       {":authority", "a"},
                       {":path", "/"},
                       {":status", "200"}}},
        MalformedCase{"PseudoAfterRegular",
                      {{":method", "GET"},
                       {":scheme", "https"},
                       {"accept", "*/*"},
                       {":authority", "a"},
                       {":path", "/"}}},
        MalformedCase{"Connection",
                      {{":method", "GET"},
                       {":scheme", "https"},
                       {":authority", "a"},
                       {":path", "/"},
                       {"connection", "keep-alive"}}},
        MalformedCase{"KeepAlive",
                      {{":method", "GET"},
                       {":scheme", "https"},
                       {":authority", "a"},
                       {":path", "/"},
                       {"keep-alive", "timeout=5"}}},
        MalformedCase{"ProxyConnection",
                      {{":method", "GET"},
                       {":scheme", "https"},
                       {":authority", "a"},
                       {":path", "/"},
                       {"proxy-connection", "keep-alive"}}},
        MalformedCase{"TransferEncoding",
                      {{":method", "GET"},
                       {":scheme", "https"},
                       {":authority", "a"},
                       {":path", "/"},
                       {"transfer-encoding", "chunked"}}},
        MalformedCase{"Upgrade",
                      {{":method", "GET"},
                       {":scheme", "https"},
                       {":authority", "a"},
                       {":path", "/"},
                       {"upgrade", "websocket"}}},
        MalformedCase{"TeGzip",
                      {{":method", "GET"},
                       {":scheme", "https"},
                       {":authority", "a"},
                       {":path", "/"},
                       {"te", "gzip"}}},
        MalformedCase{"UppercaseName",
                      {{":method", "GET"},
                       {":scheme", "https"},
                       {":authority", "a"},
                       {":path", "/"},
                       {"Accept", "*/*"}}},
        MalformedCase{"SpaceInName",
                      {{":method", "GET"},
                       {":scheme", "https"},
                       {":authority", "a"},
                       {":path", "/"},
                       {"x bad", "1"}}},
        MalformedCase{"ControlCharInValue",
                      {{":method", "GET"},
                       {":scheme", "https"},
                       {":authority", "a"},
                       {":path", "/"},
                       {"x-v", std::string("a\x01z")}}},
        MalformedCase{"NewlineInValue",
                      {{":method", "GET"},
                       {":scheme", "https"},
                       {":authority", "a"},
                       {":path", "/"},
                       {"x-v", "a\r\nx-injected: 1"}}},
        MalformedCase{"LeadingSpaceInValue",
                      {{":method", "GET"},
                       {":scheme", "https"},
                       {":authority", "a"},
                       {":path", "/"},
                       {"x-v", " a"}}},
        MalformedCase{"BadContentLength",
                      {{":method", "GET"},
                       {":scheme", "https"},
                       {":authority", "a"},
                       {":path", "/"},
                       {"content-length", "1x"}}},
        MalformedCase{"TwoContentLengths",
                      {{":method", "POST"},
                       {":scheme", "https"},
                       {":authority", "a"},
                       {":path", "/"},
                       {"content-length", "1"},
                       {"content-length", "2"}}},
        MalformedCase{"HostDiffersFromAuthority",
                      {{":method", "GET"},
                       {":scheme", "https"},
                       {":authority", "a"},
                       {":path", "/"},
                       {"host", "b"}}},
        MalformedCase{"NoAuthorityNoHost",
                      {{":method", "GET"}, {":scheme", "https"}, {":path", "/"}}},
        MalformedCase{
            "PathNotOriginForm",
            {{":method", "GET"}, {":scheme", "https"}, {":authority", "a"}, {":path", "api/tags"}}},
        MalformedCase{"ExtendedConnectWithoutSetting",
                      {{":method", "CONNECT"},
                       {":protocol", "websocket"},
                       {":scheme", "https"},
                       {":authority", "a"},
                       {":path", "/"}}}),
    [](const ::testing::TestParamInfo<MalformedCase>& info) {
      return std::string(info.param.name);
    });

TEST(H2ConformanceTest, TeTrailersAndHostAloneAreAccepted) {
  RawConn conn;
  conn.Start();
  conn.Send(HeadersFrame(1, {{":method", "GET"},
                             {":scheme", "https"},
                             {":path", "/"},
                             {"host", "h.test"},
                             {"te", "trailers"}}));
  conn.Read();
  ASSERT_EQ(conn.sink.heads.size(), 1u);
  EXPECT_EQ(conn.sink.heads[0].host, "h.test");
  EXPECT_EQ(conn.Find(kRstStream, 1), nullptr);
}

TEST(H2ConformanceTest, PlainConnectIsRefusedWith501) {
  RawConn conn;
  conn.Start();
  conn.Send(HeadersFrame(1, {{":method", "CONNECT"}, {":authority", "a:443"}}, false));
  conn.Read();
  EXPECT_TRUE(conn.sink.heads.empty());
  ASSERT_FALSE(conn.headers[1].empty());
  EXPECT_EQ(conn.headers[1][0], std::make_pair(std::string(":status"), std::string("501")));
  const ParsedFrame* body = conn.Find(kData, 1);
  ASSERT_NE(body, nullptr);
  EXPECT_NE(body->payload.find("\"error\""), std::string::npos);
}

TEST(H2ConformanceTest, ContentLengthLargerThanData) {
  RawConn conn;
  Fields f = GetFields();
  f[0].second = "POST";
  f.emplace_back("content-length", "10");
  EXPECT_EQ(ResetCodeFor(HeadersFrame(1, f, false) + Frame(kData, kEndStream, 1, "12345"), &conn),
            kH2ProtocolError);
  ASSERT_EQ(conn.sink.heads.size(), 1u);
  EXPECT_EQ(conn.sink.ends, 0);
  EXPECT_EQ(conn.sink.resets, 1);
  EXPECT_EQ(conn.sink.last_reset_code, kH2ProtocolError);
}

TEST(H2ConformanceTest, ContentLengthSmallerThanData) {
  RawConn conn;
  Fields f = GetFields();
  f[0].second = "POST";
  f.emplace_back("content-length", "2");
  EXPECT_EQ(ResetCodeFor(HeadersFrame(1, f, false) + Frame(kData, kEndStream, 1, "12345"), &conn),
            kH2ProtocolError);
  EXPECT_EQ(conn.sink.body, "");
  EXPECT_EQ(conn.sink.resets, 1);
}

TEST(H2ConformanceTest, ContentLengthOnHeadersOnlyRequest) {
  RawConn conn;
  Fields f = GetFields();
  f.emplace_back("content-length", "3");
  EXPECT_EQ(ResetCodeFor(HeadersFrame(1, f, true), &conn), kH2ProtocolError);
}

TEST(H2ConformanceTest, TrailersWithPseudoHeader) {
  RawConn conn;
  Fields f = GetFields();
  f[0].second = "POST";
  EXPECT_EQ(
      ResetCodeFor(HeadersFrame(1, f, false) + HeadersFrame(1, {{":path", "/x"}}, true), &conn),
      kH2ProtocolError);
}

TEST(H2ConformanceTest, TrailersWithoutEndStream) {
  RawConn conn;
  Fields f = GetFields();
  f[0].second = "POST";
  EXPECT_EQ(ResetCodeFor(HeadersFrame(1, f, false) + HeadersFrame(1, {{"x-t", "1"}}, false), &conn),
            kH2ProtocolError);
}

TEST(H2ConformanceTest, BadHpackIsCompressionError) {
  RawConn conn;
  conn.Start();
  // Indexed field with index 0 (RFC 7541 6.1) is a decoding error.
  EXPECT_FALSE(
      conn.Send(Frame(kHeaders, kEndHeaders | kEndStream, 1, std::string(1, '\x80'))).ok());
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2CompressionError);
  EXPECT_TRUE(conn.codec().ShouldClose());
}

TEST(H2ConformanceTest, HpackIndexOutOfRangeIsCompressionError) {
  RawConn conn;
  conn.Start();
  EXPECT_FALSE(
      conn.Send(Frame(kHeaders, kEndHeaders | kEndStream, 1, HpackInt(200, 7, 0x80))).ok());
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2CompressionError);
}

TEST(H2ConformanceTest, OversizeFrameIsFrameSizeError) {
  RawConn conn;
  conn.Start();
  Fields f = GetFields();
  f[0].second = "POST";
  conn.Send(HeadersFrame(1, f, false));
  EXPECT_FALSE(conn.Send(Frame(kData, 0, 1, std::string(16385, 'x'))).ok());
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2FrameSizeError);
  // The stream the sink knew is reset with the connection.
  EXPECT_EQ(conn.sink.resets, 1);
  EXPECT_EQ(conn.sink.last_reset_code, kH2FrameSizeError);
  EXPECT_TRUE(conn.codec().ShouldClose());
}

TEST(H2ConformanceTest, BadSettingsLengthIsFrameSizeError) {
  RawConn conn;
  conn.Start();
  EXPECT_FALSE(conn.Send(Frame(kSettings, 0, 0, "12345")).ok());
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2FrameSizeError);
}

TEST(H2ConformanceTest, BadPingLengthIsFrameSizeError) {
  RawConn conn;
  conn.Start();
  EXPECT_FALSE(conn.Send(Frame(kPing, 0, 0, "1234567")).ok());
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2FrameSizeError);
}

TEST(H2ConformanceTest, BadPrefaceIsProtocolError) {
  RawConn conn;
  absl::Status st = conn.Send("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
  EXPECT_FALSE(st.ok());
  conn.Read();
  // The server preface still comes first (RFC 9113 3.4).
  ASSERT_FALSE(conn.frames.empty());
  EXPECT_EQ(conn.frames[0].type, kSettings);
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2ProtocolError);
  EXPECT_TRUE(conn.codec().ShouldClose());
  // Later input is ignored with the same error.
  EXPECT_EQ(conn.Send(kPreface).code(), st.code());
}

TEST(H2ConformanceTest, DataOnStreamZeroIsProtocolError) {
  RawConn conn;
  conn.Start();
  EXPECT_FALSE(conn.Send(Frame(kData, 0, 0, "x")).ok());
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2ProtocolError);
}

TEST(H2ConformanceTest, DataOnIdleStreamIsProtocolError) {
  RawConn conn;
  conn.Start();
  EXPECT_FALSE(conn.Send(Frame(kData, 0, 5, "x")).ok());
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2ProtocolError);
}

TEST(H2ConformanceTest, EvenStreamIdIsProtocolError) {
  RawConn conn;
  conn.Start();
  EXPECT_FALSE(conn.Send(HeadersFrame(2, GetFields())).ok());
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2ProtocolError);
}

// RFC 9113 5.1.1: a new stream id must be above every id the client used;
// a lower, never used one is a connection error PROTOCOL_ERROR (nghttp2
// alone ignores such a HEADERS: it cannot tell it from a late trailer on a
// stream it already forgot).
TEST(H2ConformanceTest, DecreasingStreamIdIsProtocolError) {
  RawConn conn;
  conn.Start();
  conn.Send(HeadersFrame(5, GetFields()));
  EXPECT_FALSE(conn.Send(HeadersFrame(3, GetFields("/lower"))).ok());
  conn.Read();
  ASSERT_EQ(conn.sink.heads.size(), 1u);
  EXPECT_EQ(conn.sink.ids[0], 5);
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2ProtocolError);
  EXPECT_EQ(conn.Goaway()->last_stream(), 5u);
}

TEST(H2ConformanceTest, HeadersOnHalfClosedStreamIsStreamClosed) {
  RawConn conn;
  conn.Start();
  conn.Send(HeadersFrame(5, GetFields()));
  // Reusing a stream that is half-closed (remote) is nghttp2's own check.
  EXPECT_FALSE(conn.Send(HeadersFrame(5, GetFields())).ok());
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2StreamClosed);
  EXPECT_EQ(conn.Goaway()->last_stream(), 5u);
}

TEST(H2ConformanceTest, ZeroWindowIncrementIsProtocolError) {
  RawConn conn;
  conn.Start();
  EXPECT_FALSE(conn.Send(WindowUpdate(0, 0)).ok());
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2ProtocolError);
}

TEST(H2ConformanceTest, ConnectionWindowOverflowIsFlowControlError) {
  RawConn conn;
  conn.Start();
  EXPECT_FALSE(conn.Send(WindowUpdate(0, 0x7fffffff)).ok());
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2FlowControlError);
}

TEST(H2ConformanceTest, StreamWindowOverflowIsStreamError) {
  RawConn conn;
  conn.Start();
  conn.Send(HeadersFrame(1, GetFields(), false));
  conn.Send(WindowUpdate(1, 0x7fffffff));
  conn.Read();
  const ParsedFrame* rst = conn.Find(kRstStream, 1);
  ASSERT_NE(rst, nullptr);
  EXPECT_EQ(rst->code(), kH2FlowControlError);
  EXPECT_EQ(conn.sink.resets, 1);
  EXPECT_EQ(conn.Goaway(), nullptr);
}

TEST(H2ConformanceTest, DataAfterEndStreamIsStreamClosed) {
  RawConn conn;
  conn.Start();
  conn.Send(HeadersFrame(1, GetFields(), true));
  conn.Send(Frame(kData, 0, 1, "late"));
  conn.Read();
  const ParsedFrame* rst = conn.Find(kRstStream, 1);
  const ParsedFrame* goaway = conn.Goaway();
  ASSERT_TRUE(rst != nullptr || goaway != nullptr);
  EXPECT_EQ(rst ? rst->code() : goaway->code(), kH2StreamClosed);
  EXPECT_EQ(conn.sink.body, "");
}

TEST(H2ConformanceTest, RequestBodyBeyondStreamWindowIsFlowControlError) {
  H2Options opts;
  opts.stream_window_bytes = 16384;
  RawConn conn(opts);
  conn.Start();  // acknowledged: the 16 KiB window is in force
  Fields f = GetFields();
  f[0].second = "POST";
  conn.Send(HeadersFrame(1, f, false));
  for (int i = 0; i < 2; ++i) conn.Send(Frame(kData, 0, 1, std::string(10000, 'x')));
  conn.Read();
  const ParsedFrame* rst = conn.Find(kRstStream, 1);
  const ParsedFrame* goaway = conn.Goaway();
  ASSERT_TRUE(rst != nullptr || goaway != nullptr);
  EXPECT_EQ(rst ? rst->code() : goaway->code(), kH2FlowControlError);
}

TEST(H2ConformanceTest, ServerSettingsAreAlwaysSent) {
  RawConn conn;
  conn.Start();
  ASSERT_FALSE(conn.frames.empty());
  const ParsedFrame& s = conn.frames[0];
  ASSERT_EQ(s.type, kSettings);
  bool has_max_streams = false;
  for (size_t i = 0; i + 6 <= s.payload.size(); i += 6) {
    uint16_t id = (uint8_t(s.payload[i]) << 8) | uint8_t(s.payload[i + 1]);
    uint32_t v = ParsedFrame{kRstStream, 0, 0, s.payload.substr(i + 2, 4)}.code();
    if (id == 0x3) {
      has_max_streams = true;
      EXPECT_EQ(v, 128u);
    }
  }
  EXPECT_TRUE(has_max_streams);
}

// Once the client acknowledged SETTINGS_MAX_CONCURRENT_STREAMS, exceeding
// it is a connection error for nghttp2 (RFC 9113 5.1.2 allows a stream
// error too; before the acknowledgement nghttp2 refuses the stream).
TEST(H2ConformanceTest, StreamsAboveAcknowledgedLimitAreRejected) {
  H2Options opts;
  opts.max_concurrent_streams = 2;
  RawConn conn(opts);
  conn.Start();
  conn.Send(HeadersFrame(1, GetFields(), false));
  conn.Send(HeadersFrame(3, GetFields(), false));
  EXPECT_FALSE(conn.Send(HeadersFrame(5, GetFields(), false)).ok());
  conn.Read();
  EXPECT_EQ(conn.sink.heads.size(), 2u);
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2ProtocolError);
  EXPECT_EQ(conn.sink.resets, 2);
}

// Rapid reset (CVE-2023-44487): HEADERS then RST_STREAM, over and over.
// `split`: the two frames arrive in separate reads, so the sink sees each
// request before its reset.
void RapidResetFlood(bool split) {
  RawConn conn;
  conn.Start();
  int sent = 0;
  const auto start = std::chrono::steady_clock::now();
  for (uint32_t i = 0; i < 2000; ++i) {
    uint32_t id = 1 + 2 * i;
    if (split) {
      conn.Send(HeadersFrame(id, GetFields(), true));
      conn.Send(RstStream(id, kH2Cancel));
    } else {
      conn.Send(HeadersFrame(id, GetFields(), true) + RstStream(id, kH2Cancel));
    }
    ++sent;
    if (i % 50 == 0) conn.Read();
    if (!conn.status.ok() || conn.Goaway() != nullptr) break;
  }
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  // nghttp2's limiter (1000 burst, 33/s) answers with INTERNAL_ERROR.
  EXPECT_EQ(conn.Goaway()->code(), kH2InternalError);
  EXPECT_FALSE(conn.status.ok());
  // The bucket gains 33 tokens each time nghttp2's clock (whole seconds)
  // ticks while the loop runs: once even in a fast run that straddles a
  // second, more under a sanitizer.
  const double elapsed_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LE(sent, 1001 + 33 * (static_cast<int>(elapsed_s) + 1));
  if (split) {
    EXPECT_EQ(conn.sink.max_live, 1);
  } else {
    // Reset in the same read: the sink never heard of these requests.
    EXPECT_TRUE(conn.sink.heads.empty());
  }
  EXPECT_EQ(conn.sink.live, 0);
  EXPECT_TRUE(conn.codec().ShouldClose());
}

TEST(H2ConformanceTest, RapidResetFloodEndsInGoaway) { RapidResetFlood(false); }

TEST(H2ConformanceTest, RapidResetFloodSplitReadsEndsInGoaway) { RapidResetFlood(true); }

TEST(H2ConformanceTest, ContinuationFloodEndsInGoaway) {
  RawConn conn;
  conn.Start();
  std::string flood = Frame(kHeaders, 0, 1, Block(GetFields()));
  for (int i = 0; i < 50; ++i) {
    flood += Frame(kContinuation, 0, 1, Literal("x-c" + std::to_string(i), "v"));
  }
  EXPECT_FALSE(conn.Send(flood).ok());
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2EnhanceYourCalm);
  EXPECT_TRUE(conn.sink.heads.empty());
}

TEST(H2ConformanceTest, EightContinuationsAreFine) {
  RawConn conn;
  conn.Start();
  std::string block = Frame(kHeaders, kEndStream, 1, Block(GetFields()));
  for (int i = 0; i < 8; ++i) {
    block +=
        Frame(kContinuation, i == 7 ? kEndHeaders : 0, 1, Literal("x-c" + std::to_string(i), "v"));
  }
  EXPECT_TRUE(conn.Send(block).ok());
  EXPECT_EQ(conn.sink.heads.size(), 1u);
}

TEST(H2ConformanceTest, SettingsFloodWithoutReadingIsBounded) {
  RawConn conn;
  conn.Start();
  std::string settings;
  for (int i = 0; i < 1000; ++i) settings += Frame(kSettings, 0, 0, "");
  absl::Status st;
  int rounds = 0;
  for (; rounds < 100 && st.ok(); ++rounds) st = conn.Send(settings);
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_LT(rounds, 100);
  // What the codec holds for a client that never reads stays small.
  EXPECT_LE(conn.codec().pending_output_bytes(), 16 * 1024 + 64);
  while (conn.codec().WantsWrite()) conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2EnhanceYourCalm);
  EXPECT_LT(conn.total_out, 64 * 1024u);
  EXPECT_TRUE(conn.codec().ShouldClose());
}

TEST(H2ConformanceTest, PingFloodWithoutReadingIsBounded) {
  RawConn conn;
  conn.Start();
  std::string pings;
  for (int i = 0; i < 1000; ++i) pings += Frame(kPing, 0, 0, "12345678");
  absl::Status st;
  int rounds = 0;
  for (; rounds < 100 && st.ok(); ++rounds) st = conn.Send(pings);
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  while (conn.codec().WantsWrite()) conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2EnhanceYourCalm);
  EXPECT_LT(conn.total_out, 64 * 1024u);
}

TEST(H2ConformanceTest, PingsAreAnsweredWhenRead) {
  RawConn conn;
  conn.Start();
  for (int round = 0; round < 20; ++round) {
    std::string pings;
    for (int i = 0; i < 100; ++i) pings += Frame(kPing, 0, 0, "12345678");
    ASSERT_TRUE(conn.Send(pings).ok());
    conn.Read();
  }
  EXPECT_EQ(conn.Count(kPing), 2000);
  EXPECT_EQ(conn.Goaway(), nullptr);
}

// MadeYouReset (CVE-2025-8671): frames that make the server reset streams.
TEST(H2ConformanceTest, MadeYouResetEndsInEnhanceYourCalm) {
  int64_t now = 0;
  H2Options opts;
  opts.max_sent_resets_per_window = 50;
  opts.sent_reset_window_ms = 10000;
  opts.now_ms = [&] { return now; };
  RawConn conn(opts);
  conn.Start();
  uint32_t id = 1;
  auto provoke = [&](int n) {
    for (int i = 0; i < n; ++i, id += 2) {
      conn.Send(HeadersFrame(id, GetFields(), false) + WindowUpdate(id, 0x7fffffff));
      conn.Read();
    }
  };
  // 40 per window, with the window passing: within the budget.
  provoke(40);
  now += 10000;
  provoke(40);
  EXPECT_EQ(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Count(kRstStream), 80);
  now += 10000;
  // A burst past the budget.
  provoke(60);
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2EnhanceYourCalm);
  EXPECT_FALSE(conn.status.ok());
  EXPECT_LE(conn.Count(kRstStream), 80 + 51);
  EXPECT_EQ(conn.sink.live, 0);
  while (conn.codec().WantsWrite()) conn.Read();
  EXPECT_TRUE(conn.codec().ShouldClose());
}

TEST(H2ConformanceTest, ProvokedResetsWithoutReadingAreBounded) {
  H2Options opts;
  opts.max_sent_resets_per_window = 0;  // only the queue bound acts
  opts.max_queued_frames = 500;
  RawConn conn(opts);
  // Unacknowledged SETTINGS: streams above the limit are refused one by
  // one (RST_STREAM each) rather than ending the connection.
  conn.Start(/*ack=*/false);
  absl::Status st;
  uint32_t id = 1;
  for (int i = 0; i < 5000 && st.ok(); ++i, id += 2) {
    // Malformed requests: each makes the codec queue a RST_STREAM.
    st = conn.Send(HeadersFrame(id, {{":method", "GET"}, {":path", "/"}}));
  }
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_LT(id, 2 * 5000u);
  while (conn.codec().WantsWrite()) conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2EnhanceYourCalm);
}

TEST(H2ConformanceTest, ClientGoawayLetsStreamsFinish) {
  RawConn conn;
  conn.Start();
  conn.Send(HeadersFrame(1, GetFields(), true));
  std::string goaway;
  Put32(&goaway, 0);
  Put32(&goaway, 0);
  EXPECT_TRUE(conn.Send(Frame(kGoaway, 0, 0, goaway)).ok());
  EXPECT_FALSE(conn.codec().ShouldClose());
  ASSERT_EQ(conn.sink.ids.size(), 1u);
  ResponseHead head;
  head.status = 204;
  ASSERT_TRUE(conn.codec().SubmitResponse(1, head, true).ok());
  conn.Read();
  EXPECT_NE(conn.Find(kHeaders, 1), nullptr);
  EXPECT_TRUE(conn.codec().ShouldClose());
}

// ------------------------------------------------ stream states (RFC 9113 5.1)
// nghttp2 forgets a stream once it is closed (closed streams are not kept)
// and skips PRIORITY frames unread (RFC 7540 priorities are off); the codec
// answers what it would leave silent.

// A PRIORITY frame: `dependency` (exclusive bit clear), weight 16.
std::string Priority(uint32_t stream, uint32_t dependency) {
  std::string p;
  Put32(&p, dependency);
  p.push_back(15);
  return Frame(kPriority, 0, stream, p);
}

// HEADERS with the PRIORITY flag (and PADDED with `pad` > 0).
std::string HeadersWithPriority(uint32_t stream, uint32_t dependency, const Fields& fields,
                                bool end_stream, uint8_t pad = 0) {
  std::string p;
  if (pad > 0) p.push_back(static_cast<char>(pad));
  Put32(&p, dependency);
  p.push_back(15);
  p += Block(fields);
  p += std::string(pad, '\0');
  return Frame(
      kHeaders,
      kEndHeaders | kPriorityFlag | (pad > 0 ? kPadded : 0) | (end_stream ? kEndStream : 0), stream,
      p);
}

Fields PostFields() {
  Fields f = GetFields("/api/generate");
  f[0].second = "POST";
  return f;
}

int CountFrames(const RawConn& conn, uint8_t type, uint32_t stream) {
  int n = 0;
  for (const ParsedFrame& f : conn.frames) {
    n += f.type == type && f.stream == stream;
  }
  return n;
}

// Sends `bytes` whole, or one byte per Dispatch call.
void SendMaybeByByte(RawConn* conn, const std::string& bytes, bool by_byte) {
  if (!by_byte) {
    conn->Send(bytes);
    return;
  }
  for (char c : bytes) conn->Send(std::string(1, c));
}

// The stream answered with a 204 that ends it: with the request ended too,
// the stream is closed and nghttp2 forgets it.
void FinishStream(RawConn* conn, int32_t id) {
  ResponseHead head;
  head.status = 204;
  ASSERT_TRUE(conn->codec().SubmitResponse(id, head, true).ok());
  conn->Read();
  ASSERT_NE(conn->Find(kHeaders, id), nullptr);
  ASSERT_EQ(conn->codec().active_streams(), 0u);
}

// Stream 3 still gets its request through to the sink.
void ExpectConnectionServes(RawConn* conn, uint32_t id = 3) {
  EXPECT_TRUE(conn->Send(HeadersFrame(id, GetFields())).ok());
  conn->Read();
  ASSERT_FALSE(conn->sink.ids.empty());
  EXPECT_EQ(conn->sink.ids.back(), static_cast<int32_t>(id));
  EXPECT_EQ(conn->Goaway(), nullptr);
}

class H2ClosedStreamTest : public ::testing::TestWithParam<bool> {};

TEST_P(H2ClosedStreamTest, DataAfterClientResetIsStreamClosed) {
  RawConn conn;
  conn.Start();
  SendMaybeByByte(
      &conn,
      HeadersFrame(1, PostFields(), false) + RstStream(1, kH2Cancel) + Frame(kData, 0, 1, "late"),
      GetParam());
  conn.Read();
  const ParsedFrame* rst = conn.Find(kRstStream, 1);
  ASSERT_NE(rst, nullptr);
  EXPECT_EQ(rst->code(), kH2StreamClosed);
  EXPECT_EQ(conn.sink.body, "");
  // Answered once: later DATA on it is ignored, as after any server reset.
  conn.Send(Frame(kData, 0, 1, "later"));
  conn.Read();
  EXPECT_EQ(CountFrames(conn, kRstStream, 1), 1);
  ExpectConnectionServes(&conn);
}

TEST_P(H2ClosedStreamTest, HeadersAfterClientResetIsStreamClosed) {
  RawConn conn;
  conn.Start();
  SendMaybeByByte(&conn,
                  HeadersFrame(1, PostFields(), false) + RstStream(1, kH2Cancel) +
                      HeadersFrame(1, {{"x-trailer", "1"}}, true),
                  GetParam());
  EXPECT_FALSE(conn.status.ok());
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2StreamClosed);
}

TEST_P(H2ClosedStreamTest, DataOnClosedStreamIsStreamClosed) {
  RawConn conn;
  conn.Start();
  conn.Send(HeadersFrame(1, GetFields(), true));
  ASSERT_NO_FATAL_FAILURE(FinishStream(&conn, 1));
  SendMaybeByByte(&conn, Frame(kData, kEndStream, 1, "x"), GetParam());
  conn.Read();
  const ParsedFrame* rst = conn.Find(kRstStream, 1);
  ASSERT_NE(rst, nullptr);
  EXPECT_EQ(rst->code(), kH2StreamClosed);
  EXPECT_EQ(conn.sink.resets, 0);  // the sink's stream had closed already
  ExpectConnectionServes(&conn);
}

TEST_P(H2ClosedStreamTest, HeadersOnClosedStreamIsStreamClosed) {
  RawConn conn;
  conn.Start();
  conn.Send(HeadersFrame(1, GetFields(), true));
  ASSERT_NO_FATAL_FAILURE(FinishStream(&conn, 1));
  SendMaybeByByte(&conn, HeadersFrame(1, GetFields("/again")), GetParam());
  EXPECT_FALSE(conn.status.ok());
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2StreamClosed);
  EXPECT_EQ(conn.sink.heads.size(), 1u);
}

TEST_P(H2ClosedStreamTest, LowerStreamIdIsProtocolError) {
  RawConn conn;
  // The whole exchange, preface included, byte by byte or at once.
  SendMaybeByByte(&conn,
                  kPreface + Frame(kSettings, 0, 0, "") + HeadersFrame(1, GetFields(), true) +
                      HeadersFrame(7, GetFields(), true) +
                      HeadersFrame(5, GetFields("/lower"), true),
                  GetParam());
  EXPECT_FALSE(conn.status.ok());
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2ProtocolError);
  EXPECT_EQ(conn.Goaway()->last_stream(), 7u);
  EXPECT_EQ(conn.sink.ids, (std::vector<int32_t>{1, 7}));
}

// RFC 9113 5.1: frames the client had in flight when the server reset the
// stream are ignored, whatever made the server reset it.
TEST_P(H2ClosedStreamTest, FramesAfterServerResetAreIgnored) {
  RawConn conn;
  conn.Start();
  conn.Send(HeadersFrame(1, PostFields(), false));
  ASSERT_EQ(conn.sink.ids.size(), 1u);
  ASSERT_TRUE(conn.codec().ResetStream(1, kH2Cancel).ok());
  conn.Read();
  ASSERT_NE(conn.Find(kRstStream, 1), nullptr);
  ASSERT_EQ(conn.codec().active_streams(), 0u);
  SendMaybeByByte(&conn,
                  Frame(kData, 0, 1, "in flight") + HeadersFrame(1, {{"x-trailer", "1"}}, true),
                  GetParam());
  EXPECT_TRUE(conn.status.ok()) << conn.status;
  conn.Read();
  EXPECT_EQ(conn.Goaway(), nullptr);
  EXPECT_EQ(CountFrames(conn, kRstStream, 1), 1);
  EXPECT_EQ(conn.sink.body, "");
  ExpectConnectionServes(&conn);
}

TEST_P(H2ClosedStreamTest, FramesOnRefusedStreamAreIgnored) {
  H2Options opts;
  opts.max_concurrent_streams = 1;
  RawConn conn(opts);
  // Unacknowledged SETTINGS: stream 3 above the limit is refused, a reset
  // queued for a stream nghttp2 never opened.
  conn.Start(/*ack=*/false);
  SendMaybeByByte(&conn,
                  HeadersFrame(1, PostFields(), false) + HeadersFrame(3, PostFields(), false) +
                      Frame(kData, 0, 3, "in flight") + Frame(kData, kEndStream, 3, "too"),
                  GetParam());
  EXPECT_TRUE(conn.status.ok()) << conn.status;
  conn.Read();
  EXPECT_EQ(conn.Goaway(), nullptr);
  ASSERT_EQ(CountFrames(conn, kRstStream, 3), 1);
  EXPECT_EQ(conn.Find(kRstStream, 3)->code(), kH2RefusedStream);
  EXPECT_EQ(conn.sink.ids, (std::vector<int32_t>{1}));
}

// A graceful GOAWAY: streams above its last id are ignored (6.8), their
// DATA included.
TEST_P(H2ClosedStreamTest, StreamsAfterGoawayAreIgnored) {
  RawConn conn;
  conn.Start();
  conn.Send(HeadersFrame(1, GetFields(), false));
  conn.codec().GracefulGoaway();
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  SendMaybeByByte(&conn, HeadersFrame(3, PostFields(), false) + Frame(kData, kEndStream, 3, "x"),
                  GetParam());
  EXPECT_TRUE(conn.status.ok()) << conn.status;
  conn.Read();
  EXPECT_EQ(conn.Find(kRstStream, 3), nullptr);
  EXPECT_EQ(conn.Count(kGoaway), 1);
  EXPECT_EQ(conn.sink.ids.size(), 1u);
}

// ------------------------------------------------ priority (5.3.1, 6.3)

TEST_P(H2ClosedStreamTest, PriorityOnStreamZeroIsProtocolError) {
  RawConn conn;
  conn.Start();
  SendMaybeByByte(&conn, Priority(0, 1), GetParam());
  EXPECT_FALSE(conn.status.ok());
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2ProtocolError);
}

TEST_P(H2ClosedStreamTest, PriorityDependingOnItselfIsStreamError) {
  RawConn conn;
  conn.Start();
  // In one read with the HEADERS that opens the stream, or byte by byte.
  SendMaybeByByte(&conn, HeadersFrame(1, PostFields(), false) + Priority(1, 1), GetParam());
  EXPECT_TRUE(conn.status.ok()) << conn.status;
  conn.Read();
  const ParsedFrame* rst = conn.Find(kRstStream, 1);
  ASSERT_NE(rst, nullptr);
  EXPECT_EQ(rst->code(), kH2ProtocolError);
  // The sink heard of the request, so it hears of the reset.
  EXPECT_EQ(conn.sink.resets, 1);
  EXPECT_EQ(conn.sink.last_reset_code, kH2ProtocolError);
  ExpectConnectionServes(&conn);
}

TEST_P(H2ClosedStreamTest, TrailersDependingOnThemselvesAreStreamError) {
  RawConn conn;
  conn.Start();
  SendMaybeByByte(&conn,
                  HeadersFrame(1, PostFields(), false) + Frame(kData, 0, 1, "body") +
                      HeadersWithPriority(1, 1, {{"x-trailer", "1"}}, true,
                                          /*pad=*/3),
                  GetParam());
  EXPECT_TRUE(conn.status.ok()) << conn.status;
  conn.Read();
  const ParsedFrame* rst = conn.Find(kRstStream, 1);
  ASSERT_NE(rst, nullptr);
  EXPECT_EQ(rst->code(), kH2ProtocolError);
  EXPECT_EQ(conn.sink.ends, 0);
  EXPECT_EQ(conn.sink.resets, 1);
  ExpectConnectionServes(&conn);
}

// nghttp2's own answer for a new stream: the connection ends (allowed for
// any stream error, 5.4.1).
TEST_P(H2ClosedStreamTest, NewStreamDependingOnItselfEndsTheConnection) {
  RawConn conn;
  conn.Start();
  SendMaybeByByte(&conn, HeadersWithPriority(1, 1, GetFields(), true), GetParam());
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2ProtocolError);
  EXPECT_TRUE(conn.sink.heads.empty());
}

// An idle stream cannot be reset (6.4): the stream error becomes a
// connection error.
TEST_P(H2ClosedStreamTest, IdleStreamDependingOnItselfEndsTheConnection) {
  RawConn conn;
  conn.Start();
  SendMaybeByByte(&conn, Priority(9, 9), GetParam());
  EXPECT_FALSE(conn.status.ok());
  conn.Read();
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2ProtocolError);
}

// What browsers and curl send stays unanswered: PRIORITY on open, closed
// and idle streams, HEADERS with a priority on another stream.
TEST_P(H2ClosedStreamTest, OrdinaryPrioritiesAreIgnored) {
  RawConn conn;
  conn.Start();
  conn.Send(HeadersFrame(1, GetFields(), true));
  ASSERT_NO_FATAL_FAILURE(FinishStream(&conn, 1));
  SendMaybeByByte(&conn,
                  Priority(1, 0) + Priority(11, 0) + Priority(13, 11) +
                      HeadersWithPriority(3, 0, GetFields(), false) + Priority(3, 13) +
                      Frame(kData, kEndStream, 3, "") +
                      HeadersWithPriority(5, 3, GetFields(), true, 2),
                  GetParam());
  EXPECT_TRUE(conn.status.ok()) << conn.status;
  conn.Read();
  EXPECT_EQ(conn.Count(kRstStream), 0);
  EXPECT_EQ(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.sink.ids, (std::vector<int32_t>{1, 3, 5}));
}

INSTANTIATE_TEST_SUITE_P(WholeAndByByte, H2ClosedStreamTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "ByByte" : "Whole";
                         });

// The resets these answers send count in the MadeYouReset bucket like any
// the codec provokes: a client cannot make the server reset closed streams
// without bound.
TEST(H2ConformanceTest, ClosedStreamResetsCountAsProvoked) {
  int64_t now = 0;
  H2Options opts;
  opts.max_sent_resets_per_window = 20;
  opts.sent_reset_window_ms = 10000;
  opts.now_ms = [&] { return now; };
  RawConn conn(opts);
  conn.Start();
  uint32_t id = 1;
  for (int i = 0; i < 40 && conn.Goaway() == nullptr; ++i, id += 2) {
    // The client's own RST_STREAM is not counted; the server's answer to
    // the DATA after it, and to a self-dependency, are.
    conn.Send(HeadersFrame(id, PostFields(), false) + RstStream(id, kH2Cancel) +
              Frame(kData, 0, id, "x"));
    conn.Read();
    id += 2;
    conn.Send(HeadersFrame(id, PostFields(), false) + Priority(id, id));
    conn.Read();
  }
  ASSERT_NE(conn.Goaway(), nullptr);
  EXPECT_EQ(conn.Goaway()->code(), kH2EnhanceYourCalm);
  EXPECT_LE(conn.Count(kRstStream), 21);
  EXPECT_GE(conn.Count(kRstStream), 20);
  EXPECT_EQ(conn.sink.live, 0);
}

}  // namespace
}  // namespace sluice::http
