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
#include "http/h2_server_codec_internal.h"
#include "http/serialize.h"
namespace sluice::http {

using h2_internal::Check;
using h2_internal::CodeForLibError;
using h2_internal::ConnectionError;
using h2_internal::kDispatchPumpCap;
using h2_internal::kIdleReleaseBurst;
using h2_internal::kIdleReleaseIntervalMs;
using h2_internal::kRecvChunk;

H2ServerCodec::H2ServerCodec(H2StreamSink* sink, const H2Options& options)
    : sink_(sink), options_(options) {
  nghttp2_session_callbacks* cbs = h2_internal::NewCallbacks();

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
    rv = nghttp2_session_server_new3(&session_, cbs, this, opt, H2SessionMemory::ForThisThread());
  }
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cbs);
  Check(rv == 0, "nghttp2_session_server_new3");

  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, options_.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, options_.stream_window_bytes},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
       static_cast<uint32_t>(options_.max_header_list_bytes)},
      {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
  };
  Check(nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) == 0,
        "submit_settings");
  if (options_.connection_window_bytes > NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE) {
    Check(nghttp2_session_set_local_window_size(
              session_, NGHTTP2_FLAG_NONE, 0,
              static_cast<int32_t>(options_.connection_window_bytes)) == 0,
          "set_local_window_size");
  }
  reset_budget_at_ms_ = Now();
  reset_budget_ =
      static_cast<int64_t>(options_.max_sent_resets_per_window) * options_.sent_reset_window_ms;
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
        f.type == NGHTTP2_PRIORITY || f.type == NGHTTP2_SETTINGS || f.type == NGHTTP2_PING ||
        f.type == NGHTTP2_WINDOW_UPDATE;
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
    if (cur->upto > cur->fed && !Recv(cur->p + cur->fed, cur->upto - cur->fed)) {
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

void H2ServerCodec::JudgeFrame(const H2InboundGuard::Frame& f, RecvCursor* cur) {
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
      nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, id, NGHTTP2_STREAM_CLOSED);
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
  const bool known = nghttp2_session_find_stream(session_, stream_id) != nullptr;
  if (!known && IgnoresFramesOn(stream_id)) return;
  if (!known) guard_.NoteReset(stream_id);
  // On an open stream nghttp2 then ignores the frame's header block (the
  // stream is closing) and the sink hears OnStreamReset(PROTOCOL_ERROR).
  nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_PROTOCOL_ERROR);
}

void H2ServerCodec::TakeOutput(std::vector<core::Slice>* out, size_t max_bytes) {
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
      std::min(kCap, idle_release_budget_ms_ + std::max<int64_t>(now - idle_release_at_ms_, 0));
  idle_release_at_ms_ = now;
  if (idle_release_budget_ms_ < kIdleReleaseIntervalMs) return;
  idle_release_budget_ms_ -= kIdleReleaseIntervalMs;
  H2SessionMemory::ReleaseIdle(idle_blocks_);
}

void H2ServerCodec::Pump(size_t limit) {
  pump_limit_ = limit;
  while (!abandoned_ && (limit == 0 || pending_bytes_ + writer_uncommitted_ < limit)) {
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
        sink_->OnRequestHeaders(ev.stream_id, std::move(ev.head), ev.end_stream);
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
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
  }
}

bool H2ServerCodec::RejectHead(Stream* s) {
  if (s->oversize) {
    // RFC 9113 10.5.1: a server may answer a header section it will not
    // process with 431.
    s->internal = true;
    RejectWith(s, 431, "request header fields too large");
    return true;
  }
  if (s->head.method == "CONNECT") {
    s->internal = true;
    RejectWith(s, 501, "CONNECT is not supported");
    return true;
  }
  // RFC 9110 7.2 needs the authority in :authority or Host; RFC 9113 8.3.1:
  // a Host that differs from :authority makes the request malformed.
  bool bad_host = s->duplicate_host || (!s->has_authority && !s->has_host) ||
                  (s->has_authority && s->has_host && !EqualsIgnoreCase(s->authority, s->host));
  if (bad_host) {
    s->rejected = true;
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_PROTOCOL_ERROR);
    return true;
  }
  // RFC 9113 8.3.1: :authority must not include userinfo; nor may it (or
  // Host) carry a path or other bytes an authority has not.
  if (!ValidAuthority(s->has_authority ? s->authority : s->host)) {
    s->internal = true;
    RejectWith(s, 400, "malformed request: invalid :authority or Host");
    return true;
  }
  return false;
}

void H2ServerCodec::FinishRequestHead(Stream* s, bool end_stream) {
  RequestHead& head = s->head;
  if (RejectHead(s)) return;
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
    if (absl::SimpleAtoi(absl::string_view(cl->value.data(), cl->value.size()), &n)) {
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
  Event ev(Event::Kind::kHeaders);
  ev.head = std::move(head);
  ev.end_stream = end_stream;
  Enqueue(s, std::move(ev));
  if (end_stream) {
    Enqueue(s, Event(Event::Kind::kEnd));
  }
  s->head = RequestHead();
}

void H2ServerCodec::CountSentReset() {
  if (options_.max_sent_resets_per_window == 0) return;
  const int64_t window = std::max<int64_t>(options_.sent_reset_window_ms, 1);
  const int64_t cap = static_cast<int64_t>(options_.max_sent_resets_per_window) * window;
  int64_t now = Now();
  int64_t elapsed = std::max<int64_t>(now - reset_budget_at_ms_, 0);
  reset_budget_at_ms_ = now;
  // Refill max_sent_resets_per_window tokens per window; one token costs
  // `window` units, so the arithmetic stays in integers.
  reset_budget_ = std::min(
      cap, reset_budget_ + elapsed * static_cast<int64_t>(options_.max_sent_resets_per_window));
  reset_budget_ -= window;
  if (reset_budget_ < 0) {
    Fail(NGHTTP2_ENHANCE_YOUR_CALM, "too many streams reset");
  }
}

void H2ServerCodec::CheckQueueBound() {
  if (failed_) return;
  if (nghttp2_session_get_outbound_queue_size(session_) > options_.max_queued_frames) {
    Fail(NGHTTP2_ENHANCE_YOUR_CALM, "client does not read the frames it provokes");
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
        session_, nghttp2_session_get_last_proc_stream_id(session_), error_code);
    if (rv != 0) abandoned_ = true;
  }
  for (auto& [id, s] : streams_) {
    if (s->announced) {
      Event ev(Event::Kind::kReset);
      ev.error_code = error_code;
      Enqueue(s.get(), std::move(ev));
    }
    ClearQueue(s.get());
  }
}

}  // namespace sluice::http
