#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/engine/slice.h"
#include "core/engine/timer.h"
#include "core/observe/metrics.h"
#include "core/proxy/exchange.h"
#include "http/message.h"
#include "policy/ip_set.h"
#include "policy/policy.h"

namespace sluice::core {

class Shard;

// The access policy's gate in front of one request: path, addresses, CORS,
// credentials and limits (or, for the internal endpoints, their allow list
// and methods). A password check runs on a helper thread (its answer comes
// back through the shard's mailbox) and a delayed request waits on a timer;
// meanwhile the client's reading is paused and the body it already sent is
// held here. Ends with one call of the completion callback: admitted, or an
// answer to send instead (its refusal already counted and logged).
class AdmissionGate {
 public:
  struct Verdict {
    bool admitted = false;
    // Not admitted: the answer, a JSON error with `error`, or no body when
    // `error` is empty (a CORS preflight's 204), with `headers` added.
    int status = 0;
    std::string_view error;
    std::vector<http::Header> headers;
  };
  using Done = std::function<void(const Verdict& verdict)>;

  // `head` and `client` outlive the gate (the exchange owns them).
  AdmissionGate(Shard* shard, Downstream* downstream, const http::RequestHead* head,
                const ClientInfo* client);
  ~AdmissionGate();
  AdmissionGate(const AdmissionGate&) = delete;
  AdmissionGate& operator=(const AdmissionGate&) = delete;

  // A proxied request: the connection cap, then the policy's stages.
  // `done` may run before Start returns.
  void Start(Done done);
  // /status or /metrics: the client (after --trusted_proxies) must be in
  // `allow`, and the method GET or HEAD.
  void StartInternal(const policy::IpSet& allow, Done done);

  bool open() const { return state_ == State::kOpen; }
  // Body bytes and the body's end, when they come before the gate opens.
  void Hold(Slice piece);
  void HoldEnd() { end_held_ = true; }
  bool end_held() const { return end_held_; }
  std::vector<Slice> TakeHeld();
  // Pauses reading the client until ResumeReading (once each way).
  void PauseReading();
  void ResumeReading();
  // The request ended before the gate opened (the client went, its body
  // timed out): a pending password check or delay is dropped.
  void Cancel();
  // The request ended: a pending password check or delay is dropped and
  // the concurrency slots the admission holds are given back. Once.
  void Close();

  const policy::Admission& admission() const { return admission_; }
  const policy::Policy& policy() const { return *policy_; }

 private:
  enum class State { kIdle, kChecking, kVerifying, kDelayed, kOpen, kAnswered };
  // Shared with a password check on a helper thread: the gate clears
  // `gate` when it goes, so a late answer finds nobody.
  struct VerifyTicket {
    AdmissionGate* gate;
  };

  policy::RequestFacts Facts() const;
  void StartVerify();
  void OnVerified(bool valid);
  void Limit();
  void Admit();
  void Refuse();
  void Refuse(int status, std::string_view error);

  Shard* shard_;
  Downstream* downstream_;
  const http::RequestHead* head_;
  const ClientInfo* client_;
  Done done_;
  State state_ = State::kIdle;
  // The worker's snapshot, valid while this request is checked in one go;
  // `policy_hold_` keeps it alive across a wait (password check, delay),
  // when a reload may replace the worker's. Not copied per request: the
  // reference count is shared by all workers.
  const policy::Policy* policy_ = nullptr;
  std::shared_ptr<const policy::Policy> policy_hold_;
  policy::Admission admission_;
  std::shared_ptr<VerifyTicket> ticket_;
  Timer delay_timer_;
  std::vector<Slice> held_body_;
  bool end_held_ = false;
  bool paused_ = false;
  bool cancelled_ = false;
};

class RequestRecord;

// Sends the gate's answer to the client and records it (status, body size).
void AnswerVerdict(const AdmissionGate::Verdict& verdict, RequestRecord* record,
                   Downstream* downstream);

// The refusal counters (401, 403, 429, 503) an answer of the gate adds to.
void CountRefusal(int status, std::string_view error, MetricsShard* metrics);

}  // namespace sluice::core
