#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "core/server/config.h"

namespace sluice::core {

// The addresses of a name given in --upstream, one per backend slot (the
// name's max_addresses=N, see ExpandNames): resolved off the workers'
// loops (by the Resolver's thread, with getaddrinfo), read by the workers
// when they connect. Every address, IPv4 and IPv6, is a backend of its
// own. An address keeps its slot for as long as the name resolves to it;
// a new one takes the lowest free slot (AssignSlots). Until the name first
// resolves there is none (503); a failed lookup keeps the last addresses.
class DnsName {
 public:
  DnsName(std::string host, std::string port, size_t slots = 1);

  // Slot `slot`'s address; false while it has none.
  bool Get(size_t slot, SocketAddress* out) const;
  bool has(size_t slot) const { return slots_[slot].has.load(std::memory_order_acquire); }
  // Changes whenever the slot's address does (idle links to the old one
  // close, and what was known of the old backend is forgotten).
  uint64_t generation(size_t slot) const {
    return slots_[slot].generation.load(std::memory_order_acquire);
  }
  // Slots with an address.
  size_t count() const { return count_.load(std::memory_order_acquire); }
  size_t slots() const { return n_; }
  bool resolved() const { return count() > 0; }
  // Addresses the last lookup found beyond the slots (not used).
  size_t left_out() const { return left_out_.load(std::memory_order_acquire); }

  // What one lookup changed: the slots that lost their address (went) and
  // those that got one (came; a slot can be in both), and how many
  // addresses found no free slot.
  struct Change {
    std::vector<std::pair<size_t, SocketAddress>> went;
    std::vector<std::pair<size_t, SocketAddress>> came;
    size_t left_out = 0;
    bool empty() const { return went.empty() && came.empty(); }
  };
  // Resolves now, on the caller's thread (blocking), and assigns the
  // addresses to the slots (Apply).
  absl::Status Resolve(Change* change = nullptr);
  // Assigns a lookup's addresses (any order, duplicates allowed).
  void Apply(std::vector<SocketAddress> addresses, Change* change = nullptr);
  // A worker saw a connect fail: resolve again soon (within a second).
  void RequestResolve() { requested_.store(true, std::memory_order_relaxed); }
  bool TakeRequest() { return requested_.exchange(false, std::memory_order_relaxed); }
  const std::string& host() const { return host_; }
  const std::string& port() const { return port_; }

 private:
  struct Slot {
    SocketAddress addr;  // guarded by mu_
    std::atomic<bool> has{false};
    std::atomic<uint64_t> generation{0};
  };
  const std::string host_;
  const std::string port_;
  const size_t n_;
  std::unique_ptr<Slot[]> slots_;
  mutable std::mutex mu_;
  std::atomic<size_t> count_{0};
  std::atomic<size_t> left_out_{0};
  std::atomic<bool> requested_{false};
};

// The order a name's addresses take their slots in: IPv4 before IPv6, then
// by address, then by port; duplicates removed.
void SortAddresses(std::vector<SocketAddress>* addresses);
bool SameAddress(const SocketAddress& a, const SocketAddress& b);
// The slots after a lookup that found `sorted` (SortAddresses): an address
// already in a slot stays there, a slot whose address is gone is emptied,
// and the new addresses fill the free slots lowest first, in order; those
// left over (more addresses than slots) are not used.
std::vector<std::optional<SocketAddress>> AssignSlots(
    const std::vector<std::optional<SocketAddress>>& current,
    const std::vector<SocketAddress>& sorted);
// "10.0.0.5:11434" or "[fd00::5]:11434".
std::string AddressText(const SocketAddress& a);

// Every backend given by name becomes its max_addresses slots, all sharing
// its DnsName, slot i following the name's i-th slot: the first keeps the
// backend's name, the others are "NAME#2", "NAME#3"... (see README
// "Several backends"). Numeric backends stay as they are.
void ExpandNames(std::vector<BackendConfig>* backends);
// How many backends `backends` (as ExpandNames left them) count as now: a
// numeric one is one; a name, one per address it has, and one while it has
// none. With one, sluice behaves as with a lone backend (no checks, never
// left out, no model routing or merged model lists).
size_t CountBackends(const std::vector<BackendConfig>& backends);

// Where to connect to `b` now: its fixed address, or its slot's current
// one; false while the slot has none.
bool CurrentAddress(const BackendConfig& b, SocketAddress* out);
// Whether `b` has an address to connect to.
inline bool HasAddress(const BackendConfig& b) {
  return b.dns == nullptr || b.dns->has(b.dns_slot);
}
// Changes whenever `b`'s address does (always 0 for a numeric backend).
inline uint64_t AddressGeneration(const BackendConfig& b) {
  return b.dns == nullptr ? 0 : b.dns->generation(b.dns_slot);
}

// One thread for the process that re-resolves every backend given by name
// each `interval_ns` (--resolve_interval), and within a second when a
// worker asked (after a connect failure). Logs each change once; calls
// `on_change` with the index in `backends` of each slot whose address
// changed or went (what was known of it belongs to another backend).
class Resolver {
 public:
  Resolver(const std::vector<BackendConfig>& backends, int64_t interval_ns,
           std::function<void(size_t)> on_change = nullptr);
  ~Resolver();
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  // DNS names the resolver does not own but re-resolves too: the rules
  // file's upstreams, which a reload replaces. `others` is asked on the
  // resolver's thread at every full round; what it returns is kept alive
  // until the next one. Set before Start.
  struct OtherName {
    std::string label;  // for the log, e.g. "upstream ui"
    std::shared_ptr<DnsName> dns;
    std::vector<std::string> slot_names;  // by slot
  };
  void SetOthers(std::function<std::vector<OtherName>()> others) {
    others_source_ = std::move(others);
  }

  // Whether any backend is given by name, or others may be (else there is
  // nothing to run).
  bool needed() const { return !names_.empty() || others_source_ != nullptr; }
  void Start();
  void Stop();
  // One round on the caller's thread: every name, or only those asked for.
  void ResolveAll(bool only_requested);

 private:
  void Run();
  struct Name;
  void Report(Name& n, const DnsName::Change& change);

  // The names of `others_source_` now, keeping what the last round knew of
  // each (by its DnsName).
  void RefreshOthers();
  void ResolveName(Name& n, bool only_requested);

  struct Name {
    std::string label;  // the name's first backend, for the log
    DnsName* dns = nullptr;
    std::shared_ptr<DnsName> keep;  // an other name: held while listed
    std::vector<size_t> backends;   // index in --upstream's slots, by slot
    std::vector<std::string> slot_names;
    bool failing = false;
    size_t left_out = 0;
  };
  std::vector<Name> names_;
  std::function<std::vector<OtherName>()> others_source_;
  std::vector<Name> others_;  // the resolver thread's (or ResolveAll's caller's)
  std::function<void(size_t)> on_change_;
  const int64_t interval_ns_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace sluice::core
