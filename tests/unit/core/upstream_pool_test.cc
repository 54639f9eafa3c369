#include "core/upstream/upstream_pool.h"

#include <string>

#include "gtest/gtest.h"
#include "tests/unit/core/proxy_harness.h"

namespace sluice::core {
namespace {

using proxy_test::Engine;
using proxy_test::Peer;
using proxy_test::ProxyHarness;

// What a request does with a link, recorded.
struct RecordingUser final : LinkUser {
  static constexpr int kNone = 1;  // no event yet
  void OnLinkConnected(int res) override { connected = res; }
  void OnLinkData(Slice d) override { data.append(d.data(), d.size()); }
  void OnLinkReadEnd(int res) override { read_end = res; }
  void OnLinkWriteProgress() override {}
  void OnLinkWriteError(int res) override { write_error = res; }
  int connected = kNone;
  int read_end = kNone;
  int write_error = kNone;
  std::string data;
};

// The pool of one shard against the test's upstream listener.
class UpstreamPoolTest : public ::testing::TestWithParam<Engine> {
 protected:
  UpstreamPool& pool() { return h_.pool(); }
  // A new link for `user`, connected, and the upstream's end of it.
  UpstreamLink* Connect(RecordingUser* user, Peer** upstream, bool fresh = false) {
    int err = 0;
    UpstreamLink* link = pool().Acquire(user, fresh, &err);
    EXPECT_NE(link, nullptr) << err;
    if (link == nullptr) return nullptr;
    EXPECT_FALSE(link->reused());
    *upstream = h_.AcceptUpstream();
    EXPECT_NE(*upstream, nullptr);
    EXPECT_TRUE(h_.RunUntil([&] { return user->connected != RecordingUser::kNone; }));
    EXPECT_EQ(user->connected, 0);
    return link;
  }
  // One exchange over `link`: both ways.
  void Exchange(UpstreamLink* link, RecordingUser* user, Peer* upstream, const std::string& tag) {
    link->stream().WriteCopy("ping " + tag);
    ASSERT_TRUE(h_.RunUntil([&] { return upstream->in.size() >= 5 + tag.size(); }));
    EXPECT_EQ(upstream->Take(), "ping " + tag);
    ASSERT_TRUE(h_.Send(upstream, "pong " + tag));
    ASSERT_TRUE(h_.RunUntil([&] { return user->data.size() >= 5 + tag.size(); }));
    EXPECT_EQ(user->data, "pong " + tag);
    user->data.clear();
  }

  // Declared before the harness: links may call them until it stops.
  RecordingUser users_[4];
  ProxyHarness h_{GetParam()};
};

SLUICE_ON_EVERY_ENGINE(UpstreamPoolTest);

// Links go back to the pool after use and are handed out again, the most
// recently released first; `fresh` asks for a new connection anyway.
TEST_P(UpstreamPoolTest, ReleasedLinksAreReusedNewestFirst) {
  SLUICE_START_PROXY(h_);
  Peer* up_a = nullptr;
  Peer* up_b = nullptr;
  UpstreamLink* a = Connect(&users_[0], &up_a);
  UpstreamLink* b = Connect(&users_[1], &up_b);
  ASSERT_TRUE(a && b && up_a && up_b);
  ASSERT_NO_FATAL_FAILURE(Exchange(a, &users_[0], up_a, "a"));
  ASSERT_NO_FATAL_FAILURE(Exchange(b, &users_[1], up_b, "b"));
  pool().Release(a);
  pool().Release(b);
  EXPECT_EQ(pool().idle_count(), 2u);
  EXPECT_EQ(pool().open_count(), 2u);

  int err = 0;
  UpstreamLink* first = pool().Acquire(&users_[2], false, &err);
  UpstreamLink* second = pool().Acquire(&users_[3], false, &err);
  EXPECT_EQ(first, b);
  EXPECT_EQ(second, a);
  EXPECT_TRUE(first->reused());
  EXPECT_EQ(pool().idle_count(), 0u);
  // Still the same connections: the upstream sees the next request on them.
  ASSERT_NO_FATAL_FAILURE(Exchange(first, &users_[2], up_b, "b2"));
  ASSERT_NO_FATAL_FAILURE(Exchange(second, &users_[3], up_a, "a2"));
  EXPECT_EQ(h_.upstream_accepted(), 2);
  EXPECT_EQ(h_.shard()->metrics().upstream_reused, 2u);
  EXPECT_EQ(h_.shard()->metrics().upstream_connects, 2u);
  pool().Release(first);

  // `fresh`: a new connection although one is idle.
  Peer* up_c = nullptr;
  UpstreamLink* c = Connect(&users_[0], &up_c, /*fresh=*/true);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(h_.upstream_accepted(), 3);
  EXPECT_EQ(pool().idle_count(), 1u);
  pool().Discard(c);
  pool().Discard(second);
  EXPECT_TRUE(h_.RunUntil([&] { return up_c->closed() && up_a->closed(); }));
  EXPECT_FALSE(up_b->closed());
  EXPECT_TRUE(h_.RunUntil([&] { return pool().open_count() == 1; }));
}

// At most --upstream_keepalive links stay idle; one released past that is
// closed.
TEST_P(UpstreamPoolTest, KeepsAtMostTheKeepaliveCap) {
  h_.config().upstream_keepalive = 2;
  SLUICE_START_PROXY(h_);
  Peer* ups[3] = {};
  UpstreamLink* links[3] = {};
  for (int i = 0; i < 3; ++i) {
    links[i] = Connect(&users_[i], &ups[i]);
    ASSERT_TRUE(links[i] && ups[i]);
  }
  for (UpstreamLink* link : links) pool().Release(link);
  EXPECT_EQ(pool().idle_count(), 2u);
  ASSERT_TRUE(h_.RunUntil([&] { return ups[2]->closed(); })) << "the link past the cap stayed";
  EXPECT_TRUE(h_.RunUntil([&] { return pool().open_count() == 2; }));
  h_.RunUntil([] { return false; }, 10);
  EXPECT_FALSE(ups[0]->closed());
  EXPECT_FALSE(ups[1]->closed());
}

// An idle link the upstream closes leaves the pool at once: the next
// request gets a new connection, not a dead one.
TEST_P(UpstreamPoolTest, LinkClosedByTheUpstreamWhileIdleIsDropped) {
  SLUICE_START_PROXY(h_);
  Peer* up = nullptr;
  UpstreamLink* link = Connect(&users_[0], &up);
  ASSERT_TRUE(link && up);
  pool().Release(link);
  ASSERT_EQ(pool().idle_count(), 1u);
  up->Close();
  ASSERT_TRUE(h_.RunUntil([&] { return pool().open_count() == 0; }));
  EXPECT_EQ(pool().idle_count(), 0u);
  EXPECT_EQ(users_[0].read_end, RecordingUser::kNone) << "an idle link has no user";

  Peer* next_up = nullptr;
  UpstreamLink* next = Connect(&users_[1], &next_up);
  ASSERT_TRUE(next && next_up);
  EXPECT_EQ(h_.upstream_accepted(), 2);
  pool().Discard(next);
}

// Bytes on an idle link mean it is out of step: it is closed, not reused.
TEST_P(UpstreamPoolTest, IdleLinkThatReceivesBytesIsClosed) {
  SLUICE_START_PROXY(h_);
  Peer* up = nullptr;
  UpstreamLink* link = Connect(&users_[0], &up);
  ASSERT_TRUE(link && up);
  pool().Release(link);
  ASSERT_TRUE(h_.Send(up, "HTTP/1.1 200 OK\r\n"));
  ASSERT_TRUE(h_.RunUntil([&] { return up->closed(); }));
  EXPECT_TRUE(h_.RunUntil([&] { return pool().open_count() == 0; }));
  EXPECT_TRUE(users_[0].data.empty());
}

// An idle link closes after --upstream_idle_timeout; one in use does not.
TEST_P(UpstreamPoolTest, IdleLinksTimeOut) {
  h_.config().upstream_idle_timeout_ns = 20'000'000;
  SLUICE_START_PROXY(h_);
  Peer* up_idle = nullptr;
  Peer* up_busy = nullptr;
  UpstreamLink* idle = Connect(&users_[0], &up_idle);
  UpstreamLink* busy = Connect(&users_[1], &up_busy);
  ASSERT_TRUE(idle && busy && up_idle && up_busy);
  const int64_t released = h_.loop()->now_ns();
  pool().Release(idle);
  ASSERT_TRUE(h_.RunUntil([&] { return up_idle->closed(); }, 2000));
  EXPECT_GE(h_.loop()->now_ns() - released, 20'000'000);
  EXPECT_TRUE(h_.RunUntil([&] { return pool().open_count() == 1; }));
  EXPECT_EQ(pool().idle_count(), 0u);
  EXPECT_FALSE(up_busy->closed());
  pool().Discard(busy);
}

// A drain closes the idle links, and links released while draining are
// closed instead of kept.
TEST_P(UpstreamPoolTest, DrainClosesIdleLinks) {
  SLUICE_START_PROXY(h_);
  Peer* up_a = nullptr;
  Peer* up_b = nullptr;
  UpstreamLink* a = Connect(&users_[0], &up_a);
  UpstreamLink* b = Connect(&users_[1], &up_b);
  ASSERT_TRUE(a && b && up_a && up_b);
  pool().Release(a);
  h_.shard()->set_draining();
  pool().CloseIdle();
  EXPECT_EQ(pool().idle_count(), 0u);
  pool().Release(b);
  EXPECT_EQ(pool().idle_count(), 0u);
  EXPECT_TRUE(h_.RunUntil([&] { return up_a->closed() && up_b->closed(); }));
  EXPECT_TRUE(h_.RunUntil([&] { return pool().open_count() == 0; }));
}

// The passive circuit: open after --upstream_max_fails failures in a row,
// half-open after --upstream_fail_timeout with one probe let through, closed
// by the probe's success, opened again by its failure.
TEST_P(UpstreamPoolTest, CircuitOpensHalfOpensWithOneProbeAndCloses) {
  h_.config().upstream_max_fails = 2;
  h_.config().upstream_fail_timeout_ns = 1000;
  SLUICE_START_PROXY(h_);
  UpstreamPool& p = pool();
  int64_t t = 1'000'000;
  EXPECT_TRUE(p.available(t));
  p.ReportFailure(t);
  EXPECT_TRUE(p.available(t)) << "one failure of two";
  p.ReportFailure(t);
  EXPECT_FALSE(p.available(t)) << "open";
  EXPECT_FALSE(p.available(t + 999));
  t += 1000;
  EXPECT_TRUE(p.available(t)) << "half-open: a probe may go";
  p.TakeProbe(t);
  EXPECT_FALSE(p.available(t)) << "only the probe";
  p.ReportFailure(t + 10);
  EXPECT_FALSE(p.available(t + 10)) << "the probe failed: open again";
  EXPECT_FALSE(p.available(t + 1009));
  t += 1010;
  EXPECT_TRUE(p.available(t));
  p.TakeProbe(t);
  // A probe that tells nothing (its client left) frees the way after
  // another --upstream_fail_timeout.
  EXPECT_FALSE(p.available(t + 999));
  EXPECT_TRUE(p.available(t + 1000));
  p.TakeProbe(t + 1000);
  p.ReportSuccess();
  EXPECT_TRUE(p.available(t + 1000)) << "closed";
  p.TakeProbe(t + 1000);
  EXPECT_TRUE(p.available(t + 1000)) << "no probe when closed";
  p.ReportFailure(t + 1000);
  EXPECT_TRUE(p.available(t + 1000)) << "the count starts again";
}

}  // namespace
}  // namespace sluice::core
