#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>
#include <string_view>

#include "core/engine/buffer.h"
#include "core/engine/timer.h"
#include "core/upstream/upstream_pool.h"
#include "core/observe/metrics.h"
#include "http/h1_response_parser.h"
#include "http/message.h"
#include "core/observe/usage_scanner.h"
#include "policy/policy.h"

namespace sluice::core {

class Shard;

// The client side of one request, as a Relay drives it (implemented by the
// HTTP/1.1 downstream connection). Each Send* that ends the response
// (SendResponseEnd, SendError, AbortResponse) is the relay's last call: the
// downstream retires the relay from inside it.
class Downstream {
 public:
  virtual ~Downstream() = default;
  virtual void SendResponseHead(const http::ResponseHead& head) = 0;
  // A piece of response payload (a slice of an upstream receive buffer).
  virtual void SendResponseBody(Slice piece) = 0;
  virtual void SendResponseEnd() = 0;
  // A JSON error response; only before SendResponseHead.
  virtual void SendError(int status, std::string_view message) = 0;
  // The policy's answer: a JSON error with `error`, or no body when `error`
  // is empty (a CORS preflight's 204), with `headers` added. Only before SendResponseHead.
  virtual void SendPolicyAnswer(int status, std::string_view error,
                                const std::vector<http::Header>& headers) = 0;
  // The connection was accepted past --max_connections: its requests are
  // answered 503, after which it closes.
  virtual bool over_limit() const { return false; }
  // Close the connection (HTTP/1.1) or send GOAWAY (HTTP/2) after this
  // response.
  virtual void CloseAfterResponse() {}
  // The request passed the policy and goes upstream now (an HTTP/1.1
  // client waiting on Expect: 100-continue may send its body).
  virtual void OnAdmitted() {}
  // The response was cut short after its head: end it so the client can tell.
  virtual void AbortResponse() = 0;
  // Raw tunnel bytes after a 101.
  virtual void SendTunnelData(Slice data) = 0;
  virtual void EndTunnel() = 0;
  // Backpressure towards the client's send queue.
  virtual bool congested() const = 0;
  // Backpressure towards reading the client (request body, tunnel).
  virtual void PauseReading() = 0;
  virtual void ResumeReading() = 0;
  // The client connection's buffer account (see BufferAccount).
  virtual BufferAccount* buffer_account() const { return nullptr; }
};

// Joins one downstream request to one upstream link: admits it through the
// access policy (path, addresses, CORS, credentials, limits; a bcrypt check
// runs on a helper thread and a delayed request waits on a timer, with the
// client's body held and its reading paused meanwhile), re-serialises the
// request with the normalised path, streams its body up, parses the response and hands every payload
// piece down as it arrives (no copy: the pieces are slices of the receive
// buffers), with backpressure both ways. Retries once on a fresh link when
// a reused link fails before any response byte.
class Relay final : public LinkUser, public http::H1ResponseSink {
 public:
  // `connection` is the client connection's number (log lines name it).
  Relay(Shard* shard, Downstream* downstream, http::RequestHead head,
        std::string_view client_addr, const policy::IpAddress& peer,
        std::string_view proto, uint64_t connection);
  ~Relay() override;

  // Runs the policy, then sends the request head upstream (acquiring a
  // link). May answer (and so retire the relay) before returning.
  void Start();
  // Request body bytes, de-chunked, in order.
  void OnRequestBody(Slice piece);
  void OnRequestEnd();
  // The downstream send queue drained below its low watermark.
  void OnDownstreamDrained();
  void OnDownstreamWriteProgress() { OnDownstreamDrained(); }
  // The client went away: close the upstream link at once (so a generation
  // stops) and send nothing more.
  void Cancel();
  // The client stopped sending its request body (--client_body_timeout):
  // the upstream request is abandoned (its link closed) and the client gets
  // `status` with a JSON error, or, if its response had started, has the
  // response cut short. Accounted once, under `status`.
  void AbandonRequest(int status, std::string_view message);
  // Tunnel bytes from the client after a 101.
  void OnTunnelData(Slice data);
  void OnTunnelEnd();

  bool response_started() const { return head_sent_; }
  const http::RequestHead& head() const { return head_; }

 private:
  // LinkUser
  void OnLinkConnected(int res) override;
  void OnLinkData(Slice data) override;
  void OnLinkReadEnd(int res) override;
  void OnLinkWriteProgress() override;
  void OnLinkWriteError(int res) override;
  BufferAccount* buffer_account() const override {
    return downstream_ ? downstream_->buffer_account() : nullptr;
  }
  // H1ResponseSink
  void OnResponseHead(http::ResponseHead head) override;
  void OnResponseBody(Slice data) override;
  void OnResponseComplete() override;

  // Where the request stands in the policy.
  enum class Gate { kChecking, kVerifying, kDelayed, kOpen };
  // Shared with a password check on a helper thread: the relay clears
  // `relay` when it goes, so a late answer finds nobody.
  struct VerifyTicket {
    Relay* relay;
  };
  // A /status or /metrics request collecting every worker's shard. Only
  // the origin worker touches `pending` and `total` (each shard comes back
  // through its mailbox); the relay clears `relay` when it goes.
  struct ScrapeTicket {
    Relay* relay;
    Shard* origin;
    int pending;
    MetricsShard total;
  };
  // The token events of a streamed (or JSON) answer, read as it is relayed.
  struct TokenTrack {
    explicit TokenTrack(http::BodyFormat format) : scanner(format) {}
    http::ResponseScanner scanner;
    GapSketch gaps;
    Histogram gap_histogram{HistogramKind::kTokenGap};
    int64_t first_ns = -1;
    int64_t last_ns = -1;
  };
  // /status and /metrics: answered here from every worker's counters.
  void ServeInternal(bool metrics);
  void AnswerScrape();
  void OnTokens(size_t events);
  // Logs the request and counts it (at destruction: every path ends there).
  void Account();
  policy::RequestFacts Facts() const;
  void StartVerify();
  void OnVerified(bool valid);
  void Admit();
  void Proceed();
  void AnswerPolicy();
  void HoldReading();

  void WriteUp(Slice piece);
  void WriteUpCopy(std::string_view bytes);
  bool AttachLink(bool fresh);
  void FailBeforeResponse(int status, std::string_view message);
  // Ends the exchange: the upstream link closes, and the client gets
  // `status` with a JSON error, or, past the response head, a response cut
  // short (Downstream::AbortResponse).
  void EndWithError(int status, std::string_view message);
  void LinkFailed(int status, std::string_view message);
  void Finish(bool reusable);
  void DropLink();
  void ArmSendTimer();

  Shard* shard_;
  Downstream* downstream_;
  http::RequestHead head_;
  std::string client_addr_;
  policy::IpAddress peer_;
  std::string proto_;
  UpstreamLink* link_ = nullptr;
  http::H1ResponseParser parser_;
  std::string request_bytes_;  // serialised head, kept for a retry
  std::string replay_;         // body bytes as sent, kept for a retry
  http::ResponseHead response_;
  Timer read_timer_;
  Timer send_timer_;
  bool replayable_ = true;
  bool retried_ = false;
  bool request_done_ = false;
  bool head_sent_ = false;
  bool complete_ = false;
  bool tunnel_ = false;
  bool upstream_paused_ = false;
  bool downstream_paused_ = false;
  bool finished_ = false;
  // Policy state.
  // The worker's snapshot, valid while this request is checked in one go;
  // `policy_hold_` keeps it alive across a wait (password check, delay),
  // when a reload may replace the worker's. Not copied per request: the
  // reference count is shared by all workers.
  const policy::Policy* policy_ = nullptr;
  std::shared_ptr<const policy::Policy> policy_hold_;
  policy::Admission admission_;
  std::shared_ptr<VerifyTicket> ticket_;
  Timer delay_timer_;
  std::vector<Slice> held_body_;  // body received before admission
  Gate gate_ = Gate::kChecking;
  bool gate_paused_ = false;
  bool end_held_ = false;
  // Accounting (access log, metrics).
  uint64_t connection_;
  int64_t start_ns_;
  int64_t start_unix_ns_;
  int64_t upstream_start_ns_ = -1;
  uint64_t body_bytes_sent_ = 0;
  int status_ = 0;  // the status the client was sent
  bool cancelled_ = false;
  bool scrape_metrics_ = false;
  std::string original_target_;
  std::string fail_cause_;  // why the upstream failed, for the error log  // before normalisation, for the log
  std::optional<http::RequestScanner> request_scan_;
  std::unique_ptr<TokenTrack> tokens_;
  std::shared_ptr<ScrapeTicket> scrape_;
  Timer scrape_timer_;
};

}  // namespace sluice::core
