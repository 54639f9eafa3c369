// soak: a bounded mixed-traffic run against sluice over TLS, checking every
// response. bench/soak.sh drives it (with reloads, log reopens and RSS
// sampling alongside); it can also be run by hand against any sluice in
// front of ollama-sim.
//
// --h1_conns HTTP/1.1 keepalive connections and --h2_conns HTTP/2
// connections (each with --streams_per_h2_conn concurrent streams) loop
// until --seconds have passed, each request drawn at random from a
// per-connection generator seeded from --seed and the connection's index
// (so the sequence of requests of a run is fixed; their timing is not):
//
//   15 %  GET /api/tags                    JSON, the simulator's two models
//   15 %  GET /api/version                 JSON with "version"
//   30 %  POST /api/generate, streaming    NDJSON, 2..--max_tokens tokens
//   15 %  POST /api/chat, "stream":false   one JSON object, "done":true
//   25 %  POST /v1/chat/completions, SSE   "data: {...}" events, [DONE]
//
// Generations carry X-Sim-Tokens and X-Sim-Token-Delay-Ms. --cancel_percent
// of the streaming requests are cancelled after a random number (1..tokens)
// of objects or events have arrived: HTTP/2 by RST_STREAM(CANCEL), HTTP/1.1
// by closing the connection (no close_notify, as a client that goes away
// does) and opening a new one. A response that completes before its cancel
// point is reached counts as ok (and as cancel_late).
//
// HTTP/2 cancels are paced: at most --h2_cancels_per_s per connection (a
// token bucket of that size), since sluice, like nghttpx, keeps nghttp2's
// rapid-reset limit (CVE-2023-44487): a client may send 1000 RST_STREAM
// frames at once and 33 per second after that; past it the connection gets
// GOAWAY(INTERNAL_ERROR) and its other streams are lost. A drawn cancel
// that finds the bucket empty runs to the end instead (cancel_skipped).
//
// Checks on every response that is not cancelled: status 200; HTTP/1.1
// framing complete and nothing after it (llhttp, strict); the body: tags
// and version parse as one JSON value with the expected content; NDJSON
// has exactly tokens + 1 lines, each a JSON object, token i carrying
// "tok<i> " in order, the last "done":true; "stream":false is one JSON
// object with "done":true and the whole text; SSE has tokens + 2 events,
// each "data: <JSON>", the tokens in order, then a finish_reason "stop"
// chunk and "data: [DONE]". HTTP/2 streams must end with no error code.
// A request not finished within --request_timeout_s is an error.
//
// At --seconds no new requests start; those in flight finish (up to
// --request_timeout_s), then connections close (HTTP/2 with GOAWAY). A
// progress line per second goes to stderr; the summary to stdout:
//
//   soak ok=.. cancelled=.. errors=.. requests=.. h1=.. h2=.. seconds=..
//        cancel_late=.. cancel_skipped=.. connects=.. server_closes=..
//        error_kinds=k:n,..
//
// requests = ok + cancelled + errors counted on requests that were sent
// (every one should appear in the access log); h1/h2 split it by protocol.
// The first 10 error descriptions follow on stderr. Exit status 1 if
// errors > 0 (connection failures included) or nothing succeeded, 2 on bad
// flags.
#include "bench/soak.h"

#include <signal.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "bench/stats.h"
#include "bench/tls_client.h"

ABSL_FLAG(std::string, host, "127.0.0.1", "IPv4 address of sluice");
ABSL_FLAG(int, port, 0, "sluice's TLS port (required)");
ABSL_FLAG(std::string, sni, "localhost", "TLS server name and Host host");
ABSL_FLAG(double, seconds, 30, "How long to start new requests (1..600)");
ABSL_FLAG(int, h1_conns, 4, "HTTP/1.1 keepalive connections");
ABSL_FLAG(int, h2_conns, 2, "HTTP/2 connections");
ABSL_FLAG(int, streams_per_h2_conn, 8, "Concurrent streams per HTTP/2 connection");
ABSL_FLAG(int, cancel_percent, 10, "Share of streaming requests cancelled mid-stream (0..100)");
ABSL_FLAG(std::string, key, "", "API key, sent as Authorization: Bearer KEY; empty: none");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the request mix");
ABSL_FLAG(int, max_tokens, 8, "Generations have 2..max_tokens tokens");
ABSL_FLAG(std::string, token_delay_ms, "2", "X-Sim-Token-Delay-Ms of generations");
ABSL_FLAG(int, threads, 1, "Client threads (connections are dealt out to them)");
ABSL_FLAG(double, request_timeout_s, 30, "Longest a request may take before it is an error");
ABSL_FLAG(double, h2_cancels_per_s, 25,
          "Most RST_STREAM cancels per second per HTTP/2 connection (sluice "
          "allows 33 "
          "sustained, nghttp2's rapid-reset limit)");

namespace sluice::bench::soak {
namespace {

constexpr int kMaxSeconds = 600;

void RunLoop(std::vector<std::unique_ptr<Conn>>* conns, int epfd, const int64_t* hard_deadline) {
  int64_t now = NowUs(CLOCK_MONOTONIC);
  for (auto& c : *conns) c->Start(now);
  epoll_event events[64];
  while (true) {
    int n = epoll_wait(epfd, events, 64, 20);
    now = NowUs(CLOCK_MONOTONIC);
    for (int i = 0; i < n; ++i) {
      static_cast<Conn*>(events[i].data.ptr)->OnEvent(events[i].events, now);
    }
    bool all_done = true;
    for (auto& c : *conns) {
      c->OnTick(now);
      all_done = all_done && c->finished();
    }
    if (all_done) break;
    if (g_stopping.load() && now > *hard_deadline) {
      for (auto& c : *conns) {
        if (!c->finished()) c->Abandon();
      }
      break;
    }
  }
}

// Requests sent (connection failures are errors but not requests).
int64_t Requests() { return g_stats.h1.load() + g_stats.h2.load(); }

// Whether the flags are in range; fills `addr` from --host and --port.
bool FlagsValid(sockaddr_in* addr) {
  const double seconds = absl::GetFlag(FLAGS_seconds);
  const int h1_conns = absl::GetFlag(FLAGS_h1_conns), h2_conns = absl::GetFlag(FLAGS_h2_conns);
  const int threads = absl::GetFlag(FLAGS_threads);
  const int streams = absl::GetFlag(FLAGS_streams_per_h2_conn);
  const int cancel_percent = absl::GetFlag(FLAGS_cancel_percent);
  const int max_tokens = absl::GetFlag(FLAGS_max_tokens);
  if (!ParseAddress(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_port), addr)) {
    return false;
  }
  return seconds >= 1 && seconds <= kMaxSeconds && h1_conns >= 0 && h2_conns >= 0 &&
         h1_conns + h2_conns != 0 && h1_conns + h2_conns <= 10000 && streams >= 1 &&
         streams <= 100 && cancel_percent >= 0 && cancel_percent <= 100 && max_tokens >= 2 &&
         max_tokens <= 10000 && threads >= 1 && threads <= 64 &&
         absl::GetFlag(FLAGS_request_timeout_s) > 0 && absl::GetFlag(FLAGS_h2_cancels_per_s) >= 0;
}

// The connections of the run, dealt out to `threads` event loops: the
// first --h1_conns speak HTTP/1.1, the rest HTTP/2.
struct Fleet {
  std::vector<std::vector<std::unique_ptr<Conn>>> per_thread;
  std::vector<int> epfds;
};

Fleet MakeFleet(int threads, const sockaddr_in& addr, SSL_CTX* ctx_h1, SSL_CTX* ctx_h2) {
  const int h1_conns = absl::GetFlag(FLAGS_h1_conns), h2_conns = absl::GetFlag(FLAGS_h2_conns);
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  Fleet fleet;
  fleet.per_thread.resize(threads);
  for (int t = 0; t < threads; ++t) fleet.epfds.push_back(epoll_create1(EPOLL_CLOEXEC));
  for (int i = 0; i < h1_conns + h2_conns; ++i) {
    const int t = i % threads;
    const uint64_t conn_seed = seed * 1'000'003 + static_cast<uint64_t>(i);
    if (i < h1_conns) {
      fleet.per_thread[t].push_back(NewH1Conn(fleet.epfds[t], ctx_h1, addr, conn_seed));
    } else {
      fleet.per_thread[t].push_back(NewH2Conn(fleet.epfds[t], ctx_h2, addr, conn_seed));
    }
  }
  return fleet;
}

// While the client threads run: sets g_stopping at `stop_at` and prints a
// progress line to stderr each second.
void WatchProgress(const std::atomic<int>& running, int64_t start, int64_t stop_at,
                   double seconds) {
  int64_t last_requests = 0;
  int64_t next_report = start + 1'000'000;
  while (running.load() > 0) {
    usleep(50'000);
    const int64_t now = NowUs(CLOCK_MONOTONIC);
    if (!g_stopping.load() && now >= stop_at) {
      g_stopping.store(true);
      fprintf(stderr, "soak: %.0f s up, letting requests in flight finish\n", seconds);
    }
    if (now >= next_report) {
      const int64_t req = Requests();
      fprintf(stderr,
              "soak: t=%llds requests=%lld ok=%lld cancelled=%lld errors=%lld "
              "req/s=%lld\n",
              static_cast<long long>((now - start) / 1'000'000), static_cast<long long>(req),
              static_cast<long long>(g_stats.ok.load()),
              static_cast<long long>(g_stats.cancelled.load()),
              static_cast<long long>(g_stats.errors.load()),
              static_cast<long long>(req - last_requests));
      last_requests = req;
      next_report += 1'000'000;
    }
  }
}

// The routes and first errors to stderr, the summary line to stdout.
void PrintSummary(double elapsed) {
  std::vector<std::string> kinds;
  for (size_t k = 0; k < g_stats.by_kind.size(); ++k) {
    if (g_stats.by_kind[k].load() > 0) {
      kinds.push_back(absl::StrCat(kErrNames[k], ":", g_stats.by_kind[k].load()));
    }
  }
  std::vector<std::string> routes;
  for (size_t r = 0; r < g_stats.routes.size(); ++r) {
    routes.push_back(absl::StrCat(kRouteNames[r], "=", g_stats.routes[r].load()));
  }
  fprintf(stderr, "soak: routes %s\n", absl::StrJoin(routes, " ").c_str());
  for (const std::string& e : g_stats.first_errors) fprintf(stderr, "soak: error: %s\n", e.c_str());
  printf(
      "soak ok=%lld cancelled=%lld errors=%lld requests=%lld h1=%lld h2=%lld "
      "seconds=%.1f "
      "cancel_late=%lld cancel_skipped=%lld connects=%lld server_closes=%lld "
      "error_kinds=%s\n",
      static_cast<long long>(g_stats.ok.load()), static_cast<long long>(g_stats.cancelled.load()),
      static_cast<long long>(g_stats.errors.load()), static_cast<long long>(Requests()),
      static_cast<long long>(g_stats.h1.load()), static_cast<long long>(g_stats.h2.load()), elapsed,
      static_cast<long long>(g_stats.cancel_late.load()),
      static_cast<long long>(g_stats.cancel_skipped.load()),
      static_cast<long long>(g_stats.connects.load()),
      static_cast<long long>(g_stats.server_closes.load()),
      kinds.empty() ? "-" : absl::StrJoin(kinds, ",").c_str());
  fflush(stdout);
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Mixed-traffic soak against sluice over TLS: soak --port=TLS_PORT "
      "[--seconds=30 "
      "--h1_conns=4 --h2_conns=2 --streams_per_h2_conn=8 --cancel_percent=10 "
      "--key=KEY]");
  absl::ParseCommandLine(argc, argv);
  sockaddr_in addr;
  if (!FlagsValid(&addr)) {
    fprintf(stderr,
            "soak: need an IPv4 --host and --port, --seconds in 1..%d, "
            "--h1_conns and "
            "--h2_conns >= 0 (not both 0), --streams_per_h2_conn in 1..100, "
            "--cancel_percent in 0..100, --max_tokens in 2..10000, --threads "
            "in 1..64, "
            "--request_timeout_s > 0, --h2_cancels_per_s >= 0\n",
            kMaxSeconds);
    return 2;
  }
  const double seconds = absl::GetFlag(FLAGS_seconds);
  const int threads = absl::GetFlag(FLAGS_threads);
  signal(SIGPIPE, SIG_IGN);
  RaiseFdLimit();
  const double timeout_s = absl::GetFlag(FLAGS_request_timeout_s);
  alarm(static_cast<unsigned>(seconds + timeout_s + 60));

  SSL_CTX* ctx_h1 = NewClientContext({"http/1.1"}, "");
  SSL_CTX* ctx_h2 = NewClientContext({"h2"}, "");
  Fleet fleet = MakeFleet(threads, addr, ctx_h1, ctx_h2);

  const int64_t start = NowUs(CLOCK_MONOTONIC);
  const int64_t stop_at = start + static_cast<int64_t>(seconds * 1e6);
  const int64_t hard_deadline = stop_at + static_cast<int64_t>(timeout_s * 1e6) + 5'000'000;
  std::atomic<int> running{threads};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      RunLoop(&fleet.per_thread[t], fleet.epfds[t], &hard_deadline);
      running.fetch_sub(1);
    });
  }
  WatchProgress(running, start, stop_at, seconds);
  for (auto& w : workers) w.join();
  const double elapsed = static_cast<double>(NowUs(CLOCK_MONOTONIC) - start) / 1e6;

  PrintSummary(elapsed);
  SSL_CTX_free(ctx_h1);
  SSL_CTX_free(ctx_h2);
  return g_stats.errors.load() == 0 && g_stats.ok.load() > 0 ? 0 : 1;
}

}  // namespace
}  // namespace sluice::bench::soak

int main(int argc, char** argv) { return sluice::bench::soak::Main(argc, argv); }
