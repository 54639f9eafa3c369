// How many workers, where, and each one's share of the connection cap.

#include "core/server/workers.h"

#include <sys/resource.h>

#include "gtest/gtest.h"

namespace sluice::core {
namespace {

TEST(WorkersTest, ConnectionCapIsSharedRoundedUp) {
  EXPECT_EQ(ConnectionsPerWorker(1000, 1 << 20, 1), 1000);
  EXPECT_EQ(ConnectionsPerWorker(1000, 1 << 20, 3), 334);
  EXPECT_EQ(ConnectionsPerWorker(1, 1 << 20, 4), 1);
}

// Unset: half the open-files limit less a reserve of 256, at least 16.
TEST(WorkersTest, ConnectionCapFollowsTheOpenFilesLimit) {
  EXPECT_EQ(ConnectionsPerWorker(0, 1024, 1), 384);
  EXPECT_EQ(ConnectionsPerWorker(0, 1024, 2), 192);
  EXPECT_EQ(ConnectionsPerWorker(0, 65536, 3), 10880);
  EXPECT_EQ(ConnectionsPerWorker(0, 256, 1), 16);
  EXPECT_EQ(ConnectionsPerWorker(0, 100, 2), 8);
}

TEST(WorkersTest, OpenFilesLimitIsRaisedToTheHardLimit) {
  const int64_t soft = RaiseOpenFilesLimit();
  rlimit rl{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &rl), 0);
  EXPECT_EQ(rl.rlim_cur, rl.rlim_max);
  if (rl.rlim_cur != RLIM_INFINITY) {
    EXPECT_EQ(soft, static_cast<int64_t>(rl.rlim_cur));
  }
}

TEST(WorkersTest, AllowedCpusAreTheAffinityMask) {
  std::vector<int> cpus = AllowedCpus();
  ASSERT_FALSE(cpus.empty());
  cpu_set_t set;
  ASSERT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  EXPECT_EQ(static_cast<int>(cpus.size()), CPU_COUNT(&set));
  for (int cpu : cpus) EXPECT_TRUE(CPU_ISSET(cpu, &set)) << cpu;
}

}  // namespace
}  // namespace sluice::core
