#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

#include "policy/policy.h"
#include "tls/tls_context.h"

namespace sluice::core {

// An immutable snapshot that the main thread replaces on SIGHUP (the TLS
// context, the policy). Workers compare generation() (one acquire load) and
// take the lock only when it changed, so the request path never waits on
// it. Users keep the snapshot they started with (shared_ptr).
template <typename T>
class SnapshotSlot {
 public:
  void Set(std::shared_ptr<const T> value) {
    std::lock_guard<std::mutex> lock(mu_);
    value_ = std::move(value);
    generation_.fetch_add(1, std::memory_order_release);
  }
  std::shared_ptr<const T> Get() const {
    std::lock_guard<std::mutex> lock(mu_);
    return value_;
  }
  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const T> value_;
  std::atomic<uint64_t> generation_{0};
};

// The TLS context for new connections; connections keep theirs.
class TlsContextSlot : public SnapshotSlot<tls::TlsContext> {};

// The access policy for new requests; requests keep theirs.
class PolicySlot : public SnapshotSlot<policy::Policy> {};

}  // namespace sluice::core
