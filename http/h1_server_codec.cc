#include "http/h1_server_codec.h"

#include <llhttp.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "http/llhttp_settings.h"

namespace sluice::http {
namespace {

H1ServerCodec* Self(llhttp_t* p) { return static_cast<H1ServerCodec*>(p->data); }

// Reduces an absolute-form target ("http://host:port/path?q") to origin form,
// returning the authority in `authority`. RFC 9112 3.2.2: a server receiving
// absolute form uses its authority as the Host.
bool SplitAbsoluteForm(std::string& target, std::string& authority) {
  std::string_view t = target;
  size_t scheme_end = t.find("://");
  if (scheme_end == std::string_view::npos) return false;
  std::string_view scheme = t.substr(0, scheme_end);
  if (!EqualsIgnoreCase(scheme, "http") && !EqualsIgnoreCase(scheme, "https")) {
    return false;
  }
  std::string_view rest = t.substr(scheme_end + 3);
  size_t path_start = rest.find_first_of("/?");
  authority = std::string(rest.substr(0, path_start));
  if (authority.empty() || authority.find('@') != std::string::npos) {
    return false;
  }
  std::string path =
      path_start == std::string_view::npos ? "/" : std::string(rest.substr(path_start));
  if (path[0] == '?') path.insert(0, "/");
  target = std::move(path);
  return true;
}

// The header fields FinishHead decides on, gathered in one pass.
struct HeadFields {
  int host_count = 0;
  std::string connection;  // all Connection fields, comma-joined
  std::string upgrade;     // all Upgrade fields, comma-joined
  std::string te;          // all Transfer-Encoding fields, comma-joined
  bool has_te = false;
};

// Trims every field value, takes Host into h.host and Expect into
// h.expect_continue, and gathers *f.
inline absl::Status ScanHeadFields(RequestHead& h, HeadFields* f) {
  for (Header& field : h.headers) {
    if (field.name.empty()) {
      return absl::InvalidArgumentError("malformed request: empty header name");
    }
    field.value = std::string(TrimOws(field.value));
    if (EqualsIgnoreCase(field.name, "host")) {
      ++f->host_count;
      h.host = field.value;
    } else if (EqualsIgnoreCase(field.name, "connection")) {
      if (!f->connection.empty()) f->connection += ',';
      f->connection += field.value;
    } else if (EqualsIgnoreCase(field.name, "transfer-encoding")) {
      if (f->has_te) f->te += ',';
      f->te += field.value;
      f->has_te = true;
    } else if (EqualsIgnoreCase(field.name, "upgrade")) {
      if (!f->upgrade.empty() && !field.value.empty()) f->upgrade += ',';
      f->upgrade += field.value;
    } else if (EqualsIgnoreCase(field.name, "expect")) {
      if (!EqualsIgnoreCase(field.value, "100-continue")) {
        return absl::FailedPreconditionError("unsupported expectation");
      }
      h.expect_continue = h.version_minor >= 1;
    }
  }
  return absl::OkStatus();
}

inline absl::Status CheckTransferEncoding(const HeadFields& f, int version_minor) {
  if (!f.has_te) return absl::OkStatus();
  // RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message is a smuggling
  // vector (the 1.0 framing ignores it); a proxy must treat it as faulty.
  if (version_minor == 0) {
    return absl::InvalidArgumentError(
        "malformed request: Transfer-Encoding in an HTTP/1.0 request");
  }
  std::vector<std::string_view> codings;
  for (std::string_view rest = f.te; !rest.empty();) {
    const size_t comma = rest.find(',');
    std::string_view c = TrimOws(rest.substr(0, comma));
    if (!c.empty()) codings.push_back(c);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
  }
  // RFC 9112 6.3: without chunked as the final coding the body's length
  // cannot be known: 400, and the connection closes.
  if (codings.empty() || !EqualsIgnoreCase(codings.back(), "chunked")) {
    return absl::InvalidArgumentError(
        "malformed request: chunked is not the final transfer coding");
  }
  // RFC 9112 6.1: a coding the server does not understand gets 501. Only
  // "chunked" alone is relayed: with a coding before it ("gzip, chunked")
  // the body would reach Ollama de-chunked but still encoded, and a
  // repeated "chunked" is a smuggling probe.
  if (codings.size() != 1) {
    return absl::UnimplementedError("unsupported transfer coding: only chunked is accepted");
  }
  return absl::OkStatus();
}

// Checks Host and the request target; an absolute-form target is reduced
// to origin form and its authority becomes h.host.
inline absl::Status CheckHostAndTarget(RequestHead& h, int host_count) {
  // RFC 9112 3.2: exactly one Host in 1.1; never more than one.
  if (host_count > 1) {
    return absl::InvalidArgumentError("malformed request: duplicate Host header");
  }
  if (host_count == 0 && h.version_minor >= 1) {
    return absl::InvalidArgumentError("malformed request: missing Host header");
  }
  // RFC 9110 7.2: Host is an authority (an empty one is allowed); a
  // path, userinfo or other bytes in it would reach Ollama as
  // X-Forwarded-Host and the CORS same-origin check.
  if (host_count == 1 && !h.host.empty() && !ValidAuthority(h.host)) {
    return absl::InvalidArgumentError("malformed request: invalid Host header");
  }
  if (h.target.empty()) {
    return absl::InvalidArgumentError("malformed request: empty target");
  }
  if (h.target[0] != '/') {
    std::string authority;
    if (h.target == "*" && h.method == "OPTIONS") {
      // asterisk-form, kept as is
    } else if (SplitAbsoluteForm(h.target, authority) && ValidAuthority(authority)) {
      h.host = std::move(authority);
    } else {
      return absl::InvalidArgumentError("malformed request: invalid request target");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<size_t> H1ServerCodec::Dispatch(const core::Slice& in) {
  if (!error_.ok()) return error_;
  if (paused_ || upgraded_ || in.empty()) return 0;
  const std::string_view data = in.view();
  headers_.set_input_end(data.data() + data.size());
  input_ = &in;
  llhttp_errno_t err = llhttp_execute(parser_, data.data(), data.size());
  input_ = nullptr;
  switch (err) {
    case HPE_OK:
      return data.size();
    case HPE_PAUSED:
      paused_ = true;
      return static_cast<size_t>(llhttp_get_error_pos(parser_) - data.data());
    case HPE_PAUSED_UPGRADE:
      upgraded_ = true;
      return static_cast<size_t>(llhttp_get_error_pos(parser_) - data.data());
    default:
      if (error_.ok()) {
        error_ = absl::InvalidArgumentError(
            absl::StrCat("malformed request: ", llhttp_get_error_reason(parser_)));
      }
      return error_;
  }
}

void H1ServerCodec::Resume() {
  if (!paused_) return;
  paused_ = false;
  llhttp_resume(parser_);
}

int H1ServerCodec::Fail(absl::Status status) {
  if (error_.ok()) error_ = std::move(status);
  return HPE_USER;
}

bool H1ServerCodec::CountHeaderBytes(size_t len) {
  header_bytes_ += len;
  return header_bytes_ <= limits_.max_header_bytes;
}

absl::Status H1ServerCodec::FinishHead() {
  RequestHead& h = head_;
  h.method = llhttp_method_name(static_cast<llhttp_method_t>(parser_->method));
  h.version_major = parser_->http_major;
  h.version_minor = parser_->http_minor;
  if (h.version_major != 1) {
    return absl::InvalidArgumentError("malformed request: unsupported HTTP version");
  }
  if (h.method == "CONNECT") {
    return absl::UnimplementedError("CONNECT is not supported");
  }
  HeadFields fields;
  if (absl::Status st = ScanHeadFields(h, &fields); !st.ok()) return st;
  if (absl::Status st = CheckTransferEncoding(fields, h.version_minor); !st.ok()) return st;
  if (absl::Status st = CheckHostAndTarget(h, fields.host_count); !st.ok()) return st;
  if (parser_->flags & F_CHUNKED) {
    h.chunked = true;
  } else if (parser_->flags & F_CONTENT_LENGTH) {
    h.content_length = parser_->content_length;
    if (parser_->content_length > limits_.max_body_bytes) {
      return absl::OutOfRangeError("request body too large");
    }
  }
  h.keep_alive = llhttp_should_keep_alive(parser_) != 0;
  // Only a WebSocket handshake is tunnelled (RFC 6455 4.1). Any other
  // Upgrade (h2c, TLS/1.0, ...) is dropped and the request served as
  // ordinary HTTP: clearing llhttp's flag here, before it acts on it, keeps
  // the connection in HTTP/1.1 (RFC 9110 7.8: a server may ignore Upgrade).
  parser_->upgrade = 0;
  if (HeaderListHasToken(fields.upgrade, "websocket")) {
    absl::Status st = CheckWebSocketHandshake(h, fields.connection);
    if (!st.ok()) return st;
    h.upgrade = true;
    parser_->upgrade = 1;
  }
  return absl::OkStatus();
}

absl::Status H1ServerCodec::CheckWebSocketHandshake(const RequestHead& h,
                                                    std::string_view connection) {
  auto bad = [](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed WebSocket handshake: ", absl::string_view(why.data(), why.size())));
  };
  if (h.method != "GET") return bad("the method must be GET");
  if (h.version_minor != 1) return bad("HTTP/1.1 is required");
  if (!HeaderListHasToken(connection, "upgrade")) {
    return bad("Connection must contain upgrade");
  }
  if (h.has_body()) return bad("a handshake has no body");
  // Named in Connection, they would stop here and the handshake reach
  // Ollama without them.
  if (HeaderListHasToken(connection, "sec-websocket-key") ||
      HeaderListHasToken(connection, "sec-websocket-version")) {
    return bad("Connection names a handshake field");
  }
  const Header* key = nullptr;
  const Header* version = nullptr;
  for (const Header& f : h.headers) {
    if (EqualsIgnoreCase(f.name, "sec-websocket-key")) {
      if (key != nullptr) return bad("more than one Sec-WebSocket-Key");
      key = &f;
    } else if (EqualsIgnoreCase(f.name, "sec-websocket-version")) {
      if (version != nullptr) return bad("more than one Sec-WebSocket-Version");
      version = &f;
    }
  }
  if (key == nullptr || !ValidWebSocketKey(key->value)) {
    return bad("Sec-WebSocket-Key must be 16 bytes in base64");
  }
  if (version == nullptr || version->value != "13") {
    return bad("Sec-WebSocket-Version must be 13");
  }
  return absl::OkStatus();
}

struct H1ServerCodecCallbacks {
  static int OnMessageBegin(llhttp_t* p) {
    H1ServerCodec* self = Self(p);
    self->head_ = RequestHead();
    self->header_bytes_ = 0;
    self->body_bytes_ = 0;
    self->headers_.Reset();
    self->in_message_ = true;
    return 0;
  }

  static int OnUrl(llhttp_t* p, const char* at, size_t len) {
    H1ServerCodec* self = Self(p);
    if (!self->CountHeaderBytes(len)) {
      return self->Fail(absl::ResourceExhaustedError("request header fields too large"));
    }
    self->head_.target.append(at, len);
    return 0;
  }

  static int OnHeaderField(llhttp_t* p, const char* at, size_t len) {
    H1ServerCodec* self = Self(p);
    if (!self->CountHeaderBytes(len)) {
      return self->Fail(absl::ResourceExhaustedError("request header fields too large"));
    }
    self->headers_.OnField(&self->head_.headers, at, len);
    return 0;
  }

  static int OnHeaderValue(llhttp_t* p, const char* at, size_t len) {
    H1ServerCodec* self = Self(p);
    if (!self->CountHeaderBytes(len)) {
      return self->Fail(absl::ResourceExhaustedError("request header fields too large"));
    }
    switch (self->headers_.OnValue(&self->head_.headers, at, len)) {
      case HeaderCollector::Result::kOk:
        return 0;
      case HeaderCollector::Result::kValueWithoutName:
        return self->Fail(
            absl::InvalidArgumentError("malformed request: header value without a name"));
      case HeaderCollector::Result::kObsFold:
        return self->Fail(absl::InvalidArgumentError("malformed request: obsolete line folding"));
    }
    return 0;
  }

  static int OnHeaderValueComplete(llhttp_t* p) {
    H1ServerCodec* self = Self(p);
    self->headers_.OnValueComplete();
    if (!self->CountHeaderBytes(kHeaderFieldCost)) {
      return self->Fail(absl::ResourceExhaustedError("request header fields too large"));
    }
    return 0;
  }

  static int OnHeadersComplete(llhttp_t* p) {
    H1ServerCodec* self = Self(p);
    absl::Status status = self->FinishHead();
    if (!status.ok()) {
      self->Fail(std::move(status));
      return -1;
    }
    self->sink_->OnRequestHead(std::move(self->head_));
    return 0;
  }

  static int OnBody(llhttp_t* p, const char* at, size_t len) {
    H1ServerCodec* self = Self(p);
    self->body_bytes_ += len;
    if (self->body_bytes_ > self->limits_.max_body_bytes) {
      return self->Fail(absl::OutOfRangeError("request body too large"));
    }
    // llhttp hands over spans of the buffer being executed: a view of it.
    self->sink_->OnRequestBody(self->input_->SubOf(std::string_view(at, len)));
    return 0;
  }

  static int OnMessageComplete(llhttp_t* p) {
    H1ServerCodec* self = Self(p);
    self->in_message_ = false;
    self->sink_->OnRequestComplete();
    // An upgrade request ends the HTTP/1.1 byte stream: llhttp reports
    // HPE_PAUSED_UPGRADE itself once this callback returns.
    return p->upgrade ? 0 : HPE_PAUSED;
  }
};

// After H1ServerCodecCallbacks: its table needs the complete type.
H1ServerCodec::H1ServerCodec(H1RequestSink* sink, H1Limits limits)
    : sink_(sink), limits_(limits), parser_(new llhttp_t) {
  llhttp_init(parser_, HTTP_REQUEST, &LlhttpSettings<H1ServerCodecCallbacks>());
  parser_->data = this;
}

H1ServerCodec::~H1ServerCodec() { delete parser_; }

int HttpStatusForError(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kResourceExhausted:
      return 431;
    case absl::StatusCode::kOutOfRange:
      return 413;
    case absl::StatusCode::kFailedPrecondition:
      return 417;
    case absl::StatusCode::kUnimplemented:
      return 501;
    default:
      return 400;
  }
}

}  // namespace sluice::http
