#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace sluice::core {

// How many idle keepalive links a worker keeps to one upstream.
//
// nginx keeps a fixed number (`keepalive N`, --upstream_keepalive=N here).
// A fixed number is wrong both ways: below the concurrency a worker sees,
// every response beyond N closes its link and the next request opens a new
// one (at 640 requests in flight and N=32, close to one connect per
// request); far above it, idle sockets sit on Ollama for nothing. Adaptive
// (the default) keeps as many as the most links in use at once during the
// last `window_ns` (--upstream_idle_timeout), up to `max_idle`
// (--upstream_max_idle): a steady load reuses its links forever, and once
// the load falls the surplus is closed as it comes back and ages out.
//
// The peak is the larger of two half-window buckets, so it forgets a burst
// between half a window and a whole window after it ended. Pure
// bookkeeping, unit-tested without sockets.
class IdleTarget {
 public:
  // `fixed` >= 0: nginx's fixed size; < 0: adaptive.
  IdleTarget(int fixed, size_t max_idle, int64_t window_ns)
      : fixed_(fixed), max_idle_(max_idle), half_window_ns_(std::max<int64_t>(1, window_ns / 2)) {}

  // Links now in use (borrowed or connecting) after an acquire.
  void NoteInUse(size_t in_use, int64_t now_ns) {
    Rotate(now_ns);
    current_ = std::max(current_, in_use);
  }

  // Idle links to keep now.
  size_t Capacity(int64_t now_ns) {
    if (fixed_ >= 0) return static_cast<size_t>(fixed_);
    Rotate(now_ns);
    return std::min(max_idle_, std::max(current_, previous_));
  }

 private:
  void Rotate(int64_t now_ns) {
    if (now_ns - bucket_start_ns_ < half_window_ns_) return;
    // One bucket over: the current one becomes the previous; two or more:
    // both are stale.
    previous_ = now_ns - bucket_start_ns_ < 2 * half_window_ns_ ? current_ : 0;
    current_ = 0;
    bucket_start_ns_ = now_ns;
  }

  const int fixed_;
  const size_t max_idle_;
  const int64_t half_window_ns_;
  int64_t bucket_start_ns_ = 0;
  size_t current_ = 0;
  size_t previous_ = 0;
};

}  // namespace sluice::core
