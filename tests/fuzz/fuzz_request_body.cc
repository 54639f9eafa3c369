// Fuzzes the model policy's reading and rewriting of request bodies:
// policy::RequestBodyReader fed in pieces, and policy::JudgeBody's edits.
//
// Input: byte 0 picks the piece count (1 + b % 3), in bit 2 the API
// (native or OpenAI) and in bit 3 the route (generation or embedding);
// bytes 1 and 2 are the cut positions (fuzz::Split); the rest is the body.
//
// Checks what the headers promise: the reader's results do not depend on
// where the body was split; every offset lies inside the body, a string
// field's span starts and ends with a quote; and a body the policy
// rewrote reads as valid JSON again and needs no further rewrite (the
// edits leave exactly the values the policy asked for).

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fuzz_util.h"
#include "policy/model_policy.h"
#include "policy/request_body.h"

namespace sluice::fuzz {
namespace {

using policy::BodyField;
using policy::BodyValue;
using policy::RequestBodyReader;

std::string Read(RequestBodyReader* r, const std::vector<Piece>& pieces, size_t size) {
  for (const Piece& p : pieces) r->Feed(p.view());
  r->Finish();
  std::string s = absl::StrCat("err=", r->error(), " images=", r->images(), "/", r->image_bytes(),
                               " prompt=", r->prompt_bytes());
  if (r->failed()) return s;
  FUZZ_CHECK(r->complete(), "finished without error but not complete");
  FUZZ_CHECK(r->root_begin() < r->root_end() && r->root_end() < size, "root outside the body");
  for (size_t i = 0; i < static_cast<size_t>(BodyField::kCount); ++i) {
    const BodyValue& v = r->Get(static_cast<BodyField>(i));
    if (!v.present()) continue;
    FUZZ_CHECK(v.key_begin < v.value_begin && v.value_begin < v.value_end && v.value_end <= size,
               "a field outside the body");
    absl::StrAppend(&s, " [", i, " ", v.count, " ", v.exact_key, " ", static_cast<int>(v.kind), " ",
                    v.key_begin, " ", v.value_begin, "-", v.value_end, " ", v.text, "]");
  }
  return s;
}

policy::ModelPolicy Strict() {
  policy::ModelPolicy p;
  p.models = {"llama3*", "qwen?:*"};
  p.aliases = {{"gpt-4o:latest", "llama3.1:8b"}};
  p.max_keep_alive_ns = 600'000'000'000;
  p.keep_alive_forever = false;
  p.max_num_ctx = 4096;
  p.max_num_predict = 256;
  p.max_images = 4;
  return p;
}

}  // namespace
}  // namespace sluice::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::fuzz;
  using sluice::policy::BodyApi;
  using sluice::policy::BodyRoute;
  SplitInput in;
  if (!TakeSplitInput(data, size, &in)) return -1;
  const BodyApi api = (in.shape & 4) ? BodyApi::kOpenAi : BodyApi::kNative;
  const BodyRoute route = (in.shape & 8) ? BodyRoute::kEmbed : BodyRoute::kGenerate;
  const std::string body(in.bytes);

  RequestBodyReader split(api);
  RequestBodyReader whole(api);
  const std::string a = Read(&split, in.pieces, body.size());
  const std::string b = Read(&whole, in.whole, body.size());
  if (a != b) {
    std::fprintf(stderr, "split: %s\nwhole: %s\n", a.c_str(), b.c_str());
    FUZZ_CHECK(false, "the result depends on where the body was split");
  }
  if (whole.failed()) return 0;
  for (size_t i = 0; i < static_cast<size_t>(BodyField::kCount); ++i) {
    const BodyValue& v = whole.Get(static_cast<BodyField>(i));
    if (v.present() && v.kind == sluice::policy::BodyValueKind::kString) {
      FUZZ_CHECK(body[v.value_begin] == '"' && body[v.value_end - 1] == '"',
                 "a string field's span is not quoted");
    }
  }
  const sluice::policy::ModelPolicy policy = Strict();
  const sluice::policy::BodyVerdict v = sluice::policy::JudgeBody(policy, api, route, whole);
  if (v.status != 0 || v.edits.empty()) return 0;
  uint64_t last = 0;
  for (const sluice::policy::BodyEdit& e : v.edits) {
    FUZZ_CHECK(e.begin >= last && e.begin <= e.end && e.end <= body.size(), "edits overlap");
    last = e.end;
  }
  const std::string rewritten = sluice::policy::ApplyEdits(body, v.edits);
  RequestBodyReader again(api);
  again.Feed(rewritten);
  if (!again.Finish()) {
    std::fprintf(stderr, "rewritten: %s\nerror: %s\n", rewritten.c_str(), again.error().c_str());
    FUZZ_CHECK(false, "a rewritten body does not read");
  }
  const sluice::policy::BodyVerdict w = sluice::policy::JudgeBody(policy, api, route, again);
  if (w.status != 0 || !w.edits.empty()) {
    std::fprintf(stderr, "rewritten: %s\nstatus %d, %zu edits\n", rewritten.c_str(), w.status,
                 w.edits.size());
    FUZZ_CHECK(false, "a rewritten body needs rewriting again");
  }
  return 0;
}
