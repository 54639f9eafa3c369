// sluice: a reverse proxy for Ollama. Entry point: flags, listeners,
// worker threads, signals.

#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <linux/filter.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "core/proxy/auth_verifier.h"
#include "core/server/cli.h"
#include "core/proxy/client_connection.h"
#include "core/server/config.h"
#include "core/observe/log.h"
#include "core/observe/log_file.h"
#include "core/observe/observability.h"
#include "core/server/restart.h"
#include "core/server/snapshot_slot.h"
#include "tls/tls_context.h"
#include "core/server/worker.h"
#include "policy/keys_command.h"
#include "policy/limiter.h"
#include "policy/policy.h"

using sluice::core::ByteSize;

ABSL_FLAG(std::string, listen_http, "0.0.0.0:80",
          "Plain HTTP listener, host:port or [v6]:port (port 0: any free port; "
          "empty: none). What it does is set by --http_mode.");
ABSL_FLAG(std::string, http_mode, "redirect",
          "redirect: answer plain HTTP with 301 to https://host/path (nginx's "
          "port-80 server); serve: proxy plain HTTP/1.1 and h2c (prior "
          "knowledge) too, for loopback-only setups.");
ABSL_FLAG(std::string, listen_tls, "0.0.0.0:443",
          "TLS listener (HTTP/2 and HTTP/1.1 by ALPN), host:port or [v6]:port; "
          "empty: none (then --http_mode=serve is required).");
ABSL_FLAG(std::string, tls_cert, "",
          "Certificate chain PEM (leaf first, like Let's Encrypt fullchain.pem); "
          "re-read on SIGHUP.");
ABSL_FLAG(std::string, tls_key, "", "Private key PEM for --tls_cert; re-read on SIGHUP.");
ABSL_FLAG(bool, tls_session_tickets, true,
          "Resume TLS sessions by tickets (keys rotated, shared by all workers); "
          "the session cache works either way.");
ABSL_FLAG(std::string, hsts, "max-age=63072000; includeSubDomains",
          "Strict-Transport-Security value added to every TLS response; empty: off.");
ABSL_FLAG(int32_t, h2_max_concurrent_streams, 128,
          "SETTINGS_MAX_CONCURRENT_STREAMS sent to HTTP/2 clients; more streams "
          "are refused (REFUSED_STREAM), the client retries them.");
ABSL_FLAG(absl::Duration, handshake_timeout, absl::Seconds(10),
          "Time a client has to complete the TLS handshake.");
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
ABSL_FLAG(absl::Duration, client_body_timeout, absl::Seconds(60),
          "Longest gap between two reads of a request body (408 after it), as "
          "nginx's client_body_timeout.");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(30),
          "On SIGTERM/SIGINT, how long in-flight requests may take to finish.");
ABSL_FLAG(ByteSize, client_max_body_size, ByteSize{100ull << 20},
          "Largest request body (413 above it).");
ABSL_FLAG(ByteSize, max_header_bytes, ByteSize{64ull << 10},
          "Largest request line plus headers (431 above it).");
ABSL_FLAG(int32_t, max_connections, 0,
          "Client connections the process holds at once (shared evenly by the "
          "workers; 0: derived from the open-files limit, half of it less a "
          "reserve, so each connection can have an upstream link). Past it, a "
          "connection's first request is answered 503 with Retry-After and the "
          "connection closed; a small allowance beyond that is closed at accept.");
ABSL_FLAG(absl::Duration, busy_poll, absl::ZeroDuration(),
          "Before a worker sleeps, poll for completions this long (e.g. 50us). "
          "Cuts the added per-chunk delay where waking an idle CPU is slow "
          "(virtual machines) at the cost of CPU time; 0 = off.");
ABSL_FLAG(std::string, log_level, "info", "Error log level: debug, info, warn or error.");
ABSL_FLAG(std::string, error_log, "",
          "Error log file (appended; reopened on SIGUSR1); empty: stderr.");

// Logs and metrics.
ABSL_FLAG(std::string, access_log, "off",
          "Access log file (appended; reopened on SIGUSR1, for logrotate), or off.");
ABSL_FLAG(std::string, access_log_format, "nginx",
          "nginx: the nginx baseline's log_format ($remote_addr - $remote_user "
          "[$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" "
          "\"$http_user_agent\" rt=$request_time urt=$upstream_response_time); json: "
          "one JSON object per line with those fields plus key, model, stream, ttft, "
          "inter-token gaps, prompt and completion tokens, cancelled.");
ABSL_FLAG(absl::Duration, access_log_flush, absl::Seconds(1),
          "Longest time a line waits in its worker's buffer before it is written.");
ABSL_FLAG(bool, metrics, true,
          "Count requests, latencies and tokens, and serve --metrics_path. Off: "
          "no per-request accounting besides the access log.");
ABSL_FLAG(std::string, metrics_path, "/metrics",
          "Path of the Prometheus metrics page (empty: not served).");
ABSL_FLAG(std::string, status_path, "/status",
          "Path of the nginx stub_status page (empty: not served).");
ABSL_FLAG(std::string, status_allow, "127.0.0.1/32,::1/128",
          "Client addresses (CIDR list) allowed to read --status_path and "
          "--metrics_path; others get 403. No credentials are asked there.");

// Access policy. Files are re-read on SIGHUP; a file that does not load
// leaves the old policy in place.
ABSL_FLAG(std::string, auth, "",
          "key (API keys), basic (htpasswd users), key_or_basic, or none. "
          "Default: key_or_basic when --keys_file or --htpasswd is given; "
          "without either, sluice refuses to start unless --auth=none.");
ABSL_FLAG(std::string, keys_file, "",
          "API keys, one NAME:sha256:HEX per line (made by `sluice keys add`); "
          "clients send Authorization: Bearer KEY or x-api-key: KEY.");
ABSL_FLAG(std::string, htpasswd, "",
          "Basic-auth users, an Apache htpasswd file (bcrypt, apr1, SHA, "
          "SHA-256/512 crypt).");
ABSL_FLAG(std::string, rules_file, "",
          "Extra rules, one per line: allow|deny CIDRS; zone NAME [by=ip|credential] "
          "RATE [burst=N] [nodelay|delay=N]; route PATTERN allow|deny|admin "
          "[zone=NAME|off] [allow_ip=CIDRS] [deny_ip=CIDRS] [max_per_ip=N] "
          "[max_per_key=N]. Checked before the built-in routes.");
ABSL_FLAG(std::string, allow, "",
          "Only these client addresses (CIDR list, IPv4/IPv6) may connect; "
          "empty: all. Checked before auth.");
ABSL_FLAG(std::string, deny, "", "Client addresses refused with 403 (CIDR list).");
ABSL_FLAG(std::string, trusted_proxies, "",
          "Proxies whose X-Forwarded-For names the client (CIDR list); from "
          "anyone else the header is ignored for policy.");
ABSL_FLAG(std::string, admin_cidrs, "127.0.0.1/32,::1/128",
          "Addresses allowed on the admin routes (/api/pull, /api/create, "
          "/api/copy, /api/blobs).");
ABSL_FLAG(std::string, cors_origins, "",
          "Browser origins allowed to call the API (comma list of "
          "scheme://host[:port], or *); sluice answers preflights and refuses "
          "other origins with 403. The Origin header is not forwarded.");
ABSL_FLAG(std::string, rate_generation, "10r/m burst=5 nodelay",
          "Rate limit of the generation routes (/api/generate, /api/chat, "
          "/api/embed, /api/embeddings, /v1/chat/completions, /v1/completions, "
          "/v1/embeddings), nginx limit_req style; off: none.");
ABSL_FLAG(std::string, rate_api, "60r/m burst=20 nodelay",
          "Rate limit of every other route; off: none.");
ABSL_FLAG(std::string, auth_attempts, "6r/m burst=10",
          "Failed logins per client address, limit_req style; off: none. "
          "A wrong key, a malformed credential and a refused password "
          "count; a right password does not, and credentials known good (a "
          "valid key, Basic credentials checked within the cache lifetime) "
          "are never refused by it. Past it: 429 with Retry-After for other "
          "credentials, an uncached password unchecked (no bcrypt run).");
ABSL_FLAG(std::string, rate_by, "ip",
          "What the rate limits count by: ip (the client address) or "
          "credential (the key name or user; the address when anonymous).");
ABSL_FLAG(int32_t, max_streams_per_ip, 0,
          "Concurrent requests on the generation routes per client address "
          "(429 above it); 0: no cap.");
ABSL_FLAG(int32_t, max_streams_per_key, 0,
          "Concurrent requests on the generation routes per key or user; 0: no cap.");
ABSL_FLAG(int32_t, limit_table_entries, 131072,
          "Client states the rate-limit table keeps (about 64 bytes each); the "
          "least recently limited are dropped when it is full.");

namespace sluice::core {
namespace {

constexpr absl::string_view kUsage =
    "sluice: a reverse proxy for Ollama (TLS, HTTP/2, auth, limits, metrics).\n"
    "Usage: sluice [--flag=value ...]\n"
    "       sluice keys add|list|revoke [NAME] --keys_file FILE";

int64_t DurationFlag(const absl::Flag<absl::Duration>& flag, const char* name) {
  absl::Duration d = absl::GetFlag(flag);
  if (d <= absl::ZeroDuration()) UsageError(absl::StrCat("--", name, ": must be positive"));
  return absl::ToInt64Nanoseconds(d);
}

// The port of `addr`, in host order (0: any free port).
int Port(const SocketAddress& addr) {
  if (addr.family() == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&addr.storage)->sin6_port);
  }
  return ntohs(reinterpret_cast<const sockaddr_in*>(&addr.storage)->sin_port);
}

Config BuildConfig() {
  Config c;
  c.listen_http_text = absl::GetFlag(FLAGS_listen_http);
  c.listen_http_enabled = !c.listen_http_text.empty();
  if (c.listen_http_enabled) {
    auto listen = ParseHostPort(c.listen_http_text, /*numeric_only=*/true);
    if (!listen.ok()) UsageError(absl::StrCat("--listen_http: ", listen.status().message()));
    c.listen_http = *listen;
  }
  std::string mode = absl::GetFlag(FLAGS_http_mode);
  if (mode != "redirect" && mode != "serve") {
    UsageError("--http_mode: expected redirect or serve");
  }
  c.http_serve = mode == "serve";
  c.listen_tls_text = absl::GetFlag(FLAGS_listen_tls);
  c.listen_tls_enabled = !c.listen_tls_text.empty();
  if (c.listen_tls_enabled) {
    auto listen = ParseHostPort(c.listen_tls_text, /*numeric_only=*/true);
    if (!listen.ok()) UsageError(absl::StrCat("--listen_tls: ", listen.status().message()));
    c.listen_tls = *listen;
    if (absl::GetFlag(FLAGS_tls_cert).empty()) {
      UsageError("--tls_cert: required with --listen_tls (tools/make-certs.sh makes a "
                 "local one; --listen_tls= turns TLS off)");
    }
    if (absl::GetFlag(FLAGS_tls_key).empty()) {
      UsageError("--tls_key: required with --listen_tls");
    }
  } else if (!c.http_serve && c.listen_http_enabled) {
    UsageError("--http_mode: redirect needs a TLS listener; use --http_mode=serve "
               "to serve plain HTTP without --listen_tls");
  }
  if (!c.listen_tls_enabled && !c.listen_http_enabled) {
    UsageError("--listen_http: at least one of --listen_http and --listen_tls is needed");
  }
  // One address for both would put the two listeners in one SO_REUSEPORT
  // group, each getting part of the other's clients.
  if (c.listen_tls_enabled && c.listen_http_enabled && c.listen_tls.len == c.listen_http.len &&
      memcmp(&c.listen_tls.storage, &c.listen_http.storage, c.listen_tls.len) == 0 &&
      Port(c.listen_tls) != 0) {
    UsageError(absl::StrCat("--listen_tls: ", c.listen_tls_text, " is --listen_http's address too"));
  }
  std::string hsts = absl::GetFlag(FLAGS_hsts);
  if (hsts.find_first_of("\r\n") != std::string::npos) {
    UsageError("--hsts: must not contain line breaks");
  }
  c.hsts = hsts;
  c.h2_max_concurrent_streams = static_cast<uint32_t>(absl::GetFlag(FLAGS_h2_max_concurrent_streams));
  if (c.h2_max_concurrent_streams < 1 || c.h2_max_concurrent_streams > 100000) {
    UsageError("--h2_max_concurrent_streams: must be between 1 and 100000");
  }
  if (!hsts.empty()) c.hsts_fields = absl::StrCat("Strict-Transport-Security: ", hsts, "\r\n");
  c.handshake_timeout_ns = DurationFlag(FLAGS_handshake_timeout, "handshake_timeout");

  int threads = absl::GetFlag(FLAGS_threads);
  if (threads < 0 || threads > 1024) UsageError("--threads: must be between 0 and 1024");
  c.threads = threads;

  std::string upstream = absl::GetFlag(FLAGS_upstream);
  auto up = ParseHostPort(upstream, /*numeric_only=*/false);
  if (!up.ok()) {
    UsageError(absl::StrCat("--upstream: ", up.status().message(),
                            upstream.rfind("https://", 0) == 0
                                ? "; sluice reaches the upstream in plain HTTP only"
                                : ""));
  }
  c.upstream = *up;
  c.upstream_host = absl::GetFlag(FLAGS_upstream_host);
  if (c.upstream_host.empty()) c.upstream_host = upstream;
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
  c.client_body_timeout_ns = DurationFlag(FLAGS_client_body_timeout, "client_body_timeout");
  c.drain_timeout_ns = DurationFlag(FLAGS_drain_timeout, "drain_timeout");
  c.client_max_body_size = absl::GetFlag(FLAGS_client_max_body_size).bytes;
  c.max_header_bytes = absl::GetFlag(FLAGS_max_header_bytes).bytes;
  if (c.max_header_bytes < 256) UsageError("--max_header_bytes: must be at least 256");
  c.max_connections = absl::GetFlag(FLAGS_max_connections);
  if (c.max_connections < 0 || c.max_connections > 10'000'000) {
    UsageError("--max_connections: must be between 0 and 10000000");
  }

  absl::Duration busy = absl::GetFlag(FLAGS_busy_poll);
  if (busy < absl::ZeroDuration() || busy > absl::Milliseconds(10)) {
    UsageError("--busy_poll: must be between 0 and 10ms");
  }
  c.busy_poll_ns = absl::ToInt64Nanoseconds(busy);
  std::string level = absl::GetFlag(FLAGS_log_level);
  static constexpr const char* kLevels[] = {"debug", "info", "warn", "error"};
  c.log_level = -1;
  for (int i = 0; i < 4; ++i) {
    if (level == kLevels[i]) c.log_level = i;
  }
  if (c.log_level < 0) UsageError("--log_level: expected debug, info, warn or error");
  return c;
}

// Raises RLIMIT_NOFILE's soft limit to the hard one; returns the soft
// limit in force.
int64_t RaiseOpenFilesLimit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
  if (rl.rlim_cur < rl.rlim_max) {
    rlimit raised = rl;
    raised.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
  }
  return rl.rlim_cur == RLIM_INFINITY ? int64_t{1} << 20 : static_cast<int64_t>(rl.rlim_cur);
}

// --max_connections shared by `workers` (rounded up), or when 0, half the
// open-files limit less a reserve for listeners, rings, logs and the
// process's own files: each client connection may hold one upstream link.
int ConnectionsPerWorker(int max_connections, int64_t nofile, int workers) {
  int64_t total = max_connections;
  if (total == 0) total = std::max<int64_t>(16, (nofile - 256) / 2);
  return static_cast<int>((total + workers - 1) / workers);
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

// Whether some other socket already listens on `addr` (any process: a
// second sluice, or another program). The workers' sockets set
// SO_REUSEPORT, and Linux lets a SO_REUSEPORT socket join a group held by
// any process of the same user, so binding them would succeed and quietly
// split the connections with whoever holds the port. A probe bound without
// SO_REUSEPORT fails with EADDRINUSE whenever anything listens there
// (SO_REUSEADDR only lets it past connections in TIME_WAIT, so a quick
// restart on the same port still works). The probe is closed before the
// workers bind; the gap between the two is a few microseconds. Port 0
// needs no probe (the kernel never hands out a port a listener holds);
// sockets handed over by a restart (SIGUSR2) skip it, as they are shared
// on purpose. Returns the errno of the failed bind, or 0.
int ProbeAddressInUse(const SocketAddress& addr) {
  int fd = ::socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;  // the real Listen() reports it
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  int err = ::bind(fd, addr.get(), addr.len) == 0 ? 0 : errno;
  ::close(fd);
  return err;
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

// Steers each client address to one worker: a classic BPF program on the
// SO_REUSEPORT group returns the index of the socket (= the worker, sockets
// join the group in listen order) from the packet's source address, hashed
// as policy::SteeringHash and SteeringSlot do. One address's connections then meet one
// worker, whose own stripes of the rate table hold its state, so checks do
// not move cache lines between CPUs (bench/RESULTS.md). Without it (an old
// kernel) the kernel's own hash spreads connections, and limits stay exact.
void AttachSteering(int fd, int workers) {
  sock_filter code[] = {
      // A = IP version (high nibble of the first byte of the IP header).
      BPF_STMT(BPF_LD | BPF_B | BPF_ABS, static_cast<uint32_t>(SKF_NET_OFF)),
      BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 4),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 6, 2, 0),
      // IPv4: the source address at offset 12.
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, static_cast<uint32_t>(SKF_NET_OFF + 12)),
      BPF_JUMP(BPF_JMP | BPF_JA, 1, 0, 0),
      // IPv6: the last 32 bits of the source address (offset 8 + 12).
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, static_cast<uint32_t>(SKF_NET_OFF + 20)),
      BPF_STMT(BPF_ALU | BPF_MUL | BPF_K, 0x9E3779B1u),
      BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 16),
      // policy::SteeringSlot: (hash * workers) >> 16.
      BPF_STMT(BPF_ALU | BPF_MUL | BPF_K, static_cast<uint32_t>(workers)),
      BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 16),
      BPF_STMT(BPF_RET | BPF_A, 0),
  };
  sock_fprog prog{static_cast<unsigned short>(sizeof(code) / sizeof(code[0])), code};
  if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof(prog)) != 0) {
    LOG_WARN("SO_ATTACH_REUSEPORT_CBPF: %s (clients are spread by the kernel's hash)",
             strerror(errno));
  }
}

// SIGUSR1 comes after logrotate renamed the files: each worker first hands
// over the access log lines it holds (up to --access_log_flush of them), so
// that they go to the old file with the rest of their time; only then is
// the file reopened. A worker that does not answer within a second (its
// loop has ended, or is stuck) is not waited for.
void FlushAccessLogs(const std::vector<std::unique_ptr<Worker>>& workers) {
  struct Pending {
    std::mutex mu;
    std::condition_variable cv;
    size_t left = 0;
  };
  auto pending = std::make_shared<Pending>();
  pending->left = workers.size();
  for (const auto& w : workers) {
    Worker* worker = w.get();
    worker->Post([worker, pending] {
      worker->FlushAccessLog();
      std::lock_guard<std::mutex> lock(pending->mu);
      if (--pending->left == 0) pending->cv.notify_all();
    });
  }
  std::unique_lock<std::mutex> lock(pending->mu);
  if (!pending->cv.wait_for(lock, std::chrono::seconds(1), [&] { return pending->left == 0; })) {
    LOG_WARN("SIGUSR1: %zu worker(s) did not hand over their access log lines within 1s; those "
             "go to the new file",
             pending->left);
  }
}

// The htpasswd file mixes hash costs: say which users a stranger can tell
// exist by timing (policy/htpasswd.h, README "Timing of Basic logins").
void LogUsersWarning(const policy::Policy& policy, const char* prefix) {
  if (absl::string_view w = policy.users_warning(); !w.empty()) {
    LOG_WARN("%s%.*s", prefix, static_cast<int>(w.size()), w.data());
  }
}

policy::PolicyOptions PolicyFlags() {
  policy::PolicyOptions o;
  o.auth = absl::GetFlag(FLAGS_auth);
  o.keys_file = absl::GetFlag(FLAGS_keys_file);
  o.htpasswd_file = absl::GetFlag(FLAGS_htpasswd);
  o.rules_file = absl::GetFlag(FLAGS_rules_file);
  o.allow_cidrs = absl::GetFlag(FLAGS_allow);
  o.deny_cidrs = absl::GetFlag(FLAGS_deny);
  o.trusted_proxies = absl::GetFlag(FLAGS_trusted_proxies);
  o.admin_cidrs = absl::GetFlag(FLAGS_admin_cidrs);
  o.cors_origins = absl::GetFlag(FLAGS_cors_origins);
  o.rate_generation = absl::GetFlag(FLAGS_rate_generation);
  o.rate_api = absl::GetFlag(FLAGS_rate_api);
  o.rate_by = absl::GetFlag(FLAGS_rate_by);
  o.auth_attempts = absl::GetFlag(FLAGS_auth_attempts);
  const int32_t per_ip = absl::GetFlag(FLAGS_max_streams_per_ip);
  const int32_t per_key = absl::GetFlag(FLAGS_max_streams_per_key);
  if (per_ip < 0) UsageError("--max_streams_per_ip: must be 0 or more");
  if (per_key < 0) UsageError("--max_streams_per_key: must be 0 or more");
  o.max_streams_per_ip = static_cast<uint32_t>(per_ip);
  o.max_streams_per_key = static_cast<uint32_t>(per_key);
  return o;
}

Observability ObservabilityFlags() {
  Observability o;
  const std::string format = absl::GetFlag(FLAGS_access_log_format);
  if (format == "nginx") {
    o.access_log_format = AccessLogFormat::kNginx;
  } else if (format == "json") {
    o.access_log_format = AccessLogFormat::kJson;
  } else {
    UsageError("--access_log_format: expected nginx or json");
  }
  o.access_log_flush_ns = DurationFlag(FLAGS_access_log_flush, "access_log_flush");
  o.metrics = absl::GetFlag(FLAGS_metrics);
  for (auto [flag, name, out] :
       {std::tuple{&FLAGS_metrics_path, "metrics_path", &o.metrics_path},
        std::tuple{&FLAGS_status_path, "status_path", &o.status_path}}) {
    *out = absl::GetFlag(*flag);
    if (!out->empty() && (out->front() != '/' || out->find_first_of("?# \t\r\n") !=
                                                     std::string::npos)) {
      UsageError(absl::StrCat("--", name, ": expected a path starting with / (or empty)"));
    }
  }
  if (!o.metrics_path.empty() && o.metrics_path == o.status_path) {
    UsageError("--metrics_path: must differ from --status_path");
  }
  auto allow = policy::IpSet::Parse(absl::GetFlag(FLAGS_status_allow));
  if (!allow.ok()) UsageError(absl::StrCat("--status_allow: ", allow.status().message()));
  o.status_allow = *std::move(allow);
  o.info.version = SLUICE_VERSION;
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  o.info.start_time_seconds = static_cast<double>(ts.tv_sec) + ts.tv_nsec / 1e9;
  return o;
}

int Run(int argc, char** argv) {
  // `sluice keys add|list|revoke ...` manages the keys file.
  if (argc > 1 && std::string_view(argv[1]) == "keys") {
    return policy::RunKeysCommand(argc - 1, argv + 1);
  }
  Restarter restarter(argc, argv);  // argv as given, before parsing
  pid_t restart_pid = -1;
  // sluice takes flags only: a stray word is most often the value of a
  // boolean flag written "--flag value", which would otherwise be lost.
  if (std::vector<std::string> positional = ParseFlagsOrExit(argc, argv, kUsage);
      !positional.empty()) {
    UsageError(absl::StrCat("unexpected argument '", positional.front(),
                            "': sluice takes only --name=value flags (see --help)"));
  }
  Config config = BuildConfig();
  g_log_level.store(config.log_level);
  if (const std::string path = absl::GetFlag(FLAGS_error_log); !path.empty()) {
    if (std::string err = OpenErrorLog(path); !err.empty()) {
      UsageError(absl::StrCat("--error_log: cannot open ", path, ": ", err));
    }
  }

  // Signals go to the main thread only (sigwait below); every thread
  // started below (workers, password checkers) inherits the blocked mask.
  // SIGPIPE is moot (sends use MSG_NOSIGNAL) but blocked too.
  sigset_t sigs;
  sigemptyset(&sigs);
  // SIGRTMIN: a worker thread ended (wakes the loop below at once).
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2, SIGPIPE, SIGRTMIN}) {
    sigaddset(&sigs, s);
  }
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  // The policy is built before anything listens: a bad flag or file is a
  // configuration error (exit 2 naming it).
  const policy::PolicyOptions policy_options = PolicyFlags();
  uint64_t policy_generation = 1;
  PolicySlot policy_slot;
  {
    auto p = policy::Policy::Build(policy_options, policy_generation);
    if (!p.ok()) UsageError(p.status().message());
    policy_slot.Set(*std::move(p));
  }
  const int32_t table_entries = absl::GetFlag(FLAGS_limit_table_entries);
  if (table_entries < 1024) UsageError("--limit_table_entries: must be at least 1024");
  policy::ConcurrencyTable conn_table(static_cast<size_t>(table_entries));
  // One bcrypt at a time per CPU at most; 256 waiting checks are about five
  // seconds of bcrypt at cost 10 on two CPUs: more gets 503.
  AuthVerifier auth_verifier(
      std::max(1, std::min<int>(2, static_cast<int>(std::thread::hardware_concurrency()))), 256);
  config.policy_slot = &policy_slot;
  config.conn_table = &conn_table;
  config.auth_verifier = &auth_verifier;

  Observability obs = ObservabilityFlags();
  std::unique_ptr<LogFile> access_log;
  if (const std::string path = absl::GetFlag(FLAGS_access_log); path != "off" && !path.empty()) {
    auto file = LogFile::Open(path);
    if (!file.ok()) UsageError(absl::StrCat("--access_log: ", file.status().message()));
    access_log = *std::move(file);
    obs.access_log = access_log.get();
  }
  config.obs = &obs;

  // The certificate is loaded before anything listens: a bad pair is a
  // configuration error (exit 2 naming the flag), not a half-started proxy.
  TlsContextSlot tls_slot;
  tls::TlsContextOptions tls_options;
  if (config.listen_tls_enabled) {
    tls_options.cert_chain_path = absl::GetFlag(FLAGS_tls_cert);
    tls_options.key_path = absl::GetFlag(FLAGS_tls_key);
    tls_options.session_tickets = absl::GetFlag(FLAGS_tls_session_tickets);
    auto ctx = tls::TlsContext::Create(tls_options);
    if (!ctx.ok()) {
      UsageError(absl::StrCat("--tls_cert/--tls_key: ", ctx.status().message()));
    }
    tls_slot.Set(*std::move(ctx));
    config.tls_slot = &tls_slot;
  }

  std::vector<int> cpus = AllowedCpus();
  const int n = config.threads > 0 ? config.threads : static_cast<int>(cpus.size());
  config.threads = n;
  // Open files: raised to the hard limit, as nginx's worker_rlimit_nofile
  // would be set; the connection cap follows from it unless given.
  const int64_t nofile = RaiseOpenFilesLimit();
  config.max_connections_per_worker =
      ConnectionsPerWorker(config.max_connections, nofile, n);
  // One stripe group per worker: see AttachSteering.
  policy::RateTable rate_table(static_cast<size_t>(table_entries), static_cast<size_t>(n));
  config.rate_table = &rate_table;


  // Each worker gets its own SO_REUSEPORT socket per listener; the first
  // one fixes the port when port 0 was asked for.
  std::vector<std::vector<Listener>> listeners(n);
  struct Spec {
    const char* flag;
    SocketAddress* addr;
    const std::string* text;
    ListenerKind kind;
    const char* scheme;
    int port = 0;
  };
  std::vector<Spec> specs;
  if (config.listen_http_enabled) {
    specs.push_back({"listen_http", &config.listen_http, &config.listen_http_text,
                     config.http_serve ? ListenerKind::kHttp : ListenerKind::kRedirect,
                     "http"});
  }
  if (config.listen_tls_enabled) {
    specs.push_back({"listen_tls", &config.listen_tls, &config.listen_tls_text,
                     ListenerKind::kTls, "https"});
  }
  // Started by a restart (SIGUSR2): the old process's sockets, in the
  // order they are made below, if they are what the flags ask for.
  auto inherited = TakeInheritedListeners();
  if (!inherited.ok()) {
    fprintf(stderr, "sluice: %s\n", std::string(inherited.status().message()).c_str());
    return 1;
  }
  if (!inherited->empty() && inherited->size() != specs.size() * static_cast<size_t>(n)) {
    fprintf(stderr,
            "sluice: restart: %zu listening sockets handed over, %zu needed: start the new "
            "process with the same --listen_http, --listen_tls and --threads\n",
            inherited->size(), specs.size() * static_cast<size_t>(n));
    return 1;
  }
  size_t next_inherited = 0;
  std::vector<int> listen_fds;  // what a restart hands over, in this order
  for (Spec& spec : specs) {
    std::string error;
    for (int i = 0; i < n; ++i) {
      int fd;
      if (!inherited->empty()) {
        fd = (*inherited)[next_inherited++];
        if (!ListenerMatches(fd, *spec.addr)) {
          fprintf(stderr,
                  "sluice: restart: the listening socket handed over for --%s is not bound "
                  "to %s: start the new process with the same listeners\n",
                  spec.flag, spec.text->c_str());
          return 1;
        }
      } else {
        if (i == 0 && Port(*spec.addr) != 0) {
          if (int err = ProbeAddressInUse(*spec.addr); err == EADDRINUSE) {
            fprintf(stderr,
                    "sluice: --%s: cannot listen on %s: address already in use (another "
                    "program, or another sluice, listens there)\n",
                    spec.flag, spec.text->c_str());
            return 1;
          }
        }
        fd = Listen(*spec.addr, &error);
      }
      if (fd < 0) {
        fprintf(stderr, "sluice: --%s: cannot listen on %s: %s\n", spec.flag,
                spec.text->c_str(), error.c_str());
        return 1;
      }
      if (i == 0) {
        spec.port = Port(fd);
        SetPort(spec.addr, spec.port);
      }
      listeners[i].push_back(Listener{fd, spec.kind});
      listen_fds.push_back(fd);
    }
    if (spec.kind == ListenerKind::kTls) config.tls_port = spec.port;
    if (n > 1) AttachSteering(listeners[0].back().fd, n);
  }

  obs.info.workers = n;
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<std::thread> threads;
  std::vector<std::promise<absl::Status>> ready(n);
  std::atomic<int> running{n};
  for (int i = 0; i < n; ++i) {
    int cpu = cpus[i % cpus.size()];
    workers.push_back(std::make_unique<Worker>(i, config, std::move(listeners[i]), cpu));
    obs.workers.push_back(workers.back().get());
  }
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      Worker& w = *workers[i];
      absl::Status st = w.Init();
      ready[i].set_value(st);
      if (st.ok()) w.Run();
      running.fetch_sub(1);
      kill(getpid(), SIGRTMIN);  // wake the signal loop
    });
  }
  absl::Status init_error;
  for (int i = 0; i < n; ++i) {
    absl::Status st = ready[i].get_future().get();
    if (!st.ok() && init_error.ok()) init_error = st;
  }
  if (!init_error.ok()) {
    // Stop the workers that did start and join them all before exiting.
    for (auto& w : workers) w->RequestStop();
    for (auto& t : threads) t.join();
    fprintf(stderr, "sluice: %s\n", std::string(init_error.message()).c_str());
    return 1;
  }
  for (const Spec& spec : specs) {
    printf("sluice listening on %s://%s:%d (%d workers)\n", spec.scheme,
           HostPart(*spec.text).c_str(), spec.port, n);
  }
  fflush(stdout);
  if (!inherited->empty()) LOG_INFO("started by a restart: took over %zu listening socket(s)", inherited->size());
  NotifyRestartReady();
  LOG_INFO("upstream %s (Host: %s), %d worker(s)", absl::GetFlag(FLAGS_upstream).c_str(),
           config.upstream_host.c_str(), n);
  LOG_INFO("policy: %s", policy_slot.Get()->Summary().c_str());
  LogUsersWarning(*policy_slot.Get(), "");

  bool stopping = false;
  auto begin_drain = [&](const char* why) {
    LOG_INFO("%s: stop accepting, draining for up to %llds", why,
             static_cast<long long>(config.drain_timeout_ns / 1000000000));
    stopping = true;
    for (auto& w : workers) w->RequestStop();
  };
  while (running.load() > 0) {
    timespec wait{0, restarter.in_progress() ? 20 * 1000 * 1000 : 200 * 1000 * 1000};
    int sig = sigtimedwait(&sigs, nullptr, &wait);
    std::string why;
    switch (restarter.Check(&why)) {
      case Restarter::State::kReady:
        LOG_INFO("restart: new process %d serves; this one hands over", static_cast<int>(restart_pid));
        if (!stopping) begin_drain("restart");
        break;
      case Restarter::State::kFailed:
        LOG_ERROR("restart: new process %d failed (%s); this one keeps serving",
                  static_cast<int>(restart_pid), why.c_str());
        break;
      default:
        break;
    }
    if (sig == SIGHUP) {
      // Keys, users and rules are replaced together or not at all; requests
      // in flight keep the policy they were admitted with.
      auto p = policy::Policy::Build(policy_options, policy_generation + 1);
      if (p.ok()) {
        ++policy_generation;
        policy_slot.Set(*std::move(p));
        LOG_INFO("SIGHUP: reloaded policy: %s", policy_slot.Get()->Summary().c_str());
        LogUsersWarning(*policy_slot.Get(), "SIGHUP: ");
      } else {
        LOG_ERROR("SIGHUP: policy not reloaded, keeping the old one: %s",
                  std::string(p.status().message()).c_str());
      }
      // New handshakes use the new pair; connections keep theirs. A pair
      // that does not load leaves the old one in place.
      if (config.listen_tls_enabled) {
        auto ctx = tls_slot.Get()->Reload(tls_options);
        if (ctx.ok()) {
          tls_slot.Set(*std::move(ctx));
          LOG_INFO("SIGHUP: reloaded certificate %s", tls_options.cert_chain_path.c_str());
        } else {
          LOG_ERROR("SIGHUP: certificate not reloaded, keeping the old one: %s",
                    std::string(ctx.status().message()).c_str());
        }
      }
    } else if (sig == SIGUSR1) {
      // logrotate: the files were renamed; write to new ones at the paths.
      ReopenErrorLog();
      if (access_log) {
        FlushAccessLogs(workers);
        access_log->Reopen();
      }
      LOG_INFO("SIGUSR1: reopened log files");
    } else if (sig == SIGUSR2) {
      if (stopping || restarter.in_progress()) {
        LOG_WARN("SIGUSR2: ignored, %s", stopping ? "stopping" : "a restart is in progress");
      } else if (absl::Status st = restarter.Start(listen_fds); !st.ok()) {
        LOG_ERROR("SIGUSR2: restart failed: %s", std::string(st.message()).c_str());
      } else {
        restart_pid = restarter.pid();
        LOG_INFO("SIGUSR2: started new process %d, handing over %zu listening socket(s)",
                 static_cast<int>(restart_pid), listen_fds.size());
      }
    } else if (sig == SIGINT || sig == SIGTERM) {
      if (!stopping) {
        begin_drain(strsignal(sig));
      } else {
        LOG_WARN("second %s: exiting now", strsignal(sig));
        _exit(1);
      }
    }
  }
  for (auto& t : threads) t.join();
  // Every worker handed its last lines over when its loop ended.
  access_log.reset();
  LOG_INFO("stopped");
  // Connections left after a drain timeout are simply dropped by exit.
  _exit(0);
}

}  // namespace
}  // namespace sluice::core

int main(int argc, char** argv) { return sluice::core::Run(argc, argv); }
