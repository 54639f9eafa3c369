#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::http {

// One header field as received: the name keeps its original case, the value
// has its leading and trailing whitespace removed (RFC 9110 5.5).
struct Header {
  std::string name;
  std::string value;
};

// Case-insensitive ASCII comparison, as header names and most tokens need.
bool EqualsIgnoreCase(std::string_view a, std::string_view b);

// `s` without leading and trailing spaces and tabs (OWS).
std::string_view TrimOws(std::string_view s);

// True when `list` (a comma-separated header value such as Connection's)
// contains `token`, compared case-insensitively with whitespace trimmed.
bool HeaderListHasToken(std::string_view list, std::string_view token);

// True when `authority` is a URI authority without userinfo (RFC 3986
// 3.2, as RFC 9110 7.2 and RFC 9113 8.3.1 allow it in Host and
// :authority): a reg-name, an IPv4 address or a bracketed IP literal,
// optionally followed by ':' and a port of at most 5 digits. An empty
// value, a path, a query, '@' or any other byte gives false.
bool ValidAuthority(std::string_view authority);

// True when `key` is a valid Sec-WebSocket-Key (RFC 6455 4.1): the
// base64 encoding of 16 bytes (24 characters, ending in "==").
bool ValidWebSocketKey(std::string_view key);

// A request as it reached the proxy, with the framing facts the codec
// established. Everything is owned: it outlives the input buffers.
struct RequestHead {
  std::string method;
  // Origin-form target ("/api/chat?x=1"); absolute-form targets are reduced
  // to origin form by the codec, "*" is kept for OPTIONS.
  std::string target;
  int version_major = 1;
  int version_minor = 1;
  std::vector<Header> headers;
  // The request's Host: from the Host header, or the authority of an
  // absolute-form target.
  std::string host;
  std::optional<uint64_t> content_length;
  bool chunked = false;
  bool keep_alive = true;  // the client's wish, from version + Connection
  // A WebSocket handshake (RFC 6455 4.1) checked by the codec: the only
  // upgrade the proxy forwards. Other Upgrade values are dropped and the
  // request is served as ordinary HTTP.
  bool upgrade = false;
  bool expect_continue = false;  // Expect: 100-continue

  // First header named `name` (case-insensitive), or nullptr.
  const Header* Find(std::string_view name) const;
  bool has_body() const { return chunked || content_length.value_or(0) > 0; }
  bool is_head() const { return method == "HEAD"; }
};

// A response from the upstream, framing facts included.
struct ResponseHead {
  int status = 0;
  int version_major = 1;
  int version_minor = 1;
  std::string reason;
  std::vector<Header> headers;
  std::optional<uint64_t> content_length;
  bool chunked = false;
  bool keep_alive = true;  // the upstream lets the link be reused

  const Header* Find(std::string_view name) const;
};

// Hop-by-hop fields (RFC 9110 7.6.1) that a proxy never forwards, plus the
// fields it regenerates itself. `connection_tokens` is the Connection header
// value of the same message: the fields it names are hop-by-hop as well.
bool IsHopByHop(std::string_view name, std::string_view connection_tokens);

// Reason phrase for a status code ("Not Found"); "Unknown" when unlisted.
std::string_view ReasonPhrase(int status);

}  // namespace sluice::http
