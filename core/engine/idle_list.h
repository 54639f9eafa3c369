#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

namespace sluice::core {

// The idle half of a keepalive pool: at most `capacity` entries, handed out
// newest first. LIFO keeps the warmest link busy and lets surplus links age
// out on their idle timer instead of spreading requests over all of them.
// Pure bookkeeping (no sockets), so the pool's policy is unit-testable.
template <typename T>
class IdleList {
 public:
  explicit IdleList(size_t capacity) : capacity_(capacity) {}

  // Keeps `t` if there is room; false means the caller must close it.
  bool Offer(T* t) {
    if (items_.size() >= capacity_) return false;
    items_.push_back(t);
    return true;
  }
  // The most recently offered entry, or nullptr.
  T* TakeNewest() {
    if (items_.empty()) return nullptr;
    T* t = items_.back();
    items_.pop_back();
    return t;
  }
  // Removes `t` (closed by the peer while idle); false if absent.
  bool Remove(T* t) {
    auto it = std::find(items_.begin(), items_.end(), t);
    if (it == items_.end()) return false;
    items_.erase(it);
    return true;
  }
  std::vector<T*> TakeAll() {
    std::vector<T*> all;
    all.swap(items_);
    return all;
  }
  size_t size() const { return items_.size(); }
  size_t capacity() const { return capacity_; }
  // A new capacity; entries beyond it stay until taken or removed, but no
  // more are offered room.
  void set_capacity(size_t capacity) { capacity_ = capacity; }

 private:
  size_t capacity_;
  std::vector<T*> items_;
};

}  // namespace sluice::core
