// HTTP/1.1 client to HTTP/1.1 upstream under load: many concurrent streams
// over two workers, and a client that stops reading a large stream (memory
// must stay bounded: TCP pushes back on the upstream, DESIGN.md principle 4).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {
namespace {

// Resident set of `pid` in KiB, from /proc; -1 when unreadable.
int64_t RssKib(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "VmRSS:")) {
      std::string digits;
      for (char c : line) {
        if (c >= '0' && c <= '9') digits.push_back(c);
      }
      int64_t v;
      if (absl::SimpleAtoi(digits, &v)) return v;
    }
  }
  return -1;
}

class H1ToH1Load : public ProxyTest {};

TEST_F(H1ToH1Load, FiftyConcurrentStreamsComplete) {
  ASSERT_NO_FATAL_FAILURE(StartStack({"--threads=2"}, {"--threads=2"}));
  constexpr int kStreams = 50;
  std::atomic<int> done{0};
  std::mutex mu;
  std::vector<std::string> errors;
  std::vector<std::thread> clients;
  for (int i = 0; i < kStreams; ++i) {
    clients.emplace_back([&, i] {
      auto r = Exchange(proxy_port(),
                        BuildRequest("POST", "/api/chat",
                                     {{"Content-Type", "application/json"},
                                      {"X-Sim-Tokens", "20"},
                                      {"X-Sim-Token-Delay-Ms", "20"}},
                                     R"({"model":"sim","messages":[]})"),
                        absl::Seconds(20));
      std::string error;
      if (!r.ok()) {
        error = r.status().ToString();
      } else if (r->status != 200 || !r->saw_last_chunk ||
                 !absl::StrContains(r->body, "\"done\":true") ||
                 !absl::StrContains(r->body, "tok20 ")) {
        error = absl::StrCat("status ", r->status, " body ", r->body);
      }
      if (error.empty()) {
        done.fetch_add(1);
      } else {
        std::lock_guard<std::mutex> lock(mu);
        errors.push_back(absl::StrCat("stream ", i, ": ", error));
      }
    });
  }
  for (std::thread& t : clients) t.join();
  for (const std::string& e : errors) ADD_FAILURE() << e;
  EXPECT_EQ(done.load(), kStreams);
}

TEST_F(H1ToH1Load, SlowReaderKeepsProxyMemoryBounded) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  constexpr int kTokens = 1000;
  constexpr int kPad = 64 * 1024;  // 1000 x 64 KiB = 62.5 MiB in all.
  // Without backpressure sluice would hold most of the 62.5 MiB; socket
  // buffers on the way take a few MiB at most.
  constexpr int64_t kMaxGrowthKib = 24 * 1024;

  // Warm up buffers and pools with a small stream first.
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse warm,
                          Exchange(proxy_port(), BuildRequest("POST", "/api/generate",
                                                              {{"X-Sim-Tokens", "50"},
                                                               {"X-Sim-Token-Delay-Ms", "0"},
                                                               {"X-Sim-Chunk-Pad", "65536"}},
                                                              R"({"model":"sim","prompt":"hi"})")));
  ASSERT_EQ(warm.status, 200);
  const int64_t rss_before = RssKib(sluice_->pid());
  ASSERT_GT(rss_before, 0);

  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(conn->Send(BuildRequest("POST", "/api/generate",
                                       {{"X-Sim-Tokens", absl::StrCat(kTokens)},
                                        {"X-Sim-Token-Delay-Ms", "0"},
                                        {"X-Sim-Chunk-Pad", absl::StrCat(kPad)}},
                                       R"({"model":"sim","prompt":"hi"})")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadHead(absl::Seconds(5)));
  ASSERT_EQ(r.status, 200);
  int64_t rss_peak = rss_before;
  for (int i = 0; i < 15; ++i) {  // 1.5 s without reading.
    absl::SleepFor(absl::Milliseconds(100));
    rss_peak = std::max(rss_peak, RssKib(sluice_->pid()));
  }
  std::cout << "sluice RSS " << rss_before << " KiB before, " << rss_peak
            << " KiB at most while the client did not read\n";
  EXPECT_LT(rss_peak - rss_before, kMaxGrowthKib)
      << "sluice buffered the stream instead of pushing back";

  // Then everything still arrives, intact.
  IT_ASSERT_OK(conn->ReadBody(&r, absl::Seconds(30)));
  EXPECT_TRUE(r.saw_last_chunk);
  std::vector<TimedRecord> lines = SplitRecords(r.chunks, "\n");
  ASSERT_EQ(lines.size(), kTokens + 1u);
  EXPECT_TRUE(absl::StrContains(lines.back().text, "\"done\":true"));
  for (int i = 0; i < kTokens; i += 97) {
    EXPECT_TRUE(absl::StartsWith(lines[i].text, absl::StrCat(R"({"model":"sim",)")))
        << "line " << i;
    EXPECT_TRUE(absl::StrContains(lines[i].text, absl::StrCat("tok", i + 1, " "))) << "line " << i;
  }
}

}  // namespace
}  // namespace sluice::integration
