// Fuzzes the token accounting scanners of core/observe/usage_scanner.h:
// ResponseScanner in its NDJSON, SSE and JSON modes, and RequestScanner,
// fed in pieces as the relay feeds them (core/proxy/relay.cc: Feed per de-chunked
// body piece, Finish at the end of the response).
//
// Input: byte 0 picks the piece count (1 + b % 3) and, in bits 2-3, the
// scanner (NDJSON, SSE, JSON, request); bytes 1 and 2 are the cut positions
// (fuzz::Split); the rest is the body. The first line of the body also goes
// through FormatForContentType.
//
// Checks what the header promises: the pieces may split the body anywhere,
// so the results (usage, events, model, stream) are the same for one piece
// and for several; the events returned by Feed and Finish add up to
// usage().token_events; the model is at most kMaxModelBytes.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/observe/usage_scanner.h"
#include "fuzz_util.h"

namespace sluice::fuzz {
namespace {

using core::BodyFormat;

std::string RunResponse(BodyFormat format, const std::vector<Piece>& pieces) {
  core::ResponseScanner scanner(format);
  FUZZ_CHECK(scanner.format() == format, "format changed");
  size_t events = 0;
  for (const Piece& p : pieces) events += scanner.Feed(p.view());
  events += scanner.Finish();
  const core::TokenUsage& u = scanner.usage();
  FUZZ_CHECK(events == u.token_events, "returned events differ from token_events");
  FUZZ_CHECK(u.model.size() <= core::kMaxModelBytes, "model too long");
  return absl::StrCat(
      "events=", events, " prompt=", u.prompt_tokens ? absl::StrCat(*u.prompt_tokens) : "-",
      " completion=", u.completion_tokens ? absl::StrCat(*u.completion_tokens) : "-", " model=[",
      u.model, "]");
}

std::string RunRequest(const std::vector<Piece>& pieces) {
  core::RequestScanner scanner;
  for (const Piece& p : pieces) scanner.Feed(p.view());
  FUZZ_CHECK(scanner.model().size() <= core::kMaxModelBytes, "model too long");
  return absl::StrCat("model=[", scanner.model(),
                      "] stream=", scanner.stream() ? (*scanner.stream() ? "true" : "false") : "-");
}

}  // namespace
}  // namespace sluice::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::fuzz;
  SplitInput in;
  if (!TakeSplitInput(data, size, &in)) return -1;
  const std::string_view input = in.bytes;
  const uint8_t shape = in.shape;
  const std::vector<Piece>& split = in.pieces;
  const std::vector<Piece>& whole = in.whole;

  (void)sluice::core::FormatForContentType(input.substr(0, input.find('\n')));

  // Byte by byte as well: the most splits there are.
  std::vector<Piece> bytes;
  if (input.size() <= 4096) {
    for (char c : input) bytes.emplace_back(std::string_view(&c, 1));
  }
  static constexpr sluice::core::BodyFormat kFormats[3] = {sluice::core::BodyFormat::kNdjson,
                                                           sluice::core::BodyFormat::kSse,
                                                           sluice::core::BodyFormat::kJson};
  const int mode = (shape >> 2) & 3;
  std::string a, b, c;
  if (mode < 3) {
    a = RunResponse(kFormats[mode], split);
    b = RunResponse(kFormats[mode], whole);
    c = bytes.empty() && !input.empty() ? b : RunResponse(kFormats[mode], bytes);
  } else {
    a = RunRequest(split);
    b = RunRequest(whole);
    c = bytes.empty() && !input.empty() ? b : RunRequest(bytes);
  }
  if (a != b || b != c) {
    std::fprintf(stderr, "split: %s\nwhole: %s\nbytes: %s\n", a.c_str(), b.c_str(), c.c_str());
    FUZZ_CHECK(false, "the result depends on where the body was split");
  }
  return 0;
}
