#pragma once

#include <cstdint>
#include <new>
#include <type_traits>

namespace sluice::core {

class TimerList;

// A one-shot deadline owned by a connection. Arm it on a TimerList; it fires
// once unless re-armed or disarmed first. Destroying it disarms it.
//
// The callback is a lambda that captures one pointer (`[this]`), kept
// inline: a connection has several timers, so each is 48 bytes rather than
// the 64 a std::function would make it.
class Timer {
 public:
  template <typename F>
  explicit Timer(F on_fire) {
    static_assert(sizeof(F) <= sizeof(callback_) && alignof(F) <= alignof(void*) &&
                      std::is_trivially_copyable_v<F> && std::is_trivially_destructible_v<F>,
                  "a Timer's callback captures one pointer, like [this]");
    new (callback_) F(on_fire);
    fire_ = [](const void* callback) {
      // A copy: the callback may destroy this timer's owner.
      F f = *static_cast<const F*>(callback);
      f();
    };
  }
  ~Timer() { Disarm(); }
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

  void Disarm();
  bool armed() const { return list_ != nullptr; }

 private:
  friend class TimerList;
  void Fire() const { fire_(callback_); }

  alignas(void*) unsigned char callback_[sizeof(void*)];
  void (*fire_)(const void*);
  TimerList* list_ = nullptr;
  Timer* prev_ = nullptr;
  Timer* next_ = nullptr;
  int64_t deadline_ns_ = 0;
};

// Timers that all share one duration. Because every timer gets the same
// timeout, arming appends to the tail and the list stays sorted by
// deadline: arm, re-arm and disarm are O(1), expiry pops from the head.
// A worker keeps one list per configured timeout (read, send, keepalive…).
class TimerList {
 public:
  explicit TimerList(int64_t duration_ns) : duration_ns_(duration_ns) {}
  ~TimerList();

  // (Re)arms `t` to fire at now + duration.
  void Arm(Timer* t, int64_t now_ns);
  // (Re)arms `t` to fire at `deadline_ns`, for a list whose timers have
  // different durations (delayed requests): inserted in order, scanning from
  // the tail, so O(n) in the timers that fire later. Do not mix with Arm on
  // one list unless the deadlines keep the order.
  void ArmAt(Timer* t, int64_t deadline_ns);
  // Fires every timer whose deadline is <= now. A callback may arm or
  // disarm any timer, and may destroy its owner.
  void Expire(int64_t now_ns);
  // Deadline of the earliest timer, or -1 if none is armed.
  int64_t next_deadline() const { return head_ ? head_->deadline_ns_ : -1; }
  int64_t duration_ns() const { return duration_ns_; }

 private:
  friend class Timer;
  void Unlink(Timer* t);

  int64_t duration_ns_;
  Timer* head_ = nullptr;
  Timer* tail_ = nullptr;
};

}  // namespace sluice::core
