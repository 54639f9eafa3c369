#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/engine/buffer.h"
#include "core/engine/timer.h"
#include "core/observe/usage_scanner.h"
#include "core/proxy/admission.h"
#include "core/proxy/exchange.h"
#include "core/proxy/request_record.h"
#include "core/proxy/websocket_tunnel.h"
#include "core/upstream/model_router.h"
#include "core/upstream/slot_scheduler.h"
#include "core/upstream/upstream_pool.h"
#include "http/h1_response_parser.h"
#include "http/message.h"
#include "policy/model_policy.h"
#include "policy/request_body.h"

namespace sluice::core {

class BackendSet;
class Shard;

// A request body's start held by a Relay while its top-level "model" is
// looked for (model routing).
struct ModelPeek {
  RequestScanner scanner;
  std::vector<Slice> held;
  size_t bytes = 0;
  bool end = false;
  // With a model policy to apply (relay_body.cc): the body is read whole,
  // up to kBodyHoldBytes, and judged before anything goes up.
  std::optional<policy::RequestBodyReader> reader;
};

// The most of a body held to be judged whole by the model policy: 1 MiB
// covers chat histories of a 128k-token context; images make bodies
// larger (see BodyTail).
inline constexpr size_t kBodyHoldBytes = 1 << 20;

// A large body's rest, read as it passes after its start was judged: a
// field that would need a rewrite there, or another model, ends the
// request before its last byte reaches Ollama.
struct BodyTail {
  policy::RequestBodyReader reader;
  uint64_t judged = 0;  // body bytes judged (and rewritten) before it went up
  std::string model;    // the model the start named
};

// Joins one downstream request to one upstream link: waits for its
// admission (AdmissionGate), re-serialises the request with the normalised
// path, streams its body up, parses the response and hands every payload
// piece down as it arrives (no copy: the pieces are slices of the receive
// buffers), with backpressure both ways; after a 101 the link carries a
// WebSocketTunnel. Retries once on a fresh link when a reused link fails
// before any response byte, and once on another backend when a fresh link
// does. What the request leaves behind (status, bytes,
// times, tokens) goes to its RequestRecord, written when it is closed.
class Relay final : public Exchange, public LinkUser, public http::H1ResponseSink {
 public:
  Relay(Shard* shard, Downstream* downstream, http::RequestHead head, ClientInfo client);
  ~Relay() override;

  // Exchange
  // Runs the admission, then sends the request head upstream (acquiring a
  // link).
  void Start() override;
  void OnRequestBody(Slice piece) override;
  void OnRequestEnd() override;
  void OnDownstreamDrained() override;
  // The upstream link closes at once.
  void Cancel() override;
  // The upstream request is abandoned (its link closed).
  void AbandonRequest(int status, std::string_view message) override;
  void OnTunnelData(Slice data) override;
  void Close() override;
  bool response_started() const override { return head_sent_; }
  const http::RequestHead& head() const override { return head_; }

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

  // The gate's answer: go upstream, or answer the client as it says.
  void OnVerdict(const AdmissionGate::Verdict& verdict);
  void Proceed();
  // Routing (relay_route.cc). Chooses the backend: the one the request
  // names (X-Sluice-Backend), or by the model its body names (after a
  // peek at the body), or by --balance; then sends the request there.
  void Route();
  // The backend named by X-Sluice-Backend (removed from the request), or
  // what to answer: false when the request was answered.
  bool PinBackend(RouteClass route_class, UpstreamPool** pinned);
  void StartPeek();
  void Peek(Slice piece);
  void RouteByModel();
  // Whether generations are routed by the model their body names: several
  // backends under --balance=model, or one whose slots queue by model.
  bool RoutesByModel() const;
  // The model policy (relay_body.cc). Whether the body is judged: a
  // generation or embedding to Ollama whose key's policy checks something.
  bool WantsBodyCheck() const;
  policy::BodyApi BodyApiOf() const;
  policy::BodyRoute BodyRouteOf() const;
  // Judges the held body (all of it, or its first kBodyHoldBytes) and
  // applies the rewrites to `peek->held` and the head's framing; the model
  // to route by goes to *model. False when the request was answered.
  bool JudgeHeld(ModelPeek* peek, std::string* model);
  // A piece of a large body's rest: false when the request was ended.
  bool CheckTail(const Slice& piece);
  // Refuses a body: `status` with {"error":...} (the OpenAI error object
  // on /v1).
  void AnswerBody(int status, std::string_view reason, std::string_view error);
  // Sends the request to pool_ with what was held back (once it has its
  // generation slot: see TakeSlot).
  void Go(std::vector<Slice> held, bool end);
  // Generation slots (relay_slot.cc). Whether this request takes a slot
  // of pool_'s backend: a generation route to an Ollama backend with
  // slots= (SlotScheduler).
  bool NeedsSlot() const;
  // A ticket for pool_'s queue of model_, in the name of the request's key.
  std::shared_ptr<SlotTicket> NewTicket() const;
  // Takes the slot, or parks the request (`held`, `end` kept) until the
  // scheduler grants it: false while it waits or when it was refused (and
  // answered).
  bool TakeSlot(std::vector<Slice>* held, bool end);
  // After a failover: a slot of the new backend, waited for already.
  void MoveSlot();
  // A piece of body that came while the request waits.
  void ParkBody(Slice piece);
  void OnSlotGranted();
  void OnQueueTimeout();
  // Stops reading the waiting request's client (past kMaxParkedBytes) and
  // from then on checks every second whether it hung up.
  void PauseParked();
  // Leaves the queue for a client that hung up while it was not read.
  void LeaveForGoneClient();
  // Gives the slot back, or leaves the queue (once; later calls do nothing).
  void ReleaseSlot();
  // The request waited `ns` for its slot (0: one was free): for the
  // response header, the access log and the backend's wait histogram.
  void NoteQueueWait(int64_t ns);
  // Answers a request the queue refused or gave up on.
  // `own_backlog`: refused for the key's own backlog (Retry-After: see
  // SlotScheduler::EstimateWaitNs).
  void AnswerQueue(int status, std::string_view error, bool own_backlog);
  void AnswerModelNotFound(std::string_view model);
  // The generation's place in its backend's ModelTable.
  void BeginModel(RouteChoice::Kind kind);
  void EndModel(bool ok);
  // Feeds the response parser; false when the exchange ended or moved to a
  // fresh link meanwhile.
  bool ParseResponse(Slice data);
  void WriteUp(Slice piece);
  void WriteUpCopy(std::string_view bytes);
  // The request head for pool_'s backend (its Host) into request_bytes_.
  void SerializeHead();
  void AnswerNoBackend();
  // Whether body bytes sent now are kept for a retry or a failover.
  bool KeepForReplay() const;
  bool AttachLink(bool fresh);
  // Another backend for a request that failed before its answer (failover).
  UpstreamPool* NextBackend();
  // Moves the request to `next` (its link and model place with it).
  void SwitchBackend(UpstreamPool* next);
  // The backend answered 503 before anything was relayed: on to busy_next_.
  void FailOverBusy();
  void FailBeforeResponse(int status, std::string_view message);
  // Ends the exchange: the upstream link closes, and the client gets
  // `status` with a JSON error, or, past the response head, a response cut
  // short (Downstream::AbortResponse).
  void EndWithError(int status, std::string_view message);
  void LinkFailed(int status, std::string_view message);
  void Finish(bool reusable);
  void DropLink();
  void ArmReadTimer();
  void ArmSendTimer();

  Shard* shard_;
  Downstream* downstream_;
  http::RequestHead head_;
  ClientInfo client_;
  RequestRecord record_;
  AdmissionGate gate_;
  WebSocketTunnel tunnel_;
  // Where the request goes: the --upstream backends, or a rules-file
  // upstream's (held while the request lives).
  BackendSet* backends_;
  std::shared_ptr<BackendSet> named_;
  // The pool of the backend chosen for this request, and the link from it.
  UpstreamPool* pool_ = nullptr;
  UpstreamLink* link_ = nullptr;
  // Set by a 503 head that is not relayed: the backend to try instead.
  UpstreamPool* busy_next_ = nullptr;
  http::H1ResponseParser parser_;
  std::string request_bytes_;  // serialised head, kept for a retry
  std::string replay_;         // body bytes as sent, kept for a retry
  http::ResponseHead response_;
  // Model routing: the body's start, held (no copy) while its "model" is
  // looked for; then the canonical model and its place in the table.
  std::optional<ModelPeek> peek_;
  std::optional<BodyTail> tail_;
  bool resending_ = false;  // Go hands held pieces on: already read by tail_
  std::string model_;
  ModelTable* model_table_ = nullptr;
  RouteChoice::Kind route_kind_ = RouteChoice::Kind::kLoaded;
  int64_t model_start_ns_ = 0;
  int64_t response_head_ns_ = 0;
  // Its generation slot, the body held while it waits, and how long it did.
  std::shared_ptr<SlotTicket> slot_;
  std::vector<Slice> parked_;
  bool parked_end_ = false;
  size_t parked_bytes_ = 0;
  bool parked_paused_ = false;  // the client is not read while it waits
  bool waiting_slot_ = false;
  // The client hung up while not read: what it sent is read and dropped
  // until its connection ends (and cancels this request).
  bool client_gone_ = false;
  int64_t queue_wait_ns_ = -1;
  std::string fail_cause_;  // why the upstream failed, for the error log
  Timer read_timer_;
  Timer send_timer_;
  Timer queue_timer_;
  Timer hangup_timer_;  // while paused: has the client hung up?
  bool replayable_ = true;
  bool retried_ = false;
  bool failed_over_ = false;
  bool connect_failed_ = false;  // the link's connect failed or timed out
  bool request_done_ = false;
  bool head_sent_ = false;
  bool complete_ = false;
  bool upstream_paused_ = false;
  bool downstream_paused_ = false;
  bool finished_ = false;
  bool closed_ = false;
};

}  // namespace sluice::core
