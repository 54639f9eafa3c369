// Fuzzes policy::NormalizePath and policy::PathMatches (policy/path.h), the
// path forms the route rules are checked against.
//
// Input: "PATTERN\nTARGET", or just TARGET (then a few built-in patterns).
//
// Checks only what path.h documents:
//  - "*" comes back unchanged; anything else normalised starts with "/" in
//    both forms;
//  - the forward form is already normal: normalising it again succeeds and
//    gives the same forward form and the same match form (match is defined
//    as a function of the forward path);
//  - the match form is lowercase ASCII, has no empty, "." or ".." segment
//    and no trailing "/" except the root "/";
//  - a match path covers itself, "/" and "*" cover every path, and PATTERN*
//    covers every path that starts with PATTERN.

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "fuzz_util.h"
#include "policy/path.h"

namespace sluice::fuzz {
namespace {

using policy::NormalizedPath;
using policy::NormalizePath;
using policy::PathMatches;

void CheckMatchForm(const std::string& m) {
  FUZZ_CHECK(!m.empty() && m[0] == '/', "match does not start with /");
  FUZZ_CHECK(m == "/" || m.back() != '/', "match has a trailing /");
  for (char c : m) FUZZ_CHECK(!(c >= 'A' && c <= 'Z'), "match not lowercase");
  size_t i = 0;
  while (i < m.size() && m != "/") {
    size_t end = m.find('/', i + 1);
    if (end == std::string::npos) end = m.size();
    absl::string_view seg = absl::string_view(m).substr(i + 1, end - i - 1);
    FUZZ_CHECK(!seg.empty(), "empty segment in match");
    FUZZ_CHECK(seg != "." && seg != "..", "dot segment in match");
    i = end;
  }
}

void CheckForwardPath(absl::string_view forward) {
  absl::string_view path = forward.substr(0, forward.find('?'));
  FUZZ_CHECK(!path.empty() && path[0] == '/', "forward does not start with /");
  FUZZ_CHECK(path.find("//") == absl::string_view::npos, "runs of / in forward");
}

void CheckTarget(absl::string_view target) {
  absl::StatusOr<NormalizedPath> n = NormalizePath(target);
  if (!n.ok()) {
    FUZZ_CHECK(n.status().code() == absl::StatusCode::kInvalidArgument, "odd error code");
    return;
  }
  if (target == "*") {
    FUZZ_CHECK(n->forward == "*" && n->match == "*", "* changed");
    return;
  }
  CheckForwardPath(n->forward);
  CheckMatchForm(n->match);

  absl::StatusOr<NormalizedPath> again = NormalizePath(n->forward);
  FUZZ_CHECK(again.ok(), "the forward form is refused");
  FUZZ_CHECK(again->forward == n->forward, "forward form not a fixed point");
  FUZZ_CHECK(again->match == n->match, "match form changed on re-normalising");

  const std::string& m = n->match;
  FUZZ_CHECK(PathMatches(m, m), "a match path does not cover itself");
  FUZZ_CHECK(PathMatches("/", m), "/ does not cover everything");
  FUZZ_CHECK(PathMatches("*", m), "* does not cover everything");
  FUZZ_CHECK(PathMatches(m + "*", m), "PATTERN* does not cover PATTERN");
  if (m.size() > 1) {
    FUZZ_CHECK(PathMatches(m.substr(0, m.size() / 2) + "*", m), "prefix* does not cover");
    FUZZ_CHECK(PathMatches(m, m + "/x"), "a path does not cover what is under it");
    // (A match path ending in "*" reads as a prefix pattern.)
    if (m.back() != '*') FUZZ_CHECK(!PathMatches(m, m + "x"), "a path covers a sibling");
  }
}

}  // namespace
}  // namespace sluice::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::fuzz;
  if (size > 8192) return -1;
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t nl = input.find('\n');
  const absl::string_view target = nl == absl::string_view::npos ? input : input.substr(nl + 1);
  // An exact-size copy, so over-reads are caught.
  const Piece piece(std::string_view(target.data(), target.size()));
  const absl::string_view t(piece.view().data(), piece.size());
  CheckTarget(t);

  absl::StatusOr<sluice::policy::NormalizedPath> n = sluice::policy::NormalizePath(t);
  const absl::string_view match = n.ok() ? absl::string_view(n->match) : t;
  if (nl != absl::string_view::npos) {
    (void)sluice::policy::PathMatches(input.substr(0, nl), match);
  } else {
    for (absl::string_view p : {"/api/delete", "/v1/*", "/api/blob*", "/", "", "*", "/api/"}) {
      (void)sluice::policy::PathMatches(p, match);
    }
  }
  return 0;
}
