// Fair sharing of generation slots through the real binary: a backend with
// slots=2 in front of a simulator that runs 2 generations at once; sluice
// keeps the rest waiting, per key, so a polite key's request goes before a
// greedy key's backlog; a request whose client leaves while it waits never
// reaches the simulator; the per-key bound (429) and the wait bound (503).
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/integration/fair_queue_fixture.h"

namespace sluice::integration {
namespace {

// Greedy keeps 8 generations of ~1 s in flight (2 run, 6 wait); a polite
// key's one request waits for about one generation, not for greedy's
// backlog (3 s more).
TEST_F(FairQueue, PoliteKeyWaitsAboutOneGenerationWhateverTheBacklog) {
  const std::string greedy = AddKey("greedy");
  const std::string polite = AddKey("polite");
  ASSERT_NO_FATAL_FAILURE(Start());
  std::vector<std::unique_ptr<HttpConnection>> conns;
  for (int i = 0; i < 8; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(auto c, HttpConnection::Connect(proxy_port()));
    IT_ASSERT_OK(c->Send(Generate(greedy, 10, 100)));
    conns.push_back(std::move(c));
  }
  absl::SleepFor(absl::Milliseconds(300));  // greedy's 8 are in: 2 run, 6 wait
  EXPECT_EQ(SimRequests(), 2);              // the simulator sees only what has a slot
  const absl::Time start = absl::Now();
  auto r = Exchange(proxy_port(), Generate(polite, 1, 1), absl::Seconds(20));
  const absl::Duration waited = absl::Now() - start;
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200) << r->body;
  // One of greedy's running generations ends within ~0.7 s; greedy's
  // backlog would have taken 3 s more.
  EXPECT_LT(waited, absl::Milliseconds(1800)) << waited;
  int64_t wait_ms = -1;
  EXPECT_TRUE(absl::SimpleAtoi(r->Header("X-Queue-Wait-Ms").value_or("x"), &wait_ms));
  EXPECT_GT(wait_ms, 100);
  int ok = 0;
  for (auto& c : conns) {
    auto g = c->ReadResponse(absl::Seconds(20));
    ok += g.ok() && g->status == 200;
  }
  EXPECT_EQ(ok, 8);
  EXPECT_EQ(SimRequests(), 9);
}

// A request whose client leaves while it waits never reaches Ollama.
TEST_F(FairQueue, ClientThatLeavesWhileWaitingNeverReachesTheBackend) {
  const std::string k = AddKey("k");
  ASSERT_NO_FATAL_FAILURE(Start());
  std::vector<std::unique_ptr<HttpConnection>> running;
  for (int i = 0; i < 2; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(auto c, HttpConnection::Connect(proxy_port()));
    IT_ASSERT_OK(c->Send(Generate(k, 8, 100)));
    running.push_back(std::move(c));
  }
  absl::SleepFor(absl::Milliseconds(200));
  {
    IT_ASSERT_OK_AND_ASSIGN(auto leaving, HttpConnection::Connect(proxy_port()));
    IT_ASSERT_OK(leaving->Send(Generate(k, 1, 1)));
    absl::SleepFor(absl::Milliseconds(200));
  }  // closed while it waits
  for (auto& c : running) {
    auto g = c->ReadResponse(absl::Seconds(20));
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ(g->status, 200);
  }
  // Its slot was never taken: a new request runs at once.
  auto after = Exchange(proxy_port(), Generate(k, 1, 1), absl::Seconds(10));
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->status, 200);
  EXPECT_EQ(after->Header("X-Queue-Wait-Ms").value_or(""), "0");
  EXPECT_EQ(SimRequests(), 3);
}

TEST_F(FairQueue, PerKeyBoundIs429AndTheWaitBoundIs503) {
  const std::string k = AddKey("k");
  const std::string other = AddKey("other");
  ASSERT_NO_FATAL_FAILURE(Start({"--queue_per_key=2", "--queue_timeout=700ms"}));
  std::vector<std::unique_ptr<HttpConnection>> conns;
  for (int i = 0; i < 4; ++i) {  // 2 run, 2 wait
    IT_ASSERT_OK_AND_ASSIGN(auto c, HttpConnection::Connect(proxy_port()));
    IT_ASSERT_OK(c->Send(Generate(k, 20, 100)));
    conns.push_back(std::move(c));
  }
  absl::SleepFor(absl::Milliseconds(200));
  auto over = Exchange(proxy_port(), Generate(k, 1, 1), absl::Seconds(10));
  ASSERT_TRUE(over.ok());
  EXPECT_EQ(over->status, 429) << over->body;
  EXPECT_TRUE(over->Header("Retry-After").has_value());
  EXPECT_TRUE(JsonError(over->body).has_value()) << over->body;
  // Another key may still wait, but not past --queue_timeout.
  const absl::Time start = absl::Now();
  auto late = Exchange(proxy_port(), Generate(other, 1, 1), absl::Seconds(10));
  ASSERT_TRUE(late.ok());
  EXPECT_EQ(late->status, 503) << late->body;
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(600));
  EXPECT_TRUE(late->Header("Retry-After").has_value());
  // k's two waiters time out too; the running two finish.
  int ok = 0, timed_out = 0;
  for (auto& c : conns) {
    auto g = c->ReadResponse(absl::Seconds(20));
    ASSERT_TRUE(g.ok()) << g.status();
    ok += g->status == 200;
    timed_out += g->status == 503;
  }
  EXPECT_EQ(ok, 2);
  EXPECT_EQ(timed_out, 2);
  EXPECT_EQ(SimRequests(), 2);
}

// Routes that are not generations are never queued.
TEST_F(FairQueue, OtherRoutesAreNotQueued) {
  const std::string k = AddKey("k");
  ASSERT_NO_FATAL_FAILURE(Start());
  std::vector<std::unique_ptr<HttpConnection>> conns;
  for (int i = 0; i < 4; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(auto c, HttpConnection::Connect(proxy_port()));
    IT_ASSERT_OK(c->Send(Generate(k, 10, 100)));
    conns.push_back(std::move(c));
  }
  absl::SleepFor(absl::Milliseconds(200));
  const absl::Time start = absl::Now();
  auto tags =
      Exchange(proxy_port(), BuildRequest("GET", "/api/tags", {{"Authorization", "Bearer " + k}}));
  ASSERT_TRUE(tags.ok());
  EXPECT_EQ(tags->status, 200);
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(500));
  EXPECT_FALSE(tags->Header("X-Queue-Wait-Ms").has_value());
  for (auto& c : conns) {
    auto g = c->ReadResponse(absl::Seconds(20));
    EXPECT_TRUE(g.ok() && g->status == 200);
  }
}

}  // namespace
}  // namespace sluice::integration
