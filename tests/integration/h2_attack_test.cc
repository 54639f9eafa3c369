// HTTP/2 attacks against the real binary in front of ollama-sim, with raw
// frames (h2_frames.h): Rapid Reset (plain and TLS), MadeYouReset, the
// CONTINUATION flood, an HPACK bomb, SETTINGS and PING floods from a client
// that does not read, a zero-window slow reader, a set of RFC 9113 MUSTs,
// and a thousand idle connections.
//
// Each attack asserts the protocol's answer (the GOAWAY or RST_STREAM code)
// and that the proxy stays bounded and keeps serving others while it runs:
//   - a probe thread (attack_probe.h) asks for GET /api/version every
//     100 ms from another address (127.0.0.2), alternating an HTTP/1.1
//     request and an h2c request on new connections to the same port;
//     every probe must get 200 within kProbeBound, and the probes' p99
//     must stay within P99Bound of the idle p99 (the larger of the same
//     probes' p99 over 2 s before the attack and that of control probes
//     sent meanwhile to an unattacked copy of the stack);
//   - sluice's VmRSS, sampled every 10 ms, stays under the baseline plus
//     kRssBoundKib (see there);
//   - sluice's CPU time (utime + stime) over the attack stays under a bound
//     per attack (each flood is bounded in count and time).
// The measured figures are printed as "[ measure  ]" lines, and one
// "[ attack   ]" line per attack (AttackLine) for tools/attack.sh.
//
// Every loop is bounded in count and in time; everything is on loopback.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/integration/attack_probe.h"
#include "tests/integration/h2_frames.h"
#include "tests/integration/proc_stats.h"
#include "tests/integration/prom_text.h"
#include "tests/integration/proxy_test_base.h"
#include "tests/integration/timing.h"

namespace sluice::integration {
namespace {

using h2::HeaderList;
using h2::ReadOutcome;

// A probe must be answered within this (the brief's 2 s; wider under a
// sanitizer). A proxy that one client can starve misses it by far: a
// single-threaded worker stuck in a flood answers nothing until it ends.
const absl::Duration kProbeBound = ProbeTimeout();

// RSS bound over the baseline. The baseline is taken after the receive
// buffer ring (4096 x 16 KiB = 64 MiB, mapped at start and touched as it is
// used) was cycled once by a warm-up upload, so the ring is in it already.
// What an attack may add is then heap: the codec's budget for ONE
// connection (h2_server_codec.h) is at most 8 MiB of request heads
// (128 streams x 64 KiB), 1 MiB of request bodies, 128 x (64 KiB + one
// upstream chunk) of queued responses, and a bounded output queue: about
// 18 MiB in the worst case. 64 MiB leaves room for the allocator's slack
// (glibc keeps freed arenas) while still catching growth that follows the
// flood's size (5000 streams x 64 KiB would be 312 MiB).
constexpr int64_t kRssBoundKib = 64 * 1024;

// ------------------------------------------------------------ floods

struct FloodResult {
  size_t sent = 0;          // units written completely
  ReadOutcome seen;         // what the server said meanwhile and after
  absl::Status send_error;  // why sending stopped early, if it did
  absl::Duration elapsed;
};

// Writes unit(0), unit(1), ... in batches of `batch`, up to `max_units` and
// `max_time`. With `watch`, reads the server's frames between batches and
// stops at its GOAWAY or close; without, it never reads (the client that
// does not read) and stops when the server stops taking bytes for
// `stall_timeout`.
FloodResult Flood(h2::Connection* c, const std::function<std::string(size_t)>& unit,
                  size_t max_units, size_t batch, absl::Duration max_time, bool watch,
                  absl::Duration stall_timeout = absl::Seconds(2)) {
  FloodResult r;
  absl::Time start = absl::Now();
  absl::Time end = start + max_time;
  c->set_read_while_sending(watch);
  while (r.sent < max_units && absl::Now() < end) {
    std::string bytes;
    size_t n = std::min(batch, max_units - r.sent);
    for (size_t i = 0; i < n; ++i) bytes += unit(r.sent + i);
    r.send_error = c->Send(bytes, std::min(stall_timeout, end - absl::Now()));
    if (!r.send_error.ok()) break;
    r.sent += n;
    if (watch) {
      ReadOutcome o = c->Poll();
      for (h2::Frame& f : o.frames) r.seen.frames.push_back(std::move(f));
      if (o.closed || r.seen.GoawayCode().has_value()) {
        r.seen.closed = o.closed;
        r.seen.close_error = o.close_error;
        break;
      }
    }
  }
  r.elapsed = absl::Now() - start;
  return r;
}

// Adds what the server sends until its GOAWAY or close (at most `timeout`).
void FinishReading(h2::Connection* c, ReadOutcome* seen, absl::Duration timeout) {
  if (seen->GoawayCode().has_value() || seen->closed) return;
  ReadOutcome more = c->ReadUntilGoaway(timeout);
  for (h2::Frame& f : more.frames) seen->frames.push_back(std::move(f));
  seen->closed = more.closed;
  seen->timed_out = more.timed_out;
  seen->close_error = more.close_error;
}

// The connection-level answer, for the "[ attack   ]" line:
// "GOAWAY(ENHANCE_YOUR_CALM)+close", "close", or "none".
std::string GoawayAnswer(const ReadOutcome& seen) {
  std::optional<uint32_t> code = seen.GoawayCode();
  std::string out = code ? absl::StrCat("GOAWAY(", h2::ErrorName(*code), ")") : "";
  if (seen.closed) absl::StrAppend(&out, out.empty() ? "" : "+", "close");
  return out.empty() ? "none" : out;
}

// A scratch directory with a CA and a server certificate for 127.0.0.1,
// made by tools/make-certs.sh.
std::string MakeCerts(const std::string& name) {
  std::string dir = absl::StrCat(::testing::TempDir(), "sluice-attack-", name, "-", getpid());
  CommandResult res =
      RunShell(absl::StrCat("rm -rf ", ShellQuote(dir), " && bash ", ShellQuote(SLUICE_SOURCE_DIR),
                            "/tools/make-certs.sh ", ShellQuote(dir)),
               absl::Seconds(30));
  EXPECT_TRUE(res.exit.exited && res.exit.code == 0) << res.out << res.err;
  return dir;
}

// ------------------------------------------------------------ fixture

class H2Attack : public ProxyTest {
 protected:
  void TearDown() override {
    prober_.reset();
    control_.reset();
    ProxyTest::TearDown();
  }

  // Starts the stack and its unattacked copy (ControlStack), cycles the
  // receive buffer ring once, measures the idle probes for 2 s, and records
  // the baseline RSS.
  void StartAttackStack(std::vector<std::string> sluice_args = {}, bool tls = false) {
    if (probe_.path == kStatusPath) {
      sluice_args.push_back("--status_allow=127.0.0.0/8");
    }
    if (tls) {
      certs_ = MakeCerts(::testing::UnitTest::GetInstance()->current_test_info()->name());
      sluice_args.push_back("--listen_tls=127.0.0.1:0");
      sluice_args.push_back(absl::StrCat("--tls_cert=", certs_, "/server.pem"));
      sluice_args.push_back(absl::StrCat("--tls_key=", certs_, "/server.key"));
    }
    ASSERT_NO_FATAL_FAILURE(StartStack({}, sluice_args));
    auto control = ControlStack::Start(sluice_args);
    ASSERT_TRUE(control.ok()) << "control stack: " << control.status();
    control_ = std::move(*control);
    probe_.port = proxy_port();
    probe_.control_port = control_->port();
    probe_.control_wait_pids = control_->pids();
    probe_.wait_pids = {sluice_->pid(), sim_->pid()};
    probe_.pid = sluice_->pid();
    ASSERT_NO_FATAL_FAILURE(WarmUp());
    idle_ = MeasureIdle(probe_);
    ASSERT_EQ(idle_.failed, 0) << "idle probes failed:\n" << absl::StrJoin(idle_.failures, "\n");
    baseline_ = SampleProc(sluice_->pid());
    ASSERT_GT(baseline_.rss_kib, 0);
    IT_ASSERT_OK_AND_ASSIGN(sim_before_, FetchSimStats(sim_port()));
  }

  // 72 MiB of frames of an unknown type, which HTTP/2 ignores (RFC 9113
  // 5.5): sluice reads them at full speed, each recv filling a whole 16 KiB
  // ring buffer, so all 4096 buffers (64 MiB) are touched once. Then one
  // request of each protocol.
  void WarmUp() {
    auto c = h2::Connection::Connect(proxy_port());
    ASSERT_TRUE(c.ok()) << c.status();
    IT_ASSERT_OK((*c)->Establish());
    const std::string frame = h2::BuildFrame(/*type=*/0xfa, 0, 0, std::string(16384, 'w'));
    std::string batch;
    for (int i = 0; i < 64; ++i) batch += frame;  // 1 MiB
    for (int i = 0; i < 72; ++i) IT_ASSERT_OK((*c)->Send(batch));
    auto status = (*c)->Get(1, "/api/version");
    ASSERT_TRUE(status.ok()) << status.status();
    ASSERT_EQ(*status, 200);
    ASSERT_NO_FATAL_FAILURE(ExpectServed("warm-up"));
  }

  int attack_port() const { return certs_.empty() ? proxy_port() : sluice_->tls_port(); }

  std::unique_ptr<h2::Connection> Open(
      const std::vector<std::pair<uint16_t, uint32_t>>& settings = {},
      h2::Connection::Options o = {}) {
    o.tls = !certs_.empty();
    auto c = h2::Connection::Connect(attack_port(), o);
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return nullptr;
    absl::Status st = (*c)->Establish(settings);
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) return nullptr;
    return std::move(*c);
  }

  void BeginAttack() {
    before_ = SampleProc(sluice_->pid());
    attack_start_ = absl::Now();
    prober_ = std::make_unique<Prober>(probe_);
    prober_->Start();
  }

  // Keeps probing for `after` once the attack ended ("right after"), then
  // checks the probes (the p99 over those started from `p99_from` on),
  // RSS and CPU, and prints the figures. `answer` is what the attack was
  // answered, for the "[ attack   ]" line (the test checks it).
  ProbeReport EndAttack(const std::string& name, const std::string& answer, double cpu_bound_s,
                        absl::Duration after = absl::Milliseconds(500),
                        absl::Time p99_from = absl::InfinitePast(),
                        bool bounds_under_sanitizer = true) {
    absl::SleepFor(after);
    AttackRun r;
    r.all = prober_->Stop();
    prober_.reset();
    r.name = name;
    r.answer = answer;
    r.idle = idle_;
    r.window = r.all.Between(p99_from);
    r.baseline = baseline_;
    r.before = before_;
    r.now = SampleProc(sluice_->pid());
    r.start = attack_start_;
    r.cpu_bound_s = cpu_bound_s;
    r.rss_bound_kib = kRssBoundKib;
    r.check_p99 = r.check_rss = bounds_under_sanitizer || TimingSlack() == 1;
    ReportAttack(r);
    ExpectServed(name);  // two more upstream requests
    return r.all;
  }

  // One request of each protocol, now.
  void ExpectServed(const std::string& when) {
    IT_ASSERT_OK_AND_ASSIGN(
        HttpResponse r, Exchange(proxy_port(), BuildRequest("GET", "/api/version"), kProbeBound));
    EXPECT_EQ(r.status, 200) << when;
    auto c = h2::Connection::Connect(proxy_port());
    ASSERT_TRUE(c.ok()) << c.status();
    IT_ASSERT_OK((*c)->Establish());
    auto status = (*c)->Get(1, "/api/version", kProbeBound);
    ASSERT_TRUE(status.ok()) << when << ": " << status.status();
    EXPECT_EQ(*status, 200) << when;
  }

  // Waits (up to `timeout`) until the simulator's counters satisfy `done`.
  SimStats WaitSim(const std::function<bool(const SimStats&)>& done,
                   absl::Duration timeout = absl::Seconds(3)) {
    absl::Time deadline = absl::Now() + timeout;
    SimStats s;
    while (true) {
      auto st = FetchSimStats(sim_port());
      if (st.ok()) s = *st;
      if ((st.ok() && done(s)) || absl::Now() > deadline) return s;
      absl::SleepFor(absl::Milliseconds(20));
    }
  }

  // Attacks whose own requests are generations load the simulator by
  // design; it runs them on one thread, where its work on a fast stream
  // or on 100 new links delays a probe's upstream request by 5-15 ms
  // (sluice's access log: request_time = upstream_response_time for those
  // probes). Their probes ask sluice's own stub_status page instead, so
  // that what they measure is the proxy's loop.
  static constexpr char kStatusPath[] = "/status";
  void ProbeTheProxyOnly() { probe_.path = kStatusPath; }

  std::string certs_;
  ProbeOptions probe_;  // 100 ms apart: the counts of upstream requests
                        // below allow about 10 probes a second
  ProbeReport idle_;
  ProcSample baseline_;
  ProcSample before_;
  absl::Time attack_start_;
  SimStats sim_before_;
  std::unique_ptr<Prober> prober_;
  std::unique_ptr<ControlStack> control_;
};

// Request fields of a GET answered at once by the simulator.
std::string VersionBlock() { return h2::HpackBlock(h2::RequestFields("GET", "/api/version")); }

// ------------------------------------------------------------ (1) Rapid Reset

// HEADERS + RST_STREAM(CANCEL) pairs (CVE-2023-44487), 5000 at most, 50
// per write. nghttp2's reset rate limit (burst 1000, 33/s) ends the
// connection; streams reset in the same read as their HEADERS never start
// an upstream request.
class H2RapidReset : public H2Attack {
 protected:
  void Run(const std::string& name) {
    std::unique_ptr<h2::Connection> c = Open();
    ASSERT_NE(c, nullptr);
    if (!certs_.empty()) {
      EXPECT_EQ(c->alpn(), "h2");
    }
    constexpr size_t kPairs = 5000;
    const std::string block = VersionBlock();
    BeginAttack();
    FloodResult r = Flood(
        c.get(),
        [&block](size_t i) {
          uint32_t id = static_cast<uint32_t>(2 * i + 1);
          return absl::StrCat(h2::HeadersFrame(id, block, true),
                              h2::RstStreamFrame(id, h2::kCancel));
        },
        kPairs, /*batch=*/50, absl::Seconds(10), /*watch=*/true);
    FinishReading(c.get(), &r.seen, absl::Seconds(3));
    EndAttack(name, GoawayAnswer(r.seen), /*cpu_bound_s=*/2.0);

    std::optional<uint32_t> code = r.seen.GoawayCode();
    SimStats after = WaitSim([](const SimStats&) { return true; });
    const int64_t upstream = after.requests - sim_before_.requests;
    std::cout << "[ measure  ] " << name << ": " << r.sent << " pairs sent in "
              << absl::ToDoubleMilliseconds(r.elapsed) << " ms; GOAWAY "
              << (code ? h2::ErrorName(*code) : std::string("none")) << "; closed " << r.seen.closed
              << "; upstream requests " << upstream << " (probes included)" << std::endl;
    // The connection is ended: GOAWAY with a calm-down verdict
    // (ENHANCE_YOUR_CALM, or INTERNAL_ERROR, which is what nghttp2's own
    // reset limiter sends), or at least closed.
    ASSERT_TRUE(code.has_value() || r.seen.closed) << r.seen.Describe();
    if (code.has_value()) {
      EXPECT_TRUE(*code == h2::kEnhanceYourCalm || *code == h2::kInternalError)
          << h2::ErrorName(*code);
    }
    // The socket buffers take the whole flood at once; the GOAWAY's last
    // stream id says how far the server went before it stopped reading.
    if (code.has_value()) {
      uint32_t last = 0;
      for (const h2::Frame& f : r.seen.frames) {
        if (f.type == h2::kGoaway) last = f.LastStreamId();
      }
      std::cout << "[ measure  ] " << name << ": GOAWAY last stream " << last << " ("
                << (last + 1) / 2 << " of " << kPairs << " streams processed)" << std::endl;
      EXPECT_LT(last, 2 * kPairs - 1) << "the whole flood was processed";
    }
    // Few of the streams reached Ollama: most were reset in the read that
    // opened them. The probes add about 10 per second.
    EXPECT_LT(upstream, static_cast<int64_t>(r.sent) / 10 + 50);
  }
};

TEST_F(H2RapidReset, FloodOnH2cIsCutOff) {
  ASSERT_NO_FATAL_FAILURE(StartAttackStack());
  Run("rapid reset (h2c)");
}

TEST_F(H2RapidReset, FloodOverTlsIsCutOff) {
  ASSERT_NO_FATAL_FAILURE(StartAttackStack({}, /*tls=*/true));
  Run("rapid reset (TLS)");
}

// ------------------------------------------------------------ (2) MadeYouReset

// CVE-2025-8671: the client makes the SERVER reset streams whose upstream
// work already started, with frames that are stream errors. Two kinds
// (nghttp2 answers WINDOW_UPDATE of 0 and DATA on a half-closed stream with
// connection errors, which are no use to the attacker):
//   - a stream window overflow (WINDOW_UPDATE of 2^31-1 on a
//     half-closed(remote) stream whose generation is streaming):
//     RST_STREAM(FLOW_CONTROL_ERROR);
//   - more DATA than the stream's Content-Length (1) on a POST whose
//     upstream request is open: RST_STREAM(PROTOCOL_ERROR).
// Rounds of 50 + 50 streams (under the 128 concurrent streams); the bad
// frames come after the upstream requests started. The sent-reset bucket
// (200 per 10 s) ends the connection with ENHANCE_YOUR_CALM, and every
// upstream link the attack opened is closed.
TEST_F(H2Attack, MadeYouResetEndsWithEnhanceYourCalm) {
  ProbeTheProxyOnly();
  ASSERT_NO_FATAL_FAILURE(StartAttackStack());
  std::unique_ptr<h2::Connection> c = Open();
  ASSERT_NE(c, nullptr);
  // Long generations: none completes during the test, so each upstream
  // request is either aborted or still active.
  const HeaderList slow = {{"x-sim-tokens", "100"}, {"x-sim-token-delay-ms", "1000"}};
  const std::string streaming = h2::HpackBlock(h2::RequestFields("POST", "/api/generate", slow));
  HeaderList with_length = slow;
  with_length.emplace_back("content-length", "1");
  const std::string awaiting_body =
      h2::HpackBlock(h2::RequestFields("POST", "/api/generate", with_length));
  constexpr int kRounds = 10;
  constexpr int kHalf = 50;
  BeginAttack();
  absl::Time start = absl::Now();
  ReadOutcome seen;
  int rounds = 0;
  int bad_frames = 0;
  uint32_t next_id = 1;
  auto keep = [&seen](ReadOutcome o) {
    for (h2::Frame& f : o.frames) seen.frames.push_back(std::move(f));
    seen.closed = o.closed;
    seen.close_error = o.close_error;
    return !o.closed && !seen.GoawayCode().has_value();
  };
  for (; rounds < kRounds && absl::Now() - start < absl::Seconds(10); ++rounds) {
    std::string open;
    std::vector<uint32_t> streaming_ids, body_ids;
    for (int i = 0; i < kHalf; ++i) {
      streaming_ids.push_back(next_id);
      open += h2::HeadersFrame(next_id, streaming, /*end_stream=*/true);
      next_id += 2;
      body_ids.push_back(next_id);
      open += h2::HeadersFrame(next_id, awaiting_body, /*end_stream=*/false);
      next_id += 2;
    }
    if (!c->Send(open).ok()) break;
    // The streaming ones answer with their head once upstream; the others
    // have their upstream request open, waiting for the body.
    if (!keep(c->ReadUntil(
            [n = 0](const h2::Frame& f) mutable {
              return f.type == h2::kGoaway || (f.type == h2::kHeaders && ++n == kHalf);
            },
            absl::Seconds(3)))) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(50));
    std::string bad;
    for (int i = 0; i < kHalf; ++i) {
      bad += h2::WindowUpdateFrame(streaming_ids[i], 0x7fffffff);
      bad += h2::DataFrame(body_ids[i], "xy", /*end_stream=*/true);
    }
    if (!c->Send(bad).ok()) break;
    bad_frames += 2 * kHalf;
    if (!keep(c->ReadUntil(
            [n = 0](const h2::Frame& f) mutable {
              return f.type == h2::kGoaway || (f.type == h2::kRstStream && ++n == 2 * kHalf);
            },
            absl::Seconds(3)))) {
      break;
    }
  }
  FinishReading(c.get(), &seen, absl::Seconds(3));
  EndAttack("MadeYouReset",
            absl::StrCat("RST_STREAMx", seen.Count(h2::kRstStream), ",", GoawayAnswer(seen)),
            /*cpu_bound_s=*/2.0);

  std::optional<uint32_t> code = seen.GoawayCode();
  size_t rst_protocol = 0, rst_flow = 0;
  for (const h2::Frame& f : seen.frames) {
    if (f.type != h2::kRstStream) continue;
    if (f.ErrorCode() == h2::kProtocolError) ++rst_protocol;
    if (f.ErrorCode() == h2::kFlowControlError) ++rst_flow;
  }
  SimStats s = WaitSim([this](const SimStats& s) {
    return s.aborted_streams - sim_before_.aborted_streams >= kHalf &&
           s.active <= sim_before_.active + 2;
  });
  const int64_t started = s.requests - sim_before_.requests;
  const int64_t aborted = s.aborted_streams - sim_before_.aborted_streams;
  std::cout << "[ measure  ] MadeYouReset: " << bad_frames << " stream-error frames in "
            << rounds + 1 << " round(s); RST_STREAM " << rst_protocol << " PROTOCOL_ERROR + "
            << rst_flow << " FLOW_CONTROL_ERROR; GOAWAY "
            << (code ? h2::ErrorName(*code) : std::string("none")) << "; upstream requests "
            << started << " (probes included), "
            << "aborted " << aborted << ", sim connections active " << sim_before_.active << " -> "
            << s.active << std::endl;
  ASSERT_TRUE(code.has_value()) << seen.Describe();
  EXPECT_EQ(*code, h2::kEnhanceYourCalm) << seen.Describe();
  // The RFC's answer to each bad frame until the bucket ran out.
  EXPECT_GT(rst_protocol, 0u);
  EXPECT_GT(rst_flow, 0u);
  EXPECT_LE(rst_protocol + rst_flow, 200u + 2 * kHalf);
  EXPECT_LE(bad_frames, 400) << "the bucket did not stop the attack";
  // The upstream work had started, and none of it goes on for nobody: the
  // streaming generations were aborted, and every link the attack opened
  // (those waiting for a body too) is closed.
  EXPECT_GE(aborted, kHalf);
  EXPECT_LE(s.active, sim_before_.active + 2)
      << "upstream links stay open after their streams were reset";
}

// ------------------------------------------------------------ (3) CONTINUATION

// CVE-2024-28182: HEADERS without END_HEADERS, then CONTINUATION frames
// that never end the block, 10000 at most: frames of one small field each,
// empty frames (which cost the client nothing), and 16 KiB frames of one
// large field each. The codec allows 8 CONTINUATIONs per block.
TEST_F(H2Attack, ContinuationFloodGetsGoaway) {
  ASSERT_NO_FATAL_FAILURE(StartAttackStack());
  BeginAttack();
  struct Variant {
    const char* name;
    std::string payload;
  };
  const Variant variants[] = {{"field per frame", h2::HpackLiteral("x-c", std::string(100, 'c'))},
                              {"empty frames", ""},
                              {"16 KiB frames", h2::HpackLiteral("x-c", std::string(16370, 'c'))}};
  std::vector<std::pair<std::string, FloodResult>> results;
  for (const Variant& v : variants) {
    std::unique_ptr<h2::Connection> c = Open();
    ASSERT_NE(c, nullptr);
    const std::string head =
        h2::HeadersFrame(1, VersionBlock(), /*end_stream=*/true, /*end_headers=*/false);
    ASSERT_TRUE(c->Send(head).ok());
    FloodResult r = Flood(
        c.get(),
        [&v](size_t) { return h2::ContinuationFrame(1, v.payload, /*end_headers=*/false); },
        /*max_units=*/10000, /*batch=*/100, absl::Seconds(5), /*watch=*/true);
    FinishReading(c.get(), &r.seen, absl::Seconds(3));
    results.emplace_back(v.name, std::move(r));
  }
  std::vector<std::string> answers;
  for (const auto& [name, r] : results) answers.push_back(GoawayAnswer(r.seen));
  EndAttack("CONTINUATION flood", absl::StrJoin(answers, ","),
            /*cpu_bound_s=*/1.0);
  for (const auto& [name, r] : results) {
    std::optional<uint32_t> code = r.seen.GoawayCode();
    std::cout << "[ measure  ] CONTINUATION flood (" << name << "): " << r.sent
              << " frames sent in " << absl::ToDoubleMilliseconds(r.elapsed) << " ms; GOAWAY "
              << (code ? h2::ErrorName(*code) : std::string("none")) << std::endl;
    ASSERT_TRUE(code.has_value()) << name << "\n" << r.seen.Describe();
    EXPECT_EQ(*code, h2::kEnhanceYourCalm) << name << "\n" << r.seen.Describe();
    // Nothing of the stream was answered: the block never completed.
    EXPECT_EQ(r.seen.StatusOf(1), 0) << name;
  }
  // None of it went upstream (the probes did, about 10 per second).
  SimStats s = WaitSim([](const SimStats&) { return true; });
  EXPECT_LT(s.requests - sim_before_.requests, 30);
}

// ------------------------------------------------------------ (4) HPACK bomb

// One 4000-byte field enters the dynamic table (4038 bytes of its 4096),
// then the block references it by index (1 byte each) until the frame and 7
// CONTINUATIONs are full: about 126 000 references, 500 MB of decoded
// header list from 128 KiB on the wire. 20 such requests in a row. Each
// must be refused without going upstream: 431 (RFC 9113 10.5.1), or
// RST_STREAM, or a GOAWAY that ends the attack; and cheaply.
TEST_F(H2Attack, HpackBombIsRefusedCheaply) {
  ASSERT_NO_FATAL_FAILURE(StartAttackStack());
  std::unique_ptr<h2::Connection> c = Open();
  ASSERT_NE(c, nullptr);
  constexpr int kRequests = 20;
  constexpr size_t kFrame = 16384;
  const std::string big(4000, 'b');
  BeginAttack();
  absl::Time start = absl::Now();
  int answered_431 = 0;
  int reset = 0;
  std::optional<uint32_t> goaway;
  ReadOutcome all;
  for (int i = 0; i < kRequests && absl::Now() - start < absl::Seconds(10); ++i) {
    const uint32_t id = static_cast<uint32_t>(2 * i + 1);
    std::string first = absl::StrCat(VersionBlock(), h2::HpackLiteralIndexed("x-bomb", big));
    first.append(kFrame - first.size(), '\xbe');  // indexed 62
    std::string bytes = h2::HeadersFrame(id, first, /*end_stream=*/true, /*end_headers=*/false);
    for (int k = 0; k < 7; ++k) {
      bytes += h2::ContinuationFrame(id, std::string(kFrame, '\xbe'),
                                     /*end_headers=*/k == 6);
    }
    absl::Status st = c->Send(bytes);
    ASSERT_TRUE(st.ok()) << "request " << i << ": " << st;
    ReadOutcome o = c->ReadUntilStreamEnd(id, absl::Seconds(5));
    const int status = o.StatusOf(id);
    goaway = o.GoawayCode();
    const bool was_reset = o.ResetCode(id).has_value();
    for (h2::Frame& f : o.frames) all.frames.push_back(std::move(f));
    if (status == 431) {
      ++answered_431;
      continue;
    }
    // Otherwise a stream or connection error is an acceptable answer too,
    // but not a request sent on, nor silence.
    ASSERT_TRUE(was_reset || goaway.has_value()) << "request " << i << ": status " << status << "\n"
                                                 << o.Describe();
    if (goaway.has_value()) break;
    ++reset;
  }
  const absl::Duration took = absl::Now() - start;
  // 2.5 MiB on the wire. Decoding 126 000 indexed fields costs a few ms per
  // request; 1 s is far above that and far below validating 500 MB of
  // field values per request.
  EndAttack(
      "HPACK bomb",
      absl::StrCat("431x", answered_431, ",RST_STREAMx", reset,
                   goaway ? absl::StrCat(",GOAWAY(", h2::ErrorName(*goaway), ")") : std::string()),
      /*cpu_bound_s=*/1.0);
  std::cout << "[ measure  ] HPACK bomb: " << answered_431 << " of " << kRequests
            << " answered 431, " << reset << " reset, GOAWAY "
            << (goaway ? h2::ErrorName(*goaway) : std::string("none")) << ", in "
            << absl::ToDoubleMilliseconds(took) << " ms (about "
            << 126000LL * 4038 * (answered_431 + reset) / (1 << 20)
            << " MiB of header list, decoded size)" << std::endl;
  EXPECT_TRUE(answered_431 + reset == kRequests || goaway.has_value()) << all.Describe();
  // None of them went upstream (the probes did).
  SimStats s = WaitSim([](const SimStats&) { return true; });
  EXPECT_LT(s.requests - sim_before_.requests,
            static_cast<int64_t>(absl::ToDoubleSeconds(took) * 10 + 20));
}

// ------------------------------------------------------------ (5) floods

// A client that sends SETTINGS or PING frames and never reads the ACKs. Its
// 4 KiB receive buffer fills at once; then the ACKs pile up in the server.
// The codec's bound on queued ACKs (1000) ends the connection with
// ENHANCE_YOUR_CALM and stops reading; with --send_timeout=2s the stalled
// connection is closed.
class H2AckFlood : public H2Attack {
 protected:
  void Run(const std::string& name, const std::string& frame) {
    ASSERT_NO_FATAL_FAILURE(StartAttackStack({"--send_timeout=2s"}));
    h2::Connection::Options o;
    o.recv_buffer = 4096;
    std::unique_ptr<h2::Connection> c = Open({}, o);
    ASSERT_NE(c, nullptr);
    constexpr size_t kFrames = 200000;
    BeginAttack();
    FloodResult r = Flood(
        c.get(), [&frame](size_t) { return frame; }, kFrames,
        /*batch=*/1000, absl::Seconds(5), /*watch=*/false,
        /*stall_timeout=*/absl::Milliseconds(500));
    const absl::Time flood_end = absl::Now();
    // Now read: whatever the server managed to send, then the close.
    ReadOutcome seen = c->ReadUntilClosed(absl::Seconds(6));
    const absl::Duration to_close = absl::Now() - flood_end;
    EndAttack(name, GoawayAnswer(seen), /*cpu_bound_s=*/2.0);
    std::optional<uint32_t> code = seen.GoawayCode();
    size_t acks = 0;
    for (const h2::Frame& f : seen.frames) {
      if ((f.type == h2::kPing || f.type == h2::kSettings) && (f.flags & h2::kFlagAck) != 0) {
        ++acks;
      }
    }
    std::cout << "[ measure  ] " << name << ": " << r.sent << " frames taken in "
              << absl::ToDoubleMilliseconds(r.elapsed) << " ms ("
              << (r.send_error.ok() ? std::string("all sent") : std::string(r.send_error.message()))
              << "); then " << acks << " ACKs read, GOAWAY "
              << (code ? h2::ErrorName(*code) : std::string("none")) << ", closed " << seen.closed
              << " (" << seen.close_error << ") after " << absl::ToDoubleMilliseconds(to_close)
              << " ms" << std::endl;
    // The socket buffers take much of the flood whether or not the server
    // reads; what counts is that it did not answer it frame for frame (its
    // queue of unsent ACKs is capped at 1000), and that the connection
    // ended soon after, not at the send timeout.
    EXPECT_LT(acks, kFrames / 20) << seen.Describe();
    EXPECT_TRUE(seen.closed) << seen.Describe();
    EXPECT_LT(to_close, absl::Seconds(3));
    if (code.has_value()) {
      EXPECT_EQ(*code, h2::kEnhanceYourCalm);
    }
  }
};

TEST_F(H2AckFlood, PingFloodWithoutReadingIsClosed) { Run("PING flood", h2::PingFrame(0x5eed)); }

TEST_F(H2AckFlood, SettingsFloodWithoutReadingIsClosed) {
  Run("SETTINGS flood", h2::SettingsFrame({{h2::kSettingsInitialWindowSize, 65535}}));
}

// ------------------------------------------------------------ slow body

// R.U.D.Y. over HTTP/2: 10 streams on one connection, each POST
// /api/generate announcing content-length 100000, whose DATA comes one byte
// every 500 ms for 2 s and then stops. Expected, as over HTTP/1.1: after
// --client_body_timeout (2 s here) without a DATA frame, each stream is
// answered 408 with a JSON body and its upstream request is abandoned (the
// simulator's link closed); the connection itself stays up and keeps
// serving, and DATA the client still sends on the answered streams is
// taken without a connection error. The 500 ms trickle stays under the
// timeout; the stall after it does not.
TEST_F(H2Attack, SlowPostBodyStreamsGet408AtTheBodyTimeout) {
  constexpr int kStreams = 10;
  const absl::Duration kTimeout = absl::Seconds(2);
  ASSERT_NO_FATAL_FAILURE(StartAttackStack({"--client_body_timeout=2s"}));
  std::unique_ptr<h2::Connection> c = Open();
  ASSERT_NE(c, nullptr);
  const std::string block = h2::HpackBlock(
      h2::RequestFields("POST", "/api/generate",
                        {{"content-type", "application/json"}, {"content-length", "100000"}}));
  std::vector<uint32_t> ids;
  std::string open;
  for (int i = 0; i < kStreams; ++i) {
    const uint32_t id = 1 + 2 * static_cast<uint32_t>(i);
    ids.push_back(id);
    open += h2::HeadersFrame(id, block, /*end_stream=*/false);
    open += h2::DataFrame(id, "{", /*end_stream=*/false);
  }
  BeginAttack();
  IT_ASSERT_OK(c->Send(open));
  // Every upstream request started (the head went on) before the trickle.
  const SimStats during =
      WaitSim([this](const SimStats& s) { return s.active >= sim_before_.active + kStreams; });
  ReadOutcome seen;
  auto keep = [&seen](ReadOutcome o) {
    for (h2::Frame& f : o.frames) seen.frames.push_back(std::move(f));
    seen.closed = seen.closed || o.closed;
  };
  const std::string trickle = "\"model\":\"sim\"";
  absl::Time last_byte;
  for (int k = 0; k < 4; ++k) {
    absl::SleepFor(absl::Milliseconds(500));
    std::string bytes;
    for (uint32_t id : ids) {
      bytes += h2::DataFrame(id, trickle.substr(k, 1), /*end_stream=*/false);
    }
    IT_ASSERT_OK(c->Send(bytes));
    last_byte = absl::Now();
    keep(c->Poll());
  }
  const size_t answered_during_trickle = seen.Count(h2::kHeaders);
  // Then nothing: every stream ends (END_STREAM or RST_STREAM) by itself.
  std::set<uint32_t> ended;
  auto note_end = [&ended](const h2::Frame& f) {
    if (f.type == h2::kRstStream ||
        ((f.type == h2::kData || f.type == h2::kHeaders) && (f.flags & h2::kFlagEndStream) != 0)) {
      ended.insert(f.stream_id);
    }
  };
  for (const h2::Frame& f : seen.frames) note_end(f);
  keep(c->ReadUntil(
      [&](const h2::Frame& f) {
        note_end(f);
        return f.type == h2::kGoaway || ended.size() >= kStreams;
      },
      last_byte + kTimeout + absl::Seconds(3) * TimingSlack() - absl::Now()));
  // DATA on the answered streams (the client had not seen the answer yet)
  // is no connection error, and the connection serves a new stream.
  std::string late;
  for (uint32_t id : ids) late += h2::DataFrame(id, "x", /*end_stream=*/false);
  IT_ASSERT_OK(c->Send(late));
  absl::StatusOr<int> next = c->Get(1 + 2 * kStreams, "/api/version");
  keep(c->Poll());

  std::map<std::string, int> tally;
  std::vector<absl::Duration> after_stall;
  for (uint32_t id : ids) {
    const int status = seen.StatusOf(id);
    std::string body;
    absl::Time answered = absl::InfinitePast();
    for (const h2::Frame& f : seen.frames) {
      if (f.stream_id != id) continue;
      if (f.type == h2::kData) body += f.payload;
      if (f.type == h2::kHeaders && answered == absl::InfinitePast()) {
        answered = f.arrival;
      }
    }
    std::optional<uint32_t> rst = seen.ResetCode(id);
    ++tally[absl::StrCat(
        status, rst ? absl::StrCat("+RST_STREAM(", h2::ErrorName(*rst), ")") : std::string())];
    EXPECT_EQ(status, 408) << "stream " << id << "\n" << seen.Describe();
    EXPECT_TRUE(absl::StrContains(body, R"("error":"request body timeout")"))
        << "stream " << id << ": " << body;
    // A complete answer: if the stream is reset after it, only to tell the
    // client to stop sending (RFC 9113 8.1).
    if (rst) {
      EXPECT_EQ(*rst, h2::kNoError) << "stream " << id;
    }
    if (status != 0) after_stall.push_back(answered - last_byte);
  }
  EndAttack("slow POST body (h2)", Tally(tally), /*cpu_bound_s=*/0.5);
  const SimStats after =
      WaitSim([this](const SimStats& s) { return s.active <= sim_before_.active; });
  std::cout << "[ measure  ] slow POST body (h2): " << kStreams
            << " streams at 2 bytes/s then stalled; " << Tally(tally) << "; sim links active "
            << sim_before_.active << " -> " << during.active << " -> " << after.active
            << "; answered " << MsText(Percentile(after_stall, 0.01)) << " to "
            << MsText(Percentile(after_stall, 1.0)) << " ms after the last byte" << std::endl;
  EXPECT_EQ(answered_during_trickle, 0u) << "a stream was answered while its body still trickled:\n"
                                         << seen.Describe();
  EXPECT_FALSE(seen.GoawayCode().has_value()) << seen.Describe();
  EXPECT_FALSE(seen.closed) << seen.Describe();
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(*next, 200);
  EXPECT_EQ(during.active, sim_before_.active + kStreams) << "the upstream requests did not start";
  for (absl::Duration d : after_stall) EXPECT_PRED2(AtTimeout, d, kTimeout);
  // The upstream links of the abandoned requests are closed.
  EXPECT_LE(after.active, sim_before_.active);
}

// ------------------------------------------------------------ (6) slow reader

// SETTINGS_INITIAL_WINDOW_SIZE = 0 and a long streaming generation: the
// response head comes (HEADERS are not flow-controlled), no DATA can. With
// --send_timeout=2s the stalled connection is closed after about 2 s, and
// its upstream link with it.
TEST_F(H2Attack, ZeroWindowReaderIsClosedAfterSendTimeout) {
  ProbeTheProxyOnly();
  ASSERT_NO_FATAL_FAILURE(StartAttackStack({"--send_timeout=2s"}));
  std::unique_ptr<h2::Connection> c = Open({{h2::kSettingsInitialWindowSize, 0}});
  ASSERT_NE(c, nullptr);
  BeginAttack();
  absl::Time start = absl::Now();
  ASSERT_TRUE(
      c->Send(h2::HeadersFrame(1,
                               h2::HpackBlock(h2::RequestFields(
                                   "POST", "/api/generate",
                                   {{"x-sim-tokens", "100000"}, {"x-sim-token-delay-ms", "1"}})),
                               /*end_stream=*/true))
          .ok());
  ReadOutcome seen = c->ReadUntilClosed(absl::Seconds(8));
  const absl::Duration to_close = absl::Now() - start;
  EndAttack("zero-window reader",
            absl::StrCat(seen.StatusOf(1), "+DATAx", seen.Count(h2::kData), "+",
                         seen.closed ? "close" : "open", "_after_",
                         absl::StrFormat("%.1f", absl::ToDoubleSeconds(to_close)), "s"),
            /*cpu_bound_s=*/1.0, absl::Milliseconds(200));
  const SimStats s = WaitSim(
      [this](const SimStats& s) { return s.aborted_streams > sim_before_.aborted_streams; });
  std::cout << "[ measure  ] zero-window reader: closed " << seen.closed << " after "
            << absl::ToDoubleMilliseconds(to_close) << " ms; DATA frames " << seen.Count(h2::kData)
            << "; upstream aborted " << s.aborted_streams - sim_before_.aborted_streams
            << ", sim active " << sim_before_.active << " -> " << s.active << std::endl;
  EXPECT_EQ(seen.StatusOf(1), 200) << seen.Describe();
  EXPECT_EQ(seen.Count(h2::kData), 0u) << "DATA sent into a zero window";
  ASSERT_TRUE(seen.closed) << seen.Describe();
  EXPECT_GE(to_close, absl::Milliseconds(1500));
  EXPECT_LE(to_close, absl::Milliseconds(4000) * TimingSlack());
  EXPECT_GE(s.aborted_streams - sim_before_.aborted_streams, 1)
      << "the upstream generation goes on for nobody";
}

// The same stall at the TCP level: a 4 KiB receive buffer that is never
// read, under a fast stream.
TEST_F(H2Attack, ClientThatStopsReadingIsClosedAfterSendTimeout) {
  ProbeTheProxyOnly();
  ASSERT_NO_FATAL_FAILURE(StartAttackStack({"--send_timeout=2s"}));
  h2::Connection::Options o;
  o.recv_buffer = 4096;
  std::unique_ptr<h2::Connection> c = Open({}, o);
  ASSERT_NE(c, nullptr);
  BeginAttack();
  absl::Time start = absl::Now();
  ASSERT_TRUE(
      c->Send(h2::HeadersFrame(1,
                               h2::HpackBlock(h2::RequestFields("POST", "/api/generate",
                                                                {{"x-sim-tokens", "100000"},
                                                                 {"x-sim-token-delay-ms", "0.2"},
                                                                 {"x-sim-chunk-pad", "1000"}})),
                               /*end_stream=*/true))
          .ok());
  // Not reading: wait for the server's verdict on the stalled connection,
  // visible as the simulator's abort.
  const SimStats s =
      WaitSim([this](const SimStats& s) { return s.aborted_streams > sim_before_.aborted_streams; },
              absl::Seconds(8));
  const absl::Duration to_abort = absl::Now() - start;
  EndAttack("TCP-stalled reader",
            absl::StrCat(s.aborted_streams > sim_before_.aborted_streams ? "upstream_aborted"
                                                                         : "upstream_not_aborted",
                         "_after_", absl::StrFormat("%.1f", absl::ToDoubleSeconds(to_abort)), "s"),
            /*cpu_bound_s=*/1.5, absl::Milliseconds(200));
  std::cout << "[ measure  ] TCP-stalled reader: upstream aborted after "
            << absl::ToDoubleMilliseconds(to_abort) << " ms" << std::endl;
  ASSERT_GT(s.aborted_streams, sim_before_.aborted_streams)
      << "the stalled connection was never closed";
  EXPECT_GE(to_abort, absl::Milliseconds(1500));
  EXPECT_LE(to_abort, absl::Milliseconds(4500) * TimingSlack());
  // What reached the client's buffer, then the end.
  ReadOutcome seen = c->ReadUntilClosed(absl::Seconds(3));
  EXPECT_TRUE(seen.closed) << seen.Describe();
}

// Streams that never open their window, on long generations of small
// token chunks (2 ms apart): each chunk used to stay queued as a view of
// its own 16 KiB receive buffer, so about ten such streams emptied the
// worker's buffer ring and no socket of the worker could be read any more,
// not even the attacker's FIN. Now waiting chunks are copies, held streams
// pause their upstream at 64 KiB or 96 pieces, and the ring copies out of
// itself when it runs low: the probe (another address, same worker) is
// served throughout, and once the attacker closes, every upstream link,
// fd and receive buffer is back within a second.
struct ZeroWindowCase {
  const char* name;
  bool tls;
  int connections;
  int streams;
};

class H2ZeroWindowStreams : public H2Attack, public ::testing::WithParamInterface<ZeroWindowCase> {
 protected:
  // sluice_recv_buffers_in_use (-1 when the scrape failed).
  int64_t BuffersInUse() {
    auto families = ScrapeMetrics(proxy_port());
    if (!families.ok()) return -1;
    std::optional<double> v = FindSample(*families, "sluice_recv_buffers_in_use", {});
    return v.has_value() ? static_cast<int64_t>(*v) : -1;
  }
};

TEST_P(H2ZeroWindowStreams, DoNotDrainTheBufferRing) {
  const ZeroWindowCase& k = GetParam();
  ProbeTheProxyOnly();
  ASSERT_NO_FATAL_FAILURE(StartAttackStack({}, k.tls));
  const int64_t buffers_before = BuffersInUse();
  ASSERT_GE(buffers_before, 0);
  BeginAttack();
  std::vector<std::unique_ptr<h2::Connection>> conns;
  for (int c = 0; c < k.connections; ++c) {
    std::unique_ptr<h2::Connection> conn = Open({{h2::kSettingsInitialWindowSize, 0}});
    ASSERT_NE(conn, nullptr);
    std::string frames;
    for (int i = 0; i < k.streams; ++i) {
      frames += h2::HeadersFrame(
          static_cast<uint32_t>(2 * i + 1),
          h2::HpackBlock(h2::RequestFields(
              "POST", "/api/generate", {{"x-sim-tokens", "20000"}, {"x-sim-token-delay-ms", "2"}})),
          /*end_stream=*/true);
    }
    IT_ASSERT_OK(conn->Send(frames));
    conns.push_back(std::move(conn));
  }
  // Long enough for every stream to fill its queue (64 KiB of ~120-byte
  // chunks at 2 ms is about 1 s) and for the old ring to run dry.
  int64_t peak = 0;
  const absl::Time hold_until = absl::Now() + absl::Seconds(4);
  while (absl::Now() < hold_until) {
    absl::SleepFor(absl::Milliseconds(400));
    const int64_t in_use = BuffersInUse();
    EXPECT_GE(in_use, 0) << "/metrics not served during the attack";
    peak = std::max(peak, in_use);
    for (auto& c : conns) c->Poll();  // frames read, windows still shut
  }
  const absl::Time closed_at = absl::Now();
  for (auto& c : conns) c->Close();
  conns.clear();
  // Everything the attacker held is released within a second.
  const int64_t expected_links = sim_before_.active;
  int64_t in_use_after = -1;
  ProcSample proc;
  SimStats sim;
  const absl::Time deadline = closed_at + absl::Seconds(1) * TimingSlack();
  while (true) {
    in_use_after = BuffersInUse();
    proc = SampleProc(sluice_->pid());
    auto st = FetchSimStats(sim_port());
    if (st.ok()) sim = *st;
    const bool back = in_use_after >= 0 && in_use_after <= buffers_before + 4 &&
                      proc.fds <= baseline_.fds && st.ok() && sim.active <= expected_links;
    if (back || absl::Now() > deadline) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  const absl::Duration release = absl::Now() - closed_at;
  EndAttack(absl::StrCat("zero-window streams ", k.name),
            absl::StrCat("peak_buffers_", peak, "+released_in_",
                         absl::StrFormat("%.2f", absl::ToDoubleSeconds(release)), "s"),
            /*cpu_bound_s=*/6.0 * k.connections, absl::Milliseconds(300), absl::InfinitePast(),
            // 400 streams' legitimate token load saturates an instrumented
            // worker (probe p99 0.3-0.5 s under TSan) and ASan/TSan keep
            // freed copies resident: the latency and RSS bounds hold in
            // plain builds; the buffer, fd and link checks hold in all.
            /*bounds_under_sanitizer=*/k.connections == 1);
  std::cout << "[ measure  ] zero-window streams " << k.name << ": receive buffers in use "
            << buffers_before << " -> peak " << peak << " -> " << in_use_after << " after "
            << absl::ToDoubleMilliseconds(release) << " ms; fds " << baseline_.fds << " -> "
            << proc.fds << "; sim links " << sim_before_.active << " -> " << sim.active
            << std::endl;
  // The ring (4096 buffers) never came near empty: waiting chunks are
  // copies, not buffers.
  EXPECT_LT(peak, 1024);
  EXPECT_LE(in_use_after, buffers_before + 4);
  EXPECT_LE(proc.fds, baseline_.fds);
  EXPECT_LE(sim.active, expected_links) << "upstream links still open";
  EXPECT_GE(sim.aborted_streams - sim_before_.aborted_streams, int64_t{k.connections} * k.streams)
      << "generations went on for nobody";
}

INSTANTIATE_TEST_SUITE_P(Cases, H2ZeroWindowStreams,
                         ::testing::Values(ZeroWindowCase{"h2c_1x20", false, 1, 20},
                                           ZeroWindowCase{"tls_1x20", true, 1, 20},
                                           ZeroWindowCase{"h2c_20x20", false, 20, 20},
                                           ZeroWindowCase{"tls_20x20", true, 20, 20}),
                         [](const ::testing::TestParamInfo<ZeroWindowCase>& info) {
                           std::string name = info.param.name;
                           std::replace(name.begin(), name.end(), '_', 'X');
                           return name;
                         });

// One stream whose window stays shut while the connection's other streams
// are read: the stalled stream is reset at --send_timeout (its generation
// stops), the others complete, and the connection stays open.
TEST_F(H2Attack, StalledStreamIsResetWhileOthersGoOn) {
  ProbeTheProxyOnly();
  ASSERT_NO_FATAL_FAILURE(StartAttackStack({"--send_timeout=2s"}));
  // Stream windows start at 0; the connection window is the default. The
  // client opens stream 3's and 5's windows as it reads, never stream 1's.
  std::unique_ptr<h2::Connection> c = Open({{h2::kSettingsInitialWindowSize, 0}});
  ASSERT_NE(c, nullptr);
  BeginAttack();
  const absl::Time start = absl::Now();
  std::string frames = h2::HeadersFrame(
      1,
      h2::HpackBlock(h2::RequestFields(
          "POST", "/api/generate", {{"x-sim-tokens", "100000"}, {"x-sim-token-delay-ms", "1"}})),
      /*end_stream=*/true);
  for (uint32_t id : {3u, 5u}) {
    frames += h2::HeadersFrame(
        id,
        h2::HpackBlock(h2::RequestFields(
            "POST", "/api/generate", {{"x-sim-tokens", "3000"}, {"x-sim-token-delay-ms", "1"}})),
        /*end_stream=*/true);
    frames += h2::WindowUpdateFrame(id, 1 << 30);
  }
  IT_ASSERT_OK(c->Send(frames));
  // Read everything; give the connection window back as DATA arrives.
  uint32_t reset_code = 0;
  bool reset_seen = false;
  std::set<uint32_t> ended;
  absl::Time reset_at;
  const absl::Time deadline = start + absl::Seconds(8) * TimingSlack();
  while (absl::Now() < deadline && !(reset_seen && ended.size() == 2)) {
    absl::StatusOr<h2::Frame> f = c->ReadFrame(absl::Milliseconds(200));
    if (!f.ok()) {
      ASSERT_TRUE(absl::IsDeadlineExceeded(f.status())) << f.status();
      continue;
    }
    if (f->type == h2::kData && !f->payload.empty()) {
      IT_ASSERT_OK(c->Send(h2::WindowUpdateFrame(0, static_cast<uint32_t>(f->payload.size()))));
    }
    if ((f->type == h2::kData || f->type == h2::kHeaders) && (f->flags & h2::kFlagEndStream)) {
      ended.insert(f->stream_id);
    }
    if (f->type == h2::kRstStream && f->stream_id == 1) {
      reset_seen = true;
      reset_at = absl::Now();
      reset_code = f->ErrorCode().value_or(0);
    }
    ASSERT_NE(f->type, h2::kGoaway) << "the connection was closed for one stalled stream";
  }
  EndAttack(
      "stalled stream among others",
      absl::StrCat(reset_seen ? "RST_STREAM(" : "no_reset(", reset_code, ")+ended_", ended.size()),
      /*cpu_bound_s=*/2.0, absl::Milliseconds(200));
  EXPECT_TRUE(ended.count(3) && ended.count(5)) << "the readable streams did not complete";
  ASSERT_TRUE(reset_seen) << "the stalled stream was never reset";
  EXPECT_EQ(reset_code, h2::kCancel);
  EXPECT_GE(reset_at - start, absl::Milliseconds(1500));
  EXPECT_LE(reset_at - start, absl::Milliseconds(4500) * TimingSlack());
  const SimStats s = WaitSim(
      [this](const SimStats& s) { return s.aborted_streams > sim_before_.aborted_streams; });
  EXPECT_GE(s.aborted_streams - sim_before_.aborted_streams, 1)
      << "the stalled stream's generation went on";
  // The same connection still serves a new stream.
  auto status = c->Get(7, "/api/version");
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(*status, 200);
}

// ------------------------------------------------------------ (7) RFC 9113

struct RfcCase {
  const char* name;
  std::string bytes;  // sent after the preface; stream 1 unless noted
  // One of: the RST_STREAM code on stream 1 (the connection survives and
  // serves stream 3), or the GOAWAY code.
  std::optional<uint32_t> reset;
  std::optional<uint32_t> goaway;
  bool reaches_upstream = false;
};

// The 5 bytes of a priority: the dependency (exclusive bit clear), weight.
std::string PriorityFields(uint32_t dependency) {
  std::string p;
  for (int shift = 24; shift >= 0; shift -= 8) {
    p.push_back(static_cast<char>((dependency >> shift) & 0xff));
  }
  p.push_back(15);
  return p;
}

std::string PriorityFrame(uint32_t stream_id, uint32_t dependency) {
  return h2::BuildFrame(h2::kPriority, 0, stream_id, PriorityFields(dependency));
}

std::vector<RfcCase> RfcCases() {
  using h2::HpackBlock;
  using h2::RequestFields;
  std::vector<RfcCase> cases;
  auto stream_error = [&](const char* name, const HeaderList& fields) {
    cases.push_back(
        {name, h2::HeadersFrame(1, HpackBlock(fields), true), h2::kProtocolError, std::nullopt});
  };
  // 8.3.1: :method, :scheme and :path are mandatory (GET).
  stream_error("missing :path",
               {{":method", "GET"}, {":scheme", "http"}, {":authority", "127.0.0.1"}});
  stream_error("missing :method",
               {{":scheme", "http"}, {":path", "/api/version"}, {":authority", "127.0.0.1"}});
  stream_error("empty :path", RequestFields("GET", ""));
  // 8.3: pseudo-headers come first, once, and only the defined ones.
  stream_error("pseudo-header after a regular field", {{":method", "GET"},
                                                       {":scheme", "http"},
                                                       {":authority", "127.0.0.1"},
                                                       {"accept", "*/*"},
                                                       {":path", "/api/version"}});
  stream_error("duplicate :path", RequestFields("GET", "/api/version", {{":path", "/x"}}));
  stream_error("unknown pseudo-header", RequestFields("GET", "/api/version", {{":foo", "bar"}}));
  stream_error("response pseudo-header in a request",
               RequestFields("GET", "/api/version", {{":status", "200"}}));
  // 8.2.2: connection-specific fields.
  stream_error("connection", RequestFields("GET", "/api/version", {{"connection", "keep-alive"}}));
  stream_error("keep-alive", RequestFields("GET", "/api/version", {{"keep-alive", "5"}}));
  stream_error("proxy-connection",
               RequestFields("GET", "/api/version", {{"proxy-connection", "keep-alive"}}));
  stream_error("transfer-encoding",
               RequestFields("GET", "/api/version", {{"transfer-encoding", "chunked"}}));
  stream_error("upgrade", RequestFields("GET", "/api/version", {{"upgrade", "h2c"}}));
  stream_error("te other than trailers", RequestFields("GET", "/api/version", {{"te", "gzip"}}));
  // 8.2.1: field names are lowercase, values without CR/LF/NUL.
  stream_error("uppercase field name", RequestFields("GET", "/api/version", {{"X-Upper", "1"}}));
  stream_error("CRLF in a value", RequestFields("GET", "/api/version", {{"x-a", "1\r\nx-b: 2"}}));
  // 8.1.1: a Content-Length that the DATA does not match.
  {
    const std::string head = h2::HeadersFrame(
        1, HpackBlock(RequestFields("POST", "/api/generate", {{"content-length", "10"}})),
        /*end_stream=*/false);
    cases.push_back({"content-length above the DATA", head + h2::DataFrame(1, "hello", true),
                     h2::kProtocolError, std::nullopt, true});
    cases.push_back({"content-length below the DATA", head + h2::DataFrame(1, "hello world!", true),
                     h2::kProtocolError, std::nullopt, true});
  }
  // 4.3: a header block that does not decode is a connection error.
  cases.push_back({"HPACK index beyond the table", h2::HeadersFrame(1, h2::HpackIndexed(200), true),
                   std::nullopt, h2::kCompressionError});
  cases.push_back(
      {"HPACK integer overflow",
       h2::HeadersFrame(1, std::string("\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 9), true),
       std::nullopt, h2::kCompressionError});
  cases.push_back(
      {"HPACK table size update above the setting",
       h2::HeadersFrame(1, absl::StrCat(h2::HpackInt(1 << 20, 5, 0x20), VersionBlock()), true),
       std::nullopt, h2::kCompressionError});
  // 4.2: a frame over SETTINGS_MAX_FRAME_SIZE (16384).
  cases.push_back({"16385-byte HEADERS", h2::HeadersFrame(1, std::string(16385, '\0'), true),
                   std::nullopt, h2::kFrameSizeError});
  cases.push_back(
      {"16385-byte DATA on stream 1",
       h2::HeadersFrame(1, VersionBlock(), false) + h2::DataFrame(1, std::string(16385, 'd'), true),
       std::nullopt, h2::kFrameSizeError});
  // 6.7, 6.9, 6.5: frame sizes fixed by the RFC.
  cases.push_back({"7-byte PING", h2::BuildFrame(h2::kPing, 0, 0, "1234567"), std::nullopt,
                   h2::kFrameSizeError});
  cases.push_back({"SETTINGS of 5 bytes", h2::BuildFrame(h2::kSettings, 0, 0, "12345"),
                   std::nullopt, h2::kFrameSizeError});
  // 5.1.1, 6.1, 6.9: stream ids.
  cases.push_back({"even stream id", h2::HeadersFrame(2, VersionBlock(), true), std::nullopt,
                   h2::kProtocolError});
  cases.push_back(
      {"DATA on stream 0", h2::DataFrame(0, "x", false), std::nullopt, h2::kProtocolError});
  cases.push_back({"WINDOW_UPDATE of 0 on the connection", h2::WindowUpdateFrame(0, 0),
                   std::nullopt, h2::kProtocolError});
  cases.push_back({"connection window overflow",
                   h2::WindowUpdateFrame(0, 0x7fffffff) + h2::WindowUpdateFrame(0, 0x7fffffff),
                   std::nullopt, h2::kFlowControlError});
  cases.push_back({"CONTINUATION without HEADERS", h2::ContinuationFrame(1, VersionBlock(), true),
                   std::nullopt, h2::kProtocolError});
  cases.push_back({"HEADERS interrupted by another frame",
                   h2::HeadersFrame(1, VersionBlock(), true, false) + h2::PingFrame(1),
                   std::nullopt, h2::kProtocolError});
  // 5.1: frames on a stream the client reset (nghttp2, which keeps no
  // closed streams, would ignore them).
  const std::string open_then_reset =
      h2::HeadersFrame(1, VersionBlock(), false) + h2::RstStreamFrame(1, h2::kCancel);
  cases.push_back({"DATA after the client's RST_STREAM",
                   open_then_reset + h2::DataFrame(1, "late", true), h2::kStreamClosed,
                   std::nullopt, true});
  cases.push_back({"HEADERS after the client's RST_STREAM",
                   open_then_reset + h2::HeadersFrame(1, VersionBlock(), true), std::nullopt,
                   h2::kStreamClosed, true});
  // 5.1.1: a new stream below one already used.
  cases.push_back(
      {"HEADERS on a lower stream id",
       h2::HeadersFrame(3, VersionBlock(), true) + h2::HeadersFrame(1, VersionBlock(), true),
       std::nullopt, h2::kProtocolError, true});
  // 6.3 and 5.3.1: PRIORITY on stream 0, a stream depending on itself.
  cases.push_back({"PRIORITY on stream 0", PriorityFrame(0, 1), std::nullopt, h2::kProtocolError});
  cases.push_back({"PRIORITY making stream 1 depend on itself",
                   h2::HeadersFrame(1, VersionBlock(), false) + PriorityFrame(1, 1),
                   h2::kProtocolError, std::nullopt, true});
  cases.push_back({"PRIORITY making an idle stream depend on itself", PriorityFrame(1, 1),
                   std::nullopt, h2::kProtocolError});
  cases.push_back(
      {"trailers depending on their own stream",
       h2::HeadersFrame(1, VersionBlock(), false) + h2::DataFrame(1, "{}", false) +
           h2::BuildFrame(h2::kHeaders,
                          h2::kFlagEndHeaders | h2::kFlagEndStream | h2::kFlagPriority, 1,
                          absl::StrCat(PriorityFields(1), h2::HpackBlock({{"x-t", "1"}}))),
       h2::kProtocolError, std::nullopt, true});
  return cases;
}

TEST_F(H2Attack, Rfc9113MustsThroughTheBinary) {
  ASSERT_NO_FATAL_FAILURE(StartAttackStack());
  BeginAttack();
  std::vector<std::string> problems;
  int upstream_allowed = 0;
  for (const RfcCase& rc : RfcCases()) {
    // The case itself, or the GET on stream 3 after a stream error.
    if (rc.reaches_upstream || rc.reset.has_value()) ++upstream_allowed;
    std::unique_ptr<h2::Connection> c = Open();
    ASSERT_NE(c, nullptr);
    absl::Status st = c->Send(rc.bytes);
    ReadOutcome o;
    if (rc.reset.has_value()) {
      o = c->ReadUntil(
          [](const h2::Frame& f) {
            return f.type == h2::kGoaway ||
                   (f.stream_id == 1 && (f.type == h2::kRstStream || f.type == h2::kHeaders));
          },
          absl::Seconds(3));
      std::optional<uint32_t> code = o.ResetCode(1);
      if (code != rc.reset) {
        problems.push_back(absl::StrCat(rc.name, ": expected RST_STREAM ", h2::ErrorName(*rc.reset),
                                        ", got\n", o.Describe()));
        continue;
      }
      // A stream error leaves the connection usable.
      auto status = c->Get(3, "/api/version");
      if (!status.ok() || *status != 200) {
        problems.push_back(
            absl::StrCat(rc.name, ": stream 3 after the reset: ",
                         status.ok() ? absl::StrCat(*status) : status.status().ToString()));
      }
    } else {
      o = c->ReadUntilGoaway(absl::Seconds(3));
      if (!st.ok() && !o.GoawayCode().has_value()) {
        problems.push_back(absl::StrCat(rc.name, ": send: ", st.ToString()));
        continue;
      }
      if (o.GoawayCode() != rc.goaway) {
        problems.push_back(absl::StrCat(rc.name, ": expected GOAWAY ", h2::ErrorName(*rc.goaway),
                                        ", got\n", o.Describe()));
        continue;
      }
      // Then the connection ends.
      ReadOutcome rest = c->ReadUntilClosed(absl::Seconds(3));
      if (!rest.closed) {
        problems.push_back(absl::StrCat(rc.name, ": not closed after the GOAWAY"));
      }
    }
    // Never a 400 page instead of the RFC's answer.
    if (o.StatusOf(1) != 0) {
      problems.push_back(absl::StrCat(rc.name, ": answered :status ", o.StatusOf(1)));
    }
  }
  ProbeReport p = EndAttack(
      "RFC 9113 cases",
      absl::StrCat("RFC_answer_", RfcCases().size() - problems.size(), "/", RfcCases().size()),
      /*cpu_bound_s=*/1.0, absl::Milliseconds(200));
  // No malformed request was relayed: the simulator saw at most the
  // requests above, the probes and EndAttack's two.
  SimStats s = WaitSim([](const SimStats&) { return true; });
  EXPECT_LE(s.requests - sim_before_.requests, upstream_allowed + p.ok + p.failed + 2);
  std::cout << "[ measure  ] RFC 9113 cases: " << RfcCases().size() << " cases, " << problems.size()
            << " wrong answer(s)" << std::endl;
  EXPECT_TRUE(problems.empty()) << absl::StrJoin(problems, "\n");
}

// Stream states and the h2c preface through the binary, without the
// attack machinery (no probes, no control stack): the answers only.
class H2StreamStates : public ProxyTest {
 protected:
  std::unique_ptr<h2::Connection> Establish() {
    auto c = h2::Connection::Connect(proxy_port());
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return nullptr;
    absl::Status st = (*c)->Establish();
    EXPECT_TRUE(st.ok()) << st;
    return st.ok() ? std::move(*c) : nullptr;
  }
};

// RFC 9113 5.1: once a stream is closed (request and response both ended),
// DATA on it is a stream error STREAM_CLOSED and HEADERS on it a connection
// error STREAM_CLOSED. nghttp2, which keeps no closed streams, would ignore
// both.
TEST_F(H2StreamStates, FramesOnAClosedStreamAreAnswered) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  std::unique_ptr<h2::Connection> c = Establish();
  ASSERT_NE(c, nullptr);
  auto status = c->Get(1, "/api/version");
  ASSERT_TRUE(status.ok()) << status.status();
  ASSERT_EQ(*status, 200);
  IT_ASSERT_OK(c->Send(h2::DataFrame(1, "late", true)));
  ReadOutcome o = c->ReadUntil(
      [](const h2::Frame& f) {
        return f.type == h2::kGoaway || (f.type == h2::kRstStream && f.stream_id == 1);
      },
      absl::Seconds(3));
  EXPECT_EQ(o.ResetCode(1), h2::kStreamClosed) << o.Describe();
  EXPECT_FALSE(o.GoawayCode().has_value()) << o.Describe();
  // The connection goes on.
  status = c->Get(3, "/api/version");
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(*status, 200);
  IT_ASSERT_OK(c->Send(h2::HeadersFrame(3, VersionBlock(), true)));
  o = c->ReadUntilGoaway(absl::Seconds(3));
  EXPECT_EQ(o.GoawayCode(), h2::kStreamClosed) << o.Describe();
  EXPECT_TRUE(c->ReadUntilClosed(absl::Seconds(3)).closed);
}

// On the plain listener, bytes that begin the HTTP/2 preface ("PRI ") and
// then stray from it are a broken HTTP/2 preface: the server's SETTINGS,
// GOAWAY(PROTOCOL_ERROR) and the end of the connection, never an HTTP/1.1
// page. Bytes that stray before "PRI " are still HTTP/1.1.
TEST_F(H2StreamStates, StrayingH2cPrefaceIsClosedNotAnsweredAsHttp1) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  const std::vector<std::string> cases = {
      "PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
      "PRI * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
      "PRI /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
  };
  for (const std::string& bytes : cases) {
    SCOPED_TRACE(absl::CEscape(bytes));
    auto c = h2::Connection::Connect(proxy_port());
    ASSERT_TRUE(c.ok()) << c.status();
    // In two writes, as a client would that sends the preface's first line
    // before deciding what follows.
    IT_ASSERT_OK((*c)->Send(bytes.substr(0, 6)));
    absl::SleepFor(absl::Milliseconds(20));
    IT_ASSERT_OK((*c)->Send(bytes.substr(6)));
    ReadOutcome o = (*c)->ReadUntilClosed(absl::Seconds(5));
    EXPECT_TRUE(o.closed) << o.Describe();
    ASSERT_FALSE(o.frames.empty()) << "nothing before the close";
    EXPECT_EQ(o.frames[0].type, h2::kSettings) << o.Describe();
    EXPECT_EQ(o.GoawayCode(), h2::kProtocolError) << o.Describe();
  }
  // A method that merely starts like the preface is HTTP/1.1's.
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse r,
      Exchange(proxy_port(), BuildRequest("POST", "/api/version"), absl::Seconds(5)));
  EXPECT_NE(r.status, 0);
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse r2,
      Exchange(proxy_port(), BuildRequest("PRX", "/api/version"), absl::Seconds(5)));
  EXPECT_GE(r2.status, 400);
}

// ------------------------------------------------------------ (8) idle

// A thousand h2c connections that send the preface and nothing more, held
// open. The worker still serves a probe, and the memory per idle
// connection stays small (the bound allows 64 KiB each).
TEST_F(H2Attack, ThousandIdleConnectionsDoNotStarveOthers) {
  constexpr int kIdle = 1000;
  // Both this process and sluice (which inherits the limit) hold a
  // descriptor per connection: raise the soft limit up to the hard one.
  rlimit nofile{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &nofile), 0);
  if (nofile.rlim_cur < 4096) {
    nofile.rlim_cur = std::min<rlim_t>(nofile.rlim_max, 4096);
    setrlimit(RLIMIT_NOFILE, &nofile);
  }
  if (nofile.rlim_cur < kIdle + 200) {
    GTEST_SKIP() << "RLIMIT_NOFILE hard limit " << nofile.rlim_max << " is too low for " << kIdle
                 << " connections";
  }
  ASSERT_NO_FATAL_FAILURE(StartAttackStack());
  BeginAttack();
  absl::Time start = absl::Now();
  std::vector<std::unique_ptr<h2::Connection>> idle;
  idle.reserve(kIdle);
  for (int i = 0; i < kIdle && absl::Now() - start < absl::Seconds(15); ++i) {
    auto c = h2::Connection::Connect(proxy_port());
    ASSERT_TRUE(c.ok()) << "connection " << i << ": " << c.status();
    ASSERT_TRUE((*c)->SendPreface().ok()) << "connection " << i;
    idle.push_back(std::move(*c));
  }
  const absl::Duration open_time = absl::Now() - start;
  ASSERT_EQ(idle.size(), static_cast<size_t>(kIdle));
  // sluice has taken them all in once each got its SETTINGS.
  for (auto& c : idle) {
    auto f = c->ReadFrame(absl::Seconds(5));
    ASSERT_TRUE(f.ok() && f->type == h2::kSettings) << "no SETTINGS";
  }
  // Held: the probes keep running against the same worker. The p99 bound
  // is on the probes from now on; those during the opening queued behind
  // its accepts on the one listener (a connection storm, not this attack)
  // and only have to succeed within kProbeBound.
  const absl::Time hold_from = absl::Now();
  absl::SleepFor(absl::Seconds(1));
  absl::Time probe_start = absl::Now();
  ASSERT_NO_FATAL_FAILURE(ExpectServed("with 1000 idle connections"));
  const absl::Duration probe = absl::Now() - probe_start;
  const ProcSample held = SampleProc(sluice_->pid());
  // A sample of the idle connections is still alive: each answers a PING.
  int alive = 0;
  for (int i = 0; i < kIdle; i += kIdle / 20) {
    h2::Connection* c = idle[static_cast<size_t>(i)].get();
    if (!c->Send(h2::PingFrame(static_cast<uint64_t>(i))).ok()) continue;
    ReadOutcome o = c->ReadUntil(
        [](const h2::Frame& f) { return f.type == h2::kPing && (f.flags & h2::kFlagAck) != 0; },
        absl::Seconds(2));
    if (!o.frames.empty() && o.frames.back().type == h2::kPing) ++alive;
  }
  EndAttack("1000 idle connections", absl::StrCat("held;PING_answered_", alive, "/20"),
            /*cpu_bound_s=*/2.0, absl::Milliseconds(500), hold_from);
  const double per_conn_kib = static_cast<double>(held.rss_kib - baseline_.rss_kib) / kIdle;
  std::cout << "[ measure  ] 1000 idle connections: opened in "
            << absl::ToDoubleMilliseconds(open_time) << " ms; probe (h1 + h2) "
            << absl::ToDoubleMilliseconds(probe) << " ms; RSS +"
            << (held.rss_kib - baseline_.rss_kib) / 1024.0 << " MiB (" << per_conn_kib
            << " KiB per connection); " << alive << " of 20 sampled answer PING" << std::endl;
  EXPECT_EQ(alive, 20);
  EXPECT_LT(probe, 2 * kProbeBound);
}

}  // namespace
}  // namespace sluice::integration
