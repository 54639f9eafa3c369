#include "core/engine/idle_list.h"

#include "core/upstream/idle_target.h"
#include "gtest/gtest.h"

namespace sluice::core {
namespace {

TEST(IdleListTest, BoundedAndNewestFirst) {
  IdleList<int> idle(2);
  int a = 1, b = 2, c = 3;
  EXPECT_TRUE(idle.Offer(&a));
  EXPECT_TRUE(idle.Offer(&b));
  EXPECT_FALSE(idle.Offer(&c));  // over --upstream_keepalive: caller closes it
  EXPECT_EQ(idle.size(), 2u);
  EXPECT_EQ(idle.TakeNewest(), &b);
  EXPECT_EQ(idle.TakeNewest(), &a);
  EXPECT_EQ(idle.TakeNewest(), nullptr);
}

TEST(IdleListTest, RemoveClosedEntry) {
  IdleList<int> idle(4);
  int a = 1, b = 2, c = 3;
  idle.Offer(&a);
  idle.Offer(&b);
  idle.Offer(&c);
  EXPECT_TRUE(idle.Remove(&b));
  EXPECT_FALSE(idle.Remove(&b));
  EXPECT_EQ(idle.TakeNewest(), &c);
  EXPECT_EQ(idle.TakeNewest(), &a);
}

TEST(IdleListTest, ZeroCapacityKeepsNothing) {
  IdleList<int> idle(0);
  int a = 1;
  EXPECT_FALSE(idle.Offer(&a));
}

TEST(IdleListTest, TakeAllEmpties) {
  IdleList<int> idle(3);
  int a = 1, b = 2;
  idle.Offer(&a);
  idle.Offer(&b);
  EXPECT_EQ(idle.TakeAll().size(), 2u);
  EXPECT_EQ(idle.size(), 0u);
  EXPECT_TRUE(idle.Offer(&a));
}

constexpr int64_t kSec = 1'000'000'000;

// nginx's fixed size: whatever the use.
TEST(IdleTargetTest, FixedKeepsItsNumber) {
  IdleTarget t(32, 1024, 60 * kSec);
  t.NoteInUse(640, 1 * kSec);
  EXPECT_EQ(t.Capacity(1 * kSec), 32u);
  IdleTarget none(0, 1024, 60 * kSec);
  none.NoteInUse(5, 1 * kSec);
  EXPECT_EQ(none.Capacity(1 * kSec), 0u);
}

// Adaptive: the recent peak of links in use, so that a steady load of 640
// requests in flight keeps all 640 links instead of reconnecting.
TEST(IdleTargetTest, AdaptiveFollowsThePeakOfUse) {
  IdleTarget t(-1, 1024, 60 * kSec);
  EXPECT_EQ(t.Capacity(1 * kSec), 0u) << "nothing used yet";
  for (size_t n = 1; n <= 640; ++n) t.NoteInUse(n, 1 * kSec);
  EXPECT_EQ(t.Capacity(1 * kSec), 640u);
  // The load goes on at 600 to 640 in use: the capacity stays at the peak.
  for (int64_t s = 2; s < 200; ++s) {
    t.NoteInUse(600 + static_cast<size_t>(s % 41), s * kSec);
    EXPECT_GE(t.Capacity(s * kSec), 600u) << s;
  }
}

// Capped by --upstream_max_idle.
TEST(IdleTargetTest, AdaptiveIsCappedByMaxIdle) {
  IdleTarget t(-1, 100, 60 * kSec);
  t.NoteInUse(5000, 1 * kSec);
  EXPECT_EQ(t.Capacity(1 * kSec), 100u);
}

// A burst is forgotten between half a window and a whole window after it
// ended; a smaller load then sets the capacity.
TEST(IdleTargetTest, AdaptiveForgetsABurstAfterAWindow) {
  IdleTarget t(-1, 1024, 60 * kSec);
  t.NoteInUse(500, 1 * kSec);
  t.NoteInUse(3, 10 * kSec);
  EXPECT_EQ(t.Capacity(20 * kSec), 500u);
  EXPECT_EQ(t.Capacity(40 * kSec), 500u) << "within the window";
  t.NoteInUse(3, 45 * kSec);
  EXPECT_EQ(t.Capacity(75 * kSec), 3u) << "the burst is a window old";
  EXPECT_EQ(t.Capacity(200 * kSec), 0u) << "idle for two windows";
}

}  // namespace
}  // namespace sluice::core
