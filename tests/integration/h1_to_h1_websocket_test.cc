// HTTP/1.1 client to HTTP/1.1 upstream: a WebSocket upgrade (RFC 6455) is
// forwarded with its Upgrade/Connection headers and, after the 101, the
// connection becomes a byte tunnel to the simulator's echo endpoint.
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/h2_frames.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {
namespace {

// The key/accept pair from RFC 6455 section 1.3.
constexpr absl::string_view kKey = "dGhlIHNhbXBsZSBub25jZQ==";
constexpr absl::string_view kAccept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

constexpr uint8_t kOpText = 0x1;
constexpr uint8_t kOpBinary = 0x2;
constexpr uint8_t kOpClose = 0x8;

// A client frame: FIN set, masked with a fixed key.
std::string ClientFrame(uint8_t opcode, absl::string_view payload) {
  const uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};
  std::string f;
  f.push_back(static_cast<char>(0x80 | opcode));
  size_t n = payload.size();
  if (n < 126) {
    f.push_back(static_cast<char>(0x80 | n));
  } else if (n <= 0xffff) {
    f.push_back(static_cast<char>(0x80 | 126));
    f.push_back(static_cast<char>(n >> 8));
    f.push_back(static_cast<char>(n & 0xff));
  } else {
    f.push_back(static_cast<char>(0x80 | 127));
    for (int shift = 56; shift >= 0; shift -= 8) {
      f.push_back(static_cast<char>((static_cast<uint64_t>(n) >> shift) & 0xff));
    }
  }
  f.append(reinterpret_cast<const char*>(mask), 4);
  for (size_t i = 0; i < n; ++i) {
    f.push_back(static_cast<char>(payload[i] ^ mask[i % 4]));
  }
  return f;
}

struct Message {
  uint8_t opcode = 0;
  std::string payload;
};

// Reads one message, joining continuation frames. Server frames must not be
// masked (RFC 6455 5.1).
absl::StatusOr<Message> ReadMessage(HttpConnection* conn, absl::Duration timeout) {
  Message msg;
  absl::Time deadline = absl::Now() + timeout;
  for (int frames = 0; frames < 10000; ++frames) {
    absl::Duration left = std::max(deadline - absl::Now(), absl::ZeroDuration());
    auto head = conn->ReadExactly(2, left);
    if (!head.ok()) return head.status();
    uint8_t b0 = static_cast<uint8_t>((*head)[0]);
    uint8_t b1 = static_cast<uint8_t>((*head)[1]);
    if (b1 & 0x80) return absl::DataLossError("server frame is masked");
    uint64_t len = b1 & 0x7f;
    int ext = len == 126 ? 2 : len == 127 ? 8 : 0;
    if (ext > 0) {
      auto bytes = conn->ReadExactly(ext, left);
      if (!bytes.ok()) return bytes.status();
      len = 0;
      for (char c : *bytes) len = (len << 8) | static_cast<uint8_t>(c);
    }
    if (len > (64u << 20)) return absl::DataLossError("frame too large");
    auto payload = conn->ReadExactly(static_cast<size_t>(len), left);
    if (!payload.ok()) return payload.status();
    uint8_t opcode = b0 & 0x0f;
    if (opcode == 0x9 || opcode == 0xA) continue;  // Ping/pong: skip.
    if (opcode != 0) msg.opcode = opcode;
    msg.payload += *payload;
    if ((b0 & 0x80) != 0) return msg;
  }
  return absl::DataLossError("too many frames");
}

class H1ToH1WebSocket : public ProxyTest {};

TEST_F(H1ToH1WebSocket, EchoThroughTunnel) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(
      conn->Send(absl::StrCat("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                              "Connection: Upgrade\r\nSec-WebSocket-Key: ",
                              kKey, "\r\nSec-WebSocket-Version: 13\r\n\r\n")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse head, conn->ReadHead(absl::Seconds(5)));
  ASSERT_EQ(head.status, 101);
  EXPECT_TRUE(absl::EqualsIgnoreCase(head.Header("Upgrade").value_or(""), "websocket"));
  EXPECT_TRUE(ContainsIgnoreCase(head.Header("Connection").value_or(""), "upgrade"));
  EXPECT_EQ(head.Header("Sec-WebSocket-Accept").value_or(""), kAccept);

  IT_ASSERT_OK(conn->Send(ClientFrame(kOpText, "hello")));
  IT_ASSERT_OK_AND_ASSIGN(Message text, ReadMessage(conn.get(), absl::Seconds(5)));
  EXPECT_EQ(text.opcode, kOpText);
  EXPECT_EQ(text.payload, "hello");

  std::string blob(100 * 1024, '\0');
  uint32_t x = 12345;
  for (char& c : blob) {
    x = x * 1103515245 + 12345;
    c = static_cast<char>(x >> 16);
  }
  IT_ASSERT_OK(conn->Send(ClientFrame(kOpBinary, blob)));
  IT_ASSERT_OK_AND_ASSIGN(Message binary, ReadMessage(conn.get(), absl::Seconds(5)));
  EXPECT_EQ(binary.opcode, kOpBinary);
  ASSERT_EQ(binary.payload.size(), blob.size());
  EXPECT_TRUE(binary.payload == blob) << "100 KiB frame corrupted";

  std::string close_payload =
      "\x03\xe8"
      "bye";  // 1000, normal closure.
  IT_ASSERT_OK(conn->Send(ClientFrame(kOpClose, close_payload)));
  IT_ASSERT_OK_AND_ASSIGN(Message close, ReadMessage(conn.get(), absl::Seconds(5)));
  EXPECT_EQ(close.opcode, kOpClose);
  ASSERT_GE(close.payload.size(), 2u);
  EXPECT_EQ(close.payload.substr(0, 2), "\x03\xe8");
  // The server closes TCP after the close handshake; sluice passes it on.
  IT_ASSERT_OK(conn->ExpectClosed(absl::Seconds(3)));
}

// A frame split over several writes crosses the tunnel intact, and a
// Connection header listing more than "Upgrade" still upgrades.
TEST_F(H1ToH1WebSocket, FrameSplitAcrossWrites) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(
      conn->Send(absl::StrCat("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                              "Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: ",
                              kKey, "\r\nSec-WebSocket-Version: 13\r\n\r\n")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse head, conn->ReadHead(absl::Seconds(5)));
  ASSERT_EQ(head.status, 101);

  std::string frame = ClientFrame(kOpBinary, std::string(3000, 'z'));
  for (size_t at = 0; at < frame.size(); at += 700) {
    IT_ASSERT_OK(conn->Send(absl::string_view(frame).substr(at, 700)));
    absl::SleepFor(absl::Milliseconds(10));
  }
  IT_ASSERT_OK_AND_ASSIGN(Message m, ReadMessage(conn.get(), absl::Seconds(5)));
  EXPECT_EQ(m.payload, std::string(3000, 'z'));
}

// An upgrade the upstream refuses is an ordinary answer: its status comes
// back and no tunnel is set up (the simulator serves WebSocket on /ws*
// only).
TEST_F(H1ToH1WebSocket, RefusedUpgradePassedThrough) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(
      conn->Send(absl::StrCat("GET /nows HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                              "Connection: Upgrade\r\nSec-WebSocket-Key: ",
                              kKey, "\r\nSec-WebSocket-Version: 13\r\n\r\n")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse(absl::Seconds(5)));
  EXPECT_EQ(r.status, 404) << r.body;
  IT_ASSERT_OK(conn->ExpectClosed(absl::Seconds(3)));
}

// Only WebSocket is tunnelled. An Upgrade to anything else (h2c here) is
// dropped with its Connection token: the request is served as ordinary
// HTTP/1.1, Ollama sees no Upgrade, and the connection goes on with the
// next request.
TEST_F(H1ToH1WebSocket, OtherUpgradesAreServedAsPlainHttp) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  for (const char* proto : {"h2c", "TLS/1.2", "websocket-not"}) {
    IT_ASSERT_OK(
        conn->Send(absl::StrCat("GET /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: ", proto,
                                "\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: "
                                "AAMAAABkAAQAAP__\r\n"
                                "Sec-WebSocket-Key: ",
                                kKey, "\r\nSec-WebSocket-Version: 13\r\n\r\n")));
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse(absl::Seconds(5)));
    ASSERT_EQ(r.status, 200) << proto << ": " << r.body;
    EXPECT_FALSE(r.Header("Upgrade").has_value()) << proto;
    std::optional<EchoedRequest> e = ParseEcho(r.body);
    ASSERT_TRUE(e.has_value()) << r.body;
    EXPECT_TRUE(e->All("Upgrade").empty()) << proto << "\n" << e->HeaderDump();
    EXPECT_TRUE(e->All("HTTP2-Settings").empty()) << proto << "\n" << e->HeaderDump();
    for (const std::string& c : e->All("Connection")) {
      EXPECT_FALSE(ContainsIgnoreCase(c, "upgrade")) << proto << "\n" << e->HeaderDump();
    }
  }
  // Still HTTP/1.1 on the same connection.
  IT_ASSERT_OK(conn->Send(BuildRequest("GET", "/api/version")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse v, conn->ReadResponse(absl::Seconds(5)));
  EXPECT_EQ(v.status, 200) << v.body;
}

// An upstream that answers 101 to a request that asked for no upgrade, or
// switches a WebSocket handshake to another protocol, gets no tunnel: the
// client gets 502 and the bytes it sends next never reach that upstream.
TEST_F(H1ToH1WebSocket, SwitchingProtocolsNobodyAskedForIs502) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  {
    IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
    IT_ASSERT_OK(
        conn->Send(BuildRequest("GET", "/api/tags", {{"X-Sim-Switch-Protocols", "raw-tcp"}})));
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse(absl::Seconds(5)));
    EXPECT_EQ(r.status, 502) << r.body;
    EXPECT_TRUE(JsonError(r.body).has_value()) << r.body;
    // Were it a tunnel, the simulator would echo this back.
    IT_ASSERT_OK(conn->Send("PING-THROUGH-THE-TUNNEL\r\n\r\n"));
    auto next = conn->ReadResponse(absl::Seconds(2));
    if (next.ok()) {
      EXPECT_EQ(next->status, 400) << next->body;
      EXPECT_FALSE(absl::StrContains(next->body, "PING-THROUGH")) << next->body;
    }
  }
  {
    IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
    IT_ASSERT_OK(
        conn->Send(absl::StrCat("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                                "Connection: Upgrade\r\nX-Sim-Switch-Protocols: "
                                "h2c\r\nSec-WebSocket-Key: ",
                                kKey, "\r\nSec-WebSocket-Version: 13\r\n\r\n")));
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse(absl::Seconds(5)));
    EXPECT_EQ(r.status, 502) << r.body;
    EXPECT_TRUE(JsonError(r.body).has_value()) << r.body;
  }
}

// HTTP/2 has no upgrade at all: a 101 to an HTTP/2 client's request is an
// upstream error, answered 502 on that stream.
class H2ToH1SwitchingProtocols : public ProxyTest {};

TEST_F(H2ToH1SwitchingProtocols, AnswerToAnHttp2RequestIs502) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  IT_ASSERT_OK_AND_ASSIGN(auto c, h2::Connection::Connect(proxy_port()));
  IT_ASSERT_OK(c->Establish());
  IT_ASSERT_OK(c->Send(h2::HeadersFrame(
      1, h2::HpackBlock(h2::RequestFields("GET", "/api/tags", {{"x-sim-switch-protocols", "raw"}})),
      /*end_stream=*/true)));
  h2::ReadOutcome o = c->ReadUntilStreamEnd(1, absl::Seconds(5));
  EXPECT_EQ(o.StatusOf(1), 502) << o.Describe();
  // The connection goes on.
  absl::StatusOr<int> next = c->Get(3, "/api/version");
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(*next, 200);
}

// A WebSocket handshake that RFC 6455 4.1 would not accept is refused by
// sluice with 400 and a JSON error, and never reaches Ollama.
TEST_F(H1ToH1WebSocket, MalformedHandshakeIs400) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  const std::string key = absl::StrCat("Sec-WebSocket-Key: ", kKey, "\r\n");
  const std::string v13 = "Sec-WebSocket-Version: 13\r\n";
  const std::string up = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"no key", "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n" + up + v13},
      {"short key",
       "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n" + up + "Sec-WebSocket-Key: c2hvcnQ=\r\n" + v13},
      {"version 12",
       "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n" + up + key + "Sec-WebSocket-Version: 12\r\n"},
      {"no version", "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n" + up + key},
      {"POST", "POST /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n" + up + key + v13},
      {"HTTP/1.0", "GET /ws HTTP/1.0\r\nHost: 127.0.0.1\r\n" + up + key + v13},
      {"no Connection: upgrade",
       "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n" + key + v13},
  };
  for (const auto& [name, head] : cases) {
    IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
    IT_ASSERT_OK(conn->Send(head + "\r\n"));
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse(absl::Seconds(5)));
    EXPECT_EQ(r.status, 400) << name << ": " << r.body;
    EXPECT_TRUE(absl::StartsWith(JsonError(r.body).value_or(""), "malformed WebSocket handshake"))
        << name << ": " << r.body;
  }
  IT_ASSERT_OK_AND_ASSIGN(SimStats stats, FetchSimStats(sim_port()));
  EXPECT_EQ(stats.requests, 0);
}

}  // namespace
}  // namespace sluice::integration
