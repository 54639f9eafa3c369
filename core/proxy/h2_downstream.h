#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "core/engine/timer.h"
#include "core/proxy/client_connection.h"
#include "core/proxy/exchange.h"
#include "http/h2_server_codec.h"

namespace sluice::core {

class Shard;

// The HTTP/2 session of one client connection (TLS with ALPN h2, or h2c
// with prior knowledge): the nghttp2 codec, and one Relay per stream, each
// on its own pooled upstream HTTP/1.1 link. Upstream chunks become DATA
// frames as they arrive (the codec sends the receive buffers themselves);
// a stream whose response queue is full stops reading its upstream until
// the client's window and the socket let the queue drain.
//
// Memory bound per connection: the codec's budget (h2_server_codec.h: at
// most 128 streams x (64 KiB queued in at most kMaxPieces pieces + one
// 16 KiB upstream buffer), header caps, 1 MiB of request body window),
// plus the connection's send queue (kHighWatermark, 64 KiB); TakeOutput is
// not called while the socket is congested, so the codec, not the socket,
// holds the backlog. Token chunks that wait for a window are copies, not
// receive buffers (the codec's connection_max_views), so a client that
// never opens its windows cannot drain the worker's buffer ring; a stream
// that stays blocked for --send_timeout without progress is reset.
class H2Downstream final : public ClientSession, public http::H2StreamSink {
 public:
  explicit H2Downstream(ClientConnection* conn);
  ~H2Downstream() override;

  // ClientSession
  void Start() override;
  void OnData(Slice data) override;
  void OnReadEnd(int res) override;
  void OnWriteProgress() override;
  void OnWriteError(int res) override;
  void Drain() override;
  void Flush() override;

 private:
  // One request/response exchange: the Relay's view of its client.
  class StreamState final : public Downstream {
   public:
    StreamState(H2Downstream* session, int32_t id)
        : session_(session),
          id_(id),
          body_timer_([this] { OnBodyTimeout(); }),
          stall_timer_([this] { OnStall(); }) {}
    void SendResponseHead(const http::ResponseHead& head) override;
    void SendResponseBody(Slice piece) override;
    void SendResponseEnd() override;
    void SendError(int status, std::string_view message) override;
    void SendJsonAnswer(int status, std::string json,
                        const std::vector<http::Header>& headers) override;
    void SendPolicyAnswer(int status, std::string_view error,
                          const std::vector<http::Header>& headers) override;
    void AbortResponse() override;
    void SendTunnelData(Slice data) override;
    void EndTunnel() override;
    bool congested() const override;
    BufferAccount* buffer_account() const override;
    void PauseReading() override;
    void ResumeReading() override;
    bool over_limit() const override;
    void CloseAfterResponse() override;

    // --client_body_timeout between two DATA frames of the request body,
    // while the relay takes the body (not while it holds the window shut
    // because its upstream link is congested, nor while the policy holds
    // the request): a client that stops sending mid-body would otherwise
    // keep its stream and an upstream link until the connection goes.
    void ArmBodyTimer();
    void OnBodyTimeout();
    // --send_timeout for a stream whose response queue is full (its
    // upstream paused) and that sends nothing in a whole period: a client
    // that keeps one stream's window shut loses that stream, not the
    // connection, and its generation stops. Armed when the queue blocks,
    // disarmed when it drains (OnStreamWritable).
    void WatchStall();
    void OnStall();

    H2Downstream* session_;
    int32_t id_;
    std::unique_ptr<Exchange> relay_;
    bool head_request_ = false;
    bool paused_ = false;      // request body not consumed (upstream full)
    size_t unconsumed_ = 0;    // body bytes held back from the window
    bool body_open_ = false;   // END_STREAM not yet received
    uint64_t body_bytes_ = 0;  // request body bytes received (the cap)
    Timer body_timer_;
    Timer stall_timer_;
    uint64_t stall_mark_ = 0;  // SentBytes when the stall period began
  };

  // H2StreamSink
  void OnRequestHeaders(int32_t stream_id, http::RequestHead head, bool end_stream) override;
  void OnRequestData(int32_t stream_id, Slice data) override;
  void OnRequestTrailers(int32_t stream_id, std::vector<http::Header> trailers) override;
  void OnRequestEnd(int32_t stream_id) override;
  void OnStreamWritable(int32_t stream_id) override;
  void OnStreamClosed(int32_t stream_id) override;
  void OnStreamReset(int32_t stream_id, uint32_t error_code) override;

  StreamState* Find(int32_t id);
  // The exchange is over on our side: free its relay after this turn.
  void Retire(int32_t id);
  void Wake() { conn_->RequestFlush(); }
  void UpdateTimers();
  void MaybeClose();

  ClientConnection* conn_;
  Shard* shard_;
  http::H2ServerCodec codec_;
  absl::flat_hash_map<int32_t, std::unique_ptr<StreamState>> streams_;
  Timer idle_timer_;    // no stream open: keepalive_timeout, then close
  Timer send_timer_;    // output waiting and no progress: send_timeout
  Timer goaway_timer_;  // drain: shutdown notice, then the final GOAWAY
  bool seen_request_ = false;
  bool draining_ = false;
  bool failed_ = false;
  bool close_when_done_ = false;  // GOAWAY sent: close once streams are done
};

}  // namespace sluice::core
