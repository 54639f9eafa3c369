#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/engine/slice.h"
#include "http/header_collector.h"
#include "http/message.h"

struct llhttp__internal_s;

namespace sluice::http {

// Receives the events of one HTTP/1.1 request at a time.
// Callbacks run inside H1ServerCodec::Dispatch. They must not destroy the
// codec. Body bytes come as sub-slices of the Slice given to Dispatch: they
// share its owner (no copy) and may be kept past the call.
class H1RequestSink {
 public:
  virtual ~H1RequestSink() = default;
  // The request head, validated. Framing facts are in `head`.
  virtual void OnRequestHead(RequestHead head) = 0;
  // De-chunked body bytes, in order, as soon as they are parsed: a view of
  // the Slice given to Dispatch.
  virtual void OnRequestBody(core::Slice data) = 0;
  // The request is complete; the codec pauses until Resume().
  virtual void OnRequestComplete() = 0;
};

inline constexpr size_t kHeaderFieldCost = 64;

struct H1Limits {
  // Request line plus header fields, in bytes (431 above it). Each field
  // also counts kHeaderFieldCost, what it costs parsed (the ': ' and CRLF
  // on the wire, and its slot in the header list): a head of thousands of
  // empty fields is as bounded in memory as one of long values.
  size_t max_header_bytes = 64 * 1024;
  // Body bytes, declared or streamed (413 above it).
  uint64_t max_body_bytes = 100ull * 1024 * 1024;
};

// HTTP/1.1 server-side request codec on llhttp. Pure: bytes in, events out,
// no sockets. Strict: llhttp runs in strict mode with no lenient flag, and the
// codec also rejects what RFC 9112 forbids a proxy to accept although llhttp
// 8.1 parses it (obs-fold, Transfer-Encoding on HTTP/1.0, missing or
// duplicate Host, CONNECT, targets that are neither origin nor absolute form).
class H1ServerCodec {
 public:
  H1ServerCodec(H1RequestSink* sink, H1Limits limits);
  ~H1ServerCodec();
  H1ServerCodec(const H1ServerCodec&) = delete;
  H1ServerCodec& operator=(const H1ServerCodec&) = delete;

  // Parses `in` and returns how many bytes were consumed. Consumption stops
  // after a complete request (paused() is then true: the rest belongs to the
  // next, pipelined request) and after an upgrade request's head (upgraded()
  // is then true: the rest belongs to the tunnel). An error is final; its
  // code maps to a status with HttpStatusForError. The caller keeps its
  // reference; body views handed to the sink take their own references to
  // `in`'s owner.
  absl::StatusOr<size_t> Dispatch(const core::Slice& in);

  // Call once the previous request's response is under way, to parse the
  // next request.
  void Resume();

  bool paused() const { return paused_; }
  bool upgraded() const { return upgraded_; }
  // True between a request's first byte and its completion.
  bool in_message() const { return in_message_; }

 private:
  friend struct H1ServerCodecCallbacks;

  int Fail(absl::Status status);
  bool CountHeaderBytes(size_t len);
  absl::Status FinishHead();
  // RFC 6455 4.1's checks of a request asking for Upgrade: websocket;
  // `connection` is the request's Connection list.
  static absl::Status CheckWebSocketHandshake(const RequestHead& h, std::string_view connection);

  H1RequestSink* sink_;
  H1Limits limits_;
  llhttp__internal_s* parser_;
  const core::Slice* input_ = nullptr;  // during Dispatch
  absl::Status error_;
  RequestHead head_;
  HeaderCollector headers_;
  size_t header_bytes_ = 0;
  uint64_t body_bytes_ = 0;
  bool paused_ = false;
  bool upgraded_ = false;
  bool in_message_ = false;
};

// The HTTP status a codec error is answered with: 400 malformed, 413 body
// too large, 417 unsupported expectation, 431 headers too large, 501
// unsupported method or transfer coding.
int HttpStatusForError(const absl::Status& status);

}  // namespace sluice::http
