#include "http/h2_inbound_guard.h"

#include <algorithm>
#include <cstring>

namespace sluice::http {

namespace {

constexpr uint8_t kTypeHeaders = 0x1;
constexpr uint8_t kTypePriority = 0x2;
constexpr uint8_t kTypePushPromise = 0x5;
constexpr uint8_t kTypeContinuation = 0x9;
constexpr uint8_t kFlagEndHeaders = 0x4;
constexpr uint8_t kFlagPadded = 0x8;
constexpr uint8_t kFlagPriority = 0x20;

int32_t Read31(const uint8_t* p) {
  return static_cast<int32_t>(
      (uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | uint32_t{p[3]}) &
      0x7fffffff);
}

}  // namespace

size_t H2InboundGuard::Scan(const uint8_t* p, size_t n, Frame* frame, bool* ready) {
  *ready = false;
  size_t i = 0;
  while (i < n) {
    if (preface_left_ > 0) {
      const size_t k = std::min(n - i, preface_left_);
      preface_left_ -= k;
      i += k;
      continue;
    }
    if (prefix_need_ > 0) {
      const size_t k = std::min(n - i, prefix_need_ - prefix_len_);
      std::memcpy(prefix_ + prefix_len_, p + i, k);
      prefix_len_ += k;
      payload_left_ -= static_cast<uint32_t>(k);
      i += k;
      if (prefix_len_ < prefix_need_) continue;
      pending_.has_dependency = true;
      pending_.dependency = Read31(prefix_ + dependency_at_);
      prefix_need_ = 0;
      prefix_len_ = 0;
      *frame = pending_;
      *ready = true;
      return i;
    }
    if (payload_left_ > 0) {
      const size_t k = std::min<size_t>(n - i, payload_left_);
      payload_left_ -= static_cast<uint32_t>(k);
      i += k;
      continue;
    }
    header_[header_len_++] = p[i++];
    if (header_len_ < sizeof(header_)) continue;
    header_len_ = 0;
    Frame f;
    f.length = uint32_t{header_[0]} << 16 | uint32_t{header_[1]} << 8 | uint32_t{header_[2]};
    f.type = header_[3];
    f.flags = header_[4];
    f.stream_id = Read31(header_ + 5);
    f.in_header_block = in_header_block_;
    payload_left_ = f.length;
    if (f.type == kTypeHeaders || f.type == kTypePushPromise) {
      in_header_block_ = (f.flags & kFlagEndHeaders) == 0;
    } else if (f.type == kTypeContinuation && (f.flags & kFlagEndHeaders) != 0) {
      in_header_block_ = false;
    }
    // Where the dependency lies (RFC 9113 6.2, 6.3): after the pad length
    // when PADDED, followed by the weight byte. Frames too short for it are
    // nghttp2's (FRAME_SIZE_ERROR).
    size_t need = 0;
    size_t at = 0;
    if (f.type == kTypePriority && f.length == 5) {
      need = 4;
    } else if (f.type == kTypeHeaders && (f.flags & kFlagPriority) != 0) {
      at = (f.flags & kFlagPadded) != 0 ? 1 : 0;
      if (f.length >= at + 5) need = at + 4;
    }
    if (need > 0) {
      pending_ = f;
      prefix_need_ = need;
      prefix_len_ = 0;
      dependency_at_ = at;
      continue;
    }
    *frame = f;
    *ready = true;
    return i;
  }
  return i;
}

void H2InboundGuard::NoteNewStream(int32_t stream_id) {
  const int32_t next = highest_ == 0 ? 1 : highest_ + 2;
  if (stream_id > next) {
    if (skipped_.size() == kSkippedRanges) skipped_.erase(skipped_.begin());
    skipped_.emplace_back(next, stream_id - 2);
  }
  highest_ = stream_id;
}

bool H2InboundGuard::WasSkipped(int32_t stream_id) const {
  return std::any_of(skipped_.begin(), skipped_.end(),
                     [&](const auto& r) { return stream_id >= r.first && stream_id <= r.second; });
}

void H2InboundGuard::NoteReset(int32_t stream_id) {
  if (RecentlyReset(stream_id)) return;
  if (resets_.size() < kRecentResets) {
    resets_.push_back(stream_id);
    return;
  }
  resets_[resets_next_] = stream_id;
  resets_next_ = (resets_next_ + 1) % kRecentResets;
}

bool H2InboundGuard::RecentlyReset(int32_t stream_id) const {
  return std::find(resets_.begin(), resets_.end(), stream_id) != resets_.end();
}

}  // namespace sluice::http
