// Fuzzes http::H1ResponseParser, the upstream response parser, the way
// core/proxy/relay.cc drives it: Begin(), then pieces of input in order until the
// response is complete, upgraded or broken, then Finish() when the input
// ends first (the upstream closed its side).
//
// Input: byte 0 picks the piece count (1 + b % 3), bit 7 a HEAD request,
// bit 6 an HTTP/1.0 client and bit 5 a client that wants the connection
// closed (how the head is restated downstream); bytes 1 and 2 are the cut
// positions (fuzz::Split); the rest is what the upstream sent.
//
// Checks:
//  - the events (head, body, completion, Finish's verdict, bytes left over)
//    are the same for one piece and for several;
//  - body slices lie inside the Slice given to Dispatch (the relay forwards
//    sub-slices of it), events come in order, a Content-Length body is
//    never longer than declared and exactly that long when complete;
//  - the head as restated to the client (AppendDownstreamResponseHead, with
//    the framing core/proxy/h1_downstream.cc picks) parses back to the same
//    status and framing.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/engine/slice.h"
#include "fuzz_util.h"
#include "http/h1_response_parser.h"
#include "http/serialize.h"

namespace sluice::fuzz {
namespace {

using core::Slice;
using http::BodyFraming;
using http::H1ResponseParser;
using http::ResponseHead;

struct ClientShape {
  bool head_request = false;
  bool http10 = false;
  bool close = false;
  bool websocket = false;  // the request was a WebSocket handshake
};

class ReparseSink : public http::H1ResponseSink {
 public:
  void OnResponseHead(ResponseHead head) override {
    ++heads;
    this->head = std::move(head);
  }
  void OnResponseBody(Slice) override { ++bodies; }
  void OnResponseComplete() override { ++completes; }
  int heads = 0;
  int bodies = 0;
  int completes = 0;
  ResponseHead head;
};

// Restates the head as H1Downstream::SendResponseHead does and parses it
// back as a client would.
void CheckDownstreamHead(const ResponseHead& head, const ClientShape& client) {
  BodyFraming framing;
  const bool no_body =
      client.head_request || head.status < 200 || head.status == 204 || head.status == 304;
  if (no_body) {
    framing = BodyFraming::kNone;
  } else if (head.content_length.has_value()) {
    framing = BodyFraming::kContentLength;
  } else if (client.http10) {
    framing = BodyFraming::kClose;
  } else {
    framing = BodyFraming::kChunked;
  }
  const bool upgrade = head.status == 101;
  std::string out;
  http::AppendDownstreamResponseHead(head, framing, client.close && !upgrade, &out,
                                     "Strict-Transport-Security: max-age=60\r\n");
  ReparseSink sink;
  H1ResponseParser parser(&sink);
  parser.Begin(client.head_request, client.websocket);
  absl::StatusOr<size_t> n = parser.Dispatch(Slice::Copy(out));
  FUZZ_CHECK(n.ok(), std::string(n.status().message()).c_str());
  FUZZ_CHECK(*n == out.size(), "restated head not consumed whole");
  FUZZ_CHECK(sink.heads == 1 && sink.bodies == 0, "restated head is not one head");
  FUZZ_CHECK(sink.head.status == head.status, "status changed");
  switch (framing) {
    case BodyFraming::kContentLength:
      FUZZ_CHECK(sink.head.content_length == head.content_length, "length changed");
      FUZZ_CHECK(!sink.head.chunked, "became chunked");
      break;
    case BodyFraming::kChunked:
      FUZZ_CHECK(sink.head.chunked, "chunked framing lost");
      break;
    case BodyFraming::kNone:
      FUZZ_CHECK(sink.completes == 1 || upgrade, "bodiless response not complete");
      break;
    case BodyFraming::kClose:
      FUZZ_CHECK(!sink.head.chunked && !sink.head.content_length, "close framing lost");
      break;
  }
}

class Recorder : public http::H1ResponseSink {
 public:
  Recorder(ClientShape client, bool check_downstream)
      : client_(client), check_downstream_(check_downstream) {}

  void OnResponseHead(ResponseHead head) override {
    FUZZ_CHECK(!head_seen_, "two heads");
    FUZZ_CHECK(head.status == 101 || head.status >= 200, "interim head reached the sink");
    head_seen_ = true;
    bodiless_ = client_.head_request || head.status == 204 || head.status == 304;
    content_length_ = head.chunked ? std::nullopt : head.content_length;
    absl::StrAppend(&trace, "H ", head.status, " ", head.version_major, ".", head.version_minor,
                    " [", head.reason,
                    "] cl=", head.content_length ? absl::StrCat(*head.content_length) : "-",
                    " chunked=", head.chunked, " ka=", head.keep_alive, "\n");
    for (const http::Header& h : head.headers) {
      absl::StrAppend(&trace, "  ", h.name, ": ", h.value, "\n");
    }
    if (check_downstream_) CheckDownstreamHead(head, client_);
  }
  void OnResponseBody(Slice data) override {
    FUZZ_CHECK(head_seen_ && !complete_, "body outside a response");
    FUZZ_CHECK(!bodiless_, "body for a bodiless response");
    FUZZ_CHECK(Inside(data.view(), current), "body view outside the dispatched buffer");
    body_.append(data.view());
    if (content_length_) FUZZ_CHECK(body_.size() <= *content_length_, "body over Content-Length");
  }
  void OnResponseComplete() override {
    FUZZ_CHECK(head_seen_ && !complete_, "complete twice or before the head");
    if (content_length_ && !bodiless_) {
      FUZZ_CHECK(body_.size() == *content_length_, "short body");
    }
    complete_ = true;
    absl::StrAppend(&trace, "C\n");
  }

  // The body is recorded once the run is over: a broken response may have
  // delivered part of it, and how much depends on the cuts.
  void EndTrace(bool broken) {
    if (!broken) absl::StrAppend(&trace, "B ", body_.size(), " ", body_, "\n");
  }

  std::string trace;
  std::string_view current;

 private:
  ClientShape client_;
  bool check_downstream_;
  bool head_seen_ = false;
  bool complete_ = false;
  bool bodiless_ = false;
  std::optional<uint64_t> content_length_;
  std::string body_;
};

std::string Run(const std::vector<Piece>& pieces, ClientShape client, bool check_downstream) {
  Recorder sink(client, check_downstream);
  H1ResponseParser parser(&sink);
  parser.Begin(client.head_request, client.websocket);
  bool broken = false;
  bool stopped = false;  // complete or upgraded: the rest is not parsed
  size_t left_over = 0;
  for (const Piece& piece : pieces) {
    // A heap copy that ends where the piece does (an over-read shows), owned
    // as a receive buffer is.
    Slice rest = Slice::Copy(piece.view());
    if (stopped) {
      left_over += rest.size();
      continue;
    }
    while (!rest.empty()) {
      sink.current = rest.view();
      absl::StatusOr<size_t> n = parser.Dispatch(rest);
      sink.current = {};
      if (!n.ok()) {
        FUZZ_CHECK(n.status().code() == absl::StatusCode::kInvalidArgument, "odd error code");
        absl::StatusOr<size_t> again = parser.Dispatch(rest);
        FUZZ_CHECK(!again.ok(), "error not sticky");
        FUZZ_CHECK(!parser.Finish().ok(), "Finish ok after an error");
        absl::StrAppend(&sink.trace, "E\n");
        broken = true;
        break;
      }
      FUZZ_CHECK(*n <= rest.size(), "consumed more than given");
      rest.RemovePrefix(*n);
      if (parser.complete() || parser.upgraded()) {
        stopped = true;
        left_over += rest.size();
        break;
      }
      FUZZ_CHECK(rest.empty(), "stopped short of a complete response");
    }
    if (broken) break;
  }
  if (!broken && !stopped) {
    absl::Status st = parser.Finish();
    absl::StrAppend(&sink.trace, "F ", absl::StatusCodeToString(st.code()), "\n");
    if (!st.ok()) broken = true;
    FUZZ_CHECK(st.ok() == parser.complete(), "Finish ok without completing");
  }
  if (parser.started()) FUZZ_CHECK(!pieces.empty(), "started without input");
  absl::StrAppend(&sink.trace, "complete=", parser.complete(), " upgraded=", parser.upgraded(),
                  " head_done=", parser.head_done(), " left_over=", left_over, "\n");
  sink.EndTrace(broken);
  return sink.trace;
}

}  // namespace
}  // namespace sluice::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::fuzz;
  SplitInput in;
  if (!TakeSplitInput(data, size, &in)) return -1;
  ClientShape client;
  client.head_request = in.shape & 0x80;
  client.http10 = in.shape & 0x40;
  client.close = in.shape & 0x20;
  client.websocket = in.shape & 0x10;
  CheckSameParse(Run(in.pieces, client, true), Run(in.whole, client, false));
  return 0;
}
