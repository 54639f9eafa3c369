#include "tests/integration/h2_frames.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace sluice::integration::h2 {
namespace {

constexpr size_t kFrameHeaderLen = 9;
// The receive buffer stops growing here: a test that floods the server and
// drains its answers while sending must not grow without bound either.
constexpr size_t kMaxRxBytes = 64 << 20;
// Frames of more than this are not what sluice sends (its
// SETTINGS_MAX_FRAME_SIZE stays at the 16 KiB default); larger lengths mean
// the stream is out of sync.
constexpr uint32_t kMaxFrameLen = 1 << 24;

void Put32(std::string* out, uint32_t v) {
  out->push_back(static_cast<char>(v >> 24));
  out->push_back(static_cast<char>(v >> 16));
  out->push_back(static_cast<char>(v >> 8));
  out->push_back(static_cast<char>(v));
}

uint32_t Get32(absl::string_view s, size_t at) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data()) + at;
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

int PollMillis(absl::Duration left) {
  if (left <= absl::ZeroDuration()) return 0;
  int64_t ms = absl::ToInt64Milliseconds(left);
  return static_cast<int>(std::clamp<int64_t>(ms, 1, 60'000));
}

std::string SslErrorText() {
  unsigned long e = ERR_get_error();
  if (e == 0) return "TLS error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

}  // namespace

absl::string_view ClientMagic() { return "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"; }

std::string ErrorName(uint32_t code) {
  switch (code) {
    case kNoError:
      return "NO_ERROR";
    case kProtocolError:
      return "PROTOCOL_ERROR";
    case kInternalError:
      return "INTERNAL_ERROR";
    case kFlowControlError:
      return "FLOW_CONTROL_ERROR";
    case 0x4:
      return "SETTINGS_TIMEOUT";
    case kStreamClosed:
      return "STREAM_CLOSED";
    case kFrameSizeError:
      return "FRAME_SIZE_ERROR";
    case kRefusedStream:
      return "REFUSED_STREAM";
    case kCancel:
      return "CANCEL";
    case kCompressionError:
      return "COMPRESSION_ERROR";
    case 0xa:
      return "CONNECT_ERROR";
    case kEnhanceYourCalm:
      return "ENHANCE_YOUR_CALM";
    default:
      return absl::StrCat("error 0x", absl::Hex(code));
  }
}

// ------------------------------------------------------------------ HPACK

std::string HpackInt(uint64_t value, int prefix_bits, uint8_t first_byte) {
  std::string out;
  const uint64_t max_prefix = (uint64_t{1} << prefix_bits) - 1;
  if (value < max_prefix) {
    out.push_back(static_cast<char>(first_byte | value));
    return out;
  }
  out.push_back(static_cast<char>(first_byte | max_prefix));
  value -= max_prefix;
  while (value >= 128) {
    out.push_back(static_cast<char>(0x80 | (value & 0x7f)));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
  return out;
}

std::string HpackString(absl::string_view s) {
  return absl::StrCat(HpackInt(s.size(), 7, 0x00), s);
}

std::string HpackLiteral(absl::string_view name, absl::string_view value) {
  return absl::StrCat(std::string(1, '\0'), HpackString(name), HpackString(value));
}

std::string HpackLiteralIndexed(absl::string_view name, absl::string_view value) {
  return absl::StrCat(std::string(1, '\x40'), HpackString(name), HpackString(value));
}

std::string HpackIndexed(uint32_t index) { return HpackInt(index, 7, 0x80); }

std::string HpackBlock(const HeaderList& fields) {
  std::string out;
  for (const auto& [name, value] : fields) {
    absl::StrAppend(&out, HpackLiteral(name, value));
  }
  return out;
}

HeaderList RequestFields(absl::string_view method, absl::string_view path,
                         const HeaderList& extra) {
  HeaderList fields = {{":method", std::string(method)},
                       {":scheme", "http"},
                       {":path", std::string(path)},
                       {":authority", "127.0.0.1"}};
  fields.insert(fields.end(), extra.begin(), extra.end());
  return fields;
}

// ------------------------------------------------------------ frame bytes

std::string FrameHeader(uint32_t length, uint8_t type, uint8_t flags, uint32_t stream_id) {
  std::string out;
  out.push_back(static_cast<char>(length >> 16));
  out.push_back(static_cast<char>(length >> 8));
  out.push_back(static_cast<char>(length));
  out.push_back(static_cast<char>(type));
  out.push_back(static_cast<char>(flags));
  Put32(&out, stream_id & 0x7fffffffu);
  return out;
}

std::string BuildFrame(uint8_t type, uint8_t flags, uint32_t stream_id, absl::string_view payload) {
  return absl::StrCat(FrameHeader(static_cast<uint32_t>(payload.size()), type, flags, stream_id),
                      payload);
}

std::string HeadersFrame(uint32_t stream_id, absl::string_view block, bool end_stream,
                         bool end_headers) {
  uint8_t flags = (end_stream ? kFlagEndStream : 0) | (end_headers ? kFlagEndHeaders : 0);
  return BuildFrame(kHeaders, flags, stream_id, block);
}

std::string ContinuationFrame(uint32_t stream_id, absl::string_view block, bool end_headers) {
  return BuildFrame(kContinuation, end_headers ? kFlagEndHeaders : 0, stream_id, block);
}

std::string DataFrame(uint32_t stream_id, absl::string_view data, bool end_stream) {
  return BuildFrame(kData, end_stream ? kFlagEndStream : 0, stream_id, data);
}

std::string RstStreamFrame(uint32_t stream_id, uint32_t error_code) {
  std::string payload;
  Put32(&payload, error_code);
  return BuildFrame(kRstStream, 0, stream_id, payload);
}

std::string SettingsFrame(const std::vector<std::pair<uint16_t, uint32_t>>& settings) {
  std::string payload;
  for (const auto& [id, value] : settings) {
    payload.push_back(static_cast<char>(id >> 8));
    payload.push_back(static_cast<char>(id));
    Put32(&payload, value);
  }
  return BuildFrame(kSettings, 0, 0, payload);
}

std::string SettingsAckFrame() { return BuildFrame(kSettings, kFlagAck, 0, ""); }

std::string PingFrame(uint64_t opaque, bool ack) {
  std::string payload;
  Put32(&payload, static_cast<uint32_t>(opaque >> 32));
  Put32(&payload, static_cast<uint32_t>(opaque));
  return BuildFrame(kPing, ack ? kFlagAck : 0, 0, payload);
}

std::string WindowUpdateFrame(uint32_t stream_id, uint32_t increment) {
  std::string payload;
  Put32(&payload, increment);
  return BuildFrame(kWindowUpdate, 0, stream_id, payload);
}

std::string GoawayFrame(uint32_t last_stream_id, uint32_t error_code) {
  std::string payload;
  Put32(&payload, last_stream_id);
  Put32(&payload, error_code);
  return BuildFrame(kGoaway, 0, 0, payload);
}

// ---------------------------------------------------------- parsed frames

std::optional<uint32_t> Frame::ErrorCode() const {
  if (type == kRstStream && payload.size() >= 4) return Get32(payload, 0);
  if (type == kGoaway && payload.size() >= 8) return Get32(payload, 4);
  return std::nullopt;
}

uint32_t Frame::LastStreamId() const {
  if (type != kGoaway || payload.size() < 8) return 0;
  return Get32(payload, 0) & 0x7fffffffu;
}

int Frame::Status() const {
  for (const auto& [name, value] : headers) {
    int status = 0;
    if (name == ":status" && absl::SimpleAtoi(value, &status)) return status;
  }
  return 0;
}

std::string Frame::Describe() const {
  static const char* kNames[] = {"DATA",          "HEADERS",      "PRIORITY", "RST_STREAM",
                                 "SETTINGS",      "PUSH_PROMISE", "PING",     "GOAWAY",
                                 "WINDOW_UPDATE", "CONTINUATION"};
  std::string out = type < 10 ? kNames[type] : absl::StrCat("type ", type);
  absl::StrAppend(&out, " stream=", stream_id, " flags=0x", absl::Hex(flags),
                  " len=", payload.size());
  if (type == kGoaway) absl::StrAppend(&out, " last=", LastStreamId());
  if (std::optional<uint32_t> code = ErrorCode()) {
    absl::StrAppend(&out, " ", ErrorName(*code));
  }
  if (type == kGoaway && payload.size() > 8) {
    absl::StrAppend(&out, " \"", payload.substr(8, 80), "\"");
  }
  if (type == kHeaders) {
    if (header_error) absl::StrAppend(&out, " (undecodable)");
    if (int s = Status()) absl::StrAppend(&out, " :status=", s);
  }
  return out;
}

std::optional<uint32_t> ReadOutcome::GoawayCode() const {
  for (const Frame& f : frames) {
    if (f.type == kGoaway) return f.ErrorCode();
  }
  return std::nullopt;
}

std::optional<uint32_t> ReadOutcome::ResetCode(uint32_t stream_id) const {
  for (const Frame& f : frames) {
    if (f.type == kRstStream && f.stream_id == stream_id) return f.ErrorCode();
  }
  return std::nullopt;
}

int ReadOutcome::StatusOf(uint32_t stream_id) const {
  for (const Frame& f : frames) {
    if (f.type != kHeaders || f.stream_id != stream_id) continue;
    int s = f.Status();
    if (s >= 200) return s;
  }
  return 0;
}

size_t ReadOutcome::Count(uint8_t type) const {
  return static_cast<size_t>(std::count_if(frames.begin(), frames.end(),
                                           [type](const Frame& f) { return f.type == type; }));
}

std::string ReadOutcome::Describe() const {
  std::string out;
  size_t shown = 0;
  for (const Frame& f : frames) {
    if (++shown > 40) {
      absl::StrAppend(&out, "... ", frames.size() - 40, " more\n");
      break;
    }
    absl::StrAppend(&out, f.Describe(), "\n");
  }
  if (closed) absl::StrAppend(&out, "(closed: ", close_error, ")\n");
  if (timed_out) absl::StrAppend(&out, "(timed out)\n");
  return out;
}

// ------------------------------------------------------------- connection

struct Connection::Tls {
  SSL_CTX* ctx = nullptr;
  SSL* ssl = nullptr;
  ~Tls() {
    if (ssl != nullptr) SSL_free(ssl);
    if (ctx != nullptr) SSL_CTX_free(ctx);
  }
};

struct Connection::Inflater {
  nghttp2_hd_inflater* hd = nullptr;
  bool broken = false;  // a block failed: the table is out of sync
  ~Inflater() {
    if (hd != nullptr) nghttp2_hd_inflate_del(hd);
  }
};

Connection::Connection(int fd) : fd_(fd), inflater_(new Inflater()) {
  if (nghttp2_hd_inflate_new(&inflater_->hd) != 0) inflater_->broken = true;
}

Connection::~Connection() { Close(); }

void Connection::Close(bool reset) {
  if (fd_ < 0) return;
  if (reset) {
    linger lg{1, 0};
    setsockopt(fd_, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  }
  tls_.reset();
  close(fd_);
  fd_ = -1;
}

absl::StatusOr<std::unique_ptr<Connection>> Connection::Connect(int port, const Options& options) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat("socket: ", strerror(errno)));
  }
  if (options.recv_buffer > 0) {
    // Before connect, so the window scale matches the small buffer.
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &options.recv_buffer, sizeof(options.recv_buffer));
  }
  if (!options.source_address.empty()) {
    sockaddr_in src{};
    src.sin_family = AF_INET;
    if (inet_pton(AF_INET, options.source_address.c_str(), &src.sin_addr) != 1 ||
        bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof(src)) != 0) {
      absl::Status st = absl::UnavailableError(
          absl::StrCat("bind ", options.source_address, ": ", strerror(errno)));
      close(fd);
      return st;
    }
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  timeval tv = absl::ToTimeval(options.connect_timeout);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  while (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (errno == EINTR) continue;
    absl::Status st =
        absl::UnavailableError(absl::StrCat("connect 127.0.0.1:", port, ": ", strerror(errno)));
    close(fd);
    return st;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  std::unique_ptr<Connection> conn(new Connection(fd));
  if (options.tls) {
    absl::Status st = conn->Handshake(absl::Now() + options.connect_timeout);
    if (!st.ok()) return st;
  }
  return conn;
}

absl::Status Connection::Handshake(absl::Time deadline) {
  tls_ = std::make_unique<Tls>();
  tls_->ctx = SSL_CTX_new(TLS_method());
  if (tls_->ctx == nullptr) return absl::InternalError(SslErrorText());
  SSL_CTX_set_min_proto_version(tls_->ctx, TLS1_2_VERSION);
  SSL_CTX_set_verify(tls_->ctx, SSL_VERIFY_NONE, nullptr);
  static const uint8_t kAlpn[] = {2, 'h', '2'};
  SSL_CTX_set_alpn_protos(tls_->ctx, kAlpn, sizeof(kAlpn));
  tls_->ssl = SSL_new(tls_->ctx);
  if (tls_->ssl == nullptr) return absl::InternalError(SslErrorText());
  SSL_set_mode(tls_->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_set_fd(tls_->ssl, fd_);
  SSL_set_connect_state(tls_->ssl);
  while (true) {
    int rv = SSL_do_handshake(tls_->ssl);
    if (rv == 1) break;
    int err = SSL_get_error(tls_->ssl, rv);
    short events = 0;
    if (err == SSL_ERROR_WANT_READ) {
      events = POLLIN;
    } else if (err == SSL_ERROR_WANT_WRITE) {
      events = POLLOUT;
    } else {
      return absl::UnavailableError(absl::StrCat("TLS handshake: ", SslErrorText()));
    }
    pollfd p{fd_, events, 0};
    if (poll(&p, 1, PollMillis(deadline - absl::Now())) == 0) {
      return absl::DeadlineExceededError("TLS handshake timed out");
    }
  }
  const uint8_t* proto = nullptr;
  unsigned len = 0;
  SSL_get0_alpn_selected(tls_->ssl, &proto, &len);
  alpn_.assign(reinterpret_cast<const char*>(proto), len);
  if (alpn_ != "h2") {
    return absl::FailedPreconditionError(absl::StrCat("ALPN chose \"", alpn_, "\", not h2"));
  }
  return absl::OkStatus();
}

absl::Status Connection::SendPreface(const std::vector<std::pair<uint16_t, uint32_t>>& settings,
                                     absl::Duration timeout) {
  return Send(absl::StrCat(ClientMagic(), SettingsFrame(settings)), timeout);
}

absl::Status Connection::Establish(const std::vector<std::pair<uint16_t, uint32_t>>& settings,
                                   absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  absl::Status st = SendPreface(settings, timeout);
  if (!st.ok()) return st;
  while (true) {
    absl::StatusOr<Frame> f = ReadFrame(deadline - absl::Now());
    if (!f.ok()) return f.status();
    if (f->type == kSettings && (f->flags & kFlagAck) == 0) break;
    backlog_.push_back(std::move(*f));
  }
  return Send(SettingsAckFrame(), deadline - absl::Now());
}

bool Connection::DrainReadable() {
  char buf[64 * 1024];
  while (!eof_ && fd_ >= 0 && rx_.size() - rx_pos_ < kMaxRxBytes) {
    ssize_t n;
    if (tls_) {
      int rv = SSL_read(tls_->ssl, buf, sizeof(buf));
      if (rv > 0) {
        n = rv;
      } else {
        int err = SSL_get_error(tls_->ssl, rv);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
          return true;
        }
        eof_ = true;
        close_error_ = err == SSL_ERROR_ZERO_RETURN ? "TLS close_notify"
                       : err == SSL_ERROR_SYSCALL   ? (errno != 0 ? strerror(errno) : "EOF")
                                                    : SslErrorText();
        return false;
      }
    } else {
      n = recv(fd_, buf, sizeof(buf), 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
        eof_ = true;
        close_error_ = errno == ECONNRESET ? "ECONNRESET" : strerror(errno);
        return false;
      }
      if (n == 0) {
        eof_ = true;
        close_error_ = "EOF";
        return false;
      }
    }
    rx_.append(buf, static_cast<size_t>(n));
  }
  return !eof_;
}

absl::Status Connection::Fill(absl::Time deadline) {
  while (true) {
    size_t before = rx_.size();
    DrainReadable();
    if (rx_.size() > before) return absl::OkStatus();
    if (eof_) return absl::UnavailableError(absl::StrCat("closed: ", close_error_));
    if (fd_ < 0) return absl::FailedPreconditionError("socket closed");
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError("no frame before the deadline");
    }
    pollfd p{fd_, POLLIN, 0};
    poll(&p, 1, PollMillis(left));
  }
}

absl::Status Connection::Send(absl::string_view bytes, absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (!bytes.empty()) {
    if (fd_ < 0) return absl::FailedPreconditionError("socket closed");
    ssize_t n;
    bool want_read = false;
    if (tls_) {
      int len = static_cast<int>(std::min<size_t>(bytes.size(), 1 << 20));
      int rv = SSL_write(tls_->ssl, bytes.data(), len);
      if (rv > 0) {
        n = rv;
      } else {
        int err = SSL_get_error(tls_->ssl, rv);
        if (err == SSL_ERROR_WANT_READ) {
          want_read = true;
          n = -1;
        } else if (err == SSL_ERROR_WANT_WRITE) {
          n = -1;
        } else {
          return absl::UnavailableError(absl::StrCat(
              "TLS write: ", err == SSL_ERROR_SYSCALL ? strerror(errno) : SslErrorText()));
        }
      }
    } else {
      n = send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
          return absl::UnavailableError(absl::StrCat("send: ", strerror(errno)));
        }
      }
    }
    if (n > 0) {
      bytes.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(
          absl::StrCat("the server stopped taking bytes (", bytes.size(), " left to send)"));
    }
    bool drain = (read_while_sending_ || want_read) && !eof_ && rx_.size() - rx_pos_ < kMaxRxBytes;
    pollfd p{fd_, static_cast<short>(want_read ? POLLIN : POLLOUT), 0};
    if (drain) p.events |= POLLIN;
    poll(&p, 1, PollMillis(left));
    if ((p.revents & POLLIN) != 0 && drain) DrainReadable();
    if ((p.revents & (POLLERR | POLLHUP)) != 0 && (p.revents & POLLOUT) == 0) {
      // Let the next send() report the error.
      continue;
    }
  }
  return absl::OkStatus();
}

void Connection::DecodeBlock(Frame* f, absl::string_view block) {
  if (inflater_->broken) {
    f->header_error = true;
    return;
  }
  auto* in = reinterpret_cast<const uint8_t*>(block.data());
  size_t left = block.size();
  while (true) {
    nghttp2_nv nv;
    int flags = 0;
    ssize_t rv = nghttp2_hd_inflate_hd2(inflater_->hd, &nv, &flags, in, left, 1);
    if (rv < 0) {
      inflater_->broken = true;
      f->header_error = true;
      return;
    }
    in += rv;
    left -= static_cast<size_t>(rv);
    if ((flags & NGHTTP2_HD_INFLATE_EMIT) != 0) {
      f->headers.emplace_back(std::string(reinterpret_cast<const char*>(nv.name), nv.namelen),
                              std::string(reinterpret_cast<const char*>(nv.value), nv.valuelen));
    }
    if ((flags & NGHTTP2_HD_INFLATE_FINAL) != 0) {
      nghttp2_hd_inflate_end_headers(inflater_->hd);
      return;
    }
    if ((flags & NGHTTP2_HD_INFLATE_EMIT) == 0 && left == 0) return;
  }
}

std::optional<Frame> Connection::TakeFrame() {
  absl::string_view rx(rx_);
  rx.remove_prefix(rx_pos_);
  auto header_at = [&rx](size_t at, uint32_t* len, uint8_t* type, uint8_t* flags, uint32_t* sid) {
    if (rx.size() < at + kFrameHeaderLen) return false;
    const auto* p = reinterpret_cast<const uint8_t*>(rx.data()) + at;
    *len = (uint32_t{p[0]} << 16) | (uint32_t{p[1]} << 8) | p[2];
    *type = p[3];
    *flags = p[4];
    *sid = Get32(rx, at + 5) & 0x7fffffffu;
    return true;
  };
  uint32_t len;
  uint8_t type, flags;
  uint32_t sid;
  if (!header_at(0, &len, &type, &flags, &sid)) return std::nullopt;
  if (len > kMaxFrameLen) {
    // Out of sync: report it as the end of the connection.
    eof_ = true;
    close_error_ = absl::StrCat("unparseable frame length ", len);
    return std::nullopt;
  }
  if (rx.size() < kFrameHeaderLen + len) return std::nullopt;
  Frame f;
  f.type = type;
  f.flags = flags;
  f.stream_id = sid;
  f.payload = std::string(rx.substr(kFrameHeaderLen, len));
  f.arrival = absl::Now();
  size_t consumed = kFrameHeaderLen + len;
  if (type == kHeaders || type == kPushPromise) {
    // The block: HEADERS payload without padding and priority, plus every
    // CONTINUATION up to END_HEADERS.
    absl::string_view p(f.payload);
    size_t pad = 0;
    if ((flags & kFlagPadded) != 0 && !p.empty()) {
      pad = static_cast<uint8_t>(p[0]);
      p.remove_prefix(1);
    }
    if (type == kHeaders && (flags & kFlagPriority) != 0) {
      p.remove_prefix(std::min<size_t>(5, p.size()));
    }
    if (type == kPushPromise) p.remove_prefix(std::min<size_t>(4, p.size()));
    p.remove_suffix(std::min(pad, p.size()));
    std::string block(p);
    bool end = (flags & kFlagEndHeaders) != 0;
    while (!end) {
      uint32_t clen;
      uint8_t ctype, cflags;
      uint32_t csid;
      if (!header_at(consumed, &clen, &ctype, &cflags, &csid)) {
        return std::nullopt;
      }
      if (rx.size() < consumed + kFrameHeaderLen + clen) return std::nullopt;
      if (ctype != kContinuation) {
        f.header_error = true;
        break;
      }
      absl::string_view piece = rx.substr(consumed + kFrameHeaderLen, clen);
      block.append(piece.data(), piece.size());
      consumed += kFrameHeaderLen + clen;
      end = (cflags & kFlagEndHeaders) != 0;
    }
    if (!f.header_error) DecodeBlock(&f, block);
  }
  rx_pos_ += consumed;
  if (rx_pos_ == rx_.size()) {
    rx_.clear();
    rx_pos_ = 0;
  } else if (rx_pos_ > (1 << 20) && rx_pos_ * 2 > rx_.size()) {
    rx_.erase(0, rx_pos_);
    rx_pos_ = 0;
  }
  return f;
}

absl::StatusOr<Frame> Connection::ReadFrame(absl::Duration timeout) {
  if (!backlog_.empty()) {
    Frame f = std::move(backlog_.front());
    backlog_.erase(backlog_.begin());
    return f;
  }
  absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (std::optional<Frame> f = TakeFrame()) return std::move(*f);
    absl::Status st = Fill(deadline);
    if (!st.ok()) {
      // Whole frames that arrived before the end are still returned.
      if (std::optional<Frame> f = TakeFrame()) return std::move(*f);
      return st;
    }
  }
}

ReadOutcome Connection::Poll() {
  ReadOutcome out;
  DrainReadable();
  while (!backlog_.empty()) {
    out.frames.push_back(std::move(backlog_.front()));
    backlog_.erase(backlog_.begin());
  }
  while (std::optional<Frame> f = TakeFrame()) out.frames.push_back(std::move(*f));
  if (eof_) {
    out.closed = true;
    out.close_error = close_error_;
  }
  return out;
}

ReadOutcome Connection::ReadUntilGoaway(absl::Duration timeout) {
  return ReadUntil([](const Frame& f) { return f.type == kGoaway; }, timeout);
}

ReadOutcome Connection::ReadUntilClosed(absl::Duration timeout) {
  return ReadUntil([](const Frame&) { return false; }, timeout);
}

ReadOutcome Connection::ReadUntilStreamEnd(uint32_t stream_id, absl::Duration timeout) {
  return ReadUntil(
      [stream_id](const Frame& f) {
        if (f.type == kGoaway) return true;
        if (f.stream_id != stream_id) return false;
        if (f.type == kRstStream) return true;
        return (f.type == kData || f.type == kHeaders) && (f.flags & kFlagEndStream) != 0;
      },
      timeout);
}

absl::StatusOr<int> Connection::Get(uint32_t stream_id, absl::string_view path,
                                    absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  absl::Status st = Send(HeadersFrame(stream_id, HpackBlock(RequestFields("GET", path)),
                                      /*end_stream=*/true),
                         timeout);
  if (!st.ok()) return st;
  ReadOutcome out = ReadUntilStreamEnd(stream_id, deadline - absl::Now());
  int status = out.StatusOf(stream_id);
  bool ended = !out.frames.empty() && out.frames.back().stream_id == stream_id &&
               out.frames.back().type != kRstStream;
  if (status == 0 || !ended) {
    return absl::UnavailableError(
        absl::StrCat("GET ", path, " on stream ", stream_id, ":\n", out.Describe()));
  }
  return status;
}

}  // namespace sluice::integration::h2
