// Model-aware behaviour of the simulator (on with --models, --num_parallel,
// --max_queue, --max_loaded_models or --load_ms), copying Ollama's
// scheduler: which models exist, which are loaded, how many generations run
// at once per model and how many wait, least-recently-used eviction and
// keep_alive expiry. One process-wide scheduler behind a mutex: workers on
// other threads see the same loaded models and queues. A waiting request
// polls it from its connection's timer (every millisecond), which keeps the
// workers free of cross-thread wake-ups.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "sim_config.h"

namespace sluice::sim {

// Ollama's default keep_alive: a model stays loaded 5 minutes after its
// last request.
inline constexpr int64_t kDefaultKeepAliveNs = 5 * 60 * int64_t{1'000'000'000};
// keep_alive < 0: never unload.
inline constexpr int64_t kKeepForever = -1;

// Ollama's text for a request past --max_queue (two spaces and all).
inline constexpr absl::string_view kMaxQueueError =
    "server busy, please try again.  maximum pending requests exceeded";

// "llama3" -> "llama3:latest"; a name with a tag stays as it is.
std::string NormalizeModelName(absl::string_view name);

// Whether a request may name `model`: always, unless --models was given.
bool ModelKnown(const SimConfig& config, absl::string_view model);

// The keep_alive of a request body: a Go duration string ("5m", "1h30m",
// "0") or a number of seconds; negative means forever. Absent: the 5-minute
// default. False when present but malformed.
bool ParseKeepAlive(absl::string_view body, int64_t* keep_alive_ns);

// GET /api/tags and GET /v1/models for the --models list.
std::string ModelTagsBody(const std::vector<std::string>& models);
std::string OpenAiModelsBody(const std::vector<std::string>& models);

// A generation allowed to run: when its first token may start (after the
// model finished loading) and how long this request spent loading it (0
// when the model was loaded already or being loaded by another request).
struct ModelGrant {
  int64_t ready_ns = 0;
  int64_t load_ns = 0;
};

class ModelScheduler {
 public:
  enum class Admission { kStarted, kQueued, kQueueFull };

  // The process-wide instance; Configure() once before the workers start.
  static ModelScheduler& Global();
  void Configure(const SimConfig& config);

  // Counts a request (generation or embedding) naming `key`.
  void CountRequest(const std::string& key);
  // A new generation for `key`: starts it when a slot is free (*grant set),
  // queues it (*ticket set) or refuses it when --max_queue are waiting.
  Admission Admit(const std::string& key, int64_t keep_alive_ns, int64_t now, ModelGrant* grant,
                  uint64_t* ticket);
  // A queued generation asks again; true (and *grant) once it may run.
  bool TryStart(const std::string& key, uint64_t ticket, int64_t keep_alive_ns, int64_t now,
                ModelGrant* grant);
  // A queued generation gave up (its client went away).
  void Cancel(const std::string& key, uint64_t ticket);
  // A running generation ended; keep_alive decides when the model unloads.
  void Release(const std::string& key);

  // GET /api/ps body; the ",\"models\":{...}" part of /sim/stats.
  std::string PsBody();
  std::string StatsJson();
  // /sim/reset: zeroes the per-model counters.
  void ResetStats();

 private:
  struct Model {
    bool loaded = false;
    int64_t ready_ns = 0;  // When loading ends.
    int running = 0;
    int64_t last_used_ns = 0;
    int64_t keep_alive_ns = kDefaultKeepAliveNs;  // Of the latest request.
    int64_t expires_ns = 0;                       // Idle and loaded: unloads then.
    std::deque<uint64_t> waiting;
    int64_t loads = 0;
    int64_t requests = 0;
    // Since the last reset: the most generations running at once, how many
    // generations had to wait here, and the slot time used (the sum over
    // time of `running`, so a proxy's slot use can be measured).
    int max_running = 0;
    int64_t queued = 0;
    int64_t busy_ns = 0;
    int64_t busy_since_ns = 0;  // when `running` last changed
  };
  // Adds the slot time since `running` last changed (call before changing it).
  static void AccountBusy(Model& model, int64_t now);

  void ExpireLocked(int64_t now);
  bool StartLocked(Model& model, uint64_t ticket, int64_t keep_alive_ns, int64_t now,
                   ModelGrant* grant);
  // Unloads the least recently used idle model; false when none is idle.
  bool EvictLocked();
  int LoadedCountLocked() const;

  std::mutex mu_;
  int num_parallel_ = 0;
  int max_queue_ = 512;
  int max_loaded_ = 0;
  int64_t load_ns_ = 0;
  std::map<std::string, Model> models_;
  int waiting_total_ = 0;
  uint64_t next_ticket_ = 1;
};

// A generation's hold on the scheduler: a place in a queue or a running
// slot, given back when the lease is destroyed (the response ended, or the
// connection went away).
class ModelLease {
 public:
  ModelLease(std::string key, int64_t keep_alive_ns)
      : key_(std::move(key)), keep_alive_ns_(keep_alive_ns) {}
  ~ModelLease();
  ModelLease(const ModelLease&) = delete;
  ModelLease& operator=(const ModelLease&) = delete;

  // Admit / TryStart through the global scheduler.
  ModelScheduler::Admission Admit(int64_t now, ModelGrant* grant);
  bool TryStart(int64_t now, ModelGrant* grant);
  bool running() const { return running_; }

 private:
  std::string key_;
  int64_t keep_alive_ns_;
  uint64_t ticket_ = 0;
  bool running_ = false;
};

}  // namespace sluice::sim
