// ollama-sim's model mode checked against the simulator alone: --models and
// 404s, loading with --load_ms and load_duration, LRU eviction under
// --max_loaded_models, --num_parallel queueing, --max_queue 503s, keep_alive,
// /api/ps and the per-model counters of /sim/stats.
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/proxy_test_base.h"
#include "tests/integration/timing.h"

namespace sluice::integration {
namespace {

std::unique_ptr<ChildProcess> Sim(const std::vector<std::string>& args) {
  auto sim = StartSim(args);
  EXPECT_TRUE(sim.ok()) << sim.status();
  return sim.ok() ? std::move(*sim) : nullptr;
}

absl::StatusOr<HttpResponse> Post(
    int port, absl::string_view path, absl::string_view body,
    const std::vector<std::pair<std::string, std::string>>& headers = {}) {
  return Exchange(port, BuildRequest("POST", path, headers, body));
}

absl::StatusOr<HttpResponse> Get(int port, absl::string_view path) {
  return Exchange(port, BuildRequest("GET", path));
}

// A short generation: 2 tokens 1 ms apart.
absl::StatusOr<HttpResponse> Generate(int port, absl::string_view model,
                                      absl::string_view extra = "") {
  return Post(port, "/api/generate",
              absl::StrCat(R"({"model":")", model, R"(","stream":false)", extra, "}"),
              {{"X-Sim-Tokens", "2"}, {"X-Sim-Token-Delay-Ms", "1"}});
}

// The member `model` of /sim/stats "models", or nullopt.
std::optional<JsonValue> ModelStats(int port, absl::string_view model) {
  absl::StatusOr<HttpResponse> r = Get(port, "/sim/stats");
  if (!r.ok()) return std::nullopt;
  std::optional<JsonValue> json = JsonValue::Parse(r->body);
  if (!json || !json->Get("models")) return std::nullopt;
  const JsonValue* m = json->Get("models")->Get(model);
  if (!m) return std::nullopt;
  return *m;
}

// Names in /api/ps, in its order.
std::vector<std::string> PsNames(int port) {
  std::vector<std::string> names;
  absl::StatusOr<HttpResponse> r = Get(port, "/api/ps");
  if (!r.ok()) return names;
  std::optional<JsonValue> json = JsonValue::Parse(r->body);
  if (!json || !json->Get("models")) return names;
  for (const JsonValue& m : json->Get("models")->array()) {
    names.push_back(m.GetString("name").value_or("?"));
  }
  return names;
}

TEST(SimModels, DefaultsAreUnchanged) {
  auto sim = Sim({});
  ASSERT_NE(sim, nullptr);
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse ps, Get(sim->port(), "/api/ps"));
  EXPECT_EQ(ps.body, R"({"models":[]})");
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, Generate(sim->port(), "anything"));
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(absl::StrContains(r.body, R"("load_duration":1000000,)"));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse stats, Get(sim->port(), "/sim/stats"));
  EXPECT_FALSE(absl::StrContains(stats.body, "models"));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse tags, Get(sim->port(), "/api/tags"));
  EXPECT_EQ(tags.body.size(), 457u);
}

TEST(SimModels, UnknownModelIs404) {
  auto sim = Sim({"--models=alpha,beta:7b"});
  ASSERT_NE(sim, nullptr);
  int port = sim->port();
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse tags, Get(port, "/api/tags"));
  std::optional<JsonValue> json = JsonValue::Parse(tags.body);
  ASSERT_TRUE(json.has_value()) << tags.body;
  ASSERT_EQ(json->Get("models")->array().size(), 2u);
  EXPECT_EQ(json->Get("models")->array()[0].GetString("name"), "alpha:latest");
  EXPECT_EQ(json->Get("models")->array()[1].GetString("model"), "beta:7b");

  for (const char* path :
       {"/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/show"}) {
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, Post(port, path, R"({"model":"gamma"})"));
    EXPECT_EQ(r.status, 404) << path;
    EXPECT_EQ(r.body, R"({"error":"model 'gamma' not found"})") << path;
  }
  for (const char* path : {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}) {
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, Post(port, path, R"({"model":"gamma"})"));
    EXPECT_EQ(r.status, 404) << path;
    EXPECT_EQ(r.body, R"({"error":{"message":"model 'gamma' not found",)"
                      R"("type":"not_found_error","param":null,"code":null}})")
        << path;
  }
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse m, Get(port, "/v1/models/gamma"));
  EXPECT_EQ(m.status, 404);
  // A bare name is its ":latest" tag.
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse ok, Generate(port, "alpha"));
  EXPECT_EQ(ok.status, 200);
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse ok2, Generate(port, "beta:7b"));
  EXPECT_EQ(ok2.status, 200);
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse bad, Generate(port, "beta"));
  EXPECT_EQ(bad.status, 404);
}

TEST(SimModels, LoadDelaysTheFirstTokenAndReportsLoadDuration) {
  auto sim = Sim({"--models=alpha", "--load_ms=300"});
  ASSERT_NE(sim, nullptr);
  int port = sim->port();
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(port));
  int64_t sent_us = RealtimeMicros();
  IT_ASSERT_OK(conn->Send(BuildRequest("POST", "/api/generate",
                                       {{"X-Sim-Tokens", "2"}, {"X-Sim-Token-Delay-Ms", "1"}},
                                       R"({"model":"alpha"})")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse());
  ASSERT_EQ(r.status, 200);
  std::vector<TimedRecord> lines = SplitRecords(r.chunks, "\n");
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_GE(lines[0].arrival_us - sent_us, 290'000);
  std::optional<JsonValue> done = JsonValue::Parse(lines.back().text);
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->GetInt("load_duration"), 300'000'000);
  EXPECT_GE(done->GetInt("total_duration").value_or(0), 300'000'000);

  // Loaded now: no delay, no load_duration.
  sent_us = RealtimeMicros();
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse again, Generate(port, "alpha"));
  EXPECT_LT(RealtimeMicros() - sent_us, 250'000);
  std::optional<JsonValue> body = JsonValue::Parse(again.body);
  ASSERT_TRUE(body.has_value()) << again.body;
  EXPECT_EQ(body->GetInt("load_duration"), 0);

  std::optional<JsonValue> stats = ModelStats(port, "alpha:latest");
  ASSERT_TRUE(stats.has_value());
  EXPECT_EQ(stats->GetInt("loads"), 1);
  EXPECT_EQ(stats->GetInt("requests"), 2);
  IT_ASSERT_OK(ResetSim(port));
  stats = ModelStats(port, "alpha:latest");
  ASSERT_TRUE(stats.has_value());
  EXPECT_EQ(stats->GetInt("loads"), 0);
  EXPECT_EQ(stats->GetInt("requests"), 0);
}

TEST(SimModels, LeastRecentlyUsedModelIsEvicted) {
  auto sim = Sim({"--models=a,b,c", "--max_loaded_models=2"});
  ASSERT_NE(sim, nullptr);
  int port = sim->port();
  // a, b loaded; a used again; c evicts b (least recently used); b evicts a.
  for (const char* model : {"a", "b", "a", "c", "b"}) {
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, Generate(port, model));
    ASSERT_EQ(r.status, 200) << model;
  }
  EXPECT_EQ(ModelStats(port, "a:latest")->GetInt("loads"), 1);
  EXPECT_EQ(ModelStats(port, "b:latest")->GetInt("loads"), 2);
  EXPECT_EQ(ModelStats(port, "c:latest")->GetInt("loads"), 1);
  EXPECT_EQ(ModelStats(port, "a:latest")->GetInt("requests"), 2);
  EXPECT_EQ(PsNames(port), (std::vector<std::string>{"b:latest", "c:latest"}));
}

TEST(SimModels, BusyModelIsNotEvicted) {
  auto sim = Sim({"--models=a,b", "--max_loaded_models=1"});
  ASSERT_NE(sim, nullptr);
  int port = sim->port();
  IT_ASSERT_OK_AND_ASSIGN(auto first, HttpConnection::Connect(port));
  IT_ASSERT_OK(first->Send(BuildRequest("POST", "/api/generate",
                                        {{"X-Sim-Tokens", "5"}, {"X-Sim-Token-Delay-Ms", "60"}},
                                        R"({"model":"a"})")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse head, first->ReadHead(absl::Seconds(5)));
  int64_t sent_us = RealtimeMicros();
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse b, Generate(port, "b"));
  EXPECT_EQ(b.status, 200);
  // b waited for a's generation (about 300 ms) to end before loading.
  EXPECT_GE(RealtimeMicros() - sent_us, 200'000);
  IT_ASSERT_OK(first->ReadBody(&head, absl::Seconds(5)));
  EXPECT_EQ(PsNames(port), std::vector<std::string>{"b:latest"});
}

TEST(SimModels, NumParallelQueuesInOrder) {
  auto sim = Sim({"--models=a", "--num_parallel=1", "--threads=2"});
  ASSERT_NE(sim, nullptr);
  int port = sim->port();
  std::string request =
      BuildRequest("POST", "/api/generate", {{"X-Sim-Tokens", "5"}, {"X-Sim-Token-Delay-Ms", "40"}},
                   R"({"model":"a"})");
  IT_ASSERT_OK_AND_ASSIGN(auto c1, HttpConnection::Connect(port));
  IT_ASSERT_OK_AND_ASSIGN(auto c2, HttpConnection::Connect(port));
  IT_ASSERT_OK(c1->Send(request));
  absl::SleepFor(absl::Milliseconds(20));
  IT_ASSERT_OK(c2->Send(request));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r1, c1->ReadResponse());
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r2, c2->ReadResponse());
  ASSERT_EQ(r1.status, 200);
  ASSERT_EQ(r2.status, 200);
  std::vector<TimedRecord> l1 = SplitRecords(r1.chunks, "\n");
  std::vector<TimedRecord> l2 = SplitRecords(r2.chunks, "\n");
  ASSERT_EQ(l1.size(), 6u);
  ASSERT_EQ(l2.size(), 6u);
  EXPECT_GE(l2.front().arrival_us, l1.back().arrival_us);
  std::optional<JsonValue> done2 = JsonValue::Parse(l2.back().text);
  ASSERT_TRUE(done2.has_value());
  // The wait is in total_duration: about 200 ms of the first, 200 ms own.
  EXPECT_GE(done2->GetInt("total_duration").value_or(0), 350'000'000);
}

TEST(SimModels, PastMaxQueueIs503) {
  auto sim = Sim({"--models=a", "--num_parallel=1", "--max_queue=1", "--threads=2"});
  ASSERT_NE(sim, nullptr);
  int port = sim->port();
  std::string request =
      BuildRequest("POST", "/api/generate", {{"X-Sim-Tokens", "5"}, {"X-Sim-Token-Delay-Ms", "60"}},
                   R"({"model":"a"})");
  IT_ASSERT_OK_AND_ASSIGN(auto running, HttpConnection::Connect(port));
  IT_ASSERT_OK(running->Send(request));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse head, running->ReadHead(absl::Seconds(5)));
  IT_ASSERT_OK_AND_ASSIGN(auto queued, HttpConnection::Connect(port));
  IT_ASSERT_OK(queued->Send(request));
  absl::SleepFor(absl::Milliseconds(30));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse busy, Post(port, "/api/chat", R"({"model":"a"})"));
  EXPECT_EQ(busy.status, 503);
  EXPECT_EQ(busy.body, R"({"error":"server busy, please try again.  )"
                       R"(maximum pending requests exceeded"})");
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse openai,
                          Post(port, "/v1/chat/completions", R"({"model":"a"})"));
  EXPECT_EQ(openai.status, 503);
  EXPECT_TRUE(absl::StrContains(openai.body, R"("type":"api_error")")) << openai.body;
  IT_ASSERT_OK(running->ReadBody(&head, absl::Seconds(5)));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse second, queued->ReadResponse());
  EXPECT_EQ(second.status, 200);
}

TEST(SimModels, QueuedRequestLeavesTheQueueWhenItsClientGoes) {
  auto sim = Sim({"--models=a", "--num_parallel=1", "--max_queue=1"});
  ASSERT_NE(sim, nullptr);
  int port = sim->port();
  std::string request =
      BuildRequest("POST", "/api/generate", {{"X-Sim-Tokens", "5"}, {"X-Sim-Token-Delay-Ms", "60"}},
                   R"({"model":"a"})");
  IT_ASSERT_OK_AND_ASSIGN(auto running, HttpConnection::Connect(port));
  IT_ASSERT_OK(running->Send(request));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse head, running->ReadHead(absl::Seconds(5)));
  IT_ASSERT_OK_AND_ASSIGN(auto gone, HttpConnection::Connect(port));
  IT_ASSERT_OK(gone->Send(request));
  absl::SleepFor(absl::Milliseconds(30));
  gone->Close();
  absl::SleepFor(absl::Milliseconds(30));
  // Its place is free again: this one queues instead of getting 503.
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse next, Generate(port, "a"));
  EXPECT_EQ(next.status, 200) << next.body;
  IT_ASSERT_OK(running->ReadBody(&head, absl::Seconds(5)));
  IT_ASSERT_OK_AND_ASSIGN(SimStats stats, FetchSimStats(port));
  EXPECT_EQ(stats.aborted_streams, 1);
  std::optional<JsonValue> model = ModelStats(port, "a:latest");
  ASSERT_TRUE(model.has_value());
  EXPECT_EQ(model->GetInt("running"), 0);
  EXPECT_EQ(model->GetInt("waiting"), 0);
}

TEST(SimModels, KeepAliveZeroUnloadsAndMinusOnePins) {
  auto sim = Sim({"--models=a,b,c"});
  ASSERT_NE(sim, nullptr);
  int port = sim->port();
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r0, Generate(port, "a", R"(,"keep_alive":0)"));
  EXPECT_EQ(r0.status, 200);
  EXPECT_TRUE(PsNames(port).empty());
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r1, Generate(port, "b", R"(,"keep_alive":-1)"));
  EXPECT_EQ(r1.status, 200);
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r2, Generate(port, "c", R"(,"keep_alive":"200ms")"));
  EXPECT_EQ(r2.status, 200);
  EXPECT_EQ(PsNames(port), (std::vector<std::string>{"b:latest", "c:latest"}));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse ps, Get(port, "/api/ps"));
  std::optional<JsonValue> json = JsonValue::Parse(ps.body);
  ASSERT_TRUE(json.has_value()) << ps.body;
  // -1: Ollama's "forever", about 292 years ahead.
  std::string pinned = json->Get("models")->array()[0].GetString("expires_at").value_or("");
  EXPECT_GE(pinned.substr(0, 4), "2300") << pinned;
  absl::SleepFor(absl::Milliseconds(400));
  EXPECT_EQ(PsNames(port), std::vector<std::string>{"b:latest"});
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse bad, Generate(port, "a", R"(,"keep_alive":"5x")"));
  EXPECT_EQ(bad.status, 400);
}

TEST(SimModels, PsListsLoadedModelsLikeOllama) {
  auto sim = Sim({"--models=a"});
  ASSERT_NE(sim, nullptr);
  int port = sim->port();
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse empty, Get(port, "/api/ps"));
  EXPECT_EQ(empty.body, R"({"models":[]})");
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, Generate(port, "a"));
  ASSERT_EQ(r.status, 200);
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse ps, Get(port, "/api/ps"));
  std::optional<JsonValue> json = JsonValue::Parse(ps.body);
  ASSERT_TRUE(json.has_value()) << ps.body;
  ASSERT_EQ(json->Get("models")->array().size(), 1u);
  const JsonValue& m = json->Get("models")->array()[0];
  EXPECT_EQ(m.GetString("name"), "a:latest");
  EXPECT_EQ(m.GetString("model"), "a:latest");
  EXPECT_GT(m.GetInt("size").value_or(0), 0);
  EXPECT_EQ(m.GetInt("size_vram"), m.GetInt("size"));
  EXPECT_EQ(m.GetString("digest").value_or("").size(), 64u);
  ASSERT_NE(m.Get("details"), nullptr);
  EXPECT_EQ(m.Get("details")->GetString("format"), "gguf");
  // The default keep_alive: 5 minutes from now, in RFC 3339.
  std::string expires = m.GetString("expires_at").value_or("");
  EXPECT_EQ(expires.size(), 30u) << expires;
  EXPECT_TRUE(absl::EndsWith(expires, "Z")) << expires;
}

TEST(SimEmbeddings, ArrayInputGetsOneVectorEach) {
  auto sim = Sim({});
  ASSERT_NE(sim, nullptr);
  int port = sim->port();
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse one,
                          Post(port, "/v1/embeddings", R"({"model":"m","input":"hi"})"));
  EXPECT_EQ(one.body, R"({"object":"list","data":[{"object":"embedding","embedding":)"
                      R"([0.125,-0.25,0.375,-0.5,0.625,-0.75,0.875,-1.0],"index":0}],)"
                      R"("model":"m","usage":{"prompt_tokens":8,"total_tokens":8}})");
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse three, Post(port, "/v1/embeddings",
                                                   R"({"model":"m","input":["a","b, c",[1,2]]})"));
  std::optional<JsonValue> json = JsonValue::Parse(three.body);
  ASSERT_TRUE(json.has_value()) << three.body;
  ASSERT_EQ(json->Get("data")->array().size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(json->Get("data")->array()[i].GetInt("index"), i);
  }
  EXPECT_EQ(json->Get("usage")->GetInt("prompt_tokens"), 24);
  // A flat token array is one input.
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse tokens,
                          Post(port, "/v1/embeddings", R"({"model":"m","input":[1,2,3]})"));
  json = JsonValue::Parse(tokens.body);
  ASSERT_TRUE(json.has_value()) << tokens.body;
  EXPECT_EQ(json->Get("data")->array().size(), 1u);
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse native,
                          Post(port, "/api/embed", R"({"model":"m","input":["a","b"]})"));
  json = JsonValue::Parse(native.body);
  ASSERT_TRUE(json.has_value()) << native.body;
  EXPECT_EQ(json->Get("embeddings")->array().size(), 2u);
}

TEST(SimEmbeddings, Base64EncodingIsLittleEndianFloat32) {
  auto sim = Sim({});
  ASSERT_NE(sim, nullptr);
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r,
                          Post(sim->port(), "/v1/embeddings",
                               R"({"model":"m","input":["a","b"],"encoding_format":"base64"})"));
  ASSERT_EQ(r.status, 200);
  std::optional<JsonValue> json = JsonValue::Parse(r.body);
  ASSERT_TRUE(json.has_value()) << r.body;
  ASSERT_EQ(json->Get("data")->array().size(), 2u);
  for (const JsonValue& item : json->Get("data")->array()) {
    ASSERT_TRUE(item.Get("embedding")->is_string()) << r.body;
    std::string bytes;
    ASSERT_TRUE(absl::Base64Unescape(item.Get("embedding")->str(), &bytes));
    ASSERT_EQ(bytes.size(), 8 * sizeof(float));
    float values[8];
    std::memcpy(values, bytes.data(), bytes.size());
    EXPECT_EQ(values[0], 0.125f);
    EXPECT_EQ(values[3], -0.5f);
    EXPECT_EQ(values[7], -1.0f);
  }
}

}  // namespace
}  // namespace sluice::integration
