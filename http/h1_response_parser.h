#pragma once

#include <cstddef>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/engine/slice.h"
#include "http/header_collector.h"
#include "http/message.h"

struct llhttp__internal_s;

namespace sluice::http {

// Receives the events of one upstream response. Callbacks run inside
// H1ResponseParser::Dispatch/Finish and must not destroy the parser. Body
// bytes come as sub-slices of the Slice given to Dispatch: they share its
// owner (no copy) and may be kept past the call.
class H1ResponseSink {
 public:
  virtual ~H1ResponseSink() = default;
  // Final (non-1xx, or 101) response head. Interim 1xx responses are dropped.
  virtual void OnResponseHead(ResponseHead head) = 0;
  // De-chunked payload bytes, as soon as they are parsed: a view of the
  // Slice given to Dispatch.
  virtual void OnResponseBody(core::Slice data) = 0;
  // The response is complete (by its framing, or by EOF for a
  // close-delimited body).
  virtual void OnResponseComplete() = 0;
};

// HTTP/1.1 response parser for upstream links, on llhttp (strict). One
// response per Begin(); bytes after a complete response stay unconsumed.
class H1ResponseParser {
 public:
  explicit H1ResponseParser(H1ResponseSink* sink);
  ~H1ResponseParser();
  H1ResponseParser(const H1ResponseParser&) = delete;
  H1ResponseParser& operator=(const H1ResponseParser&) = delete;

  // Prepares for the response to a request with method HEAD (no body) or
  // not, and a WebSocket handshake or not: a 101 is an error (Dispatch
  // fails) unless it answers a WebSocket handshake with Upgrade: websocket,
  // so no other answer can turn the link into a tunnel.
  void Begin(bool head_request, bool websocket_request = false);

  // Parses and returns the bytes consumed; stops after the complete response
  // or after a 101 head (the rest belongs to the tunnel). The caller keeps
  // its reference; body views handed to the sink take their own references
  // to `in`'s owner.
  absl::StatusOr<size_t> Dispatch(const core::Slice& in);

  // The upstream closed its side: completes a close-delimited body, or
  // returns an error when the response is cut short.
  absl::Status Finish();

  // Any response byte seen since Begin().
  bool started() const { return started_; }
  bool head_done() const { return head_done_; }
  bool complete() const { return complete_; }
  bool upgraded() const { return upgraded_; }

 private:
  friend struct H1ResponseParserCallbacks;

  H1ResponseSink* sink_;
  llhttp__internal_s* parser_;
  const core::Slice* input_ = nullptr;  // during Dispatch
  ResponseHead head_;
  HeaderCollector headers_;
  bool head_request_ = false;
  bool websocket_request_ = false;
  bool interim_ = false;
  bool started_ = false;
  bool head_done_ = false;
  bool complete_ = false;
  bool upgraded_ = false;
  absl::Status error_;
};

}  // namespace sluice::http
