#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sluice::core {

// --access_log_format.
enum class AccessLogFormat {
  // The nginx baseline's log_format, field for field:
  //   $remote_addr - $remote_user [$time_local] "$request" $status
  //   $body_bytes_sent "$http_referer" "$http_user_agent" rt=$request_time
  //   urt=$upstream_response_time
  // then ua=BACKEND with several backends, and qw=SECONDS for a request
  // that took a generation slot (its wait in sluice's queue).
  kNginx,
  // One JSON object per line with the same fields plus the LLM ones.
  kJson,
};

// One finished request, as the access log sees it. Views are valid for the
// duration of the Append call.
struct AccessRecord {
  int64_t start_unix_ns = 0;     // wall clock when the request head arrived
  std::string_view remote_addr;  // the client (after --trusted_proxies)
  // The key name or Basic user; for a refused Basic login the user name
  // it tried (nginx's $remote_user); empty: "-".
  std::string_view user;
  std::string_view method;
  std::string_view target;       // as the client sent it
  std::string_view protocol;     // "HTTP/1.1", "HTTP/1.0", "HTTP/2.0"
  int status = 0;                // 499: the client went away first
  uint64_t body_bytes_sent = 0;  // response payload bytes, headers excluded
  std::string_view referer;      // empty: "-"
  std::string_view user_agent;   // empty: "-"
  int64_t request_time_ns = 0;
  int64_t upstream_time_ns = -1;  // -1: no upstream was used ("-")
  // The backend that answered (with several --upstream); empty: not logged.
  std::string_view backend;
  // The wait for a generation slot (a backend with slots= above 0); -1: it took
  // none (not logged; JSON null).
  int64_t queue_wait_ns = -1;
  // JSON only.
  std::string_view principal;  // "key:NAME", "user:NAME"; empty: null
  std::string_view route;      // route group
  std::string_view model;      // empty: null
  bool stream = false;         // the response was NDJSON or SSE
  int64_t ttft_ns = -1;        // -1: null (no token event relayed)
  int64_t gap_p50_ns = -1;
  int64_t gap_max_ns = -1;
  int64_t prompt_tokens = -1;  // -1: null
  int64_t completion_tokens = -1;
  bool cancelled = false;  // the client went away mid-request
  int worker = 0;
  uint64_t connection = 0;  // the connection's number (log lines name it)
};

// The request's own fields of a record: method, target, protocol
// ("HTTP/2.0" for HTTP/2), Referer and User-Agent. Views into `head`.
template <typename RequestHead>
void DescribeRequest(const RequestHead& head, AccessRecord* r) {
  r->method = head.method;
  r->target = head.target;
  r->protocol = head.version_major == 2   ? "HTTP/2.0"
                : head.version_minor == 0 ? "HTTP/1.0"
                                          : "HTTP/1.1";
  if (const auto* h = head.Find("referer")) r->referer = h->value;
  if (const auto* h = head.Find("user-agent")) r->user_agent = h->value;
}

// Formats access log lines. One per worker: it caches the formatted local
// time for the current second (localtime_r takes a lock in glibc).
class AccessLogFormatter {
 public:
  explicit AccessLogFormatter(AccessLogFormat format) : format_(format) {}

  // Appends one line, '\n' included. Text fields are escaped as nginx's
  // escape=default does for the nginx format ('"', '\\', bytes below 0x20
  // and from 0x7f as \xHH; and space in $remote_user, which nginx leaves as
  // is, so that field positions stay fixed for awk), and as JSON strings
  // for the JSON format (invalid UTF-8 replaced by \ufffd).
  //
  // nginx format: $time_local is "25/Nov/2026:21:41:52 +0000" in local
  // time; $request is "METHOD TARGET PROTOCOL"; times are seconds with
  // millisecond resolution ("0.012"), urt "-" without an upstream. Space
  // is escaped (\x20) in $remote_addr and in each part of $request too,
  // and an empty one is "-", so that awk's $1 (address), $6-$8 (request),
  // $9 (status) and $10 (bytes) hold for every line.
  //
  // JSON format keys, in this order: time (ISO 8601 local time with
  // milliseconds and offset), remote_addr, user, request_method, uri,
  // protocol, status, body_bytes_sent, referer, user_agent, request_time,
  // upstream_response_time, route, key, model, stream, ttft, gap_p50,
  // gap_max, prompt_tokens, completion_tokens, cancelled, worker,
  // connection. Times in seconds as numbers (3 decimals for request times,
  // 6 for ttft and gaps); unknown values are null.
  void Append(const AccessRecord& r, std::string* out);

  AccessLogFormat format() const { return format_; }

 private:
  AccessLogFormat format_;
  int64_t cached_second_ = -1;
  std::string cached_nginx_time_;  // "25/Nov/2026:21:41:52 +0000"
  std::string cached_iso_prefix_;  // "2026-11-25T21:41:52"
  std::string cached_iso_offset_;  // "+00:00"
};

}  // namespace sluice::core
