#pragma once

// The one piece of core/ that the codecs (http/, tls/) may use: a
// reference-counted view of bytes. It has no liburing in it.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

namespace sluice::core {

// The owner of the memory behind one or more Slices (a provided receive
// buffer, or a heap block). `release` runs when the last Slice is gone.
struct SliceOwner {
  void (*release)(SliceOwner*) = nullptr;
  uint32_t refs = 0;
};

// A reference-counted view of bytes. Copies share the memory; the owner is
// released (a ring buffer goes back to its ring, a heap block is freed) when
// the last view is destroyed, i.e. after the send that relays it completed.
// Held views pin memory: owners keep them only while a send or a bounded
// queue needs them (see the watermarks in stream.h). Not thread-safe: a
// Slice lives and dies on the worker that made it.
class Slice {
 public:
  Slice() = default;
  Slice(SliceOwner* owner, const char* data, size_t size)
      : owner_(owner), data_(data), size_(size) {
    if (owner_) ++owner_->refs;
  }
  Slice(const Slice& o) : Slice(o.owner_, o.data_, o.size_) {}
  Slice(Slice&& o) noexcept : owner_(o.owner_), data_(o.data_), size_(o.size_) {
    o.owner_ = nullptr;
    o.data_ = nullptr;
    o.size_ = 0;
  }
  Slice& operator=(Slice o) noexcept {
    std::swap(owner_, o.owner_);
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  ~Slice() { Release(); }

  // A Slice over a fresh heap copy of `bytes`.
  static Slice Copy(std::string_view bytes);
  // A Slice that takes over `s` (no copy of its bytes).
  static Slice FromString(std::string s);
  // A Slice over memory that outlives every user (string literals).
  static Slice Static(std::string_view bytes) { return Slice(nullptr, bytes.data(), bytes.size()); }

  const char* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::string_view view() const { return {data_, size_}; }

  // A view of [offset, offset+len) sharing the same memory.
  Slice Sub(size_t offset, size_t len) const { return Slice(owner_, data_ + offset, len); }
  // The sub-view covering `part`, which must lie inside this slice.
  Slice SubOf(std::string_view part) const {
    return Sub(static_cast<size_t>(part.data() - data_), part.size());
  }
  void RemovePrefix(size_t n) {
    data_ += n;
    size_ -= n;
  }
  // Grows this view over `next` when `next` continues it in the same
  // owner's memory (two appends to one SliceWriter block): one queue entry
  // instead of two. Returns false, changing nothing, otherwise.
  bool Extend(const Slice& next) {
    if (owner_ == nullptr || owner_ != next.owner_ || data_ + size_ != next.data_) {
      return false;
    }
    size_ += next.size_;
    return true;
  }

 private:
  void Release() {
    if (owner_ && --owner_->refs == 0) owner_->release(owner_);
    owner_ = nullptr;
  }

  SliceOwner* owner_ = nullptr;
  const char* data_ = nullptr;
  size_t size_ = 0;
};

// A heap block filled by a producer (TLS decryption) and handed out as
// Slices. Fill with `space()`/`Commit(n)`, then `Take()` the committed bytes
// as a Slice; the block is freed when the last Slice of it is gone and the
// writer dropped it.
class SliceWriter {
 public:
  explicit SliceWriter(size_t block_size = 16384) : block_size_(block_size) {}
  ~SliceWriter();
  SliceWriter(const SliceWriter&) = delete;
  SliceWriter& operator=(const SliceWriter&) = delete;

  // Writable space in the current block (allocating one when full or
  // absent); its size goes to `*len`. Untaken bytes move to a new block.
  char* Reserve(size_t* len);
  // `n` bytes (at most the reserved length) were written at Reserve().
  void Commit(size_t n) { committed_ += n; }
  // The committed, not yet taken bytes as one Slice (empty when none).
  Slice Take();
  // A copy of `bytes` (at most the block size) as one Slice: in the current
  // block when it fits, else in a new one (the old block lives on while its
  // Slices do). Not to be mixed with Reserve/Commit bytes not yet taken.
  Slice Append(std::string_view bytes);
  // Frees the current block if nothing references it (idle connections hold
  // no memory).
  void Trim();

 private:
  struct Block;
  void NewBlock();

  Block* block_ = nullptr;
  size_t block_size_;
  size_t taken_ = 0;      // bytes of block_ already handed out
  size_t committed_ = 0;  // bytes of block_ written
};

}  // namespace sluice::core
