#include "policy/ip_set.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>
#include <optional>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "gtest/gtest.h"

namespace sluice::policy {
namespace {

IpAddress Ip(absl::string_view text) {
  std::optional<IpAddress> a = IpAddress::Parse(text);
  EXPECT_TRUE(a.has_value()) << text;
  return a.value_or(IpAddress{});
}

IpSet Set(absl::string_view text) {
  absl::StatusOr<IpSet> s = IpSet::Parse(text);
  EXPECT_TRUE(s.ok()) << text << ": " << s.status();
  return s.ok() ? *s : IpSet();
}

TEST(IpSetAddress, ParsesBothFamilies) {
  EXPECT_EQ(Ip("1.2.3.4").ToString(), "1.2.3.4");
  EXPECT_TRUE(Ip("1.2.3.4").is_v4());
  EXPECT_EQ(Ip("::1").ToString(), "::1");
  EXPECT_FALSE(Ip("::1").is_v4());
  EXPECT_EQ(Ip("[::1]").ToString(), "::1");
  EXPECT_EQ(Ip("[10.0.0.1]").ToString(), "10.0.0.1");
  EXPECT_EQ(Ip("2001:DB8:0:0:0:0:0:1").ToString(), "2001:db8::1");
  EXPECT_EQ(Ip("fe80:0000::00ab").ToString(), "fe80::ab");
  EXPECT_EQ(Ip("255.255.255.255").ToString(), "255.255.255.255");
  EXPECT_EQ(Ip("0.0.0.0").ToString(), "0.0.0.0");
  EXPECT_EQ(Ip("::").ToString(), "::");
}

TEST(IpSetAddress, MappedFormEqualsIpv4) {
  EXPECT_EQ(Ip("::ffff:1.2.3.4"), Ip("1.2.3.4"));
  EXPECT_EQ(Ip("::ffff:102:304"), Ip("1.2.3.4"));
  EXPECT_EQ(Ip("::ffff:1.2.3.4").ToString(), "1.2.3.4");
  EXPECT_NE(Ip("::1.2.3.4"), Ip("1.2.3.4"));  // IPv4-compatible: not mapped
  EXPECT_FALSE(Ip("::1.2.3.4").is_v4());
}

TEST(IpSetAddress, RejectsJunk) {
  for (absl::string_view bad :
       {"",          " 1.2.3.4",  "1.2.3.4 ",   "1.2.3",    "1.2.3.4.5",    "256.1.1.1",
        "01.2.3.4",  "1.2.3.4/8", "1.2.3.4:80", "[::1]:80", "fe80::1%eth0", "fe80::1%25eth0",
        "[::1",      "::1]",      "[]",         ":::",      "1::2::3",      "abc",
        "0x1.2.3.4", "::g",       "1.2.3.4\n",  "12345::"}) {
    EXPECT_FALSE(IpAddress::Parse(bad).has_value()) << bad;
  }
  EXPECT_FALSE(IpAddress::Parse(absl::string_view("1.2.3.4\0", 8)).has_value());
  EXPECT_FALSE(IpAddress::Parse(std::string(100, '1')).has_value());
}

TEST(IpSetAddress, FromSockaddr) {
  sockaddr_in in{};
  in.sin_family = AF_INET;
  in.sin_port = htons(80);
  ASSERT_EQ(inet_pton(AF_INET, "192.0.2.9", &in.sin_addr), 1);
  EXPECT_EQ(IpAddress::FromSockaddr(reinterpret_cast<sockaddr*>(&in)), Ip("192.0.2.9"));
  sockaddr_in6 in6{};
  in6.sin6_family = AF_INET6;
  ASSERT_EQ(inet_pton(AF_INET6, "2001:db8::5", &in6.sin6_addr), 1);
  EXPECT_EQ(IpAddress::FromSockaddr(reinterpret_cast<sockaddr*>(&in6)), Ip("2001:db8::5"));
  ASSERT_EQ(inet_pton(AF_INET6, "::ffff:192.0.2.9", &in6.sin6_addr), 1);
  EXPECT_EQ(IpAddress::FromSockaddr(reinterpret_cast<sockaddr*>(&in6)), Ip("192.0.2.9"));
  sockaddr un{};
  un.sa_family = AF_UNIX;
  EXPECT_EQ(IpAddress::FromSockaddr(&un), IpAddress{});
  EXPECT_EQ(IpAddress::FromSockaddr(nullptr), IpAddress{});
}

TEST(IpSetAddress, HashesAndBytes) {
  absl::flat_hash_set<IpAddress> set = {Ip("1.2.3.4"), Ip("::ffff:1.2.3.4"), Ip("::1")};
  EXPECT_EQ(set.size(), 2u);
  EXPECT_TRUE(set.contains(Ip("::1")));
  EXPECT_EQ(Ip("1.2.3.4").AsBytes(),
            absl::string_view("\0\0\0\0\0\0\0\0\0\0\xff\xff\x01\x02\x03\x04", 16));
}

TEST(IpSetCidr, ParsesAndContains) {
  struct Case {
    absl::string_view cidr;
    absl::string_view in;
    absl::string_view out;
    absl::string_view text;
  };
  for (const Case& c : std::initializer_list<Case>{
           {"10.0.0.0/8", "10.255.1.2", "11.0.0.0", "10.0.0.0/8"},
           {"192.168.1.7", "192.168.1.7", "192.168.1.8", "192.168.1.7/32"},
           {"192.168.1.7/31", "192.168.1.6", "192.168.1.8", "192.168.1.6/31"},
           {"10.1.2.3/8", "10.9.9.9", "9.255.255.255", "10.0.0.0/8"},
           {"::1", "::1", "::2", "::1/128"},
           {"[::1]/128", "::1", "::", "::1/128"},
           {"fd00::/8", "fdff::1", "fe00::1", "fd00::/8"},
           {"fd12:3456::1/33", "fd12:3456:7fff::", "fd12:3456:8000::", "fd12:3456::/33"},
           {"2001:db8::/64", "2001:db8::ffff:ffff:ffff:ffff", "2001:db8:0:1::", "2001:db8::/64"},
           {"2001:db8::8000:0:0:1/65", "2001:db8::ffff:0:0:0", "2001:db8::7fff:0:0:0",
            "2001:db8:0:0:8000::/65"},
           {"0.0.0.0/0", "255.255.255.255", "::1", "0.0.0.0/0"},
           {"::/0", "::1", "", "::/0"},
           {"::ffff:0:0/96", "8.8.8.8", "::fffe:0:1", "0.0.0.0/0"},
           {"127.0.0.0/8", "::ffff:127.0.0.1", "128.0.0.1", "127.0.0.0/8"},
       }) {
    absl::StatusOr<Cidr> cidr = ParseCidr(c.cidr);
    ASSERT_TRUE(cidr.ok()) << c.cidr << ": " << cidr.status();
    EXPECT_TRUE(cidr->Contains(Ip(c.in))) << c.cidr << " " << c.in;
    if (!c.out.empty()) {
      EXPECT_FALSE(cidr->Contains(Ip(c.out))) << c.cidr << " " << c.out;
    }
    EXPECT_EQ(cidr->ToString(), c.text);
    EXPECT_EQ(*ParseCidr(cidr->ToString()), *cidr) << c.cidr;
  }
  EXPECT_TRUE(ParseCidr("::/0")->Contains(Ip("1.2.3.4")));
  EXPECT_FALSE(ParseCidr("0.0.0.0/0")->Contains(Ip("2001:db8::1")));
  EXPECT_EQ(ParseCidr("10.0.0.0/8")->prefix_len, 104);
}

TEST(IpSetCidr, RejectsBadText) {
  for (absl::string_view bad :
       {"", "/", "/8", "10.0.0.0/", "10.0.0.0/33", "::/129", "10.0.0.0/-1", "10.0.0.0/+8",
        "10.0.0.0/8/8", "10.0.0.0/ 8", "10.0.0.0/8 ", " 10.0.0.0/8", "10.0.0/8", "::1/0129",
        "10.0.0.0/0x8", "fe80::%1/64", "host.example/8", "10.0.0.0/1000"}) {
    absl::StatusOr<Cidr> cidr = ParseCidr(bad);
    EXPECT_FALSE(cidr.ok()) << bad;
    EXPECT_EQ(cidr.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(cidr.status().message().find("bad CIDR"), absl::string_view::npos);
  }
  EXPECT_NE(ParseCidr("10.0.0.0/33").status().message().find("10.0.0.0/33"),
            absl::string_view::npos);
}

TEST(IpSetSet, ParsesLists) {
  IpSet set = Set("10.0.0.0/8, ::1\t192.168.0.0/16,,fd00::/8 ");
  EXPECT_EQ(set.size(), 4u);
  EXPECT_EQ(set.ToString(), "10.0.0.0/8, ::1/128, 192.168.0.0/16, fd00::/8");
  EXPECT_TRUE(set.Contains(Ip("10.1.1.1")));
  EXPECT_TRUE(set.Contains(Ip("::1")));
  EXPECT_TRUE(set.Contains(Ip("192.168.44.1")));
  EXPECT_TRUE(set.Contains(Ip("fd00::99")));
  EXPECT_FALSE(set.Contains(Ip("172.16.0.1")));
  EXPECT_FALSE(set.Contains(Ip("::2")));
  EXPECT_EQ(Set(set.ToString()).cidrs(), set.cidrs());

  IpSet empty = Set("");
  EXPECT_TRUE(empty.empty());
  EXPECT_FALSE(empty.Contains(Ip("::")));
  EXPECT_TRUE(Set(" , ").empty());

  absl::StatusOr<IpSet> bad = IpSet::Parse("10.0.0.0/8, 300.0.0.0/8");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("300.0.0.0/8"), absl::string_view::npos);

  IpSet added;
  added.Add(*ParseCidr("1.2.3.0/24"));
  EXPECT_FALSE(added.empty());
  EXPECT_TRUE(added.Contains(Ip("1.2.3.255")));
}

TEST(IpSetXff, UntrustedPeerIgnoresHeader) {
  IpSet trusted = Set("10.0.0.0/8");
  EXPECT_EQ(ClientAddressFromXff(Ip("203.0.113.5"), "1.1.1.1", trusted), Ip("203.0.113.5"));
  EXPECT_EQ(ClientAddressFromXff(Ip("203.0.113.5"), "1.1.1.1", IpSet()), Ip("203.0.113.5"));
}

TEST(IpSetXff, WalksFromTheRight) {
  IpSet trusted = Set("10.0.0.0/8, ::1");
  const IpAddress peer = Ip("10.0.0.1");
  EXPECT_EQ(ClientAddressFromXff(peer, "", trusted), peer);
  EXPECT_EQ(ClientAddressFromXff(peer, "  ", trusted), peer);
  EXPECT_EQ(ClientAddressFromXff(peer, "203.0.113.7", trusted), Ip("203.0.113.7"));
  // The client wrote "6.6.6.6"; the first untrusted hop from the right wins.
  EXPECT_EQ(ClientAddressFromXff(peer, "6.6.6.6, 203.0.113.7, 10.0.0.2", trusted),
            Ip("203.0.113.7"));
  EXPECT_EQ(ClientAddressFromXff(peer, "6.6.6.6,203.0.113.7,::1,10.9.9.9", trusted),
            Ip("203.0.113.7"));
  EXPECT_EQ(ClientAddressFromXff(peer, "2001:db8::1 , 10.0.0.3", trusted), Ip("2001:db8::1"));
  EXPECT_EQ(ClientAddressFromXff(peer, "[2001:db8::1]", trusted), Ip("2001:db8::1"));
  // Every hop trusted: the leftmost one.
  EXPECT_EQ(ClientAddressFromXff(peer, "10.0.0.9, 10.0.0.8", trusted), Ip("10.0.0.9"));
  // Empty entries are skipped.
  EXPECT_EQ(ClientAddressFromXff(peer, "203.0.113.7,, ,", trusted), Ip("203.0.113.7"));
}

TEST(IpSetXff, UnparsableEntryStopsAtLastTrustedHop) {
  IpSet trusted = Set("10.0.0.0/8");
  const IpAddress peer = Ip("10.0.0.1");
  EXPECT_EQ(ClientAddressFromXff(peer, "junk", trusted), peer);
  EXPECT_EQ(ClientAddressFromXff(peer, "6.6.6.6, junk", trusted), peer);
  EXPECT_EQ(ClientAddressFromXff(peer, "6.6.6.6, junk, 10.0.0.5", trusted), Ip("10.0.0.5"));
  EXPECT_EQ(ClientAddressFromXff(peer, "6.6.6.6, 1.2.3.4:80, 10.0.0.5", trusted), Ip("10.0.0.5"));
  EXPECT_EQ(ClientAddressFromXff(peer, "unknown, 203.0.113.7", trusted), Ip("203.0.113.7"));
}

}  // namespace
}  // namespace sluice::policy

namespace sluice::policy {
namespace {

// The contract with the SO_REUSEPORT program in core/server/listeners.cc: the last 32
// bits of the address, big-endian, times 0x9E3779B1, high 16 bits; the
// worker is (hash * n) >> 16.
TEST(IpSetSteering, HashIsTheLastWordMixed) {
  auto hash = [](const char* text) {
    std::optional<IpAddress> ip = IpAddress::Parse(text);
    EXPECT_TRUE(ip.has_value()) << text;
    return SteeringHash(*ip);
  };
  const uint32_t w = (127u << 24) | 1u;
  EXPECT_EQ(hash("127.0.0.1"), (w * 0x9E3779B1u) >> 16);
  // IPv4 and its mapped form are one client; an IPv6 address uses its
  // last 32 bits.
  EXPECT_EQ(hash("127.0.0.1"), hash("::ffff:127.0.0.1"));
  EXPECT_EQ(hash("2001:db8::7f00:1"), hash("127.0.0.1"));
  for (const char* text : {"10.0.0.1", "192.168.7.9", "::1", "fd00::abcd"}) {
    EXPECT_LT(hash(text), 65536u) << text;
  }
  EXPECT_EQ(SteeringSlot(0, 2), 0u);
  EXPECT_EQ(SteeringSlot(0x7fff, 2), 0u);
  EXPECT_EQ(SteeringSlot(0x8000, 2), 1u);
  EXPECT_EQ(SteeringSlot(0xffff, 3), 2u);
  // Spread: 4096 consecutive addresses over 2 workers, neither starved.
  int count[2] = {0, 0};
  for (uint32_t i = 0; i < 4096; ++i) {
    IpAddress ip = *IpAddress::Parse("10.0.0.0");
    ip.bytes[14] = static_cast<uint8_t>(i >> 8);
    ip.bytes[15] = static_cast<uint8_t>(i);
    ++count[SteeringSlot(SteeringHash(ip), 2)];
  }
  EXPECT_GT(count[0], 1800);
  EXPECT_GT(count[1], 1800);
}

}  // namespace
}  // namespace sluice::policy
