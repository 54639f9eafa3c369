#include "tls/resumption.h"

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/tls/tls_test_peer.h"
#include "tls/tls_context.h"
#include "tls/tls_session.h"

// ClientOptions{.field = ...} leaves the other fields at their defaults on
// purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace sluice::tls {
namespace {

// A clock the test moves by hand; thread-safe.
class FakeClock {
 public:
  absl::Time Now() {
    std::lock_guard lock(mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    std::lock_guard lock(mu_);
    now_ += d;
  }
  std::function<absl::Time()> Fn() {
    return [this] { return Now(); };
  }

 private:
  std::mutex mu_;
  absl::Time now_ = absl::FromUnixSeconds(1700000000);
};

ResumptionOptions Options(FakeClock& clock) {
  ResumptionOptions o;
  o.session_lifetime = absl::Hours(24);
  o.ticket_key_rotation = absl::Hours(1);
  o.session_cache_capacity = 3;
  o.clock = clock.Fn();
  return o;
}

std::string Seal(TicketKeyRing& ring, const std::string& plain) {
  std::string out(plain.size() + TicketKeyRing::MaxOverhead(), '\0');
  size_t len = 0;
  EXPECT_TRUE(ring.Seal(reinterpret_cast<uint8_t*>(out.data()), &len, out.size(),
                        reinterpret_cast<const uint8_t*>(plain.data()), plain.size()));
  out.resize(len);
  return out;
}

bool Open(TicketKeyRing& ring, const std::string& ticket, std::string* plain) {
  plain->assign(ticket.size(), '\0');
  size_t len = 0;
  bool ok = ring.Open(reinterpret_cast<uint8_t*>(plain->data()), &len, plain->size(),
                      reinterpret_cast<const uint8_t*>(ticket.data()), ticket.size());
  plain->resize(ok ? len : 0);
  return ok;
}

TEST(TlsTicketKeyRingTest, SealOpenRoundTripAndTamper) {
  FakeClock clock;
  TicketKeyRing ring(Options(clock));
  std::string session(200, 's');
  std::string ticket = Seal(ring, session);
  EXPECT_EQ(ticket.size(), session.size() + TicketKeyRing::MaxOverhead());
  std::string plain;
  ASSERT_TRUE(Open(ring, ticket, &plain));
  EXPECT_EQ(plain, session);
  // Two seals of the same session differ (random nonce).
  EXPECT_NE(Seal(ring, session), ticket);

  for (size_t i : {size_t{0}, size_t{16}, size_t{40}, ticket.size() - 1}) {
    std::string bad = ticket;
    bad[i] ^= 1;
    EXPECT_FALSE(Open(ring, bad, &plain)) << "flipped byte " << i;
  }
  EXPECT_FALSE(Open(ring, ticket.substr(0, 30), &plain));
  EXPECT_FALSE(Open(ring, "", &plain));

  // Another ring (another server, or a restart) cannot open it.
  TicketKeyRing other(Options(clock));
  EXPECT_FALSE(Open(other, ticket, &plain));
}

TEST(TlsTicketKeyRingTest, RotatesAndRetiresKeys) {
  FakeClock clock;
  TicketKeyRing ring(Options(clock));
  std::string t0 = Seal(ring, "zero");
  EXPECT_EQ(ring.key_count(), 1u);

  clock.Advance(absl::Minutes(59));
  EXPECT_EQ(Seal(ring, "x").substr(0, 16), t0.substr(0, 16));  // same key
  clock.Advance(absl::Minutes(2));
  std::string t1 = Seal(ring, "one");  // rotation is due: a new key
  EXPECT_NE(t1.substr(0, 16), t0.substr(0, 16));
  EXPECT_EQ(ring.key_count(), 2u);

  std::string plain;
  EXPECT_TRUE(Open(ring, t0, &plain));  // the retired key still decrypts
  EXPECT_EQ(plain, "zero");

  // t0's key retired at +61 min; it decrypts until +61 min + 24 h.
  clock.Advance(absl::Hours(24) - absl::Minutes(1));
  EXPECT_TRUE(Open(ring, t0, &plain));
  clock.Advance(absl::Minutes(2));
  EXPECT_FALSE(Open(ring, t0, &plain));
  EXPECT_TRUE(Open(ring, t1, &plain));  // t1's key is still current
  EXPECT_EQ(plain, "one");

  // The next rotation drops the expired key.
  Seal(ring, "two");
  EXPECT_EQ(ring.key_count(), 2u);
  ring.Rotate();
  EXPECT_EQ(ring.key_count(), 3u);
  EXPECT_TRUE(Open(ring, t1, &plain));
}

TEST(TlsTicketKeyRingTest, ConcurrentSealOpenAcrossRotations) {
  FakeClock clock;
  TicketKeyRing ring(Options(clock));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 500; ++i) {
        std::string msg = "thread " + std::to_string(t) + " " + std::to_string(i);
        std::string ticket = Seal(ring, msg);
        if (t == 0 && i % 50 == 0) clock.Advance(absl::Minutes(61));
        std::string plain;
        if (!Open(ring, ticket, &plain) || plain != msg) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(ring.key_count(), 5u);
}

class TlsSessionCacheTest : public ::testing::Test {
 protected:
  // A real TLS 1.2 session to copy under various IDs (BoringSSL serializes
  // only complete sessions).
  static void SetUpTestSuite() {
    testing::TestPki pki = testing::MakePki(testing::KeyKind::kEcdsa, "cache_source");
    TlsContextOptions o = pki.Options();
    o.session_tickets = false;
    auto ctx = TlsContext::Create(o);
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    testing::TestClient client(testing::ClientOptions{.max_version = TLS1_2_VERSION});
    TlsSession server(*ctx);
    ASSERT_TRUE(testing::Pump(client, server).ok());
    ASSERT_NE(client.last_session(), nullptr);
    source_ = client.last_session();
    SSL_SESSION_up_ref(source_);
  }
  static void TearDownTestSuite() { SSL_SESSION_free(source_); }

  TlsSessionCacheTest() : ctx_(SSL_CTX_new(TLS_method())) {}

  bssl::UniquePtr<SSL_SESSION> NewSession(const std::string& id) {
    uint8_t* der;
    size_t len;
    EXPECT_TRUE(SSL_SESSION_to_bytes(source_, &der, &len));
    bssl::UniquePtr<SSL_SESSION> s(SSL_SESSION_from_bytes(der, len, ctx_.get()));
    OPENSSL_free(der);
    SSL_SESSION_set1_id(s.get(), reinterpret_cast<const uint8_t*>(id.data()), id.size());
    return s;
  }
  static std::string Id(const SSL_SESSION* s) {
    unsigned len;
    const uint8_t* id = SSL_SESSION_get_id(s, &len);
    return std::string(reinterpret_cast<const char*>(id), len);
  }

  static SSL_SESSION* source_;
  bssl::UniquePtr<SSL_CTX> ctx_;
};

SSL_SESSION* TlsSessionCacheTest::source_ = nullptr;

TEST_F(TlsSessionCacheTest, InsertLookupRemove) {
  FakeClock clock;
  SessionCache cache(Options(clock));
  auto a = NewSession("session-a");
  cache.Insert(a.get());
  EXPECT_EQ(cache.size(), 1u);
  auto found = cache.Lookup("session-a", ctx_.get());
  ASSERT_TRUE(found != nullptr);
  EXPECT_NE(found.get(), a.get());  // a fresh object parsed from bytes
  EXPECT_EQ(Id(found.get()), "session-a");
  EXPECT_TRUE(cache.Lookup("session-b", ctx_.get()) == nullptr);
  cache.Remove("session-a");
  EXPECT_TRUE(cache.Lookup("session-a", ctx_.get()) == nullptr);
  EXPECT_EQ(cache.size(), 0u);

  cache.Insert(NewSession("").get());  // no ID: not cacheable
  EXPECT_EQ(cache.size(), 0u);
}

TEST_F(TlsSessionCacheTest, EvictsOldestAtCapacityAndExpired) {
  FakeClock clock;
  SessionCache cache(Options(clock));  // capacity 3
  for (const char* id : {"s1", "s2", "s3", "s4"}) {
    cache.Insert(NewSession(id).get());
    clock.Advance(absl::Hours(1));
  }
  EXPECT_EQ(cache.size(), 3u);
  EXPECT_TRUE(cache.Lookup("s1", ctx_.get()) == nullptr);
  EXPECT_TRUE(cache.Lookup("s2", ctx_.get()) != nullptr);

  // s2 was inserted at +1 h and expires at +25 h; now is +4 h.
  clock.Advance(absl::Hours(21) - absl::Seconds(1));
  EXPECT_TRUE(cache.Lookup("s2", ctx_.get()) != nullptr);
  clock.Advance(absl::Seconds(1));
  EXPECT_TRUE(cache.Lookup("s2", ctx_.get()) == nullptr);
  EXPECT_EQ(cache.size(), 2u);
  // An insert sweeps expired entries from the old end.
  clock.Advance(absl::Hours(2));
  cache.Insert(NewSession("s5").get());
  EXPECT_EQ(cache.size(), 1u);

  // Re-inserting an ID replaces the entry.
  cache.Insert(NewSession("s5").get());
  EXPECT_EQ(cache.size(), 1u);
}

TEST_F(TlsSessionCacheTest, ZeroCapacityStoresNothing) {
  FakeClock clock;
  ResumptionOptions o = Options(clock);
  o.session_cache_capacity = 0;
  SessionCache cache(o);
  cache.Insert(NewSession("x").get());
  EXPECT_EQ(cache.size(), 0u);
}

}  // namespace
}  // namespace sluice::tls
