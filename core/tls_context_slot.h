#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

#include "tls/tls_context.h"

namespace sluice::core {

// The TLS context that new connections use, swapped by the main thread on
// SIGHUP. Workers compare generation() (one relaxed atomic load) per
// accepted TLS connection and take the lock only when it changed, so the
// request path never waits on it. Connections keep the context they started
// with.
class TlsContextSlot {
 public:
  void Set(std::shared_ptr<const tls::TlsContext> ctx) {
    std::lock_guard<std::mutex> lock(mu_);
    ctx_ = std::move(ctx);
    generation_.fetch_add(1, std::memory_order_release);
  }
  std::shared_ptr<const tls::TlsContext> Get() const {
    std::lock_guard<std::mutex> lock(mu_);
    return ctx_;
  }
  uint64_t generation() const {
    return generation_.load(std::memory_order_acquire);
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const tls::TlsContext> ctx_;
  std::atomic<uint64_t> generation_{0};
};

}  // namespace sluice::core
