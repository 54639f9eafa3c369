#pragma once

// Rate limits with nginx limit_req semantics, and concurrency caps. One
// RateTable and one ConcurrencyTable per process, shared by every worker
// thread: they lock one stripe of their entries per call, never the whole
// table, and never read a clock (callers pass monotonic nanoseconds).

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sluice::policy {

// A rate limit, as nginx's limit_req writes it: "10r/m burst=5 nodelay".
struct RateSpec {
  double rate_per_s = 1;  // > 0; "10r/m" is 10/60
  uint32_t burst = 0;     // requests admitted beyond the rate, queued or not
  uint32_t delay = 0;     // of those, how many pass without delay;
                          // nodelay is delay == burst
};

// Parses space-separated tokens: a rate "Nr/s" or "Nr/m" (N a positive
// integer, at most 1e9 r/s), then optionally "burst=N" (at most 1e6),
// "delay=N" or "nodelay" (not both). A delay above burst is clamped to
// burst. Errors are InvalidArgumentError naming the bad token.
absl::StatusOr<RateSpec> ParseRateSpec(absl::string_view text);

namespace limiter_internal {

// The fixed-size, striped, set-associative store behind both tables: each
// (zone, key) owns at most one slot holding one int64 (a rate limit's
// theoretical arrival time, a concurrency count). Keys are compared by their
// exact bytes, so two different (zone, key) pairs never share a slot; keys
// longer than kMaxInlineKey are stored as their SHA-256 digest instead (a
// digest and an inline key never compare equal). The hash only places a key
// (stripe, set, tag), so a collision costs a compare, never shared state.
// It is absl::Hash seeded with a secret drawn at construction (2 ns where
// SipHash-1-3 takes 14 and BoringSSL's SipHash-2-4 24, over half of a
// Check's 50 ns budget): not a PRF, but a client cannot cheaply aim keys at
// one set, and if it did, eviction takes the set's smallest TAT (the state
// nearest to fresh), so a flood resets the least-limited keys first, not a
// throttled key's debt.
//
// Eviction works per set of kWays slots, not per stripe: a full set gives up
// a slot even while its stripe has free ones elsewhere. That keeps a lookup
// and an insertion at 8 tag compares (a whole-stripe scan would be 256) at
// the cost of evicting somewhat before the table is full.
//
// Layout: up to 256 stripes (65536 entries: 256 stripes of 32 sets of 8),
// each a cache-line-aligned lock over its sets; a slot is 80 bytes (8 value + 4
// zone + 1 length + 64 key bytes, padded), plus a 2-byte tag per slot scanned
// first. A table of 65536 entries thus takes 65536 * 82 B = 5.4 MB, allocated
// once.
class SlotTable {
 public:
  static constexpr size_t kWays = 8;
  static constexpr size_t kMaxInlineKey = 64;
  static constexpr int64_t kEmpty = INT64_MIN;

  // `partitions` (the number of workers) splits the stripes into that many
  // groups; a key placed with a steering hash goes to group hash % partitions
  // (see SteeringHash), others spread over all stripes.
  explicit SlotTable(size_t capacity, size_t partitions = 1);
  ~SlotTable();
  SlotTable(const SlotTable&) = delete;
  SlotTable& operator=(const SlotTable&) = delete;

  // A key in its stored form, with its hash.
  struct Key {
    uint32_t zone;
    uint8_t len;  // kDigestLen marks a SHA-256 digest of a long key
    const char* bytes;
    uint64_t hash;
    char digest[32];
    size_t stripe;
  };
  static constexpr uint8_t kDigestLen = 0xff;

  // Fills `key` for (zone, bytes). `key` must not be moved afterwards. With
  // `steering` the key's stripe is in partition *steering % partitions; a
  // given (zone, bytes) must always come with the same `steering`.
  void MakeKey(uint32_t zone, absl::string_view bytes, Key* key,
               std::optional<uint32_t> steering = std::nullopt) const;

  // The locked view of one set for one key, from Lock() to the destructor:
  // it holds the stripe's spinlock, so keep it for a few instructions and
  // call nothing else on the table meanwhile. `key` must outlive it.
  class Locked {
   public:
    Locked(Locked&&) = delete;
    ~Locked();
    // The key's slot value, or nullptr when the key has no slot.
    int64_t* found() const { return found_; }
    // Gives the key a slot in its set, taking a free one (value <=
    // `free_at_or_below`) or else, when `evict` is set, the one with the
    // smallest value; sets it to `value`. False when no slot could be had.
    bool Insert(int64_t value, int64_t free_at_or_below, bool evict);
    // Frees the key's slot (found() must be non-null).
    void Erase();

   private:
    friend class SlotTable;
    Locked(SlotTable* table, const Key& key);
    SlotTable* table_;
    const Key& key_;
    size_t stripe_;
    size_t set_begin_;  // index of the set's first slot
    int64_t* found_ = nullptr;
    size_t found_index_ = 0;
  };

  // Locks the key's stripe and looks the key up in its set.
  Locked Lock(const Key& key) { return Locked(this, key); }

  // Slots in use (approximate while other threads work).
  size_t size() const;
  // Slots in all (capacity rounded up to whole sets).
  size_t capacity() const { return num_stripes_ * sets_per_stripe_ * kWays; }

 private:
  struct Slot;
  struct Stripe;

  size_t num_stripes_;
  size_t partitions_ = 1;
  size_t stripes_per_partition_ = 1;
  size_t sets_per_stripe_;
  uint64_t seed_;  // secret: mixed into every hash
  std::unique_ptr<Stripe[]> stripes_;
  std::unique_ptr<Slot[]> slots_;
  std::unique_ptr<uint16_t[]> tags_;  // 0 marks an empty slot
};

}  // namespace limiter_internal

// Per-key rate limiting shared by all workers, with nginx limit_req's
// behaviour computed by GCRA (the generic cell rate algorithm): each
// (zone, key) keeps a theoretical arrival time TAT; with T = 1/rate and
// tat0 = max(TAT, now), a request is rejected when tat0 - now > burst * T
// (state unchanged), else TAT becomes tat0 + T and the request waits
// max(0, tat0 - now - delay * T). This is nginx's "excess" arithmetic
// (excess = max(0, excess - rate * elapsed + 1), reject when excess > burst)
// read as TAT = last + (excess + 1) * T (last: the time nginx last
// accounted a request), without its millisecond rounding.
//
// Memory is bounded by `capacity`: when a key's set is full, a slot whose
// TAT <= now (equal to a fresh state) is reused, otherwise the one with the
// smallest TAT; the evicted key starts afresh, as when nginx drops the least
// recently used state of a full zone.
class RateTable {
 public:
  // `capacity`: total entries across all zones (e.g. 65536, 5.4 MB).
  // `partitions`: the number of workers (see SlotTable).
  explicit RateTable(size_t capacity, size_t partitions = 1);

  // The verdict on one request.
  struct RateResult {
    bool allowed;
    // When allowed: how long to hold the request before forwarding it (0 in
    // nodelay mode and for the first `delay` excess requests).
    int64_t delay_ns;
    // When rejected: how long until the same request would be admitted
    // (round up to whole seconds for Retry-After). 0 when allowed.
    int64_t retry_after_ns;
  };

  // Accounts one request of `key` (any bytes: a 16-byte IpAddress, a key or
  // user name) in zone `zone_id` under `spec`, at monotonic time `now_ns`.
  // A rejected request changes nothing. One (zone, key) should always be
  // checked under the same spec (a policy reload may change it; the stored
  // TAT then carries over, as nginx's state does). Thread-safe.
  // `steering`: SteeringHash of the client address when `key` is that
  // address, so its state sits in the stripes of the worker its
  // connections are steered to (no cache line moves between CPUs).
  RateResult Check(uint32_t zone_id, absl::string_view key, const RateSpec& spec, int64_t now_ns,
                   std::optional<uint32_t> steering = std::nullopt);
  // What Check would answer now, without accounting anything.
  // Thread-safe.
  RateResult Peek(uint32_t zone_id, absl::string_view key, const RateSpec& spec, int64_t now_ns,
                  std::optional<uint32_t> steering = std::nullopt);
  // Gives back one request that Check admitted (the same zone, key, spec
  // and steering), as if it had not been counted: the key's TAT moves back
  // by one emission interval (never below `now_ns`; a key without state is
  // left alone). For a count taken before an outcome is known (a password
  // check) and not owed once it is. Thread-safe.
  void Refund(uint32_t zone_id, absl::string_view key, const RateSpec& spec, int64_t now_ns,
              std::optional<uint32_t> steering = std::nullopt);

  // Entries holding some key's state, expired ones included (approximate
  // while other threads work).
  size_t size() const { return slots_.size(); }

 private:
  // Check (account: the request is counted when allowed) and Peek.
  RateResult Decide(uint32_t zone_id, absl::string_view key, const RateSpec& spec, int64_t now_ns,
                    std::optional<uint32_t> steering, bool account);

  limiter_internal::SlotTable slots_;
};

// Per-key caps on requests in flight, shared by all workers.
class ConcurrencyTable {
 public:
  // `capacity`: total entries across all zones; only keys with requests in
  // flight take one.
  explicit ConcurrencyTable(size_t capacity);

  // Takes one of `limit` places of (zone_id, key). False when `limit` are
  // already held, or (failing closed) when the key's set is full of held
  // entries: held entries are never evicted. Each true must be matched by
  // one Release() of the same (zone_id, key). Thread-safe.
  bool Acquire(uint32_t zone_id, absl::string_view key, uint32_t limit);

  // Gives back a place taken by Acquire(); the entry is freed at count 0.
  // A Release() without an Acquire() is ignored. Thread-safe.
  void Release(uint32_t zone_id, absl::string_view key);

  // Places held by (zone_id, key) now (for tests and stats).
  uint32_t Count(uint32_t zone_id, absl::string_view key) const;

  // Keys with places held (approximate while other threads work).
  size_t size() const { return slots_.size(); }

 private:
  // Count() locks a stripe too.
  mutable limiter_internal::SlotTable slots_;
};

}  // namespace sluice::policy
