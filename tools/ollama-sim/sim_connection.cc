// The input side of a Connection: llhttp callbacks, reading and pausing,
// and the peer's end. Parsed requests queue up for Dispatch
// (sim_response.cc).
#include "sim_connection.h"

#include <errno.h>
#include <llhttp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "sim_config.h"
#include "sim_server.h"

namespace sluice::sim {

Connection::Connection(Worker* worker, int fd, uint64_t id) : worker_(worker), fd_(fd), id_(id) {
  llhttp_init(&parser_, HTTP_REQUEST, &Settings());
  parser_.data = this;
}

Connection::~Connection() { Close(); }

void Connection::Close() {
  if (dead_) return;
  dead_ = true;
  close(fd_);
  SimStats& stats = GlobalStats();
  if (count_close_) stats.closed.fetch_add(1, std::memory_order_relaxed);
  stats.active.fetch_sub(1, std::memory_order_relaxed);
}

void Connection::SetLingerZero() {
  linger lg{.l_onoff = 1, .l_linger = 0};
  setsockopt(fd_, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

const llhttp_settings_t& Connection::Settings() {
  static const llhttp_settings_t settings = [] {
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_message_begin = &Connection::OnMessageBegin;
    s.on_url = &Connection::OnUrl;
    s.on_header_field = &Connection::OnHeaderField;
    s.on_header_value = &Connection::OnHeaderValue;
    s.on_header_value_complete = &Connection::OnHeaderValueComplete;
    s.on_headers_complete = &Connection::OnHeadersComplete;
    s.on_body = &Connection::OnBody;
    s.on_message_complete = &Connection::OnMessageComplete;
    return s;
  }();
  return settings;
}

int Connection::OnMessageBegin(llhttp_t* parser) {
  auto* self = static_cast<Connection*>(parser->data);
  self->current_ = HttpRequest();
  self->header_field_.clear();
  self->header_value_.clear();
  self->header_bytes_ = 0;
  return 0;
}

int Connection::OnUrl(llhttp_t* parser, const char* at, size_t length) {
  auto* self = static_cast<Connection*>(parser->data);
  self->header_bytes_ += length;
  if (self->header_bytes_ > kMaxHeaderBytes) {
    self->callback_error_status_ = 431;
    return HPE_USER;
  }
  self->current_.url.append(at, length);
  return 0;
}

int Connection::OnHeaderField(llhttp_t* parser, const char* at, size_t length) {
  auto* self = static_cast<Connection*>(parser->data);
  self->header_bytes_ += length;
  if (self->header_bytes_ > kMaxHeaderBytes) {
    self->callback_error_status_ = 431;
    return HPE_USER;
  }
  self->header_field_.append(at, length);
  return 0;
}

int Connection::OnHeaderValue(llhttp_t* parser, const char* at, size_t length) {
  auto* self = static_cast<Connection*>(parser->data);
  self->header_bytes_ += length;
  if (self->header_bytes_ > kMaxHeaderBytes) {
    self->callback_error_status_ = 431;
    return HPE_USER;
  }
  self->header_value_.append(at, length);
  return 0;
}

int Connection::OnHeaderValueComplete(llhttp_t* parser) {
  auto* self = static_cast<Connection*>(parser->data);
  HttpRequest& r = self->current_;
  std::string name = std::move(self->header_field_);
  std::string value = std::move(self->header_value_);
  self->header_field_.clear();
  self->header_value_.clear();
  r.all_headers.emplace_back(name, value);
  auto is = [&name](absl::string_view wanted) { return absl::EqualsIgnoreCase(name, wanted); };
  if (is("host")) {
    if (!r.host) r.host = std::move(value);
  } else if (absl::StartsWithIgnoreCase(name, "x-sim-")) {
    if (is("x-sim-tokens")) {
      r.sim_tokens = std::move(value);
    } else if (is("x-sim-token-delay-ms")) {
      r.sim_token_delay_ms = std::move(value);
    } else if (is("x-sim-ttft-ms")) {
      r.sim_ttft_ms = std::move(value);
    } else if (is("x-sim-close-after")) {
      r.sim_close_after = std::move(value);
    } else if (is("x-sim-reset-after")) {
      r.sim_reset_after = std::move(value);
    } else if (is("x-sim-mode")) {
      r.sim_mode = std::move(value);
    } else if (is("x-sim-chunk-pad")) {
      r.sim_chunk_pad = std::move(value);
    } else if (is("x-sim-switch-protocols")) {
      r.sim_switch_protocols = std::move(value);
    } else if (is("x-sim-drop-next-request")) {
      r.drop_next_request = value == "1";
    }
  } else if (is("upgrade")) {
    r.upgrade_header = std::move(value);
  } else if (is("connection")) {
    if (!r.connection_header.empty()) r.connection_header.push_back(',');
    r.connection_header.append(value);
  } else if (is("sec-websocket-key")) {
    r.ws_key = std::move(value);
  } else if (is("sec-websocket-version")) {
    r.ws_version = std::move(value);
  } else if (is("expect")) {
    r.expect_continue = absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(value), "100-continue");
  }
  return 0;
}

int Connection::OnHeadersComplete(llhttp_t* parser) {
  auto* self = static_cast<Connection*>(parser->data);
  HttpRequest& r = self->current_;
  r.method = parser->method;
  r.http_major = parser->http_major;
  r.http_minor = parser->http_minor;
  if ((parser->flags & F_CONTENT_LENGTH) && parser->content_length > kMaxBodyBytes) {
    self->callback_error_status_ = 413;
    return -1;
  }
  // A client waiting for 100 Continue would stall for its timeout (curl:
  // 1 s) before sending the body. Only say it when nothing is ahead of this
  // request, or the interim response would overtake an earlier answer.
  if (r.expect_continue && r.http_minor >= 1 && !self->active_ && self->queue_.empty() &&
      self->state_ == State::kHttp) {
    self->out_.append("HTTP/1.1 100 Continue\r\n\r\n");
    self->Flush();
  }
  return 0;
}

int Connection::OnBody(llhttp_t* parser, const char* at, size_t length) {
  auto* self = static_cast<Connection*>(parser->data);
  if (self->current_.body.size() + length > kMaxBodyBytes) {
    self->callback_error_status_ = 413;
    return HPE_USER;
  }
  self->current_.body.append(at, length);
  return 0;
}

int Connection::OnMessageComplete(llhttp_t* parser) {
  auto* self = static_cast<Connection*>(parser->data);
  self->current_.keep_alive = llhttp_should_keep_alive(parser) != 0;
  self->current_.upgrade = parser->upgrade != 0;
  self->queue_.push_back(std::move(self->current_));
  self->current_ = HttpRequest();
  return 0;
}

void Connection::OnEvents(uint32_t events) {
  bool hangup = (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
    if (read_paused_ && hangup) {
      // Reading is paused (a deep pipeline or a slow WebSocket reader), so
      // the FIN cannot be read in turn; treat it as the end now.
      OnPeerGone();
      return;
    }
    if (!read_paused_) DoRead(/*drain=*/hangup);
    if (dead_) return;
  }
  if (events & EPOLLOUT) {
    Flush();
    if (dead_) return;
    if (waiting_for_drain_ && OutPending() < kOutHighWater / 2) {
      waiting_for_drain_ = false;
      RunActive();
      if (dead_) return;
    }
  }
  MaybeResumeReading();
}

void Connection::OnTimer() {
  RunActive();
  if (!dead_) MaybeResumeReading();
}

bool Connection::ShouldPauseReading() const {
  return queue_.size() >= kMaxQueued || OutPending() >= kOutHighWater;
}

void Connection::MaybeResumeReading() {
  if (read_paused_ && !ShouldPauseReading()) {
    read_paused_ = false;
    // Edge-triggered epoll will not report bytes that arrived while paused,
    // so read them now.
    DoRead(/*drain=*/true);
  }
}

void Connection::DoRead(bool drain) {
  char* buffer = worker_->read_buffer();
  size_t size = worker_->read_buffer_size();
  while (!dead_) {
    if (ShouldPauseReading()) {
      read_paused_ = true;
      return;
    }
    ssize_t n = recv(fd_, buffer, size, 0);
    if (n > 0) {
      OnBytes(buffer, static_cast<size_t>(n));
      // A short read emptied the socket buffer; with edge triggering any
      // later arrival raises a new event, so skip the recv() that would only
      // return EAGAIN (one syscall per request on the benchmark path).
      if (static_cast<size_t>(n) < size && !drain) return;
      continue;
    }
    if (n == 0) {
      OnPeerEof();
      return;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    OnPeerGone();
    return;
  }
}

void Connection::OnBytes(const char* data, size_t length) {
  switch (state_) {
    case State::kWebSocket:
      OnWebSocketBytes(data, length);
      return;
    case State::kHung:
      return;  // Hang mode reads and forgets, so a peer close is still seen.
    case State::kRawEcho:
      out_.append(data, length);
      Flush();
      return;
    case State::kHttp:
      break;
  }
  if (parser_stopped_) {
    // After an Upgrade request the bytes belong to the next protocol; keep
    // them for the WebSocket parser until the upgrade is answered.
    if (!queue_.empty() && queue_.back().upgrade &&
        after_upgrade_.size() + length <= kMaxBodyBytes) {
      after_upgrade_.append(data, length);
    }
    return;
  }
  llhttp_errno_t err = llhttp_execute(&parser_, data, length);
  if (err == HPE_PAUSED_UPGRADE) {
    const char* pos = llhttp_get_error_pos(&parser_);
    after_upgrade_.assign(pos, data + length - pos);
    parser_stopped_ = true;
  } else if (err != HPE_OK) {
    // Answer the bad request in order, after those parsed before it.
    HttpRequest bad;
    bad.parse_error_status = callback_error_status_ != 0 ? callback_error_status_ : 400;
    bad.keep_alive = false;
    queue_.push_back(std::move(bad));
    parser_stopped_ = true;
  }
  ProcessQueue();
}
void Connection::CountAbortIfActive() {
  if (!active_) return;
  SimStats& stats = GlobalStats();
  stats.aborted_streams.fetch_add(1, std::memory_order_relaxed);
  stats.last_abort_us.store(RealtimeNowUs(), std::memory_order_relaxed);
  active_.reset();
}

void Connection::OnPeerEof() {
  peer_eof_ = true;
  if (state_ == State::kWebSocket || state_ == State::kRawEcho || active_) {
    // Like Go's net/http (and so Ollama), a client EOF while a response is
    // in progress cancels it.
    CountAbortIfActive();
    Close();
    return;
  }
  // Requests completed before the FIN have been answered (or queued output
  // is pending); send what is buffered, then close.
  close_when_flushed_ = true;
  Flush();
}

void Connection::OnPeerGone() {
  CountAbortIfActive();
  Close();
}

void Connection::ProcessQueue() {
  while (!dead_ && !active_ && state_ == State::kHttp && !close_when_flushed_ && !queue_.empty()) {
    HttpRequest request = std::move(queue_.front());
    queue_.pop_front();
    Dispatch(std::move(request));
  }
  if (!dead_) Flush();
}

}  // namespace sluice::sim
