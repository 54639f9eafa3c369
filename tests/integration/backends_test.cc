// Several Ollama backends behind one sluice (--upstream list, --balance),
// each a simulator of its own.
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/integration/prom_text.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {
namespace {

class Backends : public ProxyTest {
 protected:
  // Two simulators (backend A: sim_a_, backend B: sim_) and sluice in
  // front of both, with `spec_a` and `spec_b` after their addresses in
  // --upstream.
  void StartTwo(const std::string& spec_a, const std::string& spec_b,
                std::vector<std::string> sluice_args) {
    auto a = StartSim({});
    ASSERT_TRUE(a.ok()) << a.status();
    sim_a_ = std::move(*a);
    auto b = StartSim({});
    ASSERT_TRUE(b.ok()) << b.status();
    sim_ = std::move(*b);
    // The active checks' requests would count in the simulators' stats:
    // off unless a test asks for them.
    sluice_args.insert(sluice_args.begin(), "--health_interval=0");
    sluice_args.push_back(absl::StrCat("--upstream=127.0.0.1:", sim_a_->port(), spec_a,
                                       ",127.0.0.1:", sim_->port(), spec_b));
    auto sluice = StartSluice(sim_->port(), sluice_args);
    ASSERT_TRUE(sluice.ok()) << sluice.status();
    sluice_ = std::move(*sluice);
  }
  void TearDown() override {
    ProxyTest::TearDown();
    if (sim_a_) sim_a_->Terminate();
    sim_a_.reset();
  }
  int64_t Requests(int port) {
    absl::StatusOr<SimStats> s = FetchSimStats(port);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? s->requests : -1;
  }
  // `n` requests that go to one backend each (/api/version: the model
  // lists, /api/tags among them, are asked of every backend at once).
  void Get(int n) {
    IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
    for (int i = 0; i < n; ++i) {
      IT_ASSERT_OK(conn->Send(BuildRequest("GET", "/api/version")));
      IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse());
      ASSERT_EQ(r.status, 200) << r.body;
    }
  }

  // A counter of sluice's /metrics, or -1.
  int64_t Counter(absl::string_view name) {
    auto families = ScrapeMetrics(proxy_port());
    EXPECT_TRUE(families.ok()) << families.status();
    if (!families.ok()) return -1;
    return static_cast<int64_t>(FindSample(*families, name, {}).value_or(-1));
  }
  // POST /sim/echo with `body`: what the backend that answered received.
  void EchoOk(HttpConnection* conn, const std::string& body) {
    IT_ASSERT_OK(conn->Send(BuildRequest("POST", "/sim/echo", {}, body)));
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse());
    ASSERT_EQ(r.status, 200) << r.body;
    std::optional<EchoedRequest> echo = ParseEcho(r.body);
    ASSERT_TRUE(echo.has_value()) << r.body;
    EXPECT_EQ(echo->body, body);
  }

  std::unique_ptr<ChildProcess> sim_a_;
};

// A backend that refuses connections: its requests go to the other one,
// body and all, and after --upstream_max_fails failures in a row it is
// left out, so only the first three pay for a failover.
TEST_F(Backends, RefusingBackendFailsOverThenIsLeftOut) {
  const int dead = UnusedPort();
  auto b = StartSim({});
  ASSERT_TRUE(b.ok()) << b.status();
  sim_ = std::move(*b);
  auto sluice = StartSluice(
      sim_->port(), {"--threads=1", "--health_interval=0",
                     absl::StrCat("--upstream=127.0.0.1:", dead, ",127.0.0.1:", sim_->port())});
  ASSERT_TRUE(sluice.ok()) << sluice.status();
  sluice_ = std::move(*sluice);
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  for (int i = 0; i < 12; ++i) {
    ASSERT_NO_FATAL_FAILURE(EchoOk(
        conn.get(), absl::StrCat("{\"n\":", i, ",\"pad\":\"", std::string(3000, 'x'), "\"}")));
  }
  // Each echo above came back whole from the live backend.
  EXPECT_EQ(Counter("sluice_upstream_failovers_total"), 3);
}

// Every backend left out: 503 with a JSON error and Retry-After, not a
// connect attempt per request.
TEST_F(Backends, NoBackendLeftAnswers503WithRetryAfter) {
  const int dead_a = UnusedPort();
  const int dead_b = UnusedPort();
  auto sluice =
      StartSluice(dead_a, {"--threads=1", "--upstream_max_fails=1", "--health_interval=0",
                           "--upstream_fail_timeout=30s",
                           absl::StrCat("--upstream=127.0.0.1:", dead_a, ",127.0.0.1:", dead_b)});
  ASSERT_TRUE(sluice.ok()) << sluice.status();
  sluice_ = std::move(*sluice);
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(conn->Send(BuildRequest("GET", "/api/tags")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse first, conn->ReadResponse());
  EXPECT_EQ(first.status, 502) << first.body;  // both tried, both refused
  const int64_t connects = Counter("sluice_upstream_connects_total");
  EXPECT_EQ(connects, 2);
  IT_ASSERT_OK(conn->Send(BuildRequest("GET", "/api/tags")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse second, conn->ReadResponse());
  EXPECT_EQ(second.status, 503);
  EXPECT_EQ(second.body, "{\"error\":\"no Ollama backend available\"}\n");
  const std::string retry_after = second.Header("retry-after").value_or("");
  int seconds = 0;
  EXPECT_TRUE(absl::SimpleAtoi(retry_after, &seconds)) << retry_after;
  EXPECT_GE(seconds, 25);
  EXPECT_LE(seconds, 30);
  EXPECT_EQ(Counter("sluice_upstream_connects_total"), connects) << "no connect while left out";
}

// A backend left out is tried again after --upstream_fail_timeout and used
// once it answers.
TEST_F(Backends, BackendThatComesBackIsUsedAgain) {
  const int port_a = UnusedPort();
  auto b = StartSim({});
  ASSERT_TRUE(b.ok()) << b.status();
  sim_ = std::move(*b);
  auto sluice = StartSluice(
      sim_->port(),
      {"--threads=1", "--upstream_max_fails=1", "--upstream_fail_timeout=1s", "--health_interval=0",
       absl::StrCat("--upstream=127.0.0.1:", port_a, ",127.0.0.1:", sim_->port())});
  ASSERT_TRUE(sluice.ok()) << sluice.status();
  sluice_ = std::move(*sluice);
  ASSERT_NO_FATAL_FAILURE(Get(4));  // A refuses once, then is left out
  EXPECT_EQ(Requests(sim_port()), 4);
  auto a = StartSim({absl::StrCat("--listen=127.0.0.1:", port_a)});
  ASSERT_TRUE(a.ok()) << a.status();
  sim_a_ = std::move(*a);
  absl::SleepFor(absl::Milliseconds(1200));
  ASSERT_NO_FATAL_FAILURE(Get(10));
  EXPECT_EQ(Requests(sim_a_->port()), 5) << "back in the rotation";
}

// Round robin: every other request to each backend.
TEST_F(Backends, RoundRobinAlternates) {
  ASSERT_NO_FATAL_FAILURE(StartTwo("", "", {"--threads=1"}));
  ASSERT_NO_FATAL_FAILURE(Get(20));
  EXPECT_EQ(Requests(sim_a_->port()), 10);
  EXPECT_EQ(Requests(sim_port()), 10);
}

// Weights share the requests in proportion.
TEST_F(Backends, WeightsShareInProportion) {
  ASSERT_NO_FATAL_FAILURE(
      StartTwo(" weight=3", " slots=2", {"--threads=1", "--balance=round_robin"}));
  ASSERT_NO_FATAL_FAILURE(Get(20));
  EXPECT_EQ(Requests(sim_a_->port()), 15);
  EXPECT_EQ(Requests(sim_port()), 5);
}

// least_conn: while one backend streams a long generation, the short
// requests go to the other.
TEST_F(Backends, LeastConnAvoidsTheBusyBackend) {
  ASSERT_NO_FATAL_FAILURE(StartTwo("", "", {"--threads=1", "--balance=least_conn"}));
  IT_ASSERT_OK_AND_ASSIGN(auto stream, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(stream->Send(BuildRequest("POST", "/api/generate",
                                         {{"Content-Type", "application/json"},
                                          {"X-Sim-Tokens", "40"},
                                          {"X-Sim-Token-Delay-Ms", "25"}},
                                         R"({"model":"sim","prompt":"hi"})")));
  // The stream is under way once its first bytes came.
  IT_ASSERT_OK_AND_ASSIGN(std::string status_line, stream->ReadLine(absl::Seconds(5)));
  ASSERT_TRUE(absl::StartsWith(status_line, "HTTP/1.1 200")) << status_line;
  ASSERT_NO_FATAL_FAILURE(Get(10));
  const int64_t a = Requests(sim_a_->port());
  const int64_t b = Requests(sim_port());
  EXPECT_EQ(a + b, 11);
  EXPECT_TRUE((a == 1 && b == 10) || (a == 10 && b == 1)) << "a " << a << ", b " << b;
}

// Which backend answered each of `n` echoes: the Host it was sent.
std::map<std::string, int> EchoHosts(int proxy_port, int n) {
  std::map<std::string, int> hosts;
  auto conn = HttpConnection::Connect(proxy_port);
  EXPECT_TRUE(conn.ok()) << conn.status();
  if (!conn.ok()) return hosts;
  for (int i = 0; i < n; ++i) {
    EXPECT_TRUE((*conn)->Send(BuildRequest("GET", "/sim/echo")).ok());
    auto r = (*conn)->ReadResponse();
    if (!r.ok() || r->status != 200) {
      ++hosts[r.ok() ? absl::StrCat("status ", r->status) : r.status().ToString()];
      continue;
    }
    std::optional<EchoedRequest> echo = ParseEcho(r->body);
    ++hosts[echo ? echo->First("host").value_or("none") : "unparsed"];
  }
  return hosts;
}

// The active checks: a backend that stops answering is taken out of the
// rotation before any request fails on it (passive detection off here),
// and put back once its checks pass again.
TEST_F(Backends, HealthChecksTakeADeadBackendOutAndBringItBack) {
  ASSERT_NO_FATAL_FAILURE(StartTwo("", "",
                                   {"--threads=1", "--health_interval=100ms",
                                    "--health_timeout=500ms", "--upstream_max_fails=0"}));
  const std::string host_a = absl::StrCat("127.0.0.1:", sim_a_->port());
  const std::string host_b = absl::StrCat("127.0.0.1:", sim_port());
  EXPECT_EQ(EchoHosts(proxy_port(), 10), (std::map<std::string, int>{{host_a, 5}, {host_b, 5}}));
  const int port_a = sim_a_->port();
  sim_a_->Terminate();
  sim_a_.reset();
  absl::SleepFor(absl::Milliseconds(600));  // two failed checks and more
  EXPECT_EQ(EchoHosts(proxy_port(), 10), (std::map<std::string, int>{{host_b, 10}}));
  EXPECT_EQ(Counter("sluice_upstream_connect_failures_total"), 0) << "A was never tried";
  auto a = StartSim({absl::StrCat("--listen=127.0.0.1:", port_a)});
  ASSERT_TRUE(a.ok()) << a.status();
  sim_a_ = std::move(*a);
  absl::SleepFor(absl::Milliseconds(400));
  EXPECT_EQ(EchoHosts(proxy_port(), 10), (std::map<std::string, int>{{host_a, 5}, {host_b, 5}}));
}

// The half-open circuit (checks off, passive detection only): once
// --upstream_fail_timeout has passed, one request goes to the backend left
// out (the probe) while the others still go elsewhere; its success brings
// the backend back. The probe here is pinned to A and answered after one
// second, so the requests sent meanwhile show that A is still left out.
TEST_F(Backends, HalfOpenCircuitLetsOneProbeThrough) {
  const int port_a = UnusedPort();
  auto b = StartSim({});
  ASSERT_TRUE(b.ok()) << b.status();
  sim_ = std::move(*b);
  auto sluice =
      StartSluice(sim_->port(), {"--threads=1", "--upstream_max_fails=1",
                                 "--upstream_fail_timeout=2s", "--health_interval=0",
                                 absl::StrCat("--upstream=127.0.0.1:", port_a,
                                              " name=a,127.0.0.1:", sim_->port(), " name=b")});
  ASSERT_TRUE(sluice.ok()) << sluice.status();
  sluice_ = std::move(*sluice);
  ASSERT_NO_FATAL_FAILURE(Get(2));  // A refuses once, then is left out
  EXPECT_EQ(Requests(sim_port()), 2);
  auto a = StartSim({absl::StrCat("--listen=127.0.0.1:", port_a)});
  ASSERT_TRUE(a.ok()) << a.status();
  sim_a_ = std::move(*a);
  absl::SleepFor(absl::Milliseconds(2200));
  IT_ASSERT_OK_AND_ASSIGN(auto probe, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(probe->Send(
      BuildRequest("POST", "/api/generate",
                   {{"X-Sluice-Backend", "a"}, {"X-Sim-TTFT-Ms", "1000"}, {"X-Sim-Tokens", "1"}},
                   R"({"model":"sim","prompt":"hi","stream":false})")));
  absl::SleepFor(absl::Milliseconds(100));
  ASSERT_NO_FATAL_FAILURE(Get(6));
  EXPECT_EQ(Requests(sim_a_->port()), 1) << "only the probe while it is out";
  EXPECT_EQ(Requests(sim_port()), 8);
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, probe->ReadResponse(absl::Seconds(5)));
  EXPECT_EQ(r.status, 200) << r.body;
  ASSERT_NO_FATAL_FAILURE(Get(10));
  EXPECT_EQ(Requests(sim_a_->port()), 6) << "back in the rotation";
  EXPECT_EQ(Requests(sim_port()), 13);
}

// A probe that fails (the backend still refuses) is failed over like any
// request and leaves the backend out for another --upstream_fail_timeout:
// one connect attempt per period, not one per request, and no request
// lost.
TEST_F(Backends, FailedProbeLeavesTheBackendOutAgain) {
  const int dead = UnusedPort();
  auto b = StartSim({});
  ASSERT_TRUE(b.ok()) << b.status();
  sim_ = std::move(*b);
  auto sluice = StartSluice(
      sim_->port(),
      {"--threads=1", "--upstream_max_fails=1", "--upstream_fail_timeout=1s", "--health_interval=0",
       absl::StrCat("--upstream=127.0.0.1:", dead, ",127.0.0.1:", sim_->port())});
  ASSERT_TRUE(sluice.ok()) << sluice.status();
  sluice_ = std::move(*sluice);
  ASSERT_NO_FATAL_FAILURE(Get(10));
  EXPECT_EQ(Counter("sluice_upstream_connect_failures_total"), 1);
  for (int period = 2; period <= 3; ++period) {
    absl::SleepFor(absl::Milliseconds(1100));
    ASSERT_NO_FATAL_FAILURE(Get(10));  // the first is the probe
    EXPECT_EQ(Counter("sluice_upstream_connect_failures_total"), period);
    EXPECT_EQ(Counter("sluice_upstream_failovers_total"), period);
  }
  EXPECT_EQ(Requests(sim_port()), 30);
}

}  // namespace
}  // namespace sluice::integration
