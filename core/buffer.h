#pragma once

#include <liburing.h>

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "core/slice.h"

namespace sluice::core {

class BufferRing;

// One provided buffer as a Slice owner: when its last Slice is gone it goes
// back to its ring, so the kernel can fill it again.
struct BufferRef : SliceOwner {
  BufferRing* ring = nullptr;
  uint16_t bid = 0;
};

// A ring of provided buffers registered with io_uring (liburing 2.3 has no
// io_uring_setup_buf_ring helper, so the ring memory is mapped here and
// registered with io_uring_register_buf_ring). Multishot receives pick a
// buffer per completion; the kernel reports -ENOBUFS when none is left.
class BufferRing {
 public:
  static constexpr uint16_t kGroupId = 1;

  BufferRing() = default;
  ~BufferRing();
  BufferRing(const BufferRing&) = delete;
  BufferRing& operator=(const BufferRing&) = delete;

  // `count` must be a power of two.
  absl::Status Init(io_uring* ring, uint32_t count, uint32_t buffer_size);

  // Wraps buffer `bid`, just filled with `len` bytes, in a Slice. When the
  // ring runs low (fewer than count/8 buffers left to the kernel), the
  // bytes are copied into an ordinary heap block of their own size and the
  // buffer goes straight back: whatever holders keep (a stream whose client
  // never opens its window, a slow reader), every socket of the worker can
  // still be read, its FIN and RST included. Memory is then bounded by the
  // holders' byte limits instead of by the ring.
  Slice Take(uint16_t bid, size_t len);

  // Buffers currently lent out (held by slices or not yet recycled).
  uint32_t in_use() const { return in_use_; }
  uint32_t count() const { return count_; }
  // Receives copied out of the ring because it ran low (see Take).
  uint64_t copied() const { return copied_; }
  // Bumped every time a buffer comes back; lets starved receivers re-arm.
  uint64_t recycled() const { return recycled_; }

 private:
  static void Release(SliceOwner* owner);
  void Recycle(uint16_t bid);

  io_uring* ring_ = nullptr;
  io_uring_buf_ring* br_ = nullptr;
  char* memory_ = nullptr;
  size_t ring_bytes_ = 0;
  size_t memory_bytes_ = 0;
  uint32_t count_ = 0;
  uint32_t buffer_size_ = 0;
  uint32_t in_use_ = 0;
  uint64_t recycled_ = 0;
  uint64_t copied_ = 0;
  uint32_t reserve_ = 0;  // buffers kept for the kernel: below, Take copies
  std::vector<BufferRef> refs_;
};

}  // namespace sluice::core
