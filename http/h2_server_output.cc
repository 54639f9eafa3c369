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

using h2_internal::MakeNv;
using h2_internal::ResponseFields;

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

absl::Status H2ServerCodec::SubmitFinalHead(Stream* s, int status, std::vector<Header> fields,
                                            bool end_stream) {
  std::string status_text = std::to_string(status);
  std::vector<nghttp2_nv> nva;
  nva.reserve(fields.size() + 1);
  static const std::string kStatus = ":status";
  nva.push_back(MakeNv(kStatus, status_text));
  for (const Header& h : fields) nva.push_back(MakeNv(h.name, h.value));
  int rv;
  if (end_stream) {
    rv = nghttp2_submit_response(session_, s->id, nva.data(), nva.size(), nullptr);
  } else {
    nghttp2_data_provider prd;
    prd.source.ptr = nullptr;
    prd.read_callback = &H2ServerCodec::ReadDataCallback;
    rv = nghttp2_submit_response(session_, s->id, nva.data(), nva.size(), &prd);
  }
  if (rv != 0) {
    return absl::InternalError(absl::StrCat("nghttp2_submit_response: ", nghttp2_strerror(rv)));
  }
  s->response_submitted = true;
  ++s->heads_queued;
  if (end_stream) s->eof = true;
  return absl::OkStatus();
}

absl::Status H2ServerCodec::SubmitResponse(int32_t stream_id, const ResponseHead& head,
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
      return absl::InvalidArgumentError("an interim response cannot end the stream");
    }
    std::string status_text = std::to_string(head.status);
    static const std::string kStatus = ":status";
    std::vector<nghttp2_nv> nva;
    nva.push_back(MakeNv(kStatus, status_text));
    for (const Header& h : fields) nva.push_back(MakeNv(h.name, h.value));
    int rv = nghttp2_submit_headers(session_, NGHTTP2_FLAG_NONE, stream_id, nullptr, nva.data(),
                                    nva.size(), nullptr);
    if (rv != 0) {
      return absl::InternalError(absl::StrCat("nghttp2_submit_headers: ", nghttp2_strerror(rv)));
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
  absl::Status st = SubmitFinalHead(s, head.status, std::move(fields), end_stream);
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
  const bool waits =
      s->queue.size() > 0 || !s->response_submitted || SendWindow(s->id) < static_cast<int64_t>(n);
  if (waits && (n < options_.copy_data_below || views_total_ >= options_.connection_max_views)) {
    core::Slice copy =
        n <= kCopyBlockBytes ? s->copies.Append(data.view()) : core::Slice::Copy(data.view());
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

absl::Status H2ServerCodec::EndStream(int32_t stream_id, std::vector<Header> trailers) {
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

absl::Status H2ServerCodec::SubmitJsonErrorOn(Stream* s, int status, std::string_view message,
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

absl::Status H2ServerCodec::SubmitJsonError(int32_t stream_id, int status, std::string_view message,
                                            int retry_after_seconds) {
  Stream* s = FindLive(stream_id);
  if (s == nullptr) return absl::NotFoundError("no such stream");
  if (s->response_submitted) {
    return absl::FailedPreconditionError("response already submitted");
  }
  return SubmitJsonErrorOn(s, status, message, retry_after_seconds);
}

absl::Status H2ServerCodec::ResetStream(int32_t stream_id, uint32_t error_code) {
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
      nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream_id, error_code);
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
                        nghttp2_session_get_last_proc_stream_id(session_), NGHTTP2_NO_ERROR,
                        nullptr, 0);
}

size_t H2ServerCodec::active_streams() const { return open_streams_; }
}  // namespace sluice::http
