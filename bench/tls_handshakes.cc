// tls_handshakes: full TLS handshakes per second a server sustains, each on a
// new connection carrying one small request.
//
// --concurrency connections run at once. Each: TCP connect, a full TLS
// handshake (the client keeps no session cache and offers no ticket, so the
// server cannot resume), one "GET --path HTTP/1.1" with Connection: close
// (ALPN http/1.1), read the whole response (Content-Length or chunked), then
// close, and start over. Runs for --duration_s or --max_handshakes
// connections, whichever comes first.
//
// Output, one line on stdout:
//   label=.. concurrency=.. handshakes=.. failed=.. non2xx=.. resumed=..
//   per_s=.. p50_us=.. p99_us=.. elapsed_s=.. version=.. cipher=..
// handshakes counts connections that completed the handshake and got a
// whole response; per_s = handshakes / elapsed_s; p50/p99 are the per
// connection times from connect() to the end of the response. The exit
// status is 0 when nothing failed.
#include <signal.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
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
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "bench/stats.h"
#include "bench/tls_client.h"

ABSL_FLAG(std::string, host, "127.0.0.1", "IPv4 address to connect to");
ABSL_FLAG(int, port, 0, "TLS port (required)");
ABSL_FLAG(std::string, sni, "localhost", "TLS server name and Host header host");
ABSL_FLAG(int, concurrency, 8, "Connections in flight at once");
ABSL_FLAG(double, duration_s, 3, "Run time in seconds (clamped to [0.1, 600])");
ABSL_FLAG(int, max_handshakes, 200000, "Upper bound on connections started");
ABSL_FLAG(std::string, path, "/api/tags", "Request target");
ABSL_FLAG(std::string, authorization, "", "Authorization header value; empty: none");
ABSL_FLAG(std::string, label, "-", "Printed first, as label=...");

namespace sluice::bench {
namespace {

constexpr int kMaxConcurrency = 10000;
constexpr int kMaxErrorsPrinted = 5;

enum class Phase { kIdle, kConnecting, kHandshaking, kWriting, kReading };

struct Slot {
  int index = 0;
  Phase phase = Phase::kIdle;
  std::unique_ptr<TlsSocket> tls;
  uint32_t events = 0;
  int64_t start_us = 0;
  std::string response;
};

class Runner {
 public:
  Runner(sockaddr_in addr, SSL_CTX* ctx, int concurrency, std::string request)
      : addr_(addr), ctx_(ctx), request_(std::move(request)), slots_(concurrency) {
    for (int i = 0; i < concurrency; ++i) slots_[i].index = i;
  }

  ~Runner() {
    for (Slot& s : slots_) s.tls.reset();
    if (epoll_fd_ >= 0) close(epoll_fd_);
  }

  bool Run(int64_t duration_us, long max_started) {
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd_ < 0) return false;
    max_started_ = max_started;
    const int64_t t0 = NowUs(CLOCK_MONOTONIC);
    deadline_ = t0 + duration_us;
    for (Slot& s : slots_) Start(s);
    epoll_event events[256];
    while (true) {
      bool busy = false;
      for (const Slot& s : slots_) busy |= s.phase != Phase::kIdle;
      if (!busy) break;
      int64_t now = NowUs(CLOCK_MONOTONIC);
      if (now >= deadline_ + 1'000'000) break;  // stragglers: give up
      int n = epoll_wait(epoll_fd_, events, 256, 100);
      for (int i = 0; i < n; ++i) Handle(slots_[events[i].data.u32], events[i].events);
    }
    elapsed_us_ = std::max<int64_t>(NowUs(CLOCK_MONOTONIC) - t0, 1);
    return true;
  }

  bool Report(std::string_view label) {
    const Summary latency = Summarize(latency_us_);
    const double per_s = static_cast<double>(done_) / (static_cast<double>(elapsed_us_) / 1e6);
    printf(
        "label=%s concurrency=%zu handshakes=%ld failed=%ld non2xx=%ld "
        "resumed=%ld per_s=%.0f p50_us=%ld p99_us=%ld elapsed_s=%.2f "
        "version=%s cipher=%s\n",
        std::string(label).c_str(), slots_.size(), done_, failed_, non2xx_, resumed_, per_s,
        latency.p50, latency.p99, static_cast<double>(elapsed_us_) / 1e6, version_.c_str(),
        cipher_.c_str());
    fflush(stdout);
    return failed_ == 0 && non2xx_ == 0 && done_ > 0;
  }

 private:
  void Error(const Slot& s, std::string_view what) {
    if (++errors_printed_ <= kMaxErrorsPrinted) {
      fprintf(stderr, "tls_handshakes: slot %d: %.*s\n", s.index, static_cast<int>(what.size()),
              what.data());
    }
  }

  void Start(Slot& s) {
    s.tls.reset();
    s.phase = Phase::kIdle;
    if (started_ >= max_started_ || NowUs(CLOCK_MONOTONIC) >= deadline_) return;
    ++started_;
    s.start_us = NowUs(CLOCK_MONOTONIC);
    s.response.clear();
    int fd = StartConnect(addr_);
    if (fd < 0) {
      Error(s, absl::StrCat("connect: ", strerror(-fd)));
      ++failed_;
      return;
    }
    s.tls = std::make_unique<TlsSocket>(ctx_, fd, absl::GetFlag(FLAGS_sni));
    s.phase = Phase::kConnecting;
    s.events = EPOLLOUT;
    epoll_event ev{};
    ev.events = s.events;
    ev.data.u32 = static_cast<uint32_t>(s.index);
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
  }

  void Interest(Slot& s, uint32_t events) {
    if (events == s.events) return;
    s.events = events;
    epoll_event ev{};
    ev.events = events;
    ev.data.u32 = static_cast<uint32_t>(s.index);
    epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, s.tls->fd(), &ev);
  }

  void Fail(Slot& s, std::string_view why) {
    ++failed_;
    Error(s, why);
    Start(s);
  }

  void Handle(Slot& s, uint32_t events) {
    if (s.phase == Phase::kIdle) return;
    if (s.phase == Phase::kConnecting) {
      int err = ConnectResult(s.tls->fd());
      if (err != 0) return Fail(s, absl::StrCat("connect: ", strerror(err)));
      s.phase = Phase::kHandshaking;
    }
    if (s.phase == Phase::kHandshaking) {
      TlsSocket::Result r = s.tls->Handshake();
      if (r == TlsSocket::Result::kWantRead) return Interest(s, EPOLLIN);
      if (r == TlsSocket::Result::kWantWrite) return Interest(s, EPOLLOUT);
      if (r != TlsSocket::Result::kDone) {
        return Fail(s, "TLS handshake: " + s.tls->LastError());
      }
      if (SSL_session_reused(s.tls->ssl())) ++resumed_;
      if (version_.empty()) {
        version_ = SSL_get_version(s.tls->ssl());
        const SSL_CIPHER* cipher = SSL_get_current_cipher(s.tls->ssl());
        cipher_ = cipher ? SSL_CIPHER_get_name(cipher) : "?";
      }
      s.phase = Phase::kWriting;
      TlsSocket::Result w = s.tls->Write(request_);
      if (w == TlsSocket::Result::kWantWrite) return Interest(s, EPOLLOUT);
      if (w != TlsSocket::Result::kDone) return Fail(s, "TLS write: " + s.tls->LastError());
      s.phase = Phase::kReading;
    } else if (s.phase == Phase::kWriting) {
      TlsSocket::Result w = s.tls->Flush();
      if (w == TlsSocket::Result::kWantWrite) return Interest(s, EPOLLOUT);
      if (w != TlsSocket::Result::kDone) return Fail(s, "TLS write: " + s.tls->LastError());
      s.phase = Phase::kReading;
    }
    Interest(s, EPOLLIN);
    char buf[16384];
    while (true) {
      size_t n = 0;
      TlsSocket::Result r = s.tls->Read(buf, sizeof(buf), &n);
      if (r == TlsSocket::Result::kDone) {
        s.response.append(buf, n);
        if (ResponseComplete(s)) return Finish(s);
        continue;
      }
      if (r == TlsSocket::Result::kWantRead) return;
      if (r == TlsSocket::Result::kClosed && ResponseComplete(s, /*eof=*/true)) {
        return Finish(s);
      }
      return Fail(s, "response cut short: " + s.tls->LastError());
    }
  }

  // Whether the response in s.response is whole: by Content-Length, by the
  // last chunk, or (at EOF) by the close.
  static bool ResponseComplete(const Slot& s, bool eof = false) {
    size_t end = s.response.find("\r\n\r\n");
    if (end == std::string::npos) return false;
    std::string head = absl::AsciiStrToLower(s.response.substr(0, end));
    size_t cl = head.find("\r\ncontent-length:");
    if (cl != std::string::npos) {
      size_t len = 0;
      std::string_view v = std::string_view(head).substr(cl + 17);
      v = v.substr(0, v.find("\r\n"));
      if (!absl::SimpleAtoi(std::string(v), &len)) return false;
      return s.response.size() >= end + 4 + len;
    }
    if (head.find("\r\ntransfer-encoding: chunked") != std::string::npos) {
      return s.response.size() >= end + 4 + 5 &&
             s.response.compare(s.response.size() - 5, 5, "0\r\n\r\n") == 0;
    }
    return eof;
  }

  void Finish(Slot& s) {
    if (s.response.rfind("HTTP/1.1 2", 0) != 0) {
      ++non2xx_;
      Error(s, "status line " + s.response.substr(0, s.response.find('\r')));
    }
    ++done_;
    latency_us_.push_back(NowUs(CLOCK_MONOTONIC) - s.start_us);
    Start(s);
  }

  const sockaddr_in addr_;
  SSL_CTX* const ctx_;
  const std::string request_;
  std::vector<Slot> slots_;
  int epoll_fd_ = -1;
  int64_t deadline_ = 0;
  long max_started_ = 0;
  long started_ = 0;
  long done_ = 0;
  long failed_ = 0;
  long non2xx_ = 0;
  long resumed_ = 0;
  int errors_printed_ = 0;
  int64_t elapsed_us_ = 0;
  std::vector<int64_t> latency_us_;
  std::string version_;
  std::string cipher_;
};

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Full TLS handshakes per second, one request each: tls_handshakes "
      "--port=PORT [--concurrency=8 --duration_s=3]");
  absl::ParseCommandLine(argc, argv);
  const int port = absl::GetFlag(FLAGS_port);
  const int concurrency = absl::GetFlag(FLAGS_concurrency);
  sockaddr_in addr;
  if (!ParseAddress(absl::GetFlag(FLAGS_host), port, &addr) || concurrency < 1 ||
      concurrency > kMaxConcurrency || absl::GetFlag(FLAGS_max_handshakes) < 1) {
    fprintf(stderr,
            "tls_handshakes: need an IPv4 --host, --port in 1..65535, "
            "--concurrency in 1..%d, --max_handshakes >= 1\n",
            kMaxConcurrency);
    return 2;
  }
  const double duration_s = std::clamp(absl::GetFlag(FLAGS_duration_s), 0.1, 600.0);
  alarm(static_cast<unsigned>(std::ceil(duration_s)) + 10);
  signal(SIGPIPE, SIG_IGN);
  RaiseFdLimit();

  std::string request = absl::StrCat("GET ", absl::GetFlag(FLAGS_path),
                                     " HTTP/1.1\r\nHost: ", absl::GetFlag(FLAGS_sni), ":", port,
                                     "\r\nUser-Agent: sluice-tls-handshakes\r\n");
  if (!absl::GetFlag(FLAGS_authorization).empty()) {
    absl::StrAppend(&request, "Authorization: ", absl::GetFlag(FLAGS_authorization), "\r\n");
  }
  absl::StrAppend(&request, "Connection: close\r\n\r\n");

  SSL_CTX* ctx = NewClientContext({"http/1.1"}, std::string());
  auto runner = std::make_unique<Runner>(addr, ctx, concurrency, request);
  bool clean =
      runner->Run(static_cast<int64_t>(duration_s * 1e6), absl::GetFlag(FLAGS_max_handshakes)) &&
      runner->Report(absl::GetFlag(FLAGS_label));
  runner.reset();
  SSL_CTX_free(ctx);
  return clean ? 0 : 1;
}

}  // namespace
}  // namespace sluice::bench

int main(int argc, char** argv) { return sluice::bench::Main(argc, argv); }
