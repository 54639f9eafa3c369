#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "core/engine/slice.h"
#include "http/h2_inbound_guard.h"
#include "http/h2_session_memory.h"
#include "http/message.h"

struct nghttp2_session;

namespace sluice::http {

// HTTP/2 error codes (RFC 9113 7) used in the codec's API.
inline constexpr uint32_t kH2NoError = 0x0;
inline constexpr uint32_t kH2ProtocolError = 0x1;
inline constexpr uint32_t kH2InternalError = 0x2;
inline constexpr uint32_t kH2FlowControlError = 0x3;
inline constexpr uint32_t kH2StreamClosed = 0x5;
inline constexpr uint32_t kH2FrameSizeError = 0x6;
inline constexpr uint32_t kH2RefusedStream = 0x7;
inline constexpr uint32_t kH2Cancel = 0x8;
inline constexpr uint32_t kH2CompressionError = 0x9;
inline constexpr uint32_t kH2EnhanceYourCalm = 0xb;

// Receives the events of the streams of one HTTP/2 connection.
//
// Events are delivered from H2ServerCodec::Dispatch and
// H2ServerCodec::TakeOutput only, never from the Submit*/Send*/Reset* calls,
// and never while nghttp2 is running: the codec collects them during an
// nghttp2 call and delivers them after it returns. The sink may therefore
// call every stream method of the codec (SubmitResponse, SendData,
// EndStream, ResetStream, ConsumeRequestBody, ...) from inside an event, for
// any stream. It must not call Dispatch or TakeOutput from inside an event
// (checked), and must not destroy the codec there.
//
// Per stream the order is: OnRequestHeaders, then OnRequestData* (and
// OnStreamWritable at any point after it), then optionally
// OnRequestTrailers, then OnRequestEnd, then exactly one of OnStreamClosed
// or OnStreamReset. OnStreamClosed/OnStreamReset may come before
// OnRequestEnd (the response finished first, or the stream was reset).
// Streams the sink never saw produce no events: refused, malformed,
// answered by the codec itself (431, 501), or reset by the client in the
// same read as their HEADERS (the rapid-reset pattern: no upstream request
// is started for them). After the sink calls ResetStream(id), no further
// event is delivered for id.
class H2StreamSink {
 public:
  virtual ~H2StreamSink() = default;

  // A new request. `head` is built from the pseudo-header fields: method
  // from :method, target from :path, host from :authority (added to
  // `head.headers` as "host" when the request had no Host field), version
  // 2.0, cookie crumbs joined with "; " into one field (RFC 9113 8.2.3).
  // Names are lowercase. `head.content_length` is the Content-Length field
  // (nghttp2 checks the DATA against it); `head.chunked` is set when a body
  // follows without Content-Length, so that the request can be relayed
  // upstream with chunked framing. `end_stream`: the request has no body
  // (OnRequestEnd follows at once).
  virtual void OnRequestHeaders(int32_t stream_id, RequestHead head, bool end_stream) = 0;

  // Request body bytes, in order. `data` is a sub-view of the Slice given to
  // Dispatch (no copy) unless the piece is smaller than
  // H2Options::copy_data_below or did not lie in that Slice; the sink may
  // keep it as long as it needs (it pins that memory). The stream's flow
  // control window reopens only as the sink calls ConsumeRequestBody.
  virtual void OnRequestData(int32_t stream_id, core::Slice data) = 0;

  // The request's trailer fields (lowercase names); OnRequestEnd follows.
  virtual void OnRequestTrailers(int32_t stream_id, std::vector<Header> trailers) = 0;

  // The client finished its request (END_STREAM).
  virtual void OnRequestEnd(int32_t stream_id) = 0;

  // Response bytes queued with SendData went from at or above
  // H2Options::stream_high_watermark down to stream_low_watermark or less:
  // the sink may read from its upstream again.
  virtual void OnStreamWritable(int32_t stream_id) = 0;

  // The stream is gone after its response was sent completely (END_STREAM
  // went out). Nothing to cancel. Last event for the id.
  virtual void OnStreamClosed(int32_t stream_id) = 0;

  // The stream ended before its response was complete: the client sent
  // RST_STREAM, the codec reset it (protocol error), or the connection is
  // failing. `error_code` is the RFC 9113 code (kH2Cancel, ...). The sink
  // must cancel the upstream at once. Last event for the id.
  virtual void OnStreamReset(int32_t stream_id, uint32_t error_code) = 0;
};

// Limits and knobs of one connection. See H2ServerCodec for the memory
// budget they imply.
struct H2Options {
  // SETTINGS_MAX_CONCURRENT_STREAMS, always sent. Streams above it are
  // refused with RST_STREAM(REFUSED_STREAM) before the client acknowledged
  // the SETTINGS, and are a connection error (PROTOCOL_ERROR) after.
  uint32_t max_concurrent_streams = 128;
  // SETTINGS_INITIAL_WINDOW_SIZE: request body bytes a client may send on
  // one stream before the sink consumed them.
  uint32_t stream_window_bytes = 65535;
  // Request body bytes in flight over all streams (connection window).
  uint32_t connection_window_bytes = 1 << 20;
  // Header section limits per request (and per trailer section), counted as
  // RFC 9113 6.5.2 does: name + value + 32 per field. Advertised as
  // SETTINGS_MAX_HEADER_LIST_SIZE. Above either limit the request is answered
  // with 431; trailers above it reset the stream. (A single field over 64 KiB
  // is a COMPRESSION_ERROR in nghttp2's decoder before this applies.)
  size_t max_header_list_bytes = 64 * 1024;
  size_t max_header_fields = 100;
  // Streams the codec resets because of what the client sent (protocol
  // errors, flow-control overflow, refused streams) are counted in a token
  // bucket of this many per `sent_reset_window_ms`; past it the connection
  // gets GOAWAY(ENHANCE_YOUR_CALM). Guards against "MadeYouReset"
  // (CVE-2025-8671), where a client makes the server reset streams after
  // their work started.
  uint32_t max_sent_resets_per_window = 200;
  int64_t sent_reset_window_ms = 10000;
  // Client RST_STREAM rate limit of nghttp2 (rapid reset, CVE-2023-44487):
  // a token bucket of `burst`, refilled by `rate` per second; past it
  // nghttp2 sends GOAWAY(INTERNAL_ERROR).
  uint64_t received_reset_burst = 1000;
  uint64_t received_reset_rate = 33;
  // CONTINUATION frames allowed after one HEADERS (CVE-2024-28182).
  size_t max_continuations = 8;
  // SETTINGS ACK and PING ACK frames nghttp2 may hold unsent before it
  // declares a flood; entries accepted in one SETTINGS frame.
  size_t max_outbound_ack = 1000;
  size_t max_settings_entries = 32;
  // Frames of any kind nghttp2 may hold unsent (RST_STREAM, WINDOW_UPDATE,
  // HEADERS, ...): past it the client is not reading what it provokes and
  // the connection gets GOAWAY(ENHANCE_YOUR_CALM).
  size_t max_queued_frames = 2000;
  // Per-stream response queue watermarks (bytes given to SendData and not
  // yet taken by TakeOutput). The engine stops reading the stream's upstream
  // at the high one; OnStreamWritable fires at the low one.
  size_t stream_high_watermark = 64 * 1024;
  size_t stream_low_watermark = 16 * 1024;
  // ... and in pieces: a stream is blocked at this many queued pieces too,
  // and writable again at a quarter of it (with the low byte watermark).
  size_t stream_max_pieces = 96;
  // Views of the sink's Slices (receive buffers) the connection may hold
  // in its response queues; past it, every piece that has to wait is
  // copied. Small waiting pieces (below copy_data_below) are always copied.
  size_t connection_max_views = 256;
  // Request DATA pieces smaller than this are copied rather than viewed, so
  // that tiny frames cannot each pin a whole receive buffer; response
  // pieces smaller than this are copied when they have to wait.
  size_t copy_data_below = 1024;
  // Monotonic clock in milliseconds for the reset bucket; null means
  // std::chrono::steady_clock. Tests pass a fake.
  std::function<int64_t()> now_ms;
};

// HTTP/2 server side of one client connection, on nghttp2 (Debian 1.52).
// Pure: bytes in through Dispatch, bytes out through TakeOutput, request
// events to an H2StreamSink, no sockets and no timers.
//
// The engine's loop, per connection:
//   1. Construct after ALPN chose "h2", then TakeOutput and send: the server
//      connection preface (SETTINGS, connection WINDOW_UPDATE) is queued.
//   2. For each received (decrypted) buffer: Dispatch(slice). A non-OK status
//      means a connection error: the GOAWAY is queued, the streams got
//      OnStreamReset; flush the output, then close.
//   3. Whenever WantsWrite() and no send is in flight: TakeOutput(&slices,
//      limit) and send them (one send in flight per socket). Call it again
//      after the sink submitted something (SubmitResponse, SendData, ...)
//      outside Dispatch, e.g. when an upstream chunk arrived.
//   4. Backpressure: stop reading a stream's upstream while QueuedBytes(id)
//      >= stream_high_watermark; resume on OnStreamWritable. Request bodies:
//      call ConsumeRequestBody(id, n) once n body bytes were written
//      upstream; the client's window reopens only then.
//   5. Close when ShouldClose() (both sides done: GOAWAY exchanged and no
//      streams, or a connection error) and the output is flushed. On timer
//      expiry (idle, read) the engine may call GracefulGoaway and close
//      later.
//
// Per-connection memory budget with the defaults (the arithmetic):
//   - HPACK: 4 KiB dynamic table each way (SETTINGS_HEADER_TABLE_SIZE and the
//     encoder cap are kept at 4096), plus nghttp2's field buffer while
//     decoding, at most 64 KiB (its per-field limit).
//   - Header blocks: one is decoded at a time; the codec keeps at most
//     max_header_list_bytes (64 KiB) of it, the rest is dropped and answered
//     with 431. Heads handed to the sink are the sink's: 128 streams x 64 KiB
//     = 8 MiB worst case held by the engine.
//   - Request bodies: at most connection_window_bytes (1 MiB) unconsumed
//     over all streams (a stream at most 64 KiB); views pin at most
//     receive_buffer_size / copy_data_below times that (16 with 16 KiB
//     buffers).
//   - Responses: per stream QueuedBytes < stream_high_watermark + one
//     upstream chunk, so 128 x (64 KiB + chunk) in the worst case, in at
//     most stream_max_pieces pieces. Of the sink's memory (receive
//     buffers) a connection holds at most connection_max_views views plus
//     one per stream (a piece that could leave at once when it came): a
//     waiting piece below copy_data_below is copied into the stream's 4 KiB
//     blocks, and past the views bound every waiting piece is copied. A
//     client that never opens its window thus costs the bytes it is sent,
//     not a 16 KiB receive buffer per token.
//   - Output: what Dispatch prepares is capped at 16 KiB plus one frame
//     before the engine takes it; nghttp2 holds at most max_queued_frames
//     frames (checked after each 16 KiB of input) and
//     max_outbound_ack ACKs, each under ~100 bytes (HEADERS: the response
//     head).
//   - nghttp2 per stream: a few hundred bytes; closed streams are not kept
//     (SETTINGS_NO_RFC7540_PRIORITIES = 1, no closed-stream retention).
//   - nghttp2 per session: its 16 KiB frame buffer and 4 KiB stream table
//     are given back to the kernel when the connection turns idle (no
//     stream, nothing to send), at most 3 times at once and then once a
//     second (h2_session_memory.h); about 5 KiB stays. A connection that
//     turned idle while out of releases keeps up to 8 KiB more until it
//     turns idle again.
//   - What nghttp2 then forgets, RFC 9113 still asks of the server (frames
//     on closed streams, lower stream ids, PRIORITY on stream 0 or on
//     itself): H2InboundGuard keeps the highest stream id, up to 16 ranges
//     of skipped ids and the last 256 stream ids reset (1 KiB), and Dispatch
//     answers those frames before nghttp2 reads them (h2_inbound_guard.h).
class H2ServerCodec {
 public:
  // `sink` must outlive the codec. The server SETTINGS are queued at once.
  H2ServerCodec(H2StreamSink* sink, const H2Options& options);
  ~H2ServerCodec();
  H2ServerCodec(const H2ServerCodec&) = delete;
  H2ServerCodec& operator=(const H2ServerCodec&) = delete;

  // Feeds all of `in`. The caller keeps its reference; request body views
  // handed to the sink take their own references to `in`'s owner, so `in`
  // must be an owned (reference-counted) Slice. Sink events are delivered
  // before it returns, and up to 16 KiB of output (replies, a GOAWAY) is
  // prepared for TakeOutput. Returns the connection error once one happened
  // (GOAWAY queued with the RFC's code, every stream the sink knows got
  // OnStreamReset), and the same error for every later call, which ignores
  // its input; OK otherwise. Status codes: kInvalidArgument for protocol
  // errors, kResourceExhausted for floods and abuse (ENHANCE_YOUR_CALM),
  // kInternal for nghttp2's own verdicts (its RST_STREAM rate limit ends the
  // session with INTERNAL_ERROR). When more than 16 KiB of output was
  // already waiting, nghttp2's GOAWAY is found only by a later TakeOutput:
  // status() and ShouldClose() are the authority.
  absl::Status Dispatch(const core::Slice& in);

  // Appends what is ready to send to `out`, in order, stopping after the
  // frame that reaches `max_bytes` (0: no limit): one call returns at most
  // max(max_bytes, what Dispatch prepared) + one frame (nghttp2 sends DATA
  // payloads of 16 KiB at most). Control frames come as
  // codec-owned Slices (a few frames per Slice); a DATA frame comes as a
  // 9-byte header Slice followed by views of the Slices given to SendData
  // (no copy). The caller owns the Slices and drops them once sent, which
  // releases the memory. May deliver sink events (OnStreamWritable,
  // OnStreamClosed, OnStreamReset).
  void TakeOutput(std::vector<core::Slice>* out, size_t max_bytes = 0);

  // nghttp2 has frames to send, or the codec holds prepared output.
  bool WantsWrite() const;
  // The connection still accepts frames from the client.
  bool WantsRead() const;
  // Neither: close the connection once the last output is sent.
  bool ShouldClose() const { return !WantsRead() && !WantsWrite(); }
  // OK, or the connection error (also returned by Dispatch).
  const absl::Status& status() const { return status_; }

  // --- Responses. Each returns NotFound for a stream that is closed or
  // unknown, FailedPrecondition for a call out of order.

  // Queues the response head: `head.status` and its fields with names
  // lowercased, without hop-by-hop and connection-specific fields (RFC 9113
  // 8.2.2: Connection and the fields it names, Keep-Alive, Proxy-Connection,
  // Transfer-Encoding, Upgrade, TE, Trailer) and without Content-Length,
  // which is restated from `head.content_length` when set. `end_stream`:
  // there is no body (HEAD, 204, 304). A 1xx status queues an interim
  // response (end_stream must be false); the final one follows.
  absl::Status SubmitResponse(int32_t stream_id, const ResponseHead& head, bool end_stream);

  // Queues response body bytes. The codec keeps a reference to `data`'s
  // memory until TakeOutput hands it out. May be called before
  // SubmitResponse (bytes wait for the head).
  absl::Status SendData(int32_t stream_id, core::Slice data);

  // Ends the response after the queued data: END_STREAM on the last DATA
  // frame, or a trailer HEADERS frame when `trailers` is not empty.
  absl::Status EndStream(int32_t stream_id, std::vector<Header> trailers = {});

  // A complete error response with body {"error":"<message>"} and
  // content-type application/json (status per DESIGN.md: 400, 413, 431,
  // ...). `retry_after_seconds` > 0 adds retry-after.
  absl::Status SubmitJsonError(int32_t stream_id, int status, std::string_view message,
                               int retry_after_seconds = 0);

  // Sends RST_STREAM(error_code) and forgets the stream: queued response
  // bytes are dropped and no further sink event is delivered for it. A
  // no-op for a stream already closed.
  absl::Status ResetStream(int32_t stream_id, uint32_t error_code);

  // Response bytes queued for the stream and not yet taken by TakeOutput
  // (0 for an unknown stream).
  size_t QueuedBytes(int32_t stream_id) const;
  // The backpressure signal: the stream's queue reached
  // stream_high_watermark bytes or stream_max_pieces pieces, and has not
  // yet drained to the low marks (OnStreamWritable then).
  bool Congested(int32_t stream_id) const;
  // Response body bytes of the stream framed so far (progress, for a
  // stall timer); 0 for an unknown stream.
  uint64_t SentBytes(int32_t stream_id) const;
  // Queue entries that are views of the sink's Slices, over all streams.
  size_t held_views() const { return views_total_; }
  // The same summed over all streams (kept as streams change, O(1)).
  size_t total_queued_bytes() const { return queued_total_; }

  // --- Request bodies.

  // `n` request body bytes of the stream were relayed upstream: reopens the
  // stream and connection windows by n (WINDOW_UPDATE when half of a window
  // was consumed). A no-op for a closed stream (its unconsumed bytes were
  // returned to the connection window when it closed).
  absl::Status ConsumeRequestBody(int32_t stream_id, size_t n);

  // --- Connection.

  // First step of a graceful shutdown: GOAWAY with the last stream id 2^31-1
  // (RFC 9113 6.8), so the client stops opening streams without losing any
  // in flight. Follow with GracefulGoaway after about one RTT.
  void SubmitShutdownNotice();
  // GOAWAY(NO_ERROR) with the last stream id processed: later streams are
  // ignored, streams in flight complete; ShouldClose() turns true once they
  // did.
  void GracefulGoaway();

  // Streams open in nghttp2 (incoming, not yet closed).
  size_t active_streams() const;
  // Bytes prepared for output and not yet taken.
  size_t pending_output_bytes() const { return pending_bytes_; }

 private:
  struct Stream;
  struct Event;
  friend struct H2Callbacks;
  // Defined with the callbacks (h2_callbacks.cc): queue an event for the
  // sink, and the read callback of every response body.
  void Enqueue(Stream* s, Event ev);
  static ssize_t ReadDataCallback(nghttp2_session* session, int32_t stream_id, uint8_t* buf,
                                  size_t length, uint32_t* data_flags, nghttp2_data_source* source,
                                  void* user_data);

  int64_t Now() const;
  Stream* FindLive(int32_t stream_id);
  const Stream* FindLive(int32_t stream_id) const;
  // Moves what nghttp2 wants to send into pending_ until pending_ holds
  // `limit` bytes (0: no limit).
  void Pump(size_t limit);
  void AppendBytes(const uint8_t* data, size_t len);
  void FlushBytes();
  void DeliverEvents();
  void SetQueued(Stream* s, size_t n);
  void ClearQueue(Stream* s);
  // What nghttp2 may send on the stream now: the smaller of its window and
  // the connection's.
  int64_t SendWindow(int32_t stream_id) const;
  void ResumeIfDeferred(Stream* s);
  void CountSentReset();
  void Fail(uint32_t error_code, std::string_view why);
  void CheckQueueBound();
  absl::Status SubmitFinalHead(Stream* s, int status, std::vector<Header> fields, bool end_stream);
  absl::Status SubmitJsonErrorOn(Stream* s, int status, std::string_view message,
                                 int retry_after_seconds);
  void FinishRequestHead(Stream* s, bool end_stream);
  // Refuses a head that may not be relayed (431, 501, 400 or a reset);
  // true when it did.
  bool RejectHead(Stream* s);
  // Answers a request the sink never sees with a JSON error.
  void RejectWith(Stream* s, int status, std::string_view why);

  H2StreamSink* sink_;
  H2Options options_;
  nghttp2_session* session_ = nullptr;
  absl::flat_hash_map<int32_t, std::unique_ptr<Stream>> streams_;
  std::vector<Event> events_;
  size_t next_event_ = 0;

  // Output prepared but not taken: owned bytes go to writer_, then become
  // Slices in pending_ when a DATA payload (or the end of a pump) follows.
  core::SliceWriter writer_;
  size_t writer_uncommitted_ = 0;  // bytes in writer_ not yet in pending_
  std::vector<core::Slice> pending_;
  size_t pending_bytes_ = 0;
  size_t queued_total_ = 0;  // sum of Stream::queued
  size_t views_total_ = 0;   // sum of Stream::views
  size_t pump_limit_ = 0;    // the limit of the Pump in progress (0: none)

  const core::Slice* input_ = nullptr;  // during Dispatch
  bool in_nghttp2_ = false;             // inside an nghttp2 call
  bool in_sink_ = false;                // inside a sink event
  bool failed_ = false;                 // connection error: stop reading
  bool abandoned_ = false;              // nghttp2 failed fatally: no more calls to it
  size_t open_streams_ = 0;
  absl::Status status_;

  // Token bucket for codec-sent resets, in units of 1/window_ms of a token.
  int64_t reset_budget_ = 0;
  int64_t reset_budget_at_ms_ = 0;

  // --- Input checks that nghttp2 leaves out (h2_inbound_guard.h). Dispatch
  // hands input to nghttp2 through RecvChecked, which stops before each
  // frame the guard must judge until nghttp2 has read what precedes it.
  struct RecvCursor {
    const uint8_t* p = nullptr;
    size_t fed = 0;       // bytes of p given to nghttp2
    size_t upto = 0;      // bytes before the last byte of the judged frame
    bool synced = false;  // nghttp2's streams are as of the judged frame
  };
  void RecvChecked(const uint8_t* p, size_t n);
  // mem_recv of n bytes; false once the connection failed.
  bool Recv(const uint8_t* p, size_t n);
  // Gives nghttp2 the bytes before the judged frame; false once failed.
  bool Sync(RecvCursor* cur);
  void JudgeFrame(const H2InboundGuard::Frame& f, RecvCursor* cur);
  void DependsOnItself(int32_t stream_id, RecvCursor* cur);
  // Frames on `stream_id` are to be ignored: the server reset it lately, or
  // it lies above the last stream id of a GOAWAY the server sent.
  bool IgnoresFramesOn(int32_t stream_id) const;

  H2InboundGuard guard_;
  int32_t goaway_last_id_ = 0x7fffffff;  // lowest last-stream-id sent

  // --- Idle memory (h2_session_memory.h): nghttp2's frame buffer and
  // stream table, whose pages go back to the kernel while the connection
  // has no stream and nothing to send.
  void ReleaseIdlePages();
  std::vector<H2SessionMemory::Block> idle_blocks_;
  // Token bucket of releases, in milliseconds of budget (one release costs
  // kIdleReleaseIntervalMs).
  bool idle_release_started_ = false;
  int64_t idle_release_budget_ms_ = 0;
  int64_t idle_release_at_ms_ = 0;
};

}  // namespace sluice::http
