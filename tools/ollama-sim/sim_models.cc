#include "sim_models.h"

#include <openssl/sha.h>
#include <time.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "json_scan.h"

namespace sluice::sim {
namespace {

constexpr int64_t kModelSize = 1'000'000'000;
constexpr int64_t kSecondNs = 1'000'000'000;

std::string Digest(absl::string_view name) {
  uint8_t hash[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const uint8_t*>(name.data()), name.size(), hash);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(hash), sizeof(hash)));
}

void AppendDetails(std::string* out) {
  out->append(R"("details":{"parent_model":"","format":"gguf","family":"llama",)"
              R"("families":["llama"],"parameter_size":"1B",)"
              R"("quantization_level":"Q4_0"})");
}

// RFC 3339 (UTC, nanoseconds) of the realtime instant `delta_ns` from now;
// kKeepForever gives what Go's time.Now().Add(math.MaxInt64) gives, about
// 292 years ahead, as Ollama reports for keep_alive -1.
std::string RealtimeAfter(int64_t delta_ns) {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  if (delta_ns == kKeepForever) delta_ns = std::numeric_limits<int64_t>::max();
  time_t sec = ts.tv_sec + delta_ns / kSecondNs;
  int64_t nsec = ts.tv_nsec + delta_ns % kSecondNs;
  if (nsec >= kSecondNs) {
    ++sec;
    nsec -= kSecondNs;
  }
  tm parts;
  gmtime_r(&sec, &parts);
  char text[48];
  size_t n = strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &parts);
  snprintf(text + n, sizeof(text) - n, ".%09lldZ", static_cast<long long>(nsec));
  return text;
}

// Go's time.ParseDuration for what keep_alive strings use: an optional
// sign, then number+unit pairs (ns, us, µs, ms, s, m, h); "0" alone too.
bool ParseGoDuration(absl::string_view text, int64_t* ns) {
  bool negative = false;
  if (!text.empty() && (text[0] == '-' || text[0] == '+')) {
    negative = text[0] == '-';
    text.remove_prefix(1);
  }
  if (text == "0") {
    *ns = 0;
    return true;
  }
  if (text.empty()) return false;
  double total = 0;
  while (!text.empty()) {
    size_t digits = 0;
    while (digits < text.size() && (absl::ascii_isdigit(text[digits]) || text[digits] == '.')) {
      ++digits;
    }
    double value;
    if (digits == 0 || !absl::SimpleAtod(text.substr(0, digits), &value)) {
      return false;
    }
    text.remove_prefix(digits);
    size_t unit_len = 0;
    while (unit_len < text.size() && !absl::ascii_isdigit(text[unit_len]) &&
           text[unit_len] != '.') {
      ++unit_len;
    }
    absl::string_view unit = text.substr(0, unit_len);
    text.remove_prefix(unit_len);
    double scale;
    if (unit == "ns") {
      scale = 1;
    } else if (unit == "us" || unit == "\xc2\xb5s" || unit == "\xce\xbcs") {
      scale = 1e3;
    } else if (unit == "ms") {
      scale = 1e6;
    } else if (unit == "s") {
      scale = 1e9;
    } else if (unit == "m") {
      scale = 60e9;
    } else if (unit == "h") {
      scale = 3600e9;
    } else {
      return false;
    }
    total += value * scale;
  }
  if (total > 9e18) return false;
  *ns = static_cast<int64_t>(negative ? -total : total);
  return true;
}

}  // namespace

std::string NormalizeModelName(absl::string_view name) {
  // A ':' after the last '/' separates the tag (a registry host may carry a
  // port: "host:5000/name").
  size_t slash = name.rfind('/');
  size_t colon = name.find(':', slash == absl::string_view::npos ? 0 : slash);
  if (colon != absl::string_view::npos) return std::string(name);
  return absl::StrCat(name, ":latest");
}

bool ModelKnown(const SimConfig& config, absl::string_view model) {
  if (config.models.empty()) return true;
  std::string full = NormalizeModelName(model);
  return std::find(config.models.begin(), config.models.end(), full) != config.models.end();
}

bool ParseKeepAlive(absl::string_view body, int64_t* keep_alive_ns) {
  *keep_alive_ns = kDefaultKeepAliveNs;
  std::optional<JsonValue> value = FindJsonField(body, "keep_alive");
  if (!value || value->raw == "null") return true;
  int64_t ns;
  if (value->is_string) {
    if (!ParseGoDuration(value->raw, &ns)) return false;
  } else {
    double seconds;
    if (!absl::SimpleAtod(value->raw, &seconds) || !std::isfinite(seconds) ||
        std::fabs(seconds) > 9e9) {
      return false;
    }
    ns = static_cast<int64_t>(seconds * 1e9);
  }
  *keep_alive_ns = ns < 0 ? kKeepForever : ns;
  return true;
}

std::string ModelTagsBody(const std::vector<std::string>& models) {
  std::string body = "{\"models\":[";
  for (size_t i = 0; i < models.size(); ++i) {
    absl::StrAppend(&body, i ? "," : "", "{\"name\":\"", models[i], "\",\"model\":\"", models[i],
                    "\",\"modified_at\":\"2024-01-01T00:00:00Z\",\"size\":", kModelSize,
                    ",\"digest\":\"", Digest(models[i]), "\",");
    AppendDetails(&body);
    body.append("}");
  }
  body.append("]}");
  return body;
}

std::string OpenAiModelsBody(const std::vector<std::string>& models) {
  std::string body = R"({"object":"list","data":[)";
  for (size_t i = 0; i < models.size(); ++i) {
    absl::StrAppend(&body, i ? "," : "", "{\"id\":\"", models[i],
                    "\",\"object\":\"model\",\"created\":1704067200,"
                    "\"owned_by\":\"library\"}");
  }
  body.append("]}");
  return body;
}

ModelScheduler& ModelScheduler::Global() {
  static ModelScheduler scheduler;
  return scheduler;
}

void ModelScheduler::Configure(const SimConfig& config) {
  std::lock_guard<std::mutex> lock(mu_);
  num_parallel_ = config.num_parallel;
  max_queue_ = config.max_queue;
  max_loaded_ = config.max_loaded_models;
  load_ns_ = config.load_ns;
  for (const std::string& name : config.models) models_[name];
}

void ModelScheduler::AccountBusy(Model& model, int64_t now) {
  if (model.running > 0 && now > model.busy_since_ns) {
    model.busy_ns += (now - model.busy_since_ns) * model.running;
  }
  model.busy_since_ns = now;
}

void ModelScheduler::CountRequest(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  ++models_[key].requests;
}

void ModelScheduler::ExpireLocked(int64_t now) {
  for (auto& [name, model] : models_) {
    if (model.loaded && model.running == 0 && model.keep_alive_ns != kKeepForever &&
        model.expires_ns <= now) {
      model.loaded = false;
    }
  }
}

int ModelScheduler::LoadedCountLocked() const {
  int loaded = 0;
  for (const auto& [name, model] : models_) loaded += model.loaded ? 1 : 0;
  return loaded;
}

bool ModelScheduler::EvictLocked() {
  Model* victim = nullptr;
  for (auto& [name, model] : models_) {
    if (model.loaded && model.running == 0 &&
        (!victim || model.last_used_ns < victim->last_used_ns)) {
      victim = &model;
    }
  }
  if (!victim) return false;
  victim->loaded = false;
  return true;
}

bool ModelScheduler::StartLocked(Model& model, uint64_t ticket, int64_t keep_alive_ns, int64_t now,
                                 ModelGrant* grant) {
  // FIFO per model: only the head of the queue (or a newcomer to an empty
  // queue) may take a slot.
  if (model.waiting.empty() ? ticket != 0 : model.waiting.front() != ticket) {
    return false;
  }
  *grant = ModelGrant{};
  if (model.loaded) {
    if (num_parallel_ > 0 && model.running >= num_parallel_) return false;
  } else {
    if (max_loaded_ > 0 && LoadedCountLocked() >= max_loaded_ && !EvictLocked()) {
      return false;  // Every loaded model is busy: wait for one to finish.
    }
    model.loaded = true;
    model.ready_ns = now + load_ns_;
    ++model.loads;
    // Even an instant load is reported, so a test can tell who loaded.
    grant->load_ns = load_ns_ > 0 ? load_ns_ : 1'000'000;
  }
  if (ticket != 0) {
    model.waiting.pop_front();
    --waiting_total_;
  }
  AccountBusy(model, now);
  ++model.running;
  model.max_running = std::max(model.max_running, model.running);
  model.last_used_ns = now;
  model.keep_alive_ns = keep_alive_ns;
  grant->ready_ns = std::max(now, model.ready_ns);
  return true;
}

ModelScheduler::Admission ModelScheduler::Admit(const std::string& key, int64_t keep_alive_ns,
                                                int64_t now, ModelGrant* grant, uint64_t* ticket) {
  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(now);
  Model& model = models_[key];
  if (StartLocked(model, 0, keep_alive_ns, now, grant)) {
    return Admission::kStarted;
  }
  if (waiting_total_ >= max_queue_) return Admission::kQueueFull;
  *ticket = next_ticket_++;
  ++model.queued;
  model.waiting.push_back(*ticket);
  ++waiting_total_;
  return Admission::kQueued;
}

bool ModelScheduler::TryStart(const std::string& key, uint64_t ticket, int64_t keep_alive_ns,
                              int64_t now, ModelGrant* grant) {
  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(now);
  return StartLocked(models_[key], ticket, keep_alive_ns, now, grant);
}

void ModelScheduler::Cancel(const std::string& key, uint64_t ticket) {
  std::lock_guard<std::mutex> lock(mu_);
  std::deque<uint64_t>& waiting = models_[key].waiting;
  auto it = std::find(waiting.begin(), waiting.end(), ticket);
  if (it == waiting.end()) return;
  waiting.erase(it);
  --waiting_total_;
}

void ModelScheduler::Release(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  Model& model = models_[key];
  int64_t now = MonotonicNowNs();
  AccountBusy(model, now);
  if (model.running > 0) --model.running;
  model.last_used_ns = now;
  if (model.running > 0) return;
  if (model.keep_alive_ns == 0) {
    model.loaded = false;
  } else if (model.keep_alive_ns != kKeepForever) {
    model.expires_ns = now + model.keep_alive_ns;
  }
}

std::string ModelScheduler::PsBody() {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t now = MonotonicNowNs();
  ExpireLocked(now);
  std::string body = "{\"models\":[";
  bool first = true;
  for (const auto& [name, model] : models_) {
    if (!model.loaded) continue;
    int64_t left = model.keep_alive_ns;
    if (left != kKeepForever && model.running == 0) {
      left = std::max<int64_t>(0, model.expires_ns - now);
    }
    absl::StrAppend(&body, first ? "" : ",", "{\"name\":\"", name, "\",\"model\":\"", name,
                    "\",\"size\":", kModelSize, ",\"digest\":\"", Digest(name), "\",");
    AppendDetails(&body);
    absl::StrAppend(&body, ",\"expires_at\":\"", RealtimeAfter(left),
                    "\",\"size_vram\":", kModelSize, ",\"context_length\":4096}");
    first = false;
  }
  body.append("]}");
  return body;
}

std::string ModelScheduler::StatsJson() {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = MonotonicNowNs();
  ExpireLocked(now);
  std::string out = ",\"models\":{";
  bool first = true;
  for (auto& [name, model] : models_) {
    AccountBusy(model, now);
    absl::StrAppend(&out, first ? "" : ",", "\"", name, "\":{\"loads\":", model.loads,
                    ",\"requests\":", model.requests,
                    ",\"loaded\":", model.loaded ? "true" : "false", ",\"running\":", model.running,
                    ",\"waiting\":", model.waiting.size(), ",\"max_running\":", model.max_running,
                    ",\"queued\":", model.queued, ",\"busy_ms\":", model.busy_ns / 1'000'000, "}");
    first = false;
  }
  out.append("}");
  return out;
}

void ModelScheduler::ResetStats() {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = MonotonicNowNs();
  for (auto& [name, model] : models_) {
    model.loads = 0;
    model.requests = 0;
    model.max_running = model.running;
    model.queued = 0;
    model.busy_ns = 0;
    model.busy_since_ns = now;
  }
}

ModelLease::~ModelLease() {
  if (running_) {
    ModelScheduler::Global().Release(key_);
  } else if (ticket_ != 0) {
    ModelScheduler::Global().Cancel(key_, ticket_);
  }
}

ModelScheduler::Admission ModelLease::Admit(int64_t now, ModelGrant* grant) {
  ModelScheduler::Admission admission =
      ModelScheduler::Global().Admit(key_, keep_alive_ns_, now, grant, &ticket_);
  running_ = admission == ModelScheduler::Admission::kStarted;
  return admission;
}

bool ModelLease::TryStart(int64_t now, ModelGrant* grant) {
  running_ = ModelScheduler::Global().TryStart(key_, ticket_, keep_alive_ns_, now, grant);
  if (running_) ticket_ = 0;
  return running_;
}

}  // namespace sluice::sim
