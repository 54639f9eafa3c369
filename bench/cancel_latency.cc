// cancel_latency: how long a proxy takes to close the upstream stream after
// its client gives up on a generation.
//
// One trial: POST /sim/reset to ollama-sim; open a TLS connection to the
// proxy (ALPN h2 or http/1.1 per --proto); start a long POST /api/generate;
// after --cancel_after NDJSON objects have arrived, cancel: with h2 send
// RST_STREAM(CANCEL) and keep the connection open, with h1 close the socket
// (no close_notify, as a client that goes away does). The cancel time is
// CLOCK_REALTIME just before that write or close. Then poll the simulator's
// GET /sim/stats until "aborted_streams" is at least 1:
// "last_abort_us" is the simulator's CLOCK_REALTIME when it saw the
// upstream connection close (same host, same clock). The sample is
// last_abort_us - cancel time. --trials trials run one after another.
// GET /sim/stats is first asked 20 ms after the cancel, then every 5 ms:
// the simulator stamps the abort when it happens, so asking late costs no
// precision and keeps the poller out of the way while the proxy reacts.
//
// Output, one line on stdout:
//   label=.. proto=h2|h1 trials=.. ok=.. missed=.. failed=.. p50_us=..
//   min_us=.. max_us=.. mean_us=.. samples_us=a,b,...
// "missed": no abort within --trial_timeout_ms; "failed": the trial did not
// get as far as cancelling (connect, TLS, status or stream errors; the first
// few are described on stderr). The exit status is 0 when every trial
// produced a sample.
//
// Bounds: --trials (at most 1000), each trial at most a few seconds (TLS
// setup 5 s, the chunks before the cancel 5 s plus the tokens' own timing,
// the abort wait --trial_timeout_ms); an alarm() watchdog covers the whole.
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "bench/h2_client.h"
#include "bench/stats.h"
#include "bench/tls_client.h"

ABSL_FLAG(std::string, host, "127.0.0.1", "IPv4 address of the proxy");
ABSL_FLAG(int, port, 0, "The proxy's TLS port (required)");
ABSL_FLAG(std::string, sni, "localhost", "TLS server name and Host/:authority host");
ABSL_FLAG(int, sim_port, 0, "ollama-sim's port on --host, for /sim/stats (required)");
ABSL_FLAG(std::string, proto, "h2", "h2 (cancel by RST_STREAM) or h1 (cancel by closing)");
ABSL_FLAG(int, trials, 10, "Trials, one after another");
ABSL_FLAG(int, cancel_after, 3, "NDJSON objects to receive before cancelling");
ABSL_FLAG(int, tokens, 1000, "Tokens per generation (X-Sim-Tokens)");
ABSL_FLAG(std::string, token_delay_ms, "10", "Delay between tokens (X-Sim-Token-Delay-Ms)");
ABSL_FLAG(std::string, authorization, "", "Authorization header value; empty: none");
ABSL_FLAG(int, trial_timeout_ms, 2000, "How long to wait for the simulator to see the abort");
ABSL_FLAG(std::string, label, "-", "Printed first, as label=...");

namespace sluice::bench {
namespace {

constexpr int kMaxTrials = 1000;
constexpr int kSetupTimeoutMs = 5000;
constexpr int kMaxErrorsPrinted = 5;
constexpr int kFirstPollUs = 20'000;
constexpr int kPollUs = 5'000;
constexpr std::string_view kSimTimeKey = "\"sim_t_us\":";

int errors_printed = 0;
void Error(int trial, std::string_view what) {
  if (++errors_printed <= kMaxErrorsPrinted) {
    fprintf(stderr, "cancel_latency: trial %d: %.*s\n", trial, static_cast<int>(what.size()),
            what.data());
  }
}

// Waits until `fd` is ready for `events` or `timeout_ms` passes.
bool WaitFd(int fd, short events, int timeout_ms) {
  pollfd p{fd, events, 0};
  int n;
  do {
    n = poll(&p, 1, timeout_ms);
  } while (n < 0 && errno == EINTR);
  return n > 0;
}

// One plain HTTP/1.1 exchange with the simulator; returns the body, or
// nothing on any failure. The simulator answers with a Content-Length.
std::optional<std::string> SimRequest(const sockaddr_in& sim, std::string_view method,
                                      std::string_view path) {
  int fd = StartConnect(sim);
  if (fd < 0) return std::nullopt;
  std::string request = absl::StrCat(std::string(method), " ", std::string(path),
                                     " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
                                     "Connection: close\r\n\r\n");
  std::string in;
  std::optional<std::string> body;
  if (WaitFd(fd, POLLOUT, 1000) && ConnectResult(fd) == 0 &&
      send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(request.size())) {
    char buf[4096];
    while (WaitFd(fd, POLLIN, 1000)) {
      ssize_t n = read(fd, buf, sizeof(buf));
      if (n <= 0) break;
      in.append(buf, static_cast<size_t>(n));
      size_t end = in.find("\r\n\r\n");
      if (end == std::string::npos) continue;
      size_t cl = in.find("Content-Length: ");
      if (cl == std::string::npos || cl > end) break;
      size_t len = 0;
      if (!absl::SimpleAtoi(in.substr(cl + 16, in.find("\r\n", cl) - cl - 16), &len)) {
        break;
      }
      if (in.size() >= end + 4 + len) {
        body = in.substr(end + 4, len);
        break;
      }
    }
  }
  close(fd);
  return body;
}

// The integer after "key": in a flat JSON object; -1 if absent.
int64_t JsonInt(std::string_view json, std::string_view key) {
  std::string needle = "\"";
  needle.append(key);
  needle.append("\":");
  size_t at = json.find(needle);
  if (at == std::string_view::npos) return -1;
  std::string_view rest = json.substr(at + needle.size());
  size_t end = rest.find_first_not_of("0123456789");
  int64_t v = -1;
  if (!absl::SimpleAtoi(std::string(rest.substr(0, end)), &v)) return -1;
  return v;
}

// Counts NDJSON objects that carry sim_t_us, across read boundaries.
struct ChunkCounter {
  std::string tail;
  int count = 0;
  void Feed(std::string_view data) {
    tail.append(data);
    size_t pos = 0;
    while ((pos = tail.find(kSimTimeKey, pos)) != std::string::npos) {
      ++count;
      pos += kSimTimeKey.size();
    }
    if (tail.size() > kSimTimeKey.size()) {
      tail.erase(0, tail.size() - kSimTimeKey.size());
    }
  }
};

struct Sink final : H2StreamSink {
  int status = 0;
  bool closed = false;
  uint32_t error_code = 0;
  ChunkCounter chunks;
  void OnStatus(int s) override { status = s; }
  void OnData(std::string_view data, int64_t) override { chunks.Feed(data); }
  void OnClose(uint32_t code) override {
    closed = true;
    error_code = code;
  }
};

// Connects and completes the TLS handshake; nullptr on failure.
std::unique_ptr<TlsSocket> Connect(SSL_CTX* ctx, const sockaddr_in& addr,
                                   std::string_view want_alpn, int trial) {
  int fd = StartConnect(addr);
  if (fd < 0) {
    Error(trial, absl::StrCat("connect: ", strerror(-fd)));
    return nullptr;
  }
  auto tls = std::make_unique<TlsSocket>(ctx, fd, absl::GetFlag(FLAGS_sni));
  if (!WaitFd(fd, POLLOUT, kSetupTimeoutMs) || ConnectResult(fd) != 0) {
    Error(trial, "connect failed or timed out");
    return nullptr;
  }
  const int64_t deadline = NowUs(CLOCK_MONOTONIC) + kSetupTimeoutMs * 1000;
  while (true) {
    TlsSocket::Result r = tls->Handshake();
    if (r == TlsSocket::Result::kDone) break;
    int left_ms = static_cast<int>((deadline - NowUs(CLOCK_MONOTONIC)) / 1000);
    if ((r != TlsSocket::Result::kWantRead && r != TlsSocket::Result::kWantWrite) || left_ms <= 0 ||
        !WaitFd(fd, r == TlsSocket::Result::kWantRead ? POLLIN : POLLOUT, left_ms)) {
      Error(trial, "TLS handshake: " + tls->LastError());
      return nullptr;
    }
  }
  if (tls->Alpn() != want_alpn) {
    Error(trial, "ALPN chose '" + std::string(tls->Alpn()) + "'");
    return nullptr;
  }
  return tls;
}

struct Request {
  std::string path = "/api/generate";
  std::string body = R"({"model":"sim:latest","prompt":"Tell me a long story.","stream":true})";
  std::string authority;
};

// Runs a generation over HTTP/2 until enough chunks arrived, then resets the
// stream. Returns the cancel time (CLOCK_REALTIME µs) or -1. `keep` holds
// the connection open until the caller has seen the abort.
int64_t RunH2(SSL_CTX* ctx, const sockaddr_in& addr, const Request& req, int trial,
              std::unique_ptr<H2ClientConn>* keep, Sink* sink) {
  std::unique_ptr<TlsSocket> tls = Connect(ctx, addr, "h2", trial);
  if (tls == nullptr) return -1;
  auto h2 = std::make_unique<H2ClientConn>(std::move(tls));
  std::vector<H2ClientConn::Header> headers = {
      {":method", "POST"},
      {":scheme", "https"},
      {":authority", req.authority},
      {":path", req.path},
      {"content-type", "application/json"},
      {"x-sim-tokens", absl::StrCat(absl::GetFlag(FLAGS_tokens))},
      {"x-sim-token-delay-ms", absl::GetFlag(FLAGS_token_delay_ms)},
      {"content-length", absl::StrCat(req.body.size())},
  };
  if (!absl::GetFlag(FLAGS_authorization).empty()) {
    headers.push_back({"authorization", absl::GetFlag(FLAGS_authorization)});
  }
  int32_t id = h2->Submit(headers, req.body, sink);
  if (id < 0 || !h2->Flush()) {
    Error(trial, "submit failed");
    return -1;
  }
  const int64_t deadline = NowUs(CLOCK_MONOTONIC) + kSetupTimeoutMs * 1000;
  while (sink->chunks.count < absl::GetFlag(FLAGS_cancel_after)) {
    int left_ms = static_cast<int>((deadline - NowUs(CLOCK_MONOTONIC)) / 1000);
    if (sink->closed || left_ms <= 0) {
      Error(trial, absl::StrCat("stream ended or stalled before the cancel; status ", sink->status,
                                " error ", sink->error_code));
      return -1;
    }
    short events = POLLIN | (h2->WantsWrite() ? POLLOUT : 0);
    if (!WaitFd(h2->fd(), events, left_ms)) continue;
    if (!h2->OnReadable()) {
      Error(trial, h2->LastError());
      return -1;
    }
  }
  if (sink->status != 200) {
    Error(trial, absl::StrCat("status ", sink->status));
    return -1;
  }
  h2->Cancel(id);
  int64_t cancel_us = NowUs(CLOCK_REALTIME);
  if (!h2->Flush()) {
    Error(trial, h2->LastError());
    return -1;
  }
  *keep = std::move(h2);
  return cancel_us;
}

// The same over HTTP/1.1, cancelling by closing the connection.
int64_t RunH1(SSL_CTX* ctx, const sockaddr_in& addr, const Request& req, int trial) {
  std::unique_ptr<TlsSocket> tls = Connect(ctx, addr, "http/1.1", trial);
  if (tls == nullptr) return -1;
  std::string request = absl::StrCat(
      "POST ", req.path, " HTTP/1.1\r\nHost: ", req.authority,
      "\r\nContent-Type: application/json\r\nX-Sim-Tokens: ", absl::GetFlag(FLAGS_tokens),
      "\r\nX-Sim-Token-Delay-Ms: ", absl::GetFlag(FLAGS_token_delay_ms), "\r\n");
  if (!absl::GetFlag(FLAGS_authorization).empty()) {
    absl::StrAppend(&request, "Authorization: ", absl::GetFlag(FLAGS_authorization), "\r\n");
  }
  absl::StrAppend(&request, "Content-Length: ", req.body.size(), "\r\n\r\n", req.body);
  TlsSocket::Result w = tls->Write(request);
  while (w == TlsSocket::Result::kWantWrite) {
    if (!WaitFd(tls->fd(), POLLOUT, kSetupTimeoutMs)) break;
    w = tls->Flush();
  }
  if (w != TlsSocket::Result::kDone) {
    Error(trial, "TLS write: " + tls->LastError());
    return -1;
  }
  ChunkCounter chunks;
  std::string head;
  const int64_t deadline = NowUs(CLOCK_MONOTONIC) + kSetupTimeoutMs * 1000;
  char buf[16384];
  while (chunks.count < absl::GetFlag(FLAGS_cancel_after)) {
    size_t n = 0;
    TlsSocket::Result r = tls->Read(buf, sizeof(buf), &n);
    if (r == TlsSocket::Result::kDone) {
      if (head.size() < 12) head.append(buf, std::min<size_t>(n, 12 - head.size()));
      chunks.Feed({buf, n});
      continue;
    }
    int left_ms = static_cast<int>((deadline - NowUs(CLOCK_MONOTONIC)) / 1000);
    if (r != TlsSocket::Result::kWantRead || left_ms <= 0) {
      Error(trial, "stream ended or stalled before the cancel: " + tls->LastError());
      return -1;
    }
    WaitFd(tls->fd(), POLLIN, left_ms);
  }
  if (head.rfind("HTTP/1.1 200", 0) != 0) {
    Error(trial, "status line " + head);
    return -1;
  }
  int64_t cancel_us = NowUs(CLOCK_REALTIME);
  tls->CloseNow();
  return cancel_us;
}

// Polls the simulator's /sim/stats until it has seen an aborted stream;
// returns its "last_abort_us", or -1 when none came within
// --trial_timeout_ms.
int64_t WaitForAbort(const sockaddr_in& sim) {
  const int64_t deadline = NowUs(CLOCK_MONOTONIC) + absl::GetFlag(FLAGS_trial_timeout_ms) * 1000;
  // The simulator stamps the abort itself, so polling late loses
  // nothing; polling early would only compete with the proxy and the
  // simulator for the CPU while they react.
  usleep(kFirstPollUs);
  while (true) {
    std::optional<std::string> stats = SimRequest(sim, "GET", "/sim/stats");
    if (stats && JsonInt(*stats, "aborted_streams") >= 1) {
      return JsonInt(*stats, "last_abort_us");
    }
    if (NowUs(CLOCK_MONOTONIC) >= deadline) return -1;
    usleep(kPollUs);
  }
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Client cancel to upstream close: cancel_latency --port=TLS_PORT "
      "--sim_port=PORT [--proto=h2|h1 --trials=10]");
  absl::ParseCommandLine(argc, argv);
  const std::string proto = absl::GetFlag(FLAGS_proto);
  const int trials = absl::GetFlag(FLAGS_trials);
  sockaddr_in addr, sim;
  if (!ParseAddress(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_port), &addr) ||
      !ParseAddress(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_sim_port), &sim) ||
      (proto != "h2" && proto != "h1") || trials < 1 || trials > kMaxTrials ||
      absl::GetFlag(FLAGS_cancel_after) < 1 ||
      absl::GetFlag(FLAGS_tokens) <= absl::GetFlag(FLAGS_cancel_after) ||
      absl::GetFlag(FLAGS_trial_timeout_ms) < 1) {
    fprintf(stderr,
            "cancel_latency: need an IPv4 --host, --port and --sim_port, "
            "--proto h2 or h1, --trials in 1..%d, --cancel_after >= 1 and "
            "--tokens above it\n",
            kMaxTrials);
    return 2;
  }
  double delay_ms = 0;
  absl::SimpleAtod(absl::GetFlag(FLAGS_token_delay_ms), &delay_ms);
  const int per_trial_s =
      2 * kSetupTimeoutMs / 1000 + absl::GetFlag(FLAGS_trial_timeout_ms) / 1000 +
      static_cast<int>(std::ceil(delay_ms * absl::GetFlag(FLAGS_cancel_after) / 1000)) + 1;
  alarm(static_cast<unsigned>(std::min(trials * per_trial_s + 10, 3600)));
  signal(SIGPIPE, SIG_IGN);

  SSL_CTX* ctx = NewClientContext({proto == "h2" ? "h2" : "http/1.1"}, std::string());
  Request req;
  req.authority = absl::StrCat(absl::GetFlag(FLAGS_sni), ":", absl::GetFlag(FLAGS_port));

  std::vector<int64_t> samples;
  int missed = 0, failed = 0;
  for (int trial = 0; trial < trials; ++trial) {
    if (!SimRequest(sim, "POST", "/sim/reset")) {
      Error(trial, "POST /sim/reset failed");
      ++failed;
      continue;
    }
    std::unique_ptr<H2ClientConn> h2_keep;
    Sink sink;
    int64_t cancel_us = proto == "h2" ? RunH2(ctx, addr, req, trial, &h2_keep, &sink)
                                      : RunH1(ctx, addr, req, trial);
    if (cancel_us < 0) {
      ++failed;
      continue;
    }
    const int64_t abort_us = WaitForAbort(sim);
    if (abort_us < 0) {
      ++missed;
      Error(trial, "no upstream abort seen in time");
    } else {
      samples.push_back(abort_us - cancel_us);
    }
    h2_keep.reset();
  }
  const Summary d = Summarize(samples);
  printf(
      "label=%s proto=%s trials=%d ok=%zu missed=%d failed=%d p50_us=%ld "
      "min_us=%ld max_us=%ld mean_us=%.0f samples_us=%s\n",
      absl::GetFlag(FLAGS_label).c_str(), proto.c_str(), trials, samples.size(), missed, failed,
      d.p50, d.min, d.max, d.mean, samples.empty() ? "-" : absl::StrJoin(samples, ",").c_str());
  fflush(stdout);
  SSL_CTX_free(ctx);
  return missed == 0 && failed == 0 ? 0 : 1;
}

}  // namespace
}  // namespace sluice::bench

int main(int argc, char** argv) { return sluice::bench::Main(argc, argv); }
