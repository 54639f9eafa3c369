#include "policy/route_rules.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "policy/path.h"

namespace sluice::policy {
namespace {

// One name of host=: a DNS name or an address, lowercase, with "*." in
// front for the names below it.
absl::StatusOr<std::string> HostPattern(absl::string_view text) {
  std::string h = absl::AsciiStrToLower(text);
  if (!h.empty() && h.back() == '.') h.pop_back();
  const bool wildcard = absl::StartsWith(h, "*.");
  const absl::string_view name = absl::string_view(h).substr(wildcard ? 2 : 0);
  const bool v6 = absl::StartsWith(name, "[") && absl::EndsWith(name, "]") && name.size() > 2;
  bool ok = !name.empty() && name.size() <= 253 && !(wildcard && v6);
  for (char c : v6 ? name.substr(1, name.size() - 2) : name) {
    ok = ok && (absl::ascii_isalnum(c) || c == '-' || c == '.' || (v6 && c == ':'));
  }
  if (!ok || absl::StrContains(name, "..") || absl::StartsWith(name, ".")) {
    return absl::InvalidArgumentError(
        absl::StrCat("host=", text,
                     ": expected host names without port (a.example.com, *.example.com, "
                     "10.0.0.1, [::1]) separated by commas"));
  }
  return h;
}

absl::StatusOr<AuthMode> ParseAuthMode(absl::string_view s) {
  if (s == "key") return AuthMode::kKey;
  if (s == "basic") return AuthMode::kBasic;
  if (s == "key_or_basic") return AuthMode::kKeyOrBasic;
  if (s == "none") return AuthMode::kNone;
  return absl::InvalidArgumentError(
      absl::StrCat("auth=", s, ": use key, basic, key_or_basic or none"));
}

// One key=value option of a route rule.
absl::Status ApplyRouteOption(absl::string_view w, Route* r, RouteRefs* refs) {
  size_t eq = w.find('=');
  if (eq == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("\"", w, "\": expected key=value"));
  }
  absl::string_view key = w.substr(0, eq), value = w.substr(eq + 1);
  if (key == "zone") {
    refs->zone = std::string(value);
  } else if (key == "upstream") {
    if (!ValidName(value)) {
      return absl::InvalidArgumentError(absl::StrCat("upstream=", value, ": not a name"));
    }
    refs->upstream = std::string(value);
  } else if (key == "host") {
    for (absl::string_view one : absl::StrSplit(value, ',')) {
      absl::StatusOr<std::string> h = HostPattern(one);
      if (!h.ok()) return h.status();
      r->hosts.push_back(*std::move(h));
    }
  } else if (key == "auth") {
    absl::StatusOr<AuthMode> mode = ParseAuthMode(value);
    if (!mode.ok()) return mode.status();
    r->auth = *mode;
  } else if (key == "allow_ip" || key == "deny_ip") {
    absl::StatusOr<IpSet> set = IpSet::Parse(value);
    if (!set.ok()) return set.status();
    (key == "allow_ip" ? r->allow_ip : r->deny_ip) = *std::move(set);
  } else if (key == "max_per_ip" || key == "max_per_key") {
    uint32_t n = 0;
    if (!absl::SimpleAtoi(value, &n)) {
      return absl::InvalidArgumentError(absl::StrCat("\"", w, "\": not a count"));
    }
    (key == "max_per_ip" ? r->max_per_ip : r->max_per_credential) = n;
  } else if (key == "group") {
    r->group = std::string(value);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("\"", key, "\": unknown route option"));
  }
  return absl::OkStatus();
}

}  // namespace

bool ValidName(absl::string_view name) {
  return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
    return absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.';
  });
}

absl::StatusOr<std::string> RoutePattern(absl::string_view pattern) {
  if (!absl::StartsWith(pattern, "/")) {
    return absl::InvalidArgumentError("a route pattern starts with /");
  }
  const bool star = absl::EndsWith(pattern, "*");
  absl::StatusOr<NormalizedPath> norm =
      NormalizePath(star ? pattern.substr(0, pattern.size() - 1) : pattern);
  if (!norm.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("bad pattern: ", norm.status().message()));
  }
  std::string out = norm->match;
  if (star) {
    // Keep a trailing slash the author wrote before the '*'.
    if (pattern.size() >= 2 && pattern[pattern.size() - 2] == '/' && out != "/") {
      out += '/';
    }
    out += '*';
  }
  return out;
}

absl::Status ParseRouteLine(const std::vector<absl::string_view>& words, Route* r,
                            RouteRefs* refs) {
  if (words.size() < 3) {
    return absl::InvalidArgumentError("route PATTERN allow|deny|admin [options]");
  }
  absl::StatusOr<std::string> pattern = RoutePattern(words[1]);
  if (!pattern.ok()) return pattern.status();
  r->pattern = *std::move(pattern);
  if (words[2] == "allow") {
    r->action = RouteAction::kAllow;
  } else if (words[2] == "deny") {
    r->action = RouteAction::kDeny;
  } else if (words[2] == "admin") {
    r->action = RouteAction::kAdmin;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("\"", words[2], "\": use allow, deny or admin"));
  }
  for (size_t i = 3; i < words.size(); ++i) {
    absl::Status st = ApplyRouteOption(words[i], r, refs);
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

std::string MatchHost(absl::string_view authority) {
  absl::string_view h = authority;
  if (absl::StartsWith(h, "[")) {
    const size_t close = h.find(']');
    h = close == absl::string_view::npos ? h : h.substr(0, close + 1);
  } else if (const size_t colon = h.rfind(':'); colon != absl::string_view::npos) {
    h = h.substr(0, colon);
  }
  std::string out = absl::AsciiStrToLower(h);
  if (!out.empty() && out.back() == '.') out.pop_back();
  return out;
}

bool HostMatches(const std::vector<std::string>& patterns, absl::string_view host) {
  for (const std::string& p : patterns) {
    if (absl::StartsWith(p, "*.")) {
      // ".example.com" must end the host, with a label before it.
      const absl::string_view suffix = absl::string_view(p).substr(1);
      if (host.size() > suffix.size() && absl::EndsWith(host, suffix)) return true;
    } else if (host == p) {
      return true;
    }
  }
  return false;
}

}  // namespace sluice::policy
