// HTTP/1.1 client to HTTP/1.1 upstream: SIGTERM drains. The listener closes
// at once, streams in flight run to their end, then sluice exits 0.
#include <signal.h>

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {
namespace {

class H1ToH1GracefulStop : public ProxyTest {
 protected:
  void SetUp() override { expect_sluice_exit_ = true; }
};

TEST_F(H1ToH1GracefulStop, InFlightStreamCompletesAndExitZero) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  const int port = proxy_port();
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(port));
  IT_ASSERT_OK(conn->Send(BuildRequest("POST", "/api/generate",
                                       {{"Content-Type", "application/json"},
                                        {"X-Sim-Tokens", "20"},
                                        {"X-Sim-Token-Delay-Ms", "50"}},
                                       R"({"model":"sim","prompt":"hi"})")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadHead(absl::Seconds(5)));
  ASSERT_EQ(r.status, 200);
  ASSERT_TRUE(r.chunked);
  for (int i = 0; i < 2; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(Chunk chunk, conn->ReadChunk(absl::Seconds(5)));
    ASSERT_FALSE(chunk.data.empty());
    r.body += chunk.data;
  }

  absl::Time term_at = absl::Now();
  ASSERT_TRUE(sluice_->Signal(SIGTERM));

  // The listener is gone shortly after the signal.
  absl::SleepFor(absl::Milliseconds(200));
  auto late = HttpConnection::Connect(port, absl::Seconds(1));
  EXPECT_FALSE(late.ok()) << "a new connection was accepted 200 ms after "
                             "SIGTERM; the listener should be closed";

  // The stream in flight still runs to its end.
  absl::Status body = conn->ReadBody(&r, absl::Seconds(5));
  ASSERT_TRUE(body.ok()) << body << "; got so far: " << r.body;
  EXPECT_TRUE(r.saw_last_chunk) << "no terminating 0-length chunk";
  EXPECT_TRUE(absl::StrContains(r.body, "\"done\":true")) << r.body;
  EXPECT_EQ(absl::StrContains(r.body, "tok20 "), true) << r.body;

  // Draining, sluice closes the connection once its response is complete
  // (keepalive ends); a client keeping it open must not hold the exit up.
  absl::Status closed = conn->ExpectClosed(absl::Seconds(1));
  EXPECT_TRUE(closed.ok()) << "after the drained response, the client connection stayed open: "
                           << closed;

  std::optional<ExitInfo> exit = sluice_->WaitExit(absl::Seconds(5) - (absl::Now() - term_at));
  ASSERT_TRUE(exit.has_value()) << "sluice still running 5 s after SIGTERM";
  EXPECT_TRUE(exit->exited) << "killed by signal " << exit->signal;
  EXPECT_EQ(exit->code, 0);
}

// Idle keepalive connections do not hold the drain up: with nothing in
// flight, sluice exits promptly even though --drain_timeout is 30 s, and the
// idle client sees its connection closed.
TEST_F(H1ToH1GracefulStop, IdleKeepaliveDoesNotDelayExit) {
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--drain_timeout=30s"}));
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(conn->Send(BuildRequest("GET", "/api/version")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse());
  ASSERT_EQ(r.status, 200);

  ASSERT_TRUE(sluice_->Signal(SIGTERM));
  std::optional<ExitInfo> exit = sluice_->WaitExit(absl::Seconds(5));
  ASSERT_TRUE(exit.has_value()) << "an idle keepalive connection kept sluice alive after SIGTERM";
  EXPECT_TRUE(exit->exited);
  EXPECT_EQ(exit->code, 0);
  IT_ASSERT_OK(conn->ExpectClosed(absl::Seconds(1)));
}

TEST_F(H1ToH1GracefulStop, SigintAlsoDrains) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  ASSERT_TRUE(sluice_->Signal(SIGINT));
  std::optional<ExitInfo> exit = sluice_->WaitExit(absl::Seconds(5));
  ASSERT_TRUE(exit.has_value());
  EXPECT_TRUE(exit->exited);
  EXPECT_EQ(exit->code, 0);
}

}  // namespace
}  // namespace sluice::integration
