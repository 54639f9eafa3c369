#include "core/engine/buffer.h"

#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <set>
#include <vector>

#include "core/engine/backend.h"
#include "gtest/gtest.h"

namespace sluice::core {
namespace {

enum class Kind { kUring, kPoll };

// Each case runs on both backends: io_uring's provided-buffer ring (the
// kernel picks the buffers) and the poll backend's list.
class BufferRingTest : public ::testing::TestWithParam<Kind> {
 protected:
  void SetUp() override {
    backend_ = GetParam() == Kind::kUring ? NewUringBackend() : NewPollBackend();
    absl::Status s = backend_->Init(8);
    if (!s.ok()) GTEST_SKIP() << s;
  }
  void TearDown() override { buffers_.reset(); }
  absl::Status Init(uint32_t count, uint32_t size) {
    absl::StatusOr<std::unique_ptr<BufferProvider>> provider = backend_->NewBufferProvider(count);
    if (!provider.ok()) return provider.status();
    return buffers_->Init(*std::move(provider), count, size);
  }

  std::unique_ptr<Backend> backend_;
  std::unique_ptr<BufferRing> buffers_ = std::make_unique<BufferRing>();
};

INSTANTIATE_TEST_SUITE_P(Backends, BufferRingTest, ::testing::Values(Kind::kUring, Kind::kPoll),
                         [](const ::testing::TestParamInfo<Kind>& info) {
                           return info.param == Kind::kUring ? "uring" : "poll";
                         });

// Receives are views of their buffers while the ring has room; once fewer
// than count/8 buffers would be left to the kernel, each receive is copied
// and its buffer goes straight back, so holders can never empty the ring.
TEST_P(BufferRingTest, CopiesOutOfTheRingWhenItRunsLow) {
  ASSERT_TRUE(Init(16, 256).ok());
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
TEST_P(BufferRingTest, CopyKeepsTheReceivedBytes) {
  ASSERT_TRUE(Init(8, 64).ok());
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

// Drives one multishot receive on a socketpair through the backend, the
// way Stream does: re-armed when it stops, OnEmpty on -ENOBUFS.
class RingReceiver final : public Completion {
 public:
  RingReceiver(Backend* backend, BufferRing* buffers) : backend_(backend), buffers_(buffers) {
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds_) != 0) fds_[0] = -1;
  }
  ~RingReceiver() {
    if (fds_[0] >= 0) {
      close(fds_[0]);
      close(fds_[1]);
    }
  }
  bool ok() const { return fds_[0] >= 0; }

  // Sends one small message and collects what the backend delivered.
  void SendAndReceive(std::vector<Slice>* held, std::set<uint16_t>* bids) {
    if (!armed_) Arm();
    ASSERT_EQ(write(fds_[1], "token", 5), 5);
    held_ = held;
    bids_ = bids;
    got_ = false;
    while (!got_) {
      int ret = backend_->Wait(200 * 1000 * 1000, 0);
      if (backend_->Dispatch() == 0 && ret < 0) return;  // nothing came
    }
  }

  void Complete(int res, uint32_t flags) override {
    if (!(flags & kIoMore)) armed_ = false;
    if (res > 0) {
      const auto bid = static_cast<uint16_t>(flags >> kIoBufferShift);
      bids_->insert(bid);
      held_->push_back(buffers_->Take(bid, res));
      got_ = true;
    } else if (res == -ENOBUFS) {
      buffers_->OnEmpty();
    }
    if (!armed_) Arm();
  }

 private:
  void Arm() {
    backend_->Recv(fds_[0], this);
    armed_ = true;
  }

  Backend* backend_;
  BufferRing* buffers_;
  int fds_[2] = {-1, -1};
  bool armed_ = false;
  bool got_ = false;
  std::vector<Slice>* held_ = nullptr;
  std::set<uint16_t>* bids_ = nullptr;
};

bool Resident(const char* p, size_t len) {
  std::vector<unsigned char> pages((len + 4095) / 4096);
  if (mincore(const_cast<char*>(p), len, pages.data()) != 0) return true;
  for (unsigned char c : pages) {
    if (c & 1) return true;
  }
  return false;
}

// Receives that are dropped at once cycle through a small working set of
// buffers, not through all of them: a ring of 1024 buffers keeps at most
// kMinPublished (+ the one in hand) warm however many receives go by.
TEST_P(BufferRingTest, ReceivesCycleThroughASmallWorkingSet) {
  ASSERT_TRUE(Init(1024, 4096).ok());
  EXPECT_EQ(buffers_->published(), BufferRing::kMinPublished);
  RingReceiver rx(backend_.get(), buffers_.get());
  ASSERT_TRUE(rx.ok());
  std::set<uint16_t> bids;
  for (int i = 0; i < 3000; ++i) {
    std::vector<Slice> held;
    rx.SendAndReceive(&held, &bids);
    ASSERT_EQ(held.size(), 1u) << i;
  }
  EXPECT_LE(bids.size(), BufferRing::kMinPublished + 1);
  EXPECT_EQ(buffers_->in_use(), 0u);
  // Buffers never handed out have no pages.
  size_t resident = 0;
  for (uint32_t bid = 0; bid < buffers_->count(); ++bid) {
    resident += Resident(buffers_->buffer(static_cast<uint16_t>(bid)), 4096);
  }
  EXPECT_LE(resident, BufferRing::kMinPublished + 1);
}

// Receives that are held empty the working set; the kernel answers -ENOBUFS
// and the set grows instead of starving the receiver. Once they are
// released and unused for two trims, the extra buffers' pages go back to
// the kernel and the working set shrinks again.
TEST_P(BufferRingTest, GrowsWhenEmptyAndTrimsWhenIdle) {
  ASSERT_TRUE(Init(1024, 4096).ok());
  RingReceiver rx(backend_.get(), buffers_.get());
  ASSERT_TRUE(rx.ok());
  std::vector<Slice> held;
  std::set<uint16_t> bids;
  for (int i = 0; i < 600; ++i) {
    size_t before = held.size();
    rx.SendAndReceive(&held, &bids);
    ASSERT_EQ(held.size(), before + 1) << "receive " << i << " got no buffer";
  }
  EXPECT_EQ(buffers_->in_use(), 600u);
  EXPECT_EQ(buffers_->copied(), 0u);
  EXPECT_GT(buffers_->published(), 0u);
  std::vector<const char*> used;
  for (uint16_t bid : bids) used.push_back(buffers_->buffer(bid));
  held.clear();
  EXPECT_EQ(buffers_->in_use(), 0u);
  EXPECT_GT(buffers_->spare_warm(), 0u);
  // First trim: the period saw the growth (and the releases pushed every
  // buffer through the stack), so nothing is cold yet. Afterwards nothing
  // is used: the next trims release the spare buffers and shrink the set.
  for (int i = 0; i < 40 && buffers_->wants_trim(); ++i) buffers_->Trim();
  EXPECT_FALSE(buffers_->wants_trim());
  EXPECT_EQ(buffers_->spare_warm(), 0u);
  size_t resident = 0;
  for (const char* p : used) resident += Resident(p, 4096);
  EXPECT_LE(resident, buffers_->published());
  // Still serving: receives go on from the warm set.
  for (int i = 0; i < 50; ++i) {
    rx.SendAndReceive(&held, &bids);
    held.clear();
  }
  EXPECT_EQ(buffers_->in_use(), 0u);
}

}  // namespace
}  // namespace sluice::core
