#pragma once

// Request path normalisation: one form to forward to Ollama, one to match
// route rules against. The match form is at least as decoded as what Ollama
// (Go net/url + gin) routes on, so a rule that denies "/api/delete" cannot
// be passed by spelling the path differently ("/api/%64elete",
// "/api%2Fdelete", "/API/./delete/").

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sluice::policy {

// The two forms of one request target.
struct NormalizedPath {
  // What is sent upstream: escapes of unreserved characters (ALPHA DIGIT
  // "-" "." "_" "~") decoded, every other escape kept with uppercase hex,
  // dot segments removed (RFC 3986 5.2.4), runs of "/" merged, case kept,
  // then the query ("?" and everything after it) unchanged.
  std::string forward;
  // What rules compare against: the forward path fully percent-decoded
  // (%2F becomes a separator), dot segments removed and slashes merged again,
  // ASCII-lowercased, no trailing "/" (except the root "/"), no query.
  std::string match;
};

// Normalises an origin-form request target ("/path?query"); "*" (OPTIONS)
// comes back unchanged in both fields. Returns InvalidArgumentError, with a
// message fit for a 400 body ("bad request path: ..."), when the target does
// not start with "/", holds a raw space, control byte (< 0x20, 0x7F) or "#",
// has a malformed escape ("%G1", "%4" at the end), an escape that decodes to
// a control byte, a backslash in the path (raw or escaped: a Windows-style
// separator is a known bypass shape), or a ".." that climbs above the root.
// The query is forwarded as is; only its raw control bytes are refused.
absl::StatusOr<NormalizedPath> NormalizePath(absl::string_view target);

// Whether a rule's path pattern covers a path in `match` form. The pattern is
// written like a match path (lowercase, normalised). "/api/delete" covers
// "/api/delete" and everything under "/api/delete/", but not
// "/api/deletex". A pattern ending in "*" ("/v1/*", "/api/blob*") is a plain
// prefix match on what precedes the "*". "/" and "*" cover every path.
bool PathMatches(absl::string_view pattern, absl::string_view match_path);

}  // namespace sluice::policy
