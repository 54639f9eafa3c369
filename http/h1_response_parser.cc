#include "http/h1_response_parser.h"

#include <llhttp.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "http/llhttp_settings.h"

namespace sluice::http {
namespace {
H1ResponseParser* Self(llhttp_t* p) { return static_cast<H1ResponseParser*>(p->data); }
}  // namespace

struct H1ResponseParserCallbacks {
  static int OnMessageBegin(llhttp_t* p) {
    H1ResponseParser* self = Self(p);
    self->head_ = ResponseHead();
    self->headers_.Reset();
    return 0;
  }
  static int OnStatus(llhttp_t* p, const char* at, size_t len) {
    Self(p)->head_.reason.append(at, len);
    return 0;
  }
  static int OnHeaderField(llhttp_t* p, const char* at, size_t len) {
    H1ResponseParser* self = Self(p);
    self->headers_.OnField(&self->head_.headers, at, len);
    return 0;
  }
  static int OnHeaderValue(llhttp_t* p, const char* at, size_t len) {
    H1ResponseParser* self = Self(p);
    switch (self->headers_.OnValue(&self->head_.headers, at, len)) {
      case HeaderCollector::Result::kOk:
        return 0;
      case HeaderCollector::Result::kValueWithoutName:
        return -1;
      case HeaderCollector::Result::kObsFold:
        self->error_ = absl::InvalidArgumentError("upstream response uses obsolete line folding");
        return HPE_USER;
    }
    return 0;
  }
  static int OnHeaderValueComplete(llhttp_t* p) {
    Self(p)->headers_.OnValueComplete();
    return 0;
  }
  static int OnHeadersComplete(llhttp_t* p) {
    H1ResponseParser* self = Self(p);
    ResponseHead& h = self->head_;
    h.status = p->status_code;
    h.version_major = p->http_major;
    h.version_minor = p->http_minor;
    for (Header& f : h.headers) f.value = std::string(TrimOws(f.value));
    // RFC 9112 4: the status is three digits. llhttp takes fewer ("03"),
    // and no client (an HTTP/2 one least of all) can be given such a head.
    if (h.status < 100) {
      self->error_ = absl::InvalidArgumentError("upstream response status is not three digits");
      return -1;
    }
    // RFC 9112 6.3: a 1xx, 204 or 304 response (and any answer to HEAD)
    // ends at its empty line whatever Content-Length or Transfer-Encoding
    // say. llhttp 8.1 leaves that to the caller (it would read a body), so
    // return 1: skip the body.
    if (h.status >= 100 && h.status < 200 && h.status != 101) {
      // Interim response (RFC 9110 15.2): nothing to relay, the final
      // response follows on the same link.
      self->interim_ = true;
      return 1;
    }
    self->interim_ = false;
    if (p->flags & F_CHUNKED) {
      h.chunked = true;
    } else if (p->flags & F_CONTENT_LENGTH) {
      h.content_length = p->content_length;
    }
    h.keep_alive = llhttp_should_keep_alive(p) != 0;
    if (h.status == 101) {
      // RFC 9110 15.2.2: a 101 switches to a protocol the request asked
      // for. Only a WebSocket handshake asks; anything else would open a
      // raw tunnel past the proxy's policy.
      if (!self->websocket_request_) {
        self->error_ = absl::InvalidArgumentError(
            "101 Switching Protocols to a request that asked for no upgrade");
        return -1;
      }
      const Header* up = h.Find("upgrade");
      if (up == nullptr || !EqualsIgnoreCase(TrimOws(up->value), "websocket")) {
        self->error_ = absl::InvalidArgumentError(
            "101 Switching Protocols to a protocol other than websocket");
        return -1;
      }
      self->upgraded_ = true;
    }
    self->head_done_ = true;
    const bool bodiless = self->head_request_ || h.status == 204 || h.status == 304;
    self->sink_->OnResponseHead(std::move(h));
    if (self->upgraded_) return 2;  // no body; llhttp pauses for the tunnel
    return bodiless ? 1 : 0;
  }
  static int OnBody(llhttp_t* p, const char* at, size_t len) {
    // llhttp hands over spans of the buffer being executed (llhttp_finish
    // delivers no body): a view of it.
    H1ResponseParser* self = Self(p);
    self->sink_->OnResponseBody(self->input_->SubOf(std::string_view(at, len)));
    return 0;
  }
  static int OnMessageComplete(llhttp_t* p) {
    H1ResponseParser* self = Self(p);
    if (self->interim_) {
      self->interim_ = false;
      return 0;
    }
    if (self->upgraded_) return 0;
    self->complete_ = true;
    self->sink_->OnResponseComplete();
    return HPE_PAUSED;
  }
};

H1ResponseParser::H1ResponseParser(H1ResponseSink* sink) : sink_(sink), parser_(new llhttp_t) {
  llhttp_init(parser_, HTTP_RESPONSE, &LlhttpSettings<H1ResponseParserCallbacks>());
  parser_->data = this;
}

H1ResponseParser::~H1ResponseParser() { delete parser_; }

void H1ResponseParser::Begin(bool head_request, bool websocket_request) {
  llhttp_init(parser_, HTTP_RESPONSE, &LlhttpSettings<H1ResponseParserCallbacks>());
  parser_->data = this;
  head_request_ = head_request;
  websocket_request_ = websocket_request;
  interim_ = started_ = head_done_ = complete_ = upgraded_ = false;
  error_ = absl::OkStatus();
}

absl::StatusOr<size_t> H1ResponseParser::Dispatch(const core::Slice& in) {
  if (!error_.ok()) return error_;
  if (complete_ || upgraded_ || in.empty()) return 0;
  started_ = true;
  const std::string_view data = in.view();
  headers_.set_input_end(data.data() + data.size());
  input_ = &in;
  llhttp_errno_t err = llhttp_execute(parser_, data.data(), data.size());
  input_ = nullptr;
  switch (err) {
    case HPE_OK:
      return data.size();
    case HPE_PAUSED:
    case HPE_PAUSED_UPGRADE:
      return static_cast<size_t>(llhttp_get_error_pos(parser_) - data.data());
    default:
      if (error_.ok()) {
        error_ = absl::InvalidArgumentError(
            absl::StrCat("malformed upstream response: ", llhttp_get_error_reason(parser_)));
      }
      return error_;
  }
}

absl::Status H1ResponseParser::Finish() {
  if (!error_.ok()) return error_;
  if (complete_ || upgraded_) return absl::OkStatus();
  if (!started_) return absl::UnavailableError("upstream closed before responding");
  // llhttp_finish completes a body delimited by the connection's end and
  // reports any other message as cut short.
  llhttp_errno_t err = llhttp_finish(parser_);
  if (err != HPE_OK && err != HPE_PAUSED) {
    return absl::DataLossError("upstream response truncated");
  }
  if (!complete_) return absl::DataLossError("upstream response truncated");
  return absl::OkStatus();
}

}  // namespace sluice::http
