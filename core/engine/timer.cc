#include "core/engine/timer.h"

namespace sluice::core {

void Timer::Disarm() {
  if (list_) list_->Unlink(this);
}

TimerList::~TimerList() {
  while (head_) Unlink(head_);
}

void TimerList::Unlink(Timer* t) {
  if (t->prev_)
    t->prev_->next_ = t->next_;
  else
    head_ = t->next_;
  if (t->next_)
    t->next_->prev_ = t->prev_;
  else
    tail_ = t->prev_;
  t->prev_ = t->next_ = nullptr;
  t->list_ = nullptr;
}

void TimerList::Arm(Timer* t, int64_t now_ns) {
  if (t->list_) t->list_->Unlink(t);
  t->deadline_ns_ = now_ns + duration_ns_;
  t->list_ = this;
  t->prev_ = tail_;
  t->next_ = nullptr;
  if (tail_)
    tail_->next_ = t;
  else
    head_ = t;
  tail_ = t;
}

void TimerList::ArmAt(Timer* t, int64_t deadline_ns) {
  if (t->list_) t->list_->Unlink(t);
  t->deadline_ns_ = deadline_ns;
  t->list_ = this;
  Timer* after = tail_;
  while (after && after->deadline_ns_ > deadline_ns) after = after->prev_;
  t->prev_ = after;
  t->next_ = after ? after->next_ : head_;
  if (t->next_)
    t->next_->prev_ = t;
  else
    tail_ = t;
  if (after)
    after->next_ = t;
  else
    head_ = t;
}

void TimerList::Expire(int64_t now_ns) {
  while (head_ && head_->deadline_ns_ <= now_ns) {
    Timer* t = head_;
    Unlink(t);
    t->Fire();
  }
}

}  // namespace sluice::core
