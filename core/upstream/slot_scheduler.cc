#include "core/upstream/slot_scheduler.h"

#include <algorithm>

namespace sluice::core {

SlotScheduler::Outcome SlotScheduler::Acquire(const std::shared_ptr<SlotTicket>& ticket,
                                              int64_t now_ns, bool force) {
  std::vector<std::shared_ptr<SlotTicket>> granted;
  Outcome outcome = Outcome::kQueued;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Queue& q = queues_[ticket->queue];
    if (q.in_use == 0 && q.waiting == 0) {
      q.backend = ticket->backend;
      q.model = ticket->model;
    }
    q.slots = std::max(1, ticket->slots);  // the backend's setting as the request saw it
    if (force || (q.in_use < q.slots && q.waiting == 0)) {
      GrantLocked(&q, ticket.get(), now_ns);
      return Outcome::kGranted;
    }
    size_t& mine = waiting_per_key_[ticket->key];
    if (mine >= limits_.per_key || waiting_ >= limits_.total) {
      outcome = mine >= limits_.per_key ? Outcome::kKeyFull : Outcome::kFull;
      if (mine == 0) waiting_per_key_.erase(ticket->key);
      ticket->state = SlotTicket::State::kDone;
      if (q.in_use == 0 && q.waiting == 0) queues_.erase(ticket->queue);
      return outcome;
    }
    ++mine;
    ++waiting_;
    ++q.waiting;
    auto& line = q.waiters[ticket->key];
    if (line.empty()) {
      q.turn.push_back(ticket->key);
      // A key new to the queue (or forgotten since) joins the round just
      // before the key granted last: among keys holding as many slots, it
      // goes after those granted one earlier. Taken as "never granted", a
      // key that sends one request after another would win every tie and
      // starve a backlogged key holding no more slots than it.
      q.last_grant.try_emplace(ticket->key, q.grants == 0 ? 0 : 2 * q.grants - 1);
    }
    line.push_back(ticket);
    ticket->enqueued_ns = now_ns;
    ticket->state = SlotTicket::State::kQueued;
    // Slots freed by a larger setting go to the waiters, this one among
    // them if its turn comes.
    while (q.in_use < q.slots) {
      std::shared_ptr<SlotTicket> next = NextLocked(&q, now_ns);
      if (next == nullptr) break;
      if (next == ticket) {
        outcome = Outcome::kGranted;
      } else {
        granted.push_back(std::move(next));
      }
    }
  }
  for (const auto& t : granted) t->on_grant();
  return outcome;
}

bool SlotScheduler::Release(SlotTicket* ticket, int64_t now_ns) {
  std::vector<std::shared_ptr<SlotTicket>> granted;
  bool held = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const SlotTicket::State was = ticket->state;
    if (was == SlotTicket::State::kNew || was == SlotTicket::State::kDone) {
      ticket->state = SlotTicket::State::kDone;
      return false;
    }
    ticket->state = SlotTicket::State::kDone;
    auto it = queues_.find(ticket->queue);
    if (it == queues_.end()) return false;  // cannot happen: a live ticket keeps its queue
    Queue& q = it->second;
    if (was == SlotTicket::State::kQueued) {
      ForgetWaiterLocked(*ticket);
      auto& line = q.waiters[ticket->key];
      std::erase_if(line, [&](const std::shared_ptr<SlotTicket>& t) { return t.get() == ticket; });
      --q.waiting;
      if (line.empty()) {
        q.waiters.erase(ticket->key);
        std::erase(q.turn, ticket->key);
        ForgetIdleKeys(&q);
      }
    } else {
      held = true;
      --q.in_use;
      if (now_ns > 0 && ticket->granted_ns > 0 && now_ns >= ticket->granted_ns) {
        // A moving average over about the last 8 generations.
        const int64_t took = now_ns - ticket->granted_ns;
        int64_t& mean = generation_ns_[ticket->backend];
        mean = mean == 0 ? took : mean + (took - mean) / 8;
      }
      if (auto h = q.held.find(ticket->key); h != q.held.end() && --h->second <= 0) {
        q.held.erase(h);
        ForgetIdleKeys(&q);
      }
      while (q.in_use < q.slots) {
        std::shared_ptr<SlotTicket> next = NextLocked(&q, now_ns);
        if (next == nullptr) break;
        granted.push_back(std::move(next));
      }
    }
    if (q.in_use == 0 && q.waiting == 0) queues_.erase(it);
  }
  for (const auto& t : granted) t->on_grant();
  return held;
}

void SlotScheduler::ForgetWaiterLocked(const SlotTicket& t) {
  --waiting_;
  auto it = waiting_per_key_.find(t.key);
  if (it != waiting_per_key_.end() && --it->second == 0) waiting_per_key_.erase(it);
}

void SlotScheduler::GrantLocked(Queue* q, SlotTicket* t, int64_t now_ns) {
  t->granted_ns = now_ns;
  ++q->in_use;
  ++q->held[t->key];
  q->last_grant[t->key] = 2 * ++q->grants;  // even: odd ones are for newcomers
  t->state = SlotTicket::State::kGranted;
}

void SlotScheduler::ForgetIdleKeys(Queue* q) {
  // A key whose last slot ended keeps its last grant, so that when it
  // comes back it takes its turn from there (a key that sends one request
  // after another is served in the round like a backlogged one). Keys that
  // neither wait nor hold are forgotten in bulk once they outnumber the
  // rest: memory stays bounded by the active keys, at amortised O(1).
  const size_t active = q->held.size() + q->waiters.size();
  if (q->last_grant.size() <= 2 * active + 64) return;
  for (auto it = q->last_grant.begin(); it != q->last_grant.end();) {
    if (!q->held.contains(it->first) && !q->waiters.contains(it->first)) {
      q->last_grant.erase(it++);
    } else {
      ++it;
    }
  }
}

std::shared_ptr<SlotTicket> SlotScheduler::NextLocked(Queue* q, int64_t now_ns) {
  if (q->turn.empty()) return nullptr;
  // The waiting key with the fewest slots held per weight (held/weight
  // compared as cross products), then the one granted least recently.
  size_t best = 0;
  int64_t best_held = 0, best_weight = 1;
  uint64_t best_last = 0;
  for (size_t i = 0; i < q->turn.size(); ++i) {
    const std::string& key = q->turn[i];
    const auto h = q->held.find(key);
    const int64_t held = h == q->held.end() ? 0 : h->second;
    const int64_t weight = std::max<uint32_t>(1, q->waiters[key].front()->weight);
    const auto l = q->last_grant.find(key);
    const uint64_t last = l == q->last_grant.end() ? 0 : l->second;
    const int64_t lhs = held * best_weight, rhs = best_held * weight;
    if (i == 0 || lhs < rhs || (lhs == rhs && last < best_last)) {
      best = i;
      best_held = held;
      best_weight = weight;
      best_last = last;
    }
  }
  const std::string key = q->turn[best];
  auto& line = q->waiters[key];
  std::shared_ptr<SlotTicket> t = std::move(line.front());
  line.pop_front();
  ForgetWaiterLocked(*t);
  --q->waiting;
  GrantLocked(q, t.get(), now_ns);
  if (line.empty()) {
    q->waiters.erase(key);
    q->turn[best] = std::move(q->turn.back());
    q->turn.pop_back();
  }
  return t;
}

std::vector<SlotScheduler::QueueStats> SlotScheduler::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<QueueStats> out;
  out.reserve(queues_.size());
  for (const auto& [name, q] : queues_) {
    out.push_back({name, q.backend, q.model, q.slots, q.in_use, q.waiting});
  }
  std::sort(out.begin(), out.end(),
            [](const QueueStats& a, const QueueStats& b) { return a.queue < b.queue; });
  return out;
}

int64_t SlotScheduler::EstimateWaitNs(const SlotTicket& ticket, bool own_backlog) const {
  std::lock_guard<std::mutex> lock(mu_);
  const auto mean = generation_ns_.find(ticket.backend);
  if (mean == generation_ns_.end() || mean->second <= 0) return 0;
  int slots = std::max(1, ticket.slots);
  size_t ahead = 0;
  if (const auto it = queues_.find(ticket.queue); it != queues_.end()) {
    const Queue& q = it->second;
    slots = std::max(1, q.slots);
    ahead = !own_backlog ? q.waiting : q.turn.size() - (q.waiters.contains(ticket.key) ? 1 : 0);
  }
  return mean->second * static_cast<int64_t>(ahead + 1) / slots;
}

size_t SlotScheduler::waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return waiting_;
}

}  // namespace sluice::core
