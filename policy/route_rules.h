#pragma once

// The route lines of the rules file and the host= patterns they may carry
// (internal to policy/: Policy::AddRulesFile reads the file).

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "policy/policy.h"

namespace sluice::policy {

// What a route line names that is resolved once the whole file is read
// (zones and upstreams may be defined after the routes that use them).
struct RouteRefs {
  std::string zone;      // zone=NAME or "off"; empty: the path's default
  std::string upstream;  // upstream=NAME; empty: Ollama
};

// route PATTERN allow|deny|admin [options]: fills *r but its source, and
// the names it refers to.
absl::Status ParseRouteLine(const std::vector<absl::string_view>& words, Route* r, RouteRefs* refs);

// A route rule's PATTERN, normalised as request paths are; a trailing '*'
// (and the '/' written before it) is kept.
absl::StatusOr<std::string> RoutePattern(absl::string_view pattern);

// The host of a request's Host or :authority as routes match it:
// lowercase, without the port and a trailing dot ("Chat.Example.com.:443"
// is "chat.example.com", "[::1]:8080" is "[::1]").
std::string MatchHost(absl::string_view authority);

// Whether `host` (as MatchHost gives it) is one of `patterns`: a name
// equal to it, or "*.example.com" for any name below example.com (not
// example.com itself).
bool HostMatches(const std::vector<std::string>& patterns, absl::string_view host);

// Whether `name` may name an upstream or a route group: 1 to 64 letters,
// digits, '-', '_' or '.'.
bool ValidName(absl::string_view name);

}  // namespace sluice::policy
