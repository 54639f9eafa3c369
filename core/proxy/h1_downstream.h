#pragma once

#include <deque>
#include <memory>
#include <string>

#include "core/engine/buffer.h"
#include "core/engine/stream.h"
#include "core/engine/timer.h"
#include "core/proxy/client_connection.h"
#include "core/proxy/exchange.h"
#include "http/h1_server_codec.h"
#include "http/serialize.h"

namespace sluice::core {

class Shard;

// The HTTP/1.1 session of one client connection: feeds received plaintext
// to the codec, runs one Relay per request (pipelined requests wait in
// `pending_`, answered in order), frames responses, and becomes a raw tunnel
// after a 101. On a redirect listener it answers every request with a 301
// to the https URL instead.
//
// Memory bound per connection, besides the codec's request head (at most
// --max_header_bytes): unparsed input up to kHighWatermark (reading stops
// above it), the send queue up to kHighWatermark or kMaxPieces pieces
// (the relay stops reading the upstream above it), plus what one in-flight
// receive completes with (one 16 KiB buffer). About 150 KiB at worst; an
// idle keepalive connection holds no buffer at all.
class H1Downstream final : public ClientSession, public http::H1RequestSink, public Downstream {
 public:
  explicit H1Downstream(ClientConnection* conn);
  ~H1Downstream() override;

  // ClientSession
  void Start() override;
  // The worker is draining: close now if idle, else after this response.
  void Drain() override;
  void OnData(Slice data) override;
  void OnReadEnd(int res) override;
  void OnWriteProgress() override;
  void OnWriteError(int res) override;

 private:
  // H1RequestSink
  void OnRequestHead(http::RequestHead head) override;
  void OnRequestBody(Slice data) override;
  void OnRequestComplete() override;
  // Downstream
  void SendResponseHead(const http::ResponseHead& head) override;
  void SendResponseBody(Slice piece) override;
  void SendResponseEnd() override;
  void SendError(int status, std::string_view message) override;
  void SendJsonAnswer(int status, std::string json,
                      const std::vector<http::Header>& headers) override;
  void SendPolicyAnswer(int status, std::string_view error,
                        const std::vector<http::Header>& headers) override;
  void OnAdmitted() override;
  void AbortResponse() override;
  void SendTunnelData(Slice data) override;
  void EndTunnel() override;
  bool congested() const override { return conn_->congested(); }
  bool PeerGone() const override { return conn_->PeerHungUp(); }
  BufferAccount* buffer_account() const override { return conn_->buffer_account(); }
  void PauseReading() override;
  void ResumeReading() override;
  bool over_limit() const override { return conn_->over_limit(); }
  void CloseAfterResponse() override { close_after_ = true; }

  void ProcessInput();
  void FinishExchange();
  void RetireRelay();
  void CodecError(const absl::Status& status);
  void CloseAfterDrain();
  void UpdateReading();
  void ArmIdleTimers();
  void ArmSendTimer();
  // --client_body_timeout between two reads of a request body, while the
  // body is being read (not while the relay holds reading back).
  void ArmBodyTimer();
  void Abort();
  void Redirect(const http::RequestHead& head);
  std::string_view ExtraFields() const;

  ClientConnection* conn_;
  Shard* shard_;
  http::H1ServerCodec codec_;
  std::unique_ptr<Exchange> relay_;  // the request being answered
  std::deque<Slice> pending_;        // received, not yet parsed
  size_t pending_bytes_ = 0;
  http::BodyFraming framing_ = http::BodyFraming::kNone;
  Timer keepalive_timer_;
  Timer header_timer_;
  // While a request head is incomplete: once a second, whether the client
  // has in fact gone (Stream::PeekReadEnd).
  Timer eof_probe_timer_;
  Timer send_timer_;
  Timer body_timer_;
  bool request_has_body_ = false;
  bool expect_continue_ = false;  // 100 Continue owed once admitted
  bool request_keep_alive_ = true;
  bool responding_ = false;   // a request is being answered
  bool close_after_ = false;  // close once the current response is sent
  bool tunnel_ = false;
  bool paused_by_relay_ = false;
  bool in_process_ = false;
  bool draining_ = false;
};

}  // namespace sluice::core
