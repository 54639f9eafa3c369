// Microbenchmarks of the HTTP/1.1 request path: H1ServerCodec parsing a
// typical chat request, the same plus the upstream head rewrite, and llhttp
// alone on the same bytes as the baseline that gives the ratios meaning.
//
// Every benchmark parses the request again on one long-lived parser, as a
// keepalive connection does: the parser pauses after each complete request
// and is resumed before the next.
#include <llhttp.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "core/engine/slice.h"
#include "http/h1_server_codec.h"
#include "http/message.h"
#include "http/serialize.h"

// The Debian abseil predates absl/log; a failed check means the benchmark
// measured something other than a parsed request, so stop loudly.
#define BENCH_CHECK(cond)                                                      \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                 \
    }                                                                          \
  } while (0)

namespace sluice::http {
namespace {

constexpr std::string_view kChatBody =
    R"({"model":"llama3.2:3b","messages":[{"role":"system","content":)"
    R"("You are a helpful assistant."},{"role":"user","content":)"
    R"("Write a haiku about a river."}],"stream":true,"temperature":0.7})";

// What the OpenAI Python SDK sends, pointed at Ollama's native chat endpoint:
// 10 header fields, a bearer token and a 184-byte JSON body (531 bytes).
std::string ChatRequest() {
  return absl::StrCat(
      "POST /api/chat HTTP/1.1\r\n"
      "Host: 127.0.0.1:8080\r\n"
      "Accept-Encoding: gzip, deflate\r\n"
      "Connection: keep-alive\r\n"
      "Accept: application/json\r\n"
      "Content-Type: application/json\r\n"
      "User-Agent: OpenAI/Python 1.54.4\r\n"
      "Authorization: Bearer sk-sluice-0123456789abcdef0123456789abcdef\r\n"
      "X-Stainless-Lang: python\r\n"
      "X-Stainless-Package-Version: 1.54.4\r\n"
      "Content-Length: ",
      kChatBody.size(), "\r\n\r\n", std::string(kChatBody));
}

// Keeps what a relay would keep (the head, moved; the body size) and nothing
// else, so the codec's own work dominates.
class KeepingSink : public H1RequestSink {
 public:
  void OnRequestHead(RequestHead head) override { head_ = std::move(head); }
  void OnRequestBody(core::Slice data) override { body_bytes_ += data.size(); }
  void OnRequestComplete() override { ++complete_; }

  const RequestHead& head() const { return head_; }
  size_t complete() const { return complete_; }

 private:
  RequestHead head_;
  size_t body_bytes_ = 0;
  size_t complete_ = 0;
};

// The request as the codec reads it: one Slice, as a receive buffer is.
core::Slice ChatRequestSlice() { return core::Slice::Copy(ChatRequest()); }

// Parses `request` once on `codec` and readies it for the next request.
inline void ParseOne(H1ServerCodec& codec, const core::Slice& request) {
  absl::StatusOr<size_t> consumed = codec.Dispatch(request);
  BENCH_CHECK(consumed.ok() && *consumed == request.size() && codec.paused());
  codec.Resume();
}

void BM_H1ServerCodecParse(benchmark::State& state) {
  const core::Slice request = ChatRequestSlice();
  KeepingSink sink;
  H1ServerCodec codec(&sink, H1Limits());
  for (auto _ : state) {
    ParseOne(codec, request);
    benchmark::DoNotOptimize(sink.head().headers.data());
  }
  BENCH_CHECK(sink.complete() == static_cast<size_t>(state.iterations()));
  state.SetBytesProcessed(state.iterations() * request.size());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_H1ServerCodecParse);

// The same request arriving in two reads, split inside a header value: the
// codec must stitch the value's two spans together.
void BM_H1ServerCodecParseSplit(benchmark::State& state) {
  const core::Slice request = ChatRequestSlice();
  const size_t split = request.view().find("Bearer") + 10;
  const core::Slice first = request.Sub(0, split);
  const core::Slice second = request.Sub(split, request.size() - split);
  KeepingSink sink;
  H1ServerCodec codec(&sink, H1Limits());
  for (auto _ : state) {
    absl::StatusOr<size_t> a = codec.Dispatch(first);
    absl::StatusOr<size_t> b = codec.Dispatch(second);
    BENCH_CHECK(a.ok() && b.ok() && *a + *b == request.size() && codec.paused());
    codec.Resume();
    benchmark::DoNotOptimize(sink.head().headers.data());
  }
  state.SetBytesProcessed(state.iterations() * request.size());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_H1ServerCodecParseSplit);

// Parse, then the head the proxy sends upstream, into a per-connection
// output buffer that keeps its capacity across requests.
void BM_H1ServerCodecParseAndRewrite(benchmark::State& state) {
  const core::Slice request = ChatRequestSlice();
  KeepingSink sink;
  H1ServerCodec codec(&sink, H1Limits());
  const ForwardContext ctx{
      .client_addr = "127.0.0.1", .proto = "http", .upstream_host = "127.0.0.1:11434"};
  std::string out;
  for (auto _ : state) {
    ParseOne(codec, request);
    out.clear();
    AppendUpstreamRequestHead(sink.head(), ctx, &out);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["head_out_bytes"] = static_cast<double>(out.size());
  state.SetBytesProcessed(state.iterations() * request.size());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_H1ServerCodecParseAndRewrite);

// The rewrite alone, on an already parsed head.
void BM_AppendUpstreamRequestHead(benchmark::State& state) {
  const core::Slice request = ChatRequestSlice();
  KeepingSink sink;
  H1ServerCodec codec(&sink, H1Limits());
  ParseOne(codec, request);
  const ForwardContext ctx{
      .client_addr = "127.0.0.1", .proto = "http", .upstream_host = "127.0.0.1:11434"};
  std::string out;
  for (auto _ : state) {
    out.clear();
    AppendUpstreamRequestHead(sink.head(), ctx, &out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AppendUpstreamRequestHead);

// Baseline: llhttp (the same strict-mode build the codec links) with no span
// callbacks, pausing after each message exactly as the codec does. This is
// the floor any llhttp-based codec pays.
int PauseOnComplete(llhttp_t* parser) {
  ++*static_cast<size_t*>(parser->data);
  return HPE_PAUSED;
}

void BM_LlhttpParse(benchmark::State& state) {
  const std::string request = ChatRequest();
  llhttp_settings_t settings;
  llhttp_settings_init(&settings);
  settings.on_message_complete = &PauseOnComplete;
  llhttp_t parser;
  llhttp_init(&parser, HTTP_REQUEST, &settings);
  size_t complete = 0;
  parser.data = &complete;
  for (auto _ : state) {
    llhttp_errno_t err = llhttp_execute(&parser, request.data(), request.size());
    BENCH_CHECK(err == HPE_PAUSED);
    BENCH_CHECK(llhttp_get_error_pos(&parser) == request.data() + request.size());
    llhttp_resume(&parser);
  }
  BENCH_CHECK(complete == static_cast<size_t>(state.iterations()));
  state.SetBytesProcessed(state.iterations() * request.size());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_LlhttpParse);

// Baseline with the minimum a codec must add: target and header spans copied
// into strings whose capacity is reused, so no allocation after warm-up.
// The gap between this and BM_H1ServerCodecParse is the codec's validation
// and its owned, moved-out RequestHead.
struct Collected {
  std::string target;
  std::vector<std::pair<std::string, std::string>> headers;
  size_t used = 0;
  bool last_was_value = false;
  size_t complete = 0;
};

Collected& Of(llhttp_t* parser) { return *static_cast<Collected*>(parser->data); }

int CollectBegin(llhttp_t* parser) {
  Collected& c = Of(parser);
  c.target.clear();
  c.used = 0;
  c.last_was_value = false;
  return 0;
}

int CollectUrl(llhttp_t* parser, const char* at, size_t len) {
  Of(parser).target.append(at, len);
  return 0;
}

int CollectField(llhttp_t* parser, const char* at, size_t len) {
  Collected& c = Of(parser);
  if (c.last_was_value || c.used == 0) {
    if (c.used == c.headers.size()) c.headers.emplace_back();
    c.headers[c.used].first.clear();
    c.headers[c.used].second.clear();
    ++c.used;
  }
  c.last_was_value = false;
  c.headers[c.used - 1].first.append(at, len);
  return 0;
}

int CollectValue(llhttp_t* parser, const char* at, size_t len) {
  Collected& c = Of(parser);
  c.last_was_value = true;
  c.headers[c.used - 1].second.append(at, len);
  return 0;
}

int CollectComplete(llhttp_t* parser) {
  ++Of(parser).complete;
  return HPE_PAUSED;
}

void BM_LlhttpParseCollect(benchmark::State& state) {
  const std::string request = ChatRequest();
  llhttp_settings_t settings;
  llhttp_settings_init(&settings);
  settings.on_message_begin = &CollectBegin;
  settings.on_url = &CollectUrl;
  settings.on_header_field = &CollectField;
  settings.on_header_value = &CollectValue;
  settings.on_message_complete = &CollectComplete;
  llhttp_t parser;
  llhttp_init(&parser, HTTP_REQUEST, &settings);
  Collected collected;
  parser.data = &collected;
  for (auto _ : state) {
    llhttp_errno_t err = llhttp_execute(&parser, request.data(), request.size());
    BENCH_CHECK(err == HPE_PAUSED);
    llhttp_resume(&parser);
    benchmark::DoNotOptimize(collected.headers.data());
  }
  BENCH_CHECK(collected.used == 10u);
  BENCH_CHECK(collected.complete == static_cast<size_t>(state.iterations()));
  state.SetBytesProcessed(state.iterations() * request.size());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_LlhttpParseCollect);

}  // namespace
}  // namespace sluice::http

BENCHMARK_MAIN();
