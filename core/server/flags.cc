// Every flag sluice takes, and the functions that turn them into the
// configuration (see flags.h).

#include "core/server/flags.h"

#include <algorithm>
#include <cstring>
#include <tuple>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "core/observe/log.h"
#include "core/server/cli.h"
#include "core/server/listeners.h"
#include "core/server/named_upstream.h"

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
ABSL_FLAG(std::string, upstream, "127.0.0.1:11434",
          "Ollama backends, separated by commas: host:port or [v6]:port, each "
          "optionally followed by weight=N and slots=N (its OLLAMA_NUM_PARALLEL, "
          "default 1: sluice queues the generations past it; 0: no queue), "
          "e.g. '10.0.0.5:11434 slots=4, 10.0.0.6:11434'. Every address of a DNS "
          "name is a backend (NAME, NAME#2...), up to its max_addresses=N (default 8).");
ABSL_FLAG(int32_t, upstream_max_fails, 3,
          "With several backends: connect failures, resets or closes before the "
          "response head in a row after which a backend is left out for "
          "--upstream_fail_timeout (nginx max_fails); 0 = never.");
ABSL_FLAG(absl::Duration, upstream_fail_timeout, absl::Seconds(10),
          "How long a failing backend is left out before one request tries it "
          "again (nginx fail_timeout).");
ABSL_FLAG(absl::Duration, health_interval, absl::Seconds(5),
          "With several backends: how often one thread checks each (GET /api/ps, and "
          "/api/tags every tenth time); two failed checks in a row take a backend "
          "out until a check succeeds. 0 = no checks.");
ABSL_FLAG(absl::Duration, resolve_interval, absl::Seconds(30),
          "How often backends given by DNS name in --upstream are resolved again (also "
          "within a second of a failed connect).");
ABSL_FLAG(absl::Duration, health_timeout, absl::Seconds(2),
          "Time a backend has to answer a check, and its part of a model list merged "
          "from several backends (/api/tags, /api/ps, /v1/models).");
ABSL_FLAG(std::string, balance, "model",
          "How a request picks its backend: model (a generation goes where its model is "
          "loaded with a free slot; other requests by least_conn), round_robin (weighted) "
          "or least_conn (fewest requests in flight per weight).");
ABSL_FLAG(std::string, upstream_host, "",
          "Host header sent upstream; empty = the --upstream host:port (a "
          "loopback-bound Ollama answers 403 to other hosts).");
ABSL_FLAG(std::string, upstream_keepalive, "auto",
          "Idle keepalive links to the upstream kept per worker: auto = as many as "
          "were in use at once during the last --upstream_idle_timeout, up to "
          "--upstream_max_idle; N = a fixed number, as nginx's keepalive N.");
ABSL_FLAG(absl::Duration, queue_timeout, absl::Seconds(120),
          "Longest a generation waits in sluice for a generation slot (503 after).");
ABSL_FLAG(int32_t, queue_per_key, 64,
          "Generations one key (or user, or address) may have waiting for slots (429 past it).");
ABSL_FLAG(int32_t, queue_max, 4096, "Generations waiting for slots in all (503 past it).");
ABSL_FLAG(int32_t, upstream_max_idle, 1024,
          "Most idle upstream links a worker keeps with --upstream_keepalive=auto.");
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
ABSL_FLAG(std::string, models, "",
          "Models a client may use unless its key has models= of its own: names "
          "and globs separated by commas (llama3.1:8b,qwen2.5*); empty: any.");
ABSL_FLAG(std::string, model_aliases, "",
          "Model names rewritten before they reach Ollama, NAME=MODEL separated by "
          "commas (gpt-4o=llama3.1:8b); a key's alias= adds to them.");
ABSL_FLAG(std::string, max_keep_alive, "1h",
          "Longest keep_alive a request may ask for (a duration, or inf); longer "
          "ones are lowered to it (--over_max).");
ABSL_FLAG(bool, keep_alive_forever, false,
          "Allow a negative keep_alive (the model stays loaded forever); when "
          "false it is lowered to --max_keep_alive.");
ABSL_FLAG(int64_t, max_num_ctx, 0, "Largest options.num_ctx a request may set; 0: no limit.");
ABSL_FLAG(int64_t, max_num_predict, 0,
          "Most tokens a generation may produce (options.num_predict, /v1 max_tokens); "
          "also set when a request gives none; 0: no limit.");
ABSL_FLAG(std::string, over_max, "clamp",
          "A value over its maximum is lowered to it (clamp) or refused with 400 (refuse).");
ABSL_FLAG(std::string, pull_registries, "registry.ollama.ai",
          "Registries /api/pull may fetch from, and /api/create's \"from\" may name "
          "(hosts separated by commas; * for any). \"insecure\" pulls are refused.");
ABSL_FLAG(int64_t, max_images, 0, "Images one generation may carry; 0: no limit.");
ABSL_FLAG(std::string, max_image_bytes, "0",
          "Bytes of images one generation may carry, as sent (base64), e.g. 20M; 0: no limit.");
ABSL_FLAG(int32_t, limit_table_entries, 131072,
          "Client states the rate-limit table keeps (about 64 bytes each); the "
          "least recently limited are dropped when it is full.");

namespace sluice::core {
namespace {

int64_t DurationFlag(const absl::Flag<absl::Duration>& flag, const char* name) {
  absl::Duration d = absl::GetFlag(flag);
  if (d <= absl::ZeroDuration()) UsageError(absl::StrCat("--", name, ": must be positive"));
  return absl::ToInt64Nanoseconds(d);
}

// --listen_http, --http_mode, --listen_tls and what they need of each other.
void ListenFlags(Config* c) {
  c->listen_http_text = absl::GetFlag(FLAGS_listen_http);
  c->listen_http_enabled = !c->listen_http_text.empty();
  if (c->listen_http_enabled) {
    auto listen = ParseHostPort(c->listen_http_text, /*numeric_only=*/true);
    if (!listen.ok()) UsageError(absl::StrCat("--listen_http: ", listen.status().message()));
    c->listen_http = *listen;
  }
  std::string mode = absl::GetFlag(FLAGS_http_mode);
  if (mode != "redirect" && mode != "serve") {
    UsageError("--http_mode: expected redirect or serve");
  }
  c->http_serve = mode == "serve";
  c->listen_tls_text = absl::GetFlag(FLAGS_listen_tls);
  c->listen_tls_enabled = !c->listen_tls_text.empty();
  if (c->listen_tls_enabled) {
    auto listen = ParseHostPort(c->listen_tls_text, /*numeric_only=*/true);
    if (!listen.ok()) UsageError(absl::StrCat("--listen_tls: ", listen.status().message()));
    c->listen_tls = *listen;
    if (absl::GetFlag(FLAGS_tls_cert).empty()) {
      UsageError(
          "--tls_cert: required with --listen_tls (tools/make-certs.sh makes a "
          "local one; --listen_tls= turns TLS off)");
    }
    if (absl::GetFlag(FLAGS_tls_key).empty()) {
      UsageError("--tls_key: required with --listen_tls");
    }
  } else if (!c->http_serve && c->listen_http_enabled) {
    UsageError(
        "--http_mode: redirect needs a TLS listener; use --http_mode=serve "
        "to serve plain HTTP without --listen_tls");
  }
  if (!c->listen_tls_enabled && !c->listen_http_enabled) {
    UsageError("--listen_http: at least one of --listen_http and --listen_tls is needed");
  }
  // One address for both would put the two listeners in one SO_REUSEPORT
  // group, each getting part of the other's clients.
  if (c->listen_tls_enabled && c->listen_http_enabled && c->listen_tls.len == c->listen_http.len &&
      memcmp(&c->listen_tls.storage, &c->listen_http.storage, c->listen_tls.len) == 0 &&
      Port(c->listen_tls) != 0) {
    UsageError(
        absl::StrCat("--listen_tls: ", c->listen_tls_text, " is --listen_http's address too"));
  }
}

// --hsts, --h2_max_concurrent_streams, --handshake_timeout.
void ProtocolFlags(Config* c) {
  std::string hsts = absl::GetFlag(FLAGS_hsts);
  if (hsts.find_first_of("\r\n") != std::string::npos) {
    UsageError("--hsts: must not contain line breaks");
  }
  c->hsts = hsts;
  c->h2_max_concurrent_streams =
      static_cast<uint32_t>(absl::GetFlag(FLAGS_h2_max_concurrent_streams));
  if (c->h2_max_concurrent_streams < 1 || c->h2_max_concurrent_streams > 100000) {
    UsageError("--h2_max_concurrent_streams: must be between 1 and 100000");
  }
  if (!hsts.empty()) c->hsts_fields = absl::StrCat("Strict-Transport-Security: ", hsts, "\r\n");
  c->handshake_timeout_ns = DurationFlag(FLAGS_handshake_timeout, "handshake_timeout");
}

// --upstream and the upstream links' limits and timeouts.
void UpstreamFlags(Config* c) {
  const std::string upstream = absl::GetFlag(FLAGS_upstream);
  const std::string host = absl::GetFlag(FLAGS_upstream_host);
  if (host.find_first_of("\r\n") != std::string::npos) {
    UsageError("--upstream_host: must not contain line breaks");
  }
  auto backends = ParseBackends(upstream, host);
  if (!backends.ok()) {
    UsageError(absl::StrCat("--upstream: ", backends.status().message(),
                            upstream.rfind("https://", 0) == 0
                                ? "; sluice reaches the upstream in plain HTTP only"
                                : ""));
  }
  c->backends = *std::move(backends);
  // An Ollama backend runs one generation per model at once unless told
  // otherwise, as Ollama's OLLAMA_NUM_PARALLEL does by default.
  for (BackendConfig& b : c->backends) {
    if (b.slots == kSlotsNotGiven) b.slots = kDefaultSlots;
  }
  const std::string balance = absl::GetFlag(FLAGS_balance);
  if (balance == "model") {
    c->balance = Balance::kModel;
  } else if (balance == "round_robin") {
    c->balance = Balance::kRoundRobin;
  } else if (balance == "least_conn") {
    c->balance = Balance::kLeastConn;
  } else {
    UsageError(absl::StrCat("--balance: \"", balance, "\": use model, round_robin or least_conn"));
  }
  c->upstream_max_fails = absl::GetFlag(FLAGS_upstream_max_fails);
  if (c->upstream_max_fails < 0) UsageError("--upstream_max_fails: must be >= 0");
  c->upstream_fail_timeout_ns = DurationFlag(FLAGS_upstream_fail_timeout, "upstream_fail_timeout");
  const absl::Duration interval = absl::GetFlag(FLAGS_health_interval);
  if (interval < absl::ZeroDuration()) UsageError("--health_interval: must be >= 0");
  c->health_interval_ns = absl::ToInt64Nanoseconds(interval);
  c->health_timeout_ns = DurationFlag(FLAGS_health_timeout, "health_timeout");
  c->resolve_interval_ns = DurationFlag(FLAGS_resolve_interval, "resolve_interval");
  const std::string keepalive = absl::GetFlag(FLAGS_upstream_keepalive);
  if (keepalive == "auto") {
    c->upstream_keepalive = -1;
  } else if (!absl::SimpleAtoi(keepalive, &c->upstream_keepalive) || c->upstream_keepalive < 0) {
    UsageError(
        absl::StrCat("--upstream_keepalive: \"", keepalive, "\": use auto or a number >= 0"));
  }
  const int32_t max_idle = absl::GetFlag(FLAGS_upstream_max_idle);
  if (max_idle < 1) UsageError("--upstream_max_idle: must be >= 1");
  c->upstream_max_idle = static_cast<size_t>(max_idle);
  c->upstream_idle_timeout_ns = DurationFlag(FLAGS_upstream_idle_timeout, "upstream_idle_timeout");
  c->connect_timeout_ns = DurationFlag(FLAGS_connect_timeout, "connect_timeout");
  c->read_timeout_ns = DurationFlag(FLAGS_read_timeout, "read_timeout");
  c->send_timeout_ns = DurationFlag(FLAGS_send_timeout, "send_timeout");
  c->queue_timeout_ns = DurationFlag(FLAGS_queue_timeout, "queue_timeout");
  const int32_t per_key = absl::GetFlag(FLAGS_queue_per_key);
  const int32_t queue_max = absl::GetFlag(FLAGS_queue_max);
  if (per_key < 1) UsageError("--queue_per_key: must be >= 1");
  if (queue_max < 1) UsageError("--queue_max: must be >= 1");
  c->queue_per_key = static_cast<size_t>(per_key);
  c->queue_max = static_cast<size_t>(queue_max);
}

// The client side's timeouts and limits.
void ClientFlags(Config* c) {
  c->keepalive_timeout_ns = DurationFlag(FLAGS_keepalive_timeout, "keepalive_timeout");
  c->client_header_timeout_ns = DurationFlag(FLAGS_client_header_timeout, "client_header_timeout");
  c->client_body_timeout_ns = DurationFlag(FLAGS_client_body_timeout, "client_body_timeout");
  c->drain_timeout_ns = DurationFlag(FLAGS_drain_timeout, "drain_timeout");
  c->client_max_body_size = absl::GetFlag(FLAGS_client_max_body_size).bytes;
  c->max_header_bytes = absl::GetFlag(FLAGS_max_header_bytes).bytes;
  if (c->max_header_bytes < 256) UsageError("--max_header_bytes: must be at least 256");
  c->max_connections = absl::GetFlag(FLAGS_max_connections);
  if (c->max_connections < 0 || c->max_connections > 10'000'000) {
    UsageError("--max_connections: must be between 0 and 10000000");
  }
}

// --busy_poll and --log_level.
void LoopFlags(Config* c) {
  absl::Duration busy = absl::GetFlag(FLAGS_busy_poll);
  if (busy < absl::ZeroDuration() || busy > absl::Milliseconds(10)) {
    UsageError("--busy_poll: must be between 0 and 10ms");
  }
  c->busy_poll_ns = absl::ToInt64Nanoseconds(busy);
  std::string level = absl::GetFlag(FLAGS_log_level);
  static constexpr const char* kLevels[] = {"debug", "info", "warn", "error"};
  c->log_level = -1;
  for (int i = 0; i < 4; ++i) {
    if (level == kLevels[i]) c->log_level = i;
  }
  if (c->log_level < 0) UsageError("--log_level: expected debug, info, warn or error");
}

}  // namespace

Config BuildConfig() {
  Config c;
  ListenFlags(&c);
  ProtocolFlags(&c);
  int threads = absl::GetFlag(FLAGS_threads);
  if (threads < 0 || threads > 1024) UsageError("--threads: must be between 0 and 1024");
  c.threads = threads;
  UpstreamFlags(&c);
  ClientFlags(&c);
  LoopFlags(&c);
  return c;
}

void OpenErrorLogFlag() {
  if (const std::string path = absl::GetFlag(FLAGS_error_log); !path.empty()) {
    if (std::string err = OpenErrorLog(path); !err.empty()) {
      UsageError(absl::StrCat("--error_log: cannot open ", path, ": ", err));
    }
  }
}

// The model policy's flags, read as the keys file's settings are.
policy::ModelSettings ModelDefaultsFlags() {
  policy::ModelSettings s;
  auto set = [&s](const char* flag, const char* name, absl::string_view value) {
    absl::Status st = policy::ParseModelSetting(name, value, &s);
    if (!st.ok()) UsageError(absl::StrCat("--", flag, ": ", st.message()));
  };
  set("models", "models", absl::GetFlag(FLAGS_models));
  for (absl::string_view alias :
       absl::StrSplit(absl::GetFlag(FLAGS_model_aliases), ',', absl::SkipWhitespace())) {
    set("model_aliases", "alias", absl::StripAsciiWhitespace(alias));
  }
  set("max_keep_alive", "max_keep_alive", absl::GetFlag(FLAGS_max_keep_alive));
  set("keep_alive_forever", "keep_alive_forever",
      absl::GetFlag(FLAGS_keep_alive_forever) ? "yes" : "no");
  set("max_num_ctx", "max_num_ctx", absl::StrCat(absl::GetFlag(FLAGS_max_num_ctx)));
  set("max_num_predict", "max_num_predict", absl::StrCat(absl::GetFlag(FLAGS_max_num_predict)));
  set("over_max", "over_max", absl::GetFlag(FLAGS_over_max));
  set("pull_registries", "pull_registries", absl::GetFlag(FLAGS_pull_registries));
  set("max_images", "max_images", absl::StrCat(absl::GetFlag(FLAGS_max_images)));
  set("max_image_bytes", "max_image_bytes", absl::GetFlag(FLAGS_max_image_bytes));
  return s;
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
  o.parse_upstream = ParseNamedUpstream;
  o.model_defaults = ModelDefaultsFlags();
  return o;
}

size_t LimitTableEntriesFlag() {
  const int32_t table_entries = absl::GetFlag(FLAGS_limit_table_entries);
  if (table_entries < 1024) UsageError("--limit_table_entries: must be at least 1024");
  return static_cast<size_t>(table_entries);
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
  for (auto [flag, name, out] : {std::tuple{&FLAGS_metrics_path, "metrics_path", &o.metrics_path},
                                 std::tuple{&FLAGS_status_path, "status_path", &o.status_path}}) {
    *out = absl::GetFlag(*flag);
    if (!out->empty() &&
        (out->front() != '/' || out->find_first_of("?# \t\r\n") != std::string::npos)) {
      UsageError(absl::StrCat("--", name, ": expected a path starting with / (or empty)"));
    }
  }
  if (!o.metrics_path.empty() && o.metrics_path == o.status_path) {
    UsageError("--metrics_path: must differ from --status_path");
  }
  auto allow = policy::IpSet::Parse(absl::GetFlag(FLAGS_status_allow));
  if (!allow.ok()) UsageError(absl::StrCat("--status_allow: ", allow.status().message()));
  o.status_allow = *std::move(allow);
  return o;
}

std::unique_ptr<LogFile> OpenAccessLogFlag() {
  const std::string path = absl::GetFlag(FLAGS_access_log);
  if (path == "off" || path.empty()) return nullptr;
  auto file = LogFile::Open(path);
  if (!file.ok()) UsageError(absl::StrCat("--access_log: ", file.status().message()));
  return *std::move(file);
}

tls::TlsContextOptions TlsFlags() {
  tls::TlsContextOptions o;
  o.cert_chain_path = absl::GetFlag(FLAGS_tls_cert);
  o.key_path = absl::GetFlag(FLAGS_tls_key);
  o.session_tickets = absl::GetFlag(FLAGS_tls_session_tickets);
  return o;
}

}  // namespace sluice::core
