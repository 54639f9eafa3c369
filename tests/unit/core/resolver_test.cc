// A DNS name's addresses as backends: their order, their slots, what a
// lookup changes, and what a worker's BackendSet makes of them.
#include "core/upstream/resolver.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/engine/loop.h"
#include "core/server/shard.h"
#include "core/upstream/backend_set.h"
#include "core/upstream/model_router.h"
#include "gtest/gtest.h"

namespace sluice::core {
namespace {

SocketAddress Addr(const std::string& ip, int port = 11434) {
  SocketAddress a;
  if (ip.find(':') != std::string::npos) {
    auto* s6 = reinterpret_cast<sockaddr_in6*>(&a.storage);
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(static_cast<uint16_t>(port));
    EXPECT_EQ(inet_pton(AF_INET6, ip.c_str(), &s6->sin6_addr), 1);
    a.len = sizeof(sockaddr_in6);
  } else {
    auto* s4 = reinterpret_cast<sockaddr_in*>(&a.storage);
    s4->sin_family = AF_INET;
    s4->sin_port = htons(static_cast<uint16_t>(port));
    EXPECT_EQ(inet_pton(AF_INET, ip.c_str(), &s4->sin_addr), 1);
    a.len = sizeof(sockaddr_in);
  }
  return a;
}

std::vector<std::string> Texts(const std::vector<SocketAddress>& v) {
  std::vector<std::string> out;
  for (const SocketAddress& a : v) out.push_back(AddressText(a));
  return out;
}

std::vector<std::string> Texts(const std::vector<std::optional<SocketAddress>>& v) {
  std::vector<std::string> out;
  for (const auto& a : v) out.push_back(a ? AddressText(*a) : "-");
  return out;
}

std::vector<std::string> Slots(const DnsName& n) {
  std::vector<std::string> out;
  for (size_t i = 0; i < n.slots(); ++i) {
    SocketAddress a;
    out.push_back(n.Get(i, &a) ? AddressText(a) : "-");
  }
  return out;
}

// IPv4 first, then IPv6, each by address; duplicates go.
TEST(ResolverTest, SortAddressesIsStableAndDeduplicated) {
  std::vector<SocketAddress> v = {Addr("fd00::2"), Addr("10.0.0.9"), Addr("10.0.0.10"),
                                  Addr("fd00::1"), Addr("10.0.0.9"), Addr("10.0.0.3")};
  SortAddresses(&v);
  EXPECT_EQ(Texts(v),
            (std::vector<std::string>{"10.0.0.3:11434", "10.0.0.9:11434", "10.0.0.10:11434",
                                      "[fd00::1]:11434", "[fd00::2]:11434"}));
}

// An address keeps its slot; a new one takes the lowest free slot; those
// beyond the slots wait for one.
TEST(ResolverTest, AssignSlotsKeepsAnAddressInItsSlot) {
  using Current = std::vector<std::optional<SocketAddress>>;
  Current empty(3);
  Current first = AssignSlots(empty, {Addr("10.0.0.1"), Addr("10.0.0.2")});
  EXPECT_EQ(Texts(first), (std::vector<std::string>{"10.0.0.1:11434", "10.0.0.2:11434", "-"}));
  // .1 goes, .3 comes: .2 stays in slot 2, .3 takes slot 1.
  Current second = AssignSlots(first, {Addr("10.0.0.2"), Addr("10.0.0.3")});
  EXPECT_EQ(Texts(second), (std::vector<std::string>{"10.0.0.3:11434", "10.0.0.2:11434", "-"}));
  // Five addresses for three slots: the lowest new ones fill the free slot.
  Current third = AssignSlots(second, {Addr("10.0.0.0"), Addr("10.0.0.2"), Addr("10.0.0.3"),
                                       Addr("10.0.0.4"), Addr("fd00::1")});
  EXPECT_EQ(Texts(third),
            (std::vector<std::string>{"10.0.0.3:11434", "10.0.0.2:11434", "10.0.0.0:11434"}));
  // Nothing found (a lookup that succeeded with no address): all empty.
  EXPECT_EQ(Texts(AssignSlots(third, {})), (std::vector<std::string>{"-", "-", "-"}));
}

// What a lookup changed, slot by slot; only a changed slot's generation
// moves.
TEST(ResolverTest, ApplyReportsWhatCameAndWent) {
  DnsName n("ollama.test", "11434", 3);
  EXPECT_FALSE(n.resolved());
  DnsName::Change c;
  n.Apply({Addr("10.0.0.2"), Addr("10.0.0.1"), Addr("10.0.0.1")}, &c);
  EXPECT_EQ(Slots(n), (std::vector<std::string>{"10.0.0.1:11434", "10.0.0.2:11434", "-"}));
  EXPECT_EQ(n.count(), 2u);
  ASSERT_EQ(c.came.size(), 2u);
  EXPECT_TRUE(c.went.empty());
  const uint64_t g0 = n.generation(0), g1 = n.generation(1), g2 = n.generation(2);
  n.Apply({Addr("10.0.0.1"), Addr("10.0.0.2")}, &c);
  EXPECT_TRUE(c.empty());
  EXPECT_EQ(n.generation(0), g0);
  n.Apply({Addr("10.0.0.2"), Addr("fd00::7"), Addr("10.0.0.5"), Addr("10.0.0.6")}, &c);
  EXPECT_EQ(Slots(n),
            (std::vector<std::string>{"10.0.0.5:11434", "10.0.0.2:11434", "10.0.0.6:11434"}));
  ASSERT_EQ(c.went.size(), 1u);
  EXPECT_EQ(c.went[0].first, 0u);
  EXPECT_EQ(AddressText(c.went[0].second), "10.0.0.1:11434");
  ASSERT_EQ(c.came.size(), 2u);
  EXPECT_EQ(c.came[0].first, 0u);
  EXPECT_EQ(c.came[1].first, 2u);
  EXPECT_EQ(c.left_out, 1u) << "[fd00::7] has no slot";
  EXPECT_NE(n.generation(0), g0);
  EXPECT_EQ(n.generation(1), g1);
  EXPECT_NE(n.generation(2), g2);
  n.Apply({Addr("10.0.0.2")}, &c);
  EXPECT_EQ(Slots(n), (std::vector<std::string>{"-", "10.0.0.2:11434", "-"}));
  EXPECT_FALSE(n.has(0));
  EXPECT_EQ(n.count(), 1u);
  EXPECT_EQ(c.went.size(), 2u);
}

// A name becomes max_addresses backends: NAME, NAME#2...; numeric ones
// stay. How many backends that counts as follows the addresses.
TEST(ResolverTest, ExpandNamesMakesASlotPerAddress) {
  std::vector<BackendConfig> backends(2);
  backends[0].name = "10.0.0.9:1";
  backends[0].addr = Addr("10.0.0.9", 1);
  backends[1].name = "ollama.test:11434";
  backends[1].dns = std::make_shared<DnsName>("ollama.test", "11434", 3);
  ExpandNames(&backends);
  ASSERT_EQ(backends.size(), 4u);
  EXPECT_EQ(backends[0].name, "10.0.0.9:1");
  EXPECT_EQ(backends[1].name, "ollama.test:11434");
  EXPECT_EQ(backends[2].name, "ollama.test:11434#2");
  EXPECT_EQ(backends[3].name, "ollama.test:11434#3");
  EXPECT_EQ(backends[3].dns_slot, 2u);
  EXPECT_EQ(backends[3].dns, backends[1].dns);
  DnsName& dns = *backends[1].dns;
  EXPECT_EQ(CountBackends(backends), 2u) << "a name without an address counts as one";
  EXPECT_FALSE(HasAddress(backends[1]));
  dns.Apply({Addr("10.0.0.1")});
  EXPECT_EQ(CountBackends(backends), 2u);
  dns.Apply({Addr("10.0.0.1"), Addr("10.0.0.2"), Addr("10.0.0.3")});
  EXPECT_EQ(CountBackends(backends), 4u);
  SocketAddress a;
  ASSERT_TRUE(CurrentAddress(backends[3], &a));
  EXPECT_EQ(AddressText(a), "10.0.0.3:11434");
  dns.Apply({Addr("10.0.0.3")});
  EXPECT_EQ(CountBackends(backends), 2u) << "one address left, in the third slot";
  EXPECT_FALSE(HasAddress(backends[1]));
  EXPECT_TRUE(HasAddress(backends[3]));
}

// A slot whose address changed forgets the old backend's models; the
// generations still in flight there end without touching the new
// backend's counts, which never go below its own.
TEST(ResolverTest, ModelTableResetKeepsCountsApart) {
  ModelTable t;
  t.SetAvailable({"a"});
  t.Begin("a:latest", 1);
  t.Begin("a:latest", 2);
  t.Reset();
  ModelTable::View v = t.Look("a:latest");
  EXPECT_EQ(v.has, ModelTable::View::Has::kUnknown);
  EXPECT_FALSE(v.loaded);
  EXPECT_EQ(v.in_flight, 0);
  EXPECT_EQ(v.total_in_flight, 0);
  t.Begin("a:latest", 3);  // the new address's first
  EXPECT_EQ(t.Look("a:latest").in_flight, 1);
  t.End("a:latest", 4, true, 200, 1, 0);  // an old one
  t.End("a:latest", 5, true, 200, 1, 0);  // the other old one
  EXPECT_EQ(t.Look("a:latest").in_flight, 1);
  t.End("a:latest", 6, true, 200, 1, 0);
  EXPECT_EQ(t.Look("a:latest").in_flight, 0);
  EXPECT_EQ(t.Look("a:latest").total_in_flight, 0);
  t.End("a:latest", 7, true, 200, 1, 0);  // one too many: still 0
  EXPECT_EQ(t.Look("a:latest").in_flight, 0);
}

// A worker's view: a name's slots without an address are never picked; a
// name with one address is a lone backend, with two, two.
class NameBackendSetTest : public ::testing::Test {
 protected:
  void Build(Balance balance) {
    BackendConfig b;
    b.name = "ollama.test:11434";
    b.host_header = b.name;
    b.dns = std::make_shared<DnsName>("ollama.test", "11434", 4);
    dns_ = b.dns.get();
    config_.backends = {b};
    ExpandNames(&config_.backends);
    config_.balance = balance;
    for (BackendConfig& s : config_.backends) s.models = &tables_[s.dns_slot];
    loop_ = std::make_unique<Loop>(Loop::Options{}, NewPollBackend());
    shard_ = std::make_unique<Shard>(0, config_, loop_.get());
  }
  std::map<std::string, int> Picks(int n) {
    std::map<std::string, int> count;
    for (int i = 0; i < n; ++i) {
      UpstreamPool* p = shard_->backends().Pick();
      ++count[p ? p->backend().name : "none"];
    }
    return count;
  }

  Config config_;
  DnsName* dns_ = nullptr;
  ModelTable tables_[4];
  std::unique_ptr<Loop> loop_;
  std::unique_ptr<Shard> shard_;
};

TEST_F(NameBackendSetTest, PicksOnlyTheSlotsWithAnAddress) {
  Build(Balance::kRoundRobin);
  BackendSet& set = shard_->backends();
  EXPECT_EQ(set.size(), 1u);
  EXPECT_EQ(Picks(2), (std::map<std::string, int>{{"none", 2}})) << "no address yet";
  dns_->Apply({Addr("127.0.0.2")});
  EXPECT_EQ(set.size(), 1u);
  EXPECT_EQ(Picks(3), (std::map<std::string, int>{{"ollama.test:11434", 3}}));
  dns_->Apply({Addr("127.0.0.2"), Addr("127.0.0.3")});
  EXPECT_EQ(set.size(), 2u);
  EXPECT_EQ(Picks(4),
            (std::map<std::string, int>{{"ollama.test:11434", 2}, {"ollama.test:11434#2", 2}}));
  EXPECT_EQ(set.Names(), "ollama.test:11434, ollama.test:11434#2");
  dns_->Apply({Addr("127.0.0.3")});
  EXPECT_EQ(set.size(), 1u);
  EXPECT_EQ(Picks(2), (std::map<std::string, int>{{"ollama.test:11434#2", 2}}));
  EXPECT_FALSE(set.Usable(set.Find("ollama.test:11434")));
  EXPECT_TRUE(set.Usable(set.Find("ollama.test:11434#2")));
}

// Model routing among a name's addresses: to the one that has the model
// loaded; the spare slots never count as backends that might have it.
TEST_F(NameBackendSetTest, ModelGoesWhereItIsLoaded) {
  Build(Balance::kModel);
  dns_->Apply({Addr("127.0.0.2"), Addr("127.0.0.3")});
  tables_[0].SetAvailable({"a", "b"});
  tables_[1].SetAvailable({"a", "b"});
  tables_[0].SetLoaded({"a"}, 0);
  tables_[1].SetLoaded({"b"}, 0);
  RouteChoice choice;
  UpstreamPool* p = shard_->backends().PickForModel("b:latest", nullptr, &choice);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->backend().name, "ollama.test:11434#2");
  EXPECT_EQ(choice.kind, RouteChoice::Kind::kLoaded);
  EXPECT_EQ(shard_->backends().PickForModel("zz:latest", nullptr, &choice), nullptr);
  EXPECT_EQ(choice.kind, RouteChoice::Kind::kNotFound);
}

}  // namespace
}  // namespace sluice::core
