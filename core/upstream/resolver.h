#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "core/server/config.h"

namespace sluice::core {

// The address of a backend given by DNS name: resolved off the workers'
// loops (by the Resolver's thread, with getaddrinfo), read by the workers
// when they connect. Until the name first resolves there is none (the
// backend is not used: 503); a later failure keeps the last address.
class DnsAddress {
 public:
  DnsAddress(std::string host, std::string port) : host_(std::move(host)), port_(std::move(port)) {}

  // The current address; false while the name never resolved.
  bool Get(SocketAddress* out) const;
  bool resolved() const { return resolved_.load(std::memory_order_acquire); }
  // Changes whenever the address does (idle links to the old one close).
  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }
  // Resolves now, on the caller's thread (blocking): an IPv4 address if the
  // name has one, else its first. True when the address changed.
  absl::Status Resolve(bool* changed = nullptr);
  // A worker saw a connect fail: resolve again soon (within a second).
  void RequestResolve() { requested_.store(true, std::memory_order_relaxed); }
  bool TakeRequest() { return requested_.exchange(false, std::memory_order_relaxed); }
  const std::string& host() const { return host_; }
  const std::string& port() const { return port_; }

 private:
  const std::string host_;
  const std::string port_;
  mutable std::mutex mu_;
  SocketAddress addr_;  // guarded by mu_
  std::atomic<bool> resolved_{false};
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> requested_{false};
};

// Where to connect to `b` now: its fixed address, or its name's current
// one; false while a name has not resolved.
bool CurrentAddress(const BackendConfig& b, SocketAddress* out);
// Whether `b` has an address to connect to.
inline bool HasAddress(const BackendConfig& b) { return b.dns == nullptr || b.dns->resolved(); }

// One thread for the process that re-resolves every backend given by name
// each `interval_ns` (--resolve_interval), and within a second when a
// worker asked (after a connect failure). Logs each change.
class Resolver {
 public:
  Resolver(const std::vector<BackendConfig>& backends, int64_t interval_ns);
  ~Resolver();
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  // Whether any backend is given by name (else there is nothing to run).
  bool needed() const { return !names_.empty(); }
  void Start();
  void Stop();
  // One round on the caller's thread: every name, or only those asked for.
  void ResolveAll(bool only_requested);

 private:
  void Run();

  struct Name {
    std::string label;  // the backend's name, for the log
    DnsAddress* dns;
    bool failing = false;
  };
  std::vector<Name> names_;
  const int64_t interval_ns_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace sluice::core
