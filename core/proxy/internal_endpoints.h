#pragma once

#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "core/engine/timer.h"
#include "core/observe/metrics.h"
#include "core/proxy/admission.h"
#include "core/proxy/exchange.h"
#include "core/proxy/request_record.h"
#include "core/server/config.h"
#include "http/message.h"

namespace sluice::core {

struct Observability;

// The status page as JSON (--status_path?format=json): stub_status's
// numbers and one object per backend (name, address for a backend given by
// DNS name, up, in flight, requests, failures, failovers, loaded models,
// routing decisions).
std::string RenderStatusJson(const MetricsShard& total);
// Fills in each DNS-named backend's address now (none: up 0, and a spare
// slot that never had a request is hidden).
void NoteAddresses(const std::vector<BackendConfig>& backends, MetricsShard* total);

// The proxy's own endpoints, --status_path (nginx's stub_status) and
// --metrics_path (Prometheus), answered without an upstream from every
// worker's counters: each worker copies its own on its own thread and posts
// the copy back. Only clients in --status_allow may read them, with GET or
// HEAD; the connection cap and the access policy do not apply to them.
class InternalEndpoint final : public Exchange {
 public:
  enum class Kind { kStatus, kMetrics };
  // Which endpoint `head` asks for, if any (the path without its query).
  static std::optional<Kind> Match(const Observability& obs, const http::RequestHead& head);

  InternalEndpoint(Shard* shard, Downstream* downstream, http::RequestHead head, ClientInfo client,
                   Kind kind);
  ~InternalEndpoint() override;

  // Exchange
  void Start() override;
  void OnRequestBody(Slice piece) override {}
  void OnRequestEnd() override {}
  void OnDownstreamDrained() override {}
  void Cancel() override;
  void AbandonRequest(int status, std::string_view message) override;
  void OnTunnelData(Slice data) override {}
  void Close() override;
  bool response_started() const override { return head_sent_; }
  const http::RequestHead& head() const override { return head_; }

 private:
  // Every worker's counters, collected on the origin worker. Only it
  // touches `pending` and `total` (each copy comes back through its
  // mailbox); the endpoint clears `endpoint` when it goes.
  struct ScrapeTicket {
    InternalEndpoint* endpoint;
    Shard* origin;
    int pending;
    MetricsShard total;
  };
  void Scrape();
  void Answer();

  Shard* shard_;
  Downstream* downstream_;
  http::RequestHead head_;
  ClientInfo client_;
  Kind kind_;
  RequestRecord record_;
  AdmissionGate gate_;
  std::shared_ptr<ScrapeTicket> scrape_;
  Timer scrape_timer_;
  bool head_sent_ = false;
  bool finished_ = false;
  bool closed_ = false;
};

}  // namespace sluice::core
