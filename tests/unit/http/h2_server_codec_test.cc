// Drives a real nghttp2 client session against H2ServerCodec in memory: the
// client's frames go to Dispatch, the codec's output to the client, until
// both are quiet.

#include "http/h2_server_codec.h"

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace sluice::http {
namespace {

using core::Slice;

// What the codec told the application about one stream.
struct ServerStream {
  bool has_head = false;
  RequestHead head;
  bool end_stream_on_headers = false;
  std::string body;
  std::vector<Slice> pieces;
  std::vector<Header> trailers;
  int ends = 0;
  int closed = 0;
  int resets = 0;
  uint32_t reset_code = 0;
  int writable = 0;
};

class RecordingSink : public H2StreamSink {
 public:
  void OnRequestHeaders(int32_t id, RequestHead head, bool end_stream) override {
    ServerStream& s = streams[id];
    EXPECT_FALSE(s.has_head);
    s.has_head = true;
    s.head = std::move(head);
    s.end_stream_on_headers = end_stream;
    order.push_back(id);
    if (on_headers) on_headers(id);
  }
  void OnRequestData(int32_t id, Slice data) override {
    ServerStream& s = streams[id];
    EXPECT_TRUE(s.has_head);
    s.body.append(data.data(), data.size());
    if (current_input != nullptr && data.size() >= 1024) {
      bool inside = data.data() >= current_input->data() &&
                    data.data() + data.size() <= current_input->data() + current_input->size();
      if (inside)
        ++views;
      else
        ++copies;
    }
    s.pieces.push_back(std::move(data));
    if (on_data) on_data(id);
  }
  void OnRequestTrailers(int32_t id, std::vector<Header> trailers) override {
    streams[id].trailers = std::move(trailers);
  }
  void OnRequestEnd(int32_t id) override {
    ++streams[id].ends;
    if (on_end) on_end(id);
  }
  void OnStreamWritable(int32_t id) override { ++streams[id].writable; }
  void OnStreamClosed(int32_t id) override {
    ServerStream& s = streams[id];
    EXPECT_EQ(s.closed + s.resets, 0);
    ++s.closed;
  }
  void OnStreamReset(int32_t id, uint32_t code) override {
    ServerStream& s = streams[id];
    EXPECT_EQ(s.closed + s.resets, 0);
    ++s.resets;
    s.reset_code = code;
  }

  std::map<int32_t, ServerStream> streams;
  std::vector<int32_t> order;
  std::function<void(int32_t)> on_headers;
  std::function<void(int32_t)> on_data;
  std::function<void(int32_t)> on_end;
  const Slice* current_input = nullptr;
  int views = 0;
  int copies = 0;
};

// What the client saw on one stream.
struct ClientStream {
  std::vector<std::pair<std::string, std::string>> headers;
  std::string status;
  std::string body;
  std::vector<std::string> chunks;
  bool closed = false;
  uint32_t close_code = 0;
  uint32_t rst_code = 0xffffffff;
  // Request body source.
  std::string upload;
  size_t upload_off = 0;
  std::vector<std::pair<std::string, std::string>> upload_trailers;
};

struct ClientConfig {
  bool manual_window = false;                // the test consumes received DATA itself
  uint32_t peer_max_concurrent_streams = 0;  // 0: nghttp2's default
  size_t max_send_header_block = 0;
  uint32_t window = 0;  // stream and connection receive window; 0: default
};

class Client {
 public:
  Client(H2ServerCodec* codec, RecordingSink* sink, ClientConfig config = {})
      : codec_(codec), sink_(sink) {
    nghttp2_session_callbacks* cbs;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_on_header_callback(cbs, &OnHeader);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, &OnData);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, &OnClose);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, &OnFrame);
    nghttp2_option* opt;
    nghttp2_option_new(&opt);
    if (config.manual_window) nghttp2_option_set_no_auto_window_update(opt, 1);
    if (config.peer_max_concurrent_streams > 0) {
      nghttp2_option_set_peer_max_concurrent_streams(opt, config.peer_max_concurrent_streams);
    }
    if (config.max_send_header_block > 0) {
      nghttp2_option_set_max_send_header_block_length(opt, config.max_send_header_block);
    }
    nghttp2_session_client_new2(&session_, cbs, this, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    if (config.window > 0) {
      nghttp2_settings_entry iv = {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, config.window};
      nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, &iv, 1);
      nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0,
                                            static_cast<int32_t>(config.window));
    } else {
      nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, nullptr, 0);
    }
  }
  ~Client() { nghttp2_session_del(session_); }

  int32_t Request(const std::string& method, const std::string& path,
                  std::vector<std::pair<std::string, std::string>> extra = {},
                  const std::string* body = nullptr,
                  std::vector<std::pair<std::string, std::string>> trailers = {}) {
    std::vector<std::pair<std::string, std::string>> fields = {
        {":method", method}, {":scheme", "https"}, {":authority", "example.test"}, {":path", path}};
    for (auto& f : extra) fields.push_back(f);
    std::vector<nghttp2_nv> nva;
    for (auto& [n, v] : fields) {
      nva.push_back(
          {(uint8_t*)n.data(), (uint8_t*)v.data(), n.size(), v.size(), NGHTTP2_NV_FLAG_NONE});
    }
    int32_t id;
    if (body != nullptr) {
      nghttp2_data_provider prd;
      prd.source.ptr = this;
      prd.read_callback = &ReadUpload;
      pending_upload_ = *body;
      pending_trailers_ = std::move(trailers);
      id = nghttp2_submit_request(session_, nullptr, nva.data(), nva.size(), &prd, nullptr);
    } else {
      id = nghttp2_submit_request(session_, nullptr, nva.data(), nva.size(), nullptr, nullptr);
    }
    EXPECT_GT(id, 0);
    streams[id].upload = std::move(pending_upload_);
    streams[id].upload_trailers = std::move(pending_trailers_);
    return id;
  }

  // Moves bytes both ways until neither side has anything to say.
  void Drive(int max_rounds = 10000) {
    for (int round = 0; round < max_rounds; ++round) {
      bool progress = false;
      std::string buf;
      const uint8_t* p;
      ssize_t n;
      while ((n = nghttp2_session_mem_send(session_, &p)) > 0) {
        buf.append(reinterpret_cast<const char*>(p), n);
      }
      EXPECT_GE(n, 0);
      if (!buf.empty()) {
        progress = true;
        Slice in = Slice::Copy(buf);
        sink_->current_input = &in;
        dispatch_status = codec_->Dispatch(in);
        sink_->current_input = nullptr;
      }
      std::vector<Slice> out;
      codec_->TakeOutput(&out);
      for (const Slice& s : out) {
        output_ptrs.push_back(s.data());
        ssize_t rv = nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t*>(s.data()),
                                              s.size());
        EXPECT_EQ(rv, static_cast<ssize_t>(s.size()));
        progress = true;
      }
      if (!progress) return;
    }
    ADD_FAILURE() << "no quiescence";
  }

  // One exchange with an output limit: client frames to the codec, then at
  // most about `max_bytes` of codec output to the client. Returns the size
  // of that output.
  size_t Step(size_t max_bytes) {
    std::string buf;
    const uint8_t* p;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(session_, &p)) > 0) {
      buf.append(reinterpret_cast<const char*>(p), n);
    }
    if (!buf.empty()) dispatch_status = codec_->Dispatch(Slice::Copy(buf));
    std::vector<Slice> out;
    codec_->TakeOutput(&out, max_bytes);
    size_t total = 0;
    for (const Slice& s : out) {
      total += s.size();
      nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t*>(s.data()), s.size());
    }
    return total;
  }

  // Consumes received DATA (manual window mode).
  void Consume(int32_t id, size_t n) { nghttp2_session_consume(session_, id, n); }

  nghttp2_session* session() { return session_; }

  std::map<int32_t, ClientStream> streams;
  std::vector<const char*> output_ptrs;
  absl::Status dispatch_status;
  bool got_goaway = false;
  uint32_t goaway_code = 0;
  int32_t goaway_last_stream = -1;

 private:
  static Client* Self(void* u) { return static_cast<Client*>(u); }

  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                      size_t namelen, const uint8_t* value, size_t valuelen, uint8_t, void* u) {
    ClientStream& s = Self(u)->streams[frame->hd.stream_id];
    std::string n(reinterpret_cast<const char*>(name), namelen);
    std::string v(reinterpret_cast<const char*>(value), valuelen);
    if (n == ":status") s.status = v;
    s.headers.emplace_back(n, v);
    return 0;
  }
  static int OnData(nghttp2_session*, uint8_t, int32_t id, const uint8_t* data, size_t len,
                    void* u) {
    ClientStream& s = Self(u)->streams[id];
    s.body.append(reinterpret_cast<const char*>(data), len);
    s.chunks.emplace_back(reinterpret_cast<const char*>(data), len);
    return 0;
  }
  static int OnClose(nghttp2_session*, int32_t id, uint32_t code, void* u) {
    ClientStream& s = Self(u)->streams[id];
    s.closed = true;
    s.close_code = code;
    return 0;
  }
  static int OnFrame(nghttp2_session*, const nghttp2_frame* frame, void* u) {
    Client* c = Self(u);
    if (frame->hd.type == NGHTTP2_RST_STREAM) {
      c->streams[frame->hd.stream_id].rst_code = frame->rst_stream.error_code;
    } else if (frame->hd.type == NGHTTP2_GOAWAY) {
      c->got_goaway = true;
      c->goaway_code = frame->goaway.error_code;
      c->goaway_last_stream = frame->goaway.last_stream_id;
    }
    return 0;
  }
  static ssize_t ReadUpload(nghttp2_session* session, int32_t id, uint8_t* buf, size_t length,
                            uint32_t* flags, nghttp2_data_source*, void* u) {
    ClientStream& s = Self(u)->streams[id];
    size_t n = std::min(length, s.upload.size() - s.upload_off);
    memcpy(buf, s.upload.data() + s.upload_off, n);
    s.upload_off += n;
    if (s.upload_off == s.upload.size()) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      if (!s.upload_trailers.empty()) {
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        std::vector<nghttp2_nv> nva;
        for (auto& [n2, v] : s.upload_trailers) {
          nva.push_back(
              {(uint8_t*)n2.data(), (uint8_t*)v.data(), n2.size(), v.size(), NGHTTP2_NV_FLAG_NONE});
        }
        nghttp2_submit_trailer(session, id, nva.data(), nva.size());
      }
    }
    return static_cast<ssize_t>(n);
  }

  H2ServerCodec* codec_;
  RecordingSink* sink_;
  nghttp2_session* session_ = nullptr;
  std::string pending_upload_;
  std::vector<std::pair<std::string, std::string>> pending_trailers_;
};

ResponseHead Head(int status, std::vector<Header> headers = {}) {
  ResponseHead h;
  h.status = status;
  h.headers = std::move(headers);
  return h;
}

std::string Pattern(size_t n, char seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + i % 23);
  return s;
}

TEST(H2ServerCodecTest, GetWithDataPiecesRelayedWithoutCopy) {
  RecordingSink sink;
  H2ServerCodec codec(&sink, H2Options{});
  Client client(&codec, &sink);
  int32_t id = client.Request("GET", "/api/tags?x=1", {{"accept", "*/*"}});
  client.Drive();

  ASSERT_TRUE(sink.streams[id].has_head);
  const RequestHead& head = sink.streams[id].head;
  EXPECT_EQ(head.method, "GET");
  EXPECT_EQ(head.target, "/api/tags?x=1");
  EXPECT_EQ(head.host, "example.test");
  EXPECT_EQ(head.version_major, 2);
  EXPECT_EQ(head.version_minor, 0);
  ASSERT_NE(head.Find("host"), nullptr);
  EXPECT_EQ(head.Find("host")->value, "example.test");
  EXPECT_EQ(head.Find("accept")->value, "*/*");
  EXPECT_FALSE(head.has_body());
  EXPECT_TRUE(sink.streams[id].end_stream_on_headers);
  EXPECT_EQ(sink.streams[id].ends, 1);

  // Hop-by-hop fields are dropped, names lowercased.
  ASSERT_TRUE(codec
                  .SubmitResponse(id,
                                  Head(200, {{"Content-Type", "application/x-ndjson"},
                                             {"Connection", "close, X-Drop"},
                                             {"X-Drop", "1"},
                                             {"Transfer-Encoding", "chunked"},
                                             {"Keep-Alive", "timeout=5"}}),
                                  false)
                  .ok());
  client.Drive();
  EXPECT_EQ(client.streams[id].status, "200");
  for (auto& [n, v] : client.streams[id].headers) {
    EXPECT_NE(n, "connection");
    EXPECT_NE(n, "x-drop");
    EXPECT_NE(n, "transfer-encoding");
    EXPECT_NE(n, "keep-alive");
  }
  EXPECT_EQ(client.streams[id].headers.back(),
            std::make_pair(std::string("content-type"), std::string("application/x-ndjson")));

  std::vector<std::string> pieces = {"{\"response\":\"Hel\"}\n", "{\"response\":\"lo\"}\n",
                                     Pattern(3000, 'a')};
  for (size_t i = 0; i < pieces.size(); ++i) {
    Slice piece = Slice::Copy(pieces[i]);
    const char* app_ptr = piece.data();
    ASSERT_TRUE(codec.SendData(id, piece).ok());
    EXPECT_EQ(codec.QueuedBytes(id), pieces[i].size());
    EXPECT_TRUE(codec.WantsWrite());
    size_t before = client.output_ptrs.size();
    client.Drive();
    EXPECT_EQ(codec.QueuedBytes(id), 0u);
    // The payload went out by reference: one output Slice is the app's.
    bool referenced = false;
    for (size_t k = before; k < client.output_ptrs.size(); ++k) {
      referenced |= client.output_ptrs[k] == app_ptr;
    }
    EXPECT_TRUE(referenced) << "piece " << i;
    ASSERT_EQ(client.streams[id].chunks.size(), i + 1);
    EXPECT_EQ(client.streams[id].chunks[i], pieces[i]);
  }
  ASSERT_TRUE(codec.EndStream(id).ok());
  client.Drive();
  EXPECT_TRUE(client.streams[id].closed);
  EXPECT_EQ(client.streams[id].close_code, NGHTTP2_NO_ERROR);
  EXPECT_EQ(sink.streams[id].closed, 1);
  EXPECT_EQ(sink.streams[id].resets, 0);
  EXPECT_EQ(codec.active_streams(), 0u);
  EXPECT_EQ(codec.SendData(id, Slice::Copy("x")).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(client.dispatch_status.ok());
}

TEST(H2ServerCodecTest, HundredConcurrentStreams) {
  RecordingSink sink;
  H2ServerCodec codec(&sink, H2Options{});
  Client client(&codec, &sink, {.peer_max_concurrent_streams = 200});
  std::vector<int32_t> ids;
  for (int i = 0; i < 100; ++i) {
    ids.push_back(client.Request("POST", "/api/generate/" + std::to_string(i)));
  }
  client.Drive();
  ASSERT_EQ(sink.order.size(), 100u);
  EXPECT_EQ(codec.active_streams(), 100u);
  // Answer in reverse order, each with its own body.
  for (auto it = ids.rbegin(); it != ids.rend(); ++it) {
    ASSERT_TRUE(codec.SubmitResponse(*it, Head(200), false).ok());
    ASSERT_TRUE(codec.SendData(*it, Slice::Copy("resp-" + std::to_string(*it))).ok());
    ASSERT_TRUE(codec.EndStream(*it).ok());
  }
  client.Drive();
  for (int32_t id : ids) {
    EXPECT_EQ(client.streams[id].status, "200");
    EXPECT_EQ(client.streams[id].body, "resp-" + std::to_string(id));
    EXPECT_TRUE(client.streams[id].closed);
    EXPECT_EQ(sink.streams[id].closed, 1);
  }
  EXPECT_EQ(codec.active_streams(), 0u);
}

TEST(H2ServerCodecTest, PostBodyProgressesOnlyAsConsumed) {
  RecordingSink sink;
  H2Options opts;
  opts.stream_window_bytes = 65535;
  H2ServerCodec codec(&sink, opts);
  Client client(&codec, &sink);
  std::string body = Pattern(300 * 1024, 'A');
  int32_t id = client.Request("POST", "/api/blobs/sha256:x",
                              {{"content-length", std::to_string(body.size())}}, &body);
  client.Drive();
  ServerStream& s = sink.streams[id];
  ASSERT_TRUE(s.has_head);
  EXPECT_EQ(s.head.content_length, body.size());
  EXPECT_FALSE(s.head.chunked);
  EXPECT_FALSE(s.end_stream_on_headers);
  EXPECT_LE(s.body.size(), 65535u);
  EXPECT_GT(s.body.size(), 0u);
  // Nothing more arrives while nothing is consumed.
  size_t got = s.body.size();
  client.Drive();
  EXPECT_EQ(s.body.size(), got);

  size_t consumed = 0;
  int rounds = 0;
  while (s.ends == 0 && rounds < 100) {
    ASSERT_TRUE(codec.ConsumeRequestBody(id, s.body.size() - consumed).ok());
    consumed = s.body.size();
    client.Drive();
    ++rounds;
  }
  EXPECT_EQ(s.ends, 1);
  EXPECT_EQ(s.body, body);
  EXPECT_GE(rounds, 4);
  // Big pieces were views of the Dispatch input, not copies.
  EXPECT_GT(sink.views, 0);
  EXPECT_EQ(sink.copies, 0);
  ASSERT_TRUE(codec.ConsumeRequestBody(id, s.body.size() - consumed).ok());
  EXPECT_EQ(codec.ConsumeRequestBody(id, 1).code(), absl::StatusCode::kInvalidArgument);
}

TEST(H2ServerCodecTest, BodyWithoutContentLengthIsMarkedChunked) {
  RecordingSink sink;
  H2ServerCodec codec(&sink, H2Options{});
  Client client(&codec, &sink);
  std::string body = "{\"model\":\"m\"}";
  int32_t id = client.Request("POST", "/api/chat", {}, &body);
  client.Drive();
  EXPECT_TRUE(sink.streams[id].head.chunked);
  EXPECT_FALSE(sink.streams[id].head.content_length.has_value());
  EXPECT_EQ(sink.streams[id].body, body);
  EXPECT_EQ(sink.streams[id].ends, 1);
}

TEST(H2ServerCodecTest, ClientResetReachesSink) {
  RecordingSink sink;
  H2ServerCodec codec(&sink, H2Options{});
  Client client(&codec, &sink);
  int32_t id = client.Request("POST", "/api/generate");
  client.Drive();
  ASSERT_TRUE(codec.SubmitResponse(id, Head(200), false).ok());
  ASSERT_TRUE(codec.SendData(id, Slice::Copy("tok")).ok());
  client.Drive();
  EXPECT_EQ(client.streams[id].body, "tok");
  nghttp2_submit_rst_stream(client.session(), NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
  client.Drive();
  EXPECT_EQ(sink.streams[id].resets, 1);
  EXPECT_EQ(sink.streams[id].reset_code, NGHTTP2_CANCEL);
  EXPECT_EQ(codec.SendData(id, Slice::Copy("more")).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(codec.active_streams(), 0u);
}

TEST(H2ServerCodecTest, SlowClientWindowHoldsQueueUntilWindowUpdate) {
  RecordingSink sink;
  H2ServerCodec codec(&sink, H2Options{});
  Client client(&codec, &sink, {.manual_window = true});
  int32_t id = client.Request("GET", "/api/pull");
  client.Drive();
  ASSERT_TRUE(codec.SubmitResponse(id, Head(200), false).ok());
  const size_t kPiece = 50 * 1024;
  std::string expect;
  for (int i = 0; i < 4; ++i) {
    std::string p = Pattern(kPiece, static_cast<char>('a' + i));
    expect += p;
    ASSERT_TRUE(codec.SendData(id, Slice::Copy(p)).ok());
  }
  EXPECT_GE(codec.QueuedBytes(id), H2Options{}.stream_high_watermark);
  client.Drive();
  // The client's initial window (65535) is all that could go out.
  EXPECT_EQ(client.streams[id].body.size(), 65535u);
  EXPECT_EQ(codec.QueuedBytes(id), 4 * kPiece - 65535);
  EXPECT_EQ(codec.total_queued_bytes(), 4 * kPiece - 65535);
  EXPECT_EQ(sink.streams[id].writable, 0);
  client.Drive();
  EXPECT_EQ(codec.QueuedBytes(id), 4 * kPiece - 65535);

  size_t consumed = 0;
  int rounds = 0;
  while (client.streams[id].body.size() < expect.size() && rounds < 100) {
    size_t got = client.streams[id].body.size();
    client.Consume(id, got - consumed);
    consumed = got;
    client.Drive();
    ++rounds;
  }
  EXPECT_EQ(client.streams[id].body, expect);
  EXPECT_EQ(codec.QueuedBytes(id), 0u);
  EXPECT_EQ(codec.total_queued_bytes(), 0u);
  EXPECT_EQ(sink.streams[id].writable, 1);
  ASSERT_TRUE(codec.EndStream(id).ok());
  client.Drive();
  EXPECT_TRUE(client.streams[id].closed);
  EXPECT_EQ(sink.streams[id].closed, 1);
}

// A receive buffer as the engine lends it: 16 KiB behind one owner whose
// reference count the test reads.
struct FakeBuffer {
  struct Owner : core::SliceOwner {
    FakeBuffer* self = nullptr;
  };
  Owner owner;
  std::string bytes;
  bool released = false;
  FakeBuffer() : bytes(16384, 't') {
    owner.self = this;
    owner.release = [](core::SliceOwner* o) { static_cast<Owner*>(o)->self->released = true; };
  }
  FakeBuffer(const FakeBuffer&) = delete;
  FakeBuffer& operator=(const FakeBuffer&) = delete;
  Slice Piece(size_t offset, size_t len) { return Slice(&owner, bytes.data() + offset, len); }
};

// Token chunks for a stream whose window is shut are copied into the
// stream's own blocks (merged, so they are few pieces) and do not keep the
// receive buffers they came in; the stream blocks at the byte watermark
// and everything arrives in order once the window opens.
TEST(H2ServerCodecTest, WaitingSmallPiecesAreCopiesNotBufferViews) {
  RecordingSink sink;
  H2ServerCodec codec(&sink, H2Options{});
  Client client(&codec, &sink, {.manual_window = true});
  int32_t id = client.Request("POST", "/api/generate");
  client.Drive();
  ASSERT_TRUE(codec.SubmitResponse(id, Head(200), false).ok());
  // Fill the client's window (65535): from here on every piece waits.
  std::string expect = Pattern(65535, 'w');
  ASSERT_TRUE(codec.SendData(id, Slice::Copy(expect)).ok());
  client.Drive();
  ASSERT_EQ(client.streams[id].body.size(), 65535u);
  EXPECT_EQ(codec.held_views(), 0u);

  std::vector<std::unique_ptr<FakeBuffer>> buffers;
  size_t sent_pieces = 0;
  while (!codec.Congested(id) && sent_pieces < 2000) {
    auto b = std::make_unique<FakeBuffer>();
    std::string token = absl::StrCat("{\"response\":\"tok", sent_pieces, "\"}\n");
    token.resize(120, ' ');
    memcpy(b->bytes.data(), token.data(), token.size());
    ASSERT_TRUE(codec.SendData(id, b->Piece(0, token.size())).ok());
    expect += token;
    // The codec kept no reference: the buffer went back at once.
    EXPECT_TRUE(b->released) << "piece " << sent_pieces;
    buffers.push_back(std::move(b));
    ++sent_pieces;
  }
  // Blocked by bytes (64 KiB of 120-byte tokens), not by a piece per token.
  EXPECT_TRUE(codec.Congested(id));
  EXPECT_GE(codec.QueuedBytes(id), H2Options{}.stream_high_watermark);
  EXPECT_GT(sent_pieces, H2Options{}.stream_max_pieces);
  EXPECT_EQ(codec.held_views(), 0u);
  const uint64_t sent_before = codec.SentBytes(id);
  EXPECT_EQ(sent_before, 65535u);

  size_t consumed = 0;
  for (int rounds = 0; rounds < 200 && client.streams[id].body.size() < expect.size(); ++rounds) {
    size_t got = client.streams[id].body.size();
    client.Consume(id, got - consumed);
    consumed = got;
    client.Drive();
  }
  EXPECT_EQ(client.streams[id].body, expect);
  EXPECT_EQ(codec.SentBytes(id), expect.size());
  EXPECT_FALSE(codec.Congested(id));
  EXPECT_EQ(sink.streams[id].writable, 1);
}

// Large pieces that wait stay views (no copy of a full buffer) until the
// connection holds connection_max_views of them; later ones are copied.
// A stream also blocks at stream_max_pieces pieces, whatever their bytes.
TEST(H2ServerCodecTest, WaitingViewsAreBoundedPerConnectionAndPiecesPerStream) {
  for (const bool bound_views : {true, false}) {
    SCOPED_TRACE(bound_views ? "views bound" : "pieces bound");
    RecordingSink sink;
    H2Options o;
    o.connection_max_views = bound_views ? 3 : 100;
    o.stream_max_pieces = 8;
    H2ServerCodec codec(&sink, o);
    Client client(&codec, &sink, {.manual_window = true});
    int32_t id = client.Request("POST", "/api/generate");
    client.Drive();
    ASSERT_TRUE(codec.SubmitResponse(id, Head(200), false).ok());
    ASSERT_TRUE(codec.SendData(id, Slice::Copy(Pattern(65535, 'w'))).ok());
    client.Drive();
    std::vector<std::unique_ptr<FakeBuffer>> buffers;
    for (int i = 0; i < 8; ++i) {
      auto b = std::make_unique<FakeBuffer>();
      ASSERT_TRUE(codec.SendData(id, b->Piece(0, 2048)).ok());
      EXPECT_EQ(b->released, bound_views && i >= 3) << "piece " << i;
      buffers.push_back(std::move(b));
    }
    EXPECT_LT(codec.QueuedBytes(id), o.stream_high_watermark);
    if (bound_views) {
      // Past the bound, waiting pieces are copies, merged in 4 KiB blocks.
      EXPECT_EQ(codec.held_views(), 3u);
      EXPECT_FALSE(codec.Congested(id));
    } else {
      // Eight views: blocked by pieces, far below the byte watermark.
      EXPECT_EQ(codec.held_views(), 8u);
      EXPECT_TRUE(codec.Congested(id));
    }
    ASSERT_TRUE(codec.ResetStream(id, kH2Cancel).ok());
    EXPECT_EQ(codec.held_views(), 0u);
    for (auto& b : buffers) EXPECT_TRUE(b->released);
  }
}

TEST(H2ServerCodecTest, TakeOutputHonoursByteLimit) {
  RecordingSink sink;
  H2ServerCodec codec(&sink, H2Options{});
  Client client(&codec, &sink, {.window = 16 << 20});
  int32_t id = client.Request("GET", "/api/pull");
  client.Drive();
  ASSERT_TRUE(codec.SubmitResponse(id, Head(200), false).ok());
  std::string expect;
  for (int i = 0; i < 16; ++i) {
    std::string p = Pattern(64 * 1024, static_cast<char>('A' + i));
    expect += p;
    ASSERT_TRUE(codec.SendData(id, Slice::Copy(p)).ok());
  }
  ASSERT_TRUE(codec.EndStream(id).ok());
  int steps = 0;
  while (!client.streams[id].closed && steps < 1000) {
    size_t n = client.Step(20000);
    // The limit, overshot by at most the frame that crossed it.
    EXPECT_LE(n, 20000u + 16384 + 9 + 64) << "step " << steps;
    ++steps;
  }
  EXPECT_EQ(client.streams[id].body, expect);
  EXPECT_GE(steps, 1024 * 1024 / (20000 + 16384 + 9 + 64));
}

TEST(H2ServerCodecTest, ConcurrentResponsesShareTheConnection) {
  RecordingSink sink;
  H2ServerCodec codec(&sink, H2Options{});
  Client client(&codec, &sink, {.window = 16 << 20});
  int32_t a = client.Request("GET", "/a");
  int32_t b = client.Request("GET", "/b");
  client.Drive();
  for (int32_t id : {a, b}) {
    ASSERT_TRUE(codec.SubmitResponse(id, Head(200), false).ok());
    ASSERT_TRUE(codec.SendData(id, Slice::Copy(Pattern(256 * 1024, 'q'))).ok());
    ASSERT_TRUE(codec.EndStream(id).ok());
  }
  for (int i = 0; i < 4; ++i) client.Step(20000);
  // Round-robin (RFC 9218 incremental by default): neither waits for the
  // other to finish.
  EXPECT_GT(client.streams[a].body.size(), 0u);
  EXPECT_GT(client.streams[b].body.size(), 0u);
  client.Drive();
  EXPECT_EQ(client.streams[a].body.size(), 256u * 1024);
  EXPECT_EQ(client.streams[b].body.size(), 256u * 1024);
}

TEST(H2ServerCodecTest, RequestTrailersAreDelivered) {
  RecordingSink sink;
  H2ServerCodec codec(&sink, H2Options{});
  Client client(&codec, &sink);
  std::string body = "payload";
  int32_t id =
      client.Request("POST", "/upload", {{"te", "trailers"}}, &body, {{"x-checksum", "abc123"}});
  client.Drive();
  ServerStream& s = sink.streams[id];
  EXPECT_EQ(s.body, "payload");
  ASSERT_EQ(s.trailers.size(), 1u);
  EXPECT_EQ(s.trailers[0].name, "x-checksum");
  EXPECT_EQ(s.trailers[0].value, "abc123");
  EXPECT_EQ(s.ends, 1);
}

TEST(H2ServerCodecTest, ResponseTrailers) {
  RecordingSink sink;
  H2ServerCodec codec(&sink, H2Options{});
  Client client(&codec, &sink);
  int32_t id = client.Request("GET", "/");
  client.Drive();
  ASSERT_TRUE(codec.SubmitResponse(id, Head(200), false).ok());
  ASSERT_TRUE(codec.SendData(id, Slice::Copy("body")).ok());
  ASSERT_TRUE(codec.EndStream(id, {{"X-Done", "yes"}}).ok());
  client.Drive();
  EXPECT_EQ(client.streams[id].body, "body");
  EXPECT_EQ(client.streams[id].headers.back(),
            std::make_pair(std::string("x-done"), std::string("yes")));
  EXPECT_TRUE(client.streams[id].closed);
  EXPECT_EQ(sink.streams[id].closed, 1);
}

TEST(H2ServerCodecTest, GracefulGoawayLetsInFlightStreamFinish) {
  RecordingSink sink;
  H2ServerCodec codec(&sink, H2Options{});
  Client client(&codec, &sink);
  int32_t id = client.Request("POST", "/api/generate");
  client.Drive();
  ASSERT_TRUE(codec.SubmitResponse(id, Head(200), false).ok());
  codec.SubmitShutdownNotice();
  client.Drive();
  EXPECT_TRUE(client.got_goaway);
  EXPECT_EQ(client.goaway_last_stream, (1u << 31) - 1);
  codec.GracefulGoaway();
  client.Drive();
  EXPECT_EQ(client.goaway_code, NGHTTP2_NO_ERROR);
  EXPECT_EQ(client.goaway_last_stream, id);
  EXPECT_FALSE(codec.ShouldClose());
  // The client may not open new streams now.
  client.Request("GET", "/late");
  client.Drive();
  EXPECT_EQ(sink.order.size(), 1u);

  ASSERT_TRUE(codec.SendData(id, Slice::Copy("done")).ok());
  ASSERT_TRUE(codec.EndStream(id).ok());
  client.Drive();
  EXPECT_EQ(client.streams[id].body, "done");
  EXPECT_TRUE(client.streams[id].closed);
  EXPECT_EQ(client.streams[id].close_code, NGHTTP2_NO_ERROR);
  EXPECT_EQ(sink.streams[id].closed, 1);
  EXPECT_TRUE(codec.ShouldClose());
  EXPECT_TRUE(codec.status().ok());
}

TEST(H2ServerCodecTest, OversizeHeadersGet431OtherStreamsWork) {
  RecordingSink sink;
  H2ServerCodec codec(&sink, H2Options{});
  Client client(&codec, &sink, {.max_send_header_block = 1 << 20});
  // 80 fields of 1 KiB: over the 64 KiB list limit.
  std::vector<std::pair<std::string, std::string>> big;
  for (int i = 0; i < 80; ++i) {
    big.emplace_back("x-big-" + std::to_string(i), std::string(1000, 'v'));
  }
  int32_t a = client.Request("GET", "/a", big);
  // 150 small fields: over the field count limit.
  std::vector<std::pair<std::string, std::string>> many;
  for (int i = 0; i < 150; ++i) many.emplace_back("x-f" + std::to_string(i), "1");
  int32_t b = client.Request("GET", "/b", many);
  int32_t c = client.Request("GET", "/c", {{"x-small", "1"}});
  client.Drive();

  EXPECT_EQ(sink.streams.count(a), 0u);
  EXPECT_EQ(sink.streams.count(b), 0u);
  ASSERT_TRUE(sink.streams[c].has_head);
  EXPECT_EQ(client.streams[a].status, "431");
  EXPECT_EQ(client.streams[b].status, "431");
  EXPECT_NE(client.streams[a].body.find("\"error\""), std::string::npos);
  EXPECT_TRUE(client.streams[a].closed);

  ASSERT_TRUE(codec.SubmitResponse(c, Head(200), false).ok());
  ASSERT_TRUE(codec.SendData(c, Slice::Copy("ok")).ok());
  ASSERT_TRUE(codec.EndStream(c).ok());
  client.Drive();
  EXPECT_EQ(client.streams[c].body, "ok");
  EXPECT_TRUE(client.dispatch_status.ok());
}

TEST(H2ServerCodecTest, StreamsAboveMaxConcurrencyAreRefused) {
  RecordingSink sink;
  H2Options opts;
  opts.max_concurrent_streams = 4;
  H2ServerCodec codec(&sink, opts);
  // The client sends all six before it has seen the server's SETTINGS.
  Client client(&codec, &sink, {.peer_max_concurrent_streams = 100});
  std::vector<int32_t> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(client.Request("GET", "/"));
  client.Drive();
  EXPECT_EQ(sink.order.size(), 4u);
  EXPECT_EQ(client.streams[ids[4]].rst_code, NGHTTP2_REFUSED_STREAM);
  EXPECT_EQ(client.streams[ids[5]].rst_code, NGHTTP2_REFUSED_STREAM);
  EXPECT_EQ(codec.active_streams(), 4u);
  EXPECT_TRUE(client.dispatch_status.ok());

  // Once one finishes, a new stream fits.
  ASSERT_TRUE(codec.SubmitResponse(ids[0], Head(204), true).ok());
  client.Drive();
  int32_t late = client.Request("GET", "/late");
  client.Drive();
  EXPECT_TRUE(sink.streams[late].has_head);
}

TEST(H2ServerCodecTest, CookieCrumbsAreJoined) {
  RecordingSink sink;
  H2ServerCodec codec(&sink, H2Options{});
  Client client(&codec, &sink);
  int32_t id = client.Request("GET", "/", {{"cookie", "a=1"}, {"x-other", "o"}, {"cookie", "b=2"}});
  client.Drive();
  const RequestHead& head = sink.streams[id].head;
  int cookies = 0;
  for (const Header& h : head.headers) cookies += h.name == "cookie";
  EXPECT_EQ(cookies, 1);
  ASSERT_NE(head.Find("cookie"), nullptr);
  EXPECT_EQ(head.Find("cookie")->value, "a=1; b=2");
}

// With a declared length larger than what the client may still send, the
// early answer is followed by RST_STREAM(NO_ERROR) as well; a remainder
// that fits the window is read and dropped instead (the curl 7.88 case,
// covered through the binary in tests/integration/policy_test.cc).
TEST(H2ServerCodecTest, JsonErrorMidLargeUploadWithLengthResetsWithNoError) {
  RecordingSink sink;
  H2ServerCodec codec(&sink, H2Options{});
  Client client(&codec, &sink);
  std::string body = Pattern(200 * 1024, 'y');
  int32_t id = client.Request("POST", "/api/create",
                              {{"content-length", std::to_string(body.size())}}, &body);
  client.Drive();
  ASSERT_TRUE(sink.streams[id].has_head);
  ASSERT_TRUE(codec.SubmitJsonError(id, 429, "rate limit exceeded").ok());
  client.Drive();
  EXPECT_EQ(client.streams[id].status, "429");
  EXPECT_TRUE(client.streams[id].closed);
  EXPECT_EQ(client.streams[id].rst_code, NGHTTP2_NO_ERROR);
}

TEST(H2ServerCodecTest, JsonErrorMidUploadEndsCleanly) {
  RecordingSink sink;
  H2ServerCodec codec(&sink, H2Options{});
  Client client(&codec, &sink);
  std::string body = Pattern(200 * 1024, 'x');
  int32_t id = client.Request("POST", "/api/create", {}, &body);
  client.Drive();
  ASSERT_TRUE(sink.streams[id].has_head);
  ASSERT_TRUE(codec.SubmitJsonError(id, 413, "request body too large").ok());
  client.Drive();
  EXPECT_EQ(client.streams[id].status, "413");
  EXPECT_EQ(client.streams[id].body, "{\"error\":\"request body too large\"}");
  EXPECT_TRUE(client.streams[id].closed);
  // The server asked the client to stop uploading without error.
  EXPECT_EQ(client.streams[id].rst_code, NGHTTP2_NO_ERROR);
  EXPECT_EQ(sink.streams[id].closed, 1);
  EXPECT_EQ(sink.streams[id].resets, 0);
  // The connection still works.
  int32_t next = client.Request("GET", "/");
  client.Drive();
  EXPECT_TRUE(sink.streams[next].has_head);
}

TEST(H2ServerCodecTest, TotalQueuedBytesFollowsSendAndReset) {
  RecordingSink sink;
  H2ServerCodec codec(&sink, H2Options{});
  Client client(&codec, &sink, {.manual_window = true});
  int32_t a = client.Request("GET", "/a");
  int32_t b = client.Request("GET", "/b");
  client.Drive();
  ASSERT_TRUE(codec.SubmitResponse(a, Head(200), false).ok());
  ASSERT_TRUE(codec.SubmitResponse(b, Head(200), false).ok());
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(codec.SendData(a, Slice::Copy(Pattern(50 * 1024, 'a'))).ok());
  }
  ASSERT_TRUE(codec.SendData(b, Slice::Copy(Pattern(1000, 'b'))).ok());
  EXPECT_EQ(codec.total_queued_bytes(), 4u * 50 * 1024 + 1000);
  client.Drive();
  // B fit its window; A is held back by the flow-control windows.
  EXPECT_EQ(codec.QueuedBytes(b), 0u);
  EXPECT_EQ(codec.total_queued_bytes(), codec.QueuedBytes(a));
  EXPECT_GT(codec.QueuedBytes(a), 0u);
  ASSERT_TRUE(codec.ResetStream(a, NGHTTP2_CANCEL).ok());
  EXPECT_EQ(codec.total_queued_bytes(), 0u);
}

TEST(H2ServerCodecTest, ClosedStreamReturnsItsUnconsumedWindow) {
  RecordingSink sink;
  H2Options opts;
  opts.connection_window_bytes = 100000;
  H2ServerCodec codec(&sink, opts);
  Client client(&codec, &sink);
  std::string body_a = Pattern(60000, 'a');
  int32_t a = client.Request("POST", "/a", {}, &body_a);
  client.Drive();
  ASSERT_EQ(sink.streams[a].body.size(), 60000u);
  // The application gives up on A without consuming what it received.
  ASSERT_TRUE(codec.ResetStream(a, NGHTTP2_CANCEL).ok());
  client.Drive();
  EXPECT_EQ(client.streams[a].rst_code, NGHTTP2_CANCEL);
  EXPECT_EQ(sink.streams[a].resets + sink.streams[a].closed, 0);

  std::string body_b = Pattern(200000, 'b');
  int32_t b = client.Request("POST", "/b", {}, &body_b);
  client.Drive();
  // B gets a whole stream window: A's 60000 bytes went back to the
  // connection window (else only 40000 would fit).
  EXPECT_EQ(sink.streams[b].body.size(), 65535u);
}

TEST(H2ServerCodecTest, SinkMayRespondFromInsideEvents) {
  RecordingSink sink;
  H2ServerCodec codec(&sink, H2Options{});
  sink.on_end = [&](int32_t id) {
    EXPECT_TRUE(codec.SubmitResponse(id, Head(200), false).ok());
    EXPECT_TRUE(codec.SendData(id, Slice::Copy("echo")).ok());
    EXPECT_TRUE(codec.EndStream(id).ok());
  };
  sink.on_headers = [&](int32_t id) {
    if (sink.streams[id].head.target == "/deny") {
      EXPECT_TRUE(codec.ResetStream(id, NGHTTP2_REFUSED_STREAM).ok());
    }
  };
  Client client(&codec, &sink);
  int32_t a = client.Request("GET", "/a");
  int32_t d = client.Request("GET", "/deny");
  client.Drive();
  EXPECT_EQ(client.streams[a].body, "echo");
  EXPECT_EQ(client.streams[d].rst_code, NGHTTP2_REFUSED_STREAM);
  EXPECT_EQ(sink.streams[d].ends, 0);  // nothing after the sink's reset
  EXPECT_EQ(sink.streams[a].closed, 1);
}

TEST(H2ServerCodecTest, InterimResponseThenFinal) {
  RecordingSink sink;
  H2ServerCodec codec(&sink, H2Options{});
  Client client(&codec, &sink);
  std::string body = "data";
  int32_t id = client.Request("POST", "/", {{"expect", "100-continue"}}, &body);
  client.Drive();
  EXPECT_TRUE(sink.streams[id].head.expect_continue);
  ASSERT_TRUE(codec.SubmitResponse(id, Head(100), false).ok());
  ASSERT_TRUE(codec.SubmitResponse(id, Head(204), true).ok());
  client.Drive();
  EXPECT_EQ(client.streams[id].status, "204");
  EXPECT_TRUE(client.streams[id].closed);
}

}  // namespace
}  // namespace sluice::http
