#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/engine/buffer.h"
#include "core/engine/slice.h"
#include "http/message.h"
#include "policy/ip_set.h"

namespace sluice::core {

class Shard;

// The client side of one request, as its exchange (a Relay, or the internal
// endpoints) drives it; implemented by the HTTP/1.1 connection and by each
// HTTP/2 stream. Each Send* that ends the response (SendResponseEnd,
// SendError, SendPolicyAnswer, AbortResponse, EndTunnel) is the exchange's
// last call: the downstream retires the exchange from inside it.
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
  // The same with the JSON body given whole (`json` must be valid JSON;
  // the OpenAI-shaped errors of /v1 routes).
  virtual void SendJsonAnswer(int status, std::string json,
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
  // Whether the client has closed or reset its connection though it is not
  // being read (paused): what it sent before is still unread. HTTP/2
  // connections are always read, so their streams never need it.
  virtual bool PeerGone() const { return false; }
  // The client connection's buffer account (see BufferAccount).
  virtual BufferAccount* buffer_account() const { return nullptr; }
};

// One request as a downstream session drives it, whoever answers it: the
// Relay (to the upstream), the Aggregate (the model lists of several
// backends) or the internal endpoints (/status, /metrics).
// The downstream creates it with NewExchange, feeds it the request, and
// ends it with Close where it frees it.
class Exchange {
 public:
  virtual ~Exchange() = default;

  // Admits the request, then answers it. May answer (and so be retired by
  // the downstream) before returning.
  virtual void Start() = 0;
  // Request body bytes, de-chunked, in order.
  virtual void OnRequestBody(Slice piece) = 0;
  virtual void OnRequestEnd() = 0;
  // The downstream send queue drained below its low watermark.
  virtual void OnDownstreamDrained() = 0;
  // The client went away: stop at once (an upstream link closes, so a
  // generation stops) and send nothing more.
  virtual void Cancel() = 0;
  // The client stopped sending its request body (--client_body_timeout, or
  // an HTTP/2 body past its cap): the request is abandoned and the client
  // gets `status` with a JSON error, or, if its response had started, has
  // the response cut short. Accounted once, under `status`.
  virtual void AbandonRequest(int status, std::string_view message) = 0;
  // Tunnel bytes from the client after a 101.
  virtual void OnTunnelData(Slice data) = 0;
  // Ends the exchange for good, once, where the downstream frees it: what
  // it still holds (an upstream link, a concurrency slot) is released and
  // the request is accounted (metrics, access log). Nothing of it runs
  // afterwards.
  virtual void Close() = 0;

  virtual bool response_started() const = 0;
  virtual const http::RequestHead& head() const = 0;
};

// Who sent a request: the client's address as text (log lines), its
// address, the scheme it came in by, and its connection's number.
struct ClientInfo {
  std::string addr;
  policy::IpAddress peer;
  std::string scheme;
  uint64_t connection = 0;
};

// The exchange for a request: the internal endpoints' handler for
// --status_path and --metrics_path, with several backends an Aggregate for
// the model lists (/api/tags, /api/ps, /v1/models), a Relay for everything
// else. Chosen here, before any relay exists.
std::unique_ptr<Exchange> NewExchange(Shard* shard, Downstream* downstream, http::RequestHead head,
                                      ClientInfo client);

}  // namespace sluice::core
