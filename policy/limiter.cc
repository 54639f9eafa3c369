#include "policy/limiter.h"

#include <openssl/rand.h>
#include <openssl/sha.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <thread>

#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "policy/ip_set.h"

namespace sluice::policy {
namespace {

// Parses a decimal integer of at most `max`; false on anything else.
bool ParseUint(absl::string_view digits, uint64_t max, uint64_t* out) {
  if (digits.empty()) return false;
  uint64_t v = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
    if (v > max) return false;
  }
  *out = v;
  return true;
}

absl::Status BadToken(absl::string_view token, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("rate spec: ", why, " \"", absl::CHexEscape(token), "\""));
}

// Spans beyond this (about 73 years) are clamped, which keeps every sum of
// a TAT, a span and a monotonic clock far from int64 overflow.
constexpr int64_t kMaxSpanNs = int64_t{1} << 61;

int64_t EmissionIntervalNs(double rate_per_s) {
  if (!(rate_per_s > 0)) return kMaxSpanNs;
  const double t = 1e9 / rate_per_s + 0.5;  // rounded; std::round is a call
  if (t >= static_cast<double>(kMaxSpanNs)) return kMaxSpanNs;
  return std::max<int64_t>(1, static_cast<int64_t>(t));
}

int64_t SpanNs(uint32_t n, int64_t interval_ns) {
  int64_t r;
  if (__builtin_mul_overflow(static_cast<int64_t>(n), interval_ns, &r) || r > kMaxSpanNs) {
    return kMaxSpanNs;
  }
  return r;
}

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace

absl::StatusOr<RateSpec> ParseRateSpec(absl::string_view text) {
  RateSpec spec;
  bool have_rate = false, have_burst = false, have_delay = false, nodelay = false;
  uint64_t burst = 0, delay = 0;
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] == ' ' || text[i] == '\t') {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < text.size() && text[end] != ' ' && text[end] != '\t') ++end;
    const absl::string_view token = text.substr(i, end - i);
    i = end;
    if (token == "nodelay") {
      if (nodelay || have_delay) return BadToken(token, "repeated delay");
      nodelay = true;
    } else if (absl::string_view v = token.substr(0, 6); v == "burst=") {
      if (have_burst) return BadToken(token, "repeated");
      if (!ParseUint(token.substr(6), 1000000, &burst)) {
        return BadToken(token, "burst must be 0..1000000 in");
      }
      have_burst = true;
    } else if (v == "delay=") {
      if (nodelay || have_delay) return BadToken(token, "repeated delay");
      if (!ParseUint(token.substr(6), 1000000, &delay)) {
        return BadToken(token, "delay must be 0..1000000 in");
      }
      have_delay = true;
    } else if (token.size() > 3 && (token.substr(token.size() - 3) == "r/s" ||
                                    token.substr(token.size() - 3) == "r/m")) {
      if (have_rate) return BadToken(token, "repeated rate");
      uint64_t n;
      if (!ParseUint(token.substr(0, token.size() - 3), 1000000000, &n) || n == 0) {
        return BadToken(token, "rate must be 1..1000000000 in");
      }
      spec.rate_per_s = token.back() == 'm' ? static_cast<double>(n) / 60 : static_cast<double>(n);
      have_rate = true;
    } else {
      return BadToken(token, "unknown token");
    }
  }
  if (!have_rate) {
    return absl::InvalidArgumentError(
        absl::StrCat("rate spec \"", absl::CHexEscape(text), "\" has no rate (Nr/s or Nr/m)"));
  }
  spec.burst = static_cast<uint32_t>(burst);
  spec.delay = nodelay ? spec.burst : static_cast<uint32_t>(std::min(delay, burst));
  return spec;
}

namespace limiter_internal {

struct SlotTable::Slot {
  int64_t value = kEmpty;
  uint32_t zone = 0;
  uint8_t len = 0;
  char key[kMaxInlineKey];
};

// The lock sits alone on its cache line so that workers on different
// stripes never bounce each other's lines. The critical section is a few
// dozen instructions, hence a spinlock (an uncontended std::mutex costs two
// atomic read-modify-writes; this one, one and a plain store); it yields
// after a short spin in case the holder was preempted.
struct alignas(64) SlotTable::Stripe {
  std::atomic<uint32_t> lock{0};
  std::atomic<uint32_t> live{0};

  void Lock() {
    int spins = 0;
    while (lock.exchange(1, std::memory_order_acquire) != 0) {
      while (lock.load(std::memory_order_relaxed) != 0) {
        if (++spins < 128) {
          CpuRelax();
        } else {
          std::this_thread::yield();
        }
      }
    }
  }
  void Unlock() { lock.store(0, std::memory_order_release); }
};

SlotTable::SlotTable(size_t capacity, size_t partitions) {
  const size_t total_sets = std::max<size_t>(1, (capacity + kWays - 1) / kWays);
  num_stripes_ = std::min<size_t>(256, std::bit_floor(total_sets));
  partitions_ = std::clamp<size_t>(partitions, 1, num_stripes_);
  stripes_per_partition_ = std::bit_floor(num_stripes_ / partitions_);
  sets_per_stripe_ = (total_sets + num_stripes_ - 1) / num_stripes_;
  const size_t slots = num_stripes_ * sets_per_stripe_ * kWays;
  stripes_ = std::make_unique<Stripe[]>(num_stripes_);
  slots_ = std::make_unique<Slot[]>(slots);
  tags_ = std::make_unique<uint16_t[]>(slots);  // value-initialised: 0
  RAND_bytes(reinterpret_cast<uint8_t*>(&seed_), sizeof(seed_));
}

SlotTable::~SlotTable() = default;

void SlotTable::MakeKey(uint32_t zone, absl::string_view bytes, Key* key,
                        std::optional<uint32_t> steering) const {
  key->zone = zone;
  if (bytes.size() <= kMaxInlineKey) {
    key->len = static_cast<uint8_t>(bytes.size());
    key->bytes = bytes.data();
  } else {
    SHA256(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
           reinterpret_cast<uint8_t*>(key->digest));
    key->len = kDigestLen;
    key->bytes = key->digest;
  }
  const size_t n = key->len == kDigestLen ? sizeof(key->digest) : key->len;
  key->hash = absl::HashOf(seed_, zone, absl::string_view(key->bytes, n));
  if (steering.has_value()) {
    // Both factors are cheap: a multiply-shift picks the group (as the
    // steering program picks the worker) and the group size is a power
    // of two.
    key->stripe = SteeringSlot(*steering & 0xffff, static_cast<uint32_t>(partitions_)) *
                      stripes_per_partition_ +
                  (key->hash & (stripes_per_partition_ - 1));
  } else {
    key->stripe = key->hash & (num_stripes_ - 1);
  }
}

// Hash bits: the low 8 pick the stripe (at most 256), bits 8..23 the tag,
// the high 32 the set within the stripe.
SlotTable::Locked::Locked(SlotTable* table, const Key& key) : table_(table), key_(key) {
  stripe_ = key.stripe;
  const size_t set = static_cast<size_t>(((key.hash >> 32) * table->sets_per_stripe_) >> 32);
  set_begin_ = (stripe_ * table->sets_per_stripe_ + set) * kWays;
  const uint16_t tag = static_cast<uint16_t>(key.hash >> 8) | 1;
  const size_t n = key.len == kDigestLen ? sizeof(key.digest) : key.len;
  table->stripes_[stripe_].Lock();
  const uint16_t* tags = &table->tags_[set_begin_];
  for (size_t i = 0; i < kWays; ++i) {
    if (tags[i] != tag) continue;
    Slot& s = table->slots_[set_begin_ + i];
    if (s.zone == key.zone && s.len == key.len && std::memcmp(s.key, key.bytes, n) == 0) {
      found_ = &s.value;
      found_index_ = set_begin_ + i;
      break;
    }
  }
}

SlotTable::Locked::~Locked() { table_->stripes_[stripe_].Unlock(); }

bool SlotTable::Locked::Insert(int64_t value, int64_t free_at_or_below, bool evict) {
  Slot* slots = &table_->slots_[set_begin_];
  size_t pick = kWays;
  size_t oldest = 0;
  for (size_t i = 0; i < kWays; ++i) {
    if (slots[i].value <= free_at_or_below) {
      pick = i;
      break;
    }
    if (slots[i].value < slots[oldest].value) oldest = i;
  }
  if (pick == kWays) {
    if (!evict) return false;
    pick = oldest;
  }
  const size_t index = set_begin_ + pick;
  Slot& s = slots[pick];
  if (table_->tags_[index] == 0) {
    table_->stripes_[stripe_].live.fetch_add(1, std::memory_order_relaxed);
  }
  table_->tags_[index] = static_cast<uint16_t>(key_.hash >> 8) | 1;
  s.zone = key_.zone;
  s.len = key_.len;
  std::memcpy(s.key, key_.bytes, key_.len == kDigestLen ? sizeof(key_.digest) : key_.len);
  s.value = value;
  found_ = &s.value;
  found_index_ = index;
  return true;
}

void SlotTable::Locked::Erase() {
  table_->tags_[found_index_] = 0;
  table_->slots_[found_index_].value = kEmpty;
  table_->stripes_[stripe_].live.fetch_sub(1, std::memory_order_relaxed);
  found_ = nullptr;
}

size_t SlotTable::size() const {
  size_t n = 0;
  for (size_t i = 0; i < num_stripes_; ++i) {
    n += stripes_[i].live.load(std::memory_order_relaxed);
  }
  return n;
}

}  // namespace limiter_internal

RateTable::RateTable(size_t capacity, size_t partitions) : slots_(capacity, partitions) {}

RateTable::RateResult RateTable::Decide(uint32_t zone_id, absl::string_view key,
                                        const RateSpec& spec, int64_t now_ns,
                                        std::optional<uint32_t> steering, bool account) {
  const int64_t interval = EmissionIntervalNs(spec.rate_per_s);
  const int64_t burst_span = SpanNs(spec.burst, interval);
  const int64_t delay_span = SpanNs(spec.delay, interval);
  limiter_internal::SlotTable::Key k;
  slots_.MakeKey(zone_id, key, &k, steering);
  auto locked = slots_.Lock(k);
  int64_t* tat = locked.found();
  const int64_t tat0 = tat != nullptr ? std::max(*tat, now_ns) : now_ns;
  const int64_t wait = tat0 - now_ns;
  if (wait > burst_span) return {false, 0, wait - burst_span};
  if (account && tat != nullptr) {
    *tat = tat0 + interval;
  } else if (account) {
    locked.Insert(tat0 + interval, now_ns, /*evict=*/true);
  }
  return {true, std::max<int64_t>(0, wait - delay_span), 0};
}

RateTable::RateResult RateTable::Check(uint32_t zone_id, absl::string_view key,
                                       const RateSpec& spec, int64_t now_ns,
                                       std::optional<uint32_t> steering) {
  return Decide(zone_id, key, spec, now_ns, steering, /*account=*/true);
}

RateTable::RateResult RateTable::Peek(uint32_t zone_id, absl::string_view key, const RateSpec& spec,
                                      int64_t now_ns, std::optional<uint32_t> steering) {
  return Decide(zone_id, key, spec, now_ns, steering, /*account=*/false);
}

void RateTable::Refund(uint32_t zone_id, absl::string_view key, const RateSpec& spec,
                       int64_t now_ns, std::optional<uint32_t> steering) {
  const int64_t interval = EmissionIntervalNs(spec.rate_per_s);
  limiter_internal::SlotTable::Key k;
  slots_.MakeKey(zone_id, key, &k, steering);
  auto locked = slots_.Lock(k);
  int64_t* tat = locked.found();
  if (tat == nullptr || *tat <= now_ns) return;
  *tat = std::max(*tat - interval, now_ns);
}

ConcurrencyTable::ConcurrencyTable(size_t capacity) : slots_(capacity) {}

bool ConcurrencyTable::Acquire(uint32_t zone_id, absl::string_view key, uint32_t limit) {
  if (limit == 0) return false;
  limiter_internal::SlotTable::Key k;
  slots_.MakeKey(zone_id, key, &k);
  auto locked = slots_.Lock(k);
  if (int64_t* count = locked.found()) {
    if (*count >= limit) return false;
    ++*count;
    return true;
  }
  return locked.Insert(1, 0, /*evict=*/false);
}

void ConcurrencyTable::Release(uint32_t zone_id, absl::string_view key) {
  limiter_internal::SlotTable::Key k;
  slots_.MakeKey(zone_id, key, &k);
  auto locked = slots_.Lock(k);
  int64_t* count = locked.found();
  if (count == nullptr) return;
  if (--*count <= 0) locked.Erase();
}

uint32_t ConcurrencyTable::Count(uint32_t zone_id, absl::string_view key) const {
  limiter_internal::SlotTable::Key k;
  slots_.MakeKey(zone_id, key, &k);
  auto locked = slots_.Lock(k);
  return locked.found() ? static_cast<uint32_t>(*locked.found()) : 0;
}

}  // namespace sluice::policy
