#include "core/server/named_upstream.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/server/cli.h"
#include "core/upstream/resolver.h"

namespace sluice::core {

absl::StatusOr<std::shared_ptr<const policy::UpstreamTarget>> ParseNamedUpstream(
    absl::string_view spec) {
  auto target = std::make_shared<NamedBackends>();
  absl::string_view rest = absl::StripLeadingAsciiWhitespace(spec);
  if (absl::ConsumePrefix(&rest, "balance=")) {
    const size_t end = std::min(rest.find_first_of(" \t"), rest.size());
    const absl::string_view mode = rest.substr(0, end);
    if (mode == "round_robin") {
      target->balance = Balance::kRoundRobin;
    } else if (mode == "least_conn") {
      target->balance = Balance::kLeastConn;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("balance=", mode, ": use round_robin or least_conn"));
    }
    rest = rest.substr(end);
  }
  absl::StatusOr<std::vector<BackendConfig>> backends = ParseBackends(rest, "");
  if (!backends.ok()) return backends.status();
  for (const BackendConfig& b : *backends) {
    if (b.slots != kSlotsNotGiven || b.max_loaded != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(b.name, ": slots= and max_loaded= are for Ollama backends (--upstream)"));
    }
  }
  // A DNS name stands for each of its addresses (max_addresses=), as
  // in --upstream; they are not looked up again until the file is.
  ExpandNames(&*backends);
  target->backends = *std::move(backends);
  return std::shared_ptr<const policy::UpstreamTarget>(std::move(target));
}

std::vector<Resolver::OtherName> NamedUpstreamNames(const policy::Policy& policy) {
  std::vector<Resolver::OtherName> out;
  for (const policy::NamedUpstream& u : policy.upstreams()) {
    const auto* target = dynamic_cast<const NamedBackends*>(u.target.get());
    if (target == nullptr) continue;
    for (const BackendConfig& b : target->backends) {
      if (b.dns == nullptr) continue;
      auto it = std::find_if(out.begin(), out.end(),
                             [&b](const Resolver::OtherName& o) { return o.dns == b.dns; });
      if (it == out.end()) {
        out.push_back(Resolver::OtherName{absl::StrCat("upstream ", u.name, " ", b.name), b.dns,
                                          std::vector<std::string>(b.dns->slots(), b.name)});
        it = out.end() - 1;
      }
      if (b.dns_slot < it->slot_names.size()) it->slot_names[b.dns_slot] = b.name;
    }
  }
  return out;
}

}  // namespace sluice::core
