// How a Relay takes a generation slot of its backend (SlotScheduler): the
// request waits in sluice, its body held (up to kMaxParkedBytes, then its
// client is no longer read), until the fair queue grants it a slot; see
// README "Fair sharing of generation slots".

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/observe/log.h"
#include "core/proxy/relay.h"
#include "core/server/shard.h"
#include "http/serialize.h"
#include "policy/policy.h"

namespace sluice::core {
namespace {

// Retry-After for a refused or timed-out wait until the backend has a
// generation measured; and the most it says.
constexpr int64_t kRetryAfterSeconds = 10;
constexpr int64_t kMaxRetryAfterSeconds = 3600;

// The most body a waiting request keeps in memory before its client is no
// longer read.
constexpr size_t kMaxParkedBytes = 64 * 1024;

// How often a waiting request whose client is not read looks whether that
// client hung up.
constexpr int64_t kHangupCheckNs = 1'000'000'000;

}  // namespace

#define SLOT_LOG(level, fmt, ...)                                                           \
  LOG_##level("*%llu client %s: " fmt, static_cast<unsigned long long>(client_.connection), \
              client_.addr.c_str(), ##__VA_ARGS__)

bool Relay::NeedsSlot() const {
  if (shard_->config().slot_scheduler == nullptr || named_ != nullptr || pool_ == nullptr ||
      pool_->backend().slots <= 0 || head_.method != "POST") {
    return false;
  }
  return policy::IsGenerationPath(gate_.admission().path.match);
}

std::shared_ptr<SlotTicket> Relay::NewTicket() const {
  const policy::Admission& admission = gate_.admission();
  auto ticket = std::make_shared<SlotTicket>();
  ticket->backend = pool_->backend().name;
  ticket->model = model_;
  ticket->queue = absl::StrCat(ticket->backend, " ", model_);
  ticket->slots = pool_->backend().slots;
  ticket->key = !admission.principal.empty() ? admission.principal : admission.client_text;
  ticket->weight = std::max<uint32_t>(1, admission.weight);
  return ticket;
}

bool Relay::TakeSlot(std::vector<Slice>* held, bool end) {
  if (slot_ != nullptr || !NeedsSlot()) return true;
  slot_ = NewTicket();
  slot_->owner = this;
  Shard* shard = shard_;
  // The grant may come from another worker's thread: the news goes to this
  // one, where the ticket's owner says whether the request is still here.
  std::weak_ptr<SlotTicket> weak = slot_;
  slot_->on_grant = [shard, weak] {
    std::shared_ptr<SlotTicket> ticket = weak.lock();
    if (ticket == nullptr) return;
    shard->Post([ticket] {
      if (ticket->owner != nullptr) static_cast<Relay*>(ticket->owner)->OnSlotGranted();
    });
  };
  const int64_t now = shard_->now_ns();
  switch (shard_->config().slot_scheduler->Acquire(slot_, now)) {
    case SlotScheduler::Outcome::kGranted:
      NoteQueueWait(0);
      return true;
    case SlotScheduler::Outcome::kQueued:
      break;
    case SlotScheduler::Outcome::kKeyFull:
      ++shard_->metrics().rejected_queue_key;
      AnswerQueue(429, "too many generations waiting for this key; retry later", true);
      return false;
    case SlotScheduler::Outcome::kFull:
      ++shard_->metrics().rejected_queue_full;
      AnswerQueue(503, "too many generations waiting; retry later", false);
      return false;
  }
  waiting_slot_ = true;
  parked_ = std::move(*held);
  parked_end_ = end;
  // The client is read on while it waits, so that its close or reset is
  // seen at once and takes the request out of the queue; past
  // kMaxParkedBytes of body the rest waits in its socket (ParkBody).
  parked_bytes_ = 0;
  for (const Slice& piece : parked_) parked_bytes_ += piece.size();
  if (parked_bytes_ > kMaxParkedBytes) PauseParked();
  shard_->Timers(shard_->config().queue_timeout_ns)->Arm(&queue_timer_, now);
  SLOT_LOG(DEBUG, "%s %s: waits for a slot of %s", head_.method.c_str(), head_.target.c_str(),
           slot_->queue.c_str());
  return false;
}

void Relay::ParkBody(Slice piece) {
  parked_bytes_ += piece.size();
  parked_.push_back(std::move(piece));
  if (parked_bytes_ > kMaxParkedBytes && !parked_paused_) PauseParked();
}

void Relay::PauseParked() {
  if (!parked_paused_) {
    parked_paused_ = true;
    downstream_->PauseReading();
  }
  shard_->Timers(kHangupCheckNs)->Arm(&hangup_timer_, shard_->now_ns());
}

void Relay::LeaveForGoneClient() {
  SLOT_LOG(DEBUG, "%s %s: client hung up while waiting for a slot", head_.method.c_str(),
           head_.target.c_str());
  waiting_slot_ = false;
  ReleaseSlot();
  client_gone_ = true;
  parked_.clear();
  parked_paused_ = false;
  // What it sent before its FIN is read and dropped; the end of its
  // connection then cancels this request (499), as for any client that
  // leaves.
  downstream_->ResumeReading();
}

void Relay::OnSlotGranted() {
  if (!waiting_slot_ || finished_) return;
  // A client that hung up since the last look: the slot goes on to the
  // next waiter, and nothing of this request to the backend.
  if (parked_paused_ && downstream_->PeerGone()) {
    LeaveForGoneClient();
    return;
  }
  waiting_slot_ = false;
  queue_timer_.Disarm();
  hangup_timer_.Disarm();
  NoteQueueWait(std::max<int64_t>(0, shard_->now_ns() - slot_->enqueued_ns));
  if (parked_paused_) downstream_->ResumeReading();
  parked_paused_ = false;
  std::vector<Slice> held = std::move(parked_);
  parked_.clear();
  Go(std::move(held), parked_end_);
}

void Relay::OnQueueTimeout() {
  if (!waiting_slot_) return;
  waiting_slot_ = false;
  // Logged with its wait; not counted in the wait histogram, which holds
  // the waits of generations that ran.
  queue_wait_ns_ = std::max<int64_t>(0, shard_->now_ns() - slot_->enqueued_ns);
  record_.set_queue_wait(queue_wait_ns_);
  ReleaseSlot();
  ++shard_->metrics().rejected_queue_timeout;
  AnswerQueue(503, "no generation slot free within --queue_timeout; retry later", false);
}

void Relay::NoteQueueWait(int64_t ns) {
  queue_wait_ns_ = ns;
  record_.set_queue_wait(ns);
  if (BackendStats* stats = shard_->metrics().backend(pool_->index())) {
    stats->queue_wait.Observe(ns);
  }
}

void Relay::MoveSlot() {
  if (slot_ == nullptr) return;
  ReleaseSlot();
  slot_.reset();
  if (!NeedsSlot()) return;
  // It waited already: a slot of the new backend now, over its count if
  // every one is busy (Ollama then queues it), never to the back of a line.
  slot_ = NewTicket();
  slot_->on_grant = [] {};
  shard_->config().slot_scheduler->Acquire(slot_, shard_->now_ns(), /*force=*/true);
}

void Relay::ReleaseSlot() {
  if (slot_ == nullptr) return;
  slot_->owner = nullptr;
  queue_timer_.Disarm();
  hangup_timer_.Disarm();
  const int64_t now = shard_->now_ns();
  if (shard_->config().slot_scheduler->Release(slot_.get(), now) && slot_->granted_ns > 0) {
    shard_->metrics().AddSlotTime(gate_.admission().principal, now - slot_->granted_ns);
  }
}

void Relay::AnswerQueue(int status, std::string_view error, bool own_backlog) {
  // Retry-After: how long the backlog ahead would take at the backend's
  // measured generation time (SlotScheduler::EstimateWaitNs).
  int64_t retry_after = kRetryAfterSeconds;
  if (slot_ != nullptr) {
    const int64_t ns = shard_->config().slot_scheduler->EstimateWaitNs(*slot_, own_backlog);
    if (ns > 0) {
      retry_after =
          std::clamp<int64_t>((ns + 999'999'999) / 1'000'000'000, 1, kMaxRetryAfterSeconds);
    }
  }
  finished_ = true;
  parked_.clear();
  SLOT_LOG(INFO, "%s %s: %d %s", head_.method.c_str(), head_.target.c_str(), status,
           std::string(error).c_str());
  record_.Answered(status, http::JsonErrorBody(error).size());
  std::vector<http::Header> headers = {http::Header{"Retry-After", absl::StrCat(retry_after)}};
  if (queue_wait_ns_ > 0) {
    headers.push_back(http::Header{"X-Queue-Wait-Ms", absl::StrCat(queue_wait_ns_ / 1'000'000)});
  }
  downstream_->SendPolicyAnswer(status, error, headers);
}

}  // namespace sluice::core
