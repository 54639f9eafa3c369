// Fuzzes http::H2ServerCodec, the HTTP/2 server session, the way
// core/proxy/h2_downstream.cc drives it: client bytes go to Dispatch in pieces,
// the output is taken until the codec wants to write nothing more, and every
// stream the codec reports gets an answer (at once from inside the event,
// as a policy refusal does, or later in steps, as a relayed upstream
// response does), so the send path runs too: responses with and without
// Content-Length, bodies past the flow-control window, trailers, interim
// 1xx, JSON errors, resets by the application, request bodies consumed at
// once or later.
//
// Input: byte 0 = piece count (1 + b % 3) and flags: bit 2 prepends the
// client connection preface, bit 3 sends the shutdown notice after the
// first piece, bit 4 a graceful GOAWAY after the second, bits 5-6 pick the
// TakeOutput limit, bit 7 copies request DATA below 16 bytes instead of
// 1024; bytes 1-2 are the cut positions (fuzz::Split); byte 3 seeds which
// answer each stream gets; the rest is what the client sent.
//
// Checks the sink contract of h2_server_codec.h: per stream, headers first,
// then data, trailers, end, then exactly one of closed/reset and nothing
// after it or after the sink's own ResetStream; stream calls on a finished
// stream return NotFound; ConsumeRequestBody of exactly what was delivered
// succeeds; a connection error is sticky, has a documented status code and
// leaves every stream the sink knows reset; the output is whole HTTP/2
// frames starting with the server's SETTINGS. Each request, as forwarded
// upstream in HTTP/1.1, is a well-formed head (fuzz::HeadProblem).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/engine/slice.h"
#include "fuzz_forward.h"
#include "fuzz_util.h"
#include "http/h2_server_codec.h"
#include "http/serialize.h"
#include "policy/path.h"

namespace sluice::fuzz {
namespace {

using core::Slice;
using http::H2ServerCodec;
using http::Header;
using http::RequestHead;
using http::ResponseHead;

constexpr std::string_view kClientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
constexpr size_t kBodyBytes = 100 * 1024;
const char kBody[kBodyBytes] = {};  // response body bytes (zeros)

// How the application answers one stream.
enum class Plan {
  kJsonError,  // SubmitJsonError inside OnRequestHeaders (a policy refusal)
  kImmediate,  // head, data and end inside OnRequestHeaders
  kDeferred,   // head, data, end with trailers, one step per tick
  kStreaming,  // a body larger than the stream window, with backpressure
  kReset,      // ResetStream after the head arrived
  kInterim,    // 103, then 204 without body
  kCount,
};

struct StreamState {
  Plan plan = Plan::kJsonError;
  bool head_request = false;
  bool has_trailers = false;
  bool ended = false;      // OnRequestEnd
  bool terminal = false;   // OnStreamClosed or OnStreamReset
  bool app_reset = false;  // we called ResetStream
  bool checked_dead = false;
  int step = 0;
  size_t sent = 0;
  bool consume_later = false;
  size_t unconsumed = 0;
  std::vector<Slice> held;  // request body pieces "in flight upstream"
};

// Checks that the output is a sequence of HTTP/2 frames.
class FrameChecker {
 public:
  void Feed(std::string_view bytes) {
    for (char c : bytes) {
      if (payload_left_ > 0) {
        --payload_left_;
        continue;
      }
      header_[header_len_++] = static_cast<uint8_t>(c);
      if (header_len_ == 9) {
        const uint32_t length = uint32_t{header_[0]} << 16 | uint32_t{header_[1]} << 8 | header_[2];
        const uint8_t type = header_[3];
        const uint32_t stream = (uint32_t{header_[5]} << 24 | uint32_t{header_[6]} << 16 |
                                 uint32_t{header_[7]} << 8 | header_[8]) &
                                0x7fffffff;
        if (frames_ == 0) {
          FUZZ_CHECK(type == 0x4 && stream == 0, "output does not start with SETTINGS");
        }
        // Server frames on a stream are on client-initiated (odd) ones.
        FUZZ_CHECK(stream == 0 || stream % 2 == 1, "server frame on an even stream");
        ++frames_;
        payload_left_ = length;
        header_len_ = 0;
      }
    }
  }
  bool at_boundary() const { return header_len_ == 0 && payload_left_ == 0; }

 private:
  uint8_t header_[9];
  size_t header_len_ = 0;
  size_t payload_left_ = 0;
  size_t frames_ = 0;
};

// The request as core/proxy/relay.cc forwards it to the HTTP/1.1 upstream must
// be a well-formed head (ForwardHead).
void CheckForwardedHead(RequestHead head) {
  std::string out;
  ForwardHead(&head, "https", &out);
}

class Harness : public http::H2StreamSink {
 public:
  Harness(uint8_t flags, uint8_t seed) : seed_(seed) {
    http::H2Options o;
    o.max_concurrent_streams = 8;
    o.max_header_list_bytes = 4096;
    o.max_header_fields = 32;
    o.max_sent_resets_per_window = 20;
    o.received_reset_burst = 50;
    o.max_outbound_ack = 100;
    o.max_queued_frames = 200;
    o.copy_data_below = (flags & 0x80) ? 16 : 1024;
    o.now_ms = [this] { return now_ms_; };
    static constexpr size_t kLimits[4] = {0, 1, 4096, 64 * 1024};
    take_limit_ = kLimits[(flags >> 5) & 3];
    codec_ = std::make_unique<H2ServerCodec>(this, o);
  }

  ~Harness() override {
    // The codec goes first (the sink must outlive it), then held slices.
    codec_.reset();
  }

  void Dispatch(std::string_view piece) {
    now_ms_ += 3;
    const Slice in = Slice::Copy(piece);
    const bool was_failed = failed_;
    absl::Status st = codec_->Dispatch(in);
    if (was_failed) {
      FUZZ_CHECK(st == first_error_, "connection error not sticky");
    } else if (!st.ok()) {
      FUZZ_CHECK(st.code() == absl::StatusCode::kInvalidArgument ||
                     st.code() == absl::StatusCode::kResourceExhausted ||
                     st.code() == absl::StatusCode::kInternal,
                 "undocumented status code");
      failed_ = true;
      first_error_ = st;
    }
    FUZZ_CHECK(codec_->status() == st, "status() differs from Dispatch");
  }

  // Takes output and advances the deferred answers until nothing moves.
  void Drain() {
    for (int round = 0; round < 200; ++round) {
      bool progress = Tick();
      if (codec_->WantsWrite()) {
        std::vector<Slice> out;
        codec_->TakeOutput(&out, take_limit_);
        for (const Slice& s : out) {
          frames_.Feed(s.view());
          progress = progress || !s.empty();
        }
      }
      if (!progress) break;
    }
  }

  void Shutdown(bool final_goaway) {
    if (final_goaway) {
      codec_->GracefulGoaway();
    } else {
      codec_->SubmitShutdownNotice();
    }
  }

  void Finish() {
    Drain();
    if (!codec_->WantsWrite()) {
      FUZZ_CHECK(frames_.at_boundary(), "output ends inside a frame");
    }
    if (!codec_->status().ok()) {
      for (const auto& [id, s] : streams_) {
        FUZZ_CHECK(s.terminal || s.app_reset, "stream not reset after a connection error");
      }
    }
    // total_queued_bytes() sums every stream, the sink's among them.
    size_t total = 0;
    for (const auto& [id, s] : streams_) total += codec_->QueuedBytes(id);
    FUZZ_CHECK(total <= codec_->total_queued_bytes(), "queued bytes disagree");
    (void)codec_->active_streams();
    (void)codec_->ShouldClose();
  }

  // --- H2StreamSink.

  void OnRequestHeaders(int32_t id, RequestHead head, bool end_stream) override {
    FUZZ_CHECK(id > 0 && id % 2 == 1, "request on a server stream id");
    FUZZ_CHECK(streams_.find(id) == streams_.end(), "headers twice for a stream");
    FUZZ_CHECK(head.version_major == 2 && head.version_minor == 0, "version not 2.0");
    FUZZ_CHECK(!(head.chunked && head.content_length.has_value()), "chunked with a length");
    FUZZ_CHECK(!(end_stream && head.chunked), "chunked without a body");
    CheckForwardedHead(head);
    StreamState& s = streams_[id];
    s.plan = static_cast<Plan>((seed_ + static_cast<uint32_t>(id) / 2) %
                               static_cast<uint32_t>(Plan::kCount));
    s.head_request = head.is_head();
    s.consume_later = ((seed_ >> 4) + static_cast<uint32_t>(id)) % 2 == 0;
    switch (s.plan) {
      case Plan::kJsonError:
        (void)codec_->SubmitJsonError(id, 429, "too \"many\" requests", 7);
        break;
      case Plan::kImmediate: {
        ResponseHead r;
        r.status = 200;
        r.content_length = 1500;
        r.headers.push_back(Header{"Content-Type", "application/json"});
        r.headers.push_back(Header{"Connection", "keep-alive, x-hop"});
        r.headers.push_back(Header{"X-Hop", "dropped"});
        (void)codec_->SubmitResponse(id, r, s.head_request);
        if (!s.head_request) {
          (void)codec_->SendData(id, Slice::Static(std::string_view(kBody, 1000)));
          (void)codec_->SendData(id, Slice::FromString(std::string(500, 'y')));
          (void)codec_->EndStream(id);
        }
        break;
      }
      default:
        break;
    }
  }

  void OnRequestData(int32_t id, Slice data) override {
    StreamState& s = Live(id, "data");
    FUZZ_CHECK(!s.ended && !s.has_trailers, "data after the end");
    const size_t n = data.size();
    if (s.consume_later) {
      s.unconsumed += n;
      s.held.push_back(std::move(data));
    } else {
      FUZZ_CHECK(codec_->ConsumeRequestBody(id, n).ok(), "consuming delivered bytes failed");
    }
  }

  void OnRequestTrailers(int32_t id, std::vector<Header> trailers) override {
    StreamState& s = Live(id, "trailers");
    FUZZ_CHECK(!s.ended && !s.has_trailers, "trailers twice or after the end");
    s.has_trailers = true;
  }

  void OnRequestEnd(int32_t id) override {
    StreamState& s = Live(id, "end");
    FUZZ_CHECK(!s.ended, "end twice");
    s.ended = true;
  }

  void OnStreamWritable(int32_t id) override { Live(id, "writable"); }

  void OnStreamClosed(int32_t id) override {
    StreamState& s = Live(id, "closed");
    s.terminal = true;
    s.held.clear();
  }

  void OnStreamReset(int32_t id, uint32_t error_code) override {
    StreamState& s = Live(id, "reset");
    s.terminal = true;
    s.held.clear();
  }

 private:
  StreamState& Live(int32_t id, const char* event) {
    auto it = streams_.find(id);
    FUZZ_CHECK(it != streams_.end(), event);
    FUZZ_CHECK(!it->second.terminal, "event after the stream's last event");
    FUZZ_CHECK(!it->second.app_reset, "event after the sink reset the stream");
    return it->second;
  }

  // One step of every deferred answer; true when something was done.
  bool Tick() {
    bool progress = false;
    for (auto& [id, s] : streams_) {
      if (s.terminal || s.app_reset) {
        if (!s.checked_dead) {
          s.checked_dead = true;
          // Documented: NotFound for a stream that is closed.
          if (s.terminal) {
            FUZZ_CHECK(
                codec_->SendData(id, Slice::Static("late")).code() == absl::StatusCode::kNotFound,
                "SendData on a finished stream");
            FUZZ_CHECK(codec_->ResetStream(id, http::kH2Cancel).ok(),
                       "ResetStream on a finished stream");
          }
        }
        continue;
      }
      if (s.unconsumed > 0) {
        FUZZ_CHECK(codec_->ConsumeRequestBody(id, s.unconsumed).ok(),
                   "consuming delivered bytes failed");
        s.unconsumed = 0;
        s.held.clear();
        progress = true;
      }
      if (StepAnswer(id, s)) progress = true;
    }
    return progress;
  }

  bool StepAnswer(int32_t id, StreamState& s) {
    switch (s.plan) {
      case Plan::kDeferred:
        if (s.step == 0) {
          ResponseHead r;
          r.status = 200;
          r.headers.push_back(Header{"Content-Type", "application/x-ndjson"});
          r.headers.push_back(Header{"Transfer-Encoding", "chunked"});
          r.headers.push_back(Header{"Keep-Alive", "timeout=5"});
          (void)codec_->SubmitResponse(id, r, s.head_request);
        } else if (s.step == 1) {
          if (!s.head_request) (void)codec_->SendData(id, Slice::Static("{\"done\":false}\n"));
        } else if (s.step == 2) {
          if (!s.head_request) {
            (void)codec_->EndStream(id, {Header{"X-Trailer", "1"}, Header{"TE", "x"}});
          }
        } else {
          return false;
        }
        ++s.step;
        return true;
      case Plan::kStreaming:
        if (s.step == 0) {
          ResponseHead r;
          r.status = 200;
          r.content_length = kBodyBytes;
          (void)codec_->SubmitResponse(id, r, s.head_request);
          s.step = s.head_request ? 2 : 1;
          return true;
        }
        if (s.step == 1) {
          // Backpressure as the relay applies it.
          if (codec_->QueuedBytes(id) >= 64 * 1024) return false;
          const size_t n = std::min<size_t>(20000, kBodyBytes - s.sent);
          (void)codec_->SendData(id, Slice::Static(std::string_view(kBody + s.sent, n)));
          s.sent += n;
          if (s.sent == kBodyBytes) {
            (void)codec_->EndStream(id);
            s.step = 2;
          }
          return true;
        }
        return false;
      case Plan::kReset:
        if (s.step != 0) return false;
        s.step = 1;
        FUZZ_CHECK(codec_->ResetStream(id, http::kH2Cancel).ok(), "ResetStream failed");
        s.app_reset = true;
        s.held.clear();
        return true;
      case Plan::kInterim:
        if (s.step == 0) {
          ResponseHead r;
          r.status = 103;
          r.headers.push_back(Header{"Link", "</a.css>; rel=preload"});
          (void)codec_->SubmitResponse(id, r, false);
        } else if (s.step == 1) {
          ResponseHead r;
          r.status = 204;
          r.content_length = 0;
          (void)codec_->SubmitResponse(id, r, true);
        } else {
          return false;
        }
        ++s.step;
        return true;
      default:
        return false;
    }
  }

  uint8_t seed_;
  int64_t now_ms_ = 1000;
  size_t take_limit_ = 0;
  bool failed_ = false;
  absl::Status first_error_;
  FrameChecker frames_;
  std::map<int32_t, StreamState> streams_;
  std::unique_ptr<H2ServerCodec> codec_;
};

}  // namespace
}  // namespace sluice::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::fuzz;
  Control control(data, size);
  const uint8_t flags = control.Byte();
  const uint8_t cut1 = control.Byte();
  const uint8_t cut2 = control.Byte();
  const uint8_t seed = control.Byte();
  std::string input;
  if (flags & 0x04) input.append(kClientPreface);
  input.append(control.Rest());
  if (input.size() > 256 * 1024) return -1;
  const std::vector<Piece> pieces = Split(input, flags, cut1, cut2);

  Harness h(flags, seed);
  h.Drain();  // the server preface
  for (size_t i = 0; i < pieces.size(); ++i) {
    h.Dispatch(pieces[i].view());
    h.Drain();
    if (i == 0 && (flags & 0x08)) h.Shutdown(false);
    if (i == 1 && (flags & 0x10)) h.Shutdown(true);
    h.Drain();
  }
  h.Finish();
  return 0;
}
