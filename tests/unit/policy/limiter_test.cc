#include "policy/limiter.h"

#include <openssl/sha.h>

#include <atomic>
#include <cstdint>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "policy/ip_set.h"

namespace sluice::policy {
namespace {

constexpr int64_t kMs = 1000000;
constexpr int64_t kSec = 1000 * kMs;
// An arbitrary origin: the tables must not assume the clock starts at 0.
constexpr int64_t kT0 = 123456 * kSec;

RateSpec Spec(absl::string_view text) {
  absl::StatusOr<RateSpec> s = ParseRateSpec(text);
  EXPECT_TRUE(s.ok()) << text << ": " << s.status();
  return s.value_or(RateSpec{});
}

TEST(RateSpecParse, Accepts) {
  RateSpec s = Spec("10r/m");
  EXPECT_DOUBLE_EQ(s.rate_per_s, 10.0 / 60);
  EXPECT_EQ(s.burst, 0u);
  EXPECT_EQ(s.delay, 0u);

  s = Spec("10r/m burst=5 nodelay");
  EXPECT_EQ(s.burst, 5u);
  EXPECT_EQ(s.delay, 5u);

  s = Spec("5r/s burst=10 delay=3");
  EXPECT_DOUBLE_EQ(s.rate_per_s, 5);
  EXPECT_EQ(s.burst, 10u);
  EXPECT_EQ(s.delay, 3u);

  s = Spec("2r/s burst=4");
  EXPECT_EQ(s.burst, 4u);
  EXPECT_EQ(s.delay, 0u);

  s = Spec("  nodelay\tburst=4   2r/s ");
  EXPECT_DOUBLE_EQ(s.rate_per_s, 2);
  EXPECT_EQ(s.delay, 4u);

  EXPECT_EQ(Spec("2r/s burst=4 delay=9").delay, 4u);  // clamped to burst
  EXPECT_EQ(Spec("2r/s nodelay").delay, 0u);
  EXPECT_DOUBLE_EQ(Spec("1000000000r/s").rate_per_s, 1e9);
  EXPECT_EQ(Spec("1r/s burst=1000000").burst, 1000000u);
}

TEST(RateSpecParse, RejectsNamingTheToken) {
  struct Case {
    absl::string_view text, token;
  };
  for (const Case& c : std::initializer_list<Case>{
           {"0r/s", "0r/s"},
           {"10r/h", "10r/h"},
           {"1.5r/s", "1.5r/s"},
           {"-1r/s", "-1r/s"},
           {"r/s", "r/s"},
           {"10 r/s", "10"},
           {"10r/s burst=", "burst="},
           {"10r/s burst=-1", "burst=-1"},
           {"10r/s burst=x", "burst=x"},
           {"10r/s burst=1000001", "burst=1000001"},
           {"10r/s burst=1 burst=2", "burst=2"},
           {"10r/s burst=4 nodelay delay=2", "delay=2"},
           {"10r/s burst=4 delay=2 nodelay", "nodelay"},
           {"10r/s 5r/s", "5r/s"},
           {"10r/s foo", "foo"},
           {"10r/s Burst=2", "Burst=2"},
           {"10r/s,burst=2", "10r/s,burst=2"},
           {"2000000000r/s", "2000000000r/s"},
       }) {
    absl::StatusOr<RateSpec> s = ParseRateSpec(c.text);
    ASSERT_FALSE(s.ok()) << c.text;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find(absl::StrCat("\"", c.token, "\"")), absl::string_view::npos)
        << c.text << ": " << s.status();
  }
  EXPECT_FALSE(ParseRateSpec("").ok());
  EXPECT_FALSE(ParseRateSpec("burst=5 nodelay").ok());
}

// nginx's ngx_http_limit_req_module arithmetic, transcribed: the rate in
// milli-requests per second (rate * 1000 / 60 for r/m), the excess in
// milli-requests, time in milliseconds, integer division throughout.
class NginxLimitReq {
 public:
  NginxLimitReq(int64_t n, bool per_minute, int64_t burst, int64_t delay, bool nodelay)
      : rate_(n * 1000 / (per_minute ? 60 : 1)),
        burst_(burst * 1000),
        delay_(nodelay ? INT64_MAX / 1000 : delay * 1000) {}

  struct Verdict {
    bool allowed;
    int64_t delay_ms;
  };

  // ngx_http_limit_req_lookup() with account = 1, then the delay of
  // ngx_http_limit_req_account().
  Verdict Request(int64_t now_ms) {
    int64_t excess = 0;
    if (!exists_) {
      exists_ = true;
      excess_ = 0;
      last_ = now_ms;
    } else {
      int64_t ms = now_ms - last_;
      if (ms < 0) ms = 0;
      excess = excess_ - rate_ * ms / 1000 + 1000;
      if (excess < 0) excess = 0;
      if (excess > burst_) return {false, 0};
      excess_ = excess;
      if (ms) last_ = now_ms;
    }
    if (excess <= delay_) return {true, 0};
    return {true, (excess - delay_) * 1000 / rate_};
  }

  // Whether a request at `now_ms` would pass, computed without the division
  // (so at any millisecond, not only those where nginx's rounding is exact).
  bool WouldAdmit(int64_t now_ms) const {
    if (!exists_) return true;
    const int64_t ms = now_ms - last_;
    return excess_ * 1000 - rate_ * ms + 1000000 <= burst_ * 1000;
  }

 private:
  int64_t rate_, burst_, delay_;
  bool exists_ = false;
  int64_t excess_ = 0, last_ = 0;
};

struct ModelCase {
  absl::string_view spec;
  int64_t n;
  bool per_minute;
  int64_t burst, delay;
  bool nodelay;
};

// Rates whose nginx arithmetic is exact at 10 ms steps (rate * ms / 1000
// and the delay division leave no remainder), so nginx and GCRA must agree
// to the nanosecond.
constexpr ModelCase kModelCases[] = {
    {"5r/s", 5, false, 0, 0, false},
    {"5r/s burst=5 nodelay", 5, false, 5, 0, true},
    {"2r/s burst=4", 2, false, 4, 0, false},
    {"10r/s burst=10 delay=3", 10, false, 10, 3, false},
    {"6r/m burst=3 nodelay", 6, true, 3, 0, true},
    {"30r/m burst=2", 30, true, 2, 0, false},
    {"120r/m burst=5 delay=2", 120, true, 5, 2, false},
    {"1r/s burst=20 delay=19", 1, false, 20, 19, false},
};

TEST(RateTableModel, AgreesWithNginxOnRandomSequences) {
  std::mt19937_64 rng(42);
  for (const ModelCase& mc : kModelCases) {
    const RateSpec spec = Spec(mc.spec);
    const int64_t interval_ms = (mc.per_minute ? 60000 : 1000) / mc.n;
    for (int seq = 0; seq < 50; ++seq) {
      RateTable table(1024);
      NginxLimitReq nginx(mc.n, mc.per_minute, mc.burst, mc.delay, mc.nodelay);
      int64_t now_ms = 1000000;
      int admitted = 0, rejected = 0;
      for (int i = 0; i < 200; ++i) {
        const uint64_t r = rng() % 100;
        if (r < 50) {
          // same instant: a burst
        } else if (r < 95) {
          now_ms += 10 * static_cast<int64_t>(rng() % (interval_ms / 5 + 1));
        } else {
          now_ms += 10 * interval_ms;  // idle: the budget refills
        }
        const bool nginx_would = nginx.WouldAdmit(now_ms);
        const NginxLimitReq::Verdict want = nginx.Request(now_ms);
        ASSERT_EQ(nginx_would, want.allowed);
        // Peek says what Check will, and accounts nothing (asked twice).
        for (int k = 0; k < 2; ++k) {
          const RateTable::RateResult peek = table.Peek(7, "client", spec, now_ms * kMs);
          ASSERT_EQ(peek.allowed, want.allowed) << mc.spec << " request " << i;
          if (!peek.allowed) {
            EXPECT_EQ(peek.retry_after_ns,
                      table.Peek(7, "client", spec, now_ms * kMs).retry_after_ns);
          }
        }
        const RateTable::RateResult got = table.Check(7, "client", spec, now_ms * kMs);
        if (!got.allowed) {
          EXPECT_EQ(got.retry_after_ns, table.Peek(7, "client", spec, now_ms * kMs).retry_after_ns);
        }
        ASSERT_EQ(got.allowed, want.allowed)
            << mc.spec << " seq " << seq << " request " << i << " at " << now_ms;
        if (got.allowed) {
          ++admitted;
          EXPECT_EQ(got.delay_ns, want.delay_ms * kMs)
              << mc.spec << " seq " << seq << " request " << i;
          EXPECT_EQ(got.retry_after_ns, 0);
        } else {
          ++rejected;
          // Retry-After is exact: nginx admits at now + retry_after, and not
          // a millisecond before.
          ASSERT_EQ(got.retry_after_ns % kMs, 0);
          const int64_t ra_ms = got.retry_after_ns / kMs;
          EXPECT_GT(ra_ms, 0);
          EXPECT_TRUE(nginx.WouldAdmit(now_ms + ra_ms)) << mc.spec;
          EXPECT_FALSE(nginx.WouldAdmit(now_ms + ra_ms - 1)) << mc.spec;
        }
      }
      EXPECT_GT(admitted, 0);
      if (seq == 0) {
        EXPECT_GT(rejected, 0) << mc.spec;
      }
    }
  }
}

TEST(RateTableModel, BurstNodelayAdmitsBurstPlusOneThenOnePerInterval) {
  RateTable table(1024);
  const RateSpec spec = Spec("10r/m burst=5 nodelay");
  for (int i = 0; i < 6; ++i) {
    RateTable::RateResult r = table.Check(1, "k", spec, kT0);
    EXPECT_TRUE(r.allowed) << i;
    EXPECT_EQ(r.delay_ns, 0);
  }
  RateTable::RateResult r = table.Check(1, "k", spec, kT0);
  EXPECT_FALSE(r.allowed);
  EXPECT_EQ(r.retry_after_ns, 6 * kSec);
  r = table.Check(1, "k", spec, kT0 + 6 * kSec - 1);
  EXPECT_FALSE(r.allowed);
  EXPECT_EQ(r.retry_after_ns, 1);
  EXPECT_TRUE(table.Check(1, "k", spec, kT0 + 6 * kSec).allowed);
  EXPECT_FALSE(table.Check(1, "k", spec, kT0 + 6 * kSec).allowed);
  EXPECT_TRUE(table.Check(1, "k", spec, kT0 + 12 * kSec).allowed);
  // A long idle gap refills the whole burst, and no more.
  for (int i = 0; i < 6; ++i) {
    EXPECT_TRUE(table.Check(1, "k", spec, kT0 + 3600 * kSec).allowed) << i;
  }
  EXPECT_FALSE(table.Check(1, "k", spec, kT0 + 3600 * kSec).allowed);
}

TEST(RateTableModel, DelayedModeSpacesRequests) {
  RateTable table(1024);
  const RateSpec spec = Spec("2r/s burst=4");  // T = 500 ms, no free excess
  const int64_t want_delays_ms[] = {0, 500, 1000, 1500, 2000};
  for (int64_t want : want_delays_ms) {
    RateTable::RateResult r = table.Check(1, "k", spec, kT0);
    ASSERT_TRUE(r.allowed);
    EXPECT_EQ(r.delay_ns, want * kMs);
  }
  RateTable::RateResult r = table.Check(1, "k", spec, kT0);
  EXPECT_FALSE(r.allowed);
  EXPECT_EQ(r.retry_after_ns, 500 * kMs);

  const RateSpec spec2 = Spec("5r/s burst=10 delay=3");  // T = 200 ms
  for (int i = 0; i < 11; ++i) {
    r = table.Check(2, "k", spec2, kT0);
    ASSERT_TRUE(r.allowed) << i;
    EXPECT_EQ(r.delay_ns, i <= 3 ? 0 : (i - 3) * 200 * kMs) << i;
  }
  EXPECT_FALSE(table.Check(2, "k", spec2, kT0).allowed);
}

TEST(RateTableModel, RetryAfterWithoutBurst) {
  RateTable table(1024);
  const RateSpec spec = Spec("1r/s burst=2");
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(table.Check(1, "k", spec, kT0).allowed);
  EXPECT_EQ(table.Check(1, "k", spec, kT0).retry_after_ns, kSec);
  EXPECT_EQ(table.Check(1, "k", spec, kT0 + 400 * kMs).retry_after_ns, 600 * kMs);
  EXPECT_TRUE(table.Check(1, "k", spec, kT0 + kSec).allowed);

  const RateSpec per_minute = Spec("1r/m");
  EXPECT_TRUE(table.Check(2, "k", per_minute, kT0).allowed);
  EXPECT_EQ(table.Check(2, "k", per_minute, kT0 + kSec).retry_after_ns, 59 * kSec);
}

// Refund undoes one admitted Check: the next Check answers as if the
// refunded one had never been counted, and a refund never builds credit
// beyond a fresh key's.
TEST(RateTable, RefundGivesBackOneAdmission) {
  RateTable table(1024);
  const RateSpec spec = Spec("6r/m burst=2");  // T = 10 s, 3 at once
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(table.Check(1, "k", spec, kT0).allowed) << i;
  EXPECT_FALSE(table.Check(1, "k", spec, kT0).allowed);
  table.Refund(1, "k", spec, kT0);
  EXPECT_TRUE(table.Check(1, "k", spec, kT0).allowed);
  EXPECT_FALSE(table.Check(1, "k", spec, kT0).allowed);
  // Refunds beyond what was counted leave a fresh state, not a bigger
  // burst; other keys and zones are untouched.
  for (int i = 0; i < 10; ++i) table.Refund(1, "k", spec, kT0);
  table.Refund(1, "never-seen", spec, kT0);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(table.Check(1, "k", spec, kT0).allowed) << i;
  EXPECT_FALSE(table.Check(1, "k", spec, kT0).allowed);
  EXPECT_TRUE(table.Check(2, "k", spec, kT0).allowed);
  // Later, a refund takes off one interval of what is left.
  table.Refund(1, "k", spec, kT0 + 5 * kSec);
  EXPECT_EQ(table.Check(1, "k", spec, kT0 + 5 * kSec).retry_after_ns, 0);
  EXPECT_EQ(table.Check(1, "k", spec, kT0 + 5 * kSec).retry_after_ns, 5 * kSec);
}

TEST(RateTable, ZonesAndKeysAreSeparate) {
  RateTable table(1024);
  const RateSpec spec = Spec("1r/m");
  EXPECT_TRUE(table.Check(1, "alice", spec, kT0).allowed);
  EXPECT_FALSE(table.Check(1, "alice", spec, kT0).allowed);
  EXPECT_TRUE(table.Check(2, "alice", spec, kT0).allowed);
  EXPECT_TRUE(table.Check(1, "alicf", spec, kT0).allowed);
  EXPECT_TRUE(table.Check(1, "alic", spec, kT0).allowed);
  EXPECT_TRUE(table.Check(1, absl::string_view("alice\0", 6), spec, kT0).allowed);
  EXPECT_TRUE(table.Check(1, "", spec, kT0).allowed);
  EXPECT_FALSE(table.Check(1, "", spec, kT0).allowed);
  EXPECT_EQ(table.size(), 6u);
}

// Keys chosen to collide if any shortcut were taken: shared prefixes, empty
// and NUL-bearing keys, 64-byte keys differing in the last byte, long keys
// (stored as a digest) sharing 64 and 100 bytes, and an inline key equal to
// a long key's digest.
std::vector<std::string> TrickyKeys() {
  std::vector<std::string> keys = {"", std::string(1, '\0'), "a", "ab", "abc"};
  for (int i = 0; i < 256; i += 37) {
    std::string k(64, 'x');
    k.back() = static_cast<char>(i);
    keys.push_back(k);
    k.push_back('y');
    keys.push_back(k);
  }
  const std::string long_key = std::string(100, 'L') + "tail";
  keys.push_back(long_key);
  keys.push_back(std::string(100, 'L') + "tajl");
  keys.push_back(std::string(65, 'L'));
  std::string digest(32, '\0');
  SHA256(reinterpret_cast<const uint8_t*>(long_key.data()), long_key.size(),
         reinterpret_cast<uint8_t*>(digest.data()));
  keys.push_back(digest);
  return keys;
}

TEST(RateTable, NeverMergesKeysUnderEviction) {
  // 64 entries, 10k keys: every key's first request finds no state but its
  // own (a shared slot would reject it), and its state is there right after.
  RateTable table(64);
  const RateSpec spec = Spec("1r/m");
  std::vector<std::string> keys = TrickyKeys();
  for (int i = 0; i < 10000; ++i) keys.push_back(absl::StrCat("key-", i));
  int64_t now = kT0;
  for (uint32_t zone = 0; zone < 3; ++zone) {
    for (const std::string& k : keys) {
      now += 1;
      ASSERT_TRUE(table.Check(zone, k, spec, now).allowed) << zone << " " << k;
      ASSERT_FALSE(table.Check(zone, k, spec, now).allowed) << zone << " " << k;
      ASSERT_LE(table.size(), 64u);
    }
  }
  EXPECT_EQ(table.size(), 64u);
}

TEST(RateTable, TrickyKeysCoexist) {
  RateTable table(65536);
  const RateSpec spec = Spec("1r/m");
  const std::vector<std::string> keys = TrickyKeys();
  for (const std::string& k : keys) {
    ASSERT_TRUE(table.Check(1, k, spec, kT0).allowed) << k;
  }
  for (const std::string& k : keys) {
    EXPECT_FALSE(table.Check(1, k, spec, kT0).allowed) << k;
  }
  EXPECT_EQ(table.size(), keys.size());
}

TEST(RateTable, EvictsExpiredStateFirstThenOldest) {
  // Capacity 8 is one set of 8: every key competes for the same slots.
  RateTable table(8);
  const RateSpec spec = Spec("1r/s");  // burst 0: TAT = arrival + 1 s
  for (int i = 0; i < 7; ++i) {
    ASSERT_TRUE(table.Check(1, absl::StrCat("old", i), spec, kT0).allowed);
  }
  ASSERT_TRUE(table.Check(1, "young", spec, kT0 + 500 * kMs).allowed);
  EXPECT_EQ(table.size(), 8u);
  // At +1.2 s the seven "old" states are expired; "young" (TAT +1.5 s) is
  // live and must survive seven newcomers.
  for (int i = 0; i < 7; ++i) {
    ASSERT_TRUE(table.Check(1, absl::StrCat("new", i), spec, kT0 + 1200 * kMs).allowed);
  }
  EXPECT_FALSE(table.Check(1, "young", spec, kT0 + 1200 * kMs).allowed);
  EXPECT_EQ(table.size(), 8u);

  // All live now; a newcomer at +1.3 s takes the smallest TAT, "young"'s
  // (1.5 s), while the "new" states (2.2 s) stay.
  ASSERT_TRUE(table.Check(1, "newest", spec, kT0 + 1300 * kMs).allowed);
  EXPECT_TRUE(table.Check(1, "young", spec, kT0 + 1300 * kMs).allowed);
  EXPECT_EQ(table.size(), 8u);
}

TEST(RateTableThreads, OneKeyAdmitsExactlyBurstPlusOne) {
  RateTable table(65536);
  const RateSpec spec = Spec("1r/m burst=7 nodelay");
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 5000; ++i) {
        if (table.Check(3, "shared", spec, kT0).allowed) admitted.fetch_add(1);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(admitted.load(), 8);
}

TEST(RateTableThreads, DistinctKeysEachAdmitBurstPlusOne) {
  RateTable table(65536);
  const RateSpec spec = Spec("1r/m burst=3");
  constexpr int kThreads = 4, kKeys = 200;
  std::vector<std::vector<int>> admitted(kThreads, std::vector<int>(kKeys));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 10; ++round) {
        for (int k = 0; k < kKeys; ++k) {
          if (table.Check(5, absl::StrCat(t, "/", k), spec, kT0).allowed) {
            ++admitted[t][k];
          }
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int t = 0; t < kThreads; ++t) {
    for (int k = 0; k < kKeys; ++k) EXPECT_EQ(admitted[t][k], 4) << t << "/" << k;
  }
  EXPECT_EQ(table.size(), static_cast<size_t>(kThreads * kKeys));
}

TEST(ConcurrencyTable, LimitsAndReleases) {
  ConcurrencyTable table(1024);
  EXPECT_TRUE(table.Acquire(1, "k", 3));
  EXPECT_TRUE(table.Acquire(1, "k", 3));
  EXPECT_TRUE(table.Acquire(1, "k", 3));
  EXPECT_FALSE(table.Acquire(1, "k", 3));
  EXPECT_EQ(table.Count(1, "k"), 3u);
  EXPECT_TRUE(table.Acquire(2, "k", 3));   // another zone
  EXPECT_TRUE(table.Acquire(1, "k2", 1));  // another key
  EXPECT_FALSE(table.Acquire(1, "k2", 1));
  EXPECT_FALSE(table.Acquire(1, "z", 0));  // limit 0 admits nothing
  EXPECT_EQ(table.Count(1, "z"), 0u);
  EXPECT_EQ(table.size(), 3u);

  table.Release(1, "k");
  EXPECT_EQ(table.Count(1, "k"), 2u);
  EXPECT_TRUE(table.Acquire(1, "k", 3));
  EXPECT_FALSE(table.Acquire(1, "k", 3));
  // A lower limit after a reload: nothing more until below it.
  EXPECT_FALSE(table.Acquire(1, "k", 2));

  for (int i = 0; i < 3; ++i) table.Release(1, "k");
  EXPECT_EQ(table.Count(1, "k"), 0u);
  table.Release(1, "k");  // unmatched: ignored
  EXPECT_EQ(table.Count(1, "k"), 0u);
  table.Release(2, "k");
  table.Release(1, "k2");
  EXPECT_EQ(table.size(), 0u);
}

TEST(ConcurrencyTable, FullSetOfHeldEntriesFailsClosed) {
  ConcurrencyTable table(8);  // one set of 8
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(table.Acquire(1, absl::StrCat("held", i), 1));
  }
  EXPECT_FALSE(table.Acquire(1, "newcomer", 5));
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(table.Count(1, absl::StrCat("held", i)), 1u);  // none evicted
  }
  table.Release(1, "held3");
  EXPECT_TRUE(table.Acquire(1, "newcomer", 5));
  EXPECT_FALSE(table.Acquire(1, "held3", 1));
  table.Release(1, "newcomer");
  EXPECT_TRUE(table.Acquire(1, "held3", 1));
}

TEST(ConcurrencyTable, LongKeysAreDistinct) {
  ConcurrencyTable table(1024);
  const std::vector<std::string> keys = TrickyKeys();
  for (const std::string& k : keys) ASSERT_TRUE(table.Acquire(1, k, 1)) << k;
  for (const std::string& k : keys) EXPECT_EQ(table.Count(1, k), 1u) << k;
  for (const std::string& k : keys) table.Release(1, k);
  EXPECT_EQ(table.size(), 0u);
}

TEST(ConcurrencyTableThreads, AcquireReleaseBalance) {
  ConcurrencyTable table(1024);
  constexpr uint32_t kLimit = 3;
  std::atomic<int> in_flight{0}, max_in_flight{0}, acquired{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const std::string own = absl::StrCat("own", t);
      for (int i = 0; i < 20000; ++i) {
        ASSERT_TRUE(table.Acquire(9, own, 1));
        if (table.Acquire(9, "shared", kLimit)) {
          const int now = in_flight.fetch_add(1) + 1;
          int seen = max_in_flight.load();
          while (now > seen && !max_in_flight.compare_exchange_weak(seen, now)) {
          }
          acquired.fetch_add(1);
          in_flight.fetch_sub(1);
          table.Release(9, "shared");
        }
        table.Release(9, own);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_LE(max_in_flight.load(), static_cast<int>(kLimit));
  EXPECT_GT(acquired.load(), 0);
  EXPECT_EQ(table.Count(9, "shared"), 0u);
  EXPECT_EQ(table.size(), 0u);
}

}  // namespace
}  // namespace sluice::policy

namespace sluice::policy {
namespace {

// A table split per worker keeps exactness: one key, always checked with
// its steering hash, from 4 threads admits exactly 1 + burst; different
// keys in different groups keep their own state.
TEST(RateTableSteering, PartitionedTableIsExact) {
  RateTable table(4096, 2);
  absl::StatusOr<RateSpec> spec = ParseRateSpec("1r/m burst=7 nodelay");
  ASSERT_TRUE(spec.ok());
  std::optional<IpAddress> ip = IpAddress::Parse("198.51.100.23");
  ASSERT_TRUE(ip.has_value());
  const uint32_t steer = SteeringHash(*ip);
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        if (table.Check(1, ip->AsBytes(), *spec, 1'000'000'000, steer).allowed) ++admitted;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(admitted.load(), 8);
  // Every address of a /24 gets its own 1 + burst, whichever group.
  for (int i = 0; i < 256; ++i) {
    IpAddress a = *IpAddress::Parse("203.0.113.0");
    a.bytes[15] = static_cast<uint8_t>(i);
    int n = 0;
    for (int k = 0; k < 10; ++k) {
      n += table.Check(2, a.AsBytes(), *spec, 1'000'000'000, SteeringHash(a)).allowed;
    }
    EXPECT_EQ(n, 8) << a.ToString();
  }
}

}  // namespace
}  // namespace sluice::policy
