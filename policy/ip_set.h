#pragma once

// Client addresses and CIDR sets for the policy's IP rules (allow/deny lists,
// trusted proxies), and the X-Forwarded-For walk that finds the real client
// behind trusted proxies. Pure values: no sockets, no locks; every type here
// is safe to share read-only between workers.

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sluice::policy {

// An IPv4 or IPv6 address. IPv4 is stored in its IPv4-mapped IPv6 form
// (::ffff:a.b.c.d), so one 128-bit comparison path serves both families and
// "1.2.3.4" equals "::ffff:1.2.3.4". Zone ids (fe80::1%eth0) are not kept.
struct IpAddress {
  std::array<uint8_t, 16> bytes{};  // network byte order; all zero is "::"

  // Parses a textual address: a dotted quad ("10.1.2.3", no leading zeros),
  // or IPv6 text ("::1", "2001:db8::7", "::ffff:1.2.3.4"), either one
  // optionally in [brackets]. Rejects zones ("%eth0"), ports, surrounding
  // spaces (nothing is trimmed) and anything else: returns nullopt.
  static std::optional<IpAddress> Parse(absl::string_view text);

  // The address of a socket address: AF_INET (mapped) or AF_INET6. Any
  // other family (or null) gives "::", which no useful rule matches.
  static IpAddress FromSockaddr(const sockaddr* sa);

  // True for an IPv4 address (one in ::ffff:0:0/96).
  bool is_v4() const;

  // "1.2.3.4" for IPv4, RFC 5952 text ("2001:db8::1") for IPv6.
  std::string ToString() const;

  // The 16 bytes as a view, valid while this object lives: a compact key for
  // the limiter tables (policy/limiter.h).
  absl::string_view AsBytes() const {
    return absl::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }

  friend bool operator==(const IpAddress& a, const IpAddress& b) = default;

  template <typename H>
  friend H AbslHashValue(H h, const IpAddress& a) {
    return H::combine_contiguous(std::move(h), a.bytes.data(), a.bytes.size());
  }
};

// An address block. `base` has its host bits cleared; `prefix_len` counts
// bits of the mapped 128-bit form, so the IPv4 block 10.0.0.0/8 has
// prefix_len 104 and "0.0.0.0/0" (prefix_len 96) holds every IPv4 address
// and nothing else, while "::/0" holds everything.
struct Cidr {
  IpAddress base;
  int prefix_len = 128;  // 0..128

  // True when `addr` lies in the block.
  bool Contains(const IpAddress& addr) const;

  // "10.0.0.0/8" for IPv4 blocks (prefix_len >= 96 over a mapped base),
  // "fd00::/8" otherwise. A single host keeps its "/32" or "/128".
  std::string ToString() const;

  friend bool operator==(const Cidr& a, const Cidr& b) = default;
};

// Parses "10.0.0.0/8", "fd00::/8", "::/0", or a bare address ("192.168.1.7"
// is /32, "::1" is /128). The prefix is decimal without sign, at most 32
// after an IPv4 address and 128 after an IPv6 one. Host bits set beyond the
// prefix are cleared ("10.1.2.3/8" is 10.0.0.0/8), as nginx does. Any other
// text gives InvalidArgumentError naming it.
absl::StatusOr<Cidr> ParseCidr(absl::string_view text);

// A small list of CIDR blocks (allow lists, trusted proxies). Contains() is a
// linear scan of masked 128-bit compares: a few nanoseconds for the handful
// of entries such lists hold. Immutable once built and shared read-only.
class IpSet {
 public:
  IpSet() = default;

  // Parses blocks separated by commas and/or spaces/tabs ("10.0.0.0/8,
  // ::1 192.168.0.0/16"). Empty text gives an empty set. The first bad block
  // gives ParseCidr's error.
  static absl::StatusOr<IpSet> Parse(absl::string_view text);

  // Adds a block (duplicates are kept; they only cost a compare).
  void Add(const Cidr& cidr);

  // True when some block holds `addr`. An empty set holds nothing.
  bool Contains(const IpAddress& addr) const;

  bool empty() const { return cidrs_.empty(); }
  size_t size() const { return cidrs_.size(); }
  const std::vector<Cidr>& cidrs() const { return cidrs_; }

  // The blocks as ParseCidr accepts them, joined by ", ".
  std::string ToString() const;

 private:
  // Base and mask as two host-order 64-bit halves, for the compare loop.
  struct Masked {
    uint64_t hi, lo, mask_hi, mask_lo;
  };
  std::vector<Cidr> cidrs_;
  std::vector<Masked> masked_;
};

// The 16-bit hash that places a client address on a worker: the engine's
// SO_REUSEPORT steering program (core/server/listeners.cc) computes the same from the
// packet (the last 32 bits of the source address, big-endian, times
// 0x9E3779B1, the high 16 bits), so the connections of one address land on
// worker SteeringSlot(hash, workers), and the limit tables keep that
// address's state in that worker's own stripes.
uint32_t SteeringHash(const IpAddress& addr);
// Which of `n` workers (or stripe groups) a SteeringHash picks:
// (hash * n) >> 16, a multiply instead of a division, in BPF as in C++.
inline uint32_t SteeringSlot(uint32_t hash, uint32_t n) { return (hash * n) >> 16; }

// The client address behind trusted proxies, as nginx's realip module finds
// it with real_ip_recursive on. When `peer` (the socket's address) is not in
// `trusted`, returns `peer`: an untrusted client's header is ignored.
// Otherwise walks the comma-separated X-Forwarded-For list from the right
// (the hop nearest to us first), skipping trusted addresses, and returns the
// first untrusted one. When every entry is trusted, returns the leftmost.
// An unparsable entry ends the walk and gives the last trusted hop seen so
// far, so that no address the client wrote past an untrusted hop is ever
// believed. Empty entries and spaces around entries are skipped; an empty
// header (or none: pass "") gives `peer`. Several X-Forwarded-For fields
// must be joined with "," in their order first.
IpAddress ClientAddressFromXff(const IpAddress& peer, absl::string_view xff_header_or_empty,
                               const IpSet& trusted);

}  // namespace sluice::policy
