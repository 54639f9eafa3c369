#include "core/proxy/internal_endpoints.h"

#include <optional>
#include <string>

#include "core/observe/observability.h"
#include "gtest/gtest.h"

namespace sluice::core {
namespace {

http::RequestHead Head(std::string method, std::string target) {
  http::RequestHead h;
  h.method = std::move(method);
  h.target = std::move(target);
  return h;
}

// Which requests the downstream sessions hand to the internal endpoints
// instead of a relay: the exact path (any query, any method: a wrong
// method is answered 405 there, not proxied).
TEST(InternalEndpointMatchTest, PathDecidesBeforeAnyRelay) {
  using Kind = InternalEndpoint::Kind;
  Observability obs;  // /status and /metrics, metrics on
  struct Case {
    std::string method;
    std::string target;
    std::optional<Kind> kind;
  } cases[] = {
      {"GET", "/status", Kind::kStatus},      {"GET", "/status?full=1", Kind::kStatus},
      {"POST", "/status", Kind::kStatus},     {"GET", "/metrics", Kind::kMetrics},
      {"HEAD", "/metrics?x", Kind::kMetrics}, {"GET", "/status/", std::nullopt},
      {"GET", "/statusx", std::nullopt},      {"GET", "/api/tags", std::nullopt},
      {"OPTIONS", "*", std::nullopt},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(InternalEndpoint::Match(obs, Head(c.method, c.target)), c.kind)
        << c.method << " " << c.target;
  }

  // --metrics=off: /metrics goes upstream like any path; an empty path
  // serves nothing.
  obs.metrics = false;
  EXPECT_EQ(InternalEndpoint::Match(obs, Head("GET", "/metrics")), std::nullopt);
  obs.status_path.clear();
  EXPECT_EQ(InternalEndpoint::Match(obs, Head("GET", "/status")), std::nullopt);
  EXPECT_EQ(InternalEndpoint::Match(obs, Head("GET", "")), std::nullopt);
}

}  // namespace
}  // namespace sluice::core
