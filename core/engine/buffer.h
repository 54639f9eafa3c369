#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "core/engine/backend.h"
#include "core/engine/slice.h"

namespace sluice::core {

class BufferRing;
class Stream;

// The ring buffers held on behalf of one client connection: those its own
// socket received and those the upstream links serving it received. When
// the ring runs low, the loop pauses the upstream links of the accounts
// that hold the most (Loop::RelievePressure), so one connection whose
// client does not read cannot take the ring from the others. Made and
// released through the loop (Loop::NewAccount, ReleaseAccount): an account
// outlives its owner while buffers it lent are still held somewhere.
struct BufferAccount {
  uint32_t held = 0;               // ring buffers lent and not yet back
  bool orphaned = false;           // the owner released it; freed at held == 0
  std::vector<Stream*> upstreams;  // upstream links serving the owner now
};

// One provided buffer as a Slice owner: when its last Slice is gone it goes
// back to its ring, so the kernel can fill it again.
struct BufferRef : SliceOwner {
  BufferRing* ring = nullptr;
  uint16_t bid = 0;
  BufferAccount* account = nullptr;  // charged while the buffer is lent
};

// The receive buffers of one worker, handed for filling to a BufferProvider
// (with io_uring: the provided-buffer ring registered with the kernel).
// Multishot receives pick a buffer per completion; they end with -ENOBUFS
// when none is left.
//
// Memory: the kernel takes ring entries in order, so a ring that held all
// `count` buffers would cycle through every one of them and keep them all
// resident (4096 x 16 KiB per worker once a few thousand receives went by,
// even on an idle server). Only a working set is handed to the kernel
// (`published`, starting at kMinPublished and doubled whenever a receive
// finds the ring empty while buffers are spare); buffers coming back beyond
// it wait on a stack, the most recently used on top, so the same few stay
// warm. Trim, called about once a second, shrinks the working set again
// and gives the pages of buffers that stayed at the bottom of the stack for
// a whole period back to the kernel (MADV_DONTNEED, at most kReleasePerTrim
// a call): after a burst the worker returns to a small resident set.
class BufferRing {
 public:
  // Working set handed to the kernel at start and after Trim's shrinking.
  static constexpr uint32_t kMinPublished = 128;
  // Buffers whose pages one Trim gives back at most.
  static constexpr size_t kReleasePerTrim = 64;

  BufferRing() = default;
  ~BufferRing();
  BufferRing(const BufferRing&) = delete;
  BufferRing& operator=(const BufferRing&) = delete;

  // `count` must be a power of two. Buffers are handed to `provider`,
  // which the ring owns and destroys first.
  absl::Status Init(std::unique_ptr<BufferProvider> provider, uint32_t count, uint32_t buffer_size);

  // Wraps buffer `bid`, just filled with `len` bytes, in a Slice. When the
  // ring runs low (fewer than count/8 buffers left to the kernel), the
  // bytes are copied into an ordinary heap block of their own size and the
  // buffer goes straight back: whatever holders keep (a stream whose client
  // never opens its window, a slow reader), every socket of the worker can
  // still be read, its FIN and RST included. Memory is then bounded by the
  // holders' byte limits instead of by the ring.
  // `account` (may be null) is charged for the buffer until it comes back.
  Slice Take(uint16_t bid, size_t len, BufferAccount* account = nullptr);

  // Whether the ring ran low (Take had to copy) since the last call.
  bool TakePressure() {
    bool p = pressure_;
    pressure_ = false;
    return p;
  }

  // A receive ended with -ENOBUFS: the kernel found no buffer. If buffers
  // are spare the working set was too small for the load: it grows.
  void OnEmpty();

  // Once a second or so: shrinks the working set unless the ring ran empty
  // since the last call, and releases the pages of spare buffers unused
  // since the last call. Returns whether another call could still do
  // something (the worker stops calling while idle and fully trimmed).
  bool Trim();
  bool wants_trim() const { return target_ > min_target_ || spare_.size() > spare_released_; }

  // Buffers currently lent out (held by slices or not yet recycled).
  uint32_t in_use() const { return in_use_; }
  // Buffers handed to the kernel and not yet reported filled.
  uint32_t published() const { return published_; }
  // Spare buffers whose pages may be resident (not released by Trim).
  uint32_t spare_warm() const { return static_cast<uint32_t>(spare_.size() - spare_released_); }
  char* buffer(uint16_t bid) const { return memory_ + static_cast<size_t>(bid) * buffer_size_; }
  uint32_t count() const { return count_; }
  // Receives copied out of the ring because it ran low (see Take).
  uint64_t copied() const { return copied_; }
  // Bumped every time a buffer is handed to the kernel; lets starved
  // receivers re-arm.
  uint64_t recycled() const { return recycled_; }

 private:
  static void Release(SliceOwner* owner);
  void Recycle(uint16_t bid);
  void Publish(uint16_t bid);
  // Hands spare buffers to the kernel, most recently used first, until
  // `target_` are published.
  void TopUp();

  std::unique_ptr<BufferProvider> provider_;
  char* memory_ = nullptr;
  size_t memory_bytes_ = 0;
  uint32_t count_ = 0;
  uint32_t buffer_size_ = 0;
  uint32_t in_use_ = 0;
  uint64_t recycled_ = 0;
  uint64_t copied_ = 0;
  uint32_t reserve_ = 0;  // buffers kept for the kernel: below, Take copies
  uint32_t published_ = 0;
  uint32_t target_ = 0;      // working set to keep published
  uint32_t min_target_ = 0;  // min(count, kMinPublished)
  uint32_t takes_since_growth_ = 0;
  bool ran_empty_ = false;  // OnEmpty since the last Trim
  bool pressure_ = false;   // Take copied since TakePressure
  // Buffers neither lent nor published; the back is the most recent.
  std::vector<uint16_t> spare_;
  // spare_[0, spare_released_) have no resident pages.
  size_t spare_released_ = 0;
  // Smallest spare_.size() since the last Trim: the entries below it were
  // not used during the whole period.
  size_t spare_low_ = 0;
  std::vector<BufferRef> refs_;
};

}  // namespace sluice::core
