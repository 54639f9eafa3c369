#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/server/config.h"
#include "core/upstream/resolver.h"
#include "policy/policy.h"

namespace sluice::core {

// An `upstream` of the rules file as the workers reach it: its backends
// (no health checks, no models: the passive circuit of each pool) and
// how one is picked. Shared by the workers through the policy snapshot;
// each worker makes its own BackendSet of it on first use
// (Shard::NamedBackends).
struct NamedBackends final : policy::UpstreamTarget {
  std::vector<BackendConfig> backends;
  Balance balance = Balance::kRoundRobin;
};

// The words of an `upstream` line after its name:
// "[balance=round_robin|least_conn] ADDRESS [name=N] [weight=N][, ...]",
// addresses as --upstream takes them (DNS names are resolved when the
// file is read, at start and on SIGHUP, and again by the Resolver every
// --resolve_interval and after a connect failure). policy::PolicyOptions'
// parse_upstream.
absl::StatusOr<std::shared_ptr<const policy::UpstreamTarget>> ParseNamedUpstream(
    absl::string_view spec);

// The DNS names of `policy`'s upstreams, for the Resolver to re-resolve.
std::vector<Resolver::OtherName> NamedUpstreamNames(const policy::Policy& policy);

}  // namespace sluice::core
