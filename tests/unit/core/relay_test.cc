#include "core/proxy/relay.h"

#include <sys/socket.h>

#include <string>
#include <string_view>

#include "core/engine/stream.h"
#include "core/upstream/upstream_pool.h"
#include "gtest/gtest.h"
#include "http/serialize.h"
#include "tests/unit/core/proxy_harness.h"

namespace sluice::core {
namespace {

using proxy_test::Cat;
using proxy_test::Chunk;
using proxy_test::Engine;
using proxy_test::MessageBody;
using proxy_test::Peer;
using proxy_test::ProxyHarness;
using proxy_test::StatusOf;

// An HTTP/1.1 client, the relay, and the test as Ollama.
class RelayTest : public ::testing::TestWithParam<Engine> {
 protected:
  static std::string Get(std::string_view path) {
    return Cat("GET ", path, " HTTP/1.1\r\nHost: proxy.test\r\n\r\n");
  }
  static std::string Post(std::string_view path, std::string_view body) {
    return Cat("POST ", path,
               " HTTP/1.1\r\nHost: proxy.test\r\nContent-Type: application/json\r\n"
               "Content-Length: ",
               body.size(), "\r\n\r\n", body);
  }
  // The request as the relay forwards it.
  static std::string Upstream(std::string_view method, std::string_view path,
                              std::string_view body = {}) {
    std::string out = Cat(method, " ", path, " HTTP/1.1\r\nHost: ollama.test\r\n");
    if (method == "POST") out += "Content-Type: application/json\r\n";
    out +=
        "X-Real-IP: 127.0.0.1\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
        "X-Forwarded-Host: proxy.test\r\n";
    if (method == "POST") out += Cat("Content-Length: ", body.size(), "\r\n");
    out += Cat("\r\n", body);
    return out;
  }
  static constexpr std::string_view kTagsResponse =
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
  static constexpr std::string_view kNdjsonHead =
      "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
      "Transfer-Encoding: chunked\r\n\r\n";

  // One GET /api/tags answered on `up` (accepted by the caller or now).
  void RoundTrip(Peer* client, Peer** up) {
    ASSERT_TRUE(h_.Send(client, Get("/api/tags")));
    if (*up == nullptr) *up = h_.AcceptUpstream();
    ASSERT_NE(*up, nullptr);
    ASSERT_EQ(h_.ReadMessage(*up), Upstream("GET", "/api/tags"));
    ASSERT_TRUE(h_.Send(*up, kTagsResponse));
    ASSERT_EQ(h_.ReadMessage(client), kTagsResponse);
    ASSERT_TRUE(h_.RunUntil([&] { return h_.pool().idle_count() == 1; }));
  }

  ProxyHarness h_{GetParam()};
};

SLUICE_ON_EVERY_ENGINE(RelayTest);

// A token stream: each upstream chunk reaches the client, framed as one
// chunk, before the next one is written; the link goes back to the pool.
TEST_P(RelayTest, StreamsEachChunkAsItArrives) {
  SLUICE_START_PROXY(h_);
  Peer* client = h_.Connect();
  const std::string body = R"({"model":"m","prompt":"hi"})";
  ASSERT_TRUE(h_.Send(client, Post("/api/generate", body)));
  Peer* up = h_.AcceptUpstream();
  ASSERT_NE(up, nullptr);
  EXPECT_EQ(h_.ReadMessage(up), Upstream("POST", "/api/generate", body));

  ASSERT_TRUE(h_.Send(up, kNdjsonHead));
  ASSERT_TRUE(h_.RunUntil([&] { return client->in.size() >= kNdjsonHead.size(); }));
  EXPECT_EQ(client->Take(), kNdjsonHead);
  for (int i = 0; i < 5; ++i) {
    const std::string token = Cat(R"({"model":"m","response":"t)", i, R"(","done":false})", "\n");
    ASSERT_TRUE(h_.Send(up, Chunk(token)));
    ASSERT_TRUE(h_.RunUntil([&] { return client->in.size() >= Chunk(token).size(); }))
        << "chunk " << i << " not relayed";
    EXPECT_EQ(client->Take(), Chunk(token)) << "chunk " << i;
  }
  ASSERT_TRUE(h_.Send(up, "0\r\n\r\n"));
  ASSERT_TRUE(h_.RunUntil([&] { return client->in.size() >= 5; }));
  EXPECT_EQ(client->Take(), "0\r\n\r\n");
  EXPECT_TRUE(h_.RunUntil([&] { return h_.pool().idle_count() == 1; }));
  EXPECT_FALSE(up->closed());
  EXPECT_EQ(h_.pool().open_count(), 1u);
}

// A client that does not read: once its send queue is over the high
// watermark the upstream link is not read any more (the upstream's socket
// stays full, and the proxy holds a bounded number of receive buffers);
// once the client reads, everything arrives, in order.
TEST_P(RelayTest, ClientThatDoesNotReadStopsTheUpstreamRead) {
  SLUICE_START_PROXY(h_);
  Peer* client = h_.Connect();
  client->reading = false;
  ASSERT_TRUE(h_.Send(client, Get("/api/tags")));
  Peer* up = h_.AcceptUpstream();
  ASSERT_NE(up, nullptr);
  ASSERT_EQ(h_.ReadMessage(up), Upstream("GET", "/api/tags"));
  int sndbuf = 32 * 1024;
  ASSERT_EQ(setsockopt(up->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);

  std::string sent = std::string(kNdjsonHead);
  std::string payload;
  size_t pending = 0;  // bytes of `sent` not yet taken by the socket
  int stalled_turns = 0;
  for (int i = 0; i < 5000 && stalled_turns < 50; ++i) {
    if (pending == 0) {
      const std::string piece(8192, static_cast<char>('a' + payload.size() / 8192 % 26));
      payload += piece;
      sent += Chunk(piece);
      pending = Chunk(piece).size() + (i == 0 ? kNdjsonHead.size() : 0);
    }
    const size_t n = up->WriteSome(std::string_view(sent).substr(sent.size() - pending));
    pending -= n;
    stalled_turns = n == 0 ? stalled_turns + 1 : 0;
    h_.Turn();
  }
  ASSERT_EQ(stalled_turns, 50) << "the upstream could always write: the proxy kept reading";
  // What the proxy holds while paused: about the high watermark of the
  // client's queue, in 4 KiB buffers, plus what one receive brings.
  EXPECT_LE(h_.loop()->buffers().in_use(), kHighWatermark / 4096 + 8);
  EXPECT_EQ(h_.loop()->pressure_pauses(), 0u) << "paused by ring pressure, not by the relay";
  EXPECT_GT(payload.size(), 2 * kHighWatermark);

  client->reading = true;
  ASSERT_TRUE(h_.Send(up, std::string_view(sent).substr(sent.size() - pending), 5000));
  ASSERT_TRUE(h_.Send(up, "0\r\n\r\n"));
  std::string response = h_.ReadMessage(client, 5000);
  ASSERT_FALSE(response.empty());
  EXPECT_EQ(StatusOf(response), 200);
  EXPECT_EQ(MessageBody(response), payload);
}

// The client goes away mid-stream: the upstream link closes at once (the
// model stops generating) and is not kept for reuse.
TEST_P(RelayTest, ClientCancelClosesTheUpstreamLink) {
  SLUICE_START_PROXY(h_);
  Peer* client = h_.Connect();
  ASSERT_TRUE(h_.Send(client, Post("/api/generate", "{}")));
  Peer* up = h_.AcceptUpstream();
  ASSERT_NE(up, nullptr);
  ASSERT_EQ(h_.ReadMessage(up), Upstream("POST", "/api/generate", "{}"));
  ASSERT_TRUE(h_.Send(up, Cat(kNdjsonHead, Chunk("{\"response\":\"a\"}\n"))));
  ASSERT_TRUE(
      h_.RunUntil([&] { return client->in == Cat(kNdjsonHead, Chunk("{\"response\":\"a\"}\n")); }));
  client->Close();
  ASSERT_TRUE(h_.RunUntil([&] { return up->closed(); })) << "upstream link left open";
  EXPECT_TRUE(up->in.empty());
  EXPECT_TRUE(h_.RunUntil([&] { return h_.pool().open_count() == 0; }));
  EXPECT_EQ(h_.pool().idle_count(), 0u);
  EXPECT_TRUE(h_.RunUntil([&] { return h_.shard()->connections().empty(); }));
}

// A reused link that the upstream closes after taking the request, before
// any response byte (its keepalive timeout raced the request): the request,
// body included, is sent again on a fresh link and the client never sees
// the failure.
TEST_P(RelayTest, ReusedLinkClosedBeforeAnsweringIsRetried) {
  SLUICE_START_PROXY(h_);
  Peer* client = h_.Connect();
  Peer* up = nullptr;
  RoundTrip(client, &up);
  const std::string body(1000, 'b');
  ASSERT_TRUE(h_.Send(client, Post("/api/chat", body)));
  ASSERT_EQ(h_.ReadMessage(up), Upstream("POST", "/api/chat", body));
  up->Close();
  Peer* fresh = h_.AcceptUpstream();
  ASSERT_NE(fresh, nullptr) << "not retried";
  EXPECT_EQ(h_.ReadMessage(fresh), Upstream("POST", "/api/chat", body));
  ASSERT_TRUE(h_.Send(fresh, kTagsResponse));
  EXPECT_EQ(h_.ReadMessage(client), kTagsResponse);
  EXPECT_EQ(h_.upstream_accepted(), 2);
  EXPECT_EQ(h_.shard()->metrics().upstream_reused, 1u);
}

// A body is kept for a replay only up to 64 KiB: a request whose body was
// larger is not retried when its reused link fails, and the client gets a
// 502 with a JSON error. At the limit exactly it still is.
TEST_P(RelayTest, BodyPastTheReplayLimitIsNotRetried) {
  SLUICE_START_PROXY(h_);
  constexpr size_t kLimit = 64 * 1024;
  Peer* client = h_.Connect();
  Peer* up = nullptr;
  RoundTrip(client, &up);
  // At the limit: replayed.
  const std::string at_limit(kLimit, 'x');
  ASSERT_TRUE(h_.Send(client, Post("/api/chat", at_limit)));
  ASSERT_EQ(h_.ReadMessage(up), Upstream("POST", "/api/chat", at_limit));
  up->Close();
  Peer* fresh = h_.AcceptUpstream();
  ASSERT_NE(fresh, nullptr) << "a body of " << kLimit << " bytes was not retried";
  ASSERT_EQ(h_.ReadMessage(fresh), Upstream("POST", "/api/chat", at_limit));
  ASSERT_TRUE(h_.Send(fresh, kTagsResponse));
  ASSERT_EQ(h_.ReadMessage(client), kTagsResponse);
  ASSERT_TRUE(h_.RunUntil([&] { return h_.pool().idle_count() == 1; }));

  // One byte more: not kept, so not retried.
  const std::string past_limit(kLimit + 1, 'y');
  ASSERT_TRUE(h_.Send(client, Post("/api/chat", past_limit)));
  ASSERT_EQ(h_.ReadMessage(fresh), Upstream("POST", "/api/chat", past_limit));
  fresh->Close();
  EXPECT_EQ(h_.ReadMessage(client), http::JsonErrorResponse(502, "upstream unavailable", false));
  h_.RunUntil([] { return false; }, 20);
  EXPECT_FALSE(h_.UpstreamPending()) << "retried past the replay limit";
  EXPECT_EQ(h_.upstream_accepted(), 2);
}

// Nothing listens upstream: 502 with a JSON error, and the client
// connection stays usable.
TEST_P(RelayTest, RefusedUpstreamAnswers502) {
  SLUICE_START_PROXY(h_);
  h_.CloseUpstreamListener();
  Peer* client = h_.Connect();
  ASSERT_TRUE(h_.Send(client, Get("/api/tags")));
  EXPECT_EQ(h_.ReadMessage(client), http::JsonErrorResponse(502, "upstream unavailable", false));
  EXPECT_EQ(h_.shard()->metrics().upstream_connect_failures, 1u);
  ASSERT_TRUE(h_.Send(client, Get("/api/ps")));
  EXPECT_EQ(h_.ReadMessage(client), http::JsonErrorResponse(502, "upstream unavailable", false));
  EXPECT_EQ(h_.pool().open_count(), 0u);
}

// An upstream that takes the request and says nothing for --read_timeout:
// 504 with a JSON error, and its link is closed.
TEST_P(RelayTest, SilentUpstreamAnswers504) {
  h_.config().read_timeout_ns = 30'000'000;
  SLUICE_START_PROXY(h_);
  Peer* client = h_.Connect();
  ASSERT_TRUE(h_.Send(client, Post("/api/generate", "{}")));
  Peer* up = h_.AcceptUpstream();
  ASSERT_NE(up, nullptr);
  ASSERT_EQ(h_.ReadMessage(up), Upstream("POST", "/api/generate", "{}"));
  EXPECT_EQ(h_.ReadMessage(client, 2000), http::JsonErrorResponse(504, "upstream timeout", false));
  EXPECT_TRUE(h_.RunUntil([&] { return up->closed(); }));
  EXPECT_EQ(h_.pool().open_count(), 0u);
}

// The passive circuit counts a backend's own failures: 500, 502 and 504
// answers and a read timeout do, 503 (Ollama busy) and 404 do not, and any
// of those clears the count.
TEST_P(RelayTest, FailureAnswersCountAgainstTheBackend) {
  h_.config().upstream_max_fails = 2;
  h_.config().upstream_fail_timeout_ns = 60'000'000'000;
  h_.config().read_timeout_ns = 30'000'000;
  SLUICE_START_PROXY(h_);
  Peer* client = h_.Connect();
  Peer* up = nullptr;
  auto answer = [&](std::string_view status_line) {
    ASSERT_TRUE(h_.Send(client, Get("/api/tags")));
    if (up == nullptr) up = h_.AcceptUpstream();
    ASSERT_NE(up, nullptr);
    ASSERT_EQ(h_.ReadMessage(up), Upstream("GET", "/api/tags"));
    ASSERT_TRUE(h_.Send(up, Cat(status_line, "\r\nContent-Length: 2\r\n\r\n{}")));
    ASSERT_EQ(StatusOf(h_.ReadMessage(client)), std::stoi(std::string(status_line.substr(9, 3))));
  };
  const int64_t now = h_.loop()->now_ns();
  ASSERT_NO_FATAL_FAILURE(answer("HTTP/1.1 500 Internal Server Error"));
  EXPECT_TRUE(h_.pool().available(now));
  ASSERT_NO_FATAL_FAILURE(answer("HTTP/1.1 503 Service Unavailable"));
  ASSERT_NO_FATAL_FAILURE(answer("HTTP/1.1 502 Bad Gateway"));
  EXPECT_TRUE(h_.pool().available(h_.loop()->now_ns())) << "the 503 cleared the count";
  ASSERT_NO_FATAL_FAILURE(answer("HTTP/1.1 504 Gateway Timeout"));
  EXPECT_FALSE(h_.pool().available(h_.loop()->now_ns())) << "502 then 504: two in a row";
}

// The upstream dies mid-response: the client's chunked response ends
// without its last-chunk and the connection closes, so the client can tell
// it was cut short.
TEST_P(RelayTest, UpstreamCutMidResponseTruncatesTheClientResponse) {
  SLUICE_START_PROXY(h_);
  Peer* client = h_.Connect();
  ASSERT_TRUE(h_.Send(client, Post("/api/generate", "{}")));
  Peer* up = h_.AcceptUpstream();
  ASSERT_NE(up, nullptr);
  ASSERT_EQ(h_.ReadMessage(up), Upstream("POST", "/api/generate", "{}"));
  const std::string sent = Cat(kNdjsonHead, Chunk("{\"response\":\"a\"}\n"));
  ASSERT_TRUE(h_.Send(up, sent));
  ASSERT_TRUE(h_.RunUntil([&] { return client->in.size() >= sent.size(); }));
  up->Close();
  ASSERT_TRUE(h_.RunUntil([&] { return client->closed(); }));
  EXPECT_EQ(client->in, sent) << "no last-chunk may follow";
  EXPECT_EQ(h_.pool().open_count(), 0u);
}

// A request the policy refuses is answered by the gate: no upstream link
// is ever made for it. Its body was not read, so the connection closes.
TEST_P(RelayTest, RefusedByThePolicyNeverReachesTheUpstream) {
  h_.policy_options().deny_cidrs = "127.0.0.0/8";
  SLUICE_START_PROXY(h_);
  Peer* client = h_.Connect();
  ASSERT_TRUE(h_.Send(client, Post("/api/chat", "{}")));
  EXPECT_EQ(h_.ReadMessage(client),
            http::JsonErrorResponse(403, "access denied for this address", true));
  EXPECT_TRUE(h_.RunUntil([&] { return client->closed(); }));
  EXPECT_FALSE(h_.UpstreamPending());
  EXPECT_EQ(h_.pool().open_count(), 0u);
  EXPECT_EQ(h_.shard()->metrics().rejected_denied, 1u);
}

// A request the rate limit delays waits in the gate, its body held, and
// goes upstream whole once the delay is over.
TEST_P(RelayTest, DelayedRequestGoesUpstreamWithItsBodyAfterTheDelay) {
  h_.policy_options().rate_generation = "10r/s burst=5";
  SLUICE_START_PROXY(h_);
  Peer* client = h_.Connect();
  ASSERT_TRUE(h_.Send(client, Post("/api/chat", "{}")));
  Peer* up = h_.AcceptUpstream();
  ASSERT_NE(up, nullptr);
  ASSERT_EQ(h_.ReadMessage(up), Upstream("POST", "/api/chat", "{}"));
  ASSERT_TRUE(h_.Send(up, kTagsResponse));
  ASSERT_EQ(h_.ReadMessage(client), kTagsResponse);

  // The second one within the rate's interval (100 ms): delayed.
  const int64_t sent = h_.loop()->now_ns();
  const std::string body = R"({"model":"m","messages":[]})";
  const std::string request = Post("/api/chat", body);
  ASSERT_TRUE(h_.Send(client, request.substr(0, request.size() - body.size())));
  h_.RunUntil([] { return false; }, 5);
  ASSERT_TRUE(h_.Send(client, body));
  ASSERT_EQ(h_.ReadMessage(up, 2000), Upstream("POST", "/api/chat", body));
  EXPECT_GE(h_.loop()->now_ns() - sent, 50'000'000) << "not delayed";
  ASSERT_TRUE(h_.Send(up, kTagsResponse));
  EXPECT_EQ(h_.ReadMessage(client), kTagsResponse);
}

// A WebSocket handshake the upstream accepts becomes a tunnel: bytes pass
// both ways untouched, and the upstream's close ends the client connection.
TEST_P(RelayTest, UpgradedLinkTunnelsBytesBothWays) {
  SLUICE_START_PROXY(h_);
  Peer* client = h_.Connect();
  ASSERT_TRUE(h_.Send(client,
                      "GET /ws HTTP/1.1\r\nHost: proxy.test\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n"));
  Peer* up = h_.AcceptUpstream();
  ASSERT_NE(up, nullptr);
  const std::string request = h_.ReadMessage(up);
  EXPECT_EQ(proxy_test::HeaderValue(request, "upgrade"), "websocket");
  EXPECT_EQ(proxy_test::HeaderValue(request, "connection"), "upgrade");
  ASSERT_TRUE(h_.Send(up,
                      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"));
  EXPECT_EQ(h_.ReadMessage(client),
            "HTTP/1.1 101 Switching Protocols\r\n"
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            "Upgrade: websocket\r\nConnection: upgrade\r\n\r\n");
  const std::string up_bytes = "\x81\x05hello\r\n\r\n";
  ASSERT_TRUE(h_.Send(client, up_bytes));
  ASSERT_TRUE(h_.RunUntil([&] { return up->in.size() >= up_bytes.size(); }));
  EXPECT_EQ(up->Take(), up_bytes);
  const std::string down_bytes = "\x81\x03hi!HTTP/1.1 200";
  ASSERT_TRUE(h_.Send(up, down_bytes));
  ASSERT_TRUE(h_.RunUntil([&] { return client->in.size() >= down_bytes.size(); }));
  EXPECT_EQ(client->Take(), down_bytes);
  up->Close();
  EXPECT_TRUE(h_.RunUntil([&] { return client->closed(); }));
  EXPECT_EQ(client->in, "");
}

}  // namespace
}  // namespace sluice::core
