// idle_conns: opens many idle HTTP/2-over-TLS connections and holds them, so
// that a script can read the server's memory before and after.
//
// Each connection: TCP connect, full TLS handshake with ALPN h2 (no
// resumption), the client connection preface and an empty SETTINGS frame
// written as raw bytes, then frames read until both the server's SETTINGS
// (answered with a SETTINGS ACK) and the ACK of ours have arrived. No
// stream is opened. At most --parallel connections are being set up at any
// time; poll() drives them. With --alpn=http/1.1 a connection is held right
// after its handshake (no request), which isolates the TLS part.
//
// Once every connection is established or has failed, it prints
//   ready connections=.. established=.. failed=.. setup_s=..
// on stdout and holds the established ones idle (polling them, to notice a
// server that closes one) until --hold_s has passed or SIGTERM/SIGINT
// arrives, then prints
//   done established=.. closed_by_server=.. held_s=..
// and exits, closing everything. The exit status is 0 when no connection
// failed and the server closed none.
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "bench/stats.h"
#include "bench/tls_client.h"

ABSL_FLAG(std::string, host, "127.0.0.1", "IPv4 address to connect to");
ABSL_FLAG(int, port, 0, "TLS port (required)");
ABSL_FLAG(std::string, sni, "localhost", "TLS server name");
ABSL_FLAG(int, connections, 5000, "Connections to open and hold");
ABSL_FLAG(std::string, alpn, "h2",
          "h2 (preface and SETTINGS exchange) or http/1.1 (TLS handshake "
          "only), to tell the TLS cost from the HTTP/2 session's");
ABSL_FLAG(int, parallel, 100, "Connections in setup at once");
ABSL_FLAG(double, setup_timeout_s, 60, "Bound on the whole setup phase");
ABSL_FLAG(double, hold_s, 120, "Longest time to hold the connections (SIGTERM ends it sooner)");

namespace sluice::bench {
namespace {

using std::string_view_literals::operator""sv;

constexpr int kMaxConnections = 100000;
constexpr int kMaxErrorsPrinted = 5;
// RFC 9113 section 3.4: the client preface, then a SETTINGS frame (here
// empty: length 0, type 4, flags 0, stream 0).
constexpr std::string_view kPrefaceAndSettings =
    "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    "\x00\x00\x00\x04\x00\x00\x00\x00\x00"sv;
constexpr std::string_view kSettingsAck = "\x00\x00\x00\x04\x01\x00\x00\x00\x00"sv;
constexpr uint8_t kTypeSettings = 4;
constexpr uint8_t kTypeGoaway = 7;
constexpr uint8_t kFlagAck = 1;

std::atomic<bool> stop{false};
void OnSignal(int) { stop = true; }

enum class Phase { kNew, kConnecting, kHandshaking, kExchange, kIdle, kFailed, kClosed };

struct Conn {
  Phase phase = Phase::kNew;
  std::unique_ptr<TlsSocket> tls;
  std::string in;  // received frame bytes not yet parsed
  bool got_settings = false;
  bool got_ack = false;
};

int errors_printed = 0;

void Fail(Conn& c, int index, std::string_view why, long* failed) {
  if (++errors_printed <= kMaxErrorsPrinted) {
    fprintf(stderr, "idle_conns: connection %d: %.*s\n", index, static_cast<int>(why.size()),
            why.data());
  }
  c.tls.reset();
  c.phase = Phase::kFailed;
  ++*failed;
}

// Parses whole frames in c.in; queues a SETTINGS ACK for the server's
// SETTINGS. False on GOAWAY.
bool ParseFrames(Conn& c) {
  size_t pos = 0;
  while (c.in.size() - pos >= 9) {
    const auto* h = reinterpret_cast<const uint8_t*>(c.in.data() + pos);
    size_t len = (size_t{h[0]} << 16) | (size_t{h[1]} << 8) | h[2];
    if (c.in.size() - pos < 9 + len) break;
    if (h[3] == kTypeSettings) {
      if (h[4] & kFlagAck) {
        c.got_ack = true;
      } else {
        c.got_settings = true;
        c.tls->Write(kSettingsAck);
      }
    } else if (h[3] == kTypeGoaway) {
      return false;
    }
    pos += 9 + len;
  }
  c.in.erase(0, pos);
  return true;
}

// Advances one connection's setup as far as it goes without blocking.
// Returns the poll events it waits for (0 when no longer in setup).
short Advance(Conn& c, int index, const sockaddr_in& addr, SSL_CTX* ctx, long* failed) {
  if (c.phase == Phase::kNew) {
    int fd = StartConnect(addr);
    if (fd < 0) {
      Fail(c, index, absl::StrCat("connect: ", strerror(-fd)), failed);
      return 0;
    }
    c.tls = std::make_unique<TlsSocket>(ctx, fd, absl::GetFlag(FLAGS_sni));
    c.phase = Phase::kConnecting;
    return POLLOUT;
  }
  if (c.phase == Phase::kConnecting) {
    int err = ConnectResult(c.tls->fd());
    if (err == EINPROGRESS || err == EALREADY) return POLLOUT;
    if (err != 0) {
      Fail(c, index, absl::StrCat("connect: ", strerror(err)), failed);
      return 0;
    }
    c.phase = Phase::kHandshaking;
  }
  if (c.phase == Phase::kHandshaking) {
    TlsSocket::Result r = c.tls->Handshake();
    if (r == TlsSocket::Result::kWantRead) return POLLIN;
    if (r == TlsSocket::Result::kWantWrite) return POLLOUT;
    if (r != TlsSocket::Result::kDone) {
      Fail(c, index, "TLS handshake: " + c.tls->LastError(), failed);
      return 0;
    }
    if (c.tls->Alpn() != absl::GetFlag(FLAGS_alpn)) {
      Fail(c, index, "ALPN chose '" + std::string(c.tls->Alpn()) + "'", failed);
      return 0;
    }
    if (c.tls->Alpn() != "h2") {
      c.phase = Phase::kIdle;
      return 0;
    }
    c.phase = Phase::kExchange;
    c.tls->Write(kPrefaceAndSettings);
  }
  // kExchange
  char buf[4096];
  while (true) {
    size_t n = 0;
    TlsSocket::Result r = c.tls->Read(buf, sizeof(buf), &n);
    if (r == TlsSocket::Result::kDone) {
      c.in.append(buf, n);
      continue;
    }
    if (r == TlsSocket::Result::kWantRead) break;
    Fail(c, index, "closed during the SETTINGS exchange: " + c.tls->LastError(), failed);
    return 0;
  }
  if (!ParseFrames(c)) {
    Fail(c, index, "GOAWAY during the SETTINGS exchange", failed);
    return 0;
  }
  TlsSocket::Result w = c.tls->Flush();
  if (w == TlsSocket::Result::kWantWrite) return POLLIN | POLLOUT;
  if (w != TlsSocket::Result::kDone) {
    Fail(c, index, "TLS write: " + c.tls->LastError(), failed);
    return 0;
  }
  if (c.got_settings && c.got_ack) {
    c.phase = Phase::kIdle;
    c.in.clear();
    c.in.shrink_to_fit();
    return 0;
  }
  return POLLIN;
}

// Sets up every connection, at most `parallel` at a time, until all are
// established or failed or `setup_deadline` has passed; adds to
// `*established` and `*failed`.
void SetUpAll(std::vector<Conn>& conns, const sockaddr_in& addr, SSL_CTX* ctx, int parallel,
              int64_t setup_deadline, long* established, long* failed) {
  const int total = static_cast<int>(conns.size());
  int next = 0;
  std::vector<int> in_setup;  // indexes of connections being set up
  std::vector<pollfd> pfds;
  std::vector<short> want(total, 0);
  while ((next < total || !in_setup.empty()) && !stop) {
    while (next < total && static_cast<int>(in_setup.size()) < parallel) {
      int i = next++;
      want[i] = Advance(conns[i], i, addr, ctx, failed);
      if (want[i] != 0) in_setup.push_back(i);
    }
    if (NowUs(CLOCK_MONOTONIC) > setup_deadline) {
      for (int i : in_setup) Fail(conns[i], i, "setup timed out", failed);
      in_setup.clear();
      for (; next < total; ++next) Fail(conns[next], next, "not started (timeout)", failed);
      break;
    }
    pfds.clear();
    for (int i : in_setup) pfds.push_back(pollfd{conns[i].tls->fd(), want[i], 0});
    int n = poll(pfds.data(), pfds.size(), 100);
    if (n <= 0) continue;
    std::vector<int> still;
    still.reserve(in_setup.size());
    for (size_t k = 0; k < in_setup.size(); ++k) {
      int i = in_setup[k];
      if (pfds[k].revents != 0) want[i] = Advance(conns[i], i, addr, ctx, failed);
      if (want[i] != 0) {
        still.push_back(i);
      } else if (conns[i].phase == Phase::kIdle) {
        ++*established;
      }
    }
    in_setup.swap(still);
  }
}

// Drains what is readable on an idle connection; false when the server
// closed it.
bool DrainIdle(Conn& c) {
  char buf[4096];
  while (true) {
    size_t got = 0;
    TlsSocket::Result r = c.tls->Read(buf, sizeof(buf), &got);
    if (r == TlsSocket::Result::kDone) continue;
    return r == TlsSocket::Result::kWantRead;
  }
}

// Holds the established connections idle until `hold_end` (or a signal, or
// none is left); returns how many the server closed.
long HoldIdle(std::vector<Conn>& conns, int64_t hold_end) {
  long closed_by_server = 0;
  std::vector<int> idle;
  for (int i = 0; i < static_cast<int>(conns.size()); ++i) {
    if (conns[i].phase == Phase::kIdle) idle.push_back(i);
  }
  std::vector<pollfd> pfds;
  while (!stop && NowUs(CLOCK_MONOTONIC) < hold_end && !idle.empty()) {
    pfds.clear();
    for (int i : idle) pfds.push_back(pollfd{conns[i].tls->fd(), POLLIN, 0});
    int n = poll(pfds.data(), pfds.size(), 200);
    if (n <= 0) continue;
    std::vector<int> still;
    still.reserve(idle.size());
    for (size_t k = 0; k < idle.size(); ++k) {
      int i = idle[k];
      bool open = pfds[k].revents == 0 || DrainIdle(conns[i]);
      if (open) {
        still.push_back(i);
      } else {
        ++closed_by_server;
        conns[i].tls.reset();
        conns[i].phase = Phase::kClosed;
      }
    }
    idle.swap(still);
  }
  return closed_by_server;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Opens and holds idle h2-over-TLS connections: idle_conns --port=PORT "
      "[--connections=5000 --parallel=100 --hold_s=120]");
  absl::ParseCommandLine(argc, argv);
  const int total = absl::GetFlag(FLAGS_connections);
  const int parallel = absl::GetFlag(FLAGS_parallel);
  sockaddr_in addr;
  if (!ParseAddress(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_port), &addr) || total < 1 ||
      total > kMaxConnections || parallel < 1) {
    fprintf(stderr,
            "idle_conns: need an IPv4 --host, --port in 1..65535, "
            "--connections in 1..%d, --parallel >= 1\n",
            kMaxConnections);
    return 2;
  }
  const double setup_s = std::clamp(absl::GetFlag(FLAGS_setup_timeout_s), 1.0, 600.0);
  const double hold_s = std::clamp(absl::GetFlag(FLAGS_hold_s), 0.0, 3600.0);
  alarm(static_cast<unsigned>(std::ceil(setup_s + hold_s)) + 10);
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = &OnSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  uint64_t fd_limit = RaiseFdLimit();
  if (fd_limit < static_cast<uint64_t>(total) + 16) {
    fprintf(stderr, "idle_conns: RLIMIT_NOFILE is %lu, too low for %d connections\n",
            static_cast<unsigned long>(fd_limit), total);
    return 2;
  }

  const std::string alpn = absl::GetFlag(FLAGS_alpn);
  if (alpn != "h2" && alpn != "http/1.1") {
    fprintf(stderr, "idle_conns: --alpn must be h2 or http/1.1\n");
    return 2;
  }
  SSL_CTX* ctx = NewClientContext({alpn}, std::string());
  std::vector<Conn> conns(total);
  long failed = 0, established = 0;
  const int64_t t0 = NowUs(CLOCK_MONOTONIC);
  SetUpAll(conns, addr, ctx, parallel, t0 + static_cast<int64_t>(setup_s * 1e6), &established,
           &failed);
  const double setup_took = static_cast<double>(NowUs(CLOCK_MONOTONIC) - t0) / 1e6;
  printf("ready connections=%d established=%ld failed=%ld setup_s=%.2f\n", total, established,
         failed, setup_took);
  fflush(stdout);

  // Hold. Anything readable on an idle connection is drained; EOF means the
  // server closed it.
  const int64_t hold_start = NowUs(CLOCK_MONOTONIC);
  const long closed_by_server = HoldIdle(conns, hold_start + static_cast<int64_t>(hold_s * 1e6));
  printf("done established=%ld closed_by_server=%ld held_s=%.2f\n", established, closed_by_server,
         static_cast<double>(NowUs(CLOCK_MONOTONIC) - hold_start) / 1e6);
  fflush(stdout);
  conns.clear();
  SSL_CTX_free(ctx);
  return failed == 0 && closed_by_server == 0 ? 0 : 1;
}

}  // namespace
}  // namespace sluice::bench

int main(int argc, char** argv) { return sluice::bench::Main(argc, argv); }
