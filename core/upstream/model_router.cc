#include "core/upstream/model_router.h"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>

#include "absl/strings/ascii.h"

namespace sluice::core {
namespace {

// A model's demand halves every 30 s without requests.
constexpr double kDemandHalfLifeNs = 30e9;

double Decayed(double demand, int64_t since_ns, int64_t now_ns) {
  if (now_ns <= since_ns || demand == 0) return demand;
  return demand * std::exp2(-static_cast<double>(now_ns - since_ns) / kDemandHalfLifeNs);
}

// Recent times weigh 1/4, what came before 3/4.
int64_t Blend(int64_t old_ns, int64_t sample_ns) {
  return old_ns == 0 ? sample_ns : (old_ns * 3 + sample_ns) / 4;
}

}  // namespace

RouteClass ClassifyRoute(std::string_view method, std::string_view path) {
  path = path.substr(0, path.find('?'));
  static constexpr std::string_view kModelPaths[] = {
      "/api/generate", "/api/chat",       "/api/embed",           "/api/embeddings",
      "/api/show",     "/v1/completions", "/v1/chat/completions", "/v1/embeddings",
  };
  static constexpr std::string_view kAdminPaths[] = {
      "/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete",
  };
  for (std::string_view p : kAdminPaths) {
    if (path == p) return RouteClass::kAdmin;
  }
  if (path.starts_with("/api/blobs/")) return RouteClass::kAdmin;
  if (method != "POST") return RouteClass::kAny;
  for (std::string_view p : kModelPaths) {
    if (path == p) return RouteClass::kModel;
  }
  return RouteClass::kAny;
}

std::string CanonicalModel(std::string_view name) {
  std::string out = absl::AsciiStrToLower(absl::string_view(name.data(), name.size()));
  const size_t colon = out.rfind(':');
  const size_t slash = out.rfind('/');
  if (colon == std::string::npos || (slash != std::string::npos && colon < slash)) {
    out += ":latest";
  }
  return out;
}

ModelTable::View ModelTable::Look(const std::string& model, int64_t now_ns) const {
  std::lock_guard<std::mutex> lock(mu_);
  View v;
  if (tags_known_) v.has = available_.contains(model) ? View::Has::kYes : View::Has::kNo;
  v.total_in_flight = total_in_flight_;
  v.load_ns = load_ns_;
  bool other = false;
  for (const auto& [name, e] : entries_) {
    if (!e.loaded) continue;
    ++v.loaded_count;
    if (name == model || e.evicting) continue;
    if (e.in_flight == 0) ++v.idle_loaded;
    const double demand = Decayed(e.demand, e.demand_ns, now_ns);
    v.least_demand_other = other ? std::min(v.least_demand_other, demand) : demand;
    other = true;
  }
  if (auto it = entries_.find(model); it != entries_.end()) {
    v.loaded = it->second.loaded && !it->second.evicting;
    v.in_flight = it->second.in_flight;
    v.gen_ns = it->second.gen_ns;
  }
  return v;
}

void ModelTable::MakeRoomLocked(const std::string& model) {
  if (max_loaded_ <= 0) return;
  int loaded = 0;
  for (const auto& [name, e] : entries_) loaded += e.loaded ? 1 : 0;
  while (loaded >= max_loaded_) {
    Entry* lru = nullptr;
    for (auto& [name, e] : entries_) {
      if (e.loaded && e.in_flight == 0 && name != model &&
          (lru == nullptr || e.loaded_ns < lru->loaded_ns)) {
        lru = &e;
      }
    }
    if (lru == nullptr) {
      // Every loaded model is in use: Ollama waits for one to go idle and
      // unloads it then; the least recently used not already going.
      Entry* busy = nullptr;
      for (auto& [name, e] : entries_) {
        if (e.loaded && !e.evicting && name != model &&
            (busy == nullptr || e.loaded_ns < busy->loaded_ns)) {
          busy = &e;
        }
      }
      if (busy != nullptr) busy->evicting = true;
      return;
    }
    lru->loaded = false;
    --loaded;
  }
}

void ModelTable::Begin(const std::string& model, int64_t now_ns) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(model);
  if (it == entries_.end() || !it->second.loaded) MakeRoomLocked(model);
  Entry& e = entries_[model];
  e.demand = Decayed(e.demand, e.demand_ns, now_ns) + 1;
  e.demand_ns = now_ns;
  e.loaded = true;
  e.evicting = false;
  e.loaded_ns = now_ns;
  ++e.in_flight;
  ++total_in_flight_;
}

void ModelTable::End(const std::string& model, int64_t now_ns, bool ok, int status, int64_t gen_ns,
                     int64_t load_ns) {
  std::lock_guard<std::mutex> lock(mu_);
  // One sent before a Reset ends first, as far as the counts go: the sum
  // stays right and this backend's count never drops below its own.
  if (auto old = before_reset_.find(model); old != before_reset_.end()) {
    if (--old->second <= 0) before_reset_.erase(old);
    return;
  }
  auto it = entries_.find(model);
  if (it == entries_.end()) return;
  Entry& e = it->second;
  e.in_flight = std::max(0, e.in_flight - 1);
  total_in_flight_ = std::max(0, total_in_flight_ - 1);
  e.loaded_ns = std::max(e.loaded_ns, now_ns);
  if (e.evicting && e.in_flight == 0) {
    e.loaded = false;
    e.evicting = false;
  }
  if (ok) {
    if (gen_ns > 0) e.gen_ns = Blend(e.gen_ns, gen_ns);
    if (load_ns > 0) load_ns_ = Blend(load_ns_, load_ns);
  } else if (status == 404) {
    // Its model list was out of date: it does not have the model.
    e.loaded = false;
    if (tags_known_) available_.erase(model);
  }
}

void ModelTable::SetAvailable(const std::vector<std::string>& names) {
  std::lock_guard<std::mutex> lock(mu_);
  available_.clear();
  for (const std::string& n : names) available_.insert(CanonicalModel(n));
  tags_known_ = true;
}

void ModelTable::SetLoaded(const std::vector<std::string>& names, int64_t asked_ns) {
  absl::flat_hash_set<std::string> loaded;
  for (const std::string& n : names) loaded.insert(CanonicalModel(n));
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [name, e] : entries_) {
    e.loaded = loaded.contains(name) || e.in_flight > 0 || (e.loaded && e.loaded_ns > asked_ns);
    if (e.evicting && e.in_flight == 0) e.loaded = e.evicting = false;
  }
  for (const std::string& name : loaded) {
    Entry& e = entries_[name];
    if (!e.loaded) e.loaded_ns = asked_ns;
    e.loaded = true;
  }
}

void ModelTable::Reset() {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [name, e] : entries_) {
    if (e.in_flight > 0) before_reset_[name] += e.in_flight;
  }
  entries_.clear();
  tags_known_ = false;
  available_.clear();
  load_ns_ = 0;
  total_in_flight_ = 0;
}

std::vector<std::string> ModelTable::LoadedModels() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (const auto& [name, e] : entries_) {
    if (e.loaded && !e.evicting) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string_view RouteKindName(RouteChoice::Kind kind) {
  switch (kind) {
    case RouteChoice::Kind::kLoaded:
      return "loaded";
    case RouteChoice::Kind::kQueued:
      return "queued";
    case RouteChoice::Kind::kSpill:
      return "spill";
    case RouteChoice::Kind::kCold:
      return "cold";
    case RouteChoice::Kind::kNotFound:
      return "not_found";
    case RouteChoice::Kind::kNone:
      break;
  }
  return "none";
}

namespace {

using Has = ModelTable::View::Has;

bool Serves(const RouteCandidate& c) { return c.usable && c.view.has != Has::kNo; }

// Whether loading the model there evicts nothing: none is loaded, or room
// is left (when its capacity is known).
bool HasRoom(const RouteCandidate& c) {
  return c.view.loaded_count == 0 || (c.max_loaded > 0 && c.view.loaded_count < c.max_loaded);
}

// Whether loading the model there evicts no model in use: it has room, or
// a loaded model is idle.
bool LoadsFreely(const RouteCandidate& c) { return HasRoom(c) || c.view.idle_loaded > 0; }

// The expected wait for a slot at a loaded backend whose slots are busy:
// the generations ahead, per slot, times a generation's time.
int64_t ExpectedWaitNs(const RouteCandidate& c) {
  const int slots = std::max(1, c.slots);
  const int64_t ahead = c.view.in_flight - slots + 1;
  const int64_t rounds = (std::max<int64_t>(ahead, 1) + slots - 1) / slots;
  return rounds * (c.view.gen_ns > 0 ? c.view.gen_ns : kDefaultGenerationNs);
}

// The demand of the model a load there would displace (0 with room).
double Displaced(const RouteCandidate& c) { return HasRoom(c) ? 0 : c.view.least_demand_other; }

int64_t LoadNs(const RouteCandidate& c) {
  return c.view.load_ns > 0 ? c.view.load_ns : kDefaultLoadNs;
}

}  // namespace

RouteChoice ChooseBackend(const std::vector<RouteCandidate>& candidates) {
  const int n = static_cast<int>(candidates.size());
  // 1. Loaded with a free slot: the most free slots, then the least busy.
  int best = -1;
  int best_free = 0;
  for (int i = 0; i < n; ++i) {
    const RouteCandidate& c = candidates[i];
    if (!Serves(c) || !c.view.loaded) continue;
    const int free = std::max(1, c.slots) - c.view.in_flight;
    if (free <= 0) continue;
    if (best < 0 || free > best_free ||
        (free == best_free && c.view.total_in_flight < candidates[best].view.total_in_flight)) {
      best = i;
      best_free = free;
    }
  }
  if (best >= 0) return {RouteChoice::Kind::kLoaded, best};

  // 2. Loaded but busy everywhere: the shortest expected wait.
  int queued = -1;
  int64_t wait_ns = 0;
  for (int i = 0; i < n; ++i) {
    const RouteCandidate& c = candidates[i];
    if (!Serves(c) || !c.view.loaded) continue;
    const int64_t w = ExpectedWaitNs(c);
    if (queued < 0 || w < wait_ns) {
      queued = i;
      wait_ns = w;
    }
  }
  // 3. Where it can be loaded without evicting a model in use: first where
  // it evicts nothing at all, then where the model it displaces is in
  // least demand, then the quickest load, then the least busy.
  int cold = -1;
  auto rank = [](const RouteCandidate& c) {
    return std::make_tuple(!HasRoom(c), Displaced(c), LoadNs(c), c.view.total_in_flight);
  };
  for (int i = 0; i < n; ++i) {
    const RouteCandidate& c = candidates[i];
    if (!Serves(c) || c.view.loaded || !LoadsFreely(c)) continue;
    if (cold < 0 || rank(c) < rank(candidates[cold])) cold = i;
  }
  if (queued >= 0) {
    if (cold >= 0 && LoadNs(candidates[cold]) < wait_ns) return {RouteChoice::Kind::kSpill, cold};
    return {RouteChoice::Kind::kQueued, queued};
  }
  if (cold >= 0) return {RouteChoice::Kind::kCold, cold};

  // 4. Every backend that has it is busy with other models: where the
  // model it would displace is in least demand (its generations in flight),
  // so that a popular model keeps its place; then the least busy.
  auto displaces = [](const RouteCandidate& c) {
    return std::make_pair(Displaced(c), c.view.total_in_flight);
  };
  for (int i = 0; i < n; ++i) {
    const RouteCandidate& c = candidates[i];
    if (!Serves(c)) continue;
    if (best < 0 || displaces(c) < displaces(candidates[best])) best = i;
  }
  if (best >= 0) return {RouteChoice::Kind::kCold, best};

  // Nobody serves it: 404 when no backend has it (down ones included), else
  // 503 until one that has it is back.
  const bool anyone_has =
      std::any_of(candidates.begin(), candidates.end(),
                  [](const RouteCandidate& c) { return c.view.has != Has::kNo; });
  return {anyone_has ? RouteChoice::Kind::kNone : RouteChoice::Kind::kNotFound, -1};
}

}  // namespace sluice::core
