#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "http/message.h"

namespace sluice::http {

// What the proxy knows about a request beyond its head.
struct ForwardContext {
  std::string_view client_addr;    // textual client IP ("127.0.0.1", "::1")
  std::string_view proto;          // "http" or "https"
  std::string_view upstream_host;  // Host value sent upstream
  // X-Real-IP: the client as the policy resolved it (X-Forwarded-For from a
  // trusted proxy); empty means client_addr.
  std::string_view real_ip = {};
};

// Appends the request head sent upstream: a fresh request line in origin form
// with HTTP/1.1, Host set to the upstream's, hop-by-hop fields dropped
// (those named by Connection too), Expect dropped (the proxy answers 100
// itself), X-Real-IP / X-Forwarded-For (appended) / X-Forwarded-Proto /
// X-Forwarded-Host set, and the body framing restated: Content-Length, or
// Transfer-Encoding: chunked for a chunked body. Fields named by the
// request's Connection are dropped, except those the proxy sets itself. A
// WebSocket handshake (head.upgrade) gets Upgrade: websocket and
// Connection: upgrade; no other request carries an Upgrade.
void AppendUpstreamRequestHead(const RequestHead& head, const ForwardContext& ctx,
                               std::string* out);

// How the proxy frames a response body towards its client.
enum class BodyFraming {
  kNone,           // no body (HEAD, 1xx, 204, 304)
  kContentLength,  // length known from the upstream
  kChunked,        // re-chunked by the proxy (HTTP/1.1 clients)
  kClose,          // delimited by closing the connection (HTTP/1.0 clients)
};

// Appends the response head sent to the client: the upstream's status and
// end-to-end fields, with the framing restated and Connection: close when
// `close` is set. A 101 keeps Upgrade and gets Connection: upgrade.
// `extra_fields` are complete "Name: value\r\n" lines the proxy adds (e.g.
// Strict-Transport-Security on TLS connections).
void AppendDownstreamResponseHead(const ResponseHead& head, BodyFraming framing, bool close,
                                  std::string* out, std::string_view extra_fields = {});

// A complete response with body {"error":"<message>"} (JSON-escaped).
// `retry_after_seconds` > 0 adds Retry-After; `extra_fields` as above.
std::string JsonErrorResponse(int status, std::string_view message, bool close,
                              int retry_after_seconds = 0, std::string_view extra_fields = {});

// The same with the JSON body given whole.
std::string JsonResponse(int status, std::string_view json, bool close, int retry_after_seconds = 0,
                         std::string_view extra_fields = {});

// The JSON body alone: {"error":"<message>"} and a newline.
std::string JsonErrorBody(std::string_view message);

// A complete 301 response to `location` (which must contain no CR or LF)
// with a short JSON body.
std::string RedirectResponse(std::string_view location, bool close);

// Appends `s` escaped as the inside of a JSON string.
void AppendJsonEscaped(std::string_view s, std::string* out);

// Writes a chunk-size line ("1a2\r\n") for a body piece of `size` bytes into
// `buf` and returns its length. `buf` needs kMaxChunkHeader bytes.
inline constexpr size_t kMaxChunkHeader = 18;
size_t FormatChunkHeader(uint64_t size, char* buf);

// The last-chunk and an empty trailer section.
inline constexpr std::string_view kLastChunk = "0\r\n\r\n";
inline constexpr std::string_view kCrlf = "\r\n";
inline constexpr std::string_view k100Continue = "HTTP/1.1 100 Continue\r\n\r\n";

}  // namespace sluice::http
