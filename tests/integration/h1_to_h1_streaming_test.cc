// HTTP/1.1 client to HTTP/1.1 upstream: a token stream is relayed as it is
// generated, not batched. Each record carries the simulator's send time
// (sim_t_us, CLOCK_REALTIME µs); the client notes when the chunk holding it
// arrived. Same machine, same clock, so the difference is the relay delay.
#include <algorithm>
#include <climits>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "tests/integration/proxy_test_base.h"
#include "tests/integration/timing.h"

namespace sluice::integration {
namespace {

constexpr int kTokens = 10;
constexpr int kTokenDelayMs = 100;
// 10 tokens 100 ms apart span 900 ms at least; batching would shrink it.
constexpr int64_t kMinSpreadUs = 700000;
constexpr int64_t kMaxRelayDelayUs = 30000 * TimingSlack();
// Allowance for the two processes reading CLOCK_REALTIME at slightly
// different moments around the send.
constexpr int64_t kClockSlackUs = 2000;

const std::vector<std::pair<std::string, std::string>> kStreamHeaders = {
    {"Content-Type", "application/json"},
    {"X-Sim-Tokens", absl::StrCat(kTokens)},
    {"X-Sim-Token-Delay-Ms", absl::StrCat(kTokenDelayMs)}};

class H1ToH1Streaming : public ProxyTest {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(StartStack()); }

  // Checks each record's relay delay and the spread of arrivals.
  // `records` hold JSON objects with "sim_t_us".
  static void CheckIncremental(const std::vector<TimedRecord>& records, absl::string_view prefix,
                               int64_t max_delay_us) {
    ASSERT_FALSE(records.empty());
    int64_t max_delay = INT64_MIN;
    for (const TimedRecord& rec : records) {
      absl::string_view text = rec.text;
      if (!absl::ConsumePrefix(&text, prefix)) {
        ADD_FAILURE() << "record without '" << prefix << "': " << rec.text;
        continue;
      }
      if (text == "[DONE]") continue;
      std::optional<JsonValue> json = JsonValue::Parse(text);
      ASSERT_TRUE(json.has_value()) << "not JSON: " << rec.text;
      std::optional<int64_t> sent_us = json->GetInt("sim_t_us");
      ASSERT_TRUE(sent_us.has_value()) << "no sim_t_us: " << rec.text;
      int64_t delay = rec.arrival_us - *sent_us;
      max_delay = std::max(max_delay, delay);
      EXPECT_LT(delay, max_delay_us)
          << "record arrived " << delay << " µs after the simulator sent it: " << rec.text;
      EXPECT_GT(delay, -kClockSlackUs) << rec.text;
    }
    int64_t spread = records.back().arrival_us - records.front().arrival_us;
    std::cout << records.size() << " records, largest relay delay " << max_delay << " µs, spread "
              << spread << " µs\n";
    EXPECT_GE(spread, kMinSpreadUs) << "all records arrived within " << spread << " µs: batched";
  }
};

TEST_F(H1ToH1Streaming, NdjsonGenerateArrivesIncrementally) {
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(conn->Send(
      BuildRequest("POST", "/api/generate", kStreamHeaders, R"({"model":"sim","prompt":"hi"})")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse(absl::Seconds(15)));
  ASSERT_EQ(r.status, 200) << r.body;
  ASSERT_TRUE(r.chunked) << "a stream to an HTTP/1.1 client must be chunked";
  EXPECT_TRUE(r.saw_last_chunk);

  std::vector<TimedRecord> lines = SplitRecords(r.chunks, "\n");
  ASSERT_EQ(lines.size(), kTokens + 1u) << r.body;
  CheckIncremental(lines, "", kMaxRelayDelayUs);
  std::optional<JsonValue> last = JsonValue::Parse(lines.back().text);
  ASSERT_TRUE(last.has_value());
  EXPECT_TRUE(last->GetBool("done")) << lines.back().text;
  EXPECT_EQ(last->GetInt("eval_count"), kTokens);
}

TEST_F(H1ToH1Streaming, NdjsonChatArrivesIncrementally) {
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(
      conn->Send(BuildRequest("POST", "/api/chat", kStreamHeaders,
                              R"({"model":"sim","messages":[{"role":"user","content":"hi"}]})")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse(absl::Seconds(15)));
  ASSERT_EQ(r.status, 200) << r.body;
  std::vector<TimedRecord> lines = SplitRecords(r.chunks, "\n");
  ASSERT_EQ(lines.size(), kTokens + 1u) << r.body;
  CheckIncremental(lines, "", kMaxRelayDelayUs);
  EXPECT_TRUE(absl::StrContains(lines.back().text, "\"done\":true"));
}

TEST_F(H1ToH1Streaming, SseChatCompletionsArriveIncrementally) {
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(conn->Send(BuildRequest("POST", "/v1/chat/completions", kStreamHeaders,
                                       R"({"model":"sim","stream":true,)"
                                       R"("messages":[{"role":"user","content":"hi"}]})")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse(absl::Seconds(15)));
  ASSERT_EQ(r.status, 200) << r.body;
  ASSERT_TRUE(r.chunked);
  EXPECT_TRUE(absl::StartsWith(r.Header("Content-Type").value_or(""), "text/event-stream"));
  std::vector<TimedRecord> events = SplitRecords(r.chunks, "\n\n");
  // One event per token, the finish_reason event, then [DONE].
  ASSERT_EQ(events.size(), kTokens + 2u) << r.body;
  EXPECT_EQ(events.back().text, "data: [DONE]");
  CheckIncremental(events, "data: ", kMaxRelayDelayUs);
}

// The same through curl: bash stamps each line as curl hands it over
// ($EPOCHREALTIME, no fork per line). Pipe and shell add a little latency,
// hence the looser bound.
TEST_F(H1ToH1Streaming, CurlNdjsonArrivesIncrementally) {
  std::string cmd = absl::StrCat(
      "curl -sN --max-time 20 -H 'Content-Type: application/json' "
      "-H 'X-Sim-Tokens: ",
      kTokens, "' -H 'X-Sim-Token-Delay-Ms: ", kTokenDelayMs,
      "' -d '{\"model\":\"sim\",\"prompt\":\"hi\"}' ", proxy_url(),
      "/api/generate | while IFS= read -r line; do "
      "printf '%s %s\\n' \"${EPOCHREALTIME/./}\" \"$line\"; done");
  CommandResult res = RunProgram("/bin/bash", {"-c", cmd}, absl::Seconds(25), {"LC_ALL=C"});
  ASSERT_FALSE(res.timed_out);
  ASSERT_EQ(res.exit.code, 0) << res.err;
  std::vector<TimedRecord> lines;
  for (absl::string_view line : absl::StrSplit(res.out, '\n', absl::SkipEmpty())) {
    std::pair<absl::string_view, absl::string_view> parts =
        absl::StrSplit(line, absl::MaxSplits(' ', 1));
    TimedRecord rec;
    ASSERT_TRUE(absl::SimpleAtoi(parts.first, &rec.arrival_us)) << line;
    rec.text = std::string(parts.second);
    lines.push_back(rec);
  }
  ASSERT_EQ(lines.size(), kTokens + 1u) << res.out;
  CheckIncremental(lines, "", 3 * kMaxRelayDelayUs);
  EXPECT_TRUE(absl::StrContains(lines.back().text, "\"done\":true"));
}

TEST_F(H1ToH1Streaming, CurlSseEndsWithDone) {
  std::string cmd = absl::StrCat(
      "curl -sN --max-time 20 -H 'Content-Type: application/json' "
      "-H 'X-Sim-Tokens: 8' -H 'X-Sim-Token-Delay-Ms: 10' "
      "-d '{\"model\":\"sim\",\"stream\":true,\"messages\":"
      "[{\"role\":\"user\",\"content\":\"hi\"}]}' ",
      proxy_url(), "/v1/chat/completions");
  CommandResult res = RunShell(cmd, absl::Seconds(25));
  ASSERT_FALSE(res.timed_out);
  ASSERT_EQ(res.exit.code, 0) << res.err;
  std::vector<std::string> data;
  for (absl::string_view line : absl::StrSplit(res.out, '\n', absl::SkipEmpty())) {
    data.emplace_back(line);
  }
  ASSERT_EQ(data.size(), 8u + 2u) << res.out;
  for (const std::string& d : data) {
    EXPECT_TRUE(absl::StartsWith(d, "data: ")) << d;
  }
  EXPECT_EQ(data.back(), "data: [DONE]");
  EXPECT_TRUE(absl::StrContains(data[data.size() - 2], "\"finish_reason\":\"stop\""));
}

// An HTTP/1.0 client cannot take chunked encoding: the stream must come
// close-delimited (or with a length), and the connection must end after it.
TEST_F(H1ToH1Streaming, Http10ClientGetsUnchunkedStream) {
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  std::string body = R"({"model":"sim","prompt":"hi"})";
  IT_ASSERT_OK(
      conn->Send(absl::StrCat("POST /api/generate HTTP/1.0\r\nHost: 127.0.0.1\r\n"
                              "Content-Type: application/json\r\nX-Sim-Tokens: 5\r\n"
                              "X-Sim-Token-Delay-Ms: 10\r\nContent-Length: ",
                              body.size(), "\r\n\r\n", body)));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse(absl::Seconds(10)));
  ASSERT_EQ(r.status, 200);
  EXPECT_FALSE(r.chunked) << "chunked encoding sent to an HTTP/1.0 client";
  std::vector<std::string> lines = absl::StrSplit(r.body, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 6u) << r.body;
  EXPECT_TRUE(absl::StrContains(lines.back(), "\"done\":true"));
  IT_ASSERT_OK(conn->ExpectClosed(absl::Seconds(2)));
}

TEST_F(H1ToH1Streaming, PullProgressStreamEndsWithSuccess) {
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r,
                          Exchange(proxy_port(), BuildRequest("POST", "/api/pull",
                                                              {{"Content-Type", "application/json"},
                                                               {"X-Sim-Token-Delay-Ms", "5"}},
                                                              R"({"model":"sim"})")));
  ASSERT_EQ(r.status, 200);
  std::vector<TimedRecord> lines = SplitRecords(r.chunks, "\n");
  ASSERT_GE(lines.size(), 3u) << r.body;
  EXPECT_TRUE(absl::StrContains(lines.front().text, "pulling manifest"));
  EXPECT_TRUE(absl::StrContains(lines.back().text, "\"success\""));
}

// stream:false gets one JSON object with a Content-Length or chunked body.
TEST_F(H1ToH1Streaming, NonStreamingGenerateIsOneObject) {
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse r,
      Exchange(proxy_port(), BuildRequest("POST", "/api/generate",
                                          {{"Content-Type", "application/json"},
                                           {"X-Sim-Tokens", "5"},
                                           {"X-Sim-Token-Delay-Ms", "1"}},
                                          R"({"model":"sim","prompt":"hi","stream":false})")));
  ASSERT_EQ(r.status, 200);
  std::optional<JsonValue> json = JsonValue::Parse(r.body);
  ASSERT_TRUE(json.has_value()) << r.body;
  EXPECT_TRUE(json->GetBool("done"));
  EXPECT_EQ(json->GetInt("eval_count"), 5);
}

// 50 chunks of 4 KiB padding each (200 KiB): no byte lost or reordered.
TEST_F(H1ToH1Streaming, LargePaddedChunksRelayedIntact) {
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(conn->Send(BuildRequest("POST", "/api/generate",
                                       {{"Content-Type", "application/json"},
                                        {"X-Sim-Tokens", "50"},
                                        {"X-Sim-Token-Delay-Ms", "0"},
                                        {"X-Sim-Chunk-Pad", "4096"}},
                                       R"({"model":"sim","prompt":"hi"})")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse(absl::Seconds(15)));
  ASSERT_EQ(r.status, 200);
  std::vector<TimedRecord> lines = SplitRecords(r.chunks, "\n");
  ASSERT_EQ(lines.size(), 51u);
  for (size_t i = 0; i < lines.size(); ++i) {
    std::optional<JsonValue> json = JsonValue::Parse(lines[i].text);
    ASSERT_TRUE(json.has_value()) << "line " << i << " is not JSON";
    if (i + 1 < lines.size()) {
      EXPECT_EQ(json->GetString("response"),
                absl::StrCat("tok", i + 1, " ", std::string(4096, 'x')));
    }
  }
  EXPECT_TRUE(JsonValue::Parse(lines.back().text)->GetBool("done"));
}

}  // namespace
}  // namespace sluice::integration

namespace sluice::integration {
namespace {

// --busy_poll changes how a worker waits for completions, never what it
// relays: a stream still arrives whole and incrementally, and timers (the
// idle keepalive close) still fire while the worker polls.
class H1ToH1BusyPoll : public ProxyTest {};

TEST_F(H1ToH1BusyPoll, StreamsAndTimersWorkWhilePolling) {
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--busy_poll=2ms", "--keepalive_timeout=1s"}));
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(conn->Send(BuildRequest("POST", "/api/generate",
                                       {{"X-Sim-Tokens", "5"}, {"X-Sim-Token-Delay-Ms", "50"}},
                                       R"({"model":"sim","prompt":"hi"})")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse(absl::Seconds(15)));
  ASSERT_EQ(r.status, 200) << r.body;
  std::vector<TimedRecord> lines = SplitRecords(r.chunks, "\n");
  ASSERT_EQ(lines.size(), 6u) << r.body;
  EXPECT_GE(lines.back().arrival_us - lines.front().arrival_us, 150000) << r.body;
  EXPECT_TRUE(absl::StrContains(lines.back().text, "\"done\":true"));
  absl::Time idle_since = absl::Now();
  EXPECT_TRUE(conn->ExpectClosed(absl::Seconds(5)).ok());
  EXPECT_LT(absl::Now() - idle_since, absl::Seconds(3));
}

}  // namespace
}  // namespace sluice::integration
