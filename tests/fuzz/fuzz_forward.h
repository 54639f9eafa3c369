#pragma once

// The request head sluice forwards upstream, as the request-codec targets
// (HTTP/1.1 and HTTP/2 in) check it.

#include <cstdio>
#include <string>

#include "absl/status/statusor.h"
#include "fuzz_util.h"
#include "http/serialize.h"
#include "policy/path.h"

namespace sluice::fuzz {

// Serialises `head`, received over `scheme`, as core/proxy/relay.cc forwards it:
// its target replaced by the normalised forward form (a target NormalizePath
// refuses is answered 400 and never forwarded: false). Aborts when `out` is
// not a well-formed HTTP/1.1 head (HeadProblem): field values HTTP/1.1
// cannot carry would split or smuggle there.
inline bool ForwardHead(http::RequestHead* head, const char* scheme, std::string* out) {
  if (head->target != "*") {
    absl::StatusOr<policy::NormalizedPath> path = policy::NormalizePath(head->target);
    if (!path.ok()) return false;
    head->target = path->forward;
  }
  const http::ForwardContext ctx{"192.0.2.7", scheme, "127.0.0.1:11434", "198.51.100.1"};
  http::AppendUpstreamRequestHead(*head, ctx, out);
  if (const char* problem = HeadProblem(*out); *problem != '\0') {
    std::fprintf(stderr, "forwarded head:\n%s\n", out->c_str());
    FUZZ_CHECK(false, problem);
  }
  return true;
}

}  // namespace sluice::fuzz
