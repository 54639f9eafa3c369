// The model policy through the real binary: keys with their own settings
// (`sluice keys add --set`), the flags' defaults, and what reaches the
// simulator (X-Sim-Echo answers with the request as it arrived): aliases
// rewritten with a Content-Length that matches, models refused before
// anything goes up, keep_alive, num_ctx and num_predict lowered, malformed
// bodies refused, over HTTP/1.1 (lengths and chunked) and h2c, and bodies
// past what sluice holds whole.
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "tests/integration/h2_frames.h"
#include "tests/integration/prom_text.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {
namespace {

class ModelPolicyIt : public ProxyTest {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "sluice-model-",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name(), "-",
                        getpid());
    RunShell(absl::StrCat("rm -rf ", ShellQuote(dir_), " && mkdir -p ", ShellQuote(dir_)),
             absl::Seconds(5));
  }
  void TearDown() override {
    ProxyTest::TearDown();
    RunShell(absl::StrCat("rm -rf ", ShellQuote(dir_)), absl::Seconds(5));
  }
  std::string keys() const { return dir_ + "/keys.txt"; }
  // A key made by `sluice keys add NAME --set S...`.
  std::string AddKey(const std::string& name, const std::vector<std::string>& settings = {}) {
    std::vector<std::string> args = {"keys", "add", name, "--keys_file", keys()};
    for (const std::string& s : settings) {
      args.push_back("--set");
      args.push_back(s);
    }
    CommandResult r = RunProgram(SluiceBinary(), args, absl::Seconds(10));
    EXPECT_EQ(r.exit.code, 0) << r.err;
    return std::string(absl::StripAsciiWhitespace(r.out));
  }
  // sluice with the keys file and `args`; the model policy's flags at
  // their defaults unless `args` sets them (--max_keep_alive=1h is the
  // default, given so that the harness leaves the policy on).
  void Start(std::vector<std::string> args = {}) {
    if (std::none_of(args.begin(), args.end(), [](const std::string& a) {
          return absl::StartsWith(a, "--max_keep_alive");
        })) {
      args.push_back("--max_keep_alive=1h");
    }
    args.push_back("--keys_file=" + keys());
    args.push_back("--rate_generation=off");
    ASSERT_NO_FATAL_FAILURE(StartStack({}, args));
  }
  // A POST the simulator answers with what it received.
  static std::string Echoed(const std::string& key, const std::string& path,
                            const std::string& body) {
    return BuildRequest("POST", path,
                        {{"Authorization", "Bearer " + key},
                         {"Content-Type", "application/json"},
                         {"X-Sim-Echo", "1"}},
                        body);
  }
  // What the simulator received for `request` sent through sluice.
  EchoedRequest Forwarded(const std::string& request) {
    auto r = Exchange(proxy_port(), request);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return {};
    EXPECT_EQ(r->status, 200) << r->body;
    std::optional<EchoedRequest> e = ParseEcho(r->body);
    EXPECT_TRUE(e.has_value()) << r->body;
    return e.value_or(EchoedRequest{});
  }
  int64_t SimRequests() {
    absl::StatusOr<SimStats> s = FetchSimStats(sim_->port());
    return s.ok() ? s->requests : -1;
  }
  static void ExpectLengthMatches(const EchoedRequest& e) {
    std::optional<std::string> cl = e.First("Content-Length");
    ASSERT_TRUE(cl.has_value());
    EXPECT_EQ(*cl, absl::StrCat(e.body.size()));
    EXPECT_FALSE(e.First("Transfer-Encoding").has_value());
  }

  std::string dir_;
};

// A restricted key: its alias reaches Ollama as the real model, with the
// Content-Length of the rewritten body; a model outside its list is 403
// on both APIs and never reaches the simulator; another key is not bound.
TEST_F(ModelPolicyIt, AliasesAndAllowedModelsPerKey) {
  const std::string team = AddKey("team", {"models=llama3*", "alias=gpt-4o=llama3.1:8b"});
  const std::string admin = AddKey("admin");
  ASSERT_NO_FATAL_FAILURE(Start());
  EchoedRequest e = Forwarded(Echoed(
      team, "/api/chat", R"({"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]})"));
  EXPECT_EQ(e.body, R"({"model":"llama3.1:8b","messages":[{"role":"user","content":"hi"}]})");
  ExpectLengthMatches(e);
  e = Forwarded(Echoed(team, "/v1/chat/completions", R"({"model":"gpt-4o","messages":[]})"));
  EXPECT_EQ(e.body, R"({"model":"llama3.1:8b","messages":[]})");
  const int64_t before = SimRequests();
  auto r = Exchange(proxy_port(), Echoed(team, "/api/generate", R"({"model":"mistral"})"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 403);
  EXPECT_EQ(r->body, "{\"error\":\"model 'mistral' is not allowed for this key\"}\n");
  r = Exchange(proxy_port(), Echoed(team, "/v1/chat/completions", R"({"model":"mistral"})"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 403);
  EXPECT_TRUE(
      absl::StrContains(r->body, R"("message":"model 'mistral' is not allowed for this key")"))
      << r->body;
  EXPECT_TRUE(absl::StrContains(r->body, R"("type":"permission_error")")) << r->body;
  // The last of two "model" keys is the one Ollama takes, and checked.
  r = Exchange(proxy_port(),
               Echoed(team, "/api/generate", R"({"model":"llama3","MODEL":"mistral"})"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 403) << r->body;
  EXPECT_EQ(SimRequests(), before);
  e = Forwarded(Echoed(admin, "/api/generate", R"({"model":"mistral"})"));
  EXPECT_EQ(e.body, R"({"model":"mistral"})");
  auto families = ScrapeMetrics(proxy_port());
  ASSERT_TRUE(families.ok()) << families.status();
  EXPECT_EQ(FindSample(*families, "sluice_rejections_total", {{"reason", "model"}}), 3);
  EXPECT_EQ(FindSample(*families, "sluice_body_rewrites_total", {{"kind", "alias"}}), 2);
}

// A key with a model list sees only those models in /api/tags and
// /v1/models (one backend's list is filtered too); another key sees all.
TEST_F(ModelPolicyIt, ModelListsShowOnlyTheKeysModels) {
  const std::string team = AddKey("team", {"models=llama3*"});
  const std::string admin = AddKey("admin");
  ASSERT_NO_FATAL_FAILURE(StartStack(
      {"--models=llama3,llama3:70b,mistral"},
      {"--keys_file=" + keys(), "--rate_generation=off", "--rate_api=off", "--max_keep_alive=1h"}));
  auto get = [&](const std::string& key, const std::string& path) {
    auto r =
        Exchange(proxy_port(), BuildRequest("GET", path, {{"Authorization", "Bearer " + key}}));
    EXPECT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r.ok() ? r->status : 0, 200);
    return r.ok() ? r->body : std::string();
  };
  std::string tags = get(team, "/api/tags");
  EXPECT_TRUE(absl::StrContains(tags, "\"llama3:latest\"")) << tags;
  EXPECT_TRUE(absl::StrContains(tags, "\"llama3:70b\"")) << tags;
  EXPECT_FALSE(absl::StrContains(tags, "mistral")) << tags;
  std::string models = get(team, "/v1/models");
  EXPECT_TRUE(absl::StrContains(models, "\"llama3:latest\"")) << models;
  EXPECT_FALSE(absl::StrContains(models, "mistral")) << models;
  tags = get(admin, "/api/tags");
  EXPECT_TRUE(absl::StrContains(tags, "mistral")) << tags;
}

// The same as a user's clients see it: the npm openai and ollama libraries
// with a restricted key that has an alias (node/model_policy.mjs).
TEST_F(ModelPolicyIt, NodeClientsSeeTheKeysPolicy) {
  const std::string dir = SLUICE_NODE_DIR;
  const std::string node = SLUICE_NODE_BIN;
  ASSERT_FALSE(node.empty() || access(node.c_str(), X_OK) != 0)
      << "node not found at configure time; install nodejs and re-run cmake";
  for (const char* package : {"openai", "ollama"}) {
    ASSERT_EQ(access(absl::StrCat(dir, "/node_modules/", package, "/package.json").c_str(), R_OK),
              0)
        << "npm package '" << package << "' is not installed: run `npm ci` in " << dir;
  }
  const std::string team = AddKey("team", {"models=llama3*", "alias=gpt-4o=llama3"});
  ASSERT_NO_FATAL_FAILURE(StartStack(
      {"--models=llama3,llama3:70b,mistral"},
      {"--keys_file=" + keys(), "--rate_generation=off", "--rate_api=off", "--max_keep_alive=1h"}));
  CommandResult res = RunProgram(node, {dir + "/model_policy.mjs"}, absl::Seconds(30),
                                 {absl::StrCat("SLUICE_URL=", proxy_url()), "SLUICE_KEY=" + team,
                                  "EXPECT_MODELS=llama3:latest,llama3:70b"});
  ASSERT_FALSE(res.timed_out) << res.err;
  EXPECT_TRUE(res.exit.exited && res.exit.code == 0)
      << "model_policy.mjs failed (code " << res.exit.code << ")\nstdout:\n"
      << res.out << "\nstderr:\n"
      << res.err;
}

// The defaults: keep_alive -1 (forever) is lowered to --max_keep_alive;
// flags set num_ctx and num_predict maxima for every key without its own;
// a key's own setting wins.
TEST_F(ModelPolicyIt, KeepAliveNumCtxAndNumPredictAreLowered) {
  const std::string plain = AddKey("plain");
  const std::string big = AddKey("big", {"max_num_ctx=32768", "keep_alive_forever=yes"});
  ASSERT_NO_FATAL_FAILURE(
      Start({"--max_keep_alive=10m", "--max_num_ctx=4096", "--max_num_predict=256"}));
  EchoedRequest e = Forwarded(
      Echoed(plain, "/api/generate",
             R"({"model":"m","keep_alive":-1,"options":{"num_ctx":131072,"temperature":0.2}})"));
  EXPECT_EQ(
      e.body,
      R"({"model":"m","keep_alive":"600s","options":{"num_predict":256,"num_ctx":4096,"temperature":0.2}})");
  ExpectLengthMatches(e);
  e = Forwarded(Echoed(big, "/api/generate",
                       R"({"model":"m","keep_alive":-1,"options":{"num_ctx":131072}})"));
  EXPECT_EQ(e.body,
            R"({"model":"m","keep_alive":-1,"options":{"num_predict":256,"num_ctx":32768}})");
  e = Forwarded(Echoed(plain, "/v1/chat/completions", R"({"model":"m","max_tokens":4096})"));
  EXPECT_EQ(e.body, R"({"model":"m","max_tokens":256})");
  // Embeddings generate nothing: no num_predict.
  e = Forwarded(Echoed(plain, "/api/embed", R"({"model":"m","input":"x"})"));
  EXPECT_EQ(e.body, R"({"model":"m","input":"x"})");
}

// A key's image limits: past them 400 before anything goes up, also when
// the images come after the first MiB of a large body.
TEST_F(ModelPolicyIt, ImageLimits) {
  const std::string k = AddKey("k", {"max_images=1", "max_image_bytes=2M"});
  ASSERT_NO_FATAL_FAILURE(Start({"--client_max_body_size=16m"}));
  const int64_t before = SimRequests();
  auto r = Exchange(proxy_port(),
                    Echoed(k, "/api/generate", R"({"model":"m","images":["AAAA","BBBB"]})"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(r->body, "{\"error\":\"the request has 2 images; this key may send 1 at most\"}\n");
  const std::string big(3 << 20, 'A');
  r = Exchange(
      proxy_port(),
      Echoed(k, "/api/generate", absl::StrCat(R"({"model":"m","images":[")", big, R"("]})")),
      absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 400);
  EXPECT_TRUE(absl::StrContains(r->body, "images have")) << r->body;
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(SimRequests(), before);
  EchoedRequest e = Forwarded(Echoed(k, "/api/generate", R"({"model":"m","images":["AAAA"]})"));
  EXPECT_EQ(e.body, R"({"model":"m","images":["AAAA"]})");
  auto families = ScrapeMetrics(proxy_port());
  ASSERT_TRUE(families.ok()) << families.status();
  EXPECT_EQ(FindSample(*families, "sluice_rejections_total", {{"reason", "images"}}), 1);
}

// --over_max=refuse: a value over its maximum is 400, before anything
// reaches the simulator.
TEST_F(ModelPolicyIt, OverMaxRefuse) {
  const std::string k = AddKey("k");
  ASSERT_NO_FATAL_FAILURE(Start({"--max_num_ctx=4096", "--over_max=refuse"}));
  const int64_t before = SimRequests();
  auto r =
      Exchange(proxy_port(), Echoed(k, "/api/chat", R"({"model":"m","options":{"num_ctx":8192}})"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(r->body,
            "{\"error\":\"\\\"options.num_ctx\\\" is over this key's maximum of 4096\"}\n");
  EXPECT_EQ(SimRequests(), before);
}

// Bodies Ollama would misread or refuse are 400 before anything goes up.
// One found bad at its end leaves the connection serving the next request;
// one found bad before its end is answered at once and the connection
// closes (the rest of its body is not read).
TEST_F(ModelPolicyIt, MalformedBodiesAre400) {
  const std::string k = AddKey("k");
  ASSERT_NO_FATAL_FAILURE(Start());
  const int64_t before = SimRequests();
  for (const char* body : {R"({"model":"m"} {"model":"x"})", R"([1,2])", "not json",
                           R"({"model":"m","options":{"num_ctx":1}})"
                           "\x01",
                           "{\"model\":\"m\x01\"}", R"({"model":"m\q"})"}) {
    auto r = Exchange(proxy_port(), Echoed(k, "/api/generate", body));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 400) << body << ": " << r->body;
    EXPECT_TRUE(absl::StartsWith(r->body, "{\"error\":\"invalid request body: ")) << r->body;
  }
  IT_ASSERT_OK_AND_ASSIGN(auto c, HttpConnection::Connect(proxy_port()));
  for (const char* body :
       {R"({"model":"m",)", R"({"model":"m","keep_alive":"forever"})", R"({"model":7})"}) {
    IT_ASSERT_OK(c->Send(Echoed(k, "/api/generate", body)));
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, c->ReadResponse());
    EXPECT_EQ(r.status, 400) << body << ": " << r.body;
    EXPECT_TRUE(absl::StartsWith(r.body, "{\"error\":\"")) << r.body;
  }
  IT_ASSERT_OK(c->Send(Echoed(k, "/api/generate", R"({"model":"m"})")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse ok, c->ReadResponse());
  EXPECT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(SimRequests(), before + 1);
}

// A chunked body is read whole and goes up with its length; the same over
// h2c with the body split over DATA frames and no content-length.
TEST_F(ModelPolicyIt, ChunkedAndHttp2BodiesAreRewritten) {
  const std::string k = AddKey("k", {"alias=gpt=llama3"});
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string body = R"({"model":"gpt","keep_alive":-1,"prompt":"hello"})";
  std::string chunked = BuildRequest(
      "POST", "/api/generate",
      {{"Authorization", "Bearer " + k}, {"X-Sim-Echo", "1"}, {"Transfer-Encoding", "chunked"}});
  for (size_t at = 0; at < body.size(); at += 7) {
    const std::string part = body.substr(at, 7);
    absl::StrAppend(&chunked, absl::Hex(part.size()), "\r\n", part, "\r\n");
  }
  chunked += "0\r\n\r\n";
  EchoedRequest e = Forwarded(chunked);
  const std::string want = R"({"model":"llama3","keep_alive":"3600s","prompt":"hello"})";
  EXPECT_EQ(e.body, want);
  ExpectLengthMatches(e);

  IT_ASSERT_OK_AND_ASSIGN(auto c, h2::Connection::Connect(proxy_port()));
  IT_ASSERT_OK(c->Establish());
  std::string bytes = h2::HeadersFrame(
      1,
      h2::HpackBlock(h2::RequestFields("POST", "/api/generate",
                                       {{"authorization", "Bearer " + k}, {"x-sim-echo", "1"}})),
      false);
  for (size_t at = 0; at < body.size(); at += 5) {
    bytes += h2::DataFrame(1, body.substr(at, 5), at + 5 >= body.size());
  }
  IT_ASSERT_OK(c->Send(bytes));
  h2::ReadOutcome o = c->ReadUntilStreamEnd(1, absl::Seconds(10));
  ASSERT_EQ(o.StatusOf(1), 200) << o.Describe();
  std::string answer;
  for (const h2::Frame& f : o.frames) {
    if (f.type == h2::kData && f.stream_id == 1) answer += f.payload;
  }
  std::optional<EchoedRequest> h2e = ParseEcho(answer);
  ASSERT_TRUE(h2e.has_value()) << answer;
  EXPECT_EQ(h2e->body, want);
  ExpectLengthMatches(*h2e);
}

// A body past the 1 MiB held whole (an image): judged on its start, which
// goes up rewritten, the rest streamed with the length adjusted. A field
// after the start that would need a rewrite ends the request with 400
// before the body's end reaches the simulator, which runs nothing.
TEST_F(ModelPolicyIt, LargeBodiesAreJudgedOnTheirStart) {
  const std::string k = AddKey("k");
  ASSERT_NO_FATAL_FAILURE(Start({"--client_max_body_size=16m"}));
  const std::string image(3 << 20, 'A');
  const std::string body =
      absl::StrCat(R"({"model":"m","keep_alive":-1,"images":[")", image, R"("],"prompt":"x"})");
  auto r = Exchange(proxy_port(), Echoed(k, "/api/generate", body), absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->status, 200) << r->body.substr(0, 300);
  std::optional<EchoedRequest> e = ParseEcho(r->body);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->body, absl::StrCat(R"({"model":"m","keep_alive":"3600s","images":[")", image,
                                  R"("],"prompt":"x"})"));
  ExpectLengthMatches(*e);

  const int64_t before = SimRequests();
  const std::string late =
      absl::StrCat(R"({"model":"m","images":[")", image, R"("],"keep_alive":-1})");
  r = Exchange(proxy_port(), Echoed(k, "/api/generate", late), absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 400);
  EXPECT_TRUE(absl::StrContains(r->body, "comes after the first 1 MiB")) << r->body;
  // A model given again after the start is refused the same way.
  const std::string twice =
      absl::StrCat(R"({"model":"m","images":[")", image, R"("],"model":"other"})");
  r = Exchange(proxy_port(), Echoed(k, "/api/generate", twice), absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 400) << r->body;
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(SimRequests(), before);
}

}  // namespace
}  // namespace sluice::integration
