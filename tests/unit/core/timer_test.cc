#include "core/engine/timer.h"

#include <string>

#include "gtest/gtest.h"

namespace sluice::core {
namespace {

TEST(TimerListTest, FiresInDeadlineOrderOnce) {
  TimerList list(100);
  std::string fired;
  Timer a([&] { fired += "a"; });
  Timer b([&] { fired += "b"; });
  list.Arm(&a, 0);
  list.Arm(&b, 10);
  EXPECT_EQ(list.next_deadline(), 100);
  list.Expire(99);
  EXPECT_EQ(fired, "");
  list.Expire(105);
  EXPECT_EQ(fired, "a");
  list.Expire(1000);
  EXPECT_EQ(fired, "ab");
  list.Expire(2000);
  EXPECT_EQ(fired, "ab");
  EXPECT_EQ(list.next_deadline(), -1);
}

TEST(TimerListTest, RearmMovesToTail) {
  TimerList list(100);
  std::string fired;
  Timer a([&] { fired += "a"; });
  Timer b([&] { fired += "b"; });
  list.Arm(&a, 0);
  list.Arm(&b, 10);
  list.Arm(&a, 50);  // activity on a: its deadline moves to 150
  list.Expire(120);
  EXPECT_EQ(fired, "b");
  list.Expire(150);
  EXPECT_EQ(fired, "ba");
}

TEST(TimerListTest, DisarmAndDestroy) {
  TimerList list(10);
  int fired = 0;
  Timer a([&] { ++fired; });
  {
    Timer b([&] { ++fired; });
    list.Arm(&b, 0);
  }  // destroyed while armed: unlinked
  list.Arm(&a, 0);
  a.Disarm();
  EXPECT_FALSE(a.armed());
  list.Expire(100);
  EXPECT_EQ(fired, 0);
}

TEST(TimerListTest, CallbackMayRearmItselfAndOthers) {
  struct State {
    TimerList list{10};
    int count = 0;
    Timer* self = nullptr;
    Timer* other = nullptr;
  } st;
  Timer other([s = &st] { s->count += 100; });
  Timer t([s = &st] {
    ++s->count;
    s->other->Disarm();
    if (s->count < 3) s->list.Arm(s->self, 0);
  });
  st.self = &t;
  st.other = &other;
  st.list.Arm(&t, 0);
  st.list.Arm(&other, 0);
  st.list.Expire(10);  // fires t, which re-arms at 0+10: fires again in the same pass
  EXPECT_EQ(st.count, 3);
}

}  // namespace
}  // namespace sluice::core
