#include "policy/basic_auth_cache.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace sluice::policy {
namespace {

constexpr int64_t kSecond = 1'000'000'000;
constexpr int64_t kT0 = 1000 * kSecond;

TEST(BasicAuthCacheTest, MissThenValidForTheSameCredentialsOnly) {
  BasicAuthCache cache(16, absl::Seconds(60), absl::Seconds(5));
  EXPECT_EQ(cache.Lookup("alice", "pw", 1, kT0), CacheResult::kMiss);
  cache.Insert("alice", "pw", true, 1, kT0);
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_EQ(cache.Lookup("alice", "pw", 1, kT0 + 1), CacheResult::kValid);
  EXPECT_EQ(cache.Lookup("alice", "pw2", 1, kT0 + 1), CacheResult::kMiss);
  EXPECT_EQ(cache.Lookup("alice", "", 1, kT0 + 1), CacheResult::kMiss);
  EXPECT_EQ(cache.Lookup("bob", "pw", 1, kT0 + 1), CacheResult::kMiss);
  EXPECT_EQ(cache.Lookup("Alice", "pw", 1, kT0 + 1), CacheResult::kMiss);
  // The user/password boundary counts: no ("alicep", "w") or ("alic", "epw").
  EXPECT_EQ(cache.Lookup("alicep", "w", 1, kT0 + 1), CacheResult::kMiss);
  EXPECT_EQ(cache.Lookup("alic", "epw", 1, kT0 + 1), CacheResult::kMiss);
}

TEST(BasicAuthCacheTest, NulBytesCannotMoveTheBoundary) {
  BasicAuthCache cache(16, absl::Seconds(60), absl::Seconds(5));
  cache.Insert(absl::string_view("a\0b", 3), "c", true, 1, kT0);
  EXPECT_EQ(cache.Lookup(absl::string_view("a\0b", 3), "c", 1, kT0), CacheResult::kValid);
  EXPECT_EQ(cache.Lookup("a", absl::string_view("b\0c", 3), 1, kT0), CacheResult::kMiss);
}

TEST(BasicAuthCacheTest, NegativeEntries) {
  BasicAuthCache cache(16, absl::Seconds(60), absl::Seconds(5));
  cache.Insert("alice", "guess", false, 1, kT0);
  EXPECT_EQ(cache.Lookup("alice", "guess", 1, kT0), CacheResult::kInvalid);
  EXPECT_EQ(cache.Lookup("alice", "guess", 1, kT0 + 5 * kSecond - 1), CacheResult::kInvalid);
  EXPECT_EQ(cache.Lookup("alice", "guess", 1, kT0 + 5 * kSecond), CacheResult::kMiss);
  // A later result replaces the entry.
  cache.Insert("alice", "guess", true, 1, kT0 + 6 * kSecond);
  EXPECT_EQ(cache.Lookup("alice", "guess", 1, kT0 + 6 * kSecond), CacheResult::kValid);
  cache.Insert("alice", "guess", false, 1, kT0 + 7 * kSecond);
  EXPECT_EQ(cache.Lookup("alice", "guess", 1, kT0 + 7 * kSecond), CacheResult::kInvalid);
  EXPECT_EQ(cache.size(), 1u);
}

TEST(BasicAuthCacheTest, PositiveTtlExpires) {
  BasicAuthCache cache(16, absl::Seconds(60), absl::Seconds(5));
  cache.Insert("alice", "pw", true, 1, kT0);
  EXPECT_EQ(cache.Lookup("alice", "pw", 1, kT0 + 60 * kSecond - 1), CacheResult::kValid);
  EXPECT_EQ(cache.Lookup("alice", "pw", 1, kT0 + 60 * kSecond), CacheResult::kMiss);
  cache.Insert("alice", "pw", true, 1, kT0 + 61 * kSecond);
  EXPECT_EQ(cache.Lookup("alice", "pw", 1, kT0 + 62 * kSecond), CacheResult::kValid);
}

TEST(BasicAuthCacheTest, ZeroTtlKeepsNothingOfThatKind) {
  BasicAuthCache cache(16, absl::Seconds(60), absl::ZeroDuration());
  cache.Insert("alice", "pw", true, 1, kT0);
  cache.Insert("alice", "bad", false, 1, kT0);
  EXPECT_EQ(cache.Lookup("alice", "pw", 1, kT0), CacheResult::kValid);
  EXPECT_EQ(cache.Lookup("alice", "bad", 1, kT0), CacheResult::kMiss);
  EXPECT_EQ(cache.size(), 1u);
  // A refusal that is not kept still removes what was kept for the same
  // credentials.
  cache.Insert("alice", "pw", false, 1, kT0);
  EXPECT_EQ(cache.Lookup("alice", "pw", 1, kT0), CacheResult::kMiss);
  EXPECT_EQ(cache.size(), 0u);
}

TEST(BasicAuthCacheTest, InfiniteTtlDoesNotOverflow) {
  BasicAuthCache cache(16, absl::InfiniteDuration(), absl::Seconds(1));
  cache.Insert("alice", "pw", true, 1, kT0);
  EXPECT_EQ(cache.Lookup("alice", "pw", 1, kT0 + 1'000'000 * kSecond), CacheResult::kValid);
}

TEST(BasicAuthCacheTest, AnotherGenerationIsAMiss) {
  BasicAuthCache cache(16, absl::Seconds(60), absl::Seconds(5));
  cache.Insert("alice", "pw", true, 1, kT0);
  cache.Insert("mallory", "pw", false, 1, kT0);
  EXPECT_EQ(cache.Lookup("alice", "pw", 2, kT0), CacheResult::kMiss);
  EXPECT_EQ(cache.Lookup("mallory", "pw", 2, kT0), CacheResult::kMiss);
  cache.Insert("alice", "pw", false, 2, kT0);  // alice's password changed
  EXPECT_EQ(cache.Lookup("alice", "pw", 2, kT0), CacheResult::kInvalid);
  EXPECT_EQ(cache.Lookup("alice", "pw", 1, kT0), CacheResult::kMiss);
}

TEST(BasicAuthCacheTest, CapacityZeroDisablesTheCache) {
  BasicAuthCache cache(0, absl::Seconds(60), absl::Seconds(5));
  cache.Insert("alice", "pw", true, 1, kT0);
  EXPECT_EQ(cache.Lookup("alice", "pw", 1, kT0), CacheResult::kMiss);
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.capacity(), 0u);
}

TEST(BasicAuthCacheTest, AtCapacityEvictsAnEntryNotReadSinceInserted) {
  BasicAuthCache cache(4, absl::Seconds(60), absl::Seconds(5));
  for (const char* user : {"a", "b", "c", "d"}) {
    cache.Insert(user, "pw", true, 1, kT0);
  }
  EXPECT_EQ(cache.size(), 4u);
  // "a" is read again, so the CLOCK hand passes over it once.
  EXPECT_EQ(cache.Lookup("a", "pw", 1, kT0), CacheResult::kValid);
  cache.Insert("e", "pw", true, 1, kT0);
  EXPECT_EQ(cache.size(), 4u);
  EXPECT_EQ(cache.Lookup("a", "pw", 1, kT0), CacheResult::kValid);
  EXPECT_EQ(cache.Lookup("b", "pw", 1, kT0), CacheResult::kMiss);
  EXPECT_EQ(cache.Lookup("c", "pw", 1, kT0), CacheResult::kValid);
  EXPECT_EQ(cache.Lookup("d", "pw", 1, kT0), CacheResult::kValid);
  EXPECT_EQ(cache.Lookup("e", "pw", 1, kT0), CacheResult::kValid);
}

TEST(BasicAuthCacheTest, AtCapacityEvictsExpiredOrStaleBeforeLiveOnes) {
  BasicAuthCache cache(4, absl::Seconds(60), absl::Seconds(5));
  cache.Insert("a", "pw", true, 1, kT0);
  cache.Insert("b", "pw", true, 1, kT0);
  cache.Insert("c", "bad", false, 1, kT0);  // expires at kT0 + 5 s
  cache.Insert("d", "pw", true, 1, kT0);
  const int64_t later = kT0 + 10 * kSecond;
  for (const char* user : {"a", "b", "d"}) {
    EXPECT_EQ(cache.Lookup(user, "pw", 1, later), CacheResult::kValid);
  }
  cache.Insert("e", "pw", true, 1, later);
  for (const char* user : {"a", "b", "d", "e"}) {
    EXPECT_EQ(cache.Lookup(user, "pw", 1, later), CacheResult::kValid) << user;
  }
  EXPECT_EQ(cache.size(), 4u);

  // After a reload every old entry is stale and goes first.
  cache.Insert("f", "pw", true, 2, later);
  EXPECT_EQ(cache.Lookup("f", "pw", 2, later), CacheResult::kValid);
  EXPECT_EQ(cache.size(), 4u);
}

TEST(BasicAuthCacheTest, StaysBoundedUnderManyDistinctCredentials) {
  BasicAuthCache cache(100, absl::Seconds(60), absl::Seconds(5));
  cache.Insert("alice", "pw", true, 1, kT0);
  for (int i = 0; i < 5000; ++i) {
    // A password-guessing run, while alice keeps using the cache.
    cache.Insert("alice", absl::StrCat("guess", i), false, 1, kT0);
    ASSERT_EQ(cache.Lookup("alice", "pw", 1, kT0), CacheResult::kValid) << i;
    ASSERT_LE(cache.size(), 100u);
  }
  EXPECT_EQ(cache.Lookup("alice", "guess4999", 1, kT0), CacheResult::kInvalid);
  EXPECT_EQ(cache.Lookup("alice", "guess0", 1, kT0), CacheResult::kMiss);
}

TEST(BasicAuthCacheTest, TwoCachesDoNotShareEntries) {
  BasicAuthCache a(16, absl::Seconds(60), absl::Seconds(5));
  BasicAuthCache b(16, absl::Seconds(60), absl::Seconds(5));
  a.Insert("alice", "pw", true, 1, kT0);
  EXPECT_EQ(b.Lookup("alice", "pw", 1, kT0), CacheResult::kMiss);
  BasicAuthCache moved = std::move(a);
  EXPECT_EQ(moved.Lookup("alice", "pw", 1, kT0), CacheResult::kValid);
}

}  // namespace
}  // namespace sluice::policy
