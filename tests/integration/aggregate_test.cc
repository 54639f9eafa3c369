// One view of several Ollama backends: /api/tags, /v1/models and /api/ps
// answered with the union of every usable backend's list, through the real
// binary in front of two simulators.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/integration/h2_frames.h"
#include "tests/integration/json_lite.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {
namespace {

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

class Aggregate : public ProxyTest {
 protected:
  // Simulator A (sim_a_) with `args_a`, simulator B (sim_) with `args_b`,
  // and sluice in front of both (A first in --upstream).
  void StartTwo(const std::vector<std::string>& args_a, const std::vector<std::string>& args_b,
                std::vector<std::string> sluice_args = {}) {
    auto a = StartSim(args_a);
    ASSERT_TRUE(a.ok()) << a.status();
    sim_a_ = std::move(*a);
    auto b = StartSim(args_b);
    ASSERT_TRUE(b.ok()) << b.status();
    sim_ = std::move(*b);
    StartSluiceFor(sim_a_->port(), std::move(sluice_args));
  }
  // sluice in front of 127.0.0.1:`port_a` and simulator B.
  void StartSluiceFor(int port_a, std::vector<std::string> sluice_args) {
    sluice_args.insert(sluice_args.begin(), "--health_interval=0");
    sluice_args.push_back(
        absl::StrCat("--upstream=127.0.0.1:", port_a, ",127.0.0.1:", sim_->port()));
    auto sluice = StartSluice(sim_->port(), sluice_args);
    ASSERT_TRUE(sluice.ok()) << sluice.status();
    sluice_ = std::move(*sluice);
  }
  void TearDown() override {
    ProxyTest::TearDown();
    if (sim_a_) sim_a_->Terminate();
    sim_a_.reset();
  }

  HttpResponse Get(int port, const std::string& target, const std::string& method = "GET",
                   const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    auto conn = HttpConnection::Connect(port);
    EXPECT_TRUE(conn.ok()) << conn.status();
    if (!conn.ok()) return {};
    EXPECT_TRUE((*conn)->Send(BuildRequest(method, target, headers)).ok());
    auto r = (*conn)->ReadResponse(absl::Seconds(10), method == "HEAD");
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : HttpResponse{};
  }

  // The values of `key` in the entries of the array `list` of a JSON body.
  static std::vector<std::string> Keys(const std::string& body, const std::string& list,
                                       const std::string& key) {
    std::vector<std::string> out;
    std::optional<JsonValue> json = JsonValue::Parse(body);
    if (!json.has_value() || !json->is_object()) {
      ADD_FAILURE() << "not a JSON object: " << body;
      return out;
    }
    const JsonValue* array = json->Get(list);
    if (array == nullptr || !array->is_array()) {
      ADD_FAILURE() << "no " << list << " array: " << body;
      return out;
    }
    for (const JsonValue& entry : array->array()) out.push_back(entry.GetString(key).value_or("?"));
    return out;
  }

  // Loads `model` on the simulator at `port` (a generation sent to it
  // directly).
  void Load(int port, const std::string& model) {
    HttpResponse r =
        Post(port, "/api/generate",
             absl::StrCat(R"({"model":")", model, R"(","prompt":"hi","stream":false})"));
    ASSERT_EQ(r.status, 200) << r.body;
  }
  HttpResponse Post(int port, const std::string& target, const std::string& body) {
    auto r =
        Exchange(port, BuildRequest("POST", target, {{"Content-Type", "application/json"}}, body));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : HttpResponse{};
  }

  void RunNode(const std::string& script, const std::string& package, const std::string& expect) {
    const std::string dir = SLUICE_NODE_DIR;
    const std::string node = SLUICE_NODE_BIN;
    ASSERT_FALSE(node.empty() || !Exists(node))
        << "node not found at configure time; install nodejs and re-run cmake";
    ASSERT_TRUE(Exists(absl::StrCat(dir, "/node_modules/", package, "/package.json")))
        << "npm package '" << package << "' is not installed: run `npm ci` in " << dir;
    CommandResult res = RunProgram(
        node, {absl::StrCat(dir, "/", script)}, absl::Seconds(30),
        {absl::StrCat("SLUICE_URL=", proxy_url()), absl::StrCat("EXPECT_MODELS=", expect)});
    ASSERT_FALSE(res.timed_out) << script << " timed out\n" << res.err;
    EXPECT_TRUE(res.exit.exited && res.exit.code == 0)
        << script << " failed (code " << res.exit.code << ")\nstdout:\n"
        << res.out << "\nstderr:\n"
        << res.err;
  }

  std::unique_ptr<ChildProcess> sim_a_;
};

using Names = std::vector<std::string>;

TEST_F(Aggregate, TagsAreTheUnionOfBothBackendsDeduplicated) {
  ASSERT_NO_FATAL_FAILURE(StartTwo({"--models=a,b"}, {"--models=b,c:7b"}));
  // Every request, not every other one as round robin would.
  for (int i = 0; i < 3; ++i) {
    HttpResponse r = Get(proxy_port(), "/api/tags");
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.Header("content-type").value_or(""), "application/json; charset=utf-8");
    EXPECT_EQ(Keys(r.body, "models", "name"), (Names{"a:latest", "b:latest", "c:7b"}));
    // The entries keep the backend's fields (size, details) as sent.
    HttpResponse direct = Get(sim_port(), "/api/tags");
    std::optional<JsonValue> json = JsonValue::Parse(direct.body);
    ASSERT_TRUE(json.has_value());
    const JsonValue& c_entry = json->Get("models")->array().back();
    EXPECT_NE(c_entry.Get("size"), nullptr) << direct.body;
    EXPECT_NE(c_entry.Get("details"), nullptr) << direct.body;
    const size_t at = direct.body.find("{\"name\":\"c:7b\"");
    ASSERT_NE(at, std::string::npos) << direct.body;
    std::string entry = direct.body.substr(at);
    entry = entry.substr(0, entry.rfind(']'));
    EXPECT_TRUE(absl::StrContains(r.body, entry)) << r.body << "\n" << entry;
  }
}

TEST_F(Aggregate, OpenAiModelsAreTheUnionById) {
  ASSERT_NO_FATAL_FAILURE(StartTwo({"--models=a,b"}, {"--models=b,c"}));
  HttpResponse r = Get(proxy_port(), "/v1/models");
  ASSERT_EQ(r.status, 200) << r.body;
  std::optional<JsonValue> json = JsonValue::Parse(r.body);
  ASSERT_TRUE(json.has_value()) << r.body;
  EXPECT_EQ(json->GetString("object").value_or(""), "list");
  EXPECT_EQ(Keys(r.body, "data", "id"), (Names{"a:latest", "b:latest", "c:latest"}));
}

// A model loaded on both backends is listed once (the first backend's
// entry); each backend's other loaded models are all there.
TEST_F(Aggregate, PsIsTheUnionOfLoadedModels) {
  ASSERT_NO_FATAL_FAILURE(StartTwo({"--models=a,b"}, {"--models=b,c"}));
  ASSERT_NO_FATAL_FAILURE(Load(sim_a_->port(), "a"));
  ASSERT_NO_FATAL_FAILURE(Load(sim_a_->port(), "b"));
  ASSERT_NO_FATAL_FAILURE(Load(sim_port(), "b"));
  ASSERT_NO_FATAL_FAILURE(Load(sim_port(), "c"));
  HttpResponse r = Get(proxy_port(), "/api/ps");
  ASSERT_EQ(r.status, 200) << r.body;
  Names names = Keys(r.body, "models", "name");
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (Names{"a:latest", "b:latest", "c:latest"})) << r.body;
}

TEST_F(Aggregate, HeadAnswersTheHeadOfTheUnion) {
  ASSERT_NO_FATAL_FAILURE(StartTwo({"--models=a"}, {"--models=b"}));
  HttpResponse get = Get(proxy_port(), "/api/tags");
  ASSERT_EQ(get.status, 200);
  HttpResponse head = Get(proxy_port(), "/api/tags", "HEAD");
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.Header("content-length").value_or(""), absl::StrCat(get.body.size()));
  EXPECT_TRUE(head.body.empty());
  // The connection is still in step after the HEAD.
  auto conn = HttpConnection::Connect(proxy_port());
  ASSERT_TRUE(conn.ok());
  ASSERT_TRUE((*conn)->Send(BuildRequest("HEAD", "/v1/models")).ok());
  auto h = (*conn)->ReadResponse(absl::Seconds(10), true);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_TRUE((*conn)->Send(BuildRequest("GET", "/v1/models")).ok());
  auto g = (*conn)->ReadResponse();
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(Keys(g->body, "data", "id"), (Names{"a:latest", "b:latest"}));
}

TEST_F(Aggregate, VersionComesFromOneBackend) {
  ASSERT_NO_FATAL_FAILURE(StartTwo({"--models=a"}, {"--models=b"}));
  for (int i = 0; i < 2; ++i) {
    HttpResponse r = Get(proxy_port(), "/api/version");
    ASSERT_EQ(r.status, 200) << r.body;
    std::optional<JsonValue> json = JsonValue::Parse(r.body);
    ASSERT_TRUE(json.has_value() && json->GetString("version").has_value()) << r.body;
  }
}

// With one backend these are plain relayed requests: its answer as it is.
TEST_F(Aggregate, OneBackendIsRelayedAsIs) {
  ASSERT_NO_FATAL_FAILURE(StartStack({"--models=a,b"}));
  for (const char* path : {"/api/tags", "/v1/models", "/api/ps"}) {
    HttpResponse direct = Get(sim_port(), path);
    HttpResponse r = Get(proxy_port(), path);
    ASSERT_EQ(r.status, 200) << path;
    EXPECT_EQ(r.body, direct.body) << path;
  }
}

TEST_F(Aggregate, RefusingBackendIsLeftOut) {
  auto b = StartSim({"--models=b"});
  ASSERT_TRUE(b.ok()) << b.status();
  sim_ = std::move(*b);
  ASSERT_NO_FATAL_FAILURE(StartSluiceFor(UnusedPort(), {}));
  for (int i = 0; i < 4; ++i) {  // before and after A is left out for failures
    HttpResponse r = Get(proxy_port(), "/api/tags");
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(Keys(r.body, "models", "name"), (Names{"b:latest"}));
  }
  EXPECT_TRUE(absl::StrContains(sluice_->Stderr(), "left out")) << sluice_->Stderr();
}

// A backend that never answers is left out after --health_timeout.
TEST_F(Aggregate, SilentBackendIsLeftOutAfterTheTimeout) {
  ASSERT_NO_FATAL_FAILURE(StartTwo({"--mode=hang"}, {"--models=b"}, {"--health_timeout=500ms"}));
  const absl::Time start = absl::Now();
  HttpResponse r = Get(proxy_port(), "/v1/models");
  const absl::Duration took = absl::Now() - start;
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Keys(r.body, "data", "id"), (Names{"b:latest"}));
  EXPECT_GE(took, absl::Milliseconds(400));
  EXPECT_LT(took, absl::Seconds(3));
}

// Answers that are not a model list (garbage, a 503) are left out; when no
// backend gives one the client gets 502.
TEST_F(Aggregate, NoGoodAnswerIs502) {
  ASSERT_NO_FATAL_FAILURE(StartTwo({"--mode=garbage"}, {"--mode=busy"}));
  HttpResponse r = Get(proxy_port(), "/api/tags");
  EXPECT_EQ(r.status, 502);
  EXPECT_EQ(JsonError(r.body).value_or(""), "upstream unavailable") << r.body;
}

TEST_F(Aggregate, NoUsableBackendIs503WithRetryAfter) {
  const int dead_a = UnusedPort();
  const int dead_b = UnusedPort();
  auto sluice = StartSluice(
      dead_a, {"--upstream_max_fails=1", "--health_interval=0", "--upstream_fail_timeout=30s",
               absl::StrCat("--upstream=127.0.0.1:", dead_a, ",127.0.0.1:", dead_b)});
  ASSERT_TRUE(sluice.ok()) << sluice.status();
  sluice_ = std::move(*sluice);
  HttpResponse first = Get(proxy_port(), "/api/tags");
  EXPECT_EQ(first.status, 502) << first.body;  // both tried, both refused
  HttpResponse second = Get(proxy_port(), "/api/tags");
  EXPECT_EQ(second.status, 503);
  EXPECT_EQ(second.body, "{\"error\":\"no Ollama backend available\"}\n");
  EXPECT_TRUE(second.Header("retry-after").has_value());
}

TEST_F(Aggregate, KeyProtectedSluiceRefusesWithoutKey) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "sluice-aggregate-keys-", getpid());
  RunShell(absl::StrCat("rm -rf ", ShellQuote(dir), " && mkdir -p ", ShellQuote(dir)),
           absl::Seconds(5));
  const std::string keys = dir + "/keys.txt";
  CommandResult add =
      RunProgram(SluiceBinary(), {"keys", "add", "alice", "--keys_file", keys}, absl::Seconds(10));
  ASSERT_EQ(add.exit.code, 0) << add.err;
  const std::string key(absl::StripAsciiWhitespace(add.out));
  ASSERT_NO_FATAL_FAILURE(
      StartTwo({"--models=a"}, {"--models=b"}, {"--auth=key", "--keys_file=" + keys}));
  for (const char* path : {"/api/tags", "/v1/models", "/api/ps"}) {
    HttpResponse refused = Get(proxy_port(), path);
    EXPECT_EQ(refused.status, 401) << path << " " << refused.body;
    HttpResponse ok =
        Get(proxy_port(), path, "GET", {{"Authorization", absl::StrCat("Bearer ", key)}});
    EXPECT_EQ(ok.status, 200) << path << " " << ok.body;
  }
  absl::StatusOr<SimStats> a = FetchSimStats(sim_a_->port());
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->requests, 3) << "only the admitted requests reach a backend";
}

// Clients that go away while one backend is still silent: every link of
// the fan-out closes, nothing of the gone exchange is touched (an ASan
// build reports a use after free), and sluice keeps answering.
TEST_F(Aggregate, ClientGoneMidFanOut) {
  ASSERT_NO_FATAL_FAILURE(
      StartTwo({"--mode=hang"}, {"--models=b"}, {"--health_timeout=1s", "--log_level=debug"}));
  for (int i = 0; i < 20; ++i) {
    auto conn = HttpConnection::Connect(proxy_port());
    ASSERT_TRUE(conn.ok()) << conn.status();
    ASSERT_TRUE((*conn)->Send(BuildRequest("GET", i % 2 ? "/api/tags" : "/api/ps")).ok());
    absl::SleepFor(absl::Milliseconds(i % 4 == 0 ? 0 : 20));
    if (i % 3 == 0) {
      (*conn)->CloseWithReset();
    } else {
      (*conn)->Close();
    }
  }
  absl::SleepFor(absl::Milliseconds(1500));  // past every deadline
  HttpResponse r = Get(proxy_port(), "/api/tags");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Keys(r.body, "models", "name"), (Names{"b:latest"}));
  EXPECT_TRUE(absl::StrContains(sluice_->Stderr(), "client went away, upstream links closed"))
      << "the fan-out was cancelled";
}

// The same over h2c: a stream reset while one backend is silent closes its
// fan-out; the other streams of the connection are answered.
TEST_F(Aggregate, H2StreamResetMidFanOut) {
  ASSERT_NO_FATAL_FAILURE(
      StartTwo({"--mode=hang"}, {"--models=b"}, {"--health_timeout=1s", "--log_level=debug"}));
  IT_ASSERT_OK_AND_ASSIGN(auto h2c, h2::Connection::Connect(proxy_port()));
  IT_ASSERT_OK(h2c->Establish());
  for (uint32_t id : {1u, 3u, 5u}) {
    IT_ASSERT_OK(h2c->Send(
        h2::HeadersFrame(id, h2::HpackBlock(h2::RequestFields("GET", "/api/tags")), true)));
  }
  absl::SleepFor(absl::Milliseconds(50));
  IT_ASSERT_OK(h2c->Send(h2::RstStreamFrame(1, h2::kCancel)));
  IT_ASSERT_OK(h2c->Send(h2::RstStreamFrame(5, h2::kCancel)));
  absl::StatusOr<int> status = h2c->Get(7, "/v1/models", absl::Seconds(5));
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(*status, 200);
  EXPECT_TRUE(absl::StrContains(sluice_->Stderr(), "client went away, upstream links closed"));
}

// A backend's keepalive link that it closed meanwhile (X-Sim-Drop-Next-
// Request drops the next request on the same link) is retried on a fresh
// link: the union stays whole.
TEST_F(Aggregate, StaleKeepaliveLinkIsRetried) {
  ASSERT_NO_FATAL_FAILURE(StartTwo({"--models=a"}, {"--models=b"}));
  HttpResponse first = Get(proxy_port(), "/api/tags", "GET", {{"X-Sim-Drop-Next-Request", "1"}});
  ASSERT_EQ(first.status, 200) << first.body;
  EXPECT_EQ(Keys(first.body, "models", "name"), (Names{"a:latest", "b:latest"}));
  HttpResponse second = Get(proxy_port(), "/api/tags");
  ASSERT_EQ(second.status, 200) << second.body;
  EXPECT_EQ(Keys(second.body, "models", "name"), (Names{"a:latest", "b:latest"}));
  EXPECT_FALSE(absl::StrContains(sluice_->Stderr(), "left out")) << sluice_->Stderr();
}

TEST_F(Aggregate, OllamaLibraryListsTheModelsOfBoth) {
  ASSERT_NO_FATAL_FAILURE(StartTwo({"--models=a,b"}, {"--models=b,c"}));
  RunNode("ollama_list.mjs", "ollama", "a:latest,b:latest,c:latest");
}

TEST_F(Aggregate, OpenAiLibraryListsTheModelsOfBoth) {
  ASSERT_NO_FATAL_FAILURE(StartTwo({"--models=a,b"}, {"--models=b,c"}));
  RunNode("openai_models.mjs", "openai", "a:latest,b:latest,c:latest");
}

}  // namespace
}  // namespace sluice::integration
