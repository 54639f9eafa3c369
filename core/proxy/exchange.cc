#include "core/proxy/exchange.h"

#include <optional>

#include "core/observe/observability.h"
#include "core/proxy/aggregate.h"
#include "core/proxy/internal_endpoints.h"
#include "core/proxy/relay.h"
#include "core/server/shard.h"
#include "core/upstream/backend_set.h"

namespace sluice::core {

std::unique_ptr<Exchange> NewExchange(Shard* shard, Downstream* downstream, http::RequestHead head,
                                      ClientInfo client) {
  if (std::optional<InternalEndpoint::Kind> kind = InternalEndpoint::Match(shard->obs(), head)) {
    return std::make_unique<InternalEndpoint>(shard, downstream, std::move(head), std::move(client),
                                              *kind);
  }
  // A route to a rules-file upstream is that application's, whatever its
  // path: only the relay serves it.
  const policy::Policy& policy = *shard->policy();
  const policy::Route* route =
      policy.has_upstream_routes() ? policy.FindRoute(head.host, head.target) : nullptr;
  if (route != nullptr && route->upstream >= 0) {
    return std::make_unique<Relay>(shard, downstream, std::move(head), std::move(client));
  }
  if (std::optional<ModelList> list =
          Aggregate::Match(head, shard->backends().size(), policy.restricts_models())) {
    return std::make_unique<Aggregate>(shard, downstream, std::move(head), std::move(client),
                                       *list);
  }
  return std::make_unique<Relay>(shard, downstream, std::move(head), std::move(client));
}

}  // namespace sluice::core
