#include "core/upstream/backend_set.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/engine/loop.h"
#include "core/server/shard.h"
#include "gtest/gtest.h"

namespace sluice::core {
namespace {

BackendConfig Backend(int port, int weight = 1) {
  BackendConfig b;
  b.name = "127.0.0.1:" + std::to_string(port);
  auto* sin = reinterpret_cast<sockaddr_in*>(&b.addr.storage);
  sin->sin_family = AF_INET;
  sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sin->sin_port = htons(static_cast<uint16_t>(port));
  b.addr.len = sizeof(sockaddr_in);
  b.host_header = b.name;
  b.weight = weight;
  return b;
}

struct NullUser final : LinkUser {
  void OnLinkConnected(int) override {}
  void OnLinkData(Slice) override {}
  void OnLinkReadEnd(int) override {}
  void OnLinkWriteProgress() override {}
  void OnLinkWriteError(int) override {}
};

// The choice of backend per request, on a shard whose loop (the poll
// backend) never runs: links are made but never connect.
class BackendSetTest : public ::testing::Test {
 protected:
  void Build(std::vector<BackendConfig> backends, Balance balance) {
    config_.backends = std::move(backends);
    config_.balance = balance;
    loop_ = std::make_unique<Loop>(Loop::Options{}, NewPollBackend());
    shard_ = std::make_unique<Shard>(0, config_, loop_.get());
  }
  // Which backend (by port) each of `n` picks went to.
  std::vector<std::string> Picks(int n) {
    std::vector<std::string> names;
    for (int i = 0; i < n; ++i) names.push_back(shard_->backends().Pick()->backend().name);
    return names;
  }
  void TearDown() override {
    for (UpstreamLink* l : links_) l->pool()->Discard(l);
    for (int i = 0; i < 10; ++i) loop_->Turn(0);
  }

  Config config_;
  std::unique_ptr<Loop> loop_;
  std::unique_ptr<Shard> shard_;
  NullUser user_;
  std::vector<UpstreamLink*> links_;
};

TEST_F(BackendSetTest, OneBackendTakesEverything) {
  Build({Backend(1)}, Balance::kRoundRobin);
  EXPECT_EQ(Picks(3), (std::vector<std::string>{"127.0.0.1:1", "127.0.0.1:1", "127.0.0.1:1"}));
}

// Weights 2:1 interleave (A B A, A B A) rather than A A B.
TEST_F(BackendSetTest, WeightedRoundRobinIsSmooth) {
  Build({Backend(1, 2), Backend(2, 1)}, Balance::kRoundRobin);
  EXPECT_EQ(Picks(6), (std::vector<std::string>{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1",
                                                "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1"}));
  std::map<std::string, int> count;
  for (const std::string& n : Picks(300)) ++count[n];
  EXPECT_EQ(count["127.0.0.1:1"], 200);
  EXPECT_EQ(count["127.0.0.1:2"], 100);
}

// least_conn: the backend with the fewest links in use per unit of weight;
// ties rotate.
TEST_F(BackendSetTest, LeastConnFollowsLinksInUse) {
  Build({Backend(1), Backend(2), Backend(3, 2)}, Balance::kLeastConn);
  std::map<std::string, int> count;
  for (int i = 0; i < 8; ++i) {
    UpstreamPool* pool = shard_->backends().Pick();
    ASSERT_NE(pool, nullptr);
    ++count[pool->backend().name];
    int err = 0;
    UpstreamLink* link = pool->Acquire(&user_, /*fresh=*/true, &err);
    ASSERT_NE(link, nullptr) << err;
    links_.push_back(link);
  }
  // 8 links in use: 2, 2 and 4 (twice the weight).
  EXPECT_EQ(count["127.0.0.1:1"], 2);
  EXPECT_EQ(count["127.0.0.1:2"], 2);
  EXPECT_EQ(count["127.0.0.1:3"], 4);
  // Freeing the links of backend 2 sends the next two there.
  for (UpstreamLink*& l : links_) {
    if (l->pool()->backend().name == "127.0.0.1:2") {
      l->pool()->Discard(l);
      l = nullptr;
    }
  }
  std::erase(links_, nullptr);
  for (int i = 0; i < 5; ++i) loop_->Turn(0);  // the closes finish
  EXPECT_EQ(Picks(1), std::vector<std::string>{"127.0.0.1:2"});
  EXPECT_EQ(shard_->backends().open_count(), 6u);
}

}  // namespace
}  // namespace sluice::core
