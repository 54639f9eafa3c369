// Overload: --max_connections through the real binary. Connections past
// the cap have their requests answered 503 with Retry-After and a JSON
// error, then close (HTTP/1.1: Connection: close; HTTP/2: every stream 503,
// then GOAWAY); past a small allowance of those, sockets are closed at
// accept (stub_status: accepted but not handled). Admitted streams keep
// their pace while the excess is refused, and capacity comes back as soon
// as they end.
#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/integration/h2_frames.h"
#include "tests/integration/proxy_test_base.h"
#include "tests/integration/timing.h"

namespace sluice::integration {
namespace {

// stub_status's "accepts handled requests" line.
struct StubCounts {
  int64_t accepts = -1;
  int64_t handled = -1;
  int64_t requests = -1;
};

StubCounts ParseStub(absl::string_view text) {
  StubCounts c;
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  for (size_t i = 0; i + 1 < lines.size(); ++i) {
    if (!absl::StartsWith(lines[i], "server accepts handled requests")) continue;
    std::vector<std::string> f = absl::StrSplit(lines[i + 1], ' ', absl::SkipEmpty());
    if (f.size() == 3) {
      (void)absl::SimpleAtoi(f[0], &c.accepts);
      (void)absl::SimpleAtoi(f[1], &c.handled);
      (void)absl::SimpleAtoi(f[2], &c.requests);
    }
  }
  return c;
}

// A streaming generation held open on its own connection.
struct HeldStream {
  std::unique_ptr<HttpConnection> conn;
  HttpResponse head;
};

class Overload : public ProxyTest {
 protected:
  // What an excess client got: 503 (with the checks below), or a close
  // without an answer (dropped at accept).
  enum class Outcome { k503, kDropped, kOther };

  Outcome ExcessRequest(std::string* detail) {
    auto conn = HttpConnection::Connect(proxy_port(), absl::Seconds(5));
    if (!conn.ok()) {
      *detail = conn.status().ToString();
      return Outcome::kOther;
    }
    absl::Status st = (*conn)->Send(BuildRequest("GET", "/api/tags"));
    auto r = (*conn)->ReadResponse(absl::Seconds(5));
    if (!r.ok()) {
      // Closed at accept: the send or the read sees the close.
      if (absl::IsUnavailable(r.status()) || !st.ok()) return Outcome::kDropped;
      *detail = r.status().ToString();
      return Outcome::kOther;
    }
    const bool ok = r->status == 503 && r->Header("Retry-After") == "1" &&
                    r->Header("Connection") == "close" &&
                    absl::StrContains(r->body, "\"error\":\"server at its connection limit") &&
                    (*conn)->ExpectClosed(absl::Seconds(2)).ok();
    if (!ok) {
      *detail = absl::StrCat("status ", r->status, " body ", r->body);
      return Outcome::kOther;
    }
    return Outcome::k503;
  }

  absl::StatusOr<HeldStream> StartStream(int tokens, int delay_ms) {
    auto conn = HttpConnection::Connect(proxy_port(), absl::Seconds(5));
    if (!conn.ok()) return conn.status();
    absl::Status st = (*conn)->Send(BuildRequest("POST", "/api/generate",
                                                 {{"Content-Type", "application/json"},
                                                  {"X-Sim-Tokens", absl::StrCat(tokens)},
                                                  {"X-Sim-Token-Delay-Ms", absl::StrCat(delay_ms)}},
                                                 R"({"model":"sim","prompt":"hi"})"));
    if (!st.ok()) return st;
    auto head = (*conn)->ReadHead(absl::Seconds(5));
    if (!head.ok()) return head.status();
    if (head->status != 200) {
      return absl::InternalError(absl::StrCat("stream status ", head->status));
    }
    return HeldStream{std::move(*conn), std::move(*head)};
  }

  StubCounts Stub() {
    auto r = Exchange(proxy_port(), BuildRequest("GET", "/status"));
    if (!r.ok() || r->status != 200) return {};
    return ParseStub(r->body);
  }
};

// The cap is held by four streams; excess clients, one after another and
// many at once, are refused with 503 while the streams keep their pace.
TEST_F(Overload, ExcessGets503WhileAdmittedStreamsKeepTheirPace) {
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--max_connections=4"}));
  constexpr int kStreams = 4;
  constexpr int kTokens = 60;
  constexpr int kDelayMs = 20;
  std::vector<HeldStream> streams;
  for (int i = 0; i < kStreams; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(HeldStream s, StartStream(kTokens, kDelayMs));
    streams.push_back(std::move(s));
  }
  // Readers: every chunk's arrival, to bound the gaps while the excess is
  // refused.
  std::vector<std::vector<Chunk>> got(kStreams);
  std::vector<std::string> errors(kStreams);
  std::vector<std::thread> readers;
  for (int i = 0; i < kStreams; ++i) {
    readers.emplace_back([&, i] {
      absl::Time end = absl::Now() + absl::Seconds(20);
      while (absl::Now() < end) {
        auto c = streams[i].conn->ReadChunk(absl::Seconds(5));
        if (!c.ok()) {
          errors[i] = c.status().ToString();
          return;
        }
        if (c->data.empty()) return;
        got[i].push_back(std::move(*c));
      }
      errors[i] = "stream did not end in 20 s";
    });
  }

  // Excess: two threads of back-to-back clients for as long as the streams
  // run (bounded in count).
  std::atomic<int> n503{0}, dropped{0};
  std::mutex mu;
  std::vector<std::string> other;
  std::vector<std::thread> excess;
  const absl::Time stop = absl::Now() + absl::Milliseconds(kTokens * kDelayMs * 3 / 4);
  for (int t = 0; t < 2; ++t) {
    excess.emplace_back([&] {
      for (int i = 0; i < 400 && absl::Now() < stop; ++i) {
        std::string detail;
        switch (ExcessRequest(&detail)) {
          case Outcome::k503:
            ++n503;
            break;
          case Outcome::kDropped:
            ++dropped;
            break;
          case Outcome::kOther: {
            std::lock_guard<std::mutex> lock(mu);
            if (other.size() < 5) other.push_back(detail);
            break;
          }
        }
      }
    });
  }
  for (std::thread& t : excess) t.join();
  for (std::thread& t : readers) t.join();

  EXPECT_TRUE(other.empty()) << other.size() << " excess clients got something else, e.g. "
                             << (other.empty() ? "" : other[0]);
  // Two clients at a time never exceed the 503 allowance (16).
  EXPECT_GT(n503.load(), 20);
  EXPECT_EQ(dropped.load(), 0);
  const absl::Duration gap_bound = absl::Milliseconds(kDelayMs + 250) * TimingSlack();
  for (int i = 0; i < kStreams; ++i) {
    EXPECT_EQ(errors[i], "") << "stream " << i;
    std::string body;
    absl::Duration max_gap;
    for (size_t k = 0; k < got[i].size(); ++k) {
      body += got[i][k].data;
      if (k > 0) {
        max_gap =
            std::max(max_gap, absl::Microseconds(got[i][k].arrival_us - got[i][k - 1].arrival_us));
      }
    }
    EXPECT_TRUE(absl::StrContains(body, absl::StrCat("tok", kTokens, " ")) &&
                absl::StrContains(body, "\"done\":true"))
        << "stream " << i << " incomplete: " << body.size() << " bytes";
    EXPECT_LT(max_gap, gap_bound) << "stream " << i << ": an admitted stream stalled";
  }
  std::cout << "[ measure  ] 503s " << n503.load() << " during " << kStreams
            << " admitted streams\n";

  // The streams ended, their connections are still open (keepalive): the
  // cap is still held; closing them gives it back.
  std::string detail;
  EXPECT_EQ(ExcessRequest(&detail), Outcome::k503) << detail;
  streams.clear();
  absl::Time deadline = absl::Now() + absl::Seconds(3);
  int status = 0;
  int late503 = 0;  // asked before the worker saw the closes
  while (absl::Now() < deadline) {
    auto r = Exchange(proxy_port(), BuildRequest("GET", "/api/tags"));
    status = r.ok() ? r->status : 0;
    if (status == 200) break;
    late503 += status == 503;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(status, 200) << "capacity did not come back";

  // The refusals are counted.
  auto metrics = Exchange(proxy_port(), BuildRequest("GET", "/metrics"));
  ASSERT_TRUE(metrics.ok());
  EXPECT_TRUE(
      absl::StrContains(metrics->body, absl::StrCat("sluice_rejections_total{reason=\"overload\"} ",
                                                    n503.load() + 1 + late503, "\n")))
      << metrics->body;
}

// Past the 503 allowance (16 connections waiting for their answer), a
// socket is closed at accept; stub_status shows it as accepted, not handled.
TEST_F(Overload, PastTheAllowanceSocketsAreClosedAtAccept) {
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--max_connections=2"}));
  const StubCounts before = Stub();
  // Until the worker has seen that request's connection close, it holds
  // one of the two places.
  absl::SleepFor(absl::Milliseconds(300) * TimingSlack());
  std::vector<std::unique_ptr<HttpConnection>> held;
  for (int i = 0; i < 2 + 16; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(auto c, HttpConnection::Connect(proxy_port()));
    held.push_back(std::move(c));
  }
  // Let the worker take them all in before the next ones.
  absl::SleepFor(absl::Milliseconds(200) * TimingSlack());
  constexpr int kExtra = 10;
  int closed = 0;
  for (int i = 0; i < kExtra; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(auto c, HttpConnection::Connect(proxy_port()));
    if (c->ExpectClosed(absl::Seconds(2)).ok()) ++closed;
  }
  EXPECT_EQ(closed, kExtra);
  // One of the held over-limit connections still gets its 503.
  IT_ASSERT_OK(held.back()->Send(BuildRequest("GET", "/api/tags")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, held.back()->ReadResponse(absl::Seconds(5)));
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.Header("Retry-After"), "1");
  held.clear();
  absl::SleepFor(absl::Milliseconds(200));
  // Both stub_status requests are on connections of their own.
  const StubCounts after = Stub();
  ASSERT_GE(before.accepts, 0);
  ASSERT_GE(after.accepts, 0);
  EXPECT_EQ(after.accepts - before.accepts, 2 + 16 + kExtra + 1);
  EXPECT_EQ(after.handled - before.handled, 2 + 16 + 1);
  EXPECT_TRUE(absl::StrContains(sluice_->Stderr(), "at the connection cap")) << sluice_->Stderr();
}

// HTTP/2: every stream of an over-limit connection is answered 503 with
// retry-after, then the connection gets GOAWAY and closes.
TEST_F(Overload, Http2StreamsPastTheCapGet503ThenGoaway) {
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--max_connections=1", "--http_mode=serve"}));
  IT_ASSERT_OK_AND_ASSIGN(auto admitted, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(admitted->Send(BuildRequest("GET", "/api/version")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse first, admitted->ReadResponse());
  EXPECT_EQ(first.status, 200);

  IT_ASSERT_OK_AND_ASSIGN(auto h2c, h2::Connection::Connect(proxy_port()));
  IT_ASSERT_OK(h2c->Establish());
  std::string burst;
  for (uint32_t id : {1u, 3u, 5u}) {
    burst += h2::HeadersFrame(id, h2::HpackBlock(h2::RequestFields("GET", "/api/tags")),
                              /*end_stream=*/true);
  }
  IT_ASSERT_OK(h2c->Send(burst));
  h2::ReadOutcome seen = h2c->ReadUntilClosed(absl::Seconds(10));
  for (uint32_t id : {1u, 3u, 5u}) {
    EXPECT_EQ(seen.StatusOf(id), 503) << seen.Describe();
    bool retry_after = false;
    for (const h2::Frame& f : seen.frames) {
      if (f.type != h2::kHeaders || f.stream_id != id) continue;
      for (const auto& [n, v] : f.headers) retry_after |= n == "retry-after" && v == "1";
    }
    EXPECT_TRUE(retry_after) << "stream " << id;
  }
  EXPECT_TRUE(seen.GoawayCode().has_value()) << seen.Describe();
  EXPECT_TRUE(seen.closed) << seen.Describe();

  // The admitted connection is served on.
  IT_ASSERT_OK(admitted->Send(BuildRequest("GET", "/api/version")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse again, admitted->ReadResponse());
  EXPECT_EQ(again.status, 200);
}

// The cap is shared by the workers: with 2 workers and --max_connections=4
// each takes 2, whichever addresses the clients come from.
TEST_F(Overload, CapIsSharedByTheWorkers) {
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--max_connections=4", "--threads=2"}));
  // Hold connections from many source addresses until the refusals start;
  // the count admitted is then at most the cap (a worker's share may fill
  // first, so possibly fewer).
  std::vector<std::unique_ptr<HttpConnection>> held;
  int admitted = 0;
  for (int i = 0; i < 12; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(auto c, HttpConnection::Connect(proxy_port()));
    IT_ASSERT_OK(c->Send(BuildRequest("GET", "/api/version")));
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, c->ReadResponse(absl::Seconds(5)));
    if (r.status == 200) {
      ++admitted;
      held.push_back(std::move(c));
    } else {
      EXPECT_EQ(r.status, 503);
    }
  }
  EXPECT_GE(admitted, 2);
  EXPECT_LE(admitted, 4);
}

}  // namespace
}  // namespace sluice::integration
