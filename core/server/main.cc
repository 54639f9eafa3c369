// sluice: a reverse proxy for Ollama. Entry point: reads the flags
// (flags.h), loads the policy and the certificate (reload.h), opens the
// listeners (listeners.h), starts the workers (workers.h) and then waits
// for signals (signals.h).

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/observe/log.h"
#include "core/observe/log_file.h"
#include "core/observe/observability.h"
#include "core/proxy/auth_verifier.h"
#include "core/server/cli.h"
#include "core/server/config.h"
#include "core/server/flags.h"
#include "core/server/listeners.h"
#include "core/server/named_upstream.h"
#include "core/server/reload.h"
#include "core/server/restart.h"
#include "core/server/signals.h"
#include "core/server/workers.h"
#include "core/upstream/health.h"
#include "core/upstream/resolver.h"
#include "core/upstream/slot_scheduler.h"
#include "policy/keys_command.h"
#include "policy/limiter.h"

namespace sluice::core {
namespace {

constexpr absl::string_view kUsage =
    "sluice: a reverse proxy for Ollama (TLS, HTTP/2, auth, limits, metrics).\n"
    "Usage: sluice [--flag=value ...]\n"
    "       sluice keys add|list|revoke [NAME] --keys_file FILE";

// Parses the command line; sluice takes flags only: a stray word is most
// often the value of a boolean flag written "--flag value", which would
// otherwise be lost.
void ParseCommandLine(int argc, char** argv) {
  if (std::vector<std::string> positional = ParseFlagsOrExit(argc, argv, kUsage);
      !positional.empty()) {
    UsageError(absl::StrCat("unexpected argument '", positional.front(),
                            "': sluice takes only --name=value flags (see --help)"));
  }
}

void SetProcessInfo(Observability* obs) {
  obs->info.version = SLUICE_VERSION;
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  obs->info.start_time_seconds = static_cast<double>(ts.tv_sec) + ts.tv_nsec / 1e9;
}

// Fixes the worker count and each worker's share of the connection cap.
// Open files are raised to the hard limit, as nginx's worker_rlimit_nofile
// would be set; the connection cap follows from it unless given.
void SizeWorkers(const std::vector<int>& cpus, Config* config) {
  config->threads = config->threads > 0 ? config->threads : static_cast<int>(cpus.size());
  const int64_t nofile = RaiseOpenFilesLimit();
  config->max_connections_per_worker =
      ConnectionsPerWorker(config->max_connections, nofile, config->threads);
}

// The certificate is loaded before anything listens: a bad pair is a
// configuration error (exit 2 naming the flag), not a half-started proxy.
void LoadCertificate(Reloader* reloader, Config* config) {
  if (!config->listen_tls_enabled) return;
  if (absl::Status st = reloader->LoadTls(TlsFlags()); !st.ok()) {
    UsageError(absl::StrCat("--tls_cert/--tls_key: ", st.message()));
  }
  config->tls_slot = reloader->tls_slot();
}

const char* BalanceName(Balance balance) {
  switch (balance) {
    case Balance::kModel:
      return "model";
    case Balance::kLeastConn:
      return "least_conn";
    case Balance::kRoundRobin:
      break;
  }
  return "round_robin";
}

void LogStarted(const Config& config, const policy::Policy& policy) {
  for (const BackendConfig& b : config.backends) {
    // A name's backends without an address are its spare slots.
    if (b.dns != nullptr && !HasAddress(b) && (b.dns_slot > 0 || b.dns->resolved())) continue;
    std::string address;
    if (SocketAddress a; b.dns != nullptr && CurrentAddress(b, &a)) {
      address = absl::StrCat(", ", b.dns->host(), " is ", AddressText(a));
    }
    LOG_INFO("upstream %s (Host: %s, weight %d, slots %s%s)", b.name.c_str(), b.host_header.c_str(),
             b.weight, b.slots > 0 ? std::to_string(b.slots).c_str() : "0, not queued",
             address.c_str());
    if (!HasAddress(b)) {
      LOG_WARN(
          "upstream %s: %s does not resolve yet; its requests get 503 until it does "
          "(resolved again every --resolve_interval)",
          b.name.c_str(), b.dns->host().c_str());
    }
    if (b.dns != nullptr && b.dns_slot == 0 && b.dns->left_out() > 0) {
      LOG_WARN(
          "upstream %s: %s has %zu more address(es) than its max_addresses=%zu; those are "
          "not used",
          b.name.c_str(), b.dns->host().c_str(), b.dns->left_out(), b.dns->slots());
    }
  }
  LOG_INFO("%zu backend(s), --balance=%s, %d worker(s)", CountBackends(config.backends),
           BalanceName(config.balance), config.threads);
  LOG_INFO("policy: %s", policy.Summary().c_str());
  LogUsersWarning(policy, "");
}

// With several backends (a name counting as its max_addresses), one
// thread checks them all (HealthProber; none with --health_interval=0); the
// workers read its findings, and share what they route where, through each
// BackendConfig.
std::unique_ptr<HealthProber> StartHealthChecks(Config* config) {
  if (config->backends.size() < 2) return nullptr;
  auto prober = std::make_unique<HealthProber>(config->backends, config->health_interval_ns,
                                               config->health_timeout_ns);
  for (size_t i = 0; i < config->backends.size(); ++i) {
    config->backends[i].health = prober->health(i);
    config->backends[i].models = prober->health(i)->table();
  }
  if (config->health_interval_ns > 0) prober->Start();
  return prober;
}

int Fail(absl::string_view message) {
  fprintf(stderr, "sluice: %s\n", std::string(message).c_str());
  return 1;
}

int Run(int argc, char** argv) {
  // `sluice keys add|list|revoke ...` manages the keys file.
  if (argc > 1 && std::string_view(argv[1]) == "keys") {
    return policy::RunKeysCommand(argc - 1, argv + 1);
  }
  Restarter restarter(argc, argv);  // argv as given, before parsing
  ParseCommandLine(argc, argv);
  Config config = BuildConfig();
  // Every address of a name is a backend: a slot each (see ExpandNames).
  ExpandNames(&config.backends);
  g_log_level.store(config.log_level);
  OpenErrorLogFlag();
  // Signals go to the main thread only (SignalLoop); every thread started
  // below (workers, password checkers) inherits the blocked mask.
  const sigset_t sigs = BlockSignals();

  // The policy is built before anything listens: a bad flag or file is a
  // configuration error (exit 2 naming it).
  Reloader reloader(PolicyFlags());
  if (absl::Status st = reloader.LoadPolicy(); !st.ok()) UsageError(st.message());
  const size_t table_entries = LimitTableEntriesFlag();
  policy::ConcurrencyTable conn_table(table_entries);
  // One bcrypt at a time per CPU at most; 256 waiting checks are about five
  // seconds of bcrypt at cost 10 on two CPUs: more gets 503.
  AuthVerifier auth_verifier(
      std::max(1, std::min<int>(2, static_cast<int>(std::thread::hardware_concurrency()))), 256);
  config.policy_slot = reloader.policy_slot();
  config.conn_table = &conn_table;
  config.auth_verifier = &auth_verifier;

  Observability obs = ObservabilityFlags();
  SetProcessInfo(&obs);
  std::unique_ptr<LogFile> access_log = OpenAccessLogFlag();
  obs.access_log = access_log.get();
  config.obs = &obs;

  LoadCertificate(&reloader, &config);
  std::unique_ptr<HealthProber> prober = StartHealthChecks(&config);
  SlotScheduler slot_scheduler(
      SlotScheduler::Limits{.per_key = config.queue_per_key, .total = config.queue_max});
  config.slot_scheduler = &slot_scheduler;
  // A backend whose address changed forgets what the checks and the
  // router knew of the old one.
  Resolver resolver(config.backends, config.resolve_interval_ns, [&prober](size_t i) {
    if (prober) prober->Forget(i);
  });
  // The rules file's upstreams given by name too, as the policy in force
  // has them.
  resolver.SetOthers([slot = reloader.policy_slot()] {
    std::shared_ptr<const policy::Policy> policy = slot->Get();
    return policy ? NamedUpstreamNames(*policy) : std::vector<Resolver::OtherName>();
  });
  resolver.Start();

  const std::vector<int> cpus = AllowedCpus();
  SizeWorkers(cpus, &config);
  const int n = config.threads;
  // One stripe group per worker: see AttachSteering.
  policy::RateTable rate_table(table_entries, static_cast<size_t>(n));
  config.rate_table = &rate_table;

  // Started by a restart (SIGUSR2): the old process's sockets, in the
  // order OpenListeners makes them, if they are what the flags ask for.
  std::vector<ListenerSpec> specs = ListenerSpecs(&config);
  auto inherited = TakeInheritedListeners();
  if (!inherited.ok()) return Fail(inherited.status().message());
  auto sockets = OpenListeners(&specs, n, *inherited, &config);
  if (!sockets.ok()) return Fail(sockets.status().message());

  obs.info.workers = n;
  WorkerThreads workers(config, std::move(sockets->per_worker), cpus, &obs);
  if (absl::Status st = workers.Start(); !st.ok()) return Fail(st.message());
  PrintListening(specs, n);
  if (!inherited->empty()) {
    LOG_INFO("started by a restart: took over %zu listening socket(s)", inherited->size());
  }
  NotifyRestartReady();
  LogStarted(config, *reloader.policy_slot()->Get());

  SignalLoop(sigs, &restarter, &reloader, &workers, access_log.get(), std::move(sockets->fds),
             config.drain_timeout_ns)
      .Run();
  workers.Join();
  if (prober) prober->Stop();
  resolver.Stop();
  // Every worker handed its last lines over when its loop ended.
  access_log.reset();
  LOG_INFO("stopped");
  // Connections left after a drain timeout are simply dropped by exit.
  _exit(0);
}

}  // namespace
}  // namespace sluice::core

int main(int argc, char** argv) { return sluice::core::Run(argc, argv); }
