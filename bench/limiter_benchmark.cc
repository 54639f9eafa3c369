// Microbenchmarks of the per-request policy hot paths: the rate limiter's
// admit path on one shared key and on distinct keys per thread (1, 2 and 4
// threads: the stripes should let distinct keys scale), a concurrency slot
// taken and given back, a client address tested against a 4-block CIDR set,
// and path normalisation of a typical and a hostile request target.
//
// The rate is high enough (1e9 r/s, burst 1e6) that every request is
// admitted: the admit path (lookup, TAT update) is what a request pays.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "policy/ip_set.h"
#include "policy/limiter.h"
#include "policy/path.h"

#define BENCH_CHECK(cond)                                                      \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                 \
    }                                                                          \
  } while (0)

namespace sluice::policy {
namespace {

RateTable& SharedRateTable() {
  static RateTable* table = new RateTable(65536);
  return *table;
}

RateSpec AdmitAllSpec() {
  absl::StatusOr<RateSpec> spec = ParseRateSpec("1000000000r/s burst=1000000 nodelay");
  BENCH_CHECK(spec.ok());
  return *spec;
}

IpAddress Ip(absl::string_view text) {
  std::optional<IpAddress> a = IpAddress::Parse(text);
  BENCH_CHECK(a.has_value());
  return *a;
}

// Every thread hits one client address: the worst case for one stripe.
void BM_RateCheckOneKey(benchmark::State& state) {
  RateTable& table = SharedRateTable();
  const RateSpec spec = AdmitAllSpec();
  const IpAddress ip = Ip("203.0.113.7");
  // A clock that keeps pace with the rate, so the state never fills up.
  int64_t now = int64_t{1} << 40;
  for (auto _ : state) {
    now += 1000;
    RateTable::RateResult r = table.Check(1, ip.AsBytes(), spec, now);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_RateCheckOneKey)->Threads(1)->Threads(2)->Threads(4);

// Each thread cycles over its own 1000 client addresses.
void BM_RateCheckDistinctKeys(benchmark::State& state) {
  RateTable& table = SharedRateTable();
  const RateSpec spec = AdmitAllSpec();
  std::vector<IpAddress> ips;
  for (int i = 0; i < 1000; ++i) {
    ips.push_back(Ip(absl::StrCat("10.", state.thread_index(), ".", i / 256, ".", i % 256)));
  }
  int64_t now = int64_t{1} << 40;
  size_t i = 0;
  for (auto _ : state) {
    now += 1000;
    RateTable::RateResult r = table.Check(2, ips[i].AsBytes(), spec, now);
    benchmark::DoNotOptimize(r);
    if (++i == ips.size()) i = 0;
  }
}
BENCHMARK(BM_RateCheckDistinctKeys)->Threads(1)->Threads(2)->Threads(4);

// As the engine runs it: a table with one stripe group per worker, and each
// thread (a worker) checking client addresses steered to it (their
// SteeringHash picks its group, as the SO_REUSEPORT program picks its
// socket), so no stripe's cache lines move between CPUs.
void BM_RateCheckSteeredKeys(benchmark::State& state) {
  static std::mutex mu;
  static std::map<int, RateTable*>* tables = new std::map<int, RateTable*>;
  RateTable* table;
  {
    std::lock_guard<std::mutex> lock(mu);
    RateTable*& t = (*tables)[state.threads()];
    if (t == nullptr) t = new RateTable(65536, static_cast<size_t>(state.threads()));
    table = t;
  }
  const RateSpec spec = AdmitAllSpec();
  std::vector<IpAddress> ips;
  std::vector<uint32_t> steer;
  for (int i = 0; ips.size() < 1000; ++i) {
    IpAddress ip = Ip(absl::StrCat("10.", i / 65536, ".", (i / 256) % 256, ".", i % 256));
    if (SteeringSlot(SteeringHash(ip), static_cast<uint32_t>(state.threads())) !=
        static_cast<uint32_t>(state.thread_index())) {
      continue;
    }
    ips.push_back(ip);
    steer.push_back(SteeringHash(ip));
  }
  int64_t now = int64_t{1} << 40;
  size_t i = 0;
  for (auto _ : state) {
    now += 1000;
    RateTable::RateResult r = table->Check(3, ips[i].AsBytes(), spec, now, steer[i]);
    benchmark::DoNotOptimize(r);
    if (++i == ips.size()) i = 0;
  }
}
BENCHMARK(BM_RateCheckSteeredKeys)->Threads(1)->Threads(2)->Threads(4);

// Baseline: the same GCRA arithmetic in one std::unordered_map behind one
// global std::mutex, the simple design the striped table replaces. Ratios
// against it (same run, same keys) are what bench/RESULTS.md records.
struct GlobalLockTable {
  std::mutex mu;
  std::unordered_map<std::string, int64_t> tat;
  bool Check(const std::string& key, int64_t t_ns, int64_t burst_ns, int64_t now) {
    std::lock_guard<std::mutex> lock(mu);
    int64_t& v = tat[key];
    const int64_t t0 = std::max(v, now);
    if (t0 - now > burst_ns) return false;
    v = t0 + t_ns;
    return true;
  }
};

void BM_BaselineGlobalLockDistinctKeys(benchmark::State& state) {
  static GlobalLockTable* table = new GlobalLockTable;
  std::vector<std::string> keys;
  for (int i = 0; i < 1000; ++i) {
    keys.push_back(std::string(
        Ip(absl::StrCat("10.", state.thread_index(), ".", i / 256, ".", i % 256)).AsBytes()));
  }
  int64_t now = int64_t{1} << 40;
  size_t i = 0;
  for (auto _ : state) {
    now += 1000;
    bool ok = table->Check(keys[i], 1, int64_t{1} << 40, now);
    benchmark::DoNotOptimize(ok);
    if (++i == keys.size()) i = 0;
  }
}
BENCHMARK(BM_BaselineGlobalLockDistinctKeys)->Threads(1)->Threads(2)->Threads(4);

void BM_ConcurrencyAcquireRelease(benchmark::State& state) {
  static ConcurrencyTable* table = new ConcurrencyTable(65536);
  const std::string key = absl::StrCat("sk-user-", state.thread_index());
  for (auto _ : state) {
    bool ok = table->Acquire(1, key, 4);
    benchmark::DoNotOptimize(ok);
    table->Release(1, key);
  }
}
BENCHMARK(BM_ConcurrencyAcquireRelease)->Threads(1)->Threads(4);

void BM_CidrContains(benchmark::State& state) {
  absl::StatusOr<IpSet> set = IpSet::Parse("10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fd00::/8");
  BENCH_CHECK(set.ok());
  // A public address: the scan runs to the end of the list.
  const IpAddress addrs[] = {Ip("203.0.113.7"), Ip("192.168.3.4")};
  size_t i = 0;
  for (auto _ : state) {
    bool in = set->Contains(addrs[i++ & 1]);
    benchmark::DoNotOptimize(in);
  }
}
BENCHMARK(BM_CidrContains);

void BM_NormalizePath(benchmark::State& state, const char* target) {
  for (auto _ : state) {
    absl::StatusOr<NormalizedPath> n = NormalizePath(target);
    BENCH_CHECK(n.ok());
    benchmark::DoNotOptimize(n);
  }
}
BENCHMARK_CAPTURE(BM_NormalizePath, typical, "/api/generate");
BENCHMARK_CAPTURE(BM_NormalizePath, hostile, "/api/./x/../%64elete//");

}  // namespace
}  // namespace sluice::policy

BENCHMARK_MAIN();
