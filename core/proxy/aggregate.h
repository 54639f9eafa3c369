#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/engine/timer.h"
#include "core/proxy/admission.h"
#include "core/proxy/exchange.h"
#include "core/proxy/model_list.h"
#include "core/proxy/request_record.h"
#include "http/message.h"

namespace sluice::core {

class UpstreamPool;

// One view of several Ollama backends: GET (or HEAD) /api/tags, /api/ps
// and /v1/models, when sluice has more than one backend, are asked of
// every usable backend at once (up by the active checks, not left out for
// failures) and answered with the union of their lists (ModelListMerger:
// deduplicated by name, or id for /v1/models, the first backend's entry
// wins). The policy applies first, as to any request (AdmissionGate). Each
// backend's GET goes over a link of its keepalive pool and has
// --health_timeout to answer with a 200 of at most 8 MiB; a backend that
// fails, times out or answers anything else is left out of the union (a
// WARN line). Every backend failing: 502; none usable: 503 with
// Retry-After, as the Relay answers.
class Aggregate final : public Exchange {
 public:
  // Which list `head` asks for, if any: GET or HEAD of exactly one of the
  // three paths (a query allowed), without a body; only with `backends` > 1
  // (with one backend these requests are relayed as any other).
  // `filtered`: some client's model policy limits its models, so even one
  // backend's list is answered here (filtered per client).
  static std::optional<ModelList> Match(const http::RequestHead& head, size_t backends,
                                        bool filtered = false);

  Aggregate(Shard* shard, Downstream* downstream, http::RequestHead head, ClientInfo client,
            ModelList kind);
  ~Aggregate() override;

  // Exchange
  void Start() override;
  void OnRequestBody(Slice piece) override {}
  void OnRequestEnd() override {}
  void OnDownstreamDrained() override {}
  // Every backend's link closes at once.
  void Cancel() override;
  void AbandonRequest(int status, std::string_view message) override;
  void OnTunnelData(Slice data) override {}
  void Close() override;
  bool response_started() const override { return head_sent_; }
  const http::RequestHead& head() const override { return head_; }

 private:
  class Fetch;
  friend class Fetch;

  void OnVerdict(const AdmissionGate::Verdict& verdict);
  void FanOut();
  // A fetch ended (answered or failed); the last one answers the client.
  // A fetch calls it as the last thing it does: it may free the exchange.
  void FetchDone();
  void TimedOut();
  void Answer();
  void AnswerNoBackend();
  void AnswerError(int status, std::string_view message);
  void DropFetches();

  Shard* shard_;
  Downstream* downstream_;
  http::RequestHead head_;
  ClientInfo client_;
  ModelList kind_;
  RequestRecord record_;
  AdmissionGate gate_;
  // One per usable backend, in --upstream order (the order of the merge).
  std::vector<std::unique_ptr<Fetch>> fetches_;
  Timer deadline_;
  size_t pending_ = 0;
  bool starting_ = false;
  bool head_sent_ = false;
  bool finished_ = false;
  bool closed_ = false;
};

}  // namespace sluice::core
