#include "bench/h2_client.h"

#include <cstdlib>
#include <cstring>

#include "bench/stats.h"

namespace sluice::bench {

struct H2ClientConn::Stream {
  H2StreamSink* sink;
  std::string body;
  size_t body_offset = 0;
};

H2ClientConn::H2ClientConn(std::unique_ptr<TlsSocket> tls) : tls_(std::move(tls)) {
  nghttp2_session_callbacks* callbacks;
  nghttp2_session_callbacks_new(&callbacks);
  nghttp2_session_callbacks_set_on_header_callback(callbacks, &OnHeader);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, &OnDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, &OnStreamClose);
  nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, &OnFrameRecv);
  nghttp2_session_client_new(&session_, callbacks, this);
  nghttp2_session_callbacks_del(callbacks);

  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20},
  };
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings,
                          sizeof(settings) / sizeof(settings[0]));
  nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, 16 << 20);
}

H2ClientConn::~H2ClientConn() {
  // Streams still open get no OnClose: their sinks may be gone already.
  closing_ = true;
  nghttp2_session_del(session_);
  for (Stream* s : live_) delete s;
}

int32_t H2ClientConn::Submit(const std::vector<Header>& headers, std::string body,
                             H2StreamSink* sink) {
  std::vector<nghttp2_nv> nva;
  nva.reserve(headers.size());
  for (const Header& h : headers) {
    nva.push_back(
        nghttp2_nv{const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(h.first.data())),
                   const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(h.second.data())),
                   h.first.size(), h.second.size(), NGHTTP2_NV_FLAG_NONE});
  }
  auto* stream = new Stream{sink, std::move(body)};
  live_.insert(stream);
  nghttp2_data_provider provider{};
  provider.source.ptr = stream;
  provider.read_callback = &ReadBody;
  int32_t id = nghttp2_submit_request(session_, nullptr, nva.data(), nva.size(),
                                      stream->body.empty() ? nullptr : &provider, stream);
  if (id < 0) {
    live_.erase(stream);
    delete stream;
    return id;
  }
  return id;
}

bool H2ClientConn::Cancel(int32_t stream_id) {
  return nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_CANCEL) == 0;
}

void H2ClientConn::GoAway() {
  nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE,
                        nghttp2_session_get_last_proc_stream_id(session_), NGHTTP2_NO_ERROR,
                        nullptr, 0);
}

bool H2ClientConn::OnReadable() {
  while (true) {
    size_t n = 0;
    TlsSocket::Result r = tls_->Read(buf_, sizeof(buf_), &n);
    if (r == TlsSocket::Result::kWantRead) break;
    if (r == TlsSocket::Result::kWantWrite) {
      // Only possible mid-renegotiation, which TLS 1.3 does not have.
      break;
    }
    if (r != TlsSocket::Result::kDone) {
      last_error_ = r == TlsSocket::Result::kClosed ? "connection closed by the server"
                                                    : "TLS read: " + tls_->LastError();
      return false;
    }
    read_time_us_ = NowUs(CLOCK_REALTIME);
    ssize_t used = nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t*>(buf_), n);
    if (used < 0) {
      last_error_ = std::string("nghttp2: ") + nghttp2_strerror(static_cast<int>(used));
      return false;
    }
  }
  return Flush();
}

bool H2ClientConn::Flush() {
  while (true) {
    const uint8_t* data = nullptr;
    ssize_t n = nghttp2_session_mem_send(session_, &data);
    if (n < 0) {
      last_error_ = std::string("nghttp2: ") + nghttp2_strerror(static_cast<int>(n));
      return false;
    }
    if (n == 0) break;
    // Appends to the pending buffer; written below in one go.
    if (tls_->Write({reinterpret_cast<const char*>(data), static_cast<size_t>(n)}) ==
        TlsSocket::Result::kError) {
      last_error_ = "TLS write: " + tls_->LastError();
      return false;
    }
  }
  TlsSocket::Result r = tls_->Flush();
  if (r == TlsSocket::Result::kError || r == TlsSocket::Result::kClosed) {
    last_error_ = "TLS write: " + tls_->LastError();
    return false;
  }
  return true;
}

int H2ClientConn::OnHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                           size_t namelen, const uint8_t* value, size_t valuelen, uint8_t,
                           void* user_data) {
  auto* self = static_cast<H2ClientConn*>(user_data);
  if (frame->hd.type != NGHTTP2_HEADERS || namelen != 7 || memcmp(name, ":status", 7) != 0) {
    return 0;
  }
  auto* s = static_cast<Stream*>(
      nghttp2_session_get_stream_user_data(self->session_, frame->hd.stream_id));
  if (s != nullptr) {
    s->sink->OnStatus(atoi(std::string(reinterpret_cast<const char*>(value), valuelen).c_str()));
  }
  return 0;
}

int H2ClientConn::OnDataChunk(nghttp2_session*, uint8_t, int32_t stream_id, const uint8_t* data,
                              size_t len, void* user_data) {
  auto* self = static_cast<H2ClientConn*>(user_data);
  auto* s = static_cast<Stream*>(nghttp2_session_get_stream_user_data(self->session_, stream_id));
  if (s != nullptr) {
    s->sink->OnData({reinterpret_cast<const char*>(data), len}, self->read_time_us_);
  }
  return 0;
}

int H2ClientConn::OnStreamClose(nghttp2_session*, int32_t stream_id, uint32_t error_code,
                                void* user_data) {
  auto* self = static_cast<H2ClientConn*>(user_data);
  if (self->closing_) return 0;
  auto* s = static_cast<Stream*>(nghttp2_session_get_stream_user_data(self->session_, stream_id));
  if (s != nullptr) {
    nghttp2_session_set_stream_user_data(self->session_, stream_id, nullptr);
    self->live_.erase(s);
    H2StreamSink* sink = s->sink;
    delete s;
    sink->OnClose(error_code);
  }
  return 0;
}

int H2ClientConn::OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
  auto* self = static_cast<H2ClientConn*>(user_data);
  if (frame->hd.type == NGHTTP2_SETTINGS && (frame->hd.flags & NGHTTP2_FLAG_ACK) == 0) {
    self->settings_received_ = true;
  }
  return 0;
}

ssize_t H2ClientConn::ReadBody(nghttp2_session*, int32_t, uint8_t* buf, size_t length,
                               uint32_t* data_flags, nghttp2_data_source* source, void*) {
  auto* s = static_cast<Stream*>(source->ptr);
  size_t n = std::min(length, s->body.size() - s->body_offset);
  memcpy(buf, s->body.data() + s->body_offset, n);
  s->body_offset += n;
  if (s->body_offset == s->body.size()) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
  return static_cast<ssize_t>(n);
}

}  // namespace sluice::bench
