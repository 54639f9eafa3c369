#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace sluice::core {

// One generation's claim on a slot of one backend's model: made by the
// request, handed to the SlotScheduler, shared by both until it is done.
// The fields are set before Acquire and read-only after, but for the
// scheduler's own state (under its lock).
struct SlotTicket {
  std::string queue;    // the backend and model whose slots it wants
  std::string backend;  // the queue's parts, for metrics and estimates
  std::string model;
  int slots = 1;        // how many generations that queue runs at once
  std::string key;      // who waits: "key:NAME", "user:NAME" or an address
  uint32_t weight = 1;  // the key's share (grants per round)
  int64_t enqueued_ns = 0;
  int64_t granted_ns = 0;  // when it got its slot (the clock of Acquire/Release)
  // Called once when a queued ticket gets its slot, on the thread that
  // freed the slot (another worker's, possibly), outside the scheduler's
  // lock: it must only hand the news to the request's own thread.
  std::function<void()> on_grant;
  // The request's own (the scheduler never touches it): set and cleared
  // on the request's thread only.
  void* owner = nullptr;

  // The scheduler's (under its lock).
  enum class State : uint8_t { kNew, kQueued, kGranted, kDone } state = State::kNew;
};

// The generation slots of every backend and model, shared by all workers,
// and the requests that wait for them, shared fairly between keys.
//
// Each queue (a backend's model) admits `slots` generations at once; the
// rest wait in sluice, not in Ollama. When a slot frees, it goes to the
// waiting key that holds the fewest slots of that queue per unit of
// weight (ties: the key granted one least recently); within a key,
// first come first served. So a key with nothing running goes before a
// key that already runs generations, however many that key has waiting,
// and backlogged keys hold the slots in proportion to their weights, which
// over time is their share of slot-seconds.
//
// One mutex guards it all: an acquisition and a release are a few hash
// lookups and a scan of the keys waiting on that queue (bench/ measures
// them), against a generation's milliseconds to minutes of GPU time.
class SlotScheduler {
 public:
  struct Limits {
    size_t per_key = 64;  // requests one key may have waiting, all queues
    size_t total = 4096;  // requests waiting, all keys and queues
  };
  explicit SlotScheduler(Limits limits) : limits_(limits) {}
  SlotScheduler(const SlotScheduler&) = delete;
  SlotScheduler& operator=(const SlotScheduler&) = delete;

  enum class Outcome {
    kGranted,  // a slot was free: go
    kQueued,   // waits; on_grant is called when the slot is its
    kKeyFull,  // the key already has Limits::per_key waiting (429)
    kFull,     // Limits::total are waiting (503)
  };
  // `force`: a slot now even if none is free (a request that already
  // waited and fails over to another backend); never queued or refused.
  Outcome Acquire(const std::shared_ptr<SlotTicket>& ticket, int64_t now_ns, bool force = false);

  // Ends the ticket at `now_ns`: a waiting one leaves its queue, a granted
  // one gives its slot to the next waiter (whose on_grant runs here, after
  // the lock). Only the first call does anything; returns whether the
  // ticket held a slot then. A held slot's time (now_ns - granted_ns) feeds
  // its backend's mean generation time (EstimateWaitNs); now_ns 0: not
  // measured.
  bool Release(SlotTicket* ticket, int64_t now_ns = 0);

  // How long a request like `ticket` would wait now, for Retry-After: the
  // backend's mean generation time (a moving average of the slot times
  // released) times the grants before its turn, over the queue's slots.
  // Before its turn: every waiter of the queue, or with `own_backlog` (a
  // key refused for its own backlog) one round of the other waiting keys,
  // since the fair order serves each of them once before the key's next.
  // 0 when the backend has no generation measured yet.
  int64_t EstimateWaitNs(const SlotTicket& ticket, bool own_backlog) const;

  // A view for metrics and status (copied under the lock).
  struct QueueStats {
    std::string queue;
    std::string backend;
    std::string model;
    int slots = 0;
    int in_use = 0;
    size_t waiting = 0;
  };
  std::vector<QueueStats> Stats() const;
  size_t waiting() const;

 private:
  struct Queue {
    std::string backend, model;
    int slots = 1;
    int in_use = 0;
    size_t waiting = 0;
    // Per key: its waiters, and the slots it holds.
    absl::flat_hash_map<std::string, std::deque<std::shared_ptr<SlotTicket>>> waiters;
    absl::flat_hash_map<std::string, int> held;
    // When each key was last granted one: twice the count of grants then.
    // A key that comes to wait without one gets the odd number just before
    // the latest grant's, so it takes its turn after the keys granted
    // earlier and before the one granted last.
    absl::flat_hash_map<std::string, uint64_t> last_grant;
    uint64_t grants = 0;
    std::vector<std::string> turn;  // keys with waiters
  };
  // Forgets the last grants of keys that neither wait nor hold, once they
  // outnumber the others.
  static void ForgetIdleKeys(Queue* q);

  // Takes a slot of `q` for `t`.
  static void GrantLocked(Queue* q, SlotTicket* t, int64_t now_ns);
  // The next waiter of `q` by the discipline (its slot taken at `now_ns`),
  // or null.
  std::shared_ptr<SlotTicket> NextLocked(Queue* q, int64_t now_ns);
  void ForgetWaiterLocked(const SlotTicket& t);

  const Limits limits_;
  mutable std::mutex mu_;
  absl::flat_hash_map<std::string, Queue> queues_;
  absl::flat_hash_map<std::string, size_t> waiting_per_key_;
  // Per backend: the moving average of its slot times (ns), for estimates.
  absl::flat_hash_map<std::string, int64_t> generation_ns_;
  size_t waiting_ = 0;
};

}  // namespace sluice::core
