// How a Relay picks its backend: the one the request names, or by the
// model its body names, or by --balance (see README "Several backends").

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/observe/log.h"
#include "core/proxy/relay.h"
#include "core/server/shard.h"
#include "core/upstream/backend_set.h"
#include "core/upstream/health.h"
#include "http/serialize.h"

namespace sluice::core {
namespace {

// The request header that names the backend an admin request (pull,
// create, delete...) goes to; it never reaches Ollama.
constexpr std::string_view kBackendHeader = "x-sluice-backend";

// How much of a body is held while its "model" is looked for. Clients put
// "model" first; a body whose "model" comes later than this (after a long
// prompt) goes where --balance's fallback sends it.
constexpr size_t kPeekBytes = 64 * 1024;

}  // namespace

#define ROUTE_LOG(level, fmt, ...)                                                          \
  LOG_##level("*%llu client %s: " fmt, static_cast<unsigned long long>(client_.connection), \
              client_.addr.c_str(), ##__VA_ARGS__)

void Relay::Route() {
  const policy::Route* route = gate_.admission().route;
  if (route != nullptr && route->upstream >= 0) {
    // A rules-file upstream: another application, none of Ollama's
    // routing; the proxy's own header goes nowhere.
    std::erase_if(head_.headers, [](const http::Header& h) {
      return http::EqualsIgnoreCase(h.name, kBackendHeader);
    });
    named_ = shard_->NamedBackends(gate_.policy().upstreams()[route->upstream].target);
    backends_ = named_.get();
    pool_ = backends_->Pick();
  } else {
    BackendSet& backends = shard_->backends();
    const RouteClass route_class = ClassifyRoute(head_.method, head_.target);
    UpstreamPool* pinned = nullptr;
    if (!PinBackend(route_class, &pinned)) return;
    if (WantsBodyCheck()) {
      // The key's model policy reads the whole body first (relay_body.cc);
      // a pinned backend stays the one used.
      pool_ = pinned;
      StartPeek();
      return;
    }
    if (pinned != nullptr) {
      pool_ = pinned;
    } else if (route_class == RouteClass::kModel && head_.has_body() && RoutesByModel()) {
      // (With one backend that has slots, the model names the queue.)
      StartPeek();
      return;
    } else {
      pool_ = backends.Pick();
    }
  }
  if (pool_ == nullptr) {
    AnswerNoBackend();
    return;
  }
  downstream_->OnAdmitted();
  gate_.ResumeReading();
  Go(gate_.TakeHeld(), !head_.has_body() || gate_.end_held());
}

bool Relay::PinBackend(RouteClass route_class, UpstreamPool** pinned) {
  BackendSet& backends = shard_->backends();
  auto it = std::find_if(head_.headers.begin(), head_.headers.end(), [](const http::Header& h) {
    return http::EqualsIgnoreCase(h.name, kBackendHeader);
  });
  std::string error;
  if (it != head_.headers.end()) {
    const std::string name = it->value;
    // Every copy goes: the header is the proxy's, never Ollama's.
    std::erase_if(head_.headers, [](const http::Header& h) {
      return http::EqualsIgnoreCase(h.name, kBackendHeader);
    });
    *pinned = backends.Find(name);
    if (*pinned == nullptr) {
      error = absl::StrCat("unknown backend \"", name,
                           "\" in X-Sluice-Backend (one of: ", backends.Names(), ")");
    } else if (!backends.Usable(*pinned)) {
      *pinned = nullptr;
      AnswerNoBackend();
      return false;
    }
  } else if (route_class == RouteClass::kAdmin && backends.size() > 1) {
    error = absl::StrCat(head_.target.substr(0, head_.target.find('?')),
                         " changes one backend: name it in the X-Sluice-Backend header (one of: ",
                         backends.Names(), ")");
  }
  if (error.empty()) return true;
  finished_ = true;
  ROUTE_LOG(INFO, "%s %s: 400 %s", head_.method.c_str(), head_.target.c_str(), error.c_str());
  record_.Answered(400, http::JsonErrorBody(error).size());
  downstream_->SendError(400, error);
  return false;
}

bool Relay::RoutesByModel() const {
  BackendSet& backends = shard_->backends();
  return (backends.size() > 1 && shard_->config().balance == Balance::kModel) ||
         (backends.size() == 1 && backends.pools()[0]->backend().slots > 0 &&
          shard_->config().slot_scheduler != nullptr);
}

void Relay::StartPeek() {
  peek_.emplace();
  if (WantsBodyCheck()) peek_->reader.emplace(BodyApiOf());
  downstream_->OnAdmitted();
  gate_.ResumeReading();
  // Through OnRequestBody: once the model is found, the rest goes up.
  for (Slice& piece : gate_.TakeHeld()) OnRequestBody(std::move(piece));
  if (gate_.end_held()) OnRequestEnd();
}

void Relay::Peek(Slice piece) {
  if (piece.empty()) return;
  if (peek_->reader) {
    // The whole body is read (up to kBodyHoldBytes) before it is judged.
    peek_->reader->Feed(piece.view());
    peek_->bytes += piece.size();
    peek_->held.push_back(std::move(piece));
    if (peek_->reader->failed() || peek_->bytes >= kBodyHoldBytes) RouteByModel();
    return;
  }
  peek_->scanner.Feed(piece.view());
  peek_->bytes += piece.size();
  peek_->held.push_back(std::move(piece));
  // A model found before the body's end routes at once (a later duplicate
  // "model" key, which Ollama would take, only costs a less apt backend).
  if (!peek_->scanner.model().empty() || peek_->scanner.done() || peek_->bytes >= kPeekBytes) {
    RouteByModel();
  }
}

void Relay::RouteByModel() {
  ModelPeek peek = *std::move(peek_);
  peek_.reset();
  BackendSet& backends = shard_->backends();
  std::string named = peek.scanner.model();
  bool cut = peek.scanner.model_cut();
  if (peek.reader) {
    if (!JudgeHeld(&peek, &named)) return;
    cut = false;
    if (pool_ != nullptr) {  // pinned by X-Sluice-Backend
      if (!named.empty()) model_ = CanonicalModel(named);
      Go(std::move(peek.held), peek.end);
      return;
    }
    if (!RoutesByModel() || ClassifyRoute(head_.method, head_.target) != RouteClass::kModel) {
      pool_ = backends.Pick();
      if (pool_ == nullptr) {
        AnswerNoBackend();
        return;
      }
      Go(std::move(peek.held), peek.end);
      return;
    }
  }
  RouteChoice choice;
  if (named.empty() || cut) {
    pool_ = backends.Pick();
  } else if (backends.size() == 1) {
    // One backend: the model only names its slot queue.
    model_ = CanonicalModel(named);
    pool_ = backends.Pick();
    if (pool_ == nullptr) {
      AnswerNoBackend();
      return;
    }
    Go(std::move(peek.held), peek.end);
    return;
  } else {
    model_ = CanonicalModel(named);
    pool_ = backends.PickForModel(model_, nullptr, &choice);
    if (choice.kind == RouteChoice::Kind::kNotFound) {
      AnswerModelNotFound(named);
      return;
    }
  }
  if (pool_ == nullptr) {
    AnswerNoBackend();
    return;
  }
  if (!model_.empty()) {
    BeginModel(choice.kind);
    ROUTE_LOG(DEBUG, "%s %s: model %s to %s (%s)", head_.method.c_str(), head_.target.c_str(),
              model_.c_str(), pool_->backend().name.c_str(), RouteKindName(choice.kind).data());
  }
  Go(std::move(peek.held), peek.end);
}

void Relay::Go(std::vector<Slice> held, bool end) {
  if (!TakeSlot(&held, end)) return;
  SerializeHead();
  if (!AttachLink(false)) return;
  resending_ = true;
  for (Slice& piece : held) OnRequestBody(std::move(piece));
  resending_ = false;
  if (end) OnRequestEnd();
}

// As Ollama answers a model it does not have: {"error":"..."} on its own
// API, and on the OpenAI-compatible one (/v1/...) the OpenAI error object
// its compatibility layer writes, which the OpenAI SDKs read.
void Relay::AnswerModelNotFound(std::string_view model) {
  finished_ = true;
  ++shard_->metrics().route_not_found;
  const std::string error =
      absl::StrCat("model '", absl::string_view(model.data(), model.size()), "' not found");
  ROUTE_LOG(INFO, "%s %s: 404 %s", head_.method.c_str(), head_.target.c_str(), error.c_str());
  std::string body;
  if (absl::StartsWith(gate_.admission().path.match, "/v1/")) {
    body = "{\"error\":{\"message\":\"";
    http::AppendJsonEscaped(error, &body);
    body += "\",\"type\":\"not_found_error\",\"param\":null,\"code\":null}}\n";
  } else {
    body = http::JsonErrorBody(error);
  }
  record_.Answered(404, body.size());
  downstream_->SendJsonAnswer(404, std::move(body), {});
}

UpstreamPool* Relay::NextBackend() {
  if (model_.empty()) return backends_->Pick(pool_);
  RouteChoice choice;
  UpstreamPool* next = backends_->PickForModel(model_, pool_, &choice);
  route_kind_ = choice.kind;
  return next;
}

void Relay::BeginModel(RouteChoice::Kind kind) {
  route_kind_ = kind;
  MetricsShard& m = shard_->metrics();
  switch (kind) {
    case RouteChoice::Kind::kLoaded:
      ++m.route_loaded;
      break;
    case RouteChoice::Kind::kQueued:
      ++m.route_queued;
      break;
    case RouteChoice::Kind::kSpill:
      ++m.route_spill;
      break;
    case RouteChoice::Kind::kCold:
      ++m.route_cold;
      break;
    case RouteChoice::Kind::kNotFound:
    case RouteChoice::Kind::kNone:
      break;
  }
  if (BackendStats* stats = m.backend(pool_->index());
      stats != nullptr && static_cast<size_t>(kind) < 4) {
    ++stats->routed[static_cast<size_t>(kind)];
  }
  model_table_ = pool_->backend().models;
  if (model_table_ == nullptr) return;
  model_start_ns_ = shard_->now_ns();
  response_head_ns_ = 0;
  model_table_->Begin(model_, model_start_ns_);
}

void Relay::EndModel(bool ok) {
  if (model_table_ == nullptr) return;
  const int64_t now = shard_->now_ns();
  const bool cold =
      route_kind_ == RouteChoice::Kind::kCold || route_kind_ == RouteChoice::Kind::kSpill;
  // Ollama's final object says how long the load took; without it (the
  // OpenAI routes), a cold request's wait for its streamed answer's head
  // is mostly the load.
  int64_t load_ns = 0;
  if (std::optional<int64_t> reported = record_.load_duration_ns()) {
    load_ns = *reported;
  } else if (cold && response_head_ns_ > 0 && !response_.content_length.has_value()) {
    load_ns = response_head_ns_ - model_start_ns_;
  }
  const int64_t gen_ns = std::max<int64_t>(1, now - model_start_ns_ - load_ns);
  // Only a cold load teaches the load time (a warm one reports a few ms).
  if (!cold) load_ns = 0;
  model_table_->End(model_, now, ok && complete_, response_.status, gen_ns, load_ns);
  model_table_ = nullptr;
}

}  // namespace sluice::core
