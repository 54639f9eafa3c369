#include "core/buffer.h"

#include <liburing.h>

#include <cstring>
#include <memory>
#include <vector>

#include "gtest/gtest.h"

namespace sluice::core {
namespace {

class BufferRingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int rc = io_uring_queue_init(8, &ring_, 0);
    if (rc < 0) GTEST_SKIP() << "io_uring unavailable: " << strerror(-rc);
    ready_ = true;
  }
  void TearDown() override {
    buffers_.reset();
    if (ready_) io_uring_queue_exit(&ring_);
  }

  io_uring ring_{};
  bool ready_ = false;
  std::unique_ptr<BufferRing> buffers_ = std::make_unique<BufferRing>();
};

// Receives are views of their buffers while the ring has room; once fewer
// than count/8 buffers would be left to the kernel, each receive is copied
// and its buffer goes straight back, so holders can never empty the ring.
TEST_F(BufferRingTest, CopiesOutOfTheRingWhenItRunsLow) {
  ASSERT_TRUE(buffers_->Init(&ring_, 16, 256).ok());
  std::vector<Slice> held;
  for (uint16_t bid = 0; bid < 14; ++bid) {
    held.push_back(buffers_->Take(bid, 10));
    EXPECT_EQ(buffers_->copied(), 0u) << bid;
  }
  EXPECT_EQ(buffers_->in_use(), 14u);
  for (uint16_t bid = 14; bid < 16; ++bid) {
    held.push_back(buffers_->Take(bid, 10));
    EXPECT_EQ(buffers_->in_use(), 14u) << "a copy lends no buffer out";
  }
  EXPECT_EQ(buffers_->copied(), 2u);
  // Releasing the views returns their buffers; the copies hold none.
  held.clear();
  EXPECT_EQ(buffers_->in_use(), 0u);
  Slice again = buffers_->Take(3, 5);
  EXPECT_EQ(buffers_->in_use(), 1u);
  EXPECT_EQ(buffers_->copied(), 2u);
}

// A copy has the received bytes and does not change when the buffer is
// filled again.
TEST_F(BufferRingTest, CopyKeepsTheReceivedBytes) {
  ASSERT_TRUE(buffers_->Init(&ring_, 8, 64).ok());
  char* base = const_cast<char*>(buffers_->Take(0, 1).data());  // released at once
  std::vector<Slice> held;
  for (uint16_t bid = 0; bid < 7; ++bid) held.push_back(buffers_->Take(bid, 1));
  char* last = base + 7 * 64;
  std::memcpy(last, "hello", 5);
  Slice copy = buffers_->Take(7, 5);  // 8 - 8 < 8/8: copied
  EXPECT_EQ(buffers_->copied(), 1u);
  EXPECT_NE(copy.data(), last);
  std::memcpy(last, "XXXXX", 5);
  EXPECT_EQ(copy.view(), "hello");
  EXPECT_EQ(buffers_->in_use(), 7u);
}

}  // namespace
}  // namespace sluice::core
