// Model-aware routing (--balance=model, the default with several backends):
// two simulators in model mode behind one sluice; which backend served
// which model is read from each simulator's per-model counters.
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/integration/h2_frames.h"
#include "tests/integration/json_lite.h"
#include "tests/integration/prom_text.h"
#include "tests/integration/proxy_test_base.h"
#include "tests/integration/timing.h"

namespace sluice::integration {
namespace {

using Headers = std::vector<std::pair<std::string, std::string>>;

// A generation of `tokens` tokens `delay_ms` apart.
std::string Generate(absl::string_view model, int tokens = 2, int delay_ms = 1,
                     const Headers& extra = {}) {
  Headers headers = {{"X-Sim-Tokens", absl::StrCat(tokens)},
                     {"X-Sim-Token-Delay-Ms", absl::StrCat(delay_ms)}};
  headers.insert(headers.end(), extra.begin(), extra.end());
  return BuildRequest("POST", "/api/generate", headers,
                      absl::StrCat(R"({"model":")", model, R"(","prompt":"hi","stream":false})"));
}

class Routing : public ProxyTest {
 protected:
  // Simulators A (sim_a_) and B (sim_) with `sim_args` each, sluice in front
  // with the backends named "a" and "b" and active checks every
  // `health_interval`; returns once both were checked (their models known).
  void StartTwo(const std::vector<std::string>& sim_args, std::vector<std::string> sluice_args,
                const std::string& health_interval = "1s") {
    auto a = StartSim(sim_args);
    ASSERT_TRUE(a.ok()) << a.status();
    sim_a_ = std::move(*a);
    auto b = StartSim(sim_args);
    ASSERT_TRUE(b.ok()) << b.status();
    sim_ = std::move(*b);
    for (int port : {sim_a_->port(), sim_->port()}) {
      for (const std::string& warm : preload_[port == sim_a_->port() ? 0 : 1]) {
        IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, integration::Exchange(port, Generate(warm)));
        ASSERT_EQ(r.status, 200) << r.body;
      }
    }
    sluice_args.push_back(absl::StrCat("--health_interval=", health_interval));
    // slots=0: the routing alone is tested here, sluice queues nothing
    // (the router counts one slot each); the queue's own tests are in
    // fair_queue_test.cc.
    sluice_args.push_back(absl::StrCat("--upstream=127.0.0.1:", sim_a_->port(),
                                       " name=a max_loaded=1 slots=0,127.0.0.1:", sim_->port(),
                                       " name=b max_loaded=1 slots=0"));
    auto sluice = StartSluice(sim_->port(), sluice_args);
    ASSERT_TRUE(sluice.ok()) << sluice.status();
    sluice_ = std::move(*sluice);
    // The first round of checks asks /api/ps and /api/tags of each.
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    for (int port : {sim_a_->port(), sim_->port()}) {
      const int64_t before = static_cast<int64_t>(preload_[port == sim_a_->port() ? 0 : 1].size());
      while (absl::Now() < deadline) {
        absl::StatusOr<SimStats> s = FetchSimStats(port);
        if (s.ok() && s->requests >= before + 2) break;
        absl::SleepFor(absl::Milliseconds(10));
      }
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  void TearDown() override {
    ProxyTest::TearDown();
    if (sim_a_) sim_a_->Terminate();
    sim_a_.reset();
  }

  // A model's counter ("loads", "requests") at a simulator.
  int64_t ModelCount(int port, absl::string_view model, absl::string_view what) {
    absl::StatusOr<HttpResponse> r = integration::Exchange(port, BuildRequest("GET", "/sim/stats"));
    if (!r.ok()) return -1;
    std::optional<JsonValue> json = JsonValue::Parse(r->body);
    if (!json || !json->Get("models")) return -1;
    const JsonValue* m = json->Get("models")->Get(absl::StrCat(model, ":latest"));
    return m ? m->GetInt(what).value_or(-1) : 0;
  }
  int64_t RouteDecisions(absl::string_view kind) {
    auto families = ScrapeMetrics(proxy_port());
    EXPECT_TRUE(families.ok()) << families.status();
    if (!families.ok()) return -1;
    return static_cast<int64_t>(
        FindSample(*families, "sluice_route_decisions_total", {{"kind", std::string(kind)}})
            .value_or(-1));
  }

  std::vector<std::string> preload_[2];
  std::unique_ptr<ChildProcess> sim_a_;
};

// Each model goes to the backend where it is loaded, every time: no load
// beyond the two made before sluice started, where round robin would
// reload on nearly every request.
TEST_F(Routing, GenerationsGoWhereTheirModelIsLoaded) {
  preload_[0] = {"alpha"};
  preload_[1] = {"beta"};
  ASSERT_NO_FATAL_FAILURE(StartTwo({"--models=alpha,beta", "--max_loaded_models=1"}, {}));
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  // Out of step with any rotation over two backends.
  const char* models[] = {"alpha", "alpha",        "beta", "alpha", "beta:latest",
                          "beta",  "alpha:latest", "beta", "alpha", "alpha"};
  for (const char* model : models) {
    IT_ASSERT_OK(conn->Send(Generate(model)));
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse());
    ASSERT_EQ(r.status, 200) << r.body;
  }
  EXPECT_EQ(ModelCount(sim_a_->port(), "alpha", "requests"), 7);
  EXPECT_EQ(ModelCount(sim_a_->port(), "beta", "requests"), 0);
  EXPECT_EQ(ModelCount(sim_->port(), "beta", "requests"), 5);
  EXPECT_EQ(ModelCount(sim_->port(), "alpha", "requests"), 0);
  EXPECT_EQ(ModelCount(sim_a_->port(), "alpha", "loads"), 1);
  EXPECT_EQ(ModelCount(sim_->port(), "beta", "loads"), 1);
  EXPECT_EQ(RouteDecisions("loaded"), 10);
}

// A model no backend lists: 404 as Ollama words it, and no backend sees
// the request. The OpenAI route too.
TEST_F(Routing, UnknownModelIs404) {
  ASSERT_NO_FATAL_FAILURE(StartTwo({"--models=alpha"}, {}));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, integration::Exchange(proxy_port(), Generate("gamma")));
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.body, "{\"error\":\"model 'gamma' not found\"}\n");
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse o,
      integration::Exchange(proxy_port(), BuildRequest("POST", "/v1/chat/completions", {},
                                                       R"({"model":"gpt-4","messages":[]})")));
  EXPECT_EQ(o.status, 404);
  // The OpenAI-compatible routes answer as Ollama's compatibility layer
  // does: OpenAI's error object.
  EXPECT_EQ(o.body,
            "{\"error\":{\"message\":\"model 'gpt-4' not found\",\"type\":\"not_found_error\","
            "\"param\":null,\"code\":null}}\n");
  EXPECT_EQ(o.Header("Content-Type").value_or(""), "application/json");
  EXPECT_EQ(ModelCount(sim_a_->port(), "gamma", "requests"), 0);
  EXPECT_EQ(ModelCount(sim_->port(), "gamma", "requests"), 0);
  EXPECT_EQ(RouteDecisions("not_found"), 2);
}

// The "model" comes in a later piece of a chunked body: the start is held
// until it does, and the whole body reaches the backend that has it loaded.
TEST_F(Routing, ModelInALaterPieceOfTheBody) {
  preload_[1] = {"beta"};
  ASSERT_NO_FATAL_FAILURE(StartTwo({"--models=alpha,beta", "--max_loaded_models=1"}, {}));
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  const std::string first = R"({"prompt":")" + std::string(2000, 'p') + R"(",)";
  const std::string second = R"("model":"beta","stream":false})";
  IT_ASSERT_OK(conn->Send(
      absl::StrCat("POST /api/generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                   "X-Sim-Tokens: 2\r\n\r\n",
                   absl::Hex(first.size()), "\r\n", first, "\r\n")));
  absl::SleepFor(absl::Milliseconds(200));
  IT_ASSERT_OK(conn->Send(absl::StrCat(absl::Hex(second.size()), "\r\n", second, "\r\n0\r\n\r\n")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse());
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(ModelCount(sim_->port(), "beta", "requests"), 2);
  EXPECT_EQ(ModelCount(sim_a_->port(), "beta", "requests"), 0);
}

// Over h2c: the "model" comes in a later DATA frame; the stream is routed
// by it once it arrives, and a second stream reset while its body is held
// leaves nothing behind (the connection and the other stream go on).
TEST_F(Routing, H2BodyRoutedByALaterFrameAndResetWhileHeld) {
  preload_[1] = {"beta"};
  ASSERT_NO_FATAL_FAILURE(StartTwo({"--models=alpha,beta", "--max_loaded_models=1"}, {}));
  IT_ASSERT_OK_AND_ASSIGN(auto h2c, h2::Connection::Connect(proxy_port()));
  IT_ASSERT_OK(h2c->Establish());
  const h2::HeaderList extra = {{"content-type", "application/json"}, {"x-sim-tokens", "2"}};
  for (uint32_t id : {1u, 3u}) {
    IT_ASSERT_OK(h2c->Send(h2::HeadersFrame(
        id, h2::HpackBlock(h2::RequestFields("POST", "/api/generate", extra)), false)));
    IT_ASSERT_OK(
        h2c->Send(h2::DataFrame(id, R"({"prompt":")" + std::string(3000, 'p') + R"(",)", false)));
  }
  absl::SleepFor(absl::Milliseconds(150));
  IT_ASSERT_OK(h2c->Send(h2::RstStreamFrame(3, h2::kCancel)));
  IT_ASSERT_OK(h2c->Send(h2::DataFrame(1, R"("model":"beta","stream":false})", true)));
  h2::ReadOutcome out = h2c->ReadUntilStreamEnd(1, absl::Seconds(5));
  EXPECT_EQ(out.StatusOf(1), 200) << out.Describe();
  EXPECT_EQ(ModelCount(sim_->port(), "beta", "requests"), 2);
  EXPECT_EQ(ModelCount(sim_a_->port(), "beta", "requests"), 0);
  // The connection still serves.
  absl::StatusOr<int> tags = h2c->Get(5, "/api/version");
  ASSERT_TRUE(tags.ok()) << tags.status();
  EXPECT_EQ(*tags, 200);
}

// With its slot busy and a generation taking about a second, a model
// spills onto the other backend, whose loaded model is idle and which
// loads in 100 ms, rather than wait; while it had a free slot it stayed.
TEST_F(Routing, SpillsOverWhenLoadingIsQuickerThanWaiting) {
  ASSERT_NO_FATAL_FAILURE(StartTwo(
      {"--models=alpha,beta", "--max_loaded_models=1", "--num_parallel=1", "--load_ms=100"},
      {"--threads=1"}));
  // alpha loads on one backend (cold: both empty), taking about a second
  // in all; beta loads on the other, which teaches sluice its load time.
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r1,
                          integration::Exchange(proxy_port(), Generate("alpha", 10, 100)));
  ASSERT_EQ(r1.status, 200) << r1.body;
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r2, integration::Exchange(proxy_port(), Generate("beta")));
  ASSERT_EQ(r2.status, 200) << r2.body;
  const bool alpha_on_a = ModelCount(sim_a_->port(), "alpha", "requests") == 1;
  const int alpha_home = alpha_on_a ? sim_a_->port() : sim_->port();
  const int other = alpha_on_a ? sim_->port() : sim_a_->port();
  ASSERT_EQ(ModelCount(other, "beta", "requests"), 1) << "beta went where alpha was not";
  // One long alpha generation holds the slot; the next alpha spills.
  IT_ASSERT_OK_AND_ASSIGN(auto busy, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(busy->Send(Generate("alpha", 20, 100)));
  absl::SleepFor(absl::Milliseconds(200));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r3, integration::Exchange(proxy_port(), Generate("alpha")));
  ASSERT_EQ(r3.status, 200) << r3.body;
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r4, busy->ReadResponse());
  ASSERT_EQ(r4.status, 200) << r4.body;
  EXPECT_EQ(ModelCount(alpha_home, "alpha", "requests"), 2);
  EXPECT_EQ(ModelCount(other, "alpha", "requests"), 1);
  EXPECT_EQ(RouteDecisions("spill"), 1);
  EXPECT_EQ(RouteDecisions("cold"), 2);
}

// Admin routes change one backend: without X-Sluice-Backend they are
// refused with the names to choose from; with it they reach that backend
// only, and the header does not.
TEST_F(Routing, AdminRoutesGoToTheNamedBackend) {
  ASSERT_NO_FATAL_FAILURE(StartTwo({"--models=alpha"}, {}));
  const std::string pull = R"({"model":"alpha","stream":false})";
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse refused,
      integration::Exchange(proxy_port(), BuildRequest("POST", "/api/pull", {}, pull)));
  EXPECT_EQ(refused.status, 400);
  EXPECT_EQ(refused.body,
            "{\"error\":\"/api/pull changes one backend: name it in the X-Sluice-Backend header "
            "(one of: a, b)\"}\n");
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse unknown,
      integration::Exchange(proxy_port(),
                            BuildRequest("POST", "/api/pull", {{"X-Sluice-Backend", "c"}}, pull)));
  EXPECT_EQ(unknown.status, 400);
  EXPECT_TRUE(absl::StrContains(unknown.body, "unknown backend \\\"c\\\"")) << unknown.body;
  IT_ASSERT_OK_AND_ASSIGN(SimStats a_before, FetchSimStats(sim_a_->port()));
  IT_ASSERT_OK_AND_ASSIGN(SimStats b_before, FetchSimStats(sim_->port()));
  for (int i = 0; i < 3; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(
        HttpResponse ok,
        integration::Exchange(
            proxy_port(), BuildRequest("POST", "/api/pull", {{"X-Sluice-Backend", "b"}}, pull)));
    EXPECT_EQ(ok.status, 200) << ok.body;
  }
  IT_ASSERT_OK_AND_ASSIGN(SimStats a_after, FetchSimStats(sim_a_->port()));
  IT_ASSERT_OK_AND_ASSIGN(SimStats b_after, FetchSimStats(sim_->port()));
  // Checks may land meanwhile (one /api/ps a second); pulls only on b.
  EXPECT_LE(a_after.requests - a_before.requests, 2);
  EXPECT_GE(b_after.requests - b_before.requests, 3);
  // The header is the proxy's: the backend never sees it.
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse echo,
      integration::Exchange(
          proxy_port(),
          BuildRequest("POST", "/sim/echo", {{"X-Sluice-Backend", "a"}, {"X-Sluice-Backend", "b"}},
                       "{}")));
  ASSERT_EQ(echo.status, 200) << echo.body;
  EXPECT_FALSE(ContainsIgnoreCase(echo.body, "x-sluice-backend")) << echo.body;
}

// A backend that refuses connections: a model's generations fail over to
// the other backend that has it, body replayed, none lost.
TEST_F(Routing, GenerationsFailOverToABackendWithTheModel) {
  preload_[0] = {"alpha"};
  ASSERT_NO_FATAL_FAILURE(StartTwo({"--models=alpha"}, {"--threads=1"}));
  sim_a_->Terminate();
  for (int i = 0; i < 5; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, integration::Exchange(proxy_port(), Generate("alpha")));
    EXPECT_EQ(r.status, 200) << r.body;
  }
  EXPECT_EQ(ModelCount(sim_->port(), "alpha", "requests"), 5);
}

// What the router did shows per backend: /metrics, the status page's JSON
// form, and the access log's ua= field.
TEST_F(Routing, MetricsStatusAndAccessLogNameTheBackend) {
  preload_[0] = {"alpha"};
  const std::string log = absl::StrCat(::testing::TempDir(), "sluice-routing-", getpid(), ".log");
  unlink(log.c_str());
  ASSERT_NO_FATAL_FAILURE(
      StartTwo({"--models=alpha,beta"}, {"--access_log=" + log, "--access_log_flush=10ms"}));
  for (int i = 0; i < 3; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, integration::Exchange(proxy_port(), Generate("alpha")));
    ASSERT_EQ(r.status, 200) << r.body;
  }
  auto families = ScrapeMetrics(proxy_port());
  ASSERT_TRUE(families.ok()) << families.status();
  EXPECT_EQ(
      FindSample(*families, "sluice_backend_routed_total", {{"backend", "a"}, {"kind", "loaded"}}),
      3);
  EXPECT_EQ(FindSample(*families, "sluice_backend_requests_total", {{"backend", "b"}}), 0);
  EXPECT_EQ(FindSample(*families, "sluice_backend_up", {{"backend", "b"}}), 1);
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse status,
      integration::Exchange(proxy_port(), BuildRequest("GET", "/status?format=json")));
  ASSERT_EQ(status.status, 200) << status.body;
  std::optional<JsonValue> json = JsonValue::Parse(status.body);
  ASSERT_TRUE(json && json->Get("backends")) << status.body;
  ASSERT_EQ(json->Get("backends")->array().size(), 2u) << status.body;
  const JsonValue& a = json->Get("backends")->array()[0];
  EXPECT_EQ(a.GetString("name"), "a");
  EXPECT_EQ(a.GetInt("requests"), 3);
  ASSERT_NE(a.Get("loaded"), nullptr);
  ASSERT_EQ(a.Get("loaded")->array().size(), 1u) << status.body;
  EXPECT_EQ(a.Get("loaded")->array()[0].str(), "alpha:latest");
  // The plain page stays nginx's stub_status.
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse stub,
                          integration::Exchange(proxy_port(), BuildRequest("GET", "/status")));
  EXPECT_TRUE(absl::StartsWith(stub.body, "Active connections: ")) << stub.body;
  std::string text;
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (absl::Now() < deadline) {
    std::ifstream in(log);
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (absl::StrContains(text, "POST /api/generate") && absl::StrContains(text, " ua=a\n")) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(absl::StrContains(text, " ua=a\n")) << text;
  unlink(log.c_str());
}

// Ollama answers 503 "server busy" when its queue is full: the request,
// not yet answered, goes once to another backend with the model, body
// replayed; the client never sees the 503.
TEST_F(Routing, BusyBackendFailsOverBeforeAnswering) {
  preload_[0] = {"alpha"};
  ASSERT_NO_FATAL_FAILURE(
      StartTwo({"--models=alpha", "--num_parallel=1", "--max_queue=1"}, {"--threads=1"}));
  // Others fill A's slot and queue behind sluice's back.
  std::vector<std::unique_ptr<HttpConnection>> direct;
  for (int i = 0; i < 2; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(auto c, HttpConnection::Connect(sim_a_->port()));
    IT_ASSERT_OK(c->Send(Generate("alpha", 20, 100)));
    direct.push_back(std::move(c));
  }
  absl::SleepFor(absl::Milliseconds(100));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, integration::Exchange(proxy_port(), Generate("alpha")));
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(ModelCount(sim_->port(), "alpha", "requests"), 1);
  auto families = ScrapeMetrics(proxy_port());
  ASSERT_TRUE(families.ok()) << families.status();
  EXPECT_EQ(FindSample(*families, "sluice_upstream_failovers_total", {}).value_or(-1), 1);
}

// A routed generation's body is kept for a failover up to 1 MiB (not
// 64 KiB): a 600 KiB prompt refused busy by A reaches B whole; past the
// bound (1.5 MiB) it is not replayed, and the client gets A's 503.
TEST_F(Routing, BusyBackendFailsOverWithALargeBodyUpToTheBound) {
  preload_[0] = {"alpha"};
  ASSERT_NO_FATAL_FAILURE(
      StartTwo({"--models=alpha", "--num_parallel=1", "--max_queue=1"}, {"--threads=1"}));
  std::vector<std::unique_ptr<HttpConnection>> direct;
  for (int i = 0; i < 2; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(auto c, HttpConnection::Connect(sim_a_->port()));
    IT_ASSERT_OK(c->Send(Generate("alpha", 40, 100)));
    direct.push_back(std::move(c));
  }
  absl::SleepFor(absl::Milliseconds(100));
  auto request = [](size_t prompt_bytes) {
    return BuildRequest("POST", "/api/generate", {{"X-Sim-Tokens", "2"}},
                        absl::StrCat(R"({"model":"alpha","prompt":")",
                                     std::string(prompt_bytes, 'p'), R"(","stream":false})"));
  };
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, integration::Exchange(proxy_port(), request(600 * 1024)));
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(ModelCount(sim_->port(), "alpha", "requests"), 1);
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse big,
                          integration::Exchange(proxy_port(), request(1536 * 1024)));
  EXPECT_EQ(big.status, 503) << big.body;
  EXPECT_EQ(ModelCount(sim_->port(), "alpha", "requests"), 1);
}

// kill -9 of a backend under load. The stream it was sending ends cut
// short (no last chunk), the other backend's stream completes; the
// generations that come next fail over to the other backend that has the
// model and none is lost; once the killed backend is back (it passes a
// check) it is used again.
TEST_F(Routing, KilledBackendUnderLoad) {
  preload_[0] = {"alpha"};
  preload_[1] = {"alpha"};
  const std::vector<std::string> sim_args = {"--models=alpha,beta", "--max_loaded_models=1"};
  ASSERT_NO_FATAL_FAILURE(
      StartTwo(sim_args, {"--threads=1", "--upstream_fail_timeout=1s"}, "200ms"));
  const int port_a = sim_a_->port();
  const std::string stream = BuildRequest("POST", "/api/generate",
                                          {{"X-Sim-Tokens", "40"}, {"X-Sim-Token-Delay-Ms", "50"}},
                                          R"({"model":"alpha","prompt":"hi"})");
  std::vector<std::unique_ptr<HttpConnection>> streams;
  std::vector<HttpResponse> heads;
  for (int i = 0; i < 2; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(auto c, HttpConnection::Connect(proxy_port()));
    IT_ASSERT_OK(c->Send(stream));
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse head, c->ReadHead(absl::Seconds(5)));
    ASSERT_EQ(head.status, 200);
    streams.push_back(std::move(c));
    heads.push_back(std::move(head));
  }
  // One stream on each backend (each has one slot and the model loaded).
  ASSERT_EQ(ModelCount(port_a, "alpha", "requests"), 2);
  ASSERT_EQ(ModelCount(sim_->port(), "alpha", "requests"), 2);
  sim_a_->Signal(SIGKILL);
  int complete = 0;
  int cut = 0;
  for (size_t i = 0; i < streams.size(); ++i) {
    HttpResponse& r = heads[i];
    absl::Status st = streams[i]->ReadBody(&r, absl::Seconds(10));
    if (st.ok() && r.saw_last_chunk && absl::StrContains(r.body, "\"done\":true")) {
      ++complete;
    } else {
      ++cut;
    }
  }
  EXPECT_EQ(complete, 1);
  EXPECT_EQ(cut, 1);
  for (int i = 0; i < 6; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, integration::Exchange(proxy_port(), Generate("alpha")));
    EXPECT_EQ(r.status, 200) << r.body;
  }
  EXPECT_EQ(ModelCount(sim_->port(), "alpha", "requests"), 8);
  // Back, with nothing loaded: beta goes where it evicts nothing.
  auto a = StartSim({absl::StrCat("--listen=127.0.0.1:", port_a), sim_args[0], sim_args[1]});
  ASSERT_TRUE(a.ok()) << a.status();
  sim_a_ = std::move(*a);
  absl::SleepFor(absl::Milliseconds(1500));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse beta, integration::Exchange(proxy_port(), Generate("beta")));
  EXPECT_EQ(beta.status, 200) << beta.body;
  EXPECT_EQ(ModelCount(port_a, "beta", "requests"), 1) << "back in use";
  EXPECT_EQ(ModelCount(sim_->port(), "beta", "requests"), 0);
}

// The "model" after the first 64 KiB of the body (a long prompt first):
// the request is not refused but goes by the documented fallback,
// least_conn, not by its model; a body over 64 KiB whose "model" comes
// first goes by its model. Over HTTP/1.1 and over h2c (curl, which keeps
// to sluice's flow-control windows). A generation pinned to B keeps one
// request in flight there, so least_conn's choice is A while the model is
// loaded on B only.
TEST_F(Routing, ModelPastThePeekGoesByLeastConn) {
  preload_[1] = {"beta"};
  ASSERT_NO_FATAL_FAILURE(
      StartTwo({"--models=alpha,beta", "--max_loaded_models=1"}, {"--threads=1"}));
  IT_ASSERT_OK_AND_ASSIGN(auto hold, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(hold->Send(BuildRequest(
      "POST", "/api/generate",
      {{"X-Sluice-Backend", "b"}, {"X-Sim-Tokens", "100"}, {"X-Sim-Token-Delay-Ms", "50"}},
      R"({"model":"beta","prompt":"hold"})")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse hold_head, hold->ReadHead(absl::Seconds(5)));
  ASSERT_EQ(hold_head.status, 200);
  ASSERT_EQ(ModelCount(sim_->port(), "beta", "requests"), 2);
  const std::string prompt(200 * 1024, 'p');
  const std::string early_body =
      absl::StrCat(R"({"model":"beta","prompt":")", prompt, R"(","stream":false})");
  const std::string late_body =
      absl::StrCat(R"({"prompt":")", prompt, R"(","model":"beta","stream":false})");
  const Headers quick = {{"X-Sim-Tokens", "2"}, {"X-Sim-Token-Delay-Ms", "1"}};
  auto over_h1 = [&](const std::string& body) {
    IT_ASSERT_OK_AND_ASSIGN(
        HttpResponse r,
        integration::Exchange(proxy_port(), BuildRequest("POST", "/api/generate", quick, body)));
    EXPECT_EQ(r.status, 200) << r.body.substr(0, 200);
    EXPECT_TRUE(absl::StrContains(r.body, "\"done\":true")) << r.body.substr(0, 200);
  };
  const std::string file = absl::StrCat(::testing::TempDir(), "sluice-peek-", getpid(), ".json");
  auto over_h2 = [&](const std::string& body) {
    {
      std::ofstream out(file, std::ios::binary | std::ios::trunc);
      out << body;
    }
    CommandResult r = RunShell(
        absl::StrCat("curl -s --http2-prior-knowledge --max-time 10 -w '\\n%{http_version} "
                     "%{http_code}' -H 'Content-Type: application/json' -H 'X-Sim-Tokens: 2' "
                     "-H 'X-Sim-Token-Delay-Ms: 1' --data-binary @",
                     ShellQuote(file), " ", proxy_url(), "/api/generate"),
        absl::Seconds(15));
    EXPECT_TRUE(absl::EndsWith(r.out, "\n2 200")) << r.out.substr(0, 200) << r.err;
    EXPECT_TRUE(absl::StrContains(r.out, "\"done\":true")) << r.out.substr(0, 200);
  };
  // "model" first, 200 KiB after it: routed by model, to B.
  ASSERT_NO_FATAL_FAILURE(over_h1(early_body));
  ASSERT_NO_FATAL_FAILURE(over_h2(early_body));
  EXPECT_EQ(ModelCount(sim_->port(), "beta", "requests"), 4);
  EXPECT_EQ(ModelCount(sim_a_->port(), "beta", "requests"), 0);
  EXPECT_EQ(RouteDecisions("loaded"), 2);
  // "model" 200 KiB in: not refused, sent by least_conn to A (B has the
  // pinned generation in flight), which loads beta for it.
  ASSERT_NO_FATAL_FAILURE(over_h1(late_body));
  ASSERT_NO_FATAL_FAILURE(over_h2(late_body));
  unlink(file.c_str());
  EXPECT_EQ(ModelCount(sim_a_->port(), "beta", "requests"), 2);
  EXPECT_EQ(ModelCount(sim_a_->port(), "beta", "loads"), 1);
  EXPECT_EQ(ModelCount(sim_->port(), "beta", "requests"), 4);
  // Routed by --balance's fallback, not by model: no routing decision.
  EXPECT_EQ(RouteDecisions("loaded") + RouteDecisions("cold") + RouteDecisions("spill") +
                RouteDecisions("queued"),
            2);
  // The pinned generation was in flight all along.
  IT_ASSERT_OK_AND_ASSIGN(Chunk next, hold->ReadChunk(absl::Seconds(5)));
  EXPECT_FALSE(next.data.empty()) << "the pinned generation ended before the test did";
  hold->Close();
}

// How each HTTP/2 stream of one connection ended, as read by ReadStreams.
struct H2StreamEnd {
  int status = 0;                 // the final :status, 0 before HEADERS
  bool end_stream = false;        // ended with END_STREAM
  std::optional<uint32_t> reset;  // ended with RST_STREAM and this code
  absl::Time reset_at;
  std::string body;  // DATA payloads, concatenated
  bool ended() const { return end_stream || reset.has_value(); }
};

// Reads frames of `c` into `*streams` until `done(*streams)`, a GOAWAY, the
// end of the connection, or `timeout`; false on the last three.
template <typename Done>
bool ReadStreams(h2::Connection* c, std::map<uint32_t, H2StreamEnd>* streams, Done done,
                 absl::Duration timeout, std::string* trace) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done(*streams)) {
    absl::StatusOr<h2::Frame> f = c->ReadFrame(deadline - absl::Now());
    if (!f.ok()) {
      absl::StrAppend(trace, "read: ", f.status().message(), "\n");
      return false;
    }
    if (f->type == h2::kGoaway) {
      absl::StrAppend(trace, f->Describe(), "\n");
      return false;
    }
    auto it = streams->find(f->stream_id);
    if (it == streams->end()) continue;
    H2StreamEnd& s = it->second;
    if (f->type == h2::kHeaders && f->Status() >= 200) s.status = f->Status();
    if (f->type == h2::kData) s.body += f->payload;
    if ((f->type == h2::kData || f->type == h2::kHeaders) && (f->flags & h2::kFlagEndStream)) {
      s.end_stream = true;
    }
    if (f->type == h2::kRstStream) {
      s.reset = f->ErrorCode();
      s.reset_at = f->arrival;
    }
  }
  return true;
}

// An h2c POST /api/generate of `model` on stream `id`.
std::string H2Generate(uint32_t id, absl::string_view model, int tokens, int delay_ms) {
  const h2::HeaderList fields = {{"content-type", "application/json"},
                                 {"x-sim-tokens", absl::StrCat(tokens)},
                                 {"x-sim-token-delay-ms", absl::StrCat(delay_ms)}};
  return h2::HeadersFrame(id, h2::HpackBlock(h2::RequestFields("POST", "/api/generate", fields)),
                          false) +
         h2::DataFrame(id, absl::StrCat(R"({"model":")", model, R"(","prompt":"hi"})"), true);
}

// kill -9 of a backend under load over h2c, several streams on one
// connection (Routing.KilledBackendUnderLoad over HTTP/1.1). The streams the
// killed backend was sending end with RST_STREAM(INTERNAL_ERROR) after
// their 200 HEADERS and some DATA (RELIABILITY.md, "upstream resets
// mid-stream"), within 2 s; the other backend's streams complete; the
// connection carries on. Generations sent right after the kill, some over
// a keepalive link to the dead backend, fail over to the other backend that
// has the model and none is lost; once the killed backend is back (it
// passes a check) it is used again, on the same connection.
TEST_F(Routing, KilledBackendUnderLoadOverH2) {
  preload_[0] = {"alpha"};
  preload_[1] = {"alpha"};
  const std::vector<std::string> sim_args = {"--models=alpha,beta", "--max_loaded_models=1"};
  ASSERT_NO_FATAL_FAILURE(
      StartTwo(sim_args, {"--threads=1", "--upstream_fail_timeout=1s"}, "200ms"));
  const int port_a = sim_a_->port();
  IT_ASSERT_OK_AND_ASSIGN(auto c, h2::Connection::Connect(proxy_port()));
  IT_ASSERT_OK(c->Establish({{h2::kSettingsInitialWindowSize, 1u << 30}}));
  IT_ASSERT_OK(c->Send(h2::WindowUpdateFrame(0, (1u << 30) - 65535)));
  std::map<uint32_t, H2StreamEnd> streams;
  std::string trace;
  auto all_ended = [](const std::map<uint32_t, H2StreamEnd>& m) {
    for (const auto& [id, s] : m) {
      if (!s.ended()) return false;
    }
    return true;
  };
  // One request pinned to each backend leaves an idle keepalive link to
  // both in the worker's pools.
  uint32_t id = 1;
  for (const char* backend : {"a", "b"}) {
    streams[id] = {};
    IT_ASSERT_OK(c->Send(h2::HeadersFrame(
        id,
        h2::HpackBlock(h2::RequestFields("GET", "/api/version", {{"x-sluice-backend", backend}})),
        true)));
    id += 2;
  }
  ASSERT_TRUE(ReadStreams(c.get(), &streams, all_ended, absl::Seconds(5), &trace)) << trace;
  for (const auto& [sid, s] : streams) ASSERT_EQ(s.status, 200) << "stream " << sid;
  streams.clear();
  // Four long streams: one backend cannot hold them all (the router counts
  // one slot each).
  std::set<uint32_t> long_ids;
  for (int i = 0; i < 4; ++i, id += 2) {
    long_ids.insert(id);
    streams[id] = {};
    IT_ASSERT_OK(c->Send(H2Generate(id, "alpha", 40, 50)));
  }
  auto all_started = [](const std::map<uint32_t, H2StreamEnd>& m) {
    for (const auto& [sid, s] : m) {
      if (s.status == 0 || s.body.empty()) return false;
    }
    return true;
  };
  ASSERT_TRUE(ReadStreams(c.get(), &streams, all_started, absl::Seconds(5), &trace)) << trace;
  const int64_t on_a = ModelCount(port_a, "alpha", "requests") - 1;
  const int64_t on_b = ModelCount(sim_->port(), "alpha", "requests") - 1;
  ASSERT_GE(on_a, 1);
  ASSERT_GE(on_b, 1);
  ASSERT_EQ(on_a + on_b, 4);
  const absl::Time killed = absl::Now();
  sim_a_->Signal(SIGKILL);
  ASSERT_TRUE(sim_a_->WaitExit(absl::Seconds(5)).has_value());
  // Generations not started yet: every one is answered, by B.
  std::set<uint32_t> new_ids;
  std::string batch;
  for (int i = 0; i < 8; ++i, id += 2) {
    new_ids.insert(id);
    streams[id] = {};
    batch += H2Generate(id, "alpha", 2, 1);
  }
  IT_ASSERT_OK(c->Send(batch));
  ASSERT_TRUE(ReadStreams(c.get(), &streams, all_ended, absl::Seconds(10), &trace)) << trace;
  int complete = 0;
  int cut = 0;
  for (uint32_t sid : long_ids) {
    const H2StreamEnd& s = streams[sid];
    EXPECT_EQ(s.status, 200) << "stream " << sid;
    if (s.end_stream && absl::StrContains(s.body, "\"done\":true")) {
      ++complete;
      continue;
    }
    ++cut;
    EXPECT_EQ(s.reset.value_or(0xffff), h2::kInternalError) << "stream " << sid;
    EXPECT_FALSE(absl::StrContains(s.body, "\"done\":true")) << "stream " << sid;
    EXPECT_LT(s.reset_at - killed, absl::Seconds(2 * TimingSlack())) << "stream " << sid;
  }
  EXPECT_EQ(cut, on_a);
  EXPECT_EQ(complete, on_b);
  for (uint32_t sid : new_ids) {
    const H2StreamEnd& s = streams[sid];
    EXPECT_EQ(s.status, 200) << "stream " << sid << ": " << s.body;
    EXPECT_TRUE(s.end_stream && absl::StrContains(s.body, "\"done\":true"))
        << "stream " << sid << ": " << s.body;
  }
  EXPECT_EQ(ModelCount(sim_->port(), "alpha", "requests"), 1 + on_b + 8);
  {
    auto families = ScrapeMetrics(proxy_port());
    ASSERT_TRUE(families.ok()) << families.status();
    EXPECT_GE(FindSample(*families, "sluice_upstream_failovers_total", {}).value_or(-1), 1);
  }
  // Back, with nothing loaded: beta goes where it evicts nothing.
  auto a = StartSim({absl::StrCat("--listen=127.0.0.1:", port_a), sim_args[0], sim_args[1]});
  ASSERT_TRUE(a.ok()) << a.status();
  sim_a_ = std::move(*a);
  absl::SleepFor(absl::Milliseconds(1500));
  streams.clear();
  streams[id] = {};
  IT_ASSERT_OK(c->Send(H2Generate(id, "beta", 2, 1)));
  ASSERT_TRUE(ReadStreams(c.get(), &streams, all_ended, absl::Seconds(10), &trace)) << trace;
  EXPECT_EQ(streams[id].status, 200) << streams[id].body;
  EXPECT_TRUE(streams[id].end_stream) << streams[id].body;
  EXPECT_EQ(ModelCount(port_a, "beta", "requests"), 1) << "back in use";
  EXPECT_EQ(ModelCount(sim_->port(), "beta", "requests"), 0);
}

// Two workers (clients from eight loopback addresses, which the listener
// steers to both), checks every 50 ms, and generations of two models over
// HTTP/1.1 and h2c while one backend is killed and comes back: what the
// workers and the checks' thread share (each backend's model table and
// health) is read and written from all three at once, which is what a
// ThreadSanitizer build of this test looks at. The answers are not
// streamed (stream:false: no response byte before the end), so a kill
// never cuts one: each request still on the killed backend fails over and
// every one is answered 200.
TEST_F(Routing, SeveralWorkersShareTheBackendStateUnderLoad) {
  preload_[0] = {"alpha"};
  preload_[1] = {"beta"};
  const std::vector<std::string> sim_args = {"--models=alpha,beta", "--max_loaded_models=1"};
  ASSERT_NO_FATAL_FAILURE(
      StartTwo(sim_args, {"--threads=2", "--upstream_fail_timeout=500ms"}, "50ms"));
  const int port_a = sim_a_->port();
  // 8 addresses x 16 generations; every other one over h2c. One status
  // line per request.
  const std::string script = absl::StrCat(
      "for x in 1 2 3 4 5 6 7 8; do (for k in $(seq 16); do "
      "if [ $(((x + k) % 2)) = 0 ]; then m=alpha; else m=beta; fi; "
      "if [ $((k % 2)) = 0 ]; then h2=--http2-prior-knowledge; else h2=; fi; "
      "curl -s -o /dev/null -w '%{http_code}\\n' --max-time 20 --interface 127.0.0.$x $h2 "
      "-H 'Content-Type: application/json' -H 'X-Sim-Tokens: 5' -H 'X-Sim-Token-Delay-Ms: 20' "
      "-d \"{\\\"model\\\":\\\"$m\\\",\\\"prompt\\\":\\\"hi\\\",\\\"stream\\\":false}\" ",
      proxy_url(), "/api/generate; done) & done; wait");
  CommandResult load;
  std::thread runner([&] { load = RunShell(script, absl::Seconds(120)); });
  absl::SleepFor(absl::Milliseconds(700));
  sim_a_->Signal(SIGKILL);
  sim_a_->WaitExit(absl::Seconds(5));
  absl::SleepFor(absl::Milliseconds(700));
  auto a = StartSim({absl::StrCat("--listen=127.0.0.1:", port_a), sim_args[0], sim_args[1]});
  runner.join();
  ASSERT_TRUE(a.ok()) << a.status();
  sim_a_ = std::move(*a);
  ASSERT_FALSE(load.timed_out);
  std::map<std::string, int> statuses;
  for (absl::string_view line : absl::StrSplit(load.out, '\n', absl::SkipEmpty())) {
    ++statuses[std::string(line)];
  }
  EXPECT_EQ(statuses, (std::map<std::string, int>{{"200", 128}})) << load.err;
  // Back in use: it passes its checks.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  double up = -1;
  while (absl::Now() < deadline) {
    auto families = ScrapeMetrics(proxy_port());
    if (families.ok()) {
      up = FindSample(*families, "sluice_backend_up", {{"backend", "a"}}).value_or(-1);
    }
    if (up == 1) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(up, 1);
}

}  // namespace
}  // namespace sluice::integration
