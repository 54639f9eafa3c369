#include "policy/path.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sluice::policy {
namespace {

absl::Status BadPath(absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("bad request path: ", why));
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool IsControl(uint8_t c) { return c < 0x20 || c == 0x7f; }

// RFC 3986 2.3.
bool IsUnreserved(uint8_t c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

char ToLowerAscii(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

// Characters that pass through both forms unchanged (up to case):
// unreserved, sub-delims, ":" and "@" (RFC 3986 3.3 pchar), and "/".
constexpr bool IsPlainChar(uint8_t c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~' || c == '!' || c == '$' || c == '&' || c == '\'' ||
         c == '(' || c == ')' || c == '*' || c == '+' || c == ',' || c == ';' || c == '=' ||
         c == ':' || c == '@' || c == '/';
}

constexpr auto kPlainTable = [] {
  std::array<bool, 256> t{};
  for (int c = 0; c < 256; ++c) t[c] = IsPlainChar(static_cast<uint8_t>(c));
  return t;
}();

// True when `path` (starting with "/") is plain characters with no "//" and
// no segment starting with "." (so no dot segment), i.e. already normal.
bool IsPlainPath(absl::string_view path) {
  char prev = 0;
  for (char c : path) {
    if (!kPlainTable[static_cast<uint8_t>(c)]) return false;
    if (prev == '/' && (c == '/' || c == '.')) return false;
    prev = c;
  }
  return true;
}

// Writes the path `in[0, n)` (which starts with "/") to `out` with empty
// segments dropped (runs of "/" merged, as nginx's merge_slashes does before
// it resolves dot segments) and "." / ".." resolved per RFC 3986 5.2.4: a
// path ending in "/", "/." or "/.." keeps one trailing "/". The output is
// never longer than the input. Returns its length, or -1 when ".." climbs
// above the root.
ptrdiff_t RemoveDotSegments(const char* in, size_t n, char* out) {
  size_t o = 0;
  bool trailing_slash = false;
  size_t i = 0;
  while (i < n) {
    const size_t start = i + 1;
    size_t end = start;
    while (end < n && in[end] != '/') ++end;
    const size_t len = end - start;
    i = end;
    if (len == 0 || (len == 1 && in[start] == '.')) {
      trailing_slash = true;
    } else if (len == 2 && in[start] == '.' && in[start + 1] == '.') {
      if (o == 0) return -1;
      while (out[--o] != '/') {
      }
      trailing_slash = true;
    } else {
      out[o++] = '/';
      std::memcpy(out + o, in + start, len);
      o += len;
      trailing_slash = false;
    }
  }
  if (o == 0 || trailing_slash) out[o++] = '/';
  return static_cast<ptrdiff_t>(o);
}

// The fast path: a path already in normal form forwards unchanged and
// matches lowercased, without its trailing slash.
inline NormalizedPath PlainPathResult(absl::string_view target, size_t path_len) {
  const char* path = target.data();
  NormalizedPath out;
  out.forward.assign(target.data(), target.size());
  size_t match_len = path_len;
  if (match_len > 1 && path[match_len - 1] == '/') --match_len;
  out.match.resize(match_len);
  for (size_t i = 0; i < match_len; ++i) out.match[i] = ToLowerAscii(path[i]);
  return out;
}

// Pass 1: decodes the escapes of unreserved characters of path[0, path_len)
// into buf (at least path_len bytes), keeps the others (uppercased), and
// refuses what no legitimate client sends. Returns the refusal's reason, or
// nullptr with the decoded length in *n.
inline const char* DecodeUnreservedEscapes(const char* path, size_t path_len, char* buf,
                                           size_t* n_out) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  size_t n = 0;
  for (size_t i = 0; i < path_len; ++i) {
    const char c = path[i];
    if (c == '%') {
      const int hi = i + 1 < path_len ? HexValue(path[i + 1]) : -1;
      const int lo = i + 2 < path_len ? HexValue(path[i + 2]) : -1;
      if (hi < 0 || lo < 0) return "malformed percent-escape";
      const uint8_t v = static_cast<uint8_t>(hi << 4 | lo);
      if (IsControl(v)) return "escaped control byte";
      if (v == '\\') return "backslash";
      if (IsUnreserved(v)) {
        buf[n++] = static_cast<char>(v);
      } else {
        buf[n++] = '%';
        buf[n++] = kHex[hi];
        buf[n++] = kHex[lo];
      }
      i += 2;
    } else if (IsControl(static_cast<uint8_t>(c)) || c == ' ') {
      return "control byte or space";
    } else if (c == '\\') {
      return "backslash";
    } else if (c == '#') {
      // Go's url.ParseRequestURI keeps a raw "#" in the path while other
      // parsers cut a fragment there: refuse the ambiguity.
      return "fragment";
    } else {
      buf[n++] = c;
    }
  }
  *n_out = n;
  return nullptr;
}

// Pass 2's decoding: every escape of fwd[0, fwd_len) (all well-formed after
// pass 1) decoded and the result lowercased into buf. Returns its length.
inline size_t DecodeAllLower(const char* fwd, ptrdiff_t fwd_len, char* buf) {
  size_t n = 0;
  for (ptrdiff_t i = 0; i < fwd_len; ++i) {
    if (fwd[i] == '%') {
      buf[n++] = ToLowerAscii(static_cast<char>(HexValue(fwd[i + 1]) << 4 | HexValue(fwd[i + 2])));
      i += 2;
    } else {
      buf[n++] = ToLowerAscii(fwd[i]);
    }
  }
  return n;
}

}  // namespace

absl::StatusOr<NormalizedPath> NormalizePath(absl::string_view target) {
  if (target == "*") return NormalizedPath{"*", "*"};
  if (target.empty() || target.front() != '/') {
    return BadPath("not an absolute path");
  }
  size_t path_len = 0;
  while (path_len < target.size() && target[path_len] != '?') ++path_len;
  const char* path = target.data();
  const absl::string_view query = target.substr(path_len);
  for (char c : query) {
    if (IsControl(static_cast<uint8_t>(c)) || c == ' ') {
      return BadPath("control byte in query");
    }
  }

  // Fast path: a path that is already in normal form (no escape, no empty
  // or dot segment, nothing refused) forwards unchanged, as most do.
  if (IsPlainPath(absl::string_view(path, path_len))) {
    return PlainPathResult(target, path_len);
  }

  // Scratch for the decoded forms, which are never longer than the path.
  char stack_buf[512];
  std::unique_ptr<char[]> heap_buf;
  char* buf = stack_buf;
  if (path_len > sizeof(stack_buf)) {
    heap_buf = std::make_unique<char[]>(path_len);
    buf = heap_buf.get();
  }

  size_t n = 0;
  if (const char* why = DecodeUnreservedEscapes(path, path_len, buf, &n)) {
    return BadPath(why);
  }
  NormalizedPath out;
  out.forward.resize(n + query.size());
  const ptrdiff_t fwd_len = RemoveDotSegments(buf, n, out.forward.data());
  if (fwd_len < 0) return BadPath("\"..\" above the root");

  // Pass 2: what Ollama routes on is the forward path fully decoded (Go's
  // URL.Path); decode every escape, then resolve the segments that
  // decoding may have made ("%2F..%2F").
  n = DecodeAllLower(out.forward.data(), fwd_len, buf);
  out.match.resize(n);
  ptrdiff_t match_len = RemoveDotSegments(buf, n, out.match.data());
  if (match_len < 0) return BadPath("\"..\" above the root");
  if (match_len > 1 && out.match[match_len - 1] == '/') --match_len;
  out.match.resize(static_cast<size_t>(match_len));

  std::memcpy(out.forward.data() + fwd_len, query.data(), query.size());
  out.forward.resize(static_cast<size_t>(fwd_len) + query.size());
  return out;
}

bool PathMatches(absl::string_view pattern, absl::string_view match_path) {
  if (pattern.empty()) return false;
  if (pattern.back() == '*') {
    pattern.remove_suffix(1);
    return match_path.substr(0, pattern.size()) == pattern;
  }
  if (pattern.back() == '/') {
    // "/" covers everything; "/api/" is read as "/api".
    pattern.remove_suffix(1);
    if (pattern.empty()) return true;
  }
  if (match_path.size() < pattern.size() || match_path.substr(0, pattern.size()) != pattern) {
    return false;
  }
  return match_path.size() == pattern.size() || match_path[pattern.size()] == '/';
}

}  // namespace sluice::policy
