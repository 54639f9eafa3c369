// Fuzzes http::H1ServerCodec, the downstream HTTP/1.1 request codec, the way
// core/proxy/h1_downstream.cc drives it: pieces of input in order, a partially
// consumed piece dispatched again from where the codec stopped, Resume()
// after each complete request (the engine resumes once it has answered),
// nothing after an upgrade or an error.
//
// Input: byte 0 picks the piece count (1 + b % 3) and, in bit 7, generous
// limits instead of small ones; bytes 1 and 2 are the cut positions (see
// fuzz::Split); the rest is what the client sent.
//
// Checks:
//  - the events (heads, bodies of complete requests, whether it failed,
//    bytes consumed) are the same whether the input came in one piece or
//    in several: where a read ends must not change the parse;
//  - body slices lie inside the Slice given to Dispatch (the relay keeps
//    sub-slices of it), events come in order, a Content-Length body is
//    exactly that long, the body limit holds;
//  - a consumed count short of the piece means paused() or upgraded();
//  - the head as core/proxy/relay.cc forwards it upstream (target normalised,
//    AppendUpstreamRequestHead) is well-formed HTTP/1.1 (fuzz::HeadProblem)
//    and parses back to one request with the same method, target and body
//    framing, so what the codec accepted cannot be re-read differently by
//    the upstream.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/engine/slice.h"
#include "fuzz_forward.h"
#include "fuzz_util.h"
#include "http/h1_server_codec.h"
#include "http/serialize.h"
#include "policy/path.h"

namespace sluice::fuzz {
namespace {

using core::Slice;
using http::H1Limits;
using http::H1ServerCodec;
using http::RequestHead;

// Parses the upstream form of a head back with a fresh codec.
class ReparseSink : public http::H1RequestSink {
 public:
  void OnRequestHead(RequestHead head) override {
    ++heads;
    this->head = std::move(head);
  }
  void OnRequestBody(Slice) override { ++bodies; }
  void OnRequestComplete() override {}
  int heads = 0;
  int bodies = 0;
  RequestHead head;
};

// As core/proxy/relay.cc forwards it (ForwardHead), and read back by our own
// parser as the same request.
void CheckForwardedHead(RequestHead head) {
  std::string out;
  if (!ForwardHead(&head, "http", &out)) return;
  ReparseSink sink;
  H1ServerCodec codec(&sink, H1Limits{size_t{1} << 20, UINT64_MAX});
  absl::StatusOr<size_t> n = codec.Dispatch(Slice::Copy(out));
  FUZZ_CHECK(n.ok(), std::string(n.status().message()).c_str());
  FUZZ_CHECK(*n == out.size(), "forwarded head not consumed whole");
  FUZZ_CHECK(sink.heads == 1 && sink.bodies == 0, "forwarded head is not one head");
  FUZZ_CHECK(sink.head.method == head.method, "method changed");
  FUZZ_CHECK(sink.head.target == head.target, "target changed");
  FUZZ_CHECK(sink.head.chunked == head.chunked, "chunked framing changed");
  FUZZ_CHECK(sink.head.content_length == head.content_length, "content-length changed");
  FUZZ_CHECK(sink.head.upgrade == head.upgrade, "upgrade changed");
}

class Recorder : public http::H1RequestSink {
 public:
  Recorder(H1Limits limits, bool check_forwarded)
      : limits_(limits), check_forwarded_(check_forwarded) {}

  void OnRequestHead(RequestHead head) override {
    FUZZ_CHECK(!in_request_, "head inside a request");
    in_request_ = true;
    body_.clear();
    content_length_ = head.chunked ? std::nullopt : head.content_length;
    absl::StrAppend(&trace, "H ", head.method, " ", head.target, " ", head.version_major, ".",
                    head.version_minor, " host=", head.host,
                    " cl=", head.content_length ? absl::StrCat(*head.content_length) : "-",
                    " chunked=", head.chunked, " ka=", head.keep_alive, " up=", head.upgrade,
                    " expect=", head.expect_continue, "\n");
    for (const http::Header& h : head.headers) {
      absl::StrAppend(&trace, "  ", h.name, ": ", h.value, "\n");
    }
    if (check_forwarded_) CheckForwardedHead(head);
  }
  void OnRequestBody(Slice data) override {
    FUZZ_CHECK(in_request_, "body before head");
    FUZZ_CHECK(Inside(data.view(), current), "body view outside the dispatched buffer");
    body_.append(data.view());
    FUZZ_CHECK(body_.size() <= limits_.max_body_bytes, "body over the limit");
    if (content_length_) FUZZ_CHECK(body_.size() <= *content_length_, "body over Content-Length");
  }
  void OnRequestComplete() override {
    FUZZ_CHECK(in_request_, "complete before head");
    if (content_length_) FUZZ_CHECK(body_.size() == *content_length_, "short body");
    absl::StrAppend(&trace, "B ", body_.size(), " ", body_, "\nC\n");
    in_request_ = false;
    ++completed;
  }

  std::string trace;
  std::string_view current;  // the buffer of the running Dispatch
  int completed = 0;

 private:
  H1Limits limits_;
  bool check_forwarded_;
  bool in_request_ = false;
  std::optional<uint64_t> content_length_;
  std::string body_;
};

// Runs the codec over `pieces` as the engine does; returns the trace.
std::string Run(const std::vector<Piece>& pieces, H1Limits limits, bool check_forwarded) {
  Recorder sink(limits, check_forwarded);
  H1ServerCodec codec(&sink, limits);
  size_t consumed = 0;
  bool failed = false;
  for (const Piece& piece : pieces) {
    // A heap copy that ends where the piece does (an over-read shows), owned
    // as a receive buffer is.
    Slice rest = Slice::Copy(piece.view());
    // Each pass consumes bytes or completes a request; bounded either way.
    for (int guard = 0; !rest.empty() && !failed; ++guard) {
      FUZZ_CHECK(guard <= static_cast<int>(piece.size()) + 1, "no progress");
      if (codec.paused()) codec.Resume();
      if (codec.upgraded()) break;
      sink.current = rest.view();
      absl::StatusOr<size_t> n = codec.Dispatch(rest);
      sink.current = {};
      if (!n.ok()) {
        const int status = http::HttpStatusForError(n.status());
        FUZZ_CHECK(
            status == 400 || status == 413 || status == 417 || status == 431 || status == 501,
            "unexpected status");
        // Only that it failed: which status a head that is both malformed
        // and too large gets (400 or 431) may depend on where a read
        // ended, since llhttp hands over a span when the span or the read
        // ends, and the size is counted then.
        absl::StrAppend(&sink.trace, "E\n");
        // An error is final.
        absl::StatusOr<size_t> again = codec.Dispatch(rest);
        FUZZ_CHECK(!again.ok() && again.status() == n.status(), "error not sticky");
        failed = true;
        break;
      }
      FUZZ_CHECK(*n <= rest.size(), "consumed more than given");
      if (*n < rest.size()) {
        FUZZ_CHECK(codec.paused() || codec.upgraded(), "stopped short without pausing");
      }
      consumed += *n;
      rest.RemovePrefix(*n);
    }
    if (failed || codec.upgraded()) break;
  }
  // After an error, how much the earlier pieces consumed depends on the
  // cuts; the error itself is in the trace.
  if (!failed) {
    absl::StrAppend(&sink.trace, "consumed=", consumed, " upgraded=", codec.upgraded(),
                    " in_message=", codec.in_message(), "\n");
  }
  return sink.trace;
}

}  // namespace
}  // namespace sluice::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::fuzz;
  SplitInput in;
  if (!TakeSplitInput(data, size, &in)) return -1;
  const sluice::http::H1Limits limits = (in.shape & 0x80)
                                            ? sluice::http::H1Limits{}
                                            : sluice::http::H1Limits{/*max_header_bytes=*/300,
                                                                     /*max_body_bytes=*/100};
  CheckSameParse(Run(in.pieces, limits, /*check_forwarded=*/true),
                 Run(in.whole, limits, /*check_forwarded=*/false));
  return 0;
}
