#include "core/proxy/h2_downstream.h"

#include <nghttp2/nghttp2.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/string_view.h"
#include "core/upstream/upstream_pool.h"
#include "gtest/gtest.h"
#include "http/serialize.h"
#include "tests/integration/h2_frames.h"
#include "tests/unit/core/proxy_harness.h"

namespace sluice::core {
namespace {

namespace h2 = integration::h2;
using proxy_test::Cat;
using proxy_test::Chunk;
using proxy_test::Engine;
using proxy_test::MessageBody;
using proxy_test::Peer;
using proxy_test::ProxyHarness;

// The frame builders take absl::string_view.
absl::string_view A(std::string_view s) { return absl::string_view(s.data(), s.size()); }
std::string_view S(absl::string_view s) { return std::string_view(s.data(), s.size()); }

// A frame the proxy sent, HEADERS decoded.
struct Frame {
  uint8_t type = 0;
  uint8_t flags = 0;
  uint32_t stream = 0;
  std::string payload;
  h2::HeaderList headers;
  bool end_stream() const { return (flags & h2::kFlagEndStream) != 0; }
  std::string Header(std::string_view name) const {
    for (const auto& [n, v] : headers) {
      if (n == name) return v;
    }
    return "(absent)";
  }
};

// Cuts the client's received bytes into frames (one HPACK table for the
// connection, as the client keeps).
class FrameReader {
 public:
  FrameReader() { nghttp2_hd_inflate_new(&hd_); }
  ~FrameReader() { nghttp2_hd_inflate_del(hd_); }
  FrameReader(const FrameReader&) = delete;
  FrameReader& operator=(const FrameReader&) = delete;

  // Takes the complete frames out of `in`; they join frames().
  void Read(std::string* in) {
    size_t pos = 0;
    while (in->size() - pos >= 9) {
      const auto* p = reinterpret_cast<const uint8_t*>(in->data() + pos);
      const size_t len = (size_t{p[0]} << 16) | (size_t{p[1]} << 8) | p[2];
      if (in->size() - pos < 9 + len) break;
      Frame f;
      f.type = p[3];
      f.flags = p[4];
      f.stream = ((uint32_t{p[5]} << 24) | (uint32_t{p[6]} << 16) | (uint32_t{p[7]} << 8) | p[8]) &
                 0x7fffffff;
      f.payload = in->substr(pos + 9, len);
      if (f.type == h2::kHeaders) Decode(&f);
      frames_.push_back(std::move(f));
      pos += 9 + len;
    }
    in->erase(0, pos);
  }
  std::vector<Frame>& frames() { return frames_; }
  // The response status of `stream`, or 0.
  int StatusOf(uint32_t stream) const {
    for (const Frame& f : frames_) {
      if (f.type == h2::kHeaders && f.stream == stream) return std::stoi(f.Header(":status"));
    }
    return 0;
  }
  // The DATA payload of `stream` so far, and whether it ended.
  std::string DataOf(uint32_t stream) const {
    std::string out;
    for (const Frame& f : frames_) {
      if (f.type == h2::kData && f.stream == stream) out += f.payload;
    }
    return out;
  }
  bool Ended(uint32_t stream) const {
    for (const Frame& f : frames_) {
      if (f.stream == stream && (f.type == h2::kData || f.type == h2::kHeaders) && f.end_stream()) {
        return true;
      }
    }
    return false;
  }
  size_t Count(uint8_t type, uint32_t stream) const {
    size_t n = 0;
    for (const Frame& f : frames_) n += f.type == type && f.stream == stream;
    return n;
  }

 private:
  void Decode(Frame* f) {
    auto* in = reinterpret_cast<uint8_t*>(f->payload.data());
    size_t left = f->payload.size();
    for (;;) {
      nghttp2_nv nv;
      int flags = 0;
      ssize_t n = nghttp2_hd_inflate_hd2(hd_, &nv, &flags, in, left, 1);
      if (n < 0) {
        ADD_FAILURE() << "HPACK block did not decode";
        return;
      }
      in += n;
      left -= static_cast<size_t>(n);
      if (flags & NGHTTP2_HD_INFLATE_EMIT) {
        f->headers.emplace_back(std::string(reinterpret_cast<char*>(nv.name), nv.namelen),
                                std::string(reinterpret_cast<char*>(nv.value), nv.valuelen));
      }
      if (flags & NGHTTP2_HD_INFLATE_FINAL) break;
      if (n == 0 && left == 0) break;
    }
    nghttp2_hd_inflate_end_headers(hd_);
  }

  nghttp2_hd_inflater* hd_ = nullptr;
  std::vector<Frame> frames_;
};

// An h2c client with prior knowledge, the HTTP/2 session, one relay and
// one upstream link per stream.
class H2DownstreamTest : public ::testing::TestWithParam<Engine> {
 protected:
  // The preface and SETTINGS, and the server's SETTINGS acknowledged.
  void Open(const std::vector<std::pair<uint16_t, uint32_t>>& settings = {}) {
    client_ = h_.Connect();
    ASSERT_TRUE(h_.Send(client_, Cat(S(h2::ClientMagic()), h2::SettingsFrame(settings))));
    ASSERT_TRUE(RunUntilFrame([](const Frame& f) { return f.type == h2::kSettings; }));
    ASSERT_TRUE(h_.Send(client_, h2::SettingsAckFrame()));
  }
  // A POST on `stream` with a JSON body.
  void Post(uint32_t stream, std::string_view path, std::string_view body) {
    const std::string block = h2::HpackBlock(h2::RequestFields(
        "POST", A(path),
        {{"content-type", "application/json"}, {"content-length", std::to_string(body.size())}}));
    ASSERT_TRUE(h_.Send(client_, Cat(h2::HeadersFrame(stream, block, false),
                                     h2::DataFrame(stream, A(body), true))));
  }
  // Turns until a received frame satisfies `pred`.
  template <typename Pred>
  bool RunUntilFrame(Pred pred, int max_turns = 500) {
    return h_.RunUntil(
        [&] {
          reader_.Read(&client_->in);
          for (const Frame& f : reader_.frames()) {
            if (pred(f)) return true;
          }
          return false;
        },
        max_turns);
  }
  bool RunUntilData(uint32_t stream, size_t bytes) {
    return RunUntilFrame([&](const Frame&) { return reader_.DataOf(stream).size() >= bytes; });
  }
  // Accepts the links of two streams and tells which is which by the path
  // of the request each carries.
  void AcceptTwo(Peer** generate, Peer** chat) {
    for (int i = 0; i < 2; ++i) {
      Peer* up = h_.AcceptUpstream();
      ASSERT_NE(up, nullptr);
      std::string request = h_.ReadMessage(up);
      if (request.starts_with("POST /api/generate HTTP/1.1\r\n")) {
        EXPECT_EQ(MessageBody(request), kGenerateBody);
        *generate = up;
      } else {
        ASSERT_TRUE(request.starts_with("POST /api/chat HTTP/1.1\r\n")) << request;
        EXPECT_EQ(MessageBody(request), kChatBody);
        *chat = up;
      }
    }
    ASSERT_NE(*generate, nullptr);
    ASSERT_NE(*chat, nullptr);
  }
  // Two streams: 1 generates, 3 chats.
  void OpenTwoStreams(Peer** generate, Peer** chat) {
    Post(1, "/api/generate", kGenerateBody);
    Post(3, "/api/chat", kChatBody);
    AcceptTwo(generate, chat);
  }

  static constexpr std::string_view kGenerateBody = R"({"model":"m","prompt":"p"})";
  static constexpr std::string_view kChatBody = R"({"model":"m","messages":[]})";
  static constexpr std::string_view kNdjsonHead =
      "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
      "Transfer-Encoding: chunked\r\n\r\n";

  ProxyHarness h_{GetParam()};
  Peer* client_ = nullptr;
  FrameReader reader_;
};

SLUICE_ON_EVERY_ENGINE(H2DownstreamTest);

// Two streams on one connection, each on its own upstream link: one is
// answered whole while the other waits, then the other streams; each
// upstream chunk becomes one DATA frame on its own stream.
TEST_P(H2DownstreamTest, ConcurrentStreamsAreRelayedIndependently) {
  SLUICE_START_PROXY(h_);
  ASSERT_NO_FATAL_FAILURE(Open());
  Peer* generate = nullptr;
  Peer* chat = nullptr;
  ASSERT_NO_FATAL_FAILURE(OpenTwoStreams(&generate, &chat));
  EXPECT_EQ(h_.pool().open_count(), 2u);

  ASSERT_TRUE(h_.Send(chat, Cat(kNdjsonHead, Chunk("{\"done\":true}\n"), "0\r\n\r\n")));
  ASSERT_TRUE(RunUntilFrame([&](const Frame&) { return reader_.Ended(3); }));
  EXPECT_EQ(reader_.StatusOf(3), 200);
  EXPECT_EQ(reader_.DataOf(3), "{\"done\":true}\n");
  EXPECT_EQ(reader_.StatusOf(1), 0) << "stream 1 answered before its upstream did";

  ASSERT_TRUE(h_.Send(generate, kNdjsonHead));
  ASSERT_TRUE(RunUntilFrame([&](const Frame&) { return reader_.StatusOf(1) == 200; }));
  std::string expected;
  for (int i = 0; i < 3; ++i) {
    const std::string token = Cat("{\"response\":\"t", i, "\"}\n");
    expected += token;
    ASSERT_TRUE(h_.Send(generate, Chunk(token)));
    ASSERT_TRUE(RunUntilData(1, expected.size())) << "token " << i;
    EXPECT_EQ(reader_.DataOf(1), expected);
    EXPECT_EQ(reader_.Count(h2::kData, 1), static_cast<size_t>(i + 1));
  }
  ASSERT_TRUE(h_.Send(generate, "0\r\n\r\n"));
  ASSERT_TRUE(RunUntilFrame([&](const Frame&) { return reader_.Ended(1); }));
  EXPECT_EQ(reader_.DataOf(1), expected);
  EXPECT_TRUE(h_.RunUntil([&] { return h_.pool().idle_count() == 2; }));
}

// RST_STREAM on one stream closes that stream's upstream link only; the
// other stream goes on.
TEST_P(H2DownstreamTest, ResetStreamCancelsOnlyItsUpstream) {
  SLUICE_START_PROXY(h_);
  ASSERT_NO_FATAL_FAILURE(Open());
  Peer* generate = nullptr;
  Peer* chat = nullptr;
  ASSERT_NO_FATAL_FAILURE(OpenTwoStreams(&generate, &chat));
  ASSERT_TRUE(h_.Send(generate, Cat(kNdjsonHead, Chunk("a"))));
  ASSERT_TRUE(h_.Send(chat, Cat(kNdjsonHead, Chunk("b"))));
  ASSERT_TRUE(RunUntilData(1, 1));
  ASSERT_TRUE(RunUntilData(3, 1));

  ASSERT_TRUE(h_.Send(client_, h2::RstStreamFrame(1, h2::kCancel)));
  ASSERT_TRUE(h_.RunUntil([&] { return generate->closed(); })) << "stream 1's link left open";
  EXPECT_FALSE(chat->closed());
  EXPECT_EQ(h_.pool().idle_count(), 0u);

  ASSERT_TRUE(h_.Send(chat, Cat(Chunk("c"), "0\r\n\r\n")));
  ASSERT_TRUE(RunUntilFrame([&](const Frame&) { return reader_.Ended(3); }));
  EXPECT_EQ(reader_.DataOf(3), "bc");
  EXPECT_EQ(reader_.DataOf(1), "a");
  EXPECT_FALSE(reader_.Ended(1));
  EXPECT_TRUE(h_.RunUntil([&] { return h_.pool().idle_count() == 1; }));
  EXPECT_EQ(h_.pool().open_count(), 1u);
}

// Flow control: with stream windows of zero, a stream gets no DATA until
// its window opens, then exactly as much as it opened, while a stream
// whose window is open is served in full.
TEST_P(H2DownstreamTest, StreamWithoutWindowWaitsWhileTheOtherProceeds) {
  SLUICE_START_PROXY(h_);
  ASSERT_NO_FATAL_FAILURE(Open({{h2::kSettingsInitialWindowSize, 0}}));
  Peer* generate = nullptr;
  Peer* chat = nullptr;
  ASSERT_NO_FATAL_FAILURE(OpenTwoStreams(&generate, &chat));
  ASSERT_TRUE(h_.Send(client_, h2::WindowUpdateFrame(3, 1 << 20)));
  const std::string tokens = "0123456789abcdefghij";
  ASSERT_TRUE(h_.Send(generate, Cat(kNdjsonHead, Chunk(tokens))));
  ASSERT_TRUE(h_.Send(chat, Cat(kNdjsonHead, Chunk(tokens), "0\r\n\r\n")));
  ASSERT_TRUE(RunUntilFrame([&](const Frame&) { return reader_.Ended(3); }));
  EXPECT_EQ(reader_.DataOf(3), tokens);
  EXPECT_EQ(reader_.StatusOf(1), 200) << "HEADERS are not flow-controlled";
  h_.RunUntil([] { return false; }, 20);
  reader_.Read(&client_->in);
  EXPECT_EQ(reader_.Count(h2::kData, 1), 0u) << "DATA sent beyond a zero window";

  ASSERT_TRUE(h_.Send(client_, h2::WindowUpdateFrame(1, 7)));
  ASSERT_TRUE(RunUntilData(1, 7));
  h_.RunUntil([] { return false; }, 20);
  reader_.Read(&client_->in);
  EXPECT_EQ(reader_.DataOf(1), tokens.substr(0, 7)) << "DATA sent beyond the window";

  ASSERT_TRUE(h_.Send(client_, h2::WindowUpdateFrame(1, 1 << 20)));
  ASSERT_TRUE(h_.Send(generate, "0\r\n\r\n"));
  ASSERT_TRUE(RunUntilFrame([&](const Frame&) { return reader_.Ended(1); }));
  EXPECT_EQ(reader_.DataOf(1), tokens);
}

// An upstream that refuses: the stream gets 502 with a JSON body, and the
// connection stays open for the next stream.
TEST_P(H2DownstreamTest, RefusedUpstreamAnswers502OnTheStream) {
  SLUICE_START_PROXY(h_);
  h_.CloseUpstreamListener();
  ASSERT_NO_FATAL_FAILURE(Open());
  Post(1, "/api/generate", kGenerateBody);
  ASSERT_TRUE(RunUntilFrame([&](const Frame&) { return reader_.Ended(1); }));
  EXPECT_EQ(reader_.StatusOf(1), 502);
  EXPECT_EQ(reader_.DataOf(1), http::JsonErrorBody("upstream unavailable"));
  Post(3, "/api/chat", kChatBody);
  ASSERT_TRUE(RunUntilFrame([&](const Frame&) { return reader_.Ended(3); }));
  EXPECT_EQ(reader_.StatusOf(3), 502);
  EXPECT_EQ(reader_.Count(h2::kGoaway, 0), 0u);
}

// A client that closes the connection mid-stream: every upstream link of
// its streams closes.
TEST_P(H2DownstreamTest, ClosedConnectionClosesEveryUpstream) {
  SLUICE_START_PROXY(h_);
  ASSERT_NO_FATAL_FAILURE(Open());
  Peer* generate = nullptr;
  Peer* chat = nullptr;
  ASSERT_NO_FATAL_FAILURE(OpenTwoStreams(&generate, &chat));
  ASSERT_TRUE(h_.Send(generate, Cat(kNdjsonHead, Chunk("a"))));
  ASSERT_TRUE(RunUntilData(1, 1));
  client_->Close();
  EXPECT_TRUE(h_.RunUntil([&] { return generate->closed() && chat->closed(); }));
  EXPECT_TRUE(h_.RunUntil([&] { return h_.pool().open_count() == 0; }));
}

}  // namespace
}  // namespace sluice::core
