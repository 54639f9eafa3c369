#include "http/serialize.h"

#include "absl/strings/str_cat.h"

namespace sluice::http {
namespace {

std::string JoinedConnection(const std::vector<Header>& headers) {
  std::string joined;
  for (const Header& h : headers) {
    if (EqualsIgnoreCase(h.name, "connection")) {
      if (!joined.empty()) joined += ',';
      joined += h.value;
    }
  }
  return joined;
}

void AppendField(std::string_view name, std::string_view value, std::string* out) {
  out->append(name);
  out->append(": ");
  out->append(value);
  out->append("\r\n");
}

}  // namespace

void AppendUpstreamRequestHead(const RequestHead& head, const ForwardContext& ctx,
                               std::string* out) {
  out->append(head.method);
  out->push_back(' ');
  out->append(head.target);
  out->append(" HTTP/1.1\r\n");
  AppendField("Host", ctx.upstream_host, out);
  const std::string connection = JoinedConnection(head.headers);
  std::string forwarded_for;
  for (const Header& h : head.headers) {
    std::string_view n = h.name;
    // A field the client's Connection names is for this hop only (RFC 9110
    // 7.6.1), whichever it is; the fields the proxy sets itself below
    // (Host, the framing, X-Forwarded-*, Upgrade) are set whatever it names.
    if (IsHopByHop(n, connection)) continue;
    if (EqualsIgnoreCase(n, "x-forwarded-for")) {
      if (!forwarded_for.empty()) forwarded_for += ", ";
      forwarded_for += h.value;
      continue;
    }
    if (EqualsIgnoreCase(n, "host") || EqualsIgnoreCase(n, "content-length") ||
        EqualsIgnoreCase(n, "expect") || EqualsIgnoreCase(n, "x-real-ip") ||
        EqualsIgnoreCase(n, "x-forwarded-proto") || EqualsIgnoreCase(n, "x-forwarded-host")) {
      continue;
    }
    AppendField(n, h.value, out);
  }
  if (!forwarded_for.empty()) forwarded_for += ", ";
  forwarded_for += ctx.client_addr;
  AppendField("X-Real-IP", ctx.real_ip.empty() ? ctx.client_addr : ctx.real_ip, out);
  AppendField("X-Forwarded-For", forwarded_for, out);
  AppendField("X-Forwarded-Proto", ctx.proto, out);
  if (!head.host.empty()) AppendField("X-Forwarded-Host", head.host, out);
  if (head.upgrade) {
    // The codec admits no upgrade but a checked WebSocket handshake; any
    // other protocol the client listed beside it is not offered upstream.
    AppendField("Upgrade", "websocket", out);
    AppendField("Connection", "upgrade", out);
  }
  if (head.chunked) {
    AppendField("Transfer-Encoding", "chunked", out);
  } else if (head.content_length.has_value()) {
    AppendField("Content-Length", absl::StrCat(*head.content_length), out);
  }
  out->append("\r\n");
}

void AppendDownstreamResponseHead(const ResponseHead& head, BodyFraming framing, bool close,
                                  std::string* out, std::string_view extra_fields) {
  absl::StrAppend(out, "HTTP/1.1 ", head.status, " ");
  out->append(head.reason.empty() ? ReasonPhrase(head.status) : std::string_view(head.reason));
  out->append("\r\n");
  const std::string connection = JoinedConnection(head.headers);
  for (const Header& h : head.headers) {
    if (IsHopByHop(h.name, connection) || EqualsIgnoreCase(h.name, "content-length")) {
      continue;
    }
    AppendField(h.name, h.value, out);
  }
  if (head.status == 101) {
    if (const Header* up = head.Find("upgrade")) {
      AppendField("Upgrade", up->value, out);
    }
    AppendField("Connection", "upgrade", out);
  } else if (close) {
    AppendField("Connection", "close", out);
  }
  switch (framing) {
    case BodyFraming::kContentLength:
      AppendField("Content-Length", absl::StrCat(head.content_length.value_or(0)), out);
      break;
    case BodyFraming::kChunked:
      AppendField("Transfer-Encoding", "chunked", out);
      break;
    case BodyFraming::kNone:
      // A HEAD response keeps the length the GET would have had.
      if (head.content_length.has_value()) {
        AppendField("Content-Length", absl::StrCat(*head.content_length), out);
      }
      break;
    case BodyFraming::kClose:
      break;
  }
  out->append(extra_fields.data(), extra_fields.size());
  out->append("\r\n");
}

void AppendJsonEscaped(std::string_view s, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (c < 0x20) {
          out->append("\\u00");
          out->push_back(kHex[c >> 4]);
          out->push_back(kHex[c & 15]);
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
  }
}

std::string JsonErrorBody(std::string_view message) {
  std::string body = "{\"error\":\"";
  AppendJsonEscaped(message, &body);
  body += "\"}\n";
  return body;
}

std::string RedirectResponse(std::string_view location, bool close) {
  std::string body = "{\"error\":\"moved permanently\",\"location\":\"";
  AppendJsonEscaped(location, &body);
  body += "\"}\n";
  std::string out = "HTTP/1.1 301 Moved Permanently\r\nLocation: ";
  out.append(location.data(), location.size());
  absl::StrAppend(&out, "\r\nContent-Type: application/json\r\nContent-Length: ", body.size(),
                  "\r\n");
  if (close) out += "Connection: close\r\n";
  out += "\r\n";
  out += body;
  return out;
}

std::string JsonErrorResponse(int status, std::string_view message, bool close,
                              int retry_after_seconds, std::string_view extra_fields) {
  return JsonResponse(status, JsonErrorBody(message), close, retry_after_seconds, extra_fields);
}

std::string JsonResponse(int status, std::string_view body, bool close, int retry_after_seconds,
                         std::string_view extra_fields) {
  std::string out = absl::StrCat("HTTP/1.1 ", status, " ");
  out.append(ReasonPhrase(status));
  absl::StrAppend(&out,
                  "\r\nContent-Type: application/json\r\n"
                  "Content-Length: ",
                  body.size(), "\r\n");
  if (retry_after_seconds > 0) {
    absl::StrAppend(&out, "Retry-After: ", retry_after_seconds, "\r\n");
  }
  if (close) out += "Connection: close\r\n";
  out.append(extra_fields.data(), extra_fields.size());
  out += "\r\n";
  out += body;
  return out;
}

size_t FormatChunkHeader(uint64_t size, char* buf) {
  static constexpr char kHex[] = "0123456789abcdef";
  char tmp[16];
  size_t n = 0;
  do {
    tmp[n++] = kHex[size & 15];
    size >>= 4;
  } while (size != 0);
  for (size_t i = 0; i < n; ++i) buf[i] = tmp[n - 1 - i];
  buf[n] = '\r';
  buf[n + 1] = '\n';
  return n + 2;
}

}  // namespace sluice::http
