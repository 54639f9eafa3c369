#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "core/observe/access_log.h"
#include "core/observe/metrics.h"
#include "core/observe/usage_scanner.h"
#include "http/message.h"
#include "policy/policy.h"

namespace sluice::core {

class Shard;

// What one request leaves behind: its status, bytes, times and token counts,
// gathered as it is answered and written once, when it ends, as a metrics
// sample and an access log record. The owner (Relay, internal endpoints)
// reports events as they happen and calls Finish (or Account) exactly once,
// where the request ends.
class RequestRecord {
 public:
  // `accounting`: whether anything is counted or logged at all (off, the
  // record reads no tokens and Finish does nothing).
  RequestRecord(bool accounting, uint64_t connection, int worker, int64_t start_ns,
                int64_t start_unix_ns);
  RequestRecord(const RequestRecord&) = delete;
  RequestRecord& operator=(const RequestRecord&) = delete;

  // The request has a body: its top-level "model" is read as it goes up.
  void ExpectRequestBody();
  void RequestBody(std::string_view bytes);
  // The target as the client sent it, when the upstream gets another one.
  void set_original_target(std::string target) { original_target_ = std::move(target); }
  // The first upstream link was asked for (the upstream time starts).
  void UpstreamStarted(int64_t now_ns);
  // The backend the request went to last (logged with several backends).
  void set_backend(std::string_view name) { backend_ = name; }
  // How long it waited for a generation slot (logged as qw=).
  void set_queue_wait(int64_t ns) { queue_wait_ns_ = ns; }
  // The client was answered here (a policy answer, an error): `status` and
  // the JSON body's size.
  void Answered(int status, uint64_t body_bytes);
  // The upstream's response head was relayed. A 2xx to a generation route
  // (`route_match`, the policy's path) whose body is NDJSON, SSE or JSON
  // has its token events read as it is relayed.
  void ResponseStarted(const http::ResponseHead& response, bool head_request,
                       std::string_view route_match);
  // Response payload relayed at `now_ns` (a read's events share its time).
  void ResponseBody(std::string_view bytes, int64_t now_ns);
  void ResponseComplete(int64_t now_ns);
  // Raw bytes relayed to the client (a tunnel, or a body not read for tokens).
  void AddBodyBytes(uint64_t n) { body_bytes_sent_ += n; }
  // The client went away before its answer (logged as 499).
  void Cancelled() { cancelled_ = true; }

  int status() const { return status_; }
  // The response's load_duration (Ollama's final object), when read.
  std::optional<int64_t> load_duration_ns() const;
  bool cancelled() const { return cancelled_; }
  bool finished() const { return finished_; }
  uint64_t body_bytes_sent() const { return body_bytes_sent_; }

  // Ends the record at `now_ns`: counts it in `metrics` (when not null) and
  // fills `line` for the access log (when not null; views into `head`,
  // `admission`, `client_addr` and this record; the client is
  // `client_addr` unless the policy resolved another). Once: later calls do
  // nothing and return false.
  bool Finish(int64_t now_ns, const http::RequestHead& head, const policy::Admission& admission,
              std::string_view client_addr, MetricsShard* metrics, AccessRecord* line);
  // Finish into the shard's metrics and access log, as its settings say.
  void Account(Shard* shard, const http::RequestHead& head, const policy::Admission& admission,
               std::string_view client_addr);

 private:
  // The token events of a streamed (or JSON) answer, read as it is relayed.
  struct TokenTrack {
    explicit TokenTrack(BodyFormat format) : scanner(format) {}
    ResponseScanner scanner;
    GapSketch gaps;
    Histogram gap_histogram{HistogramKind::kTokenGap};
    int64_t first_ns = -1;
    int64_t last_ns = -1;
  };
  void OnTokens(size_t events, int64_t now_ns);
  void Count(MetricsShard* m, int status, int64_t request_ns, int64_t upstream_ns,
             std::string_view group, std::string_view principal, std::string_view model,
             int64_t prompt, int64_t completion) const;

  const bool accounting_;
  const uint64_t connection_;
  const int worker_;
  const int64_t start_ns_;
  const int64_t start_unix_ns_;
  int64_t upstream_start_ns_ = -1;
  int64_t queue_wait_ns_ = -1;
  uint64_t body_bytes_sent_ = 0;
  int status_ = 0;  // the status the client was sent
  bool cancelled_ = false;
  bool finished_ = false;
  std::string original_target_;  // before normalisation, for the log
  std::string_view backend_;     // a BackendConfig's name (outlives the request)
  std::optional<RequestScanner> request_scan_;
  std::unique_ptr<TokenTrack> tokens_;
};

}  // namespace sluice::core
