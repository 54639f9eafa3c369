#pragma once

// A per-worker cache of HTTP Basic verification results, so a client that
// sends the same credentials on every request pays for bcrypt once per TTL
// instead of once per request (tens of ms each at common costs).

#include <openssl/sha.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace sluice::policy {

// What BasicAuthCache::Lookup knows about a user and password.
enum class CacheResult {
  kMiss,     // nothing fresh: verify (Htpasswd::Verify), then Insert
  kValid,    // verified recently: accept
  kInvalid,  // refused recently: refuse without verifying again
};

// Verification results by (user, password). Not thread-safe: each worker
// owns one. Movable, not copyable.
//
// Never holds a password or a plain hash of one: an entry's key is
// HMAC-SHA256 under a random 32-byte secret drawn at construction (never
// stored elsewhere, so a memory dump of the cache is not an offline
// dictionary target), over the user's length, the user and the password,
// truncated to 16 bytes. (The length prefix, rather than a separator, keeps
// ("a\0b", "c") and ("a", "b\0c") apart.)
//
// An entry counts only for the policy generation it was made under (a
// reload that changes the users makes every entry a miss) and until its
// TTL, positive or negative, runs out. At capacity an insert evicts an
// expired or stale entry when the CLOCK hand meets one, otherwise the
// least recently used one approximately (CLOCK: a slot read since the hand
// last passed gets a second chance). Memory: 40 bytes a slot plus about 24
// bytes of index (20-byte entries, one control byte, at most 7/8 full), so
// 10000 entries take ~0.64 MB.
class BasicAuthCache {
 public:
  // A cache of at most `capacity` entries (0 disables it: every Lookup
  // misses). Valid results are kept for `positive_ttl`, refusals for
  // `negative_ttl`; a TTL of zero or less keeps none of that kind.
  BasicAuthCache(size_t capacity, absl::Duration positive_ttl, absl::Duration negative_ttl);
  BasicAuthCache(BasicAuthCache&&) = default;
  BasicAuthCache& operator=(BasicAuthCache&&) = default;
  ~BasicAuthCache();

  // What the cache holds for (`user`, `password`) under policy
  // `generation` at time `now_ns` (any monotonic clock, in nanoseconds, the
  // same for every call): kMiss for no entry, an expired one or one from
  // another generation. The arguments are only read during the call. Costs
  // one HMAC-SHA256 (two SHA-256 blocks for credentials up to 47 bytes)
  // and a hash-table probe.
  CacheResult Lookup(absl::string_view user, absl::string_view password, uint64_t generation,
                     int64_t now_ns);

  // Records that (`user`, `password`) verified (`valid`) or did not under
  // `generation` at `now_ns`, replacing any entry for them.
  void Insert(absl::string_view user, absl::string_view password, bool valid, uint64_t generation,
              int64_t now_ns);

  // Entries held, fresh or not.
  size_t size() const { return index_.size(); }

  // Most entries held.
  size_t capacity() const { return slots_.size(); }

 private:
  using Key = std::array<uint8_t, 16>;
  // The key is an HMAC output, uniform and secret-keyed: its first 8 bytes
  // are already a good hash.
  struct KeyHash {
    size_t operator()(const Key& k) const {
      uint64_t h;
      std::memcpy(&h, k.data(), sizeof(h));
      return static_cast<size_t>(h);
    }
  };
  struct Slot {
    Key key;
    uint64_t generation = 0;
    int64_t expires_ns = 0;
    bool used = false;
    bool valid = false;
    bool referenced = false;  // read since the CLOCK hand last passed
  };
  Key MakeKey(absl::string_view user, absl::string_view password);
  // A slot for a new entry: a free one, or one the CLOCK hand evicts.
  uint32_t TakeSlot(uint64_t generation, int64_t now_ns);

  int64_t positive_ttl_ns_;
  int64_t negative_ttl_ns_;
  // HMAC-SHA256's inner and outer hashes with the secret's padded blocks
  // already absorbed: each MakeKey copies them (RFC 2104 section 4's
  // precomputation), so a key costs two SHA-256 blocks and no EVP layer:
  // a cache hit measured 184 ns through BoringSSL's HMAC_CTX, ~135 ns so
  // (bench/auth_benchmark, BM_BasicAuthCacheHit).
  SHA256_CTX inner_;
  SHA256_CTX outer_;
  std::vector<Slot> slots_;
  absl::flat_hash_map<Key, uint32_t, KeyHash> index_;  // key -> slot
  uint32_t next_unused_ = 0;                           // slots below this have been used
  uint32_t hand_ = 0;                                  // CLOCK hand
};

}  // namespace sluice::policy
