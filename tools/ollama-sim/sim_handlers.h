// What the simulator answers, decided apart from any socket: a parsed request
// goes in, a ResponsePlan comes out, and the stream formatters turn a plan
// into the bytes of each NDJSON object or SSE event. The server (sim_server)
// owns timing, framing and I/O.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "sim_config.h"

namespace sluice::sim {

// One request as the server's llhttp callbacks collected it. Only the headers
// the simulator acts on are kept.
struct HttpRequest {
  uint8_t method = 0;  // llhttp_method_t.
  std::string url;     // Request target, query included.
  int http_major = 1;
  int http_minor = 1;
  bool keep_alive = true;      // llhttp_should_keep_alive() at message end.
  bool upgrade = false;        // llhttp stopped at an Upgrade/CONNECT request.
  int parse_error_status = 0;  // Non-zero: answer with this status and close.

  std::optional<std::string> host;
  std::optional<std::string> sim_tokens;
  std::optional<std::string> sim_token_delay_ms;
  std::optional<std::string> sim_ttft_ms;
  std::optional<std::string> sim_close_after;
  std::optional<std::string> sim_reset_after;
  std::optional<std::string> sim_mode;
  std::optional<std::string> sim_chunk_pad;
  std::optional<std::string> sim_switch_protocols;
  std::string upgrade_header;     // Value of Upgrade.
  std::string connection_header;  // Value(s) of Connection, comma-joined.
  std::string ws_key;             // Sec-WebSocket-Key.
  std::string ws_version;         // Sec-WebSocket-Version.
  bool expect_continue = false;   // Expect: 100-continue.

  bool drop_next_request = false;  // X-Sim-Drop-Next-Request: 1
  // Every header as received (name case kept), for /sim/echo.
  std::vector<std::pair<std::string, std::string>> all_headers;

  std::string body;

  // The path without the query string.
  absl::string_view Path() const;
};

// The wire format of a generated stream.
enum class StreamFormat {
  kGenerate,          // /api/generate NDJSON.
  kChat,              // /api/chat NDJSON.
  kOpenAiChat,        // /v1/chat/completions SSE.
  kOpenAiCompletion,  // /v1/completions SSE.
  kPull,              // /api/pull NDJSON progress.
};

// Everything needed to produce a generation, streamed or not.
struct StreamSpec {
  StreamFormat format = StreamFormat::kGenerate;
  bool stream = true;
  // The model name as it appeared between quotes in the request body (JSON
  // escapes kept), so it can be echoed into JSON output verbatim.
  std::string model = "sim";
  int tokens = 20;
  int64_t token_delay_ns = 0;
  int64_t ttft_ns = 0;
  int close_after = -1;        // -1: never. Else close after this many items.
  bool close_by_rst = false;   // X-Sim-Reset-After: RST instead of FIN.
  int chunk_pad = 0;           // Extra bytes appended to each token's text.
  bool include_usage = false;  // OpenAI stream_options.include_usage.
  uint64_t completion_id = 0;  // For "chatcmpl-N" / "cmpl-N".
  int64_t created_s = 0;       // Unix seconds at request start.
  // Model mode (sim_models.h): the full model name the generation runs on
  // and loads (empty: not scheduled), and the request's keep_alive.
  std::string model_key;
  int64_t keep_alive_ns = 0;
  // Reported as "load_duration": 1 ms outside model mode; in model mode the
  // load this request waited for, or 0.
  int64_t load_duration_ns = 1'000'000;

  // Number of timed items: for generations, one per token plus the final
  // (done) item; for pull, the fixed sequence of progress objects. Item i is
  // due ttft_ns + i * token_delay_ns after the request started.
  int ItemCount() const;
};

enum class PlanKind {
  kImmediate,  // Send status/body now.
  kStream,     // Chunked stream of ItemCount() timed items.
  kDelayed,    // stream:false generation: one body once the last item is due.
  kHang,       // Never answer.
  kGarbage,    // Write non-HTTP bytes, then close.
  kWebSocket,  // 101, then echo frames.
  kSwitch,     // 101 to whatever was asked, then echo raw bytes.
};

struct ResponsePlan {
  PlanKind kind = PlanKind::kImmediate;
  int status = 200;
  absl::string_view content_type = "application/json; charset=utf-8";
  std::string body;
  bool head_only = false;     // HEAD: headers with the GET body's length.
  std::string extra_headers;  // Complete "Name: value\r\n" lines.
  bool close = false;         // Close once the response is written.
  StreamSpec stream;          // kStream and kDelayed.
  std::string ws_accept;      // kWebSocket: Sec-WebSocket-Accept value.
  std::string switch_to;      // kSwitch: the Upgrade value of the 101.
  // Set by /sim/reset: the connection carrying it was opened before the
  // reset, so its close must not be counted after it either.
  bool stats_reset = false;
};

// Decides the answer to `request`. `count_request` is set to false for the
// simulator's own /sim/* endpoints so that /sim/stats "requests" counts only
// the traffic under test.
ResponsePlan PlanResponse(const HttpRequest& request, const SimConfig& config, bool* count_request);

// Appends the payload(s) of item `index` of a stream to *payloads; each
// payload becomes one HTTP chunk. `elapsed_ns` is the time since the request
// started (for "total_duration"), `sim_t_us` the realtime stamp to embed.
void BuildStreamItem(const StreamSpec& spec, int index, int64_t elapsed_ns, int64_t sim_t_us,
                     std::vector<std::string>* payloads);

// The single JSON body of a stream:false generation or pull.
std::string BuildNonStreamBody(const StreamSpec& spec, int64_t elapsed_ns, int64_t sim_t_us);

// An error answer in the shape of `format`'s API: {"error":"..."} for
// Ollama's, {"error":{"message":...,"type":...}} for OpenAI's.
ResponsePlan ErrorPlan(StreamFormat format, int status, absl::string_view message);

// Content-Type of a stream of `format`.
absl::string_view StreamContentType(StreamFormat format);

// "Not Found" for 404, etc. Unknown codes get "Unknown".
absl::string_view StatusReason(int status);

// The bytes garbage mode writes.
inline constexpr absl::string_view kGarbageBytes = "NOT HTTP AT ALL\r\n\r\n";

}  // namespace sluice::sim
