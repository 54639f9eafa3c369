// The generation-slot scheduler: slots per queue, the fair order between
// keys (fewest slots held per weight first, FIFO within a key), the queue
// bounds, leaving the queue, releases that count once, and its use from
// several threads.
#include "core/upstream/slot_scheduler.h"

#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace sluice::core {
namespace {

constexpr int64_t kMs = 1'000'000;

class SlotSchedulerTest : public ::testing::Test {
 protected:
  // A ticket of `key` for queue "a/m" with `slots`; its grants are logged.
  std::shared_ptr<SlotTicket> Ticket(const std::string& key, int slots = 2, uint32_t weight = 1,
                                     const std::string& queue = "a/m") {
    auto t = std::make_shared<SlotTicket>();
    t->queue = queue;
    t->slots = slots;
    t->key = key;
    t->weight = weight;
    SlotTicket* raw = t.get();
    t->on_grant = [this, raw] { granted_.push_back(raw); };
    return t;
  }
  int InUse(const std::string& queue = "a/m") {
    for (const auto& q : sched_.Stats()) {
      if (q.queue == queue) return q.in_use;
    }
    return 0;
  }

  SlotScheduler sched_{SlotScheduler::Limits{.per_key = 64, .total = 1000}};
  std::vector<SlotTicket*> granted_;
  int64_t now_ = 1000 * kMs;
};

TEST_F(SlotSchedulerTest, GrantsUpToTheSlotsThenQueuesInOrderWithinAKey) {
  auto a1 = Ticket("k"), a2 = Ticket("k"), a3 = Ticket("k"), a4 = Ticket("k");
  EXPECT_EQ(sched_.Acquire(a1, now_), SlotScheduler::Outcome::kGranted);
  EXPECT_EQ(sched_.Acquire(a2, now_), SlotScheduler::Outcome::kGranted);
  EXPECT_EQ(sched_.Acquire(a3, now_ + kMs), SlotScheduler::Outcome::kQueued);
  EXPECT_EQ(sched_.Acquire(a4, now_ + 2 * kMs), SlotScheduler::Outcome::kQueued);
  EXPECT_EQ(a3->enqueued_ns, now_ + kMs);
  EXPECT_EQ(sched_.waiting(), 2u);
  EXPECT_TRUE(granted_.empty());
  EXPECT_TRUE(sched_.Release(a2.get()));
  ASSERT_EQ(granted_.size(), 1u);
  EXPECT_EQ(granted_[0], a3.get());
  EXPECT_TRUE(sched_.Release(a1.get()));
  ASSERT_EQ(granted_.size(), 2u);
  EXPECT_EQ(granted_[1], a4.get());
  EXPECT_EQ(InUse(), 2);
  EXPECT_TRUE(sched_.Release(a3.get()));
  EXPECT_TRUE(sched_.Release(a4.get()));
  EXPECT_TRUE(sched_.Stats().empty());  // an idle queue is forgotten
}

TEST_F(SlotSchedulerTest, AKeyWithNothingRunningGoesBeforeABacklog) {
  std::vector<std::shared_ptr<SlotTicket>> greedy;
  for (int i = 0; i < 20; ++i) {
    greedy.push_back(Ticket("greedy"));
    sched_.Acquire(greedy.back(), now_);
  }
  EXPECT_EQ(InUse(), 2);
  auto p1 = Ticket("polite1"), p2 = Ticket("polite2");
  EXPECT_EQ(sched_.Acquire(p1, now_ + kMs), SlotScheduler::Outcome::kQueued);
  EXPECT_EQ(sched_.Acquire(p2, now_ + kMs), SlotScheduler::Outcome::kQueued);
  // The next two slots go to the polite keys, not to greedy's third.
  sched_.Release(greedy[0].get());
  sched_.Release(greedy[1].get());
  ASSERT_EQ(granted_.size(), 2u);
  EXPECT_EQ(granted_[0], p1.get());
  EXPECT_EQ(granted_[1], p2.get());
  // Then greedy's queue moves, in its own order.
  sched_.Release(p1.get());
  ASSERT_EQ(granted_.size(), 3u);
  EXPECT_EQ(granted_[2], greedy[2].get());
  // polite1 comes back while greedy holds one and polite2 one: it holds
  // none, so it is next.
  auto p1b = Ticket("polite1");
  EXPECT_EQ(sched_.Acquire(p1b, now_ + 2 * kMs), SlotScheduler::Outcome::kQueued);
  sched_.Release(greedy[2].get());
  ASSERT_EQ(granted_.size(), 4u);
  EXPECT_EQ(granted_[3], p1b.get());
}

TEST_F(SlotSchedulerTest, EqualKeysTakeTurns) {
  std::map<std::string, std::vector<std::shared_ptr<SlotTicket>>> queued;
  auto run1 = Ticket("x", 1);
  ASSERT_EQ(sched_.Acquire(run1, now_), SlotScheduler::Outcome::kGranted);
  for (int i = 0; i < 4; ++i) {
    for (const char* k : {"a", "b", "c"}) {
      queued[k].push_back(Ticket(k, 1));
      sched_.Acquire(queued[k].back(), now_);
    }
  }
  SlotTicket* running = run1.get();
  std::string order;
  for (int i = 0; i < 12; ++i) {
    sched_.Release(running);
    ASSERT_EQ(granted_.size(), static_cast<size_t>(i + 1));
    running = granted_.back();
    order += running->key;
  }
  EXPECT_EQ(order, "abcabcabcabc");
}

TEST_F(SlotSchedulerTest, WeightsShareTheSlots) {
  // 3 slots, both keys backlogged: a (weight 2) holds two, b one.
  std::vector<std::shared_ptr<SlotTicket>> all;
  for (int i = 0; i < 30; ++i) {
    all.push_back(Ticket("a", 3, 2));
    sched_.Acquire(all.back(), now_);
    all.push_back(Ticket("b", 3, 1));
    sched_.Acquire(all.back(), now_);
  }
  // Release whatever runs, oldest grant first, and count holdings.
  std::vector<SlotTicket*> running;
  for (auto& t : all) {
    if (t->state == SlotTicket::State::kGranted) running.push_back(t.get());
  }
  ASSERT_EQ(running.size(), 3u);
  std::map<std::string, int> grants;
  for (int i = 0; i < 30; ++i) {
    SlotTicket* done = running.front();
    running.erase(running.begin());
    const size_t before = granted_.size();
    sched_.Release(done);
    ASSERT_EQ(granted_.size(), before + 1);
    running.push_back(granted_.back());
    ++grants[granted_.back()->key];
    int held_a = 0;
    for (SlotTicket* r : running) held_a += r->key == "a";
    EXPECT_EQ(held_a, 2) << "after release " << i;
  }
  EXPECT_EQ(grants["a"], 20);
  EXPECT_EQ(grants["b"], 10);
}

TEST_F(SlotSchedulerTest, QueueBoundsRefuseWithoutSideEffects) {
  SlotScheduler small(SlotScheduler::Limits{.per_key = 2, .total = 3});
  auto run = Ticket("k", 1);
  ASSERT_EQ(small.Acquire(run, now_), SlotScheduler::Outcome::kGranted);
  auto k1 = Ticket("k", 1), k2 = Ticket("k", 1), k3 = Ticket("k", 1);
  EXPECT_EQ(small.Acquire(k1, now_), SlotScheduler::Outcome::kQueued);
  EXPECT_EQ(small.Acquire(k2, now_), SlotScheduler::Outcome::kQueued);
  EXPECT_EQ(small.Acquire(k3, now_), SlotScheduler::Outcome::kKeyFull);
  auto o1 = Ticket("other", 1), o2 = Ticket("other", 1);
  EXPECT_EQ(small.Acquire(o1, now_), SlotScheduler::Outcome::kQueued);
  EXPECT_EQ(small.Acquire(o2, now_), SlotScheduler::Outcome::kFull);
  EXPECT_EQ(small.waiting(), 3u);
  // A refused ticket holds nothing: releasing it frees no slot.
  EXPECT_FALSE(small.Release(k3.get()));
  EXPECT_FALSE(small.Release(o2.get()));
  EXPECT_TRUE(granted_.empty());
  EXPECT_EQ(small.waiting(), 3u);
  // A place freed in the line can be taken again.
  EXPECT_FALSE(small.Release(k1.get()));
  auto k4 = Ticket("k", 1);
  EXPECT_EQ(small.Acquire(k4, now_), SlotScheduler::Outcome::kQueued);
}

TEST_F(SlotSchedulerTest, LeavingTheQueueNeverGetsASlotAndReleasesCountOnce) {
  auto run = Ticket("k", 1), gone = Ticket("gone", 1), next = Ticket("n", 1);
  ASSERT_EQ(sched_.Acquire(run, now_), SlotScheduler::Outcome::kGranted);
  ASSERT_EQ(sched_.Acquire(gone, now_), SlotScheduler::Outcome::kQueued);
  ASSERT_EQ(sched_.Acquire(next, now_), SlotScheduler::Outcome::kQueued);
  EXPECT_FALSE(sched_.Release(gone.get()));  // the client went away while queued
  EXPECT_FALSE(sched_.Release(gone.get()));
  EXPECT_TRUE(sched_.Release(run.get()));
  ASSERT_EQ(granted_.size(), 1u);
  EXPECT_EQ(granted_[0], next.get());
  EXPECT_FALSE(sched_.Release(run.get()));  // a second release frees nothing
  EXPECT_EQ(InUse(), 1);
  EXPECT_TRUE(sched_.Release(next.get()));
  EXPECT_EQ(InUse(), 0);
}

TEST_F(SlotSchedulerTest, QueuesAreIndependentAndMoreSlotsDrainTheWaiters) {
  auto a = Ticket("k", 1, 1, "a/m"), b = Ticket("k", 1, 1, "b/m");
  EXPECT_EQ(sched_.Acquire(a, now_), SlotScheduler::Outcome::kGranted);
  EXPECT_EQ(sched_.Acquire(b, now_), SlotScheduler::Outcome::kGranted);
  auto w1 = Ticket("k", 1, 1, "a/m"), w2 = Ticket("j", 1, 1, "a/m");
  EXPECT_EQ(sched_.Acquire(w1, now_), SlotScheduler::Outcome::kQueued);
  EXPECT_EQ(sched_.Acquire(w2, now_), SlotScheduler::Outcome::kQueued);
  // The backend now says 3 slots: the two waiters go too, and so does
  // the newcomer (it is the last in line and the third slot is free).
  auto w3 = Ticket("i", 4, 1, "a/m");
  EXPECT_EQ(sched_.Acquire(w3, now_), SlotScheduler::Outcome::kGranted);
  EXPECT_EQ(granted_.size(), 2u);
  EXPECT_EQ(InUse("a/m"), 4);
  EXPECT_EQ(InUse("b/m"), 1);
}

TEST_F(SlotSchedulerTest, GrantCallbacksRunOutsideTheLock) {
  auto run = Ticket("k", 1), wait = Ticket("w", 1);
  bool called = false;
  wait->on_grant = [&] {
    called = true;
    EXPECT_EQ(sched_.waiting(), 0u);  // would deadlock under the lock
  };
  sched_.Acquire(run, now_);
  sched_.Acquire(wait, now_);
  sched_.Release(run.get());
  EXPECT_TRUE(called);
}

// Several threads take and give back slots of one queue: never more than
// its slots run at once, every request is served once, nothing is left.
TEST_F(SlotSchedulerTest, ThreadsNeverExceedTheSlots) {
  constexpr int kThreads = 4, kPerThread = 500, kSlots = 3;
  std::atomic<int> running{0}, max_running{0}, served{0};
  auto enter = [&] {
    const int now = ++running;
    int seen = max_running.load();
    while (now > seen && !max_running.compare_exchange_weak(seen, now)) {
    }
    ++served;
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        auto ticket = std::make_shared<SlotTicket>();
        ticket->queue = "a/m";
        ticket->slots = kSlots;
        ticket->key = "key" + std::to_string(t % 2);
        std::atomic<bool> go{false};
        ticket->on_grant = [&] { go = true; };
        if (sched_.Acquire(ticket, 0) == SlotScheduler::Outcome::kGranted) go = true;
        while (!go) std::this_thread::yield();
        enter();
        --running;
        sched_.Release(ticket.get());
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(served.load(), kThreads * kPerThread);
  EXPECT_LE(max_running.load(), kSlots);
  EXPECT_EQ(sched_.waiting(), 0u);
  EXPECT_TRUE(sched_.Stats().empty());
}

}  // namespace
}  // namespace sluice::core

namespace sluice::core {
namespace {

// Retry-After's estimate: the backend's mean slot time (measured from the
// grant to the release, at the clock Acquire and Release are given) times
// the grants ahead, over the slots.
TEST_F(SlotSchedulerTest, EstimateFollowsMeasuredGenerationTimes) {
  auto first = Ticket("k", 2);
  first->backend = "gpu";
  ASSERT_EQ(sched_.Acquire(first, now_), SlotScheduler::Outcome::kGranted);
  EXPECT_EQ(first->granted_ns, now_);
  EXPECT_EQ(sched_.EstimateWaitNs(*first, false), 0);  // nothing measured yet
  EXPECT_TRUE(sched_.Release(first.get(), now_ + 4000 * kMs));

  // Two running, four waiting (greedy 3, polite 1).
  std::vector<std::shared_ptr<SlotTicket>> all;
  for (const char* key : {"greedy", "greedy", "greedy", "greedy", "greedy", "polite"}) {
    all.push_back(Ticket(key, 2));
    all.back()->backend = "gpu";
    sched_.Acquire(all.back(), now_ + 5000 * kMs);
  }
  // The next of anyone waits for the 4 ahead and itself: 5 grants at 2
  // slots of 4 s each.
  EXPECT_EQ(sched_.EstimateWaitNs(*all.back(), false), 4000 * kMs * 5 / 2);
  // A key refused for its own backlog waits for one round of the others
  // (polite) and then its own grant: 2 grants.
  EXPECT_EQ(sched_.EstimateWaitNs(*all[0], true), 4000 * kMs * 2 / 2);
  // A queued grant takes the release's clock; the mean moves by 1/8 of the
  // difference: (4 s + (2 s - 4 s) / 8) = 3.75 s.
  EXPECT_TRUE(sched_.Release(all[0].get(), now_ + 7000 * kMs));
  EXPECT_EQ(granted_.back(), all[5].get());
  EXPECT_EQ(all[5]->granted_ns, now_ + 7000 * kMs);
  auto other = Ticket("x", 2);
  other->backend = "gpu";
  EXPECT_EQ(sched_.EstimateWaitNs(*other, false), 3750 * kMs * 4 / 2);
  // Another backend has its own mean; a release without a clock measures
  // nothing.
  other->backend = "cpu";
  EXPECT_EQ(sched_.EstimateWaitNs(*other, false), 0);
  EXPECT_TRUE(sched_.Release(all[1].get()));
  other->backend = "gpu";
  EXPECT_EQ(sched_.EstimateWaitNs(*other, false), 3750 * kMs * 3 / 2);
  for (auto& t : all) sched_.Release(t.get());
}

// Four keys that each send their next request as soon as the last ends,
// and one key with a deep backlog, on 2 slots: all five keys get an equal
// share of grants. (A key that came back after its last slot was freed
// once counted as "never granted" and won every tie, so the backlogged
// key never ran.)
TEST_F(SlotSchedulerTest, KeysThatComeBackDoNotStarveABacklog) {
  std::vector<std::shared_ptr<SlotTicket>> keep;
  for (int i = 0; i < 200; ++i) {
    keep.push_back(Ticket("greedy"));
    sched_.Acquire(keep.back(), now_);
  }
  std::deque<SlotTicket*> running = {keep[0].get(), keep[1].get()};
  for (const char* key : {"p1", "p2", "p3", "p4"}) {
    keep.push_back(Ticket(key));
    ASSERT_EQ(sched_.Acquire(keep.back(), now_), SlotScheduler::Outcome::kQueued);
  }
  std::map<std::string, int> grants;
  for (int i = 0; i < 100; ++i) {
    SlotTicket* done = running.front();
    running.pop_front();
    const size_t before = granted_.size();
    ASSERT_TRUE(sched_.Release(done));
    ASSERT_EQ(granted_.size(), before + 1);
    running.push_back(granted_.back());
    ++grants[granted_.back()->key];
    if (done->key != "greedy") {  // the polite key asks again at once
      keep.push_back(Ticket(done->key));
      ASSERT_EQ(sched_.Acquire(keep.back(), now_), SlotScheduler::Outcome::kQueued);
    }
  }
  for (const char* key : {"greedy", "p1", "p2", "p3", "p4"}) {
    EXPECT_GE(grants[key], 18) << key;
    EXPECT_LE(grants[key], 22) << key;
  }
  for (auto& t : keep) sched_.Release(t.get());
}

TEST_F(SlotSchedulerTest, StatsNameTheBackendAndModel) {
  auto t = Ticket("k", 3, 1, "gpu llama3");
  t->backend = "gpu";
  t->model = "llama3";
  ASSERT_EQ(sched_.Acquire(t, now_), SlotScheduler::Outcome::kGranted);
  std::vector<SlotScheduler::QueueStats> stats = sched_.Stats();
  ASSERT_EQ(stats.size(), 1u);
  EXPECT_EQ(stats[0].backend, "gpu");
  EXPECT_EQ(stats[0].model, "llama3");
  EXPECT_EQ(stats[0].slots, 3);
  EXPECT_EQ(stats[0].in_use, 1);
  EXPECT_EQ(stats[0].waiting, 0u);
  sched_.Release(t.get());
}

}  // namespace
}  // namespace sluice::core
