#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"

namespace sluice::core {

// Which requests the router reads a model from, and which must go to one
// backend the admin names.
enum class RouteClass {
  kAny,    // no model: any backend (by --balance's fallback, least_conn)
  kModel,  // a generation, embedding or /api/show: the body's "model" routes it
  kAdmin,  // pull, push, create, copy, delete, blobs: one named backend
};
RouteClass ClassifyRoute(std::string_view method, std::string_view path);

// Ollama's name for what a request spells: "llama3" is "llama3:latest";
// ASCII letters compare case-insensitively (Ollama lower-cases names).
std::string CanonicalModel(std::string_view name);

// What sluice knows of one backend's models, shared by every worker: which
// it has (/api/tags), which are loaded (/api/ps, and the generations routed
// there since), and per model the generations in flight through sluice and
// how long a generation and a load took lately. Read and written under one
// short lock per backend, by model-routed requests only (a generation costs
// milliseconds to minutes of GPU time; the lock, well under a microsecond).
class ModelTable {
 public:
  // What the router needs of this backend for one model.
  struct View {
    enum class Has : uint8_t { kUnknown, kYes, kNo };
    Has has = Has::kUnknown;
    bool loaded = false;
    int in_flight = 0;        // generations of this model sent here
    int total_in_flight = 0;  // of every model
    int loaded_count = 0;     // models loaded
    int idle_loaded = 0;      // loaded models other than this one with none in flight
    // The least recent demand (generations sent lately, halved every 30 s)
    // of a loaded model other than this one: what a load here would
    // displace. 0 when none is loaded.
    double least_demand_other = 0;
    int64_t gen_ns = 0;   // recent generation time of this model here (0: none seen)
    int64_t load_ns = 0;  // recent load time here (0: none seen)
  };

  explicit ModelTable(int max_loaded = 0) : max_loaded_(max_loaded) {}

  // `now_ns`: for the demand's decay (0: none).
  View Look(const std::string& model, int64_t now_ns = 0) const;
  // A generation of `model` goes here: it is loaded, or being loaded, from
  // now on. With max_loaded known and no room, the least recently used
  // idle model is taken to be unloaded, as Ollama does; if every loaded
  // model is in use, the least recently used one is unloaded once its
  // generations end (Ollama holds the new model's request until then), and
  // is no longer offered as loaded meanwhile.
  void Begin(const std::string& model, int64_t now_ns);
  // It ended. `ok`: it was answered 2xx (its time, from start to end, is a
  // generation-time sample; `load_ns` > 0 a load-time sample too). A 404
  // means the backend does not have the model after all.
  void End(const std::string& model, int64_t now_ns, bool ok, int status, int64_t gen_ns,
           int64_t load_ns);
  // /api/tags: the models it has.
  void SetAvailable(const std::vector<std::string>& names);
  // /api/ps, asked at `asked_ns`: the models loaded. One with generations in
  // flight, or sent here after the question, stays loaded (it may be
  // loading still).
  void SetLoaded(const std::vector<std::string>& names, int64_t asked_ns);
  std::vector<std::string> LoadedModels() const;
  // The backend's address changed: what was known is another backend's.
  // The generations in flight to the old address still End here; they are
  // counted apart (and no longer as this backend's) until they do.
  void Reset();

 private:
  struct Entry {
    int in_flight = 0;
    bool loaded = false;
    // Loaded, but another model waits for its place: Ollama unloads it as
    // soon as its generations end, so no new one is sent for it.
    bool evicting = false;
    int64_t loaded_ns = 0;  // when it was last sent here or seen loaded
    int64_t gen_ns = 0;
    double demand = 0;  // generations sent, decayed (see Demand)
    int64_t demand_ns = 0;
  };
  void MakeRoomLocked(const std::string& model);

  const int max_loaded_;
  mutable std::mutex mu_;
  absl::flat_hash_map<std::string, Entry> entries_;  // guarded by mu_
  bool tags_known_ = false;                          // guarded by mu_
  absl::flat_hash_set<std::string> available_;       // guarded by mu_
  int64_t load_ns_ = 0;                              // guarded by mu_
  int total_in_flight_ = 0;                          // guarded by mu_
  // Generations sent before the last Reset, by model, not ended yet.
  absl::flat_hash_map<std::string, int> before_reset_;  // guarded by mu_
};

// One backend as the router sees it for a request.
struct RouteCandidate {
  bool usable = false;  // up, not left out for failures, not excluded
  int slots = 1;        // generations it runs at once per model
  int max_loaded = 0;   // models it keeps loaded at once (0: not known)
  ModelTable::View view;
};

struct RouteChoice {
  enum class Kind : uint8_t {
    kLoaded,    // loaded there with a free slot
    kQueued,    // loaded there, all slots busy: the shortest expected wait
    kSpill,     // loaded elsewhere but busy: loading here is quicker than waiting
    kCold,      // loaded nowhere: loaded here, evicting no model in use if it can
    kNotFound,  // no backend has the model
    kNone,      // no usable backend has it (down or left out)
  };
  Kind kind = Kind::kNone;
  int index = -1;
};
std::string_view RouteKindName(RouteChoice::Kind kind);

// Picks the backend for one generation of a model (see README "Several
// backends"): a loaded one with a free slot; else the loaded one with the
// shortest expected wait, unless a backend that can load the model without
// evicting a model in use would load it sooner than that wait; else a cold
// load where it evicts nothing in use. Never spreads one model over hosts
// while a loaded one has a free slot.
RouteChoice ChooseBackend(const std::vector<RouteCandidate>& candidates);

// Assumed until measured.
inline constexpr int64_t kDefaultGenerationNs = 10'000'000'000;
inline constexpr int64_t kDefaultLoadNs = 10'000'000'000;

}  // namespace sluice::core
