#include "core/engine/slice.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace sluice::core {

namespace {

struct HeapOwner : SliceOwner {
  char* bytes() { return reinterpret_cast<char*>(this + 1); }
};

void FreeHeap(SliceOwner* owner) {
  static_cast<HeapOwner*>(owner)->~HeapOwner();
  std::free(owner);
}

HeapOwner* NewHeap(size_t size) {
  void* mem = std::malloc(sizeof(HeapOwner) + size);
  if (mem == nullptr) std::abort();
  auto* owner = new (mem) HeapOwner;
  owner->release = &FreeHeap;
  return owner;
}

}  // namespace

Slice Slice::Copy(std::string_view bytes) {
  if (bytes.empty()) return Slice();
  HeapOwner* owner = NewHeap(bytes.size());
  std::memcpy(owner->bytes(), bytes.data(), bytes.size());
  return Slice(owner, owner->bytes(), bytes.size());
}

namespace {
struct StringOwner : SliceOwner {
  std::string bytes;
};
void FreeString(SliceOwner* owner) { delete static_cast<StringOwner*>(owner); }
}  // namespace

Slice Slice::FromString(std::string s) {
  if (s.empty()) return Slice();
  auto* owner = new StringOwner;
  owner->release = &FreeString;
  owner->bytes = std::move(s);
  return Slice(owner, owner->bytes.data(), owner->bytes.size());
}

struct SliceWriter::Block : HeapOwner {};

SliceWriter::~SliceWriter() {
  if (block_ && --block_->refs == 0) FreeHeap(block_);
}

void SliceWriter::NewBlock() {
  if (block_ && --block_->refs == 0) FreeHeap(block_);
  block_ = static_cast<Block*>(NewHeap(block_size_));
  block_->refs = 1;  // the writer's own reference
  taken_ = 0;
  committed_ = 0;
}

char* SliceWriter::Reserve(size_t* len) {
  if (block_ == nullptr || committed_ == block_size_) {
    // Keep untaken bytes: move them to the new block.
    Block* old = block_;
    size_t keep = committed_ - taken_;
    if (old) ++old->refs;
    NewBlock();
    if (old) {
      std::memcpy(block_->bytes(), old->bytes() + (block_size_ - keep), keep);
      committed_ = keep;
      if (--old->refs == 0) FreeHeap(old);
    }
  }
  *len = block_size_ - committed_;
  return block_->bytes() + committed_;
}

Slice SliceWriter::Take() {
  if (block_ == nullptr || committed_ == taken_) return Slice();
  Slice s(block_, block_->bytes() + taken_, committed_ - taken_);
  taken_ = committed_;
  return s;
}

Slice SliceWriter::Append(std::string_view bytes) {
  if (bytes.empty()) return Slice();
  if (block_ == nullptr || block_size_ - committed_ < bytes.size()) NewBlock();
  std::memcpy(block_->bytes() + committed_, bytes.data(), bytes.size());
  committed_ += bytes.size();
  return Take();
}

void SliceWriter::Trim() {
  if (block_ && committed_ == taken_) {
    if (--block_->refs == 0) FreeHeap(block_);
    block_ = nullptr;
    taken_ = committed_ = 0;
  }
}

}  // namespace sluice::core
