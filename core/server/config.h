#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sluice::core {

class SlotScheduler;

class TlsContextSlot;
class PolicySlot;
class AuthVerifier;
struct Observability;
}  // namespace sluice::core
namespace sluice::policy {
class RateTable;
class ConcurrencyTable;
}  // namespace sluice::policy
namespace sluice::core {

// A resolved socket address.
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t len = 0;
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
  int family() const { return storage.ss_family; }
};

class BackendHealth;
class ModelTable;
class DnsName;

// A DNS name in --upstream is this many backends at most unless its
// max_addresses=N says otherwise.
inline constexpr int kDefaultMaxAddresses = 8;
// A backend's slots= when --upstream does not give it (Ollama's default
// OLLAMA_NUM_PARALLEL), and the value that says it was not given.
inline constexpr int kDefaultSlots = 1;
inline constexpr int kSlotsNotGiven = -1;

// One Ollama backend: an entry of --upstream.
struct BackendConfig {
  std::string name;  // name=, else host:port as written (NAME#2...: see ExpandNames)
  // A numeric address, or what a DNS name resolved to first at start (len
  // 0: it did not); `dns` then holds the name's current addresses, and
  // this backend is its slot `dns_slot`.
  SocketAddress addr;
  std::shared_ptr<DnsName> dns;
  size_t dns_slot = 0;
  int max_addresses = kDefaultMaxAddresses;  // a name's backends at most (max_addresses=N)
  std::string host_header;                   // Host sent to it
  int weight = 1;
  // Generations it runs at once (OLLAMA_NUM_PARALLEL): sluice queues the
  // rest. 0: sluice does not queue them; kSlotsNotGiven: slots= was not
  // written (--upstream then makes it kDefaultSlots).
  int slots = kSlotsNotGiven;
  int max_loaded = 0;  // models it keeps loaded (OLLAMA_MAX_LOADED_MODELS); 0: not given
  // The active checks' view, shared by the workers (null: one backend).
  const BackendHealth* health = nullptr;
  // Its models as the router knows them, shared by the workers (null: one
  // backend).
  ModelTable* models = nullptr;
};

// How a request picks its backend (--balance): by the model its body names
// (requests without one by least_conn), or by the classic rules.
enum class Balance { kModel, kRoundRobin, kLeastConn };

// Everything a worker needs, fixed at start-up (built from the flags in
// flags.cc). Durations are in nanoseconds.
struct Config {
  SocketAddress listen_http;
  std::string listen_http_text;
  bool listen_http_enabled = true;
  // --http_mode: serve plain HTTP (true) or redirect it to https (false).
  bool http_serve = false;
  SocketAddress listen_tls;
  std::string listen_tls_text;
  bool listen_tls_enabled = false;
  int tls_port = 443;  // for redirects; the bound port once listening
  // "Strict-Transport-Security: ...\r\n" for TLS responses, or empty.
  std::string hsts_fields;
  std::string hsts;  // the bare value, for HTTP/2 responses
  uint32_t h2_max_concurrent_streams = 128;
  int64_t handshake_timeout_ns = 10'000'000'000;
  // The TLS context for new connections (owned by main; null without TLS).
  TlsContextSlot* tls_slot = nullptr;
  // The access policy (swapped on SIGHUP), the limit tables all workers
  // share, and the helper threads for slow password checks; owned by main.
  PolicySlot* policy_slot = nullptr;
  policy::RateTable* rate_table = nullptr;
  policy::ConcurrencyTable* conn_table = nullptr;
  AuthVerifier* auth_verifier = nullptr;
  // Logs and metrics (owned by main; never null once running).
  Observability* obs = nullptr;
  int threads = 1;
  // The Ollama backends (at least one once built from the flags).
  std::vector<BackendConfig> backends;
  Balance balance = Balance::kModel;
  // With several backends: failures in a row after which a backend is
  // left out for upstream_fail_timeout_ns (nginx max_fails, fail_timeout).
  int upstream_max_fails = 3;
  // How often backends given by DNS name are resolved again.
  int64_t resolve_interval_ns = 30'000'000'000;
  int64_t upstream_fail_timeout_ns = 10'000'000'000;
  // Active checks of the backends when there are several (0: none).
  int64_t health_interval_ns = 5'000'000'000;
  int64_t health_timeout_ns = 2'000'000'000;
  // The generation slots of backends (slots= above 0) and their fair queue,
  // shared by the workers (owned by main; null: none, as in tests that
  // build a Config by hand). A request waits at most queue_timeout_ns.
  SlotScheduler* slot_scheduler = nullptr;
  int64_t queue_timeout_ns = 120'000'000'000;
  size_t queue_per_key = 64;
  size_t queue_max = 4096;
  // Idle upstream links kept per worker: < 0 adaptive (the recent peak of
  // links in use, up to upstream_max_idle), else that fixed number.
  int upstream_keepalive = -1;
  size_t upstream_max_idle = 1024;
  int64_t upstream_idle_timeout_ns = 60'000'000'000;
  int64_t connect_timeout_ns = 10'000'000'000;
  int64_t read_timeout_ns = 600'000'000'000;
  int64_t send_timeout_ns = 600'000'000'000;
  int64_t keepalive_timeout_ns = 75'000'000'000;
  int64_t client_header_timeout_ns = 60'000'000'000;
  int64_t client_body_timeout_ns = 60'000'000'000;
  int64_t drain_timeout_ns = 30'000'000'000;
  uint64_t client_max_body_size = 100ull << 20;
  size_t max_header_bytes = 64 << 10;
  int max_connections = 0;  // --max_connections as given (0: derived)
  // The cap each worker applies (see ConnectionsPerWorker in workers.h);
  // 0: none (tests that build a Config by hand).
  int max_connections_per_worker = 0;
  // Provided receive buffers per worker (a power of two) and their size.
  uint32_t recv_buffers = 4096;
  uint32_t recv_buffer_size = 16 << 10;
  // Poll for completions this long before sleeping (0: sleep at once).
  int64_t busy_poll_ns = 0;
  int log_level = 1;  // 0 debug, 1 info, 2 warn, 3 error
};

}  // namespace sluice::core
