// sluice: a reverse proxy for Ollama. Entry point: flags, listeners,
// worker threads, signals.

#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "core/cli.h"
#include "core/config.h"
#include "core/log.h"
#include "core/worker.h"

// A byte count flag: plain bytes or with a k/m/g suffix (powers of 1024),
// as nginx writes client_max_body_size.
struct ByteSize {
  uint64_t bytes = 0;
};

bool AbslParseFlag(absl::string_view text, ByteSize* out, std::string* error) {
  std::string t(text);
  if (t.empty()) {
    *error = "empty size";
    return false;
  }
  uint64_t mult = 1;
  switch (t.back()) {
    case 'k': case 'K': mult = 1ull << 10; t.pop_back(); break;
    case 'm': case 'M': mult = 1ull << 20; t.pop_back(); break;
    case 'g': case 'G': mult = 1ull << 30; t.pop_back(); break;
    default: break;
  }
  if (t.empty() || t.find_first_not_of("0123456789") != std::string::npos || t.size() > 12) {
    *error = "expected a number of bytes with an optional k, m or g suffix";
    return false;
  }
  out->bytes = std::stoull(t) * mult;
  return true;
}

std::string AbslUnparseFlag(ByteSize s) {
  if (s.bytes != 0 && s.bytes % (1ull << 30) == 0) return absl::StrCat(s.bytes >> 30, "G");
  if (s.bytes != 0 && s.bytes % (1ull << 20) == 0) return absl::StrCat(s.bytes >> 20, "M");
  if (s.bytes != 0 && s.bytes % (1ull << 10) == 0) return absl::StrCat(s.bytes >> 10, "K");
  return absl::StrCat(s.bytes);
}

ABSL_FLAG(std::string, listen_http, "127.0.0.1:8080",
          "Plain HTTP/1.1 listener, host:port or [v6]:port (port 0: any free port).");
ABSL_FLAG(int32_t, threads, 0,
          "Worker threads, one pinned per CPU; 0 = the CPUs in the affinity mask.");
ABSL_FLAG(std::string, upstream, "127.0.0.1:11434", "Ollama address, host:port.");
ABSL_FLAG(std::string, upstream_host, "",
          "Host header sent upstream; empty = the --upstream host:port (a "
          "loopback-bound Ollama answers 403 to other hosts).");
ABSL_FLAG(int32_t, upstream_keepalive, 32,
          "Idle keepalive links to the upstream kept per worker (nginx keepalive).");
ABSL_FLAG(absl::Duration, upstream_idle_timeout, absl::Seconds(60),
          "How long an idle upstream link is kept.");
ABSL_FLAG(absl::Duration, connect_timeout, absl::Seconds(10),
          "Upstream connect timeout (nginx proxy_connect_timeout); 504 after it.");
ABSL_FLAG(absl::Duration, read_timeout, absl::Seconds(600),
          "Longest wait between two reads from the upstream (proxy_read_timeout); 504 "
          "if nothing came yet.");
ABSL_FLAG(absl::Duration, send_timeout, absl::Seconds(600),
          "Longest wait between two successful writes to the upstream or the client.");
ABSL_FLAG(absl::Duration, keepalive_timeout, absl::Seconds(75),
          "Idle client keepalive connections are closed after this.");
ABSL_FLAG(absl::Duration, client_header_timeout, absl::Seconds(60),
          "Time a client has to send a complete request head (408 after it).");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(30),
          "On SIGTERM/SIGINT, how long in-flight requests may take to finish.");
ABSL_FLAG(ByteSize, client_max_body_size, ByteSize{100ull << 20},
          "Largest request body (413 above it).");
ABSL_FLAG(ByteSize, max_header_bytes, ByteSize{64ull << 10},
          "Largest request line plus headers (431 above it).");
ABSL_FLAG(std::string, log_level, "info", "Error log level: debug, info, warn or error.");

namespace sluice::core {
namespace {

constexpr absl::string_view kUsage =
    "sluice: a reverse proxy for Ollama (TLS, HTTP/2, auth, limits, metrics).\n"
    "Usage: sluice [--flag=value ...]";

int64_t DurationFlag(const absl::Flag<absl::Duration>& flag, const char* name) {
  absl::Duration d = absl::GetFlag(flag);
  if (d <= absl::ZeroDuration()) UsageError(absl::StrCat("--", name, ": must be positive"));
  return absl::ToInt64Nanoseconds(d);
}

Config BuildConfig() {
  Config c;
  c.listen_http_text = absl::GetFlag(FLAGS_listen_http);
  auto listen = ParseHostPort(c.listen_http_text, /*numeric_only=*/true);
  if (!listen.ok()) UsageError(absl::StrCat("--listen_http: ", listen.status().message()));
  c.listen_http = *listen;

  int threads = absl::GetFlag(FLAGS_threads);
  if (threads < 0 || threads > 1024) UsageError("--threads: must be between 0 and 1024");
  c.threads = threads;

  std::string upstream = absl::GetFlag(FLAGS_upstream);
  auto up = ParseHostPort(upstream, /*numeric_only=*/false);
  if (!up.ok()) UsageError(absl::StrCat("--upstream: ", up.status().message()));
  c.upstream = *up;
  c.upstream_host = absl::GetFlag(FLAGS_upstream_host);
  if (c.upstream_host.empty()) {
    std::string_view u = upstream;
    if (u.rfind("http://", 0) == 0) u.remove_prefix(7);
    while (!u.empty() && u.back() == '/') u.remove_suffix(1);
    c.upstream_host = std::string(u);
  }
  if (c.upstream_host.find_first_of("\r\n") != std::string::npos) {
    UsageError("--upstream_host: must not contain line breaks");
  }
  c.upstream_keepalive = absl::GetFlag(FLAGS_upstream_keepalive);
  if (c.upstream_keepalive < 0) UsageError("--upstream_keepalive: must be >= 0");
  c.upstream_idle_timeout_ns = DurationFlag(FLAGS_upstream_idle_timeout, "upstream_idle_timeout");
  c.connect_timeout_ns = DurationFlag(FLAGS_connect_timeout, "connect_timeout");
  c.read_timeout_ns = DurationFlag(FLAGS_read_timeout, "read_timeout");
  c.send_timeout_ns = DurationFlag(FLAGS_send_timeout, "send_timeout");
  c.keepalive_timeout_ns = DurationFlag(FLAGS_keepalive_timeout, "keepalive_timeout");
  c.client_header_timeout_ns = DurationFlag(FLAGS_client_header_timeout, "client_header_timeout");
  c.drain_timeout_ns = DurationFlag(FLAGS_drain_timeout, "drain_timeout");
  c.client_max_body_size = absl::GetFlag(FLAGS_client_max_body_size).bytes;
  c.max_header_bytes = absl::GetFlag(FLAGS_max_header_bytes).bytes;
  if (c.max_header_bytes < 256) UsageError("--max_header_bytes: must be at least 256");

  std::string level = absl::GetFlag(FLAGS_log_level);
  static constexpr const char* kLevels[] = {"debug", "info", "warn", "error"};
  c.log_level = -1;
  for (int i = 0; i < 4; ++i) {
    if (level == kLevels[i]) c.log_level = i;
  }
  if (c.log_level < 0) UsageError("--log_level: expected debug, info, warn or error");
  return c;
}

std::vector<int> AllowedCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int i = 0; i < CPU_SETSIZE; ++i) {
      if (CPU_ISSET(i, &set)) cpus.push_back(i);
    }
  }
  if (cpus.empty()) cpus.push_back(-1);
  return cpus;
}

// A listening SO_REUSEPORT socket; the kernel spreads connections over the
// workers' sockets.
int Listen(const SocketAddress& addr, std::string* error) {
  int fd = ::socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = strerror(errno);
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (::bind(fd, addr.get(), addr.len) != 0 || ::listen(fd, 4096) != 0) {
    *error = strerror(errno);
    ::close(fd);
    return -1;
  }
  return fd;
}

int Port(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

void SetPort(SocketAddress* addr, int port) {
  if (addr->family() == AF_INET6) {
    reinterpret_cast<sockaddr_in6*>(&addr->storage)->sin6_port = htons(port);
  } else {
    reinterpret_cast<sockaddr_in*>(&addr->storage)->sin_port = htons(port);
  }
}

std::string HostPart(const std::string& text) {
  std::string_view t = text;
  size_t colon = t.rfind(':');
  std::string host(t.substr(0, colon));
  return host.empty() ? "0.0.0.0" : host;
}

int Run(int argc, char** argv) {
  ParseFlagsOrExit(argc, argv, kUsage);
  Config config = BuildConfig();
  g_log_level.store(config.log_level);

  std::vector<int> cpus = AllowedCpus();
  const int n = config.threads > 0 ? config.threads : static_cast<int>(cpus.size());
  config.threads = n;

  // Signals go to the main thread only (sigwait below); workers inherit the
  // blocked mask. SIGPIPE is moot (sends use MSG_NOSIGNAL) but blocked too.
  sigset_t sigs;
  sigemptyset(&sigs);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGPIPE}) sigaddset(&sigs, s);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  std::vector<int> listen_fds;
  std::string error;
  int first = Listen(config.listen_http, &error);
  if (first < 0) {
    fprintf(stderr, "sluice: --listen_http: cannot listen on %s: %s\n",
            config.listen_http_text.c_str(), error.c_str());
    return 1;
  }
  const int port = Port(first);
  SetPort(&config.listen_http, port);
  listen_fds.push_back(first);
  for (int i = 1; i < n; ++i) {
    int fd = Listen(config.listen_http, &error);
    if (fd < 0) {
      fprintf(stderr, "sluice: --listen_http: %s\n", error.c_str());
      return 1;
    }
    listen_fds.push_back(fd);
  }

  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<std::thread> threads;
  std::vector<std::promise<absl::Status>> ready(n);
  std::atomic<int> running{n};
  for (int i = 0; i < n; ++i) {
    int cpu = cpus[i % cpus.size()];
    workers.push_back(std::make_unique<Worker>(i, config, listen_fds[i], cpu));
  }
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      Worker& w = *workers[i];
      absl::Status st = w.Init();
      ready[i].set_value(st);
      if (st.ok()) w.Run();
      running.fetch_sub(1);
      kill(getpid(), SIGUSR1);  // wake the signal loop
    });
  }
  for (int i = 0; i < n; ++i) {
    absl::Status st = ready[i].get_future().get();
    if (!st.ok()) {
      fprintf(stderr, "sluice: %s\n", std::string(st.message()).c_str());
      _exit(1);
    }
  }
  printf("sluice listening on http://%s:%d (%d workers)\n",
         HostPart(config.listen_http_text).c_str(), port, n);
  fflush(stdout);
  LOG_INFO("upstream %s (Host: %s), %d worker(s)", absl::GetFlag(FLAGS_upstream).c_str(),
           config.upstream_host.c_str(), n);

  bool stopping = false;
  while (running.load() > 0) {
    timespec wait{0, 200 * 1000 * 1000};
    int sig = sigtimedwait(&sigs, nullptr, &wait);
    if (sig == SIGINT || sig == SIGTERM) {
      if (!stopping) {
        LOG_INFO("%s: stop accepting, draining for up to %llds", strsignal(sig),
                 static_cast<long long>(config.drain_timeout_ns / 1000000000));
        stopping = true;
        for (auto& w : workers) w->RequestStop();
      } else {
        LOG_WARN("second %s: exiting now", strsignal(sig));
        _exit(1);
      }
    }
  }
  for (auto& t : threads) t.join();
  LOG_INFO("stopped");
  // Connections left after a drain timeout are simply dropped by exit.
  _exit(0);
}

}  // namespace
}  // namespace sluice::core

int main(int argc, char** argv) { return sluice::core::Run(argc, argv); }
