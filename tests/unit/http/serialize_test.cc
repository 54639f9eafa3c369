#include "http/serialize.h"

#include "gtest/gtest.h"

namespace sluice::http {
namespace {

RequestHead Head(std::vector<Header> headers) {
  RequestHead h;
  h.method = "POST";
  h.target = "/api/chat";
  h.headers = std::move(headers);
  for (auto& f : h.headers) {
    if (EqualsIgnoreCase(f.name, "host")) h.host = f.value;
  }
  return h;
}

TEST(SerializeTest, UpstreamRequestRewritesHeaders) {
  RequestHead h = Head({{"Host", "proxy.example"},
                        {"Connection", "keep-alive, X-Private"},
                        {"X-Private", "secret"},
                        {"Keep-Alive", "timeout=5"},
                        {"TE", "trailers"},
                        {"Proxy-Connection", "keep-alive"},
                        {"Expect", "100-continue"},
                        {"X-Forwarded-For", "1.2.3.4"},
                        {"X-Real-IP", "6.6.6.6"},
                        {"Content-Type", "application/json"},
                        {"Content-Length", "2"}});
  h.content_length = 2;
  std::string out;
  AppendUpstreamRequestHead(h, {"127.0.0.1", "http", "127.0.0.1:11434"}, &out);
  EXPECT_EQ(out,
            "POST /api/chat HTTP/1.1\r\n"
            "Host: 127.0.0.1:11434\r\n"
            "Content-Type: application/json\r\n"
            "X-Real-IP: 127.0.0.1\r\n"
            "X-Forwarded-For: 1.2.3.4, 127.0.0.1\r\n"
            "X-Forwarded-Proto: http\r\n"
            "X-Forwarded-Host: proxy.example\r\n"
            "Content-Length: 2\r\n\r\n");
}

TEST(SerializeTest, ChunkedRequestStaysChunked) {
  RequestHead h = Head({{"Host", "a"}, {"Transfer-Encoding", "chunked"}});
  h.chunked = true;
  std::string out;
  AppendUpstreamRequestHead(h, {"::1", "http", "u:1"}, &out);
  EXPECT_NE(out.find("Transfer-Encoding: chunked\r\n"), std::string::npos);
  EXPECT_EQ(out.find("Content-Length"), std::string::npos);
}

TEST(SerializeTest, UpgradeKeepsUpgradeHeaders) {
  RequestHead h = Head({{"Host", "a"},
                        {"Upgrade", "websocket"},
                        {"Connection", "Upgrade"},
                        {"Sec-WebSocket-Key", "k"}});
  h.method = "GET";
  h.upgrade = true;
  std::string out;
  AppendUpstreamRequestHead(h, {"127.0.0.1", "http", "u:1"}, &out);
  EXPECT_NE(out.find("Upgrade: websocket\r\nConnection: upgrade\r\n"), std::string::npos);
  EXPECT_NE(out.find("Sec-WebSocket-Key: k\r\n"), std::string::npos);
}

// Found by fuzz_h1_request: an empty first Upgrade field went upstream as
// "Upgrade: " while a later one made the request an upgrade.
TEST(SerializeTest, UpgradeFieldsAreJoinedWithoutEmptyOnes) {
  RequestHead h =
      Head({{"Host", "a"}, {"Upgrade", ""}, {"Upgrade", "websocket"}, {"Connection", "Upgrade"}});
  h.method = "GET";
  h.upgrade = true;
  std::string out;
  AppendUpstreamRequestHead(h, {"127.0.0.1", "http", "u:1"}, &out);
  EXPECT_NE(out.find("Upgrade: websocket\r\nConnection: upgrade\r\n"), std::string::npos) << out;
  EXPECT_EQ(out.find("Upgrade: \r\n"), std::string::npos) << out;
}

// A WebSocket handshake offers only websocket upstream, whatever else the
// client listed beside it.
TEST(SerializeTest, UpgradeOffersOnlyWebSocket) {
  RequestHead h = Head({{"Host", "a"},
                        {"Upgrade", "h2c, websocket"},
                        {"Connection", "Upgrade, HTTP2-Settings"},
                        {"HTTP2-Settings", "x"}});
  h.method = "GET";
  h.upgrade = true;
  std::string out;
  AppendUpstreamRequestHead(h, {"127.0.0.1", "http", "u:1"}, &out);
  EXPECT_NE(out.find("Upgrade: websocket\r\nConnection: upgrade\r\n"), std::string::npos) << out;
  EXPECT_EQ(out.find("h2c"), std::string::npos) << out;
  EXPECT_EQ(out.find("HTTP2-Settings"), std::string::npos) << out;
}

// RFC 9110 7.6.1: the fields the client's Connection names stop at the
// proxy, X-Forwarded-For included; the fields the proxy sets itself (Host,
// the framing, X-Real-IP and X-Forwarded-*) are set all the same.
TEST(SerializeTest, FieldsNamedByConnectionAreDroppedButTheProxysOwnAreSet) {
  RequestHead h =
      Head({{"Host", "proxy.example"},
            {"Connection", "X-Forwarded-For, x-real-ip, Host, Content-Length"},
            {"Connection", "cookie, X-Forwarded-Proto, X-Forwarded-Host, Authorization"},
            {"X-Forwarded-For", "10.9.9.9"},
            {"X-Real-IP", "6.6.6.6"},
            {"Cookie", "c=1"},
            {"Authorization", "Bearer x"},
            {"X-Kept", "1"},
            {"Content-Length", "2"}});
  h.content_length = 2;
  std::string out;
  AppendUpstreamRequestHead(h, {"127.0.0.1", "https", "127.0.0.1:11434"}, &out);
  EXPECT_EQ(out,
            "POST /api/chat HTTP/1.1\r\n"
            "Host: 127.0.0.1:11434\r\n"
            "X-Kept: 1\r\n"
            "X-Real-IP: 127.0.0.1\r\n"
            "X-Forwarded-For: 127.0.0.1\r\n"
            "X-Forwarded-Proto: https\r\n"
            "X-Forwarded-Host: proxy.example\r\n"
            "Content-Length: 2\r\n\r\n");
}

TEST(SerializeTest, DownstreamResponseRestatesFraming) {
  ResponseHead r;
  r.status = 200;
  r.reason = "OK";
  r.headers = {{"Content-Type", "application/x-ndjson"},
               {"Transfer-Encoding", "chunked"},
               {"Connection", "keep-alive"}};
  r.chunked = true;
  std::string out;
  AppendDownstreamResponseHead(r, BodyFraming::kChunked, false, &out);
  EXPECT_EQ(out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
            "Transfer-Encoding: chunked\r\n\r\n");
  out.clear();
  AppendDownstreamResponseHead(r, BodyFraming::kClose, true, &out);
  EXPECT_EQ(out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
            "Connection: close\r\n\r\n");
}

TEST(SerializeTest, JsonErrorIsEscaped) {
  std::string r = JsonErrorResponse(502, "upstream \"x\"\n", true, 3);
  EXPECT_NE(r.find("HTTP/1.1 502 Bad Gateway\r\n"), std::string::npos);
  EXPECT_NE(r.find("Retry-After: 3\r\n"), std::string::npos);
  EXPECT_NE(r.find("Connection: close\r\n"), std::string::npos);
  EXPECT_NE(r.find("{\"error\":\"upstream \\\"x\\\"\\n\"}"), std::string::npos);
}

TEST(SerializeTest, ChunkHeader) {
  char buf[kMaxChunkHeader];
  EXPECT_EQ(std::string(buf, FormatChunkHeader(0, buf)), "0\r\n");
  EXPECT_EQ(std::string(buf, FormatChunkHeader(0x1a2, buf)), "1a2\r\n");
  EXPECT_EQ(std::string(buf, FormatChunkHeader(~0ull, buf)), "ffffffffffffffff\r\n");
}

}  // namespace
}  // namespace sluice::http
