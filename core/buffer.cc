#include "core/buffer.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace sluice::core {

BufferRing::~BufferRing() {
  if (br_) {
    io_uring_unregister_buf_ring(ring_, kGroupId);
    munmap(br_, ring_bytes_);
  }
  if (memory_) munmap(memory_, memory_bytes_);
}

absl::Status BufferRing::Init(io_uring* ring, uint32_t count,
                              uint32_t buffer_size) {
  ring_ = ring;
  count_ = count;
  reserve_ = std::max<uint32_t>(count / 8, 1);
  buffer_size_ = buffer_size;
  ring_bytes_ = count * sizeof(io_uring_buf);
  void* mem = mmap(nullptr, ring_bytes_, PROT_READ | PROT_WRITE,
                   MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (mem == MAP_FAILED) return absl::ResourceExhaustedError("mmap buffer ring");
  br_ = static_cast<io_uring_buf_ring*>(mem);
  io_uring_buf_ring_init(br_);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(br_);
  reg.ring_entries = count;
  reg.bgid = kGroupId;
  int ret = io_uring_register_buf_ring(ring_, &reg, 0);
  if (ret < 0) {
    munmap(br_, ring_bytes_);
    br_ = nullptr;
    return absl::UnavailableError(
        absl::StrCat("io_uring_register_buf_ring: ", strerror(-ret),
                     " (provided buffer rings need Linux 5.19 or later)"));
  }
  memory_bytes_ = static_cast<size_t>(count) * buffer_size;
  mem = mmap(nullptr, memory_bytes_, PROT_READ | PROT_WRITE,
             MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (mem == MAP_FAILED) return absl::ResourceExhaustedError("mmap buffers");
  memory_ = static_cast<char*>(mem);
  refs_.resize(count);
  const int mask = io_uring_buf_ring_mask(count);
  for (uint32_t i = 0; i < count; ++i) {
    refs_[i].release = &BufferRing::Release;
    refs_[i].ring = this;
    refs_[i].bid = static_cast<uint16_t>(i);
    io_uring_buf_ring_add(br_, memory_ + static_cast<size_t>(i) * buffer_size,
                          buffer_size, static_cast<uint16_t>(i), mask,
                          static_cast<int>(i));
  }
  io_uring_buf_ring_advance(br_, static_cast<int>(count));
  return absl::OkStatus();
}

Slice BufferRing::Take(uint16_t bid, size_t len) {
  ++in_use_;
  char* bytes = memory_ + static_cast<size_t>(bid) * buffer_size_;
  if (count_ - in_use_ < reserve_) {
    ++copied_;
    Slice copy = Slice::Copy(std::string_view(bytes, len));
    Recycle(bid);
    return copy;
  }
  BufferRef* ref = &refs_[bid];
  // refs is 0 here; the Slice constructor takes the first reference.
  return Slice(ref, bytes, len);
}

void BufferRing::Release(SliceOwner* owner) {
  auto* ref = static_cast<BufferRef*>(owner);
  ref->ring->Recycle(ref->bid);
}

void BufferRing::Recycle(uint16_t bid) {
  --in_use_;
  ++recycled_;
  io_uring_buf_ring_add(br_, memory_ + static_cast<size_t>(bid) * buffer_size_,
                        buffer_size_, bid, io_uring_buf_ring_mask(count_), 0);
  io_uring_buf_ring_advance(br_, 1);
}

}  // namespace sluice::core
