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

namespace sluice::core {
namespace {

// The status page's JSON form: stub_status's numbers and each backend.
TEST(StatusJsonTest, StubNumbersAndBackends) {
  MetricsShard m;
  m.connections_accepted = 10;
  m.connections_handled = 9;
  m.requests = 25;
  m.connections_writing = 1;
  m.connections_waiting = 2;
  m.backends.resize(2);
  m.backends[0].name = "gpu1";
  m.backends[0].loaded = {"a:latest", "q\"x"};
  m.backends[0].requests = 7;
  m.backends[0].routed[0] = 5;
  m.backends[1].name = "gpu2";
  m.backends[1].up = 0;
  EXPECT_EQ(RenderStatusJson(m),
            "{\"active_connections\":3,\"accepts\":10,\"handled\":9,\"requests\":25,"
            "\"reading\":0,\"writing\":1,\"waiting\":2,\"backends\":["
            "{\"name\":\"gpu1\",\"up\":true,\"in_flight\":0,\"requests\":7,\"failures\":0,"
            "\"failovers\":0,\"loaded\":[\"a:latest\",\"q\\\"x\"],"
            "\"routed\":{\"loaded\":5,\"queued\":0,\"spill\":0,\"cold\":0}},"
            "{\"name\":\"gpu2\",\"up\":false,\"in_flight\":0,\"requests\":0,\"failures\":0,"
            "\"failovers\":0,\"loaded\":[],"
            "\"routed\":{\"loaded\":0,\"queued\":0,\"spill\":0,\"cold\":0}}],"
            "\"queues\":[],\"slot_seconds\":{}}\n");
}

// With slot queues: each queue's slots, use and waiters, and the slot time
// per principal.
TEST(StatusJsonTest, QueuesAndSlotSeconds) {
  MetricsShard m;
  m.queues.push_back(QueueGauge{"gpu1", "llama3:8b", 2, 2, 7});
  m.queues.push_back(QueueGauge{"gpu\"2", "m", 1, 0, 0});
  m.AddSlotTime("key:bob", 2'500'000'000);
  m.AddSlotTime("key:alice", 1'000'000);
  const std::string json = RenderStatusJson(m);
  EXPECT_NE(json.find("\"queues\":[{\"backend\":\"gpu1\",\"model\":\"llama3:8b\",\"slots\":2,"
                      "\"in_use\":2,\"waiting\":7},{\"backend\":\"gpu\\\"2\",\"model\":\"m\","
                      "\"slots\":1,\"in_use\":0,\"waiting\":0}],"
                      "\"slot_seconds\":{\"key:alice\":0.001,\"key:bob\":2.500}}\n"),
            std::string::npos)
      << json;
}

}  // namespace
}  // namespace sluice::core
