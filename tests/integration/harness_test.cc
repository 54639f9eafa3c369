// The harness checked against ollama-sim alone, without sluice: when a proxy
// test fails, these tell whether the harness and the simulator can be
// trusted (chunk timing, stats counters, abort detection, echo parsing).
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/proxy_test_base.h"
#include "tests/integration/timing.h"

namespace sluice::integration {
namespace {

TEST(JsonLite, ParsesNestedValues) {
  std::optional<JsonValue> v =
      JsonValue::Parse(R"( {"a":1795583906259987,"b":[["X","y\"z"],["\u00e9",""]],)"
                       R"("t":true,"f":false,"n":null,"d":-1.5e3,"s":"\ud83d\ude00"} )");
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(v->GetInt("a"), 1795583906259987);
  ASSERT_TRUE(v->Get("b")->is_array());
  EXPECT_EQ(v->Get("b")->array()[0].array()[1].str(), "y\"z");
  EXPECT_EQ(v->Get("b")->array()[1].array()[0].str(), "\xc3\xa9");
  EXPECT_TRUE(v->GetBool("t"));
  EXPECT_FALSE(v->GetBool("f"));
  EXPECT_EQ(v->GetInt("d"), std::nullopt);
  EXPECT_EQ(v->GetString("s"), "\xf0\x9f\x98\x80");
  EXPECT_FALSE(JsonValue::Parse(R"({"a":1} x)").has_value());
  EXPECT_FALSE(JsonValue::Parse(R"({"a":})").has_value());
  EXPECT_FALSE(JsonValue::Parse("\"a\nb\"").has_value());
}

TEST(SplitRecords, JoinsAcrossChunksWithLastArrival) {
  std::vector<Chunk> chunks = {{"ab\nc", 1}, {"d\n", 2}, {"\ne", 3}};
  std::vector<TimedRecord> lines = SplitRecords(chunks, "\n");
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0].text, "ab");
  EXPECT_EQ(lines[0].arrival_us, 1);
  EXPECT_EQ(lines[1].text, "cd");
  EXPECT_EQ(lines[1].arrival_us, 2);
  EXPECT_EQ(lines[2].text, "");
  EXPECT_EQ(lines[3].text, "e");
}

class SimDirect : public ::testing::Test {
 protected:
  void SetUp() override {
    auto sim = StartSim();
    ASSERT_TRUE(sim.ok()) << sim.status();
    sim_ = std::move(*sim);
  }
  std::unique_ptr<ChildProcess> sim_;
};

TEST_F(SimDirect, StatsCountConnectionsAndRequests) {
  IT_ASSERT_OK(ResetSim(sim_->port()));
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(sim_->port()));
  for (int i = 0; i < 3; ++i) {
    IT_ASSERT_OK(conn->Send(BuildRequest("GET", "/api/tags")));
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse());
    EXPECT_EQ(r.status, 200);
  }
  IT_ASSERT_OK_AND_ASSIGN(SimStats s, FetchSimStats(sim_->port()));
  EXPECT_EQ(s.requests, 3);
  EXPECT_EQ(s.opened, 2);  // The keepalive connection and this stats one.
  EXPECT_EQ(s.aborted_streams, 0);
}

TEST_F(SimDirect, ChunkArrivalMatchesSendTime) {
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(sim_->port()));
  IT_ASSERT_OK(conn->Send(BuildRequest("POST", "/api/generate",
                                       {{"X-Sim-Tokens", "5"}, {"X-Sim-Token-Delay-Ms", "50"}},
                                       R"({"model":"sim","prompt":"hi"})")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse());
  ASSERT_EQ(r.status, 200);
  ASSERT_TRUE(r.chunked);
  EXPECT_TRUE(r.saw_last_chunk);
  std::vector<TimedRecord> lines = SplitRecords(r.chunks, "\n");
  ASSERT_EQ(lines.size(), 6u);
  for (const TimedRecord& line : lines) {
    std::optional<JsonValue> json = JsonValue::Parse(line.text);
    ASSERT_TRUE(json.has_value()) << line.text;
    int64_t delay = line.arrival_us - json->GetInt("sim_t_us").value_or(0);
    EXPECT_GT(delay, -2000);
    EXPECT_LT(delay, 10000 * TimingSlack()) << "the harness itself is slow to read";
  }
  EXPECT_GE(lines.back().arrival_us - lines.front().arrival_us, 200000);
}

TEST_F(SimDirect, AbortNoticedPromptly) {
  IT_ASSERT_OK(ResetSim(sim_->port()));
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(sim_->port()));
  IT_ASSERT_OK(conn->Send(BuildRequest("POST", "/api/generate",
                                       {{"X-Sim-Tokens", "1000"}, {"X-Sim-Token-Delay-Ms", "20"}},
                                       R"({"model":"sim","prompt":"hi"})")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse head, conn->ReadHead(absl::Seconds(5)));
  IT_ASSERT_OK_AND_ASSIGN(Chunk c, conn->ReadChunk(absl::Seconds(5)));
  int64_t close_us = RealtimeMicros();
  conn->Close();
  SimStats s;
  for (int i = 0; i < 200; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(s, FetchSimStats(sim_->port()));
    if (s.aborted_streams > 0) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(s.aborted_streams, 1);
  EXPECT_LT(s.last_abort_us - close_us, 30000 * TimingSlack());
}

TEST_F(SimDirect, EchoListsHeadersInOrder) {
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse r,
      Exchange(sim_->port(),
               BuildRequest("POST", "/sim/echo?x=1", {{"X-First", "1"}, {"x-second", "two words"}},
                            "body\"with\\quotes")));
  ASSERT_EQ(r.status, 200);
  std::optional<EchoedRequest> echo = ParseEcho(r.body);
  ASSERT_TRUE(echo.has_value()) << r.body;
  EXPECT_EQ(echo->method, "POST");
  EXPECT_EQ(echo->target, "/sim/echo?x=1");
  EXPECT_EQ(echo->body, "body\"with\\quotes");
  ASSERT_GE(echo->headers.size(), 3u);
  EXPECT_EQ(echo->headers[0].first, "Host");
  EXPECT_EQ(echo->headers[1], std::make_pair(std::string("X-First"), std::string("1")));
  EXPECT_EQ(echo->headers[2], std::make_pair(std::string("x-second"), std::string("two words")));
}

TEST_F(SimDirect, ForeignHostIsForbidden) {
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse r,
      Exchange(sim_->port(), BuildRequest("GET", "/api/tags", {}, "", "evil.example")));
  EXPECT_EQ(r.status, 403);
}

TEST_F(SimDirect, ExpectClosedSeesServerClose) {
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(sim_->port()));
  IT_ASSERT_OK(conn->Send(BuildRequest("GET", "/api/version", {{"Connection", "close"}})));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse());
  EXPECT_EQ(r.status, 200);
  IT_ASSERT_OK(conn->ExpectClosed(absl::Seconds(2)));
}

// What the retry tests rely on: the request carrying the header is answered,
// the next one on that connection is read and the connection closed with no
// answer, and it is not counted as a handled request.
TEST_F(SimDirect, DropNextRequestClosesWithoutAnswer) {
  IT_ASSERT_OK(ResetSim(sim_->port()));
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(sim_->port()));
  IT_ASSERT_OK(conn->Send(BuildRequest("GET", "/api/version", {{"X-Sim-Drop-Next-Request", "1"}})));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse());
  EXPECT_EQ(r.status, 200);
  IT_ASSERT_OK(conn->Send(BuildRequest("GET", "/api/version")));
  IT_ASSERT_OK(conn->ExpectClosed(absl::Seconds(2)));

  // Only that connection: a new one is served.
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse fresh,
                          Exchange(sim_->port(), BuildRequest("GET", "/api/version")));
  EXPECT_EQ(fresh.status, 200);
  IT_ASSERT_OK_AND_ASSIGN(SimStats s, FetchSimStats(sim_->port()));
  EXPECT_EQ(s.requests, 2);
}

TEST(Harness, SanitizerReportFindsTheFirstReport) {
  EXPECT_EQ(SanitizerReport("2026/01/01 [info] w0: listening\n"), std::nullopt);
  std::string tsan =
      "log line\n==================\nWARNING: ThreadSanitizer: data race "
      "(pid=1)\n  Write of size 8\n";
  std::optional<std::string> report = SanitizerReport(tsan);
  ASSERT_TRUE(report.has_value());
  EXPECT_TRUE(absl::StartsWith(*report, "WARNING: ThreadSanitizer: data race")) << *report;
  std::optional<std::string> ubsan =
      SanitizerReport("core/x.cc:3:5: runtime error: signed integer overflow");
  ASSERT_TRUE(ubsan.has_value());
  EXPECT_TRUE(absl::StartsWith(*ubsan, "core/x.cc:3:5")) << *ubsan;
  EXPECT_TRUE(SanitizerReport("==7==ERROR: AddressSanitizer: heap-use-after-free").has_value());
}

TEST(Harness, StartFailureReportsStderr) {
  auto sim = StartSim({"--threads=abc"});
  ASSERT_FALSE(sim.ok());
  EXPECT_TRUE(absl::StrContains(sim.status().message(), "threads")) << sim.status();
}

TEST(Harness, RunShellCapturesAndTimesOut) {
  CommandResult ok = RunShell("echo out; echo err >&2; exit 3", absl::Seconds(5));
  EXPECT_EQ(ok.exit.code, 3);
  EXPECT_EQ(ok.out, "out\n");
  EXPECT_EQ(ok.err, "err\n");
  absl::Time start = absl::Now();
  CommandResult slow = RunShell("sleep 30", absl::Milliseconds(200));
  EXPECT_TRUE(slow.timed_out);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

}  // namespace
}  // namespace sluice::integration
