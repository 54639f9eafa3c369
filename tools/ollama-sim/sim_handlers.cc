#include "sim_handlers.h"

#include <llhttp.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "json_scan.h"
#include "sim_embeddings.h"
#include "sim_models.h"
#include "websocket.h"

namespace sluice::sim {
namespace {

constexpr absl::string_view kJson = "application/json; charset=utf-8";
constexpr absl::string_view kText = "text/plain; charset=utf-8";

// Fixed figures reported in every generation's final object and usage block,
// so tests can predict them.
constexpr int kPromptTokens = 8;

// The /api/pull sequence: manifest, five progress steps of one layer,
// verification, manifest write, success.
constexpr int kPullItems = 9;
constexpr int64_t kPullLayerSize = 2'000'000;
constexpr absl::string_view kPullDigest =
    "sha256:6a0746a1ec1aef3e7ec53868f220ff6e389f6f8ef87a01d77c96807de94ca2aa";

// Returned verbatim by GET /api/tags (457 bytes: keeps wrk benchmarks on a
// realistic but small body).
constexpr absl::string_view kTagsBody =
    R"({"models":[{"name":"sim:latest","model":"sim:latest",)"
    R"("modified_at":"2024-01-01T00:00:00Z","size":1000000,)"
    R"("digest":"5a8c3e2f1b9d4c7a","details":{"format":"gguf",)"
    R"("family":"llama","parameter_size":"1B","quantization_level":"Q4_0"}},)"
    R"({"name":"sim-large:7b","model":"sim-large:7b",)"
    R"("modified_at":"2024-01-02T00:00:00Z","size":4000000000,)"
    R"("digest":"9f1e2d3c4b5a6978","details":{"format":"gguf",)"
    R"("family":"llama","parameter_size":"7B","quantization_level":"Q4_K_M"}}]})";

std::atomic<uint64_t> next_completion_id{1};

// Appends the current UTC time as RFC 3339 with nanoseconds. The
// seconds-resolution prefix is cached per thread because gmtime_r is the
// costly part and tokens often share a second.
void AppendRfc3339Now(std::string* out) {
  thread_local time_t cached_sec = -1;
  thread_local char cached_prefix[32];
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  if (ts.tv_sec != cached_sec) {
    tm parts;
    gmtime_r(&ts.tv_sec, &parts);
    strftime(cached_prefix, sizeof(cached_prefix), "%Y-%m-%dT%H:%M:%S", &parts);
    cached_sec = ts.tv_sec;
  }
  char nanos[16];
  snprintf(nanos, sizeof(nanos), ".%09ldZ", static_cast<long>(ts.tv_nsec));
  absl::StrAppend(out, cached_prefix, nanos);
}

// Escapes text that came from a URL for use inside a JSON string.
std::string JsonEscape(absl::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      snprintf(buf, sizeof(buf), "\\u%04x", c);
      out.append(buf);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// Header controls are validated strictly: a typo in a test's header should
// fail loudly (400) rather than silently fall back to the flags.
bool ParseIntHeader(const std::optional<std::string>& value, int min, int max, int* out) {
  if (!value) return true;
  int parsed;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(*value), &parsed) || parsed < min ||
      parsed > max) {
    return false;
  }
  *out = parsed;
  return true;
}

bool ParseMsHeader(const std::optional<std::string>& value, int64_t* out_ns) {
  if (!value) return true;
  double ms;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(*value), &ms) || !std::isfinite(ms) || ms < 0 ||
      ms > 1e9) {
    return false;
  }
  *out_ns = static_cast<int64_t>(std::llround(ms * 1e6));
  return true;
}

// Mirrors Ollama's allowedHosts check for a loopback-bound server.
bool HostAllowed(absl::string_view host) {
  host = absl::StripAsciiWhitespace(host);
  absl::string_view name = host;
  if (absl::StartsWith(host, "[")) {
    size_t end = host.find(']');
    if (end == absl::string_view::npos) return false;
    name = host.substr(1, end - 1);
  } else {
    size_t colon = host.find(':');
    // Exactly one colon separates a port; more means a bare IPv6 literal.
    if (colon != absl::string_view::npos && host.find(':', colon + 1) == absl::string_view::npos) {
      name = host.substr(0, colon);
    }
  }
  std::string lower = absl::AsciiStrToLower(name);
  return lower == "localhost" || lower == "127.0.0.1" || lower == "::1" || lower == "0.0.0.0" ||
         absl::EndsWith(lower, ".localhost");
}

ResponsePlan Json(int status, std::string body) {
  ResponsePlan plan;
  plan.status = status;
  plan.content_type = kJson;
  plan.body = std::move(body);
  return plan;
}

ResponsePlan Error(int status, absl::string_view message) {
  return Json(status, absl::StrCat("{\"error\":\"", message, "\"}"));
}

ResponsePlan MethodNotAllowed(absl::string_view allow) {
  ResponsePlan plan = Error(405, "method not allowed");
  plan.extra_headers = absl::StrCat("Allow: ", allow, "\r\n");
  return plan;
}

std::string ModelOf(absl::string_view body) {
  if (auto model = FindJsonString(body, "model")) return std::string(*model);
  if (auto name = FindJsonString(body, "name")) return std::string(*name);
  return "sim";
}

ResponsePlan OpenAiError(int status, absl::string_view message) {
  absl::string_view type = status == 400   ? "invalid_request_error"
                           : status == 404 ? "not_found_error"
                                           : "api_error";
  return Json(status, absl::StrCat("{\"error\":{\"message\":\"", message, "\",\"type\":\"", type,
                                   "\",\"param\":null,\"code\":null}}"));
}

// Model mode: a request that runs on a model gets 404 when --models does not
// list it, 400 for a malformed keep_alive; otherwise it is counted (when
// `count`) and *key is its full model name. Outside model mode: nothing.
std::optional<ResponsePlan> CheckModel(const HttpRequest& request, const SimConfig& config,
                                       bool openai, bool count, std::string* key = nullptr,
                                       int64_t* keep_alive_ns = nullptr) {
  if (!config.model_mode) return std::nullopt;
  std::string model = ModelOf(request.body);
  if (!ModelKnown(config, model)) {
    std::string message = absl::StrCat("model '", model, "' not found");
    return openai ? OpenAiError(404, message) : Error(404, message);
  }
  int64_t keep_alive = 0;
  if (!ParseKeepAlive(request.body, &keep_alive)) {
    return openai ? OpenAiError(400, "invalid keep_alive") : Error(400, "invalid keep_alive");
  }
  std::string full = NormalizeModelName(model);
  if (count) ModelScheduler::Global().CountRequest(full);
  if (key) *key = std::move(full);
  if (keep_alive_ns) *keep_alive_ns = keep_alive;
  return std::nullopt;
}

bool IsGetOrHead(uint8_t method) { return method == HTTP_GET || method == HTTP_HEAD; }

// A GET resource that also answers HEAD with the same headers.
ResponsePlan GetResource(const HttpRequest& request, absl::string_view type, std::string body) {
  if (!IsGetOrHead(request.method)) return MethodNotAllowed("GET, HEAD");
  ResponsePlan plan;
  plan.content_type = type;
  plan.body = std::move(body);
  plan.head_only = request.method == HTTP_HEAD;
  return plan;
}

std::string ShowBody(absl::string_view model) {
  return absl::StrCat(R"({"modelfile":"# Modelfile generated by ollama-sim\nFROM )", model,
                      R"(\n","parameters":"num_ctx 8192","template":"{{ .Prompt }}",)",
                      R"("details":{"parent_model":"","format":"gguf","family":"llama",)",
                      R"("families":["llama"],"parameter_size":"1B",)",
                      R"("quantization_level":"Q4_0"},"model_info":{)",
                      R"("general.architecture":"llama","general.parameter_count":1000000000,)",
                      R"("llama.context_length":8192},"capabilities":["completion"],)",
                      R"("modified_at":"2024-01-01T00:00:00Z"})");
}

std::string ModelsListBody() {
  return R"({"object":"list","data":[)"
         R"({"id":"sim:latest","object":"model","created":1704067200,"owned_by":"library"},)"
         R"({"id":"sim-large:7b","object":"model","created":1704153600,"owned_by":"library"}]})";
}

// Fills the generation parameters from the flags, then the X-Sim-* headers.
// Returns an error plan when a header does not parse.
std::optional<ResponsePlan> FillSpec(const HttpRequest& request, const SimConfig& config,
                                     StreamFormat format, StreamSpec* spec) {
  spec->format = format;
  spec->model = ModelOf(request.body);
  spec->tokens = config.tokens;
  spec->token_delay_ns = config.token_delay_ns;
  spec->ttft_ns = config.ttft_ns;
  if (!ParseIntHeader(request.sim_tokens, 0, 10'000'000, &spec->tokens)) {
    return Error(400, "invalid X-Sim-Tokens header");
  }
  if (!ParseMsHeader(request.sim_token_delay_ms, &spec->token_delay_ns)) {
    return Error(400, "invalid X-Sim-Token-Delay-Ms header");
  }
  if (!ParseMsHeader(request.sim_ttft_ms, &spec->ttft_ns)) {
    return Error(400, "invalid X-Sim-TTFT-Ms header");
  }
  if (!ParseIntHeader(request.sim_close_after, 0, 1 << 30, &spec->close_after)) {
    return Error(400, "invalid X-Sim-Close-After header");
  }
  // X-Sim-Reset-After is Close-After ending with a TCP RST; it wins when both
  // are given.
  int reset_after = -1;
  if (!ParseIntHeader(request.sim_reset_after, 0, 1 << 30, &reset_after)) {
    return Error(400, "invalid X-Sim-Reset-After header");
  }
  if (reset_after >= 0) {
    spec->close_after = reset_after;
    spec->close_by_rst = true;
  }
  if (!ParseIntHeader(request.sim_chunk_pad, 0, 16 << 20, &spec->chunk_pad)) {
    return Error(400, "invalid X-Sim-Chunk-Pad header");
  }
  bool openai = format == StreamFormat::kOpenAiChat || format == StreamFormat::kOpenAiCompletion;
  // Ollama's native API streams unless told not to; OpenAI's does not unless
  // told to.
  spec->stream = FindJsonBool(request.body, "stream").value_or(!openai);
  if (std::optional<JsonValue> options = FindJsonField(request.body, "stream_options")) {
    spec->include_usage = FindJsonBool(options->raw, "include_usage").value_or(false);
  }
  spec->completion_id = next_completion_id.fetch_add(1);
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  spec->created_s = ts.tv_sec;
  return std::nullopt;
}

ResponsePlan Generation(const HttpRequest& request, const SimConfig& config, StreamFormat format) {
  if (request.method != HTTP_POST) return MethodNotAllowed("POST");
  ResponsePlan plan;
  if (std::optional<ResponsePlan> error = FillSpec(request, config, format, &plan.stream)) {
    return *std::move(error);
  }
  if (format != StreamFormat::kPull) {
    bool openai = format == StreamFormat::kOpenAiChat || format == StreamFormat::kOpenAiCompletion;
    if (std::optional<ResponsePlan> error =
            CheckModel(request, config, openai, /*count=*/true, &plan.stream.model_key,
                       &plan.stream.keep_alive_ns)) {
      return *std::move(error);
    }
  }
  plan.kind = plan.stream.stream ? PlanKind::kStream : PlanKind::kDelayed;
  return plan;
}

ResponsePlan WebSocketUpgrade(const HttpRequest& request) {
  if (request.method != HTTP_GET) return MethodNotAllowed("GET");
  bool connection_upgrade = false;
  for (absl::string_view token : absl::StrSplit(request.connection_header, ',')) {
    if (absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(token), "upgrade")) {
      connection_upgrade = true;
    }
  }
  if (!request.upgrade ||
      !absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(request.upgrade_header), "websocket") ||
      !connection_upgrade || request.ws_key.empty()) {
    ResponsePlan plan = Error(400, "websocket upgrade required");
    plan.close = request.upgrade;
    return plan;
  }
  if (absl::StripAsciiWhitespace(request.ws_version) != "13") {
    ResponsePlan plan = Error(426, "unsupported websocket version");
    plan.extra_headers = "Sec-WebSocket-Version: 13\r\n";
    plan.close = true;
    return plan;
  }
  ResponsePlan plan;
  plan.kind = PlanKind::kWebSocket;
  plan.status = 101;
  plan.ws_accept = WebSocketAcceptKey(absl::StripAsciiWhitespace(request.ws_key));
  return plan;
}

// Token i (0-based) of every generation.
void AppendTokenText(const StreamSpec& spec, int i, std::string* out) {
  absl::StrAppend(out, "tok", i + 1, " ");
  if (spec.chunk_pad > 0) out->append(spec.chunk_pad, 'x');
}

std::string AllTokensText(const StreamSpec& spec) {
  std::string text;
  for (int i = 0; i < spec.tokens; ++i) AppendTokenText(spec, i, &text);
  return text;
}

// The Ollama "done" statistics, starting with the comma.
void AppendDoneStats(const StreamSpec& spec, int64_t elapsed_ns, std::string* out) {
  absl::StrAppend(out, ",\"total_duration\":", elapsed_ns,
                  ",\"load_duration\":", spec.load_duration_ns,
                  ",\"prompt_eval_count\":", kPromptTokens,
                  ",\"prompt_eval_duration\":", spec.ttft_ns, ",\"eval_count\":", spec.tokens,
                  ",\"eval_duration\":", int64_t{spec.tokens} * spec.token_delay_ns);
}

void AppendUsage(const StreamSpec& spec, std::string* out) {
  absl::StrAppend(out, "\"usage\":{\"prompt_tokens\":", kPromptTokens,
                  ",\"completion_tokens\":", spec.tokens,
                  ",\"total_tokens\":", kPromptTokens + spec.tokens, "}");
}

// The common head of every OpenAI chunk/object, up to and including the
// comma before "choices".
void AppendOpenAiHead(const StreamSpec& spec, absl::string_view object, std::string* out) {
  bool chat = spec.format == StreamFormat::kOpenAiChat;
  absl::StrAppend(out, "{\"id\":\"", chat ? "chatcmpl-" : "cmpl-", spec.completion_id,
                  "\",\"object\":\"", object, "\",\"created\":", spec.created_s, ",\"model\":\"",
                  spec.model, "\",\"system_fingerprint\":\"fp_ollama\",");
}

void AppendOllamaHead(const StreamSpec& spec, std::string* out) {
  absl::StrAppend(out, "{\"model\":\"", spec.model, "\",\"created_at\":\"");
  AppendRfc3339Now(out);
  out->append("\",");
}

std::string PullItem(int index, int64_t sim_t_us) {
  std::string item;
  if (index == 0) {
    item = R"({"status":"pulling manifest")";
  } else if (index <= 5) {
    absl::StrAppend(&item, "{\"status\":\"pulling ", kPullDigest.substr(0, 19), "\",\"digest\":\"",
                    kPullDigest, "\",\"total\":", kPullLayerSize,
                    ",\"completed\":", kPullLayerSize * (index - 1) / 4);
  } else if (index == 6) {
    item = R"({"status":"verifying sha256 digest")";
  } else if (index == 7) {
    item = R"({"status":"writing manifest")";
  } else {
    item = R"({"status":"success")";
  }
  absl::StrAppend(&item, ",\"sim_t_us\":", sim_t_us, "}\n");
  return item;
}

}  // namespace

absl::string_view HttpRequest::Path() const {
  absl::string_view target = url;
  size_t q = target.find('?');
  return q == absl::string_view::npos ? target : target.substr(0, q);
}

int StreamSpec::ItemCount() const {
  return format == StreamFormat::kPull ? kPullItems : tokens + 1;
}

ResponsePlan ErrorPlan(StreamFormat format, int status, absl::string_view message) {
  if (format == StreamFormat::kOpenAiChat || format == StreamFormat::kOpenAiCompletion) {
    return OpenAiError(status, message);
  }
  return Error(status, message);
}

absl::string_view StreamContentType(StreamFormat format) {
  if (format == StreamFormat::kOpenAiChat || format == StreamFormat::kOpenAiCompletion) {
    return "text/event-stream";
  }
  return "application/x-ndjson";
}

absl::string_view StatusReason(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 101:
      return "Switching Protocols";
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 413:
      return "Payload Too Large";
    case 426:
      return "Upgrade Required";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    default:
      return "Unknown";
  }
}

namespace {

// The simulator's own endpoints (/sim/stats, /sim/echo, /sim/reset), or
// nothing for any other path. They are not counted as requests.
std::optional<ResponsePlan> SimEndpoint(const HttpRequest& request, const SimConfig& config,
                                        absl::string_view path, bool* count_request) {
  if (path == "/sim/stats") {
    *count_request = false;
    std::string body = GlobalStats().ToJson();
    if (config.model_mode) {
      // Per-model counters go last, so the flat counters keep their places.
      body.insert(body.size() - 1, ModelScheduler::Global().StatsJson());
    }
    return GetResource(request, kJson, std::move(body));
  }
  const bool echo_header =
      std::any_of(request.all_headers.begin(), request.all_headers.end(),
                  [](const auto& h) { return absl::EqualsIgnoreCase(h.first, "X-Sim-Echo"); });
  if (absl::StartsWith(path, "/sim/echo") || echo_header) {
    // The request as the simulator saw it, for header-rewrite tests (and,
    // with X-Sim-Echo on any path, for tests of what a proxy forwards:
    // those count as requests, so a test sees what reached the simulator).
    *count_request = !absl::StartsWith(path, "/sim/");
    std::string body =
        absl::StrCat("{\"method\":\"",
                     JsonEscape(llhttp_method_name(static_cast<llhttp_method_t>(request.method))),
                     "\",\"target\":\"", JsonEscape(request.url), "\",\"headers\":[");
    for (size_t i = 0; i < request.all_headers.size(); ++i) {
      absl::StrAppend(&body, i ? "," : "", "[\"", JsonEscape(request.all_headers[i].first), "\",\"",
                      JsonEscape(request.all_headers[i].second), "\"]");
    }
    absl::StrAppend(&body, "],\"body\":\"", JsonEscape(request.body), "\"}");
    return Json(200, std::move(body));
  }
  if (path == "/sim/reset") {
    *count_request = false;
    if (request.method != HTTP_POST) return MethodNotAllowed("POST");
    GlobalStats().Reset();
    if (config.model_mode) ModelScheduler::Global().ResetStats();
    ResponsePlan plan = Json(200, "{}");
    plan.stats_reset = true;
    return plan;
  }
  return std::nullopt;
}

// The faults chosen by X-Sim-Switch-Protocols, --mode or X-Sim-Mode, and the
// Host check; nothing when the request is to be served normally.
std::optional<ResponsePlan> InjectedFault(const HttpRequest& request, const SimConfig& config) {
  if (request.sim_switch_protocols) {
    // A misbehaving upstream: 101 whatever the request asked for.
    ResponsePlan plan;
    plan.kind = PlanKind::kSwitch;
    plan.status = 101;
    plan.switch_to = std::string(absl::StripAsciiWhitespace(*request.sim_switch_protocols));
    return plan;
  }
  Mode mode = config.mode;
  if (request.sim_mode && !ParseMode(absl::StripAsciiWhitespace(*request.sim_mode), &mode)) {
    return Error(400, "invalid X-Sim-Mode header");
  }
  if (mode == Mode::kHang) {
    ResponsePlan plan;
    plan.kind = PlanKind::kHang;
    return plan;
  }
  if (mode == Mode::kGarbage) {
    ResponsePlan plan;
    plan.kind = PlanKind::kGarbage;
    return plan;
  }

  if (!config.allow_any_host && (!request.host || !HostAllowed(*request.host))) {
    ResponsePlan plan;
    plan.status = 403;
    plan.content_type = "";
    return plan;
  }
  if (mode == Mode::kBusy) return Error(503, "server busy");
  return std::nullopt;
}

// Ollama's native API (/ and /api/...), or nothing for any other path.
std::optional<ResponsePlan> OllamaEndpoint(const HttpRequest& request, const SimConfig& config,
                                           absl::string_view path) {
  if (path == "/") return GetResource(request, kText, "Ollama is running");
  if (path == "/api/version") {
    return GetResource(request, kJson, R"({"version":"0.0.0-sim"})");
  }
  if (path == "/api/tags") {
    return GetResource(
        request, kJson,
        config.models.empty() ? std::string(kTagsBody) : ModelTagsBody(config.models));
  }
  if (path == "/api/ps") {
    return GetResource(request, kJson,
                       config.model_mode ? ModelScheduler::Global().PsBody() : R"({"models":[]})");
  }
  if (path == "/api/show") {
    if (request.method != HTTP_POST) return MethodNotAllowed("POST");
    if (auto error = CheckModel(request, config, false, false)) return error;
    return Json(200, ShowBody(ModelOf(request.body)));
  }
  if (path == "/api/generate") {
    return Generation(request, config, StreamFormat::kGenerate);
  }
  if (path == "/api/chat") {
    return Generation(request, config, StreamFormat::kChat);
  }
  if (path == "/api/pull") {
    return Generation(request, config, StreamFormat::kPull);
  }
  if (path == "/api/embed") {
    if (request.method != HTTP_POST) return MethodNotAllowed("POST");
    if (auto error = CheckModel(request, config, false, true)) return error;
    return Json(200, OllamaEmbedBody(request.body, ModelOf(request.body)));
  }
  if (path == "/api/embeddings") {
    if (request.method != HTTP_POST) return MethodNotAllowed("POST");
    if (auto error = CheckModel(request, config, false, true)) return error;
    return Json(200, OllamaEmbeddingBody());
  }
  if (path == "/api/delete") {
    if (request.method != HTTP_DELETE) return MethodNotAllowed("DELETE");
    if (!FindJsonString(request.body, "model") && !FindJsonString(request.body, "name")) {
      return Error(400, "model is required");
    }
    ResponsePlan plan;
    plan.content_type = "";
    return plan;
  }
  if (path == "/api/push" || path == "/api/create" || path == "/api/copy") {
    if (request.method != HTTP_POST) return MethodNotAllowed("POST");
    return Json(200, R"({"status":"success"})");
  }
  return std::nullopt;
}

// The OpenAI-compatible API (/v1/...), or nothing for any other path.
std::optional<ResponsePlan> OpenAiEndpoint(const HttpRequest& request, const SimConfig& config,
                                           absl::string_view path) {
  if (path == "/v1/models") {
    return GetResource(request, kJson,
                       config.models.empty() ? ModelsListBody() : OpenAiModelsBody(config.models));
  }
  if (absl::StartsWith(path, "/v1/models/")) {
    std::string id = JsonEscape(path.substr(11));
    if (IsGetOrHead(request.method) && !ModelKnown(config, id)) {
      return OpenAiError(404, absl::StrCat("model '", id, "' not found"));
    }
    return GetResource(request, kJson,
                       absl::StrCat("{\"id\":\"", id,
                                    "\",\"object\":\"model\",\"created\":1704067200,"
                                    "\"owned_by\":\"library\"}"));
  }
  if (path == "/v1/chat/completions") {
    return Generation(request, config, StreamFormat::kOpenAiChat);
  }
  if (path == "/v1/completions") {
    return Generation(request, config, StreamFormat::kOpenAiCompletion);
  }
  if (path == "/v1/embeddings") {
    if (request.method != HTTP_POST) return MethodNotAllowed("POST");
    if (auto error = CheckModel(request, config, true, true)) return error;
    return Json(200, OpenAiEmbeddingsBody(request.body, ModelOf(request.body)));
  }
  return std::nullopt;
}

}  // namespace

ResponsePlan PlanResponse(const HttpRequest& request, const SimConfig& config,
                          bool* count_request) {
  *count_request = true;
  if (request.parse_error_status != 0) {
    ResponsePlan plan = Error(request.parse_error_status, StatusReason(request.parse_error_status));
    plan.close = true;
    return plan;
  }
  absl::string_view path = request.Path();

  // The simulator's own endpoints skip the mode and Host checks: tests must
  // be able to read counters from a sim that hangs or talks garbage.
  if (std::optional<ResponsePlan> plan = SimEndpoint(request, config, path, count_request)) {
    return *std::move(plan);
  }
  if (std::optional<ResponsePlan> plan = InjectedFault(request, config)) {
    return *std::move(plan);
  }
  if (std::optional<ResponsePlan> plan = OllamaEndpoint(request, config, path)) {
    return *std::move(plan);
  }
  if (std::optional<ResponsePlan> plan = OpenAiEndpoint(request, config, path)) {
    return *std::move(plan);
  }
  if (absl::StartsWith(path, "/ws")) return WebSocketUpgrade(request);
  ResponsePlan plan = Error(404, "not found");
  // An unhandled Upgrade request leaves the byte stream in an unknown
  // protocol after its headers, so the connection cannot be reused.
  plan.close = request.upgrade;
  return plan;
}

void BuildStreamItem(const StreamSpec& spec, int index, int64_t elapsed_ns, int64_t sim_t_us,
                     std::vector<std::string>* payloads) {
  bool final_item = index >= spec.tokens;
  std::string item;
  switch (spec.format) {
    case StreamFormat::kPull:
      payloads->push_back(PullItem(index, sim_t_us));
      return;
    case StreamFormat::kGenerate:
      AppendOllamaHead(spec, &item);
      item.append("\"response\":\"");
      if (!final_item) AppendTokenText(spec, index, &item);
      if (final_item) {
        item.append("\",\"done\":true,\"done_reason\":\"stop\",\"context\":[1,2,3]");
        AppendDoneStats(spec, elapsed_ns, &item);
      } else {
        item.append("\",\"done\":false");
      }
      break;
    case StreamFormat::kChat:
      AppendOllamaHead(spec, &item);
      item.append("\"message\":{\"role\":\"assistant\",\"content\":\"");
      if (!final_item) AppendTokenText(spec, index, &item);
      if (final_item) {
        item.append("\"},\"done\":true,\"done_reason\":\"stop\"");
        AppendDoneStats(spec, elapsed_ns, &item);
      } else {
        item.append("\"},\"done\":false");
      }
      break;
    case StreamFormat::kOpenAiChat:
    case StreamFormat::kOpenAiCompletion: {
      bool chat = spec.format == StreamFormat::kOpenAiChat;
      absl::string_view object = chat ? "chat.completion.chunk" : "text_completion";
      item.append("data: ");
      AppendOpenAiHead(spec, object, &item);
      if (chat) {
        item.append(
            "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
            "\"content\":\"");
        if (!final_item) AppendTokenText(spec, index, &item);
        item.append("\"},");
      } else {
        item.append("\"choices\":[{\"text\":\"");
        if (!final_item) AppendTokenText(spec, index, &item);
        item.append("\",\"index\":0,");
      }
      absl::StrAppend(&item, "\"finish_reason\":", final_item ? "\"stop\"" : "null",
                      "}],\"sim_t_us\":", sim_t_us, "}\n\n");
      payloads->push_back(std::move(item));
      if (!final_item) return;
      if (spec.include_usage) {
        std::string usage = "data: ";
        AppendOpenAiHead(spec, object, &usage);
        usage.append("\"choices\":[],");
        AppendUsage(spec, &usage);
        absl::StrAppend(&usage, ",\"sim_t_us\":", sim_t_us, "}\n\n");
        payloads->push_back(std::move(usage));
      }
      payloads->push_back("data: [DONE]\n\n");
      return;
    }
  }
  absl::StrAppend(&item, ",\"sim_t_us\":", sim_t_us, "}\n");
  payloads->push_back(std::move(item));
}

std::string BuildNonStreamBody(const StreamSpec& spec, int64_t elapsed_ns, int64_t sim_t_us) {
  std::string body;
  switch (spec.format) {
    case StreamFormat::kPull:
      return absl::StrCat("{\"status\":\"success\",\"sim_t_us\":", sim_t_us, "}");
    case StreamFormat::kGenerate:
      AppendOllamaHead(spec, &body);
      absl::StrAppend(&body, "\"response\":\"", AllTokensText(spec),
                      "\",\"done\":true,\"done_reason\":\"stop\","
                      "\"context\":[1,2,3]");
      AppendDoneStats(spec, elapsed_ns, &body);
      break;
    case StreamFormat::kChat:
      AppendOllamaHead(spec, &body);
      absl::StrAppend(&body, "\"message\":{\"role\":\"assistant\",\"content\":\"",
                      AllTokensText(spec), "\"},\"done\":true,\"done_reason\":\"stop\"");
      AppendDoneStats(spec, elapsed_ns, &body);
      break;
    case StreamFormat::kOpenAiChat:
      AppendOpenAiHead(spec, "chat.completion", &body);
      absl::StrAppend(&body,
                      "\"choices\":[{\"index\":0,\"message\":{\"role\":"
                      "\"assistant\",\"content\":\"",
                      AllTokensText(spec), "\"},\"finish_reason\":\"stop\"}],");
      AppendUsage(spec, &body);
      break;
    case StreamFormat::kOpenAiCompletion:
      AppendOpenAiHead(spec, "text_completion", &body);
      absl::StrAppend(&body, "\"choices\":[{\"text\":\"", AllTokensText(spec),
                      "\",\"index\":0,\"finish_reason\":\"stop\"}],");
      AppendUsage(spec, &body);
      break;
  }
  absl::StrAppend(&body, ",\"sim_t_us\":", sim_t_us, "}");
  return body;
}

}  // namespace sluice::sim
