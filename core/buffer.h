#pragma once

#include <liburing.h>

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace sluice::core {

class BufferRing;

// Reference count of one provided buffer. When it drops to zero the buffer
// goes back to its ring, so the kernel can fill it again.
struct BufferRef {
  BufferRing* ring;
  uint32_t refs;
  uint16_t bid;
};

// A reference-counted view of received bytes inside one provided buffer.
// Copies share the buffer; the buffer returns to its ring when the last view
// is destroyed, i.e. after the send that relays it has completed. Held views
// pin ring memory: owners keep them only while a send or a bounded queue
// needs them (see the watermarks in stream.h).
class Slice {
 public:
  Slice() = default;
  Slice(BufferRef* ref, const char* data, size_t size)
      : ref_(ref), data_(data), size_(size) {
    if (ref_) ++ref_->refs;
  }
  Slice(const Slice& o) : Slice(o.ref_, o.data_, o.size_) {}
  Slice(Slice&& o) noexcept : ref_(o.ref_), data_(o.data_), size_(o.size_) {
    o.ref_ = nullptr;
    o.data_ = nullptr;
    o.size_ = 0;
  }
  Slice& operator=(Slice o) noexcept {
    std::swap(ref_, o.ref_);
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  ~Slice() { Release(); }

  const char* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::string_view view() const { return {data_, size_}; }

  // A view of [offset, offset+len) sharing the same buffer.
  Slice Sub(size_t offset, size_t len) const {
    return Slice(ref_, data_ + offset, len);
  }
  // The sub-view covering `part`, which must lie inside this slice.
  Slice SubOf(std::string_view part) const {
    return Sub(static_cast<size_t>(part.data() - data_), part.size());
  }
  void RemovePrefix(size_t n) {
    data_ += n;
    size_ -= n;
  }

 private:
  void Release();

  BufferRef* ref_ = nullptr;
  const char* data_ = nullptr;
  size_t size_ = 0;
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

  // Wraps buffer `bid`, just filled with `len` bytes, in a Slice.
  Slice Take(uint16_t bid, size_t len);

  // Buffers currently lent out (held by slices or not yet recycled).
  uint32_t in_use() const { return in_use_; }
  uint32_t count() const { return count_; }
  // Bumped every time a buffer comes back; lets starved receivers re-arm.
  uint64_t recycled() const { return recycled_; }

 private:
  friend class Slice;
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
  std::vector<BufferRef> refs_;
};

inline void Slice::Release() {
  if (ref_ && --ref_->refs == 0) ref_->ring->Recycle(ref_->bid);
  ref_ = nullptr;
}

}  // namespace sluice::core
