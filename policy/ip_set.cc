#include "policy/ip_set.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <bit>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sluice::policy {
namespace {

constexpr uint8_t kMappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

uint64_t LoadBig64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  if constexpr (std::endian::native == std::endian::little) {
    v = __builtin_bswap64(v);
  }
  return v;
}

void StoreBig64(uint64_t v, uint8_t* p) {
  if constexpr (std::endian::native == std::endian::little) {
    v = __builtin_bswap64(v);
  }
  std::memcpy(p, &v, sizeof(v));
}

// The high-order `bits` (0..64) of a 64-bit word set.
uint64_t HighMask(int bits) {
  if (bits <= 0) return 0;
  if (bits >= 64) return ~uint64_t{0};
  return ~uint64_t{0} << (64 - bits);
}

void SetV4(const uint8_t v4[4], IpAddress* out) {
  std::memcpy(out->bytes.data(), kMappedPrefix, sizeof(kMappedPrefix));
  std::memcpy(out->bytes.data() + 12, v4, 4);
}

absl::Status BadCidr(absl::string_view text) {
  return absl::InvalidArgumentError(absl::StrCat("bad CIDR \"", absl::CHexEscape(text), "\""));
}

// Parses an address, telling whether it was written as a dotted quad.
std::optional<IpAddress> ParseAddress(absl::string_view text, bool* dotted) {
  if (text.size() >= 2 && text.front() == '[' && text.back() == ']') {
    text = text.substr(1, text.size() - 2);
  }
  // inet_pton wants a NUL-terminated string; INET6_ADDRSTRLEN (46) bounds
  // every valid form, and an embedded NUL would cut the text short.
  char buf[INET6_ADDRSTRLEN];
  if (text.empty() || text.size() >= sizeof(buf) || text.find('\0') != absl::string_view::npos) {
    return std::nullopt;
  }
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  IpAddress addr;
  // glibc's inet_pton(AF_INET) takes only four decimal parts without
  // leading zeros, unlike inet_aton ("010.1" would be octal there).
  uint8_t v4[4];
  if (inet_pton(AF_INET, buf, v4) == 1) {
    SetV4(v4, &addr);
    *dotted = true;
    return addr;
  }
  if (inet_pton(AF_INET6, buf, addr.bytes.data()) == 1) {
    *dotted = false;
    return addr;
  }
  return std::nullopt;
}

}  // namespace

std::optional<IpAddress> IpAddress::Parse(absl::string_view text) {
  bool dotted;
  return ParseAddress(text, &dotted);
}

IpAddress IpAddress::FromSockaddr(const sockaddr* sa) {
  IpAddress addr;
  if (sa == nullptr) return addr;
  if (sa->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    SetV4(reinterpret_cast<const uint8_t*>(&in->sin_addr), &addr);
  } else if (sa->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    std::memcpy(addr.bytes.data(), &in6->sin6_addr, 16);
  }
  return addr;
}

bool IpAddress::is_v4() const {
  return std::memcmp(bytes.data(), kMappedPrefix, sizeof(kMappedPrefix)) == 0;
}

std::string IpAddress::ToString() const {
  char buf[INET6_ADDRSTRLEN];
  const char* s = is_v4() ? inet_ntop(AF_INET, bytes.data() + 12, buf, sizeof(buf))
                          : inet_ntop(AF_INET6, bytes.data(), buf, sizeof(buf));
  return s ? std::string(s) : std::string();
}

bool Cidr::Contains(const IpAddress& addr) const {
  const uint64_t mask_hi = HighMask(prefix_len);
  const uint64_t mask_lo = HighMask(prefix_len - 64);
  return ((LoadBig64(addr.bytes.data()) ^ LoadBig64(base.bytes.data())) & mask_hi) == 0 &&
         ((LoadBig64(addr.bytes.data() + 8) ^ LoadBig64(base.bytes.data() + 8)) & mask_lo) == 0;
}

std::string Cidr::ToString() const {
  if (base.is_v4() && prefix_len >= 96) {
    return absl::StrCat(base.ToString(), "/", prefix_len - 96);
  }
  return absl::StrCat(base.ToString(), "/", prefix_len);
}

absl::StatusOr<Cidr> ParseCidr(absl::string_view text) {
  absl::string_view addr_text = text;
  absl::string_view prefix_text;
  const size_t slash = text.find('/');
  const bool has_prefix = slash != absl::string_view::npos;
  if (has_prefix) {
    addr_text = text.substr(0, slash);
    prefix_text = text.substr(slash + 1);
  }
  bool dotted = false;
  std::optional<IpAddress> addr = ParseAddress(addr_text, &dotted);
  if (!addr.has_value()) return BadCidr(text);
  const int max_len = dotted ? 32 : 128;
  int len = max_len;
  if (has_prefix) {
    if (prefix_text.empty() || prefix_text.size() > 3) return BadCidr(text);
    len = 0;
    for (char c : prefix_text) {
      if (c < '0' || c > '9') return BadCidr(text);
      len = len * 10 + (c - '0');
    }
    if (len > max_len) return BadCidr(text);
  }
  Cidr cidr;
  cidr.prefix_len = dotted ? len + 96 : len;
  const uint64_t hi = LoadBig64(addr->bytes.data()) & HighMask(cidr.prefix_len);
  const uint64_t lo = LoadBig64(addr->bytes.data() + 8) & HighMask(cidr.prefix_len - 64);
  StoreBig64(hi, cidr.base.bytes.data());
  StoreBig64(lo, cidr.base.bytes.data() + 8);
  return cidr;
}

absl::StatusOr<IpSet> IpSet::Parse(absl::string_view text) {
  IpSet set;
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (c == ',' || c == ' ' || c == '\t') {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < text.size() && text[end] != ',' && text[end] != ' ' && text[end] != '\t') {
      ++end;
    }
    absl::StatusOr<Cidr> cidr = ParseCidr(text.substr(i, end - i));
    if (!cidr.ok()) return cidr.status();
    set.Add(*cidr);
    i = end;
  }
  return set;
}

void IpSet::Add(const Cidr& cidr) {
  cidrs_.push_back(cidr);
  masked_.push_back({LoadBig64(cidr.base.bytes.data()), LoadBig64(cidr.base.bytes.data() + 8),
                     HighMask(cidr.prefix_len), HighMask(cidr.prefix_len - 64)});
}

bool IpSet::Contains(const IpAddress& addr) const {
  const uint64_t hi = LoadBig64(addr.bytes.data());
  const uint64_t lo = LoadBig64(addr.bytes.data() + 8);
  for (const Masked& m : masked_) {
    if (((hi ^ m.hi) & m.mask_hi) == 0 && ((lo ^ m.lo) & m.mask_lo) == 0) {
      return true;
    }
  }
  return false;
}

std::string IpSet::ToString() const {
  return absl::StrJoin(cidrs_, ", ",
                       [](std::string* out, const Cidr& c) { out->append(c.ToString()); });
}

uint32_t SteeringHash(const IpAddress& addr) {
  const uint32_t word = (uint32_t{addr.bytes[12]} << 24) | (uint32_t{addr.bytes[13]} << 16) |
                        (uint32_t{addr.bytes[14]} << 8) | uint32_t{addr.bytes[15]};
  return (word * 0x9E3779B1u) >> 16;
}

IpAddress ClientAddressFromXff(const IpAddress& peer, absl::string_view xff_header_or_empty,
                               const IpSet& trusted) {
  if (!trusted.Contains(peer)) return peer;
  IpAddress last_trusted = peer;
  absl::string_view rest = xff_header_or_empty;
  while (!rest.empty()) {
    const size_t comma = rest.rfind(',');
    absl::string_view entry = comma == absl::string_view::npos ? rest : rest.substr(comma + 1);
    rest = comma == absl::string_view::npos ? absl::string_view() : rest.substr(0, comma);
    while (!entry.empty() && (entry.front() == ' ' || entry.front() == '\t')) {
      entry.remove_prefix(1);
    }
    while (!entry.empty() && (entry.back() == ' ' || entry.back() == '\t')) {
      entry.remove_suffix(1);
    }
    if (entry.empty()) continue;
    std::optional<IpAddress> hop = IpAddress::Parse(entry);
    if (!hop.has_value()) return last_trusted;
    if (!trusted.Contains(*hop)) return *hop;
    last_trusted = *hop;
  }
  return last_trusted;
}

}  // namespace sluice::policy
