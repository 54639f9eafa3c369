#include "core/proxy/h1_downstream.h"

#include <ostream>
#include <string>
#include <string_view>
#include <tuple>

#include "core/upstream/upstream_pool.h"
#include "gtest/gtest.h"
#include "http/serialize.h"
#include "tests/unit/core/proxy_harness.h"

namespace sluice::core {
namespace {

using proxy_test::Cat;
using proxy_test::Chunk;
using proxy_test::Engine;
using proxy_test::HeaderValue;
using proxy_test::MessageBody;
using proxy_test::Peer;
using proxy_test::ProxyHarness;

std::string Get(std::string_view path, std::string_view extra = {}) {
  return Cat("GET ", path, " HTTP/1.1\r\nHost: proxy.test\r\n", extra, "\r\n");
}

// The request as forwarded (a GET; `extra` after the client's own fields).
std::string Forwarded(std::string_view path) {
  return Cat("GET ", path,
             " HTTP/1.1\r\nHost: ollama.test\r\nX-Real-IP: 127.0.0.1\r\n"
             "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
             "X-Forwarded-Host: proxy.test\r\n\r\n");
}

std::string Ok(std::string_view body) {
  return Cat("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ", body.size(),
             "\r\n\r\n", body);
}

// An HTTP/1.1 client connection: the session, its relays and the test as
// the upstream.
class H1DownstreamTest : public ::testing::TestWithParam<Engine> {
 protected:
  // Answers the next request on `up` with `body`, checking it was `path`.
  void Answer(Peer* up, std::string_view path, std::string_view body) {
    ASSERT_EQ(h_.ReadMessage(up), Forwarded(path));
    ASSERT_TRUE(h_.Send(up, Ok(body)));
  }

  ProxyHarness h_{GetParam()};
};

SLUICE_ON_EVERY_ENGINE(H1DownstreamTest);

// Requests one after the other on one keepalive connection share one
// upstream link.
TEST_P(H1DownstreamTest, KeepaliveRequestsShareTheConnectionAndTheLink) {
  SLUICE_START_PROXY(h_);
  Peer* client = h_.Connect();
  Peer* up = nullptr;
  for (int i = 0; i < 3; ++i) {
    const std::string path = Cat("/api/tags?i=", i);
    ASSERT_TRUE(h_.Send(client, Get(path)));
    if (up == nullptr) up = h_.AcceptUpstream();
    ASSERT_NE(up, nullptr);
    ASSERT_NO_FATAL_FAILURE(Answer(up, path, Cat("{\"i\":", i, "}")));
    EXPECT_EQ(h_.ReadMessage(client), Ok(Cat("{\"i\":", i, "}")));
  }
  EXPECT_FALSE(client->closed());
  EXPECT_EQ(h_.upstream_accepted(), 1);
  EXPECT_EQ(h_.shard()->metrics().requests, 3u);
}

// Pipelined requests: the second goes upstream only once the first is
// answered, and the answers come back in order.
TEST_P(H1DownstreamTest, PipelinedRequestsAreAnsweredInOrder) {
  SLUICE_START_PROXY(h_);
  Peer* client = h_.Connect();
  ASSERT_TRUE(h_.Send(client, Cat(Get("/api/tags"), Get("/api/ps"), Get("/api/version"))));
  Peer* up = h_.AcceptUpstream();
  ASSERT_NE(up, nullptr);
  ASSERT_EQ(h_.ReadMessage(up), Forwarded("/api/tags"));
  h_.RunUntil([] { return false; }, 20);
  EXPECT_EQ(up->in, "") << "the next request went upstream before the first was answered";
  EXPECT_EQ(client->in, "");
  ASSERT_TRUE(h_.Send(up, Ok("{\"tags\":1}")));
  ASSERT_NO_FATAL_FAILURE(Answer(up, "/api/ps", "{\"ps\":2}"));
  ASSERT_NO_FATAL_FAILURE(Answer(up, "/api/version", "{\"v\":3}"));
  EXPECT_EQ(h_.ReadMessage(client), Ok("{\"tags\":1}"));
  EXPECT_EQ(h_.ReadMessage(client), Ok("{\"ps\":2}"));
  EXPECT_EQ(h_.ReadMessage(client), Ok("{\"v\":3}"));
  EXPECT_EQ(h_.upstream_accepted(), 1);
}

// Requests the codec refuses: the exact JSON error, then the connection
// closes, and nothing goes upstream.
struct Refusal {
  const char* name;
  std::string request;
  int status;
  const char* message;
};

void PrintTo(const Refusal& r, std::ostream* os) { *os << r.name; }

class H1RefusalTest : public ::testing::TestWithParam<std::tuple<Engine, Refusal>> {
 protected:
  const Refusal& refusal() const { return std::get<1>(GetParam()); }
  ProxyHarness h_{std::get<0>(GetParam())};
};

TEST_P(H1RefusalTest, AnsweredWithJsonAndClosed) {
  h_.config().max_header_bytes = 1024;
  h_.config().client_max_body_size = 1000;
  SLUICE_START_PROXY(h_);
  Peer* client = h_.Connect();
  ASSERT_TRUE(h_.Send(client, refusal().request));
  EXPECT_EQ(h_.ReadMessage(client),
            http::JsonErrorResponse(refusal().status, refusal().message, true));
  // FIN from the proxy; it then lingers, reading, until the client closes.
  EXPECT_TRUE(h_.RunUntil([&] { return client->closed(); })) << "connection left open";
  EXPECT_FALSE(h_.UpstreamPending());
  client->Close();
  EXPECT_TRUE(h_.RunUntil([&] { return h_.shard()->connections().empty(); }));
}

INSTANTIATE_TEST_SUITE_P(
    Codec, H1RefusalTest,
    ::testing::Combine(
        ::testing::Values(Engine::kPoll, Engine::kUring),
        ::testing::Values(
            Refusal{"MissingHost", "GET /api/tags HTTP/1.1\r\n\r\n", 400,
                    "malformed request: missing Host header"},
            Refusal{"DuplicateHost", "GET /api/tags HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400,
                    "malformed request: duplicate Host header"},
            Refusal{"ObsoleteFolding", "GET /api/tags HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
                    400, "malformed request: obsolete line folding"},
            Refusal{"HeadTooLarge",
                    Get("/api/tags", Cat("X-Big: ", std::string(2048, 'a'), "\r\n")), 431,
                    "request header fields too large"},
            Refusal{"BodyTooLarge",
                    "POST /api/chat HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n", 413,
                    "request body too large"})),
    [](const ::testing::TestParamInfo<std::tuple<Engine, Refusal>>& info) {
      return Cat(std::get<1>(info.param).name, "_",
                 proxy_test::EngineName(std::get<0>(info.param)));
    });

// A client asking for Connection: close gets it, and the connection closes
// after the response.
TEST_P(H1DownstreamTest, ConnectionCloseIsHonoured) {
  SLUICE_START_PROXY(h_);
  Peer* client = h_.Connect();
  ASSERT_TRUE(h_.Send(client, Get("/api/tags", "Connection: close\r\n")));
  Peer* up = h_.AcceptUpstream();
  ASSERT_NE(up, nullptr);
  ASSERT_NO_FATAL_FAILURE(Answer(up, "/api/tags", "{}"));
  ASSERT_TRUE(h_.RunUntil([&] { return client->closed(); }));
  EXPECT_EQ(client->in,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            "Content-Length: 2\r\n\r\n{}");
  // The link itself is still good: it goes back to the pool.
  EXPECT_TRUE(h_.RunUntil([&] { return h_.pool().idle_count() == 1; }));
}

// A chunked request body goes upstream chunked, with the same bytes.
TEST_P(H1DownstreamTest, ChunkedRequestBodyIsForwarded) {
  SLUICE_START_PROXY(h_);
  Peer* client = h_.Connect();
  ASSERT_TRUE(h_.Send(client,
                      "POST /api/chat HTTP/1.1\r\nHost: proxy.test\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n"));
  Peer* up = h_.AcceptUpstream();
  ASSERT_NE(up, nullptr);
  ASSERT_TRUE(h_.Send(client, Cat(Chunk("{\"model\":"), Chunk("\"m\"}"), "0\r\n\r\n")));
  std::string request = h_.ReadMessage(up);
  EXPECT_EQ(HeaderValue(request, "transfer-encoding"), "chunked");
  EXPECT_EQ(MessageBody(request), "{\"model\":\"m\"}");
  ASSERT_TRUE(h_.Send(up, Ok("{}")));
  EXPECT_EQ(h_.ReadMessage(client), Ok("{}"));
}

// Expect: 100-continue gets its interim answer once the request is
// admitted, then the body flows.
TEST_P(H1DownstreamTest, ExpectContinueIsAnswered) {
  SLUICE_START_PROXY(h_);
  Peer* client = h_.Connect();
  ASSERT_TRUE(h_.Send(client,
                      "POST /api/chat HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 2\r\n"
                      "Expect: 100-continue\r\n\r\n"));
  ASSERT_TRUE(h_.RunUntil([&] { return client->in.size() >= http::k100Continue.size(); }));
  EXPECT_EQ(client->Take(), http::k100Continue);
  ASSERT_TRUE(h_.Send(client, "{}"));
  Peer* up = h_.AcceptUpstream();
  ASSERT_NE(up, nullptr);
  std::string request = h_.ReadMessage(up);
  EXPECT_EQ(HeaderValue(request, "expect"), "(absent)");
  EXPECT_EQ(MessageBody(request), "{}");
  ASSERT_TRUE(h_.Send(up, Ok("{}")));
  EXPECT_EQ(h_.ReadMessage(client), Ok("{}"));
}

// A head that stops coming: 408 with a JSON error after
// --client_header_timeout, then the connection closes.
TEST_P(H1DownstreamTest, StalledHeadGets408) {
  h_.config().client_header_timeout_ns = 20'000'000;
  SLUICE_START_PROXY(h_);
  Peer* client = h_.Connect();
  ASSERT_TRUE(h_.Send(client, "GET /api/tags HTTP/1.1\r\nHost: pro"));
  EXPECT_EQ(h_.ReadMessage(client, 2000),
            http::JsonErrorResponse(408, "request header timeout", true));
  EXPECT_TRUE(h_.RunUntil([&] { return client->closed(); }));
}

// An idle keepalive connection closes after --keepalive_timeout.
TEST_P(H1DownstreamTest, IdleConnectionClosesAfterKeepaliveTimeout) {
  h_.config().keepalive_timeout_ns = 20'000'000;
  SLUICE_START_PROXY(h_);
  Peer* client = h_.Connect();
  ASSERT_TRUE(h_.Send(client, Get("/api/tags")));
  Peer* up = h_.AcceptUpstream();
  ASSERT_NE(up, nullptr);
  const int64_t answered = h_.loop()->now_ns();
  ASSERT_NO_FATAL_FAILURE(Answer(up, "/api/tags", "{}"));
  EXPECT_EQ(h_.ReadMessage(client), Ok("{}"));
  ASSERT_TRUE(h_.RunUntil([&] { return client->closed(); }, 2000));
  EXPECT_GE(h_.loop()->now_ns() - answered, 20'000'000);
  EXPECT_EQ(client->in, "");
}

// The client goes away while uploading its body: the upstream link closes.
TEST_P(H1DownstreamTest, ClientGoneMidBodyClosesTheUpstreamLink) {
  SLUICE_START_PROXY(h_);
  Peer* client = h_.Connect();
  ASSERT_TRUE(h_.Send(client,
                      "POST /api/chat HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 100\r\n\r\n"
                      "{\"partial\":"));
  Peer* up = h_.AcceptUpstream();
  ASSERT_NE(up, nullptr);
  ASSERT_TRUE(h_.RunUntil([&] { return up->in.find("{\"partial\":") != std::string::npos; }));
  client->Close();
  EXPECT_TRUE(h_.RunUntil([&] { return up->closed(); }));
  EXPECT_TRUE(h_.RunUntil([&] { return h_.pool().open_count() == 0; }));
}

}  // namespace
}  // namespace sluice::core
