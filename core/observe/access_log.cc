#include "core/observe/access_log.h"

#include <cinttypes>
#include <cstdio>
#include <ctime>

namespace sluice::core {
namespace {

constexpr char kHex[] = "0123456789ABCDEF";

// nginx's ngx_http_log_escape (escape=default): '"', '\\', controls and
// every byte from 0x7f as \xHH with upper-case digits. `escape_space`
// keeps awk's field numbers fixed when a value may hold a space.
void AppendNginxEscaped(std::string_view v, bool escape_space, std::string* out) {
  for (unsigned char c : v) {
    if (c == '"' || c == '\\' || c < 0x20 || c >= 0x7f || (escape_space && c == ' ')) {
      const char esc[4] = {'\\', 'x', kHex[c >> 4], kHex[c & 0xf]};
      out->append(esc, 4);
    } else {
      out->push_back(static_cast<char>(c));
    }
  }
}

void AppendNginxField(std::string_view v, bool escape_space, std::string* out) {
  if (v.empty()) {
    out->push_back('-');
  } else {
    AppendNginxEscaped(v, escape_space, out);
  }
}

// Nanoseconds as seconds with `decimals` digits (3: ms, 6: us), rounded to
// the nearest unit; negative values (a clock step) print as 0.
void AppendSeconds(int64_t ns, int decimals, std::string* out) {
  if (ns < 0) ns = 0;
  const uint64_t unit = decimals == 3 ? 1000000u : 1000u;
  const uint64_t per_second = 1000000000u / unit;
  const uint64_t units = (static_cast<uint64_t>(ns) + unit / 2) / unit;
  char buf[48];
  int n = snprintf(buf, sizeof(buf), "%" PRIu64 ".%0*" PRIu64, units / per_second, decimals,
                   units % per_second);
  out->append(buf, static_cast<size_t>(n));
}

void AppendInt(int64_t v, std::string* out) { out->append(std::to_string(v)); }
void AppendUint(uint64_t v, std::string* out) { out->append(std::to_string(v)); }

// Length of the valid UTF-8 sequence at s[0..n), or 0 if it is not one; in
// that case *bad is the length of its maximal valid prefix (at least 1), so
// that one U+FFFD replaces it, as the Unicode standard (3.9, "maximal
// subpart") recommends.
size_t Utf8Sequence(const unsigned char* s, size_t n, size_t* bad) {
  const unsigned char c = s[0];
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;  // overlong
    if (c == 0xED) hi = 0x9F;  // surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;  // overlong
    if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    *bad = 1;
    return 0;
  }
  for (size_t i = 1; i < len; ++i) {
    const unsigned char min = i == 1 ? lo : 0x80;
    const unsigned char max = i == 1 ? hi : 0xBF;
    if (i >= n || s[i] < min || s[i] > max) {
      *bad = i;
      return 0;
    }
  }
  return len;
}

void AppendJsonString(std::string_view v, std::string* out) {
  out->push_back('"');
  const auto* s = reinterpret_cast<const unsigned char*>(v.data());
  const size_t n = v.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
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
          if (c < 0x20 || c == 0x7f) {
            const char esc[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xf]};
            out->append(esc, 6);
          } else {
            out->push_back(static_cast<char>(c));
          }
      }
      ++i;
      continue;
    }
    size_t bad = 0;
    const size_t len = Utf8Sequence(s + i, n - i, &bad);
    if (len == 0) {
      out->append("\\ufffd");
      i += bad;
    } else {
      out->append(v.data() + i, len);
      i += len;
    }
  }
  out->push_back('"');
}

void AppendJsonStringOrNull(std::string_view v, std::string* out) {
  if (v.empty()) {
    out->append("null");
  } else {
    AppendJsonString(v, out);
  }
}

void AppendJsonSecondsOrNull(int64_t ns, int decimals, std::string* out) {
  if (ns < 0) {
    out->append("null");
  } else {
    AppendSeconds(ns, decimals, out);
  }
}

void AppendJsonIntOrNull(int64_t v, std::string* out) {
  if (v < 0) {
    out->append("null");
  } else {
    AppendInt(v, out);
  }
}

int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

// The local time of `second` in the two forms the formats print:
// "10/Oct/2000:13:55:36 -0700" (nginx's $time_local) and, for the JSON
// format, "2000-10-10T13:55:36" and "-07:00" (milliseconds go between).
inline void FormatLocalTime(int64_t second, std::string* nginx_time, std::string* iso_prefix,
                            std::string* iso_offset) {
  static constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  const time_t t = static_cast<time_t>(second);
  tm local{};
  localtime_r(&t, &local);
  const long off = local.tm_gmtoff;
  const char sign = off < 0 ? '-' : '+';
  const long abs_off = off < 0 ? -off : off;
  const int off_h = static_cast<int>(abs_off / 3600);
  const int off_m = static_cast<int>(abs_off % 3600 / 60);
  char buf[64];
  int n = snprintf(buf, sizeof(buf), "%02d/%s/%04d:%02d:%02d:%02d %c%02d%02d", local.tm_mday,
                   kMonths[local.tm_mon % 12], local.tm_year + 1900, local.tm_hour, local.tm_min,
                   local.tm_sec, sign, off_h, off_m);
  nginx_time->assign(buf, static_cast<size_t>(n));
  n = snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d", local.tm_year + 1900,
               local.tm_mon + 1, local.tm_mday, local.tm_hour, local.tm_min, local.tm_sec);
  iso_prefix->assign(buf, static_cast<size_t>(n));
  n = snprintf(buf, sizeof(buf), "%c%02d:%02d", sign, off_h, off_m);
  iso_offset->assign(buf, static_cast<size_t>(n));
}

// The JSON object's time and request fields, up to user_agent.
inline void AppendJsonRequestFields(const AccessRecord& r, int64_t second,
                                    std::string_view iso_prefix, std::string_view iso_offset,
                                    std::string* out) {
  const int64_t ms = (r.start_unix_ns - second * 1000000000) / 1000000;
  char msbuf[8];
  snprintf(msbuf, sizeof(msbuf), ".%03d", static_cast<int>(ms));
  out->append("{\"time\":\"").append(iso_prefix).append(msbuf);
  out->append(iso_offset).append("\",\"remote_addr\":");
  AppendJsonString(r.remote_addr, out);
  out->append(",\"user\":");
  AppendJsonStringOrNull(r.user, out);
  out->append(",\"request_method\":");
  AppendJsonString(r.method, out);
  out->append(",\"uri\":");
  AppendJsonString(r.target, out);
  out->append(",\"protocol\":");
  AppendJsonString(r.protocol, out);
  out->append(",\"status\":");
  AppendInt(r.status, out);
  out->append(",\"body_bytes_sent\":");
  AppendUint(r.body_bytes_sent, out);
  out->append(",\"referer\":");
  AppendJsonStringOrNull(r.referer, out);
  out->append(",\"user_agent\":");
  AppendJsonStringOrNull(r.user_agent, out);
}

// The JSON object's timing, model and token fields, and its end.
inline void AppendJsonResponseFields(const AccessRecord& r, std::string* out) {
  out->append(",\"request_time\":");
  AppendSeconds(r.request_time_ns, 3, out);
  out->append(",\"upstream_response_time\":");
  AppendJsonSecondsOrNull(r.upstream_time_ns, 3, out);
  out->append(",\"queue_wait\":");
  AppendJsonSecondsOrNull(r.queue_wait_ns, 3, out);
  out->append(",\"backend\":");
  AppendJsonStringOrNull(r.backend, out);
  out->append(",\"route\":");
  AppendJsonStringOrNull(r.route, out);
  out->append(",\"key\":");
  AppendJsonStringOrNull(r.principal, out);
  out->append(",\"model\":");
  AppendJsonStringOrNull(r.model, out);
  out->append(r.stream ? ",\"stream\":true" : ",\"stream\":false");
  out->append(",\"ttft\":");
  AppendJsonSecondsOrNull(r.ttft_ns, 6, out);
  out->append(",\"gap_p50\":");
  AppendJsonSecondsOrNull(r.gap_p50_ns, 6, out);
  out->append(",\"gap_max\":");
  AppendJsonSecondsOrNull(r.gap_max_ns, 6, out);
  out->append(",\"prompt_tokens\":");
  AppendJsonIntOrNull(r.prompt_tokens, out);
  out->append(",\"completion_tokens\":");
  AppendJsonIntOrNull(r.completion_tokens, out);
  out->append(r.cancelled ? ",\"cancelled\":true" : ",\"cancelled\":false");
  out->append(",\"worker\":");
  AppendInt(r.worker, out);
  out->append(",\"connection\":");
  AppendUint(r.connection, out);
  out->append("}\n");
}

}  // namespace

void AccessLogFormatter::Append(const AccessRecord& r, std::string* out) {
  const int64_t second = FloorDiv(r.start_unix_ns, 1000000000);
  if (second != cached_second_) {
    FormatLocalTime(second, &cached_nginx_time_, &cached_iso_prefix_, &cached_iso_offset_);
    cached_second_ = second;
  }
  if (format_ == AccessLogFormat::kNginx) {
    // nginx's "combined" format with rt= and urt= added.
    AppendNginxField(r.remote_addr, /*escape_space=*/true, out);
    out->append(" - ");
    AppendNginxField(r.user, /*escape_space=*/true, out);
    out->append(" [").append(cached_nginx_time_).append("] \"");
    AppendNginxField(r.method, /*escape_space=*/true, out);
    out->push_back(' ');
    AppendNginxField(r.target, /*escape_space=*/true, out);
    out->push_back(' ');
    AppendNginxField(r.protocol, /*escape_space=*/true, out);
    out->append("\" ");
    AppendInt(r.status, out);
    out->push_back(' ');
    AppendUint(r.body_bytes_sent, out);
    out->append(" \"");
    AppendNginxField(r.referer, /*escape_space=*/false, out);
    out->append("\" \"");
    AppendNginxField(r.user_agent, /*escape_space=*/false, out);
    out->append("\" rt=");
    AppendSeconds(r.request_time_ns, 3, out);
    out->append(" urt=");
    if (r.upstream_time_ns < 0) {
      out->push_back('-');
    } else {
      AppendSeconds(r.upstream_time_ns, 3, out);
    }
    if (!r.backend.empty()) {
      // With several backends: which one (nginx's $upstream_addr).
      out->append(" ua=");
      AppendNginxField(r.backend, /*escape_space=*/true, out);
    }
    if (r.queue_wait_ns >= 0) {
      out->append(" qw=");
      AppendSeconds(r.queue_wait_ns, 3, out);
    }
    out->push_back('\n');
    return;
  }
  AppendJsonRequestFields(r, second, cached_iso_prefix_, cached_iso_offset_, out);
  AppendJsonResponseFields(r, out);
}

}  // namespace sluice::core
