#include "tls/resumption.h"

#include <openssl/rand.h>

#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/base/attributes.h"
#include "absl/strings/string_view.h"

namespace sluice::tls {
namespace {

constexpr size_t kKeyLen = 32;
constexpr size_t kNonceLen = 24;  // XChaCha20-Poly1305
constexpr size_t kTagLen = 16;

const EVP_AEAD* TicketAead() { return EVP_aead_xchacha20_poly1305(); }

absl::string_view AbslView(std::string_view s) { return absl::string_view(s.data(), s.size()); }

}  // namespace

TicketKeyRing::TicketKeyRing(const ResumptionOptions& options)
    : lifetime_(options.session_lifetime),
      rotation_(options.ticket_key_rotation),
      clock_(options.clock) {
  std::unique_lock lock(mu_);
  RotateLocked(clock_());
}

size_t TicketKeyRing::MaxOverhead() { return kNameLen + kNonceLen + kTagLen; }

void TicketKeyRing::RotateLocked(absl::Time now) {
  auto key = std::make_unique<Key>();
  uint8_t secret[kKeyLen];
  RAND_bytes(key->name, sizeof(key->name));
  RAND_bytes(secret, sizeof(secret));
  // Out of memory is the only way this fails; a server without ticket keys
  // would silently stop resuming, so treat it as fatal.
  if (!EVP_AEAD_CTX_init(key->aead.get(), TicketAead(), secret, sizeof(secret), kTagLen, nullptr)) {
    std::abort();
  }
  OPENSSL_cleanse(secret, sizeof(secret));
  key->created = now;
  if (!keys_.empty()) keys_.front()->retired = now;
  keys_.insert(keys_.begin(), std::move(key));
  // A key retired at R sealed its last ticket before R; that ticket lives
  // until R + lifetime at most, so the key may go after that.
  while (keys_.size() > 1 && now - keys_.back()->retired > lifetime_) {
    keys_.pop_back();
  }
}

void TicketKeyRing::Rotate() {
  std::unique_lock lock(mu_);
  RotateLocked(clock_());
}

size_t TicketKeyRing::key_count() const {
  std::shared_lock lock(mu_);
  return keys_.size();
}

bool TicketKeyRing::Seal(uint8_t* out, size_t* out_len, size_t max_out, const uint8_t* in,
                         size_t in_len) {
  absl::Time now = clock_();
  bool due;
  {
    std::shared_lock lock(mu_);
    due = now - keys_.front()->created >= rotation_;
  }
  if (due) {
    std::unique_lock lock(mu_);
    // Another thread may have rotated between the two locks.
    if (now - keys_.front()->created >= rotation_) RotateLocked(now);
  }
  if (max_out < kNameLen + kNonceLen) return false;
  std::shared_lock lock(mu_);
  const Key& key = *keys_.front();
  std::memcpy(out, key.name, kNameLen);
  uint8_t* nonce = out + kNameLen;
  RAND_bytes(nonce, kNonceLen);
  size_t sealed = 0;
  if (!EVP_AEAD_CTX_seal(key.aead.get(), out + kNameLen + kNonceLen, &sealed,
                         max_out - kNameLen - kNonceLen, nonce, kNonceLen, in, in_len, key.name,
                         kNameLen)) {
    return false;
  }
  *out_len = kNameLen + kNonceLen + sealed;
  return true;
}

bool TicketKeyRing::Open(uint8_t* out, size_t* out_len, size_t max_out, const uint8_t* in,
                         size_t in_len) {
  if (in_len < kNameLen + kNonceLen + kTagLen) return false;
  absl::Time now = clock_();
  std::shared_lock lock(mu_);
  for (const auto& key : keys_) {
    if (std::memcmp(key->name, in, kNameLen) != 0) continue;
    if (now - key->retired > lifetime_) return false;
    const uint8_t* nonce = in + kNameLen;
    const uint8_t* sealed = nonce + kNonceLen;
    return EVP_AEAD_CTX_open(key->aead.get(), out, out_len, max_out, nonce, kNonceLen, sealed,
                             in_len - kNameLen - kNonceLen, key->name, kNameLen) == 1;
  }
  return false;
}

SessionCache::SessionCache(const ResumptionOptions& options)
    : capacity_(options.session_cache_capacity),
      lifetime_(options.session_lifetime),
      clock_(options.clock) {}

void SessionCache::EvictExpiredLocked(absl::Time now) {
  while (!fifo_.empty() && fifo_.front().expires <= now) {
    index_.erase(AbslView(fifo_.front().id));
    fifo_.pop_front();
  }
}

void SessionCache::Insert(const SSL_SESSION* session) {
  if (capacity_ == 0) return;
  unsigned id_len = 0;
  const uint8_t* id = SSL_SESSION_get_id(session, &id_len);
  if (id_len == 0) return;
  uint8_t* der = nullptr;
  size_t der_len = 0;
  if (!SSL_SESSION_to_bytes(session, &der, &der_len)) return;
  Entry entry;
  entry.id.assign(reinterpret_cast<const char*>(id), id_len);
  entry.bytes.assign(reinterpret_cast<const char*>(der), der_len);
  OPENSSL_free(der);

  absl::Time now = clock_();
  entry.expires = now + lifetime_;
  std::lock_guard lock(mu_);
  EvictExpiredLocked(now);
  auto found = index_.find(AbslView(entry.id));
  if (found != index_.end()) {
    fifo_.erase(found->second);
    index_.erase(found);
  }
  while (fifo_.size() >= capacity_) {
    index_.erase(AbslView(fifo_.front().id));
    fifo_.pop_front();
  }
  fifo_.push_back(std::move(entry));
  auto it = std::prev(fifo_.end());
  index_.emplace(it->id, it);
}

bssl::UniquePtr<SSL_SESSION> SessionCache::Lookup(std::string_view id, const SSL_CTX* ctx) {
  std::string bytes;
  {
    absl::Time now = clock_();
    std::lock_guard lock(mu_);
    auto found = index_.find(AbslView(id));
    if (found == index_.end()) return nullptr;
    if (found->second->expires <= now) {
      fifo_.erase(found->second);
      index_.erase(found);
      return nullptr;
    }
    bytes = found->second->bytes;
  }
  // Parsing outside the lock: it allocates and is the costly part.
  return bssl::UniquePtr<SSL_SESSION>(
      SSL_SESSION_from_bytes(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), ctx));
}

void SessionCache::Remove(std::string_view id) {
  std::lock_guard lock(mu_);
  auto found = index_.find(AbslView(id));
  if (found == index_.end()) return;
  fifo_.erase(found->second);
  index_.erase(found);
}

size_t SessionCache::size() const {
  std::lock_guard lock(mu_);
  return fifo_.size();
}

Resumption::Resumption(ResumptionOptions options)
    : options_(std::move(options)), ticket_keys_(options_), session_cache_(options_) {}

}  // namespace sluice::tls
