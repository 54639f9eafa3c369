#include "policy/basic_auth_cache.h"

#include <openssl/mem.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cstdlib>
#include <limits>

namespace sluice::policy {
namespace {

int64_t TtlNs(absl::Duration ttl) {
  return ttl <= absl::ZeroDuration() ? 0 : absl::ToInt64Nanoseconds(ttl);
}

}  // namespace

BasicAuthCache::BasicAuthCache(size_t capacity, absl::Duration positive_ttl,
                               absl::Duration negative_ttl)
    : positive_ttl_ns_(TtlNs(positive_ttl)),
      negative_ttl_ns_(TtlNs(negative_ttl)),
      slots_(std::min<size_t>(capacity, std::numeric_limits<uint32_t>::max())) {
  // HMAC (RFC 2104) with a 32-byte key: the key zero-padded to the 64-byte
  // block, XORed with 0x36 for the inner hash and 0x5c for the outer.
  uint8_t block[SHA256_CBLOCK] = {};
  // BoringSSL's RAND_bytes aborts rather than return failure; check anyway.
  if (RAND_bytes(block, 32) != 1) std::abort();
  for (uint8_t& b : block) b ^= 0x36;
  SHA256_Init(&inner_);
  SHA256_Update(&inner_, block, sizeof(block));
  for (uint8_t& b : block) b ^= 0x36 ^ 0x5c;
  SHA256_Init(&outer_);
  SHA256_Update(&outer_, block, sizeof(block));
  OPENSSL_cleanse(block, sizeof(block));
  index_.reserve(slots_.size());
}

BasicAuthCache::~BasicAuthCache() {
  OPENSSL_cleanse(&inner_, sizeof(inner_));
  OPENSSL_cleanse(&outer_, sizeof(outer_));
}

BasicAuthCache::Key BasicAuthCache::MakeKey(absl::string_view user, absl::string_view password) {
  uint8_t length[8];
  uint64_t n = user.size();
  for (uint8_t& b : length) {
    b = static_cast<uint8_t>(n);
    n >>= 8;
  }
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256_CTX ctx = inner_;
  SHA256_Update(&ctx, length, sizeof(length));
  SHA256_Update(&ctx, user.data(), user.size());
  SHA256_Update(&ctx, password.data(), password.size());
  SHA256_Final(digest, &ctx);
  ctx = outer_;
  SHA256_Update(&ctx, digest, sizeof(digest));
  SHA256_Final(digest, &ctx);
  Key key;
  std::memcpy(key.data(), digest, key.size());
  return key;
}

CacheResult BasicAuthCache::Lookup(absl::string_view user, absl::string_view password,
                                   uint64_t generation, int64_t now_ns) {
  if (index_.empty()) return CacheResult::kMiss;
  auto it = index_.find(MakeKey(user, password));
  if (it == index_.end()) return CacheResult::kMiss;
  Slot& slot = slots_[it->second];
  if (slot.generation != generation || now_ns >= slot.expires_ns) {
    return CacheResult::kMiss;
  }
  slot.referenced = true;
  return slot.valid ? CacheResult::kValid : CacheResult::kInvalid;
}

void BasicAuthCache::Insert(absl::string_view user, absl::string_view password, bool valid,
                            uint64_t generation, int64_t now_ns) {
  if (slots_.empty()) return;
  const int64_t ttl_ns = valid ? positive_ttl_ns_ : negative_ttl_ns_;
  Key key = MakeKey(user, password);
  auto it = index_.find(key);
  if (ttl_ns == 0) {
    // Nothing of this kind is kept; drop what an earlier result left.
    if (it != index_.end()) {
      slots_[it->second].used = false;
      index_.erase(it);
    }
    return;
  }
  uint32_t i;
  if (it != index_.end()) {
    i = it->second;
  } else {
    i = TakeSlot(generation, now_ns);
    index_.emplace(key, i);
  }
  Slot& slot = slots_[i];
  slot.key = key;
  slot.generation = generation;
  slot.expires_ns = now_ns > std::numeric_limits<int64_t>::max() - ttl_ns
                        ? std::numeric_limits<int64_t>::max()
                        : now_ns + ttl_ns;
  slot.used = true;
  slot.valid = valid;
  // Not referenced yet: credentials seen once (a password-guessing run)
  // go before those that are read again.
  slot.referenced = false;
}

uint32_t BasicAuthCache::TakeSlot(uint64_t generation, int64_t now_ns) {
  const uint32_t capacity = static_cast<uint32_t>(slots_.size());
  if (next_unused_ < capacity) return next_unused_++;
  // Two turns at most: the first clears every reference bit it passes.
  for (uint64_t step = 0; step <= 2 * uint64_t{capacity}; ++step) {
    const uint32_t i = hand_;
    hand_ = hand_ + 1 == capacity ? 0 : hand_ + 1;
    Slot& slot = slots_[i];
    if (!slot.used) return i;
    const bool stale = slot.generation != generation || now_ns >= slot.expires_ns;
    if (stale || !slot.referenced) {
      index_.erase(slot.key);
      slot.used = false;
      return i;
    }
    slot.referenced = false;
  }
  std::abort();  // unreachable: the second turn finds a cleared bit
}

}  // namespace sluice::policy
