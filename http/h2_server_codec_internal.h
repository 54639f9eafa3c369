#pragma once

// What the three source files of H2ServerCodec share: h2_server_codec.cc
// (input, events, the session), h2_server_output.cc (responses, bodies,
// flow control) and h2_callbacks.cc (nghttp2's callbacks). Not for other
// users.

#include <nghttp2/nghttp2.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "http/h2_server_codec.h"

namespace sluice::http {
namespace h2_internal {

// Output Dispatch prepares on its own before the engine takes it: enough for
// the replies a burst of input provokes (and for the GOAWAY of a connection
// error to be found at once), small enough that a client that does not read
// leaves the rest in nghttp2, where the flood limits count it.
constexpr size_t kDispatchPumpCap = 16 * 1024;
// Input is handed to nghttp2 in pieces so the outbound queue bound is checked
// while a large buffer is being parsed, not only after it.
constexpr size_t kRecvChunk = 16 * 1024;
constexpr size_t kFrameHeaderLen = 9;
// Releases of a connection's idle pages (ReleaseIdlePages): a burst of 3,
// then one a second.
constexpr int64_t kIdleReleaseBurst = 3;
constexpr int64_t kIdleReleaseIntervalMs = 1000;

// Broken invariants are fatal (STYLE.md); the Debian abseil has no
// absl/log, hence this small stand-in.
inline void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "h2_server_codec: check failed: %s\n", what);
    std::abort();
  }
}

inline std::string_view View(const uint8_t* p, size_t n) {
  return {reinterpret_cast<const char*>(p), n};
}

inline nghttp2_nv MakeNv(const std::string& name, const std::string& value) {
  nghttp2_nv nv;
  nv.name = reinterpret_cast<uint8_t*>(const_cast<char*>(name.data()));
  nv.namelen = name.size();
  nv.value = reinterpret_cast<uint8_t*>(const_cast<char*>(value.data()));
  nv.valuelen = value.size();
  nv.flags = NGHTTP2_NV_FLAG_NONE;
  return nv;
}

inline std::vector<nghttp2_nv> MakeNvs(const std::vector<Header>& fields) {
  std::vector<nghttp2_nv> nva;
  nva.reserve(fields.size());
  for (const Header& h : fields) nva.push_back(MakeNv(h.name, h.value));
  return nva;
}

// Response fields as HTTP/2 wants them: lowercase names, no
// connection-specific fields (RFC 9113 8.2.2), no pseudo-headers.
inline std::vector<Header> ResponseFields(const std::vector<Header>& in,
                                          std::string_view connection_tokens) {
  std::vector<Header> out;
  out.reserve(in.size() + 2);
  for (const Header& h : in) {
    if (h.name.empty() || h.name[0] == ':') continue;
    if (IsHopByHop(h.name, connection_tokens)) continue;
    if (EqualsIgnoreCase(h.name, "content-length")) continue;
    Header f{h.name, h.value};
    absl::AsciiStrToLower(&f.name);
    out.push_back(std::move(f));
  }
  return out;
}

inline absl::Status ConnectionError(uint32_t code, std::string_view why) {
  std::string msg = absl::StrCat("HTTP/2 connection error ", nghttp2_http2_strerror(code), ": ",
                                 absl::string_view(why.data(), why.size()));
  switch (code) {
    case NGHTTP2_ENHANCE_YOUR_CALM:
      return absl::ResourceExhaustedError(msg);
    case NGHTTP2_INTERNAL_ERROR:
      // nghttp2 ends the session with INTERNAL_ERROR when the client's
      // RST_STREAM rate limit (rapid reset) is exceeded.
      return absl::InternalError(why.empty() ? msg + "stream reset rate limit or internal failure"
                                             : msg);
    default:
      return absl::InvalidArgumentError(msg);
  }
}

// The GOAWAY code for a fatal nghttp2_session_mem_recv result.
inline uint32_t CodeForLibError(ssize_t rv) {
  switch (rv) {
    case NGHTTP2_ERR_BAD_CLIENT_MAGIC:
      return NGHTTP2_PROTOCOL_ERROR;  // RFC 9113 3.4
    case NGHTTP2_ERR_FLOODED:
    case NGHTTP2_ERR_TOO_MANY_CONTINUATIONS:
      return NGHTTP2_ENHANCE_YOUR_CALM;
    default:
      return NGHTTP2_INTERNAL_ERROR;
  }
}

// nghttp2's callbacks for a server session (h2_callbacks.cc); the caller
// deletes them.
nghttp2_session_callbacks* NewCallbacks();

}  // namespace h2_internal

// Block size for the copies of small waiting response pieces: a token
// chunk is 100-300 bytes, so one block holds a few dozen.
constexpr size_t kCopyBlockBytes = 4096;

struct H2ServerCodec::Stream {
  explicit Stream(int32_t stream_id) : id(stream_id) {}

  int32_t id;

  // Request head under construction (until announced).
  RequestHead head;
  std::vector<std::string> cookies;
  std::string authority;
  std::string host;
  bool has_authority = false;
  bool has_host = false;
  bool duplicate_host = false;
  bool saw_priority = false;
  size_t header_bytes = 0;
  size_t header_fields = 0;
  bool oversize = false;
  std::vector<Header> trailers_in;

  bool announced = false;        // OnRequestHeaders queued
  bool internal = false;         // the codec answers it itself (431, 501)
  bool rejected = false;         // the codec reset it as malformed
  bool app_reset = false;        // the sink reset it: no more events
  bool closed = false;           // nghttp2 closed it
  bool terminal_queued = false;  // OnStreamClosed/OnStreamReset queued
  bool terminal_delivered = false;
  bool no_error_reset = false;  // RST_STREAM(NO_ERROR) after the response
  // The response ended before a request body of unknown length: what the
  // stream's window still admits is read and dropped (its stream window is
  // not reopened), and RST_STREAM(NO_ERROR) follows once it is used up.
  bool drain_window = false;
  // HEADERS frames (interim or final) submitted and not yet sent or
  // dropped, and the reset the sink asked for meanwhile: nghttp2 drops a
  // queued HEADERS once a RST_STREAM is queued for its stream (the stream
  // turns "closing"), so the reset waits until the head is on the wire.
  int heads_queued = 0;
  std::optional<uint32_t> reset_after_head;

  // Request body: its declared length and the bytes received so far.
  std::optional<uint64_t> request_length;
  uint64_t request_received = 0;

  // Request body bytes delivered (or queued for delivery) and not consumed.
  size_t unconsumed = 0;

  // Response side.
  bool response_submitted = false;  // final head submitted
  bool eof = false;                 // no more data after the queue
  bool deferred = false;            // the data provider waits for data
  bool blocked = false;             // queue reached the high watermark
  bool response_complete = false;   // END_STREAM sent
  // Response bytes waiting for the window: views of the sink's Slices
  // (`view`) or the codec's own copies (see SendData).
  struct Piece {
    core::Slice bytes;
    bool view = false;
  };
  std::deque<Piece> queue;
  size_t queued = 0;
  size_t views = 0;   // entries of `queue` that are views
  uint64_t sent = 0;  // response body bytes framed so far
  // Small pieces that have to wait are copied here, one block after the
  // other, so a backlog of tokens costs its bytes, not a receive buffer
  // each. Freed (once sent) when the queue empties.
  core::SliceWriter copies{kCopyBlockBytes};
  std::vector<Header> trailers_out;
};

struct H2ServerCodec::Event {
  enum class Kind : uint8_t {
    kHeaders,
    kData,
    kTrailers,
    kEnd,
    kWritable,
    kClosed,
    kReset,
  };
  explicit Event(Kind k) : kind(k) {}

  Kind kind;
  int32_t stream_id = 0;
  bool end_stream = false;
  uint32_t error_code = 0;
  RequestHead head;
  core::Slice data;
  std::vector<Header> trailers;

  bool terminal() const { return kind == Kind::kClosed || kind == Kind::kReset; }
};

}  // namespace sluice::http
