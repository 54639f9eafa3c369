#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstddef>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "core/engine/slice.h"

namespace sluice::core {

// One queued piece of a Stream's output: a Slice held until sent, a static
// view, a small inline copy or an owned string.
struct SendPiece {
  Slice slice;
  std::string owned;
  char small[24];
  const char* ptr = nullptr;
  size_t len = 0;
};

// A deque, because `ptr` may point into the piece itself (small, owned's
// inline buffer): pieces must not move once queued.
using SendPieces = std::deque<SendPiece>;

// What one sendmsg in flight needs: the msghdr and its gathered iovecs.
struct SendScratch {
  static constexpr int kMaxIov = 64;
  msghdr msg{};
  iovec iov[kMaxIov];
};

// Per worker: the piece queues and send scratch of streams that have
// nothing to send wait here for the next stream that does. An idle
// connection then holds neither (a deque keeps a 512-byte node even when
// empty, and the iovec array is 1 KiB): about 1.6 KB less per idle
// connection, with no allocation per send once the pool is warm. At most
// kKeep of each are kept.
class SendPool {
 public:
  static constexpr size_t kKeep = 256;

  std::unique_ptr<SendPieces> TakePieces() {
    if (pieces_.empty()) return std::make_unique<SendPieces>();
    std::unique_ptr<SendPieces> p = std::move(pieces_.back());
    pieces_.pop_back();
    return p;
  }
  // `p` must be empty.
  void GivePieces(std::unique_ptr<SendPieces> p) {
    if (pieces_.size() < kKeep) pieces_.push_back(std::move(p));
  }
  std::unique_ptr<SendScratch> TakeScratch() {
    if (scratch_.empty()) return std::make_unique<SendScratch>();
    std::unique_ptr<SendScratch> s = std::move(scratch_.back());
    scratch_.pop_back();
    return s;
  }
  void GiveScratch(std::unique_ptr<SendScratch> s) {
    if (scratch_.size() < kKeep) scratch_.push_back(std::move(s));
  }
  size_t pooled() const { return pieces_.size() + scratch_.size(); }

 private:
  std::vector<std::unique_ptr<SendPieces>> pieces_;
  std::vector<std::unique_ptr<SendScratch>> scratch_;
};

}  // namespace sluice::core
