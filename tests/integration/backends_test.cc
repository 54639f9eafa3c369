// Several Ollama backends behind one sluice (--upstream list, --balance),
// each a simulator of its own.
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
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
  void Get(int n) {
    IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
    for (int i = 0; i < n; ++i) {
      IT_ASSERT_OK(conn->Send(BuildRequest("GET", "/api/tags")));
      IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse());
      ASSERT_EQ(r.status, 200) << r.body;
    }
  }

  std::unique_ptr<ChildProcess> sim_a_;
};

// Round robin: every other request to each backend.
TEST_F(Backends, RoundRobinAlternates) {
  ASSERT_NO_FATAL_FAILURE(StartTwo("", "", {"--threads=1"}));
  ASSERT_NO_FATAL_FAILURE(Get(20));
  EXPECT_EQ(Requests(sim_a_->port()), 10);
  EXPECT_EQ(Requests(sim_port()), 10);
}

// Weights share the requests in proportion.
TEST_F(Backends, WeightsShareInProportion) {
  ASSERT_NO_FATAL_FAILURE(StartTwo(" weight=3", " slots=2", {"--threads=1"}));
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

}  // namespace
}  // namespace sluice::integration
