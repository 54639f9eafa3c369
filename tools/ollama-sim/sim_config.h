// Shared configuration and process-wide counters of the Ollama simulator.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace sluice::sim {

// How the simulator answers a request. Set globally by --mode and per request
// by the X-Sim-Mode header.
enum class Mode {
  kNormal,   // Answer like Ollama.
  kHang,     // Read the request, never answer, keep the connection open.
  kGarbage,  // Write bytes that are not HTTP, then close.
  kBusy,     // 503 {"error":"server busy"}.
};

// Parses "normal", "hang", "garbage" or "busy" (case-insensitive). Returns
// false on anything else and leaves *mode untouched.
bool ParseMode(absl::string_view text, Mode* mode);

// Immutable after startup; every worker reads it without locking.
struct SimConfig {
  int tokens = 20;  // Tokens per generation.
  int64_t token_delay_ns = 20'000'000;
  int64_t ttft_ns = 0;  // Extra delay before the first token.
  Mode mode = Mode::kNormal;
  bool allow_any_host = false;

  // Model-aware behaviour, like a real Ollama's scheduler. Off (every model
  // name accepted, nothing loaded or queued) unless one of --models,
  // --num_parallel, --max_queue, --max_loaded_models or --load_ms is given.
  bool model_mode = false;
  // --models: full names ("name:tag"; a bare name got ":latest"). Empty:
  // any model is accepted and /api/tags keeps its fixed list.
  std::vector<std::string> models;
  int num_parallel = 0;       // Generations at once per model; 0 = no limit.
  int max_queue = 512;        // Requests waiting at once before 503.
  int max_loaded_models = 0;  // 0 = no limit.
  int64_t load_ns = 0;        // Time a model takes to load on first use.
};

// Counters behind GET /sim/stats. Shared by all workers; relaxed atomics are
// enough because tests read them only after the traffic they count settled.
struct SimStats {
  std::atomic<int64_t> opened{0};
  std::atomic<int64_t> closed{0};
  // Not reset by /sim/reset: it is the live number of open connections.
  std::atomic<int64_t> active{0};
  std::atomic<int64_t> requests{0};
  std::atomic<int64_t> aborted_streams{0};
  std::atomic<int64_t> last_abort_us{0};

  // Zeroes everything except `active`.
  void Reset();
  // Renders the /sim/stats JSON body.
  std::string ToJson() const;
};

// The single instance, defined in sim_config.cc.
SimStats& GlobalStats();

// CLOCK_MONOTONIC in nanoseconds: the time base of token deadlines.
int64_t MonotonicNowNs();
// CLOCK_REALTIME in microseconds: the value written as "sim_t_us".
int64_t RealtimeNowUs();

}  // namespace sluice::sim
