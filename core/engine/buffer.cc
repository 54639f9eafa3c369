#include "core/engine/buffer.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace sluice::core {

BufferRing::~BufferRing() {
  // The kernel must stop filling buffers before their memory goes.
  provider_.reset();
  if (memory_) munmap(memory_, memory_bytes_);
}

absl::Status BufferRing::Init(std::unique_ptr<BufferProvider> provider, uint32_t count,
                              uint32_t buffer_size) {
  provider_ = std::move(provider);
  count_ = count;
  reserve_ = std::max<uint32_t>(count / 8, 1);
  buffer_size_ = buffer_size;
  memory_bytes_ = static_cast<size_t>(count) * buffer_size;
  void* mem =
      mmap(nullptr, memory_bytes_, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (mem == MAP_FAILED) return absl::ResourceExhaustedError("mmap buffers");
  memory_ = static_cast<char*>(mem);
  refs_.resize(count);
  for (uint32_t i = 0; i < count; ++i) {
    refs_[i].release = &BufferRing::Release;
    refs_[i].ring = this;
    refs_[i].bid = static_cast<uint16_t>(i);
  }
  min_target_ = std::min(count, kMinPublished);
  target_ = min_target_;
  // Lowest ids on top of the stack, so they go out first; none has pages
  // yet.
  spare_.reserve(count);
  for (uint32_t i = count; i-- > 0;) spare_.push_back(static_cast<uint16_t>(i));
  spare_released_ = spare_.size();
  TopUp();
  spare_low_ = spare_.size();
  return absl::OkStatus();
}

void BufferRing::Publish(uint16_t bid) {
  provider_->Provide(bid, buffer(bid), buffer_size_);
  ++published_;
  ++recycled_;
}

void BufferRing::TopUp() {
  while (published_ < target_ && !spare_.empty()) {
    uint16_t bid = spare_.back();
    spare_.pop_back();
    Publish(bid);
  }
  spare_released_ = std::min(spare_released_, spare_.size());
  spare_low_ = std::min(spare_low_, spare_.size());
}

void BufferRing::OnEmpty() {
  ran_empty_ = true;
  // One empty ring seen by several receives of the same turn grows the set
  // once: only after the kernel took half of it again.
  if (spare_.empty() || takes_since_growth_ < target_ / 2) return;
  target_ = std::min(count_, target_ * 2);
  takes_since_growth_ = 0;
  TopUp();
}

bool BufferRing::Trim() {
  if (!ran_empty_ && target_ > min_target_) {
    target_ = std::max(min_target_, target_ - target_ / 4);
  }
  ran_empty_ = false;
  // The bottom spare_low_ entries were not touched during the period. At
  // most kReleasePerTrim of them per call: each is a madvise, and a turn
  // that released thousands would delay every connection of the worker;
  // the rest go on the next calls.
  size_t cold = std::min(spare_low_, spare_.size());
  cold = std::min(cold, spare_released_ + kReleasePerTrim);
  for (size_t i = spare_released_; i < cold; ++i) {
    madvise(buffer(spare_[i]), buffer_size_, MADV_DONTNEED);
  }
  spare_released_ = std::max(spare_released_, cold);
  spare_low_ = spare_.size();
  return wants_trim();
}

Slice BufferRing::Take(uint16_t bid, size_t len, BufferAccount* account) {
  ++in_use_;
  if (published_ > 0) --published_;
  ++takes_since_growth_;
  if (published_ < target_ / 2) TopUp();
  char* bytes = buffer(bid);
  if (count_ - in_use_ < reserve_) {
    ++copied_;
    pressure_ = true;
    Slice copy = Slice::Copy(std::string_view(bytes, len));
    Recycle(bid);
    return copy;
  }
  BufferRef* ref = &refs_[bid];
  ref->account = account;
  if (account) ++account->held;
  // refs is 0 here; the Slice constructor takes the first reference.
  return Slice(ref, bytes, len);
}

void BufferRing::Release(SliceOwner* owner) {
  auto* ref = static_cast<BufferRef*>(owner);
  if (BufferAccount* a = ref->account) {
    ref->account = nullptr;
    if (--a->held == 0 && a->orphaned) delete a;
  }
  ref->ring->Recycle(ref->bid);
}

void BufferRing::Recycle(uint16_t bid) {
  --in_use_;
  if (published_ < target_) {
    Publish(bid);
  } else {
    spare_.push_back(bid);
  }
}

}  // namespace sluice::core
