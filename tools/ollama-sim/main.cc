// ollama-sim: a fake Ollama server for sluice's tests and benchmarks. See
// README.md for the flags, the X-Sim-* header controls and /sim/stats.
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "sim_config.h"
#include "sim_models.h"
#include "sim_server.h"

// Numeric flags are declared as strings and validated here: absl exits with
// status 1 on a value it cannot parse, and callers rely on status 2 with a
// message naming the flag.
ABSL_FLAG(std::string, listen, "127.0.0.1:11434",
          "Address to listen on: host:port or [v6]:port; port 0 = ephemeral");
ABSL_FLAG(std::string, threads, "1", "Worker threads (1..256)");
ABSL_FLAG(std::string, tokens, "20", "Tokens per generation");
ABSL_FLAG(std::string, token_delay_ms, "20",
          "Delay between tokens in ms (fractions allowed; 0 = no delay)");
ABSL_FLAG(std::string, ttft_ms, "0", "Extra delay before the first token, ms");
ABSL_FLAG(std::string, mode, "normal", "normal | hang | garbage | busy");
ABSL_FLAG(bool, allow_any_host, false, "Skip the loopback Host header check");
// Model mode: any of these turns it on (see README.md).
ABSL_FLAG(std::string, models, "", "Comma-separated models /api/tags lists; others get 404");
ABSL_FLAG(std::string, num_parallel, "", "Generations at once per loaded model (0 = no limit)");
ABSL_FLAG(std::string, max_queue, "", "Requests waiting at once before 503 (default 512)");
ABSL_FLAG(std::string, max_loaded_models, "", "Models loaded at once; LRU eviction (0 = no limit)");
ABSL_FLAG(std::string, load_ms, "", "Time a model takes to load on first use, ms");

namespace sluice::sim {
namespace {

[[noreturn]] void BadFlag(const char* flag, const std::string& value, const char* why) {
  fprintf(stderr, "ollama-sim: invalid --%s value '%s': %s\n", flag, value.c_str(), why);
  exit(2);
}

int IntFlag(const char* name, const std::string& value, int min, int max) {
  int parsed;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(value), &parsed) || parsed < min ||
      parsed > max) {
    std::string why = absl::StrCat("expected an integer in [", min, ", ", max, "]");
    BadFlag(name, value, why.c_str());
  }
  return parsed;
}

int64_t MsFlagToNs(const char* name, const std::string& value) {
  double ms;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(value), &ms) || !std::isfinite(ms) || ms < 0 ||
      ms > 1e9) {
    BadFlag(name, value, "expected a non-negative number of milliseconds");
  }
  return static_cast<int64_t>(std::llround(ms * 1e6));
}

// Benchmarks open thousands of connections; the soft limit is often 1024.
void RaiseFileLimit() {
  rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

// --models and the scheduler flags: any of them turns model mode on.
void ModelFlags(SimConfig* config) {
  std::string models = absl::GetFlag(FLAGS_models);
  std::string num_parallel = absl::GetFlag(FLAGS_num_parallel);
  std::string max_queue = absl::GetFlag(FLAGS_max_queue);
  std::string max_loaded = absl::GetFlag(FLAGS_max_loaded_models);
  std::string load_ms = absl::GetFlag(FLAGS_load_ms);
  config->model_mode = !models.empty() || !num_parallel.empty() || !max_queue.empty() ||
                       !max_loaded.empty() || !load_ms.empty();
  for (absl::string_view name : absl::StrSplit(models, ',', absl::SkipWhitespace())) {
    std::string full = NormalizeModelName(absl::StripAsciiWhitespace(name));
    if (full.find_first_of("\"\\ ") != std::string::npos) {
      BadFlag("models", models, "a model name has a quote, backslash or space");
    }
    config->models.push_back(std::move(full));
  }
  if (!num_parallel.empty()) {
    config->num_parallel = IntFlag("num_parallel", num_parallel, 0, 1 << 20);
  }
  if (!max_queue.empty()) {
    config->max_queue = IntFlag("max_queue", max_queue, 0, 1 << 20);
  }
  if (!max_loaded.empty()) {
    config->max_loaded_models = IntFlag("max_loaded_models", max_loaded, 0, 1 << 20);
  }
  if (!load_ms.empty()) config->load_ns = MsFlagToNs("load_ms", load_ms);
}

// The configuration the flags give, validated (exits with status 2 on a bad
// value).
struct Options {
  SimConfig config;
  int threads = 1;
  ListenAddress address;
};

Options OptionsFromFlags() {
  Options options;
  SimConfig& config = options.config;
  options.threads = IntFlag("threads", absl::GetFlag(FLAGS_threads), 1, 256);
  config.tokens = IntFlag("tokens", absl::GetFlag(FLAGS_tokens), 0, 10'000'000);
  config.token_delay_ns = MsFlagToNs("token_delay_ms", absl::GetFlag(FLAGS_token_delay_ms));
  config.ttft_ns = MsFlagToNs("ttft_ms", absl::GetFlag(FLAGS_ttft_ms));
  std::string mode = absl::GetFlag(FLAGS_mode);
  if (!ParseMode(mode, &config.mode)) {
    BadFlag("mode", mode, "expected normal, hang, garbage or busy");
  }
  config.allow_any_host = absl::GetFlag(FLAGS_allow_any_host);
  ModelFlags(&config);
  std::string listen = absl::GetFlag(FLAGS_listen);
  absl::StatusOr<ListenAddress> address = ParseListenAddress(listen);
  if (!address.ok()) {
    BadFlag("listen", listen, std::string(address.status().message()).c_str());
  }
  options.address = *std::move(address);
  return options;
}

// Signals are taken synchronously by sigwait() in Main; every thread
// inherits this mask so none of them is interrupted by one.
sigset_t BlockSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  return signals;
}

// One listener per worker thread on `address`; `*port` becomes the port they
// share (the ephemeral one the first got when `address` asks for port 0).
absl::StatusOr<std::vector<int>> OpenListeners(const ListenAddress& address, int threads,
                                               int* port) {
  // Bind the first listener to learn the real port when 0 was asked for;
  // the others join it with SO_REUSEPORT and the kernel spreads
  // connections across them.
  // SO_REUSEPORT would let this bind share a fixed port with another
  // simulator (same user) without error, splitting its traffic. Probe with a
  // plain socket first so a busy port fails loudly, as with real Ollama.
  if (address.port != 0) {
    if (absl::Status status = ProbePortFree(address); !status.ok()) {
      return status;
    }
  }
  std::vector<int> listeners;
  *port = address.port;
  for (int i = 0; i < threads; ++i) {
    absl::StatusOr<int> fd = OpenListener(address, *port);
    if (!fd.ok()) return fd.status();
    if (i == 0) {
      absl::StatusOr<int> bound = BoundPort(*fd);
      if (!bound.ok()) return bound.status();
      *port = *bound;
    }
    listeners.push_back(*fd);
  }
  return listeners;
}

// A worker for each listener, initialised (not yet running).
absl::StatusOr<std::vector<std::unique_ptr<Worker>>> MakeWorkers(const std::vector<int>& listeners,
                                                                 const SimConfig* config) {
  std::vector<std::unique_ptr<Worker>> workers;
  for (int fd : listeners) {
    auto worker = std::make_unique<Worker>(fd, config);
    if (absl::Status status = worker->Init(); !status.ok()) return status;
    workers.push_back(std::move(worker));
  }
  return workers;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Simulated Ollama server for tests and benchmarks.");
  absl::ParseCommandLine(argc, argv);
  const Options options = OptionsFromFlags();
  ModelScheduler::Global().Configure(options.config);

  RaiseFileLimit();
  sigset_t signals = BlockSignals();

  int port = 0;
  absl::StatusOr<std::vector<int>> listeners =
      OpenListeners(options.address, options.threads, &port);
  if (!listeners.ok()) {
    fprintf(stderr, "ollama-sim: %s\n", std::string(listeners.status().message()).c_str());
    return 1;
  }
  absl::StatusOr<std::vector<std::unique_ptr<Worker>>> workers =
      MakeWorkers(*listeners, &options.config);
  if (!workers.ok()) {
    fprintf(stderr, "ollama-sim: %s\n", std::string(workers.status().message()).c_str());
    return 1;
  }
  std::vector<std::thread> running;
  for (auto& worker : *workers) {
    running.emplace_back([w = worker.get()] { w->Run(); });
  }

  printf("ollama-sim listening on http://%s:%d\n", options.address.display_host.c_str(), port);
  fflush(stdout);

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  for (auto& worker : *workers) worker->Stop();
  for (std::thread& thread : running) thread.join();
  return 0;
}

}  // namespace
}  // namespace sluice::sim

int main(int argc, char** argv) { return sluice::sim::Main(argc, argv); }
