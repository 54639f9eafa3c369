#include "core/engine/idle_list.h"

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

}  // namespace
}  // namespace sluice::core
