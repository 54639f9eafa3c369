// Microbenchmarks of the generation-slot scheduler (issue: fair sharing of
// GPU slots): what a generation pays to take a slot and give it back when
// one is free, and when the release hands the slot to a waiter of another
// key (the queue holding 16 keys' waiters), on 1, 2 and 4 threads sharing
// the scheduler. Target: at most 2 us per request.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "core/upstream/slot_scheduler.h"

#define BENCH_CHECK(cond)                                                      \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                 \
    }                                                                          \
  } while (0)

namespace sluice::core {
namespace {

SlotScheduler& Shared() {
  static SlotScheduler* s =
      new SlotScheduler(SlotScheduler::Limits{.per_key = 1 << 20, .total = 1 << 22});
  return *s;
}

std::shared_ptr<SlotTicket> MakeTicket(std::string queue, std::string key, int slots) {
  auto t = std::make_shared<SlotTicket>();
  t->queue = std::move(queue);
  t->key = std::move(key);
  t->slots = slots;
  t->on_grant = [] {};
  return t;
}

// The baseline: making the ticket alone (what a request pays whatever the
// scheduler does); the scheduler's own cost is the difference.
void BM_BaselineTicketOnly(benchmark::State& state) {
  const std::string queue = "gpu0/llama3:latest";
  const std::string key = "key:user0";
  for (auto _ : state) {
    auto t = MakeTicket(queue, key, 1024);
    benchmark::DoNotOptimize(t.get());
  }
}
BENCHMARK(BM_BaselineTicketOnly);

// A free slot: Acquire granted at once, then Release. Each thread on its
// own queue (a backend's model) with 1024 slots.
void BM_AcquireReleaseFree(benchmark::State& state) {
  SlotScheduler& s = Shared();
  const std::string queue = absl::StrCat("gpu", state.thread_index(), "/llama3:latest");
  const std::string key = absl::StrCat("key:user", state.thread_index());
  for (auto _ : state) {
    auto t = MakeTicket(queue, key, 1024);
    BENCH_CHECK(s.Acquire(t, 0) == SlotScheduler::Outcome::kGranted);
    BENCH_CHECK(s.Release(t.get()));
  }
}
BENCHMARK(BM_AcquireReleaseFree)->Threads(1)->Threads(2)->Threads(4)->UseRealTime();

// A busy queue: 2 slots, 16 keys with 4 waiters each. Per iteration one
// waiter of the next key is queued and the oldest running generation
// released, which grants the slot to the fairest waiter.
void BM_QueuedHandOver(benchmark::State& state) {
  SlotScheduler s(SlotScheduler::Limits{.per_key = 1 << 20, .total = 1 << 22});
  const std::string queue = "gpu0/llama3:latest";
  std::vector<std::string> keys;
  for (int k = 0; k < 16; ++k) keys.push_back(absl::StrCat("key:user", k));
  std::deque<std::shared_ptr<SlotTicket>> running;
  auto submit = [&](const std::string& key) {
    auto t = MakeTicket(queue, key, 2);
    std::weak_ptr<SlotTicket> weak = t;
    t->on_grant = [&running, weak] { running.push_back(weak.lock()); };
    if (s.Acquire(t, 0) == SlotScheduler::Outcome::kGranted) running.push_back(t);
  };
  for (int i = 0; i < 2 + 64; ++i) submit(keys[i % keys.size()]);
  size_t next_key = 0;
  for (auto _ : state) {
    submit(keys[next_key++ % keys.size()]);
    std::shared_ptr<SlotTicket> oldest = std::move(running.front());
    running.pop_front();
    BENCH_CHECK(s.Release(oldest.get()));
  }
  BENCH_CHECK(running.size() == 2);
}
BENCHMARK(BM_QueuedHandOver);

}  // namespace
}  // namespace sluice::core

BENCHMARK_MAIN();
