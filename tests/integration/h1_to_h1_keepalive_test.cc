// HTTP/1.1 client to HTTP/1.1 upstream: keepalive on both sides, and
// pipelined requests answered in order.
#include <atomic>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {
namespace {

class H1ToH1Keepalive : public ProxyTest {};

// 4 client connections x 250 sequential keepalive requests, concurrently,
// through one worker with a pool of 4: sluice must reuse its upstream links
// instead of opening one per request.
TEST_F(H1ToH1Keepalive, UpstreamLinksAreReused) {
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--threads=1", "--upstream_keepalive=4"}));
  IT_ASSERT_OK(ResetSim(sim_port()));

  constexpr int kClients = 4;
  constexpr int kRequestsPerClient = 250;
  std::atomic<int> ok_count{0};
  std::mutex mu;
  std::vector<std::string> errors;
  auto record_error = [&](std::string e) {
    std::lock_guard<std::mutex> lock(mu);
    errors.push_back(std::move(e));
  };

  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      auto conn = HttpConnection::Connect(proxy_port());
      if (!conn.ok()) {
        record_error(absl::StrCat("client ", c, ": ", conn.status().ToString()));
        return;
      }
      const std::string request = "GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
      for (int i = 0; i < kRequestsPerClient; ++i) {
        absl::Status st = (*conn)->Send(request);
        if (!st.ok()) {
          record_error(absl::StrCat("client ", c, " request ", i, ": send: ", st.ToString()));
          return;
        }
        auto r = (*conn)->ReadResponse(absl::Seconds(5));
        if (!r.ok()) {
          record_error(absl::StrCat("client ", c, " request ", i, ": ", r.status().ToString()));
          return;
        }
        if (r->status != 200 || !absl::StrContains(r->body, "sim:latest")) {
          record_error(absl::StrCat("client ", c, " request ", i, ": status ", r->status, " body ",
                                    r->body));
          return;
        }
        ok_count.fetch_add(1);
      }
    });
  }
  for (std::thread& t : clients) t.join();

  for (const std::string& e : errors) ADD_FAILURE() << e;
  EXPECT_EQ(ok_count.load(), kClients * kRequestsPerClient);

  IT_ASSERT_OK_AND_ASSIGN(SimStats stats, FetchSimStats(sim_port()));
  std::cout << "upstream: " << stats.requests << " requests over " << stats.opened
            << " connections (stats one included)\n";
  EXPECT_EQ(stats.requests, kClients * kRequestsPerClient);
  // At most 4 concurrent requests, so 4 links; +1 for this stats connection.
  EXPECT_LE(stats.opened, kClients + 1)
      << "sluice opened " << stats.opened << " upstream connections for 1000 keepalive requests";
}

// 48 clients keep a worker at about 48 streams in flight, each client
// sending its requests one after another on its own connection. With the
// default --upstream_keepalive=auto the pool keeps as many idle links as
// that load uses, so after the first round every request reuses a link;
// a fixed pool of 32 (nginx's usual keepalive) would close the surplus
// links as they came back and reconnect for most requests.
TEST_F(H1ToH1Keepalive, AdaptivePoolKeepsTheLinksASteadyLoadUses) {
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--threads=1"}));
  IT_ASSERT_OK(ResetSim(sim_port()));
  constexpr int kClients = 48;
  constexpr int kRequestsPerClient = 15;
  std::atomic<int> ok_count{0};
  std::mutex mu;
  std::vector<std::string> errors;
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      auto fail = [&](std::string e) {
        std::lock_guard<std::mutex> lock(mu);
        errors.push_back(absl::StrCat("client ", c, ": ", e));
      };
      auto conn = HttpConnection::Connect(proxy_port());
      if (!conn.ok()) return fail(conn.status().ToString());
      for (int i = 0; i < kRequestsPerClient; ++i) {
        // A short stream (3 tokens 5 ms apart) keeps the requests of all
        // clients overlapping.
        absl::Status st = (*conn)->Send(BuildRequest("POST", "/api/generate",
                                                     {{"Content-Type", "application/json"},
                                                      {"X-Sim-Tokens", "3"},
                                                      {"X-Sim-Token-Delay-Ms", "5"}},
                                                     R"({"model":"sim","prompt":"hi"})"));
        if (!st.ok()) return fail(st.ToString());
        auto r = (*conn)->ReadResponse(absl::Seconds(10));
        if (!r.ok()) return fail(r.status().ToString());
        if (r->status != 200) return fail(absl::StrCat("status ", r->status));
        ok_count.fetch_add(1);
      }
    });
  }
  for (std::thread& t : clients) t.join();
  for (const std::string& e : errors) ADD_FAILURE() << e;
  EXPECT_EQ(ok_count.load(), kClients * kRequestsPerClient);
  IT_ASSERT_OK_AND_ASSIGN(SimStats stats, FetchSimStats(sim_port()));
  std::cout << "[ measure  ] adaptive pool: " << stats.requests << " requests over " << stats.opened
            << " upstream connections\n";
  // One link per client at most, +1 for the stats connection.
  EXPECT_LE(stats.opened, kClients + 1)
      << "sluice opened " << stats.opened << " upstream connections for "
      << kClients * kRequestsPerClient << " requests from " << kClients << " clients";
}

// The client connection itself stays open across requests, and a request
// with "Connection: close" ends it after the answer.
TEST_F(H1ToH1Keepalive, ClientConnectionCloseHonoured) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  for (int i = 0; i < 3; ++i) {
    IT_ASSERT_OK(conn->Send(BuildRequest("GET", "/api/version")));
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse());
    EXPECT_EQ(r.status, 200);
  }
  IT_ASSERT_OK(conn->Send(BuildRequest("GET", "/api/version", {{"Connection", "close"}})));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse());
  EXPECT_EQ(r.status, 200);
  IT_ASSERT_OK(conn->ExpectClosed(absl::Seconds(2)));
}

class H1ToH1Pipelining : public ProxyTest {};

TEST_F(H1ToH1Pipelining, ThreeRequestsInOneWriteAnsweredInOrder) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  std::string batch;
  for (int n = 1; n <= 3; ++n) {
    absl::StrAppend(&batch, BuildRequest("GET", absl::StrCat("/sim/echo?n=", n)));
  }
  IT_ASSERT_OK(conn->Send(batch));
  for (int n = 1; n <= 3; ++n) {
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse());
    ASSERT_EQ(r.status, 200) << r.body;
    std::optional<EchoedRequest> echo = ParseEcho(r.body);
    ASSERT_TRUE(echo.has_value()) << r.body;
    EXPECT_EQ(echo->target, absl::StrCat("/sim/echo?n=", n));
  }
}

// Pipelined requests with bodies, mixed with a streamed answer: order kept.
TEST_F(H1ToH1Pipelining, StreamBetweenEchoesKeepsOrder) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  std::string batch = absl::StrCat(BuildRequest("POST", "/sim/echo?n=1", {}, "first"),
                                   BuildRequest("POST", "/api/generate",
                                                {{"Content-Type", "application/json"},
                                                 {"X-Sim-Tokens", "5"},
                                                 {"X-Sim-Token-Delay-Ms", "10"}},
                                                R"({"model":"sim","prompt":"hi"})"),
                                   BuildRequest("POST", "/sim/echo?n=3", {}, "third"));
  IT_ASSERT_OK(conn->Send(batch));

  IT_ASSERT_OK_AND_ASSIGN(HttpResponse first, conn->ReadResponse());
  ASSERT_EQ(first.status, 200);
  std::optional<EchoedRequest> echo1 = ParseEcho(first.body);
  ASSERT_TRUE(echo1.has_value()) << first.body;
  EXPECT_EQ(echo1->target, "/sim/echo?n=1");
  EXPECT_EQ(echo1->body, "first");

  IT_ASSERT_OK_AND_ASSIGN(HttpResponse stream, conn->ReadResponse());
  ASSERT_EQ(stream.status, 200);
  EXPECT_TRUE(absl::StrContains(stream.body, "\"done\":true")) << stream.body;

  IT_ASSERT_OK_AND_ASSIGN(HttpResponse third, conn->ReadResponse());
  ASSERT_EQ(third.status, 200);
  std::optional<EchoedRequest> echo3 = ParseEcho(third.body);
  ASSERT_TRUE(echo3.has_value()) << third.body;
  EXPECT_EQ(echo3->target, "/sim/echo?n=3");
  EXPECT_EQ(echo3->body, "third");
}

}  // namespace
}  // namespace sluice::integration
