// Policy authentication hot paths: an API key lookup (SHA-256 of the key and
// a hash-table probe), a Basic-auth cache hit (one HMAC-SHA256 and a probe),
// and for scale the bcrypt verification the cache saves.
//
//   build/bench/auth_benchmark --benchmark_min_time=0.2

#include <benchmark/benchmark.h>
#include <openssl/sha.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "policy/basic_auth_cache.h"
#include "policy/htpasswd.h"
#include "policy/keys.h"

namespace sluice::policy {
namespace {

struct KeyFixture {
  KeyStore store;
  std::vector<std::string> keys;
};

// 1000 keys, made once; the benchmarks present a fixed one.
const KeyFixture& Keys() {
  static const KeyFixture* fixture = [] {
    auto* f = new KeyFixture;
    std::string text;
    for (int i = 0; i < 1000; ++i) {
      f->keys.push_back(GenerateKey());
      absl::StrAppend(&text, KeyLine(absl::StrCat("key", i), f->keys.back()), "\n");
    }
    absl::StatusOr<KeyStore> store = KeyStore::Parse(text, "bench");
    if (!store.ok()) std::abort();
    f->store = *std::move(store);
    return f;
  }();
  return *fixture;
}

void BM_KeyLookupHit(benchmark::State& state) {
  const KeyFixture& f = Keys();
  const std::string key = f.keys[500];
  for (auto _ : state) {
    const std::string* name = f.store.Lookup(key);
    benchmark::DoNotOptimize(name);
    if (name == nullptr) state.SkipWithError("lookup missed");
  }
}
BENCHMARK(BM_KeyLookupHit);

// Baseline: SHA-256 of the presented key alone, which every lookup must
// pay (only hashes are stored); the rest of KeyLookupHit is the table.
void BM_BaselineSha256OfKey(benchmark::State& state) {
  const std::string key = Keys().keys[500];
  uint8_t digest[SHA256_DIGEST_LENGTH];
  for (auto _ : state) {
    SHA256(reinterpret_cast<const uint8_t*>(key.data()), key.size(), digest);
    benchmark::DoNotOptimize(digest);
  }
}
BENCHMARK(BM_BaselineSha256OfKey);

void BM_KeyLookupMiss(benchmark::State& state) {
  const KeyFixture& f = Keys();
  // The same length as a real key, so the same one SHA-256 block.
  const std::string key = "sk-" + std::string(43, 'x');
  for (auto _ : state) {
    const std::string* name = f.store.Lookup(key);
    benchmark::DoNotOptimize(name);
    if (name != nullptr) state.SkipWithError("lookup hit");
  }
}
BENCHMARK(BM_KeyLookupMiss);

void BM_BasicAuthCacheHit(benchmark::State& state) {
  constexpr int kEntries = 10000;
  constexpr int64_t kNow = int64_t{1} << 40;
  BasicAuthCache cache(kEntries, absl::Minutes(5), absl::Seconds(10));
  for (int i = 0; i < kEntries; ++i) {
    cache.Insert(absl::StrCat("user", i), absl::StrCat("password-", i), true, 1, kNow);
  }
  const std::string user = "user5000";
  const std::string password = "password-5000";
  for (auto _ : state) {
    CacheResult r = cache.Lookup(user, password, 1, kNow);
    benchmark::DoNotOptimize(r);
    if (r != CacheResult::kValid) state.SkipWithError("cache missed");
  }
}
BENCHMARK(BM_BasicAuthCacheHit);

// `htpasswd -nbB -C 4 u pass`: bcrypt at its lowest cost; htpasswd's default
// cost (5) doubles this, and each step above doubles it again.
void BM_BcryptVerifyCost4(benchmark::State& state) {
  absl::StatusOr<Htpasswd> users =
      Htpasswd::Parse("u:$2y$04$xKGzC6dsYqyU66r6ohDHJudQBbzRslsDwPvW0oN78ja7K2Io/bdOy\n", "bench");
  if (!users.ok()) {
    state.SkipWithError("bad htpasswd line");
    return;
  }
  for (auto _ : state) {
    bool ok = users->Verify("u", "pass");
    benchmark::DoNotOptimize(ok);
    if (!ok) state.SkipWithError("verify failed");
  }
}
BENCHMARK(BM_BcryptVerifyCost4)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace sluice::policy

BENCHMARK_MAIN();
