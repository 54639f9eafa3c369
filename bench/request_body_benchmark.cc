// The model policy's cost on request bodies: reading a body as Ollama
// reads it (policy::RequestBodyReader) and judging it (policy::JudgeBody),
// on a typical 2 KB /api/chat body and on a 20 MB body carrying one base64
// image. The baseline is memchr over the same bytes for a byte that is not
// there: the least any reader of every byte costs. Results in
// bench/RESULTS.md.
#include <benchmark/benchmark.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "policy/model_policy.h"
#include "policy/request_body.h"

namespace {

using sluice::policy::BodyApi;
using sluice::policy::BodyRoute;

std::string ChatBody() {
  std::string messages;
  for (int i = 0; i < 8; ++i) {
    absl::StrAppend(&messages, i ? "," : "", R"({"role":")", i % 2 ? "assistant" : "user",
                    R"(","content":")", std::string(200, 'a' + i), R"("})");
  }
  return absl::StrCat(R"({"model":"llama3.1:8b","messages":[)", messages,
                      R"(],"stream":true,"keep_alive":"30m","options":{"temperature":0.7,)",
                      R"("num_ctx":8192}})");
}

std::string ImageBody() {
  std::string image(20 << 20, 'Q');
  for (size_t i = 0; i < image.size(); i += 61) image[i] = static_cast<char>('A' + i % 26);
  return absl::StrCat(R"({"model":"llava","prompt":"what is this?","images":[")", image,
                      R"("],"keep_alive":-1})");
}

sluice::policy::ModelPolicy Policy() {
  sluice::policy::ModelPolicy p;
  p.models = {"llama3*", "llava*"};
  p.max_keep_alive_ns = int64_t{3600} * 1'000'000'000;
  p.keep_alive_forever = false;
  p.max_num_ctx = 4096;
  p.max_num_predict = 1024;
  return p;
}

void Baseline(benchmark::State& state, const std::string& body) {
  for (auto _ : state) {
    benchmark::DoNotOptimize(std::memchr(body.data(), '\x07', body.size()));
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * body.size()));
}

void ReadAndJudge(benchmark::State& state, const std::string& body) {
  const sluice::policy::ModelPolicy p = Policy();
  for (auto _ : state) {
    sluice::policy::RequestBodyReader r(BodyApi::kNative);
    r.Feed(body);
    if (!r.Finish()) state.SkipWithError(r.error().c_str());
    sluice::policy::BodyVerdict v =
        sluice::policy::JudgeBody(p, BodyApi::kNative, BodyRoute::kGenerate, r);
    benchmark::DoNotOptimize(v);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * body.size()));
}

void BM_BaselineMemchrChat(benchmark::State& state) { Baseline(state, ChatBody()); }
void BM_ReadAndJudgeChat(benchmark::State& state) { ReadAndJudge(state, ChatBody()); }
void BM_BaselineMemchrImage(benchmark::State& state) { Baseline(state, ImageBody()); }
void BM_ReadAndJudgeImage(benchmark::State& state) { ReadAndJudge(state, ImageBody()); }

BENCHMARK(BM_BaselineMemchrChat);
BENCHMARK(BM_ReadAndJudgeChat);
BENCHMARK(BM_BaselineMemchrImage);
BENCHMARK(BM_ReadAndJudgeImage);

}  // namespace

BENCHMARK_MAIN();
