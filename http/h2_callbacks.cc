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
#include "http/h2_server_codec.h"
#include "http/h2_server_codec_internal.h"
#include "http/serialize.h"
namespace sluice::http {

using h2_internal::Check;
using h2_internal::kFrameHeaderLen;
using h2_internal::MakeNvs;
using h2_internal::View;

// nghttp2 callbacks. They only record what happened (events, counters) and
// call nghttp2 functions that nghttp2 allows inside callbacks (submit,
// consume, resume); the sink runs after nghttp2 returned.
struct H2Callbacks {
  using Event = H2ServerCodec::Event;
  using Stream = H2ServerCodec::Stream;

  static H2ServerCodec* Self(void* user_data) { return static_cast<H2ServerCodec*>(user_data); }

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

  static int OnBeginHeaders(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
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
    c->streams_[frame->hd.stream_id] = std::make_unique<Stream>(frame->hd.stream_id);
    ++c->open_streams_;
    return 0;
  }

  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name_p,
                      size_t namelen, const uint8_t* value_p, size_t valuelen, uint8_t,
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
  static int OnInvalidHeader(nghttp2_session*, const nghttp2_frame*, const uint8_t*, size_t,
                             const uint8_t*, size_t, uint8_t, void*) {
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }

  static int OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
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

  static int OnDataChunk(nghttp2_session* session, uint8_t, int32_t stream_id, const uint8_t* data,
                         size_t len, void* user_data) {
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
    if (len >= c->options_.copy_data_below && in != nullptr && p >= in->data() &&
        p + len <= in->data() + in->size()) {
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

  static int OnStreamClose(nghttp2_session* session, int32_t stream_id, uint32_t error_code,
                           void* user_data) {
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
      c->goaway_last_id_ = std::min(c->goaway_last_id_, frame->goaway.last_stream_id);
    }
  }

  // nghttp2 queued a RST_STREAM (or ends the connection) because of this
  // frame. The stream may never have been opened (refused), so the reset is
  // noted now rather than when it is sent: frames the client sends on it
  // meanwhile are ignored too.
  static int OnInvalidFrameRecv(nghttp2_session*, const nghttp2_frame* frame, int,
                                void* user_data) {
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

  static int OnFrameSend(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) {
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
                          *s->request_length - s->request_received <= static_cast<uint64_t>(window);
        if (open && !s->request_length.has_value() && window > 0) {
          s->drain_window = true;
        } else if (!fits && open) {
          s->no_error_reset = true;
          nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
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
          c->Fail(frame->goaway.error_code,
                  View(frame->goaway.opaque_data, frame->goaway.opaque_data_len));
        }
        return 0;
      default:
        return 0;
    }
  }

  static ssize_t ReadData(nghttp2_session* session, int32_t stream_id, uint8_t*, size_t length,
                          uint32_t* data_flags, nghttp2_data_source*, void* user_data) {
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
        if (nghttp2_submit_trailer(session, stream_id, nva.data(), nva.size()) != 0) {
          return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
      }
    }
    return static_cast<ssize_t>(n);
  }

  static int SendData(nghttp2_session*, nghttp2_frame* frame, const uint8_t* framehd, size_t length,
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
        c->pump_limit_ > 0 && c->pending_bytes_ + c->writer_uncommitted_ >= c->pump_limit_;
    return pause_after ? NGHTTP2_ERR_PAUSE : 0;
  }
};

namespace h2_internal {

nghttp2_session_callbacks* NewCallbacks() {
  nghttp2_session_callbacks* cbs;
  Check(nghttp2_session_callbacks_new(&cbs) == 0, "callbacks_new");
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, &H2Callbacks::OnBeginHeaders);
  nghttp2_session_callbacks_set_on_header_callback(cbs, &H2Callbacks::OnHeader);
  nghttp2_session_callbacks_set_on_invalid_header_callback(cbs, &H2Callbacks::OnInvalidHeader);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, &H2Callbacks::OnFrameRecv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, &H2Callbacks::OnDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, &H2Callbacks::OnStreamClose);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, &H2Callbacks::OnFrameSend);
  nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, &H2Callbacks::OnFrameNotSend);
  nghttp2_session_callbacks_set_send_data_callback(cbs, &H2Callbacks::SendData);
  nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cbs,
                                                               &H2Callbacks::OnInvalidFrameRecv);
  return cbs;
}

}  // namespace h2_internal

void H2ServerCodec::Enqueue(Stream* s, Event ev) { H2Callbacks::Enqueue(this, s, std::move(ev)); }

ssize_t H2ServerCodec::ReadDataCallback(nghttp2_session* session, int32_t stream_id, uint8_t* buf,
                                        size_t length, uint32_t* data_flags,
                                        nghttp2_data_source* source, void* user_data) {
  return H2Callbacks::ReadData(session, stream_id, buf, length, data_flags, source, user_data);
}

}  // namespace sluice::http
