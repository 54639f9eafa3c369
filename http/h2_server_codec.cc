#include "http/h2_server_codec.h"

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "http/serialize.h"

namespace sluice::http {

namespace {

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
void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "h2_server_codec: check failed: %s\n", what);
    std::abort();
  }
}

std::string_view View(const uint8_t* p, size_t n) {
  return {reinterpret_cast<const char*>(p), n};
}

nghttp2_nv MakeNv(const std::string& name, const std::string& value) {
  nghttp2_nv nv;
  nv.name = reinterpret_cast<uint8_t*>(const_cast<char*>(name.data()));
  nv.namelen = name.size();
  nv.value = reinterpret_cast<uint8_t*>(const_cast<char*>(value.data()));
  nv.valuelen = value.size();
  nv.flags = NGHTTP2_NV_FLAG_NONE;
  return nv;
}

std::vector<nghttp2_nv> MakeNvs(const std::vector<Header>& fields) {
  std::vector<nghttp2_nv> nva;
  nva.reserve(fields.size());
  for (const Header& h : fields) nva.push_back(MakeNv(h.name, h.value));
  return nva;
}

// Response fields as HTTP/2 wants them: lowercase names, no
// connection-specific fields (RFC 9113 8.2.2), no pseudo-headers.
std::vector<Header> ResponseFields(const std::vector<Header>& in,
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

absl::Status ConnectionError(uint32_t code, std::string_view why) {
  std::string msg =
      absl::StrCat("HTTP/2 connection error ", nghttp2_http2_strerror(code),
                   ": ", absl::string_view(why.data(), why.size()));
  switch (code) {
    case NGHTTP2_ENHANCE_YOUR_CALM:
      return absl::ResourceExhaustedError(msg);
    case NGHTTP2_INTERNAL_ERROR:
      // nghttp2 ends the session with INTERNAL_ERROR when the client's
      // RST_STREAM rate limit (rapid reset) is exceeded.
      return absl::InternalError(
          why.empty() ? msg + "stream reset rate limit or internal failure"
                      : msg);
    default:
      return absl::InvalidArgumentError(msg);
  }
}

// The GOAWAY code for a fatal nghttp2_session_mem_recv result.
uint32_t CodeForLibError(ssize_t rv) {
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

}  // namespace

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
  size_t views = 0;  // entries of `queue` that are views
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

  bool terminal() const {
    return kind == Kind::kClosed || kind == Kind::kReset;
  }
};

// nghttp2 callbacks. They only record what happened (events, counters) and
// call nghttp2 functions that nghttp2 allows inside callbacks (submit,
// consume, resume); the sink runs after nghttp2 returned.
struct H2Callbacks {
  using Event = H2ServerCodec::Event;
  using Stream = H2ServerCodec::Stream;

  static H2ServerCodec* Self(void* user_data) {
    return static_cast<H2ServerCodec*>(user_data);
  }

  static Stream* Find(H2ServerCodec* c, int32_t id) {
    auto it = c->streams_.find(id);
    return it == c->streams_.end() ? nullptr : it->second.get();
  }

  static void Enqueue(H2ServerCodec* c, Stream* s, Event ev) {
    if (s->app_reset || s->terminal_queued) return;
    if (ev.terminal()) s->terminal_queued = true;
    ev.stream_id = s->id;
    c->events_.push_back(std::move(ev));
  }

  static int OnBeginHeaders(nghttp2_session*, const nghttp2_frame* frame,
                            void* user_data) {
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    H2ServerCodec* c = Self(user_data);
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
      // A trailer section has its own budget.
      if (Stream* s = Find(c, frame->hd.stream_id)) {
        s->header_bytes = 0;
        s->header_fields = 0;
      }
      return 0;
    }
    c->streams_[frame->hd.stream_id] =
        std::make_unique<Stream>(frame->hd.stream_id);
    ++c->open_streams_;
    return 0;
  }

  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame,
                      const uint8_t* name_p, size_t namelen,
                      const uint8_t* value_p, size_t valuelen, uint8_t,
                      void* user_data) {
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    H2ServerCodec* c = Self(user_data);
    Stream* s = Find(c, frame->hd.stream_id);
    if (s == nullptr) return 0;
    std::string_view name = View(name_p, namelen);
    std::string_view value = View(value_p, valuelen);

    // RFC 9113 6.5.2 counts 32 bytes of overhead per field.
    s->header_bytes += namelen + valuelen + 32;
    ++s->header_fields;
    bool over = s->header_bytes > c->options_.max_header_list_bytes ||
                s->header_fields > c->options_.max_header_fields;

    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
      // Trailers: no response can be chosen any more, so an oversize
      // section resets the stream (nghttp2 sends INTERNAL_ERROR).
      if (over) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
      s->trailers_in.push_back({std::string(name), std::string(value)});
      return 0;
    }
    if (s->header_bytes > 2 * c->options_.max_header_list_bytes ||
        s->header_fields > 4 * c->options_.max_header_fields) {
      // Far past the limit (an HPACK bomb: one large table entry indexed
      // thousands of times): stop looking at fields. nghttp2 resets the
      // stream and decodes the rest of the block without validating or
      // reporting each field, which keeps the HPACK state in step but costs
      // no more per decoded byte. Blocks just over the limit still get 431.
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (over && !s->oversize) {
      // Keep decoding (HPACK state must advance) but keep nothing: the
      // request gets a 431 once its block ends.
      s->oversize = true;
      s->head = RequestHead();
      s->cookies.clear();
    }
    if (s->oversize) return 0;

    if (name[0] == ':') {
      // nghttp2 has checked presence, uniqueness, order and syntax.
      if (name == ":method") {
        s->head.method = std::string(value);
      } else if (name == ":path") {
        s->head.target = std::string(value);
      } else if (name == ":authority") {
        s->authority = std::string(value);
        s->has_authority = true;
      }
      return 0;
    }
    if (name == "cookie") {
      s->cookies.emplace_back(value);
      return 0;
    }
    if (name == "host") {
      if (s->has_host) s->duplicate_host = true;
      s->has_host = true;
      s->host = std::string(value);
    } else if (name == "priority") {
      s->saw_priority = true;
    }
    s->head.headers.push_back({std::string(name), std::string(value)});
    return 0;
  }

  // An invalid regular field (RFC 9113 8.2.1: bad characters in the name or
  // value, surrounding whitespace) makes the request malformed: reset it
  // (PROTOCOL_ERROR) rather than dropping the field silently.
  static int OnInvalidHeader(nghttp2_session*, const nghttp2_frame*,
                             const uint8_t*, size_t, const uint8_t*, size_t,
                             uint8_t, void*) {
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }

  static int OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame,
                         void* user_data) {
    H2ServerCodec* c = Self(user_data);
    bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (frame->hd.type) {
      case NGHTTP2_HEADERS: {
        Stream* s = Find(c, frame->hd.stream_id);
        if (s == nullptr) return 0;
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
          c->FinishRequestHead(s, end_stream);
        } else if (s->announced) {
          Event ev(Event::Kind::kTrailers);
          ev.trailers = std::move(s->trailers_in);
          Enqueue(c, s, std::move(ev));
          if (end_stream) Enqueue(c, s, Event(Event::Kind::kEnd));
        }
        return 0;
      }
      case NGHTTP2_DATA: {
        if (!end_stream) return 0;
        Stream* s = Find(c, frame->hd.stream_id);
        if (s != nullptr && s->announced) {
          Enqueue(c, s, Event(Event::Kind::kEnd));
        }
        return 0;
      }
      default:
        return 0;
    }
  }

  static int OnDataChunk(nghttp2_session* session, uint8_t, int32_t stream_id,
                         const uint8_t* data, size_t len, void* user_data) {
    H2ServerCodec* c = Self(user_data);
    Stream* s = Find(c, stream_id);
    if (s != nullptr) s->request_received += len;
    if (s == nullptr || !s->announced || s->app_reset || s->closed) {
      // Nobody will relay these bytes: give their window back now.
      nghttp2_session_consume(session, stream_id, len);
      return 0;
    }
    const char* p = reinterpret_cast<const char*>(data);
    core::Slice piece;
    const core::Slice* in = c->input_;
    if (len >= c->options_.copy_data_below && in != nullptr &&
        p >= in->data() && p + len <= in->data() + in->size()) {
      piece = in->Sub(static_cast<size_t>(p - in->data()), len);
    } else {
      piece = core::Slice::Copy(std::string_view(p, len));
    }
    s->unconsumed += len;
    Event ev(Event::Kind::kData);
    ev.data = std::move(piece);
    Enqueue(c, s, std::move(ev));
    return 0;
  }

  static int OnStreamClose(nghttp2_session* session, int32_t stream_id,
                           uint32_t error_code, void* user_data) {
    H2ServerCodec* c = Self(user_data);
    auto it = c->streams_.find(stream_id);
    if (it == c->streams_.end()) return 0;
    Stream* s = it->second.get();
    if (s->closed) return 0;
    s->closed = true;
    --c->open_streams_;
    // With NO_AUTO_WINDOW_UPDATE the connection window is the codec's to
    // manage: bytes handed out and never consumed would shrink it for good.
    if (s->unconsumed > 0) {
      nghttp2_session_consume_connection(session, s->unconsumed);
      s->unconsumed = 0;
    }
    c->ClearQueue(s);
    if (!s->announced || s->app_reset || s->terminal_queued) {
      if (!s->terminal_queued || s->terminal_delivered) c->streams_.erase(it);
      return 0;
    }
    Event ev(s->response_complete ? Event::Kind::kClosed : Event::Kind::kReset);
    ev.error_code = error_code;
    Enqueue(c, s, std::move(ev));
    return 0;
  }

  // What the input checks need to know of the frames sent: the streams
  // reset (their late frames are ignored) and the GOAWAY's last stream id.
  static void NoteSentForGuard(H2ServerCodec* c, const nghttp2_frame* frame) {
    if (frame->hd.type == NGHTTP2_RST_STREAM) {
      c->guard_.NoteReset(frame->hd.stream_id);
    } else if (frame->hd.type == NGHTTP2_GOAWAY) {
      c->goaway_last_id_ =
          std::min(c->goaway_last_id_, frame->goaway.last_stream_id);
    }
  }

  // nghttp2 queued a RST_STREAM (or ends the connection) because of this
  // frame. The stream may never have been opened (refused), so the reset is
  // noted now rather than when it is sent: frames the client sends on it
  // meanwhile are ignored too.
  static int OnInvalidFrameRecv(nghttp2_session*, const nghttp2_frame* frame,
                                int, void* user_data) {
    if (frame->hd.stream_id != 0) {
      Self(user_data)->guard_.NoteReset(frame->hd.stream_id);
    }
    return 0;
  }

  // A HEADERS frame of `s` left the queue (sent, or dropped): a reset
  // waiting for it goes out now.
  static void HeadDone(nghttp2_session* session, Stream* s) {
    if (s == nullptr || s->heads_queued == 0) return;
    if (--s->heads_queued > 0 || !s->reset_after_head) return;
    const uint32_t code = *s->reset_after_head;
    s->reset_after_head.reset();
    if (!s->closed) nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, s->id, code);
  }

  static int OnFrameNotSend(nghttp2_session* session, const nghttp2_frame* frame,
                            int /*lib_error_code*/, void* user_data) {
    if (frame->hd.type == NGHTTP2_HEADERS) {
      HeadDone(session, Find(Self(user_data), frame->hd.stream_id));
    }
    return 0;
  }

  static int OnFrameSend(nghttp2_session* session, const nghttp2_frame* frame,
                         void* user_data) {
    H2ServerCodec* c = Self(user_data);
    NoteSentForGuard(c, frame);
    if (frame->hd.type == NGHTTP2_HEADERS) HeadDone(session, Find(c, frame->hd.stream_id));
    switch (frame->hd.type) {
      case NGHTTP2_HEADERS:
      case NGHTTP2_DATA: {
        if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) == 0) return 0;
        Stream* s = Find(c, frame->hd.stream_id);
        if (s == nullptr) return 0;
        s->response_complete = true;
        // RFC 9113 8.1: a complete response before the end of the request
        // may be followed by RST_STREAM(NO_ERROR), so the client stops
        // sending a body nobody will read.
        // A remainder that the client may send already (it fits the
        // window it was granted) is read and dropped instead: curl 7.88
        // reports a reset during its upload as an error even with
        // NO_ERROR, and would lose the response (a 401 or 429).
        // A body of unknown length gets what is left of its window the
        // same way; the reset follows if the client uses it up
        // (ConsumeRequestBody), so no client sends more than one window.
        const int32_t window = nghttp2_session_get_stream_local_window_size(session, s->id);
        const bool open = nghttp2_session_get_stream_remote_close(session, s->id) == 0;
        const bool fits = s->request_length.has_value() &&
                          *s->request_length >= s->request_received && window >= 0 &&
                          *s->request_length - s->request_received <=
                              static_cast<uint64_t>(window);
        if (open && !s->request_length.has_value() && window > 0) {
          s->drain_window = true;
        } else if (!fits && open) {
          s->no_error_reset = true;
          nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, s->id,
                                    NGHTTP2_NO_ERROR);
        }
        return 0;
      }
      case NGHTTP2_RST_STREAM: {
        Stream* s = Find(c, frame->hd.stream_id);
        bool ours = s != nullptr && (s->app_reset || s->no_error_reset);
        if (!ours) c->CountSentReset();
        return 0;
      }
      case NGHTTP2_GOAWAY:
        if (frame->goaway.error_code != NGHTTP2_NO_ERROR) {
          // nghttp2 found a connection error; the GOAWAY is its verdict.
          c->Fail(
              frame->goaway.error_code,
              View(frame->goaway.opaque_data, frame->goaway.opaque_data_len));
        }
        return 0;
      default:
        return 0;
    }
  }

  static ssize_t ReadData(nghttp2_session* session, int32_t stream_id, uint8_t*,
                          size_t length, uint32_t* data_flags,
                          nghttp2_data_source*, void* user_data) {
    H2ServerCodec* c = Self(user_data);
    Stream* s = Find(c, stream_id);
    if (s == nullptr || s->closed) return NGHTTP2_ERR_DEFERRED;
    if (s->queued == 0 && !s->eof) {
      s->deferred = true;
      return NGHTTP2_ERR_DEFERRED;
    }
    size_t n = std::min(length, s->queued);
    if (n > 0) *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (n == s->queued && s->eof) {
      *data_flags |= NGHTTP2_DATA_FLAG_EOF;
      if (!s->trailers_out.empty()) {
        *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        std::vector<nghttp2_nv> nva = MakeNvs(s->trailers_out);
        if (nghttp2_submit_trailer(session, stream_id, nva.data(),
                                   nva.size()) != 0) {
          return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
      }
    }
    return static_cast<ssize_t>(n);
  }

  static int SendData(nghttp2_session*, nghttp2_frame* frame,
                      const uint8_t* framehd, size_t length,
                      nghttp2_data_source*, void* user_data) {
    H2ServerCodec* c = Self(user_data);
    Stream* s = Find(c, frame->hd.stream_id);
    // No select_padding callback is set, so there is no padding.
    if (s == nullptr || frame->data.padlen != 0 || length > s->queued) {
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    c->AppendBytes(framehd, kFrameHeaderLen);
    c->FlushBytes();
    size_t left = length;
    while (left > 0) {
      Stream::Piece& front = s->queue.front();
      if (front.bytes.size() <= left) {
        left -= front.bytes.size();
        c->pending_.push_back(std::move(front.bytes));
        if (front.view) {
          --s->views;
          --c->views_total_;
        }
        s->queue.pop_front();
      } else {
        c->pending_.push_back(front.bytes.Sub(0, left));
        front.bytes.RemovePrefix(left);
        left = 0;
      }
    }
    c->SetQueued(s, s->queued - length);
    s->sent += length;
    if (s->queue.empty()) s->copies.Trim();
    c->pending_bytes_ += length;
    if (s->blocked && s->queued <= c->options_.stream_low_watermark &&
        s->queue.size() <= c->options_.stream_max_pieces / 4) {
      s->blocked = false;
      Enqueue(c, s, Event(Event::Kind::kWritable));
    }
    // nghttp2_session_mem_send keeps packing DATA frames within one call
    // while windows allow; PAUSE makes it return so the byte limit holds.
    bool pause_after =
        c->pump_limit_ > 0 &&
        c->pending_bytes_ + c->writer_uncommitted_ >= c->pump_limit_;
    return pause_after ? NGHTTP2_ERR_PAUSE : 0;
  }
};

H2ServerCodec::H2ServerCodec(H2StreamSink* sink, const H2Options& options)
    : sink_(sink), options_(options) {
  nghttp2_session_callbacks* cbs;
  Check(nghttp2_session_callbacks_new(&cbs) == 0, "callbacks_new");
  nghttp2_session_callbacks_set_on_begin_headers_callback(
      cbs, &H2Callbacks::OnBeginHeaders);
  nghttp2_session_callbacks_set_on_header_callback(cbs, &H2Callbacks::OnHeader);
  nghttp2_session_callbacks_set_on_invalid_header_callback(
      cbs, &H2Callbacks::OnInvalidHeader);
  nghttp2_session_callbacks_set_on_frame_recv_callback(
      cbs, &H2Callbacks::OnFrameRecv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
      cbs, &H2Callbacks::OnDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(
      cbs, &H2Callbacks::OnStreamClose);
  nghttp2_session_callbacks_set_on_frame_send_callback(
      cbs, &H2Callbacks::OnFrameSend);
  nghttp2_session_callbacks_set_on_frame_not_send_callback(
      cbs, &H2Callbacks::OnFrameNotSend);
  nghttp2_session_callbacks_set_send_data_callback(cbs, &H2Callbacks::SendData);
  nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(
      cbs, &H2Callbacks::OnInvalidFrameRecv);

  nghttp2_option* opt;
  Check(nghttp2_option_new(&opt) == 0, "option_new");
  // Request bodies are flow-controlled by upstream progress
  // (ConsumeRequestBody), not by arrival.
  nghttp2_option_set_no_auto_window_update(opt, 1);
  // 4 KiB encoder table whatever the client's SETTINGS_HEADER_TABLE_SIZE.
  nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096);
  // No RFC 7540 priority tree, so closed streams need not be kept.
  nghttp2_option_set_no_closed_streams(opt, 1);
  nghttp2_option_set_max_outbound_ack(opt, options_.max_outbound_ack);
  nghttp2_option_set_max_settings(opt, options_.max_settings_entries);
  nghttp2_option_set_stream_reset_rate_limit(opt, options_.received_reset_burst,
                                             options_.received_reset_rate);
  nghttp2_option_set_max_continuations(opt, options_.max_continuations);
  int rv;
  {
    H2SessionMemory::CreationScope scope(&idle_blocks_);
    rv = nghttp2_session_server_new3(&session_, cbs, this, opt,
                                     H2SessionMemory::ForThisThread());
  }
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cbs);
  Check(rv == 0, "nghttp2_session_server_new3");

  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
       options_.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, options_.stream_window_bytes},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
       static_cast<uint32_t>(options_.max_header_list_bytes)},
      {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
  };
  Check(nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, iv,
                                sizeof(iv) / sizeof(iv[0])) == 0,
        "submit_settings");
  if (options_.connection_window_bytes >
      NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE) {
    Check(nghttp2_session_set_local_window_size(
              session_, NGHTTP2_FLAG_NONE, 0,
              static_cast<int32_t>(options_.connection_window_bytes)) == 0,
          "set_local_window_size");
  }
  reset_budget_at_ms_ = Now();
  reset_budget_ = static_cast<int64_t>(options_.max_sent_resets_per_window) *
                  options_.sent_reset_window_ms;
}

H2ServerCodec::~H2ServerCodec() { nghttp2_session_del(session_); }

int64_t H2ServerCodec::Now() const {
  if (options_.now_ms) return options_.now_ms();
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

H2ServerCodec::Stream* H2ServerCodec::FindLive(int32_t stream_id) {
  auto it = streams_.find(stream_id);
  if (it == streams_.end()) return nullptr;
  Stream* s = it->second.get();
  if (s->closed || s->app_reset || s->terminal_queued) return nullptr;
  return s;
}

const H2ServerCodec::Stream* H2ServerCodec::FindLive(int32_t stream_id) const {
  return const_cast<H2ServerCodec*>(this)->FindLive(stream_id);
}

absl::Status H2ServerCodec::Dispatch(const core::Slice& in) {
  Check(!in_sink_ && !in_nghttp2_, "Dispatch called from a sink event");
  if (failed_) return status_;
  input_ = &in;
  const uint8_t* p = reinterpret_cast<const uint8_t*>(in.data());
  size_t left = in.size();
  while (left > 0 && !failed_) {
    size_t n = std::min(left, kRecvChunk);
    RecvChecked(p, n);
    if (failed_) break;
    p += n;
    left -= n;
    DeliverEvents();
    CheckQueueBound();
    Pump(kDispatchPumpCap);
  }
  input_ = nullptr;
  DeliverEvents();
  Pump(kDispatchPumpCap);
  return status_;
}

void H2ServerCodec::RecvChecked(const uint8_t* p, size_t n) {
  RecvCursor cur;
  cur.p = p;
  size_t scanned = 0;
  while (scanned < n && !failed_) {
    H2InboundGuard::Frame f;
    bool ready = false;
    scanned += guard_.Scan(p + scanned, n - scanned, &f, &ready);
    if (!ready) break;
    // nghttp2 acts on a frame only once its header (and the dependency
    // after it) is complete, so with every byte before the last one scanned
    // its streams are as they were when the frame began. Feeding it that
    // far is needed only when the frame is judged by nghttp2's streams and
    // a frame since the last such feed may have opened or closed one.
    cur.upto = scanned - 1;
    JudgeFrame(f, &cur);
    const bool keeps_streams =
        (f.type == NGHTTP2_DATA && (f.flags & NGHTTP2_FLAG_END_STREAM) == 0) ||
        f.type == NGHTTP2_PRIORITY || f.type == NGHTTP2_SETTINGS ||
        f.type == NGHTTP2_PING || f.type == NGHTTP2_WINDOW_UPDATE;
    if (!keeps_streams) cur.synced = false;
  }
  if (!failed_ && cur.fed < n) Recv(p + cur.fed, n - cur.fed);
}

bool H2ServerCodec::Recv(const uint8_t* p, size_t n) {
  if (n == 0) return !failed_;
  in_nghttp2_ = true;
  ssize_t rv = nghttp2_session_mem_recv(session_, p, n);
  in_nghttp2_ = false;
  if (rv < 0) {
    Fail(CodeForLibError(rv), nghttp2_strerror(static_cast<int>(rv)));
  }
  return !failed_;
}

bool H2ServerCodec::Sync(RecvCursor* cur) {
  if (!cur->synced) {
    if (cur->upto > cur->fed &&
        !Recv(cur->p + cur->fed, cur->upto - cur->fed)) {
      return false;
    }
    cur->fed = std::max(cur->fed, cur->upto);
    cur->synced = true;
  }
  return !failed_;
}

bool H2ServerCodec::IgnoresFramesOn(int32_t stream_id) const {
  // RFC 9113 5.1: frames the client had in flight when the server reset a
  // stream are ignored; 6.8: so are streams above the GOAWAY's last id.
  return stream_id > goaway_last_id_ || guard_.RecentlyReset(stream_id);
}

void H2ServerCodec::JudgeFrame(const H2InboundGuard::Frame& f,
                               RecvCursor* cur) {
  // Inside a header block only CONTINUATION is valid: nghttp2 ends the
  // connection for anything else.
  if (f.in_header_block) return;
  const int32_t id = f.stream_id;
  switch (f.type) {
    case NGHTTP2_PRIORITY:
      // A length other than 5 is nghttp2's FRAME_SIZE_ERROR.
      if (!f.has_dependency) return;
      if (id == 0) {
        Fail(NGHTTP2_PROTOCOL_ERROR, "PRIORITY on stream 0");  // 6.3
        return;
      }
      if (f.dependency == id) DependsOnItself(id, cur);
      return;
    case NGHTTP2_HEADERS: {
      // Stream 0 and the server's (even) ids are nghttp2's PROTOCOL_ERROR.
      if (id == 0 || id % 2 == 0) return;
      if (id > guard_.highest_stream_id()) {
        // A new stream: nghttp2 opens or refuses it, and ends the
        // connection with PROTOCOL_ERROR when it depends on itself.
        guard_.NoteNewStream(id);
        return;
      }
      if (!Sync(cur)) return;
      if (nghttp2_session_find_stream(session_, id) != nullptr) {
        // Trailers (or, on a half-closed stream, nghttp2's connection error
        // STREAM_CLOSED).
        if (f.has_dependency && f.dependency == id) DependsOnItself(id, cur);
        return;
      }
      if (IgnoresFramesOn(id)) return;
      // 5.1.1: a stream id below one already used that was never opened;
      // 5.1: HEADERS on a closed stream. A header block cannot be skipped
      // without decoding it, so both are connection errors.
      if (guard_.WasSkipped(id)) {
        Fail(NGHTTP2_PROTOCOL_ERROR, "HEADERS on a stream id below one used");
      } else {
        Fail(NGHTTP2_STREAM_CLOSED, "HEADERS on a closed stream");
      }
      return;
    }
    case NGHTTP2_DATA: {
      // Stream 0, the server's ids and idle streams are nghttp2's
      // PROTOCOL_ERROR; open and half-closed streams are nghttp2's too.
      if (id == 0 || id % 2 == 0 || id > guard_.highest_stream_id()) return;
      if (!Sync(cur)) return;
      if (nghttp2_session_find_stream(session_, id) != nullptr) return;
      if (IgnoresFramesOn(id)) return;
      // 6.1: DATA on a closed stream (one the client reset, or finished
      // both ways) is a stream error STREAM_CLOSED. nghttp2 still reads the
      // frame, counting it against the connection window. The reset counts
      // in the sent-reset bucket (OnFrameSend) like any the codec provokes,
      // and once noted, more DATA on the stream is ignored rather than
      // answered again.
      guard_.NoteReset(id);
      nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, id,
                                NGHTTP2_STREAM_CLOSED);
      return;
    }
    default:
      return;
  }
}

void H2ServerCodec::DependsOnItself(int32_t stream_id, RecvCursor* cur) {
  // 5.3.1: a stream error PROTOCOL_ERROR. On an idle stream (or one of the
  // server's ids) no RST_STREAM may be sent (6.4), so the connection ends
  // instead (5.4.1 allows it for any stream error).
  if (stream_id % 2 == 0 || stream_id > guard_.highest_stream_id()) {
    Fail(NGHTTP2_PROTOCOL_ERROR, "stream depends on itself");
    return;
  }
  if (!Sync(cur)) return;
  const bool known =
      nghttp2_session_find_stream(session_, stream_id) != nullptr;
  if (!known && IgnoresFramesOn(stream_id)) return;
  if (!known) guard_.NoteReset(stream_id);
  // On an open stream nghttp2 then ignores the frame's header block (the
  // stream is closing) and the sink hears OnStreamReset(PROTOCOL_ERROR).
  nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream_id,
                            NGHTTP2_PROTOCOL_ERROR);
}

void H2ServerCodec::TakeOutput(std::vector<core::Slice>* out,
                               size_t max_bytes) {
  Check(!in_sink_ && !in_nghttp2_, "TakeOutput called from a sink event");
  Pump(max_bytes);
  for (core::Slice& s : pending_) out->push_back(std::move(s));
  pending_.clear();
  pending_bytes_ = 0;
  // An idle connection keeps no output block.
  if (open_streams_ == 0) {
    writer_.Trim();
    ReleaseIdlePages();
  }
}

void H2ServerCodec::ReleaseIdlePages() {
  // nghttp2 has no frame in progress and no stream (open_streams_ counts
  // every stream it opened until it closed it).
  if (abandoned_ || open_streams_ != 0 || writer_uncommitted_ != 0 ||
      nghttp2_session_want_write(session_) != 0) {
    return;
  }
  // Giving the pages back and faulting them in again on the next request
  // costs about 20 us on a VM (2 madvise calls, 2 page faults): fine for a
  // connection that turns idle for a while, too much for one that turns
  // idle between every few requests (h2load -m10 does, hundreds of times
  // a second) or for a client that sends a PING per packet. So a token
  // bucket: a burst of kIdleReleaseBurst (the preface exchange turns the
  // connection idle twice: after the server's SETTINGS, after its ACK of
  // the client's), then one release a second.
  constexpr int64_t kCap = kIdleReleaseBurst * kIdleReleaseIntervalMs;
  const int64_t now = Now();
  if (!idle_release_started_) {
    idle_release_started_ = true;
    idle_release_budget_ms_ = kCap;
    idle_release_at_ms_ = now;
  }
  idle_release_budget_ms_ =
      std::min(kCap, idle_release_budget_ms_ +
                         std::max<int64_t>(now - idle_release_at_ms_, 0));
  idle_release_at_ms_ = now;
  if (idle_release_budget_ms_ < kIdleReleaseIntervalMs) return;
  idle_release_budget_ms_ -= kIdleReleaseIntervalMs;
  H2SessionMemory::ReleaseIdle(idle_blocks_);
}

void H2ServerCodec::Pump(size_t limit) {
  pump_limit_ = limit;
  while (!abandoned_ &&
         (limit == 0 || pending_bytes_ + writer_uncommitted_ < limit)) {
    const uint8_t* data = nullptr;
    in_nghttp2_ = true;
    ssize_t n = nghttp2_session_mem_send(session_, &data);
    in_nghttp2_ = false;
    if (n < 0) {
      // Fatal for the session (out of memory, callback failure): nothing
      // more can be sent on it.
      abandoned_ = true;
      Fail(NGHTTP2_INTERNAL_ERROR, nghttp2_strerror(static_cast<int>(n)));
      break;
    }
    if (n == 0) break;
    AppendBytes(data, static_cast<size_t>(n));
    DeliverEvents();
  }
  FlushBytes();
  DeliverEvents();
}

void H2ServerCodec::AppendBytes(const uint8_t* data, size_t len) {
  while (len > 0) {
    size_t avail = 0;
    char* dst = writer_.Reserve(&avail);
    size_t n = std::min(avail, len);
    std::memcpy(dst, data, n);
    writer_.Commit(n);
    writer_uncommitted_ += n;
    data += n;
    len -= n;
    // The block is full: hand out what it holds so that the next Reserve
    // starts a fresh block instead of moving bytes.
    if (len > 0) FlushBytes();
  }
}

void H2ServerCodec::FlushBytes() {
  if (writer_uncommitted_ == 0) return;
  pending_.push_back(writer_.Take());
  pending_bytes_ += writer_uncommitted_;
  writer_uncommitted_ = 0;
}

void H2ServerCodec::SetQueued(Stream* s, size_t n) {
  queued_total_ = queued_total_ - s->queued + n;
  s->queued = n;
}

void H2ServerCodec::DeliverEvents() {
  if (in_sink_ || in_nghttp2_) return;
  while (next_event_ < events_.size()) {
    Event ev = std::move(events_[next_event_++]);
    auto it = streams_.find(ev.stream_id);
    if (it == streams_.end()) continue;
    Stream* s = it->second.get();
    if (s->app_reset) {
      if (ev.terminal()) streams_.erase(it);
      continue;
    }
    if (ev.kind == Event::Kind::kHeaders && s->closed) {
      // Reset before the sink could act on it (HEADERS and RST_STREAM in one
      // read, the rapid-reset pattern): the sink never hears of it, so no
      // upstream request is started for nothing.
      s->app_reset = true;
      continue;
    }
    in_sink_ = true;
    switch (ev.kind) {
      case Event::Kind::kHeaders:
        sink_->OnRequestHeaders(ev.stream_id, std::move(ev.head),
                                ev.end_stream);
        break;
      case Event::Kind::kData:
        sink_->OnRequestData(ev.stream_id, std::move(ev.data));
        break;
      case Event::Kind::kTrailers:
        sink_->OnRequestTrailers(ev.stream_id, std::move(ev.trailers));
        break;
      case Event::Kind::kEnd:
        sink_->OnRequestEnd(ev.stream_id);
        break;
      case Event::Kind::kWritable:
        if (!s->closed && !s->terminal_queued) {
          sink_->OnStreamWritable(ev.stream_id);
        }
        break;
      case Event::Kind::kClosed:
        sink_->OnStreamClosed(ev.stream_id);
        break;
      case Event::Kind::kReset:
        sink_->OnStreamReset(ev.stream_id, ev.error_code);
        break;
    }
    in_sink_ = false;
    if (ev.terminal()) {
      // Keep the entry while nghttp2 still knows the stream (a connection
      // error resets streams nghttp2 has not closed); OnStreamClose drops
      // it then.
      auto again = streams_.find(ev.stream_id);
      if (again != streams_.end()) {
        if (again->second->closed) {
          streams_.erase(again);
        } else {
          again->second->terminal_delivered = true;
        }
      }
    }
  }
  events_.clear();
  next_event_ = 0;
}

void H2ServerCodec::RejectWith(Stream* s, int status, std::string_view why) {
  if (!SubmitJsonErrorOn(s, status, why, 0).ok()) {
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, s->id,
                              NGHTTP2_INTERNAL_ERROR);
  }
}

void H2ServerCodec::FinishRequestHead(Stream* s, bool end_stream) {
  RequestHead& head = s->head;
  if (s->oversize) {
    // RFC 9113 10.5.1: a server may answer a header section it will not
    // process with 431.
    s->internal = true;
    RejectWith(s, 431, "request header fields too large");
    return;
  }
  if (head.method == "CONNECT") {
    s->internal = true;
    RejectWith(s, 501, "CONNECT is not supported");
    return;
  }
  // RFC 9110 7.2 needs the authority in :authority or Host; RFC 9113 8.3.1:
  // a Host that differs from :authority makes the request malformed.
  bool bad_host = s->duplicate_host || (!s->has_authority && !s->has_host) ||
                  (s->has_authority && s->has_host &&
                   !EqualsIgnoreCase(s->authority, s->host));
  if (bad_host) {
    s->rejected = true;
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, s->id,
                              NGHTTP2_PROTOCOL_ERROR);
    return;
  }
  // RFC 9113 8.3.1: :authority must not include userinfo; nor may it (or
  // Host) carry a path or other bytes an authority has not.
  if (!ValidAuthority(s->has_authority ? s->authority : s->host)) {
    s->internal = true;
    RejectWith(s, 400, "malformed request: invalid :authority or Host");
    return;
  }
  head.version_major = 2;
  head.version_minor = 0;
  if (s->has_authority) {
    head.host = s->authority;
    if (!s->has_host) {
      head.headers.insert(head.headers.begin(), Header{"host", s->authority});
    }
  } else {
    head.host = s->host;
  }
  if (!s->cookies.empty()) {
    // RFC 9113 8.2.3: crumbs are joined with "; " before going to HTTP/1.1.
    std::string cookie;
    for (const std::string& c : s->cookies) {
      if (!cookie.empty()) cookie += "; ";
      cookie += c;
    }
    head.headers.push_back({"cookie", std::move(cookie)});
    s->cookies.clear();
  }
  if (const Header* cl = head.Find("content-length")) {
    uint64_t n = 0;
    // nghttp2 has validated the syntax and that there is only one.
    if (absl::SimpleAtoi(absl::string_view(cl->value.data(), cl->value.size()),
                         &n)) {
      head.content_length = n;
      s->request_length = n;
    }
  }
  head.chunked = !end_stream && !head.content_length.has_value();
  head.keep_alive = true;
  if (const Header* e = head.Find("expect")) {
    head.expect_continue = EqualsIgnoreCase(TrimOws(e->value), "100-continue");
  }
  if (!s->saw_priority) {
    // Without a priority signal (RFC 9218), responses of equal urgency
    // share the connection round-robin instead of one after the other.
    nghttp2_extpri pri{NGHTTP2_EXTPRI_DEFAULT_URGENCY, 1};
    nghttp2_session_change_extpri_stream_priority(session_, s->id, &pri, 0);
  }
  s->announced = true;
  H2Callbacks::Event ev(H2Callbacks::Event::Kind::kHeaders);
  ev.head = std::move(head);
  ev.end_stream = end_stream;
  H2Callbacks::Enqueue(this, s, std::move(ev));
  if (end_stream) {
    H2Callbacks::Enqueue(this, s,
                         H2Callbacks::Event(H2Callbacks::Event::Kind::kEnd));
  }
  s->head = RequestHead();
}

void H2ServerCodec::CountSentReset() {
  if (options_.max_sent_resets_per_window == 0) return;
  const int64_t window = std::max<int64_t>(options_.sent_reset_window_ms, 1);
  const int64_t cap =
      static_cast<int64_t>(options_.max_sent_resets_per_window) * window;
  int64_t now = Now();
  int64_t elapsed = std::max<int64_t>(now - reset_budget_at_ms_, 0);
  reset_budget_at_ms_ = now;
  // Refill max_sent_resets_per_window tokens per window; one token costs
  // `window` units, so the arithmetic stays in integers.
  reset_budget_ = std::min(
      cap, reset_budget_ + elapsed * static_cast<int64_t>(
                                         options_.max_sent_resets_per_window));
  reset_budget_ -= window;
  if (reset_budget_ < 0) {
    Fail(NGHTTP2_ENHANCE_YOUR_CALM, "too many streams reset");
  }
}

void H2ServerCodec::CheckQueueBound() {
  if (failed_) return;
  if (nghttp2_session_get_outbound_queue_size(session_) >
      options_.max_queued_frames) {
    Fail(NGHTTP2_ENHANCE_YOUR_CALM,
         "client does not read the frames it provokes");
  }
}

void H2ServerCodec::Fail(uint32_t error_code, std::string_view why) {
  if (failed_) return;
  failed_ = true;
  status_ = ConnectionError(error_code, why);
  if (!abandoned_) {
    // First verdict wins: when nghttp2 already queued its GOAWAY this is a
    // no-op. Otherwise the GOAWAY goes out after the control frames already
    // queued (HEADERS and DATA are dropped from now on).
    int rv = nghttp2_session_terminate_session2(
        session_, nghttp2_session_get_last_proc_stream_id(session_),
        error_code);
    if (rv != 0) abandoned_ = true;
  }
  for (auto& [id, s] : streams_) {
    if (s->announced) {
      H2Callbacks::Event ev(H2Callbacks::Event::Kind::kReset);
      ev.error_code = error_code;
      H2Callbacks::Enqueue(this, s.get(), std::move(ev));
    }
    ClearQueue(s.get());
  }
}

bool H2ServerCodec::WantsWrite() const {
  if (!pending_.empty() || writer_uncommitted_ > 0) return true;
  return !abandoned_ && nghttp2_session_want_write(session_) != 0;
}

bool H2ServerCodec::WantsRead() const {
  return !failed_ && nghttp2_session_want_read(session_) != 0;
}

void H2ServerCodec::ResumeIfDeferred(Stream* s) {
  if (s->deferred && s->response_submitted) {
    s->deferred = false;
    nghttp2_session_resume_data(session_, s->id);
  }
}

absl::Status H2ServerCodec::SubmitFinalHead(Stream* s, int status,
                                            std::vector<Header> fields,
                                            bool end_stream) {
  std::string status_text = std::to_string(status);
  std::vector<nghttp2_nv> nva;
  nva.reserve(fields.size() + 1);
  static const std::string kStatus = ":status";
  nva.push_back(MakeNv(kStatus, status_text));
  for (const Header& h : fields) nva.push_back(MakeNv(h.name, h.value));
  int rv;
  if (end_stream) {
    rv = nghttp2_submit_response(session_, s->id, nva.data(), nva.size(),
                                 nullptr);
  } else {
    nghttp2_data_provider prd;
    prd.source.ptr = nullptr;
    prd.read_callback = &H2Callbacks::ReadData;
    rv = nghttp2_submit_response(session_, s->id, nva.data(), nva.size(), &prd);
  }
  if (rv != 0) {
    return absl::InternalError(
        absl::StrCat("nghttp2_submit_response: ", nghttp2_strerror(rv)));
  }
  s->response_submitted = true;
  ++s->heads_queued;
  if (end_stream) s->eof = true;
  return absl::OkStatus();
}

absl::Status H2ServerCodec::SubmitResponse(int32_t stream_id,
                                           const ResponseHead& head,
                                           bool end_stream) {
  Stream* s = FindLive(stream_id);
  if (s == nullptr) return absl::NotFoundError("no such stream");
  if (s->response_submitted) {
    return absl::FailedPreconditionError("response already submitted");
  }
  if (head.status < 100 || head.status > 999) {
    return absl::InvalidArgumentError("bad status code");
  }
  const Header* conn = head.Find("connection");
  std::string_view tokens = conn ? std::string_view(conn->value) : "";
  std::vector<Header> fields = ResponseFields(head.headers, tokens);
  if (head.status < 200) {
    if (end_stream) {
      return absl::InvalidArgumentError(
          "an interim response cannot end the stream");
    }
    std::string status_text = std::to_string(head.status);
    static const std::string kStatus = ":status";
    std::vector<nghttp2_nv> nva;
    nva.push_back(MakeNv(kStatus, status_text));
    for (const Header& h : fields) nva.push_back(MakeNv(h.name, h.value));
    int rv = nghttp2_submit_headers(session_, NGHTTP2_FLAG_NONE, stream_id,
                                    nullptr, nva.data(), nva.size(), nullptr);
    if (rv != 0) {
      return absl::InternalError(
          absl::StrCat("nghttp2_submit_headers: ", nghttp2_strerror(rv)));
    }
    ++s->heads_queued;
    return absl::OkStatus();
  }
  if (end_stream && s->queued > 0) {
    return absl::FailedPreconditionError("data queued for a bodiless response");
  }
  // RFC 9110 8.6: no Content-Length in a 204 (nghttp2 clients reject it).
  if (head.content_length.has_value() && head.status != 204) {
    fields.push_back({"content-length", std::to_string(*head.content_length)});
  }
  absl::Status st =
      SubmitFinalHead(s, head.status, std::move(fields), end_stream);
  if (st.ok() && !end_stream) {
    // The provider was never deferred; nghttp2 asks for data when it can.
    s->deferred = false;
  }
  return st;
}

absl::Status H2ServerCodec::SendData(int32_t stream_id, core::Slice data) {
  Stream* s = FindLive(stream_id);
  if (s == nullptr) return absl::NotFoundError("no such stream");
  if (s->eof) return absl::FailedPreconditionError("stream already ended");
  if (data.empty()) return absl::OkStatus();
  SetQueued(s, s->queued + data.size());
  // A piece that cannot leave in this turn's output (bytes wait before it,
  // the head is not out, or the window is too small) would pin the sink's
  // memory, a whole receive buffer for a chunk of a hundred bytes, for as
  // long as the client keeps its window shut. Small ones are copied into
  // the stream's block, and so is every waiting piece once the connection
  // holds options_.connection_max_views views.
  const size_t n = data.size();
  const bool waits = s->queue.size() > 0 || !s->response_submitted ||
                     SendWindow(s->id) < static_cast<int64_t>(n);
  if (waits && (n < options_.copy_data_below || views_total_ >= options_.connection_max_views)) {
    core::Slice copy = n <= kCopyBlockBytes ? s->copies.Append(data.view())
                                            : core::Slice::Copy(data.view());
    if (s->queue.empty() || s->queue.back().view || !s->queue.back().bytes.Extend(copy)) {
      s->queue.push_back(Stream::Piece{std::move(copy), false});
    }
  } else {
    s->queue.push_back(Stream::Piece{std::move(data), true});
    ++s->views;
    ++views_total_;
  }
  if (s->queued >= options_.stream_high_watermark ||
      s->queue.size() >= options_.stream_max_pieces) {
    s->blocked = true;
  }
  ResumeIfDeferred(s);
  return absl::OkStatus();
}

int64_t H2ServerCodec::SendWindow(int32_t stream_id) const {
  const int32_t stream = nghttp2_session_get_stream_remote_window_size(session_, stream_id);
  const int32_t conn = nghttp2_session_get_remote_window_size(session_);
  return std::min(stream, conn);
}

void H2ServerCodec::ClearQueue(Stream* s) {
  views_total_ -= s->views;
  s->views = 0;
  s->queue.clear();
  s->copies.Trim();
  SetQueued(s, 0);
}

absl::Status H2ServerCodec::EndStream(int32_t stream_id,
                                      std::vector<Header> trailers) {
  Stream* s = FindLive(stream_id);
  if (s == nullptr) return absl::NotFoundError("no such stream");
  if (!s->response_submitted) {
    return absl::FailedPreconditionError("no response head submitted");
  }
  if (s->eof) return absl::FailedPreconditionError("stream already ended");
  s->eof = true;
  s->trailers_out = ResponseFields(trailers, "");
  ResumeIfDeferred(s);
  return absl::OkStatus();
}

absl::Status H2ServerCodec::SubmitJsonErrorOn(Stream* s, int status,
                                              std::string_view message,
                                              int retry_after_seconds) {
  std::string body = "{\"error\":\"";
  AppendJsonEscaped(message, &body);
  body += "\"}";
  std::vector<Header> fields;
  fields.push_back({"content-type", "application/json"});
  fields.push_back({"content-length", std::to_string(body.size())});
  if (retry_after_seconds > 0) {
    fields.push_back({"retry-after", std::to_string(retry_after_seconds)});
  }
  ClearQueue(s);
  absl::Status st = SubmitFinalHead(s, status, std::move(fields), false);
  if (!st.ok()) return st;
  SetQueued(s, body.size());
  s->queue.push_back(Stream::Piece{core::Slice::Copy(body), false});
  s->eof = true;
  return absl::OkStatus();
}

absl::Status H2ServerCodec::SubmitJsonError(int32_t stream_id, int status,
                                            std::string_view message,
                                            int retry_after_seconds) {
  Stream* s = FindLive(stream_id);
  if (s == nullptr) return absl::NotFoundError("no such stream");
  if (s->response_submitted) {
    return absl::FailedPreconditionError("response already submitted");
  }
  return SubmitJsonErrorOn(s, status, message, retry_after_seconds);
}

absl::Status H2ServerCodec::ResetStream(int32_t stream_id,
                                        uint32_t error_code) {
  auto it = streams_.find(stream_id);
  if (it == streams_.end()) return absl::OkStatus();
  Stream* s = it->second.get();
  if (s->app_reset) return absl::OkStatus();
  s->app_reset = true;
  ClearQueue(s);
  if (!s->closed && !failed_) {
    if (s->heads_queued > 0) {
      // The response head goes first, so the client learns the status of
      // the response that broke (see Stream::heads_queued).
      s->reset_after_head = error_code;
    } else {
      nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream_id,
                                error_code);
    }
  }
  return absl::OkStatus();
}

size_t H2ServerCodec::QueuedBytes(int32_t stream_id) const {
  auto it = streams_.find(stream_id);
  return it == streams_.end() ? 0 : it->second->queued;
}

bool H2ServerCodec::Congested(int32_t stream_id) const {
  auto it = streams_.find(stream_id);
  return it != streams_.end() && it->second->blocked;
}

uint64_t H2ServerCodec::SentBytes(int32_t stream_id) const {
  auto it = streams_.find(stream_id);
  return it == streams_.end() ? 0 : it->second->sent;
}

absl::Status H2ServerCodec::ConsumeRequestBody(int32_t stream_id, size_t n) {
  auto it = streams_.find(stream_id);
  if (it == streams_.end() || it->second->closed) return absl::OkStatus();
  Stream* s = it->second.get();
  size_t m = std::min(n, s->unconsumed);
  if (m > 0 && s->drain_window) {
    // Dropped after the response: the connection window reopens, the
    // stream's does not; once it is used up, the reset (see OnFrameSend).
    nghttp2_session_consume_connection(session_, m);
    s->unconsumed -= m;
    if (nghttp2_session_get_stream_local_window_size(session_, stream_id) <= 0 &&
        nghttp2_session_get_stream_remote_close(session_, stream_id) == 0) {
      s->drain_window = false;
      s->no_error_reset = true;
      nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_NO_ERROR);
    }
  } else if (m > 0) {
    nghttp2_session_consume(session_, stream_id, m);
    s->unconsumed -= m;
  }
  if (m < n) {
    return absl::InvalidArgumentError("consumed more than was delivered");
  }
  return absl::OkStatus();
}

void H2ServerCodec::SubmitShutdownNotice() {
  if (failed_) return;
  nghttp2_submit_shutdown_notice(session_);
}

void H2ServerCodec::GracefulGoaway() {
  if (failed_) return;
  nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE,
                        nghttp2_session_get_last_proc_stream_id(session_),
                        NGHTTP2_NO_ERROR, nullptr, 0);
}

size_t H2ServerCodec::active_streams() const { return open_streams_; }

}  // namespace sluice::http
