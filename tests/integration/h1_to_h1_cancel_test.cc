// HTTP/1.1 client to HTTP/1.1 upstream: a client that goes away mid-stream
// (FIN or RST) makes sluice close the upstream link at once, which is the
// only way Ollama learns to stop generating. The simulator records when it
// noticed its peer closing (last_abort_us, CLOCK_REALTIME µs).
#include <iostream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/proxy_test_base.h"
#include "tests/integration/timing.h"

namespace sluice::integration {
namespace {

enum class CloseKind { kFin, kRst };

void PrintTo(CloseKind kind, std::ostream* os) { *os << (kind == CloseKind::kFin ? "FIN" : "RST"); }

// The simulator writes a token every 20 ms, so it notices a closed link at
// its next write at the latest: 50 ms leaves room for that plus scheduling.
constexpr int64_t kMaxCancelDelayUs = 50000 * TimingSlack();

class H1ToH1StreamingCancel : public ProxyTest, public ::testing::WithParamInterface<CloseKind> {};

TEST_P(H1ToH1StreamingCancel, ClientCloseAbortsUpstreamAtOnce) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  IT_ASSERT_OK(ResetSim(sim_port()));

  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(conn->Send(BuildRequest("POST", "/api/generate",
                                       {{"Content-Type", "application/json"},
                                        {"X-Sim-Tokens", "1000"},
                                        {"X-Sim-Token-Delay-Ms", "20"}},
                                       R"({"model":"sim","prompt":"hi"})")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse head, conn->ReadHead(absl::Seconds(5)));
  ASSERT_EQ(head.status, 200);
  for (int i = 0; i < 2; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(Chunk chunk, conn->ReadChunk(absl::Seconds(5)));
    ASSERT_FALSE(chunk.data.empty());
  }
  IT_ASSERT_OK_AND_ASSIGN(SimStats before, FetchSimStats(sim_port()));
  ASSERT_EQ(before.aborted_streams, 0);

  int64_t close_us = RealtimeMicros();
  if (GetParam() == CloseKind::kFin) {
    conn->Close();
  } else {
    conn->CloseWithReset();
  }

  SimStats after;
  absl::Time deadline = absl::Now() + absl::Seconds(2);
  while (true) {
    IT_ASSERT_OK_AND_ASSIGN(after, FetchSimStats(sim_port()));
    if (after.aborted_streams > before.aborted_streams) break;
    ASSERT_LT(absl::Now(), deadline)
        << "the simulator saw no aborted stream 2 s after the client closed";
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(after.aborted_streams, 1);
  int64_t delay = after.last_abort_us - close_us;
  std::cout << "upstream abort noticed " << delay << " µs after the client "
            << (GetParam() == CloseKind::kFin ? "FIN" : "RST") << "\n";
  EXPECT_LT(delay, kMaxCancelDelayUs) << "upstream link closed " << delay << " µs after the client";
  EXPECT_GE(delay, -2000) << "abort noticed before the client closed?";

  // The proxy is still healthy afterwards.
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, Exchange(proxy_port(), BuildRequest("GET", "/api/tags")));
  EXPECT_EQ(r.status, 200);
}

INSTANTIATE_TEST_SUITE_P(CloseKinds, H1ToH1StreamingCancel,
                         ::testing::Values(CloseKind::kFin, CloseKind::kRst),
                         [](const ::testing::TestParamInfo<CloseKind>& info) {
                           return info.param == CloseKind::kFin ? std::string("Fin")
                                                                : std::string("Rst");
                         });

// An upstream that dies mid-stream (X-Sim-Close-After): the client must not
// see a clean end of stream. With chunked framing, the terminating 0-length
// chunk must be missing and the connection closed.
class H1ToH1UpstreamAbort : public ProxyTest {};

TEST_F(H1ToH1UpstreamAbort, TruncatedStreamIsNotTerminatedCleanly) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(conn->Send(BuildRequest("POST", "/api/generate",
                                       {{"Content-Type", "application/json"},
                                        {"X-Sim-Tokens", "20"},
                                        {"X-Sim-Token-Delay-Ms", "5"},
                                        {"X-Sim-Close-After", "3"}},
                                       R"({"model":"sim","prompt":"hi"})")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse head, conn->ReadHead(absl::Seconds(5)));
  ASSERT_EQ(head.status, 200);
  ASSERT_TRUE(head.chunked);
  int chunks = 0;
  absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (absl::Now() < deadline) {
    auto chunk = conn->ReadChunk(absl::Seconds(3));
    if (!chunk.ok()) {
      EXPECT_TRUE(absl::IsUnavailable(chunk.status())) << chunk.status();
      break;
    }
    ASSERT_FALSE(chunk->data.empty())
        << "a truncated upstream stream ended with a clean last chunk";
    ++chunks;
  }
  EXPECT_LE(chunks, 3);
}

}  // namespace
}  // namespace sluice::integration
