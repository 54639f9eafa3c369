// The model policy's settings, names and globs, and its judgement of
// request bodies: aliases, allowed models, keep_alive, num_ctx and
// num_predict / max_tokens, read as Ollama (Go's encoding/json) reads them.
#include "policy/model_policy.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "policy/request_body.h"

namespace sluice::policy {
namespace {

// The flags' defaults (--max_keep_alive=1h, --keep_alive_forever=false)
// with `settings` over them.
ModelPolicy PolicyOf(std::initializer_list<std::pair<const char*, const char*>> settings) {
  ModelPolicy flags;
  flags.max_keep_alive_ns = int64_t{3600} * 1'000'000'000;
  flags.keep_alive_forever = false;
  ModelSettings s;
  for (const auto& [name, value] : settings) {
    absl::Status st = ParseModelSetting(name, value, &s);
    EXPECT_TRUE(st.ok()) << name << "=" << value << ": " << st;
  }
  return flags.With(s);
}

struct Judged {
  BodyVerdict verdict;
  std::string body;  // after the edits
};

Judged JudgeText(const ModelPolicy& p, const std::string& body, BodyApi api = BodyApi::kNative,
                 BodyRoute route = BodyRoute::kGenerate) {
  RequestBodyReader reader(api);
  reader.Feed(body);
  EXPECT_TRUE(reader.Finish()) << reader.error() << " in " << body;
  Judged j;
  j.verdict = JudgeBody(p, api, route, reader);
  j.body = ApplyEdits(body, j.verdict.edits);
  return j;
}

TEST(ModelPolicyTest, Settings) {
  ModelSettings s;
  EXPECT_TRUE(ParseModelSetting("models", "Llama3.1:8b,qwen2.5*", &s).ok());
  ASSERT_TRUE(s.models.has_value());
  EXPECT_EQ(*s.models, (std::vector<std::string>{"llama3.1:8b", "qwen2.5*"}));
  EXPECT_TRUE(ParseModelSetting("alias", "gpt-4o=llama3.1:8b", &s).ok());
  EXPECT_TRUE(ParseModelSetting("max_keep_alive", "30m", &s).ok());
  EXPECT_EQ(s.max_keep_alive_ns, int64_t{1800} * 1'000'000'000);
  EXPECT_TRUE(ParseModelSetting("max_keep_alive", "inf", &s).ok());
  EXPECT_EQ(s.max_keep_alive_ns, kNoLimit);
  EXPECT_TRUE(ParseModelSetting("keep_alive_forever", "yes", &s).ok());
  EXPECT_TRUE(ParseModelSetting("max_num_ctx", "8192", &s).ok());
  EXPECT_TRUE(ParseModelSetting("max_num_predict", "0", &s).ok());
  EXPECT_EQ(s.max_num_predict, kNoLimit);
  EXPECT_TRUE(ParseModelSetting("over_max", "refuse", &s).ok());
  EXPECT_EQ(
      ModelSettingWords(s),
      (std::vector<std::string>{"models=llama3.1:8b,qwen2.5*", "alias=gpt-4o:latest=llama3.1:8b",
                                "max_keep_alive=inf", "keep_alive_forever=yes", "max_num_ctx=8192",
                                "max_num_predict=0", "over_max=refuse"}));
  // Every word read back gives the same settings.
  ModelSettings again;
  for (const std::string& w : ModelSettingWords(s)) {
    const size_t eq = w.find('=');
    EXPECT_TRUE(ParseModelSetting(w.substr(0, eq), w.substr(eq + 1), &again).ok()) << w;
  }
  EXPECT_EQ(ModelSettingWords(again), ModelSettingWords(s));

  const std::pair<const char*, const char*> bad[] = {
      {"models", "a b"},
      {"models", "a\"b"},
      {"alias", "gpt-4o"},
      {"alias", "=x"},
      {"max_keep_alive", "x"},
      {"max_keep_alive", "-5m"},
      {"keep_alive_forever", "maybe"},
      {"max_num_ctx", "-1"},
      {"max_num_predict", "1k"},
      {"over_max", "drop"},
  };
  for (const auto& [name, value] : bad) {
    ModelSettings t;
    absl::Status st = ParseModelSetting(name, value, &t);
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << name << "=" << value << ": " << st;
    EXPECT_TRUE(absl::StrContains(st.message(), name)) << st;
  }
  EXPECT_TRUE(absl::IsNotFound(ParseModelSetting("colour", "blue", &s)));
}

TEST(ModelPolicyTest, NamesAndGlobs) {
  EXPECT_EQ(CanonicalModelName("Llama3"), "llama3:latest");
  EXPECT_EQ(CanonicalModelName("library/llama3"), "llama3:latest");
  EXPECT_EQ(CanonicalModelName("registry.ollama.ai/library/llama3:8B"), "llama3:8b");
  EXPECT_EQ(CanonicalModelName("hf.co/user/model"), "hf.co/user/model:latest");
  EXPECT_EQ(CanonicalModelName("localhost:5000/m"), "localhost:5000/m:latest");
  EXPECT_TRUE(GlobMatch("*", "anything"));
  EXPECT_TRUE(GlobMatch("qwen2.5*", "qwen2.5:7b"));
  EXPECT_TRUE(GlobMatch("llama3:*", "llama3:latest"));
  EXPECT_TRUE(GlobMatch("a?c", "abc"));
  EXPECT_FALSE(GlobMatch("a?c", "abbc"));
  EXPECT_TRUE(GlobMatch("*b*c", "aabxbbc"));
  EXPECT_FALSE(GlobMatch("llama3*", "xllama3"));
  ModelPolicy p = PolicyOf({{"models", "llama3,qwen2.5*"}});
  EXPECT_TRUE(ModelAllowed(p, "llama3:latest"));
  EXPECT_FALSE(ModelAllowed(p, "llama3:70b"));  // a name without a tag is :latest
  EXPECT_TRUE(ModelAllowed(p, "qwen2.5:7b"));
  EXPECT_TRUE(ModelAllowed(ModelPolicy{}, "whatever:latest"));
}

TEST(ModelPolicyTest, KeySettingsOverTheDefaults) {
  ModelPolicy defaults = PolicyOf({{"alias", "gpt-4o=llama3.1:8b"}, {"max_num_ctx", "4096"}});
  ModelSettings key;
  ASSERT_TRUE(ParseModelSetting("alias", "gpt-4o=llama3.1:70b", &key).ok());
  ASSERT_TRUE(ParseModelSetting("alias", "mini=llama3.2:3b", &key).ok());
  ASSERT_TRUE(ParseModelSetting("max_num_predict", "256", &key).ok());
  ModelPolicy p = defaults.With(key);
  ASSERT_EQ(p.aliases.size(), 2u);
  EXPECT_EQ(p.aliases[0].second, "llama3.1:70b");
  EXPECT_EQ(p.max_num_ctx, 4096);
  EXPECT_EQ(p.max_num_predict, 256);
  EXPECT_EQ(p.max_keep_alive_ns, int64_t{3600} * 1'000'000'000);  // the default's
  // Built alone, a policy checks nothing in a generation's body.
  EXPECT_TRUE(ModelPolicy{}.Open());
  EXPECT_FALSE(p.Open());
  EXPECT_TRUE(PolicyOf({{"max_keep_alive", "inf"}, {"keep_alive_forever", "yes"}}).Open());
}

TEST(ModelPolicyTest, AliasesAndAllowedModels) {
  ModelPolicy p = PolicyOf({{"models", "llama3.1:8b,qwen*"}, {"alias", "gpt-4o=llama3.1:8b"}});
  Judged j = JudgeText(p, R"({"model":"gpt-4o","messages":[]})");
  EXPECT_EQ(j.verdict.status, 0) << j.verdict.error;
  EXPECT_EQ(j.body, R"({"model":"llama3.1:8b","messages":[]})");
  EXPECT_EQ(j.verdict.model, "llama3.1:8b");
  EXPECT_EQ(j.verdict.rewrites, kRewriteAlias);

  j = JudgeText(p, R"({"model":"qwen2.5:7b"})");
  EXPECT_EQ(j.verdict.status, 0);
  EXPECT_TRUE(j.verdict.edits.empty());

  j = JudgeText(p, R"({"model":"mistral"})");
  EXPECT_EQ(j.verdict.status, 403);
  EXPECT_EQ(j.verdict.error, "model 'mistral' is not allowed for this key");
  EXPECT_EQ(j.verdict.reason, "model");

  // As Go reads keys: any case, escapes decoded, and the last of two wins.
  EXPECT_EQ(JudgeText(p, R"({"MODEL":"mistral"})").verdict.status, 403);
  EXPECT_EQ(JudgeText(p, R"({"mod\u0065l":"mistral"})").verdict.status, 403);
  EXPECT_EQ(JudgeText(p, R"({"model":"qwen","model":"mistral"})").verdict.status, 403);
  j = JudgeText(p, R"({"model":"mistral","Model":"gpt-4o"})");
  EXPECT_EQ(j.verdict.status, 0);
  EXPECT_EQ(j.body, R"({"model":"mistral","Model":"llama3.1:8b"})");
  // Escapes in the value are decoded before the check.
  EXPECT_EQ(JudgeText(p, R"({"model":"mis\u0074ral"})").verdict.status, 403);
  EXPECT_EQ(JudgeText(p, R"({"model":"QWEN2"})").verdict.status, 0);
  // Not a string: Ollama refuses it too.
  EXPECT_EQ(JudgeText(p, R"({"model":["qwen"]})").verdict.status, 400);
  // No model: Ollama answers that itself.
  EXPECT_EQ(JudgeText(p, R"({"prompt":"hi"})").verdict.status, 0);
  // The OpenAI API reads the same model field.
  j = JudgeText(p, R"({"model":"gpt-4o","messages":[]})", BodyApi::kOpenAi);
  EXPECT_EQ(j.body, R"({"model":"llama3.1:8b","messages":[]})");
}

TEST(ModelPolicyTest, KeepAlive) {
  ModelPolicy p = PolicyOf({});  // at most 1h, no forever
  Judged j = JudgeText(p, R"({"model":"m","keep_alive":-1})");
  EXPECT_EQ(j.verdict.status, 0);
  EXPECT_EQ(j.body, R"({"model":"m","keep_alive":"3600s"})");
  EXPECT_EQ(j.verdict.rewrites, kRewriteKeepAlive);
  EXPECT_EQ(JudgeText(p, R"({"model":"m","keep_alive":"-1m"})").body,
            R"({"model":"m","keep_alive":"3600s"})");
  EXPECT_EQ(JudgeText(p, R"({"model":"m","keep_alive":7200})").body,
            R"({"model":"m","keep_alive":"3600s"})");
  EXPECT_EQ(JudgeText(p, R"({"model":"m","\u212Aeep_alive":"24h"})").body,
            R"({"model":"m","\u212Aeep_alive":"3600s"})");
  for (const char* fine : {R"({"keep_alive":"30m"})", R"({"keep_alive":0})",
                           R"({"keep_alive":null})", R"({"keep_alive":3600})"}) {
    j = JudgeText(p, fine);
    EXPECT_EQ(j.verdict.status, 0) << fine;
    EXPECT_EQ(j.body, fine);
  }
  EXPECT_EQ(JudgeText(p, R"({"keep_alive":"5 minutes"})").verdict.status, 400);
  EXPECT_EQ(JudgeText(p, R"({"keep_alive":true})").verdict.status, 400);
  // Allowed forever; refused rather than lowered.
  EXPECT_EQ(JudgeText(PolicyOf({{"keep_alive_forever", "yes"}}), R"({"keep_alive":-1})").body,
            R"({"keep_alive":-1})");
  j = JudgeText(PolicyOf({{"over_max", "refuse"}}), R"({"keep_alive":"2h"})");
  EXPECT_EQ(j.verdict.status, 400);
  EXPECT_EQ(j.verdict.reason, "keep_alive");
  EXPECT_TRUE(j.verdict.edits.empty());
  // No maximum and no forever: a negative one cannot be lowered, so it is refused.
  EXPECT_EQ(JudgeText(PolicyOf({{"max_keep_alive", "inf"}}), R"({"keep_alive":-1})").verdict.status,
            400);
  // The OpenAI API has no keep_alive.
  EXPECT_TRUE(JudgeText(p, R"({"keep_alive":-1})", BodyApi::kOpenAi).verdict.edits.empty());
}

TEST(ModelPolicyTest, NumCtx) {
  ModelPolicy p = PolicyOf({{"max_num_ctx", "8192"}});
  EXPECT_EQ(JudgeText(p, R"({"options":{"num_ctx":131072}})").body,
            R"({"options":{"num_ctx":8192}})");
  EXPECT_EQ(JudgeText(p, R"({"options":{"num_ctx":1.5e6}})").body,
            R"({"options":{"num_ctx":8192}})");
  EXPECT_EQ(JudgeText(p, R"({"options":{"num_ctx":4096}})").body,
            R"({"options":{"num_ctx":4096}})");
  // Options given twice are merged: the last num_ctx is Ollama's.
  EXPECT_EQ(JudgeText(p, R"({"options":{"num_ctx":1},"options":{"num_ctx":99999}})").body,
            R"({"options":{"num_ctx":1},"options":{"num_ctx":8192}})");
  // Options keys match exactly (a map): NUM_CTX is not num_ctx.
  EXPECT_EQ(JudgeText(p, R"({"options":{"NUM_CTX":99999}})").body,
            R"({"options":{"NUM_CTX":99999}})");
  EXPECT_EQ(JudgeText(p, R"({"options":{"num_ctx":"131072"}})").verdict.status, 400);
  EXPECT_EQ(JudgeText(PolicyOf({{"max_num_ctx", "8192"}, {"over_max", "refuse"}}),
                      R"({"options":{"num_ctx":9000}})")
                .verdict.status,
            400);
}

TEST(ModelPolicyTest, NumPredict) {
  ModelPolicy p = PolicyOf({{"max_num_predict", "512"}});
  EXPECT_EQ(JudgeText(p, R"({"model":"m"})").body,
            R"({"options":{"num_predict":512},"model":"m"})");
  EXPECT_EQ(JudgeText(p, R"({})").body, R"({"options":{"num_predict":512}})");
  EXPECT_EQ(JudgeText(p, R"({"options":{"temperature":0}})").body,
            R"({"options":{"num_predict":512,"temperature":0}})");
  EXPECT_EQ(JudgeText(p, R"({"options":{}})").body, R"({"options":{"num_predict":512}})");
  EXPECT_EQ(JudgeText(p, R"({"options":null})").body, R"({"options":{"num_predict":512}})");
  EXPECT_EQ(JudgeText(p, R"({"options":{"num_predict":-1}})").body,
            R"({"options":{"num_predict":512}})");
  EXPECT_EQ(JudgeText(p, R"({"options":{"num_predict":100}})").body,
            R"({"options":{"num_predict":100}})");
  EXPECT_EQ(JudgeText(p, R"({"options":{"num_predict":4096}})").body,
            R"({"options":{"num_predict":512}})");
  EXPECT_EQ(JudgeText(p, R"({"options":"x"})").verdict.status, 400);
  // Embeddings generate nothing.
  EXPECT_TRUE(JudgeText(p, R"({"model":"m","input":"x"})", BodyApi::kNative, BodyRoute::kEmbed)
                  .verdict.edits.empty());
  // OpenAI: max_tokens.
  EXPECT_EQ(JudgeText(p, R"({"model":"m"})", BodyApi::kOpenAi).body,
            R"({"max_tokens":512,"model":"m"})");
  EXPECT_EQ(JudgeText(p, R"({"max_tokens":5000})", BodyApi::kOpenAi).body, R"({"max_tokens":512})");
  EXPECT_EQ(JudgeText(p, R"({"max_tokens":null})", BodyApi::kOpenAi).body, R"({"max_tokens":512})");
  EXPECT_EQ(JudgeText(p, R"({"max_tokens":10})", BodyApi::kOpenAi).body, R"({"max_tokens":10})");
  EXPECT_EQ(JudgeText(p, R"({"max_tokens":1.5})", BodyApi::kOpenAi).verdict.status, 400);
  Judged j = JudgeText(PolicyOf({{"max_num_predict", "512"}, {"over_max", "refuse"}}),
                       R"({"max_tokens":513})", BodyApi::kOpenAi);
  EXPECT_EQ(j.verdict.status, 400);
  EXPECT_EQ(j.verdict.reason, "num_predict");
  // Absent is lowered to the maximum even when over_max=refuse.
  EXPECT_EQ(JudgeText(PolicyOf({{"max_num_predict", "512"}, {"over_max", "refuse"}}), R"({})").body,
            R"({"options":{"num_predict":512}})");
}

TEST(ModelPolicyTest, Images) {
  ModelSettings s;
  ASSERT_TRUE(ParseModelSetting("max_image_bytes", "2k", &s).ok());
  EXPECT_EQ(s.max_image_bytes, 2048);
  EXPECT_TRUE(ParseModelSetting("max_image_bytes", "20M", &s).ok());
  EXPECT_EQ(s.max_image_bytes, 20 << 20);
  EXPECT_FALSE(ParseModelSetting("max_image_bytes", "lots", &s).ok());
  EXPECT_FALSE(ParseModelSetting("max_image_bytes", "-1k", &s).ok());
  ModelPolicy p = PolicyOf({{"max_images", "2"}, {"max_image_bytes", "8"}});
  EXPECT_EQ(JudgeText(p, R"({"images":["AAAA","AAAA"]})").verdict.status, 0);
  Judged j = JudgeText(p, R"({"images":["A","A","A"]})");
  EXPECT_EQ(j.verdict.status, 400);
  EXPECT_EQ(j.verdict.reason, "images");
  EXPECT_EQ(j.verdict.error, "the request has 3 images; this key may send 2 at most");
  j = JudgeText(p, R"({"messages":[{"content":"x","images":["AAAAAAAAA"]}]})");
  EXPECT_EQ(j.verdict.status, 400);
  EXPECT_EQ(j.verdict.error, "the request's images have 9 bytes; this key may send 8 at most");
  j = JudgeText(p, R"({"messages":[{"content":[{"type":"image_url","image_url":"ABCDEFGHIJ"}]}]})",
                BodyApi::kOpenAi);
  EXPECT_EQ(j.verdict.status, 400);
}

TEST(ModelPolicyTest, PullAndCreateRegistries) {
  EXPECT_EQ(ModelRegistry("llama3"), "registry.ollama.ai");
  EXPECT_EQ(ModelRegistry("library/llama3:8b"), "registry.ollama.ai");
  EXPECT_EQ(ModelRegistry("hf.co/bartowski/Llama-3.2-1B-GGUF"), "hf.co");
  EXPECT_EQ(ModelRegistry("Evil.Example:5000/ns/m:latest"), "evil.example:5000");
  EXPECT_EQ(ModelRegistry("https://evil.example/ns/m"), "evil.example");
  ModelPolicy p;  // registry.ollama.ai only
  EXPECT_EQ(
      JudgeText(p, R"({"model":"llama3"})", BodyApi::kNative, BodyRoute::kPull).verdict.status, 0);
  EXPECT_EQ(JudgeText(p, R"({"model":"registry.ollama.ai/library/llama3"})", BodyApi::kNative,
                      BodyRoute::kPull)
                .verdict.status,
            0);
  Judged j = JudgeText(p, R"({"model":"hf.co/u/m"})", BodyApi::kNative, BodyRoute::kPull);
  EXPECT_EQ(j.verdict.status, 403);
  EXPECT_EQ(j.verdict.reason, "registry");
  EXPECT_EQ(j.verdict.error, "models from 'hf.co' are not allowed (allowed: registry.ollama.ai)");
  // "name" is pulled when "model" is empty; keys in any case.
  EXPECT_EQ(
      JudgeText(p, R"({"model":"","NAME":"evil.example/a/b"})", BodyApi::kNative, BodyRoute::kPull)
          .verdict.status,
      403);
  EXPECT_EQ(
      JudgeText(p, R"({"model":"llama3","insecure":true})", BodyApi::kNative, BodyRoute::kPull)
          .verdict.status,
      403);
  EXPECT_EQ(JudgeText(p, R"({"model":"mine","from":"evil.example/a/b"})", BodyApi::kNative,
                      BodyRoute::kCreate)
                .verdict.status,
            403);
  EXPECT_EQ(
      JudgeText(p, R"({"model":"mine","from":"llama3"})", BodyApi::kNative, BodyRoute::kCreate)
          .verdict.status,
      0);
  ModelPolicy hf = PolicyOf({{"pull_registries", "registry.ollama.ai,HF.co"}});
  EXPECT_EQ(
      JudgeText(hf, R"({"model":"hf.co/u/m"})", BodyApi::kNative, BodyRoute::kPull).verdict.status,
      0);
  ModelPolicy any = PolicyOf({{"pull_registries", "*"}});
  EXPECT_EQ(JudgeText(any, R"({"model":"x.example/u/m"})", BodyApi::kNative, BodyRoute::kPull)
                .verdict.status,
            0);
}

TEST(ModelPolicyTest, EditsTogetherStayInOrder) {
  ModelPolicy p =
      PolicyOf({{"alias", "gpt=llama3"}, {"max_num_ctx", "2048"}, {"max_num_predict", "64"}});
  Judged j = JudgeText(p, R"({"model":"gpt","keep_alive":-1,"options":{"num_ctx":9999}})");
  EXPECT_EQ(j.verdict.status, 0);
  EXPECT_EQ(
      j.body,
      R"({"model":"llama3","keep_alive":"3600s","options":{"num_predict":64,"num_ctx":2048}})");
  EXPECT_EQ(j.verdict.rewrites,
            kRewriteAlias | kRewriteKeepAlive | kRewriteNumCtx | kRewriteNumPredict);
  // A refusal leaves no edit behind.
  j = JudgeText(PolicyOf({{"alias", "gpt=llama3"}, {"over_max", "refuse"}}),
                R"({"model":"gpt","keep_alive":-1})");
  EXPECT_EQ(j.verdict.status, 400);
  EXPECT_TRUE(j.verdict.edits.empty());
}

}  // namespace
}  // namespace sluice::policy
