#include "sim_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <llhttp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "sim_handlers.h"
#include "websocket.h"

namespace sluice::sim {
namespace {

constexpr uint64_t kListenerTag = 0;
constexpr uint64_t kWakeTag = 1;

// Limits that keep one misbehaving client from exhausting memory. A request
// may hold up to kMaxHeaderBytes + kMaxBodyBytes, and at most kMaxQueued
// parsed requests wait behind an active response before reading pauses.
constexpr size_t kMaxHeaderBytes = 256 * 1024;
constexpr size_t kMaxBodyBytes = 64 * 1024 * 1024;
constexpr size_t kMaxQueued = 64;
// Output above this is left to drain before more tokens are generated or
// more input is read (WebSocket echo), bounding the per-connection buffer.
constexpr size_t kOutHighWater = 4 * 1024 * 1024;
// Token items emitted back to back (zero delay) before yielding to the loop,
// so one fast stream cannot starve the other connections of this worker.
constexpr int kItemsPerTurn = 64;

absl::Status ErrnoStatus(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", strerror(errno)));
}

}  // namespace

// One accepted TCP connection. It is driven only by its Worker: OnEvents()
// for epoll readiness and OnTimer() for its deadline. It never deletes
// itself; after Close() it reports dead() and the worker destroys it once the
// current call has returned.
class Connection {
 public:
  Connection(Worker* worker, int fd, uint64_t id);
  ~Connection();

  void OnEvents(uint32_t events);
  void OnTimer();

  bool dead() const { return dead_; }
  uint64_t id() const { return id_; }
  uint64_t timer_seq() const { return timer_seq_; }
  uint64_t NextTimerSeq() { return ++timer_seq_; }
  // Closes without counting anything but the close (worker shutdown).
  void Close();
  // SO_LINGER {1, 0}: the next Close() sends RST instead of FIN and drops
  // whatever output the kernel still holds (X-Sim-Reset-After).
  void SetLingerZero();

 private:
  enum class State { kHttp, kWebSocket, kHung, kRawEcho };

  // A response in progress: a delayed or streamed generation, or a hang.
  struct Active {
    PlanKind kind;
    StreamSpec spec;
    int64_t start_ns;
    int next_item = 0;
    bool keep_alive = true;
    bool chunked = true;
    bool http10 = false;
    bool headers_sent = false;
  };

  // llhttp callbacks; parser->data is the Connection.
  static int OnMessageBegin(llhttp_t* parser);
  static int OnUrl(llhttp_t* parser, const char* at, size_t length);
  static int OnHeaderField(llhttp_t* parser, const char* at, size_t length);
  static int OnHeaderValue(llhttp_t* parser, const char* at, size_t length);
  static int OnHeaderValueComplete(llhttp_t* parser);
  static int OnHeadersComplete(llhttp_t* parser);
  static int OnBody(llhttp_t* parser, const char* at, size_t length);
  static int OnMessageComplete(llhttp_t* parser);
  static const llhttp_settings_t& Settings();

  // Reads until EAGAIN (or the read is paused), feeding the bytes on.
  void DoRead(bool drain);
  void OnBytes(const char* data, size_t length);
  void OnWebSocketBytes(const char* data, size_t length);
  // The peer sent FIN: finish what can be finished, then close.
  void OnPeerEof();
  // The peer reset or the socket failed.
  void OnPeerGone();
  void CountAbortIfActive();
  void MaybeResumeReading();
  bool ShouldPauseReading() const;

  void ProcessQueue();
  void Dispatch(HttpRequest request);
  // Advances the active response as far as time and buffer space allow.
  void RunActive();
  void FinishActive();

  void AppendSimpleResponse(const ResponsePlan& plan, bool keep_alive,
                            bool http10);
  void AppendStreamHeaders();
  void AppendChunk(absl::string_view payload);
  size_t OutPending() const { return out_.size() - out_offset_; }
  // Sends buffered output; closes when it is all sent and close_when_flushed_.
  void Flush();

  Worker* worker_;
  int fd_;
  uint64_t id_;
  bool dead_ = false;
  bool count_close_ = true;
  State state_ = State::kHttp;
  uint64_t timer_seq_ = 0;

  llhttp_t parser_;
  bool parser_stopped_ = false;  // After a parse error or an Upgrade.
  HttpRequest current_;
  std::string header_field_;
  std::string header_value_;
  size_t header_bytes_ = 0;
  int callback_error_status_ = 0;  // 413/431 raised from a callback.
  std::deque<HttpRequest> queue_;
  std::string after_upgrade_;  // Bytes that followed an Upgrade request.

  std::optional<Active> active_;
  std::vector<std::string> payloads_;  // Scratch for BuildStreamItem.

  std::string out_;
  size_t out_offset_ = 0;
  bool close_when_flushed_ = false;
  bool drop_next_request_ = false;
  bool waiting_for_drain_ = false;
  bool read_paused_ = false;
  bool peer_eof_ = false;

  std::unique_ptr<WsFrameParser> ws_parser_;
  std::vector<WsFrame> ws_frames_;
  bool ws_closing_ = false;
};

Connection::Connection(Worker* worker, int fd, uint64_t id)
    : worker_(worker), fd_(fd), id_(id) {
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
  auto is = [&name](absl::string_view wanted) {
    return absl::EqualsIgnoreCase(name, wanted);
  };
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
    r.expect_continue = absl::EqualsIgnoreCase(
        absl::StripAsciiWhitespace(value), "100-continue");
  }
  return 0;
}

int Connection::OnHeadersComplete(llhttp_t* parser) {
  auto* self = static_cast<Connection*>(parser->data);
  HttpRequest& r = self->current_;
  r.method = parser->method;
  r.http_major = parser->http_major;
  r.http_minor = parser->http_minor;
  if ((parser->flags & F_CONTENT_LENGTH) &&
      parser->content_length > kMaxBodyBytes) {
    self->callback_error_status_ = 413;
    return -1;
  }
  // A client waiting for 100 Continue would stall for its timeout (curl:
  // 1 s) before sending the body. Only say it when nothing is ahead of this
  // request, or the interim response would overtake an earlier answer.
  if (r.expect_continue && r.http_minor >= 1 && !self->active_ &&
      self->queue_.empty() && self->state_ == State::kHttp) {
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
    bad.parse_error_status =
        callback_error_status_ != 0 ? callback_error_status_ : 400;
    bad.keep_alive = false;
    queue_.push_back(std::move(bad));
    parser_stopped_ = true;
  }
  ProcessQueue();
}

void Connection::OnWebSocketBytes(const char* data, size_t length) {
  if (ws_closing_) return;
  ws_frames_.clear();
  if (!ws_parser_->Feed(absl::string_view(data, length), &ws_frames_)) {
    // RFC 6455 7.4.1: 1002 protocol error (1009 for oversize is close
    // enough to the same outcome for a test server).
    AppendWsFrame(true, kWsClose, absl::string_view("\x03\xea", 2), &out_);
    ws_closing_ = true;
    close_when_flushed_ = true;
    Flush();
    return;
  }
  for (WsFrame& frame : ws_frames_) {
    switch (frame.opcode) {
      case kWsPing:
        AppendWsFrame(true, kWsPong, frame.payload, &out_);
        break;
      case kWsPong:
        break;
      case kWsClose:
        // Echo the status code back, then end the connection (RFC 6455
        // 5.5.1: the server closes the TCP connection first).
        AppendWsFrame(true, kWsClose, frame.payload, &out_);
        ws_closing_ = true;
        close_when_flushed_ = true;
        Flush();
        return;
      default:
        AppendWsFrame(frame.fin, frame.opcode, frame.payload, &out_);
        break;
    }
  }
  Flush();
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
  while (!dead_ && !active_ && state_ == State::kHttp && !close_when_flushed_ &&
         !queue_.empty()) {
    HttpRequest request = std::move(queue_.front());
    queue_.pop_front();
    Dispatch(std::move(request));
  }
  if (!dead_) Flush();
}

void Connection::Dispatch(HttpRequest request) {
  // X-Sim-Drop-Next-Request on the previous request: behave like an upstream
  // whose keepalive timeout closed the link just as this request arrived.
  if (drop_next_request_) {
    Close();
    return;
  }
  drop_next_request_ = request.drop_next_request;
  bool count = true;
  ResponsePlan plan = PlanResponse(request, worker_->config(), &count);
  if (count) GlobalStats().requests.fetch_add(1, std::memory_order_relaxed);
  // Otherwise "closed" could exceed "opened" right after a reset, racing
  // with the client closing the reset's own connection.
  if (plan.stats_reset) count_close_ = false;
  bool http10 = request.http_major == 1 && request.http_minor == 0;
  // An Upgrade request the simulator does not honour leaves unparsed bytes
  // of another protocol behind it, so the connection cannot continue.
  bool keep_alive =
      request.keep_alive && !plan.close &&
      !(request.upgrade && plan.kind != PlanKind::kWebSocket && plan.kind != PlanKind::kSwitch);
  switch (plan.kind) {
    case PlanKind::kImmediate:
      AppendSimpleResponse(plan, keep_alive, http10);
      if (!keep_alive) close_when_flushed_ = true;
      return;
    case PlanKind::kGarbage:
      out_.append(kGarbageBytes.data(), kGarbageBytes.size());
      close_when_flushed_ = true;
      return;
    case PlanKind::kHang:
      state_ = State::kHung;
      active_ = Active{
          .kind = PlanKind::kHang, .spec = {}, .start_ns = MonotonicNowNs()};
      queue_.clear();
      return;
    case PlanKind::kWebSocket: {
      out_.append(absl::StrCat(
          "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
          "Connection: Upgrade\r\nSec-WebSocket-Accept: ",
          plan.ws_accept, "\r\n\r\n"));
      state_ = State::kWebSocket;
      // 64 MiB: the largest message the echo tests send is far smaller.
      ws_parser_ = std::make_unique<WsFrameParser>(kMaxBodyBytes);
      queue_.clear();
      std::string early = std::move(after_upgrade_);
      after_upgrade_.clear();
      if (!early.empty()) OnWebSocketBytes(early.data(), early.size());
      return;
    }
    case PlanKind::kSwitch: {
      out_.append(absl::StrCat("HTTP/1.1 101 Switching Protocols\r\nUpgrade: ", plan.switch_to,
                               "\r\nConnection: Upgrade\r\n\r\n"));
      state_ = State::kRawEcho;
      queue_.clear();
      parser_stopped_ = true;
      std::string early = std::move(after_upgrade_);
      after_upgrade_.clear();
      out_.append(early);
      return;
    }
    case PlanKind::kStream:
    case PlanKind::kDelayed:
      active_ =
          Active{.kind = plan.kind,
                 .spec = std::move(plan.stream),
                 .start_ns = MonotonicNowNs(),
                 .next_item = 0,
                 // HTTP/1.0 has no chunked coding: a streamed body
                 // ends with the connection.
                 .keep_alive =
                     keep_alive && !(http10 && plan.kind == PlanKind::kStream),
                 .chunked = !http10,
                 .http10 = http10};
      RunActive();
      return;
  }
}

void Connection::RunActive() {
  if (dead_ || !active_ || active_->kind == PlanKind::kHang) return;
  int64_t now = MonotonicNowNs();
  Active& a = *active_;
  const StreamSpec& spec = a.spec;
  int items = spec.ItemCount();
  bool closes = spec.close_after >= 0 && spec.close_after < items;

  if (a.kind == PlanKind::kDelayed) {
    int waited_items = closes ? spec.close_after : items - 1;
    int64_t deadline =
        a.start_ns + spec.ttft_ns + int64_t{waited_items} * spec.token_delay_ns;
    if (now < deadline) {
      worker_->ScheduleTimer(this, deadline);
      return;
    }
    if (closes) {
      // X-Sim-Close-After on a stream:false request: die without answering.
      if (spec.close_by_rst) SetLingerZero();
      active_.reset();
      Close();
      return;
    }
    ResponsePlan plan;
    plan.body = BuildNonStreamBody(spec, now - a.start_ns, RealtimeNowUs());
    AppendSimpleResponse(plan, a.keep_alive, a.http10);
    FinishActive();
    return;
  }

  for (int budget = kItemsPerTurn; active_; --budget) {
    if (OutPending() >= kOutHighWater) {
      waiting_for_drain_ = true;  // Resumed from OnEvents on EPOLLOUT.
      return;
    }
    int i = a.next_item;
    int64_t deadline =
        a.start_ns + spec.ttft_ns + int64_t{i} * spec.token_delay_ns;
    // "Close after N": right after the Nth item went out; for N = 0, when the
    // first item would have (so the headers still arrive first).
    if (closes && i == spec.close_after && (i > 0 || now >= deadline)) {
      if (!a.headers_sent) AppendStreamHeaders();
      Flush();
      if (dead_) return;
      if (spec.close_by_rst) SetLingerZero();
      active_.reset();
      Close();
      return;
    }
    if (now < deadline) {
      worker_->ScheduleTimer(this, deadline);
      return;
    }
    if (budget == 0) {
      worker_->ScheduleTimer(this, now);
      return;
    }
    if (!a.headers_sent) AppendStreamHeaders();
    payloads_.clear();
    BuildStreamItem(spec, i, now - a.start_ns, RealtimeNowUs(), &payloads_);
    for (const std::string& payload : payloads_) AppendChunk(payload);
    ++a.next_item;
    if (a.next_item == items) {
      if (a.chunked) out_.append("0\r\n\r\n");
      Flush();
      if (!dead_) FinishActive();
      return;
    }
    Flush();
    if (dead_) return;
    now = MonotonicNowNs();
  }
}

void Connection::FinishActive() {
  bool keep_alive = active_->keep_alive;
  active_.reset();
  if (!keep_alive) {
    close_when_flushed_ = true;
    Flush();
    return;
  }
  ProcessQueue();
}

void Connection::AppendSimpleResponse(const ResponsePlan& plan, bool keep_alive,
                                      bool http10) {
  absl::StrAppend(&out_, "HTTP/1.1 ", plan.status, " ",
                  StatusReason(plan.status), "\r\n");
  if (!plan.content_type.empty()) {
    absl::StrAppend(&out_, "Content-Type: ", plan.content_type, "\r\n");
  }
  absl::StrAppend(&out_, "Content-Length: ", plan.body.size(), "\r\n",
                  plan.extra_headers);
  if (!keep_alive) {
    out_.append("Connection: close\r\n");
  } else if (http10) {
    out_.append("Connection: keep-alive\r\n");
  }
  out_.append("\r\n");
  if (!plan.head_only) out_.append(plan.body);
}

void Connection::AppendStreamHeaders() {
  Active& a = *active_;
  absl::StrAppend(&out_, "HTTP/1.1 200 OK\r\nContent-Type: ",
                  StreamContentType(a.spec.format), "\r\n");
  if (a.chunked) out_.append("Transfer-Encoding: chunked\r\n");
  if (a.spec.format == StreamFormat::kOpenAiChat ||
      a.spec.format == StreamFormat::kOpenAiCompletion) {
    out_.append("Cache-Control: no-cache\r\n");
  }
  if (!a.keep_alive) out_.append("Connection: close\r\n");
  out_.append("\r\n");
  a.headers_sent = true;
}

void Connection::AppendChunk(absl::string_view payload) {
  if (active_->chunked) {
    char size_line[24];
    int n = snprintf(size_line, sizeof(size_line), "%zx\r\n", payload.size());
    out_.append(size_line, n);
    out_.append(payload.data(), payload.size());
    out_.append("\r\n");
  } else {
    out_.append(payload.data(), payload.size());
  }
}

void Connection::Flush() {
  if (dead_) return;
  while (out_offset_ < out_.size()) {
    ssize_t n = send(fd_, out_.data() + out_offset_, out_.size() - out_offset_,
                     MSG_NOSIGNAL);
    if (n > 0) {
      out_offset_ += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // Reclaim the sent prefix once it is large, so a slow reader does not
      // make the buffer grow by the total bytes ever sent.
      if (out_offset_ > 1024 * 1024) {
        out_.erase(0, out_offset_);
        out_offset_ = 0;
      }
      return;  // EPOLLOUT (edge) will call again.
    }
    OnPeerGone();
    return;
  }
  out_.clear();
  out_offset_ = 0;
  if (close_when_flushed_) Close();
}

// ---------------------------------------------------------------------------

Worker::Worker(int listen_fd, const SimConfig* config)
    : listen_fd_(listen_fd), config_(config) {}

Worker::~Worker() {
  connections_.clear();
  if (epoll_fd_ >= 0) close(epoll_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
  if (listen_fd_ >= 0) close(listen_fd_);
}

absl::Status Worker::Init() {
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return ErrnoStatus("epoll_create1");
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) return ErrnoStatus("eventfd");
  epoll_event ev{};
  // The listener is level-triggered: AcceptAll takes a bounded batch per
  // wake-up and the rest are reported again.
  ev.events = EPOLLIN;
  ev.data.u64 = kListenerTag;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev) != 0) {
    return ErrnoStatus("epoll_ctl(listener)");
  }
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeTag;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev) != 0) {
    return ErrnoStatus("epoll_ctl(eventfd)");
  }
  return absl::OkStatus();
}

void Worker::Stop() {
  stop_.store(true);
  uint64_t one = 1;
  ssize_t ignored = write(wake_fd_, &one, sizeof(one));
  (void)ignored;
}

void Worker::ScheduleTimer(Connection* connection, int64_t deadline_ns) {
  timers_.push_back(
      {deadline_ns, connection->id(), connection->NextTimerSeq()});
  std::push_heap(timers_.begin(), timers_.end());
}

int Worker::Wait(epoll_event* events, int max_events) {
  int64_t timeout_ns = -1;
  if (!timers_.empty()) {
    timeout_ns =
        std::max<int64_t>(0, timers_.front().deadline_ns - MonotonicNowNs());
  }
  if (have_pwait2_) {
    // epoll_pwait2 takes a timespec: sub-millisecond token delays (0.5 ms)
    // need better than epoll_wait's millisecond timeout.
    timespec ts{static_cast<time_t>(timeout_ns / 1'000'000'000),
                static_cast<long>(timeout_ns % 1'000'000'000)};
    int n = epoll_pwait2(epoll_fd_, events, max_events,
                         timeout_ns < 0 ? nullptr : &ts, nullptr);
    if (n >= 0 || errno != ENOSYS) return n;
    have_pwait2_ = false;
  }
  int timeout_ms = timeout_ns < 0
                       ? -1
                       : static_cast<int>((timeout_ns + 999'999) / 1'000'000);
  return epoll_wait(epoll_fd_, events, max_events, timeout_ms);
}

void Worker::Run() {
  epoll_event events[256];
  while (!stop_.load(std::memory_order_relaxed)) {
    int n = Wait(events, 256);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("ollama-sim: epoll_wait");
      break;
    }
    for (int i = 0; i < n; ++i) {
      uint64_t tag = events[i].data.u64;
      if (tag == kListenerTag) {
        AcceptAll();
      } else if (tag == kWakeTag) {
        uint64_t value;
        ssize_t ignored = read(wake_fd_, &value, sizeof(value));
        (void)ignored;
      } else {
        auto it = connections_.find(tag);
        if (it == connections_.end()) continue;
        it->second->OnEvents(events[i].events);
        DestroyIfDead(tag);
      }
    }
    RunTimers();
  }
  connections_.clear();
}

void Worker::RunTimers() {
  if (timers_.empty()) return;
  int64_t now = MonotonicNowNs();
  // Collect first: a connection may re-arm at `now`, which must wait for the
  // next loop turn rather than spin here.
  expired_.clear();
  while (!timers_.empty() && timers_.front().deadline_ns <= now) {
    std::pop_heap(timers_.begin(), timers_.end());
    expired_.push_back(timers_.back());
    timers_.pop_back();
  }
  for (const TimerEntry& entry : expired_) {
    auto it = connections_.find(entry.connection_id);
    if (it == connections_.end() || it->second->timer_seq() != entry.seq) {
      continue;  // Superseded, or the connection is gone.
    }
    it->second->OnTimer();
    DestroyIfDead(entry.connection_id);
  }
}

void Worker::DestroyIfDead(uint64_t id) {
  auto it = connections_.find(id);
  if (it != connections_.end() && it->second->dead()) connections_.erase(it);
}

void Worker::AcceptAll() {
  for (int i = 0; i < 64; ++i) {
    int fd =
        accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        perror("ollama-sim: accept4");
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    uint64_t id = next_connection_id_++;
    SimStats& stats = GlobalStats();
    stats.opened.fetch_add(1, std::memory_order_relaxed);
    stats.active.fetch_add(1, std::memory_order_relaxed);
    auto connection = std::make_unique<Connection>(this, fd, id);
    epoll_event ev{};
    // Registered once, edge-triggered, for everything: EPOLLRDHUP stays armed
    // while a stream is being generated so a client's FIN or RST is noticed
    // at once rather than at the next token write.
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = id;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      perror("ollama-sim: epoll_ctl(connection)");
      continue;  // The unique_ptr closes it and counts the close.
    }
    connections_.emplace(id, std::move(connection));
  }
}

// ---------------------------------------------------------------------------

absl::StatusOr<ListenAddress> ParseListenAddress(absl::string_view text) {
  ListenAddress result;
  absl::string_view host;
  absl::string_view port;
  if (absl::StartsWith(text, "[")) {
    size_t end = text.find("]:");
    if (end == absl::string_view::npos) {
      return absl::InvalidArgumentError("expected [v6-address]:port");
    }
    host = text.substr(1, end - 1);
    port = text.substr(end + 2);
    result.display_host = absl::StrCat("[", host, "]");
  } else {
    size_t colon = text.rfind(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError("expected host:port");
    }
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != absl::string_view::npos) {
      return absl::InvalidArgumentError(
          "IPv6 addresses need brackets: [addr]:port");
    }
    if (host.empty()) host = "0.0.0.0";
    result.display_host = std::string(host);
  }
  if (!absl::SimpleAtoi(port, &result.port) || result.port < 0 ||
      result.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("bad port '", port, "'"));
  }
  std::string host_str(host);
  auto* v4 = reinterpret_cast<sockaddr_in*>(&result.addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&result.addr);
  if (inet_pton(AF_INET, host_str.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    result.addr_len = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, host_str.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    result.addr_len = sizeof(sockaddr_in6);
  } else {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    int rc = getaddrinfo(host_str.c_str(), nullptr, &hints, &found);
    if (rc != 0 || found == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot resolve '", host, "': ", gai_strerror(rc)));
    }
    memcpy(&result.addr, found->ai_addr, found->ai_addrlen);
    result.addr_len = found->ai_addrlen;
    freeaddrinfo(found);
  }
  return result;
}

namespace {

sockaddr_storage WithPort(const ListenAddress& address, int port) {
  sockaddr_storage addr = address.addr;
  if (addr.ss_family == AF_INET) {
    reinterpret_cast<sockaddr_in*>(&addr)->sin_port = htons(port);
  } else {
    reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port = htons(port);
  }
  return addr;
}

}  // namespace

absl::Status ProbePortFree(const ListenAddress& address) {
  sockaddr_storage addr = WithPort(address, address.port);
  int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus("socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  absl::Status status = absl::OkStatus();
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), address.addr_len) != 0) {
    status = ErrnoStatus(
        absl::StrCat("bind ", address.display_host, ":", address.port));
  }
  close(fd);
  return status;
}

absl::StatusOr<int> OpenListener(const ListenAddress& address, int port) {
  sockaddr_storage addr = WithPort(address, port);
  int fd =
      socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus("socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
    absl::Status status = ErrnoStatus("setsockopt(SO_REUSEPORT)");
    close(fd);
    return status;
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), address.addr_len) != 0) {
    absl::Status status =
        ErrnoStatus(absl::StrCat("bind ", address.display_host, ":", port));
    close(fd);
    return status;
  }
  // A deep backlog: wrk opens all its connections at once.
  if (listen(fd, 4096) != 0) {
    absl::Status status = ErrnoStatus("listen");
    close(fd);
    return status;
  }
  return fd;
}

absl::StatusOr<int> BoundPort(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return ErrnoStatus("getsockname");
  }
  if (addr.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  }
  return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
}

}  // namespace sluice::sim
