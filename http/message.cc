#include "http/message.h"

namespace sluice::http {

namespace {
inline char Lower(char c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }
}  // namespace

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (Lower(a[i]) != Lower(b[i])) return false;
  }
  return true;
}

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool HeaderListHasToken(std::string_view list, std::string_view token) {
  while (!list.empty()) {
    size_t comma = list.find(',');
    std::string_view part = list.substr(0, comma);
    if (EqualsIgnoreCase(TrimOws(part), token)) return true;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

namespace {
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsHex(char c) { return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
bool IsAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
// RFC 3986 2.3 unreserved and 2.2 sub-delims: the bytes of a reg-name
// besides percent-encodings.
bool IsRegNameChar(char c) {
  static constexpr std::string_view kOthers = "-._~!$&'()*+,;=";
  return IsAlpha(c) || IsDigit(c) || kOthers.find(c) != std::string_view::npos;
}
}  // namespace

bool ValidAuthority(std::string_view a) {
  std::string_view host = a;
  std::string_view port;
  if (!a.empty() && a.front() == '[') {
    const size_t close = a.find(']');
    if (close == std::string_view::npos || close < 3) return false;
    // An IPv6 address (or an IPv4-mapped one): hex digits, ':' and '.',
    // then maybe a zone (RFC 6874: "%25" and unreserved bytes).
    bool zone = false;
    for (char c : a.substr(1, close - 1)) {
      zone = zone || c == '%';
      const bool ok =
          IsHex(c) || c == ':' || c == '.' ||
          (zone && (IsAlpha(c) || IsDigit(c) || c == '%' || c == '-' || c == '_' || c == '~'));
      if (!ok) return false;
    }
    std::string_view rest = a.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return false;
      port = rest.substr(1);
    }
    host = {};
  } else {
    const size_t colon = a.find(':');
    if (colon != std::string_view::npos) {
      host = a.substr(0, colon);
      port = a.substr(colon + 1);
    }
    if (host.empty()) return false;
    for (size_t i = 0; i < host.size(); ++i) {
      if (host[i] == '%') {
        if (i + 2 >= host.size() || !IsHex(host[i + 1]) || !IsHex(host[i + 2])) {
          return false;
        }
        i += 2;
      } else if (!IsRegNameChar(host[i])) {
        return false;
      }
    }
  }
  if (port.size() > 5) return false;
  for (char c : port) {
    if (!IsDigit(c)) return false;
  }
  return true;
}

bool ValidWebSocketKey(std::string_view key) {
  // 16 bytes are 128 bits: 21 full base64 digits and a 22nd of which only
  // the top 2 bits carry data, then "==".
  if (key.size() != 24 || key.substr(22) != "==") return false;
  for (char c : key.substr(0, 22)) {
    if (!IsAlpha(c) && !IsDigit(c) && c != '+' && c != '/') return false;
  }
  static constexpr std::string_view kLastDigit = "AQgw";  // low 4 bits zero
  return kLastDigit.find(key[21]) != std::string_view::npos;
}

namespace {
const Header* FindIn(const std::vector<Header>& headers, std::string_view name) {
  for (const Header& h : headers) {
    if (EqualsIgnoreCase(h.name, name)) return &h;
  }
  return nullptr;
}
}  // namespace

const Header* RequestHead::Find(std::string_view name) const { return FindIn(headers, name); }

const Header* ResponseHead::Find(std::string_view name) const { return FindIn(headers, name); }

bool IsHopByHop(std::string_view name, std::string_view connection_tokens) {
  static constexpr std::string_view kHopByHop[] = {
      "connection", "keep-alive", "proxy-connection",   "transfer-encoding",  "te",
      "trailer",    "upgrade",    "proxy-authenticate", "proxy-authorization"};
  for (std::string_view h : kHopByHop) {
    if (EqualsIgnoreCase(name, h)) return true;
  }
  return !connection_tokens.empty() && HeaderListHasToken(connection_tokens, name);
}

std::string_view ReasonPhrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 101:
      return "Switching Protocols";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 204:
      return "No Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 413:
      return "Content Too Large";
    case 417:
      return "Expectation Failed";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 499:
      return "Client Closed Request";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Unknown";
  }
}

}  // namespace sluice::http
