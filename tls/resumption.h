#pragma once

// Session resumption state that outlives any one TlsContext: the session
// ticket keys and the server-side session cache. One Resumption object is
// shared (std::shared_ptr) by every worker thread and by every context built
// from it, so a client keeps resuming after a certificate reload (SIGHUP) and
// whichever worker its next connection lands on.

#include <openssl/aead.h>
#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace sluice::tls {

struct ResumptionOptions {
  // How long a session may be resumed after its full handshake: the TLS 1.2
  // session timeout and the TLS 1.3 ticket lifetime. One day, as the nginx
  // baseline's ssl_session_timeout.
  absl::Duration session_lifetime = absl::Hours(24);
  // How often a fresh ticket key takes over encryption. A retired key still
  // decrypts for `session_lifetime`, so rotation never shortens a ticket's
  // life; it bounds how much traffic one stolen key exposes (TLS 1.2 tickets
  // carry the master secret). One hour, as nginx rotates its shared keys.
  absl::Duration ticket_key_rotation = absl::Hours(1);
  // Sessions kept by the server-side cache (TLS 1.2 session IDs). About
  // 350 bytes each once serialized: 40000 is ~14 MB at most, the order of
  // the baseline's `ssl_session_cache shared:SSL:10m` (~40000 sessions).
  size_t session_cache_capacity = 40000;
  // The time source; tests replace it. Called from any worker thread, so it
  // must be thread-safe.
  std::function<absl::Time()> clock = [] { return absl::Now(); };
};

// Session ticket encryption keys, rotated lazily. Thread-safe: Seal and Open
// run concurrently from every worker under a reader lock (one AEAD call on a
// few hundred bytes); rotation takes the writer lock once per
// `ticket_key_rotation`. (std::shared_mutex rather than absl::Mutex: the
// Debian abseil is not built for ThreadSanitizer, which then cannot see
// absl::Mutex's ordering and reports false races.)
//
// Why our own keys instead of BoringSSL's: BoringSSL generates a per-SSL_CTX
// ticket key and rotates it every 48 hours (SSL_DEFAULT_TICKET_KEY_ROTATION_
// INTERVAL), but that key lives and dies with its SSL_CTX, so a reload that
// builds a new SSL_CTX would invalidate every outstanding ticket. Installing
// our own keys (SSL_CTX_set_ticket_aead_method) turns BoringSSL's automatic
// rotation off, so this class rotates them itself.
//
// Ticket format: key name (16 random bytes) | nonce (24 random bytes) |
// XChaCha20-Poly1305(session) with the key name as associated data. The
// 192-bit random nonce makes nonce reuse negligible however long a key is
// used, whatever `ticket_key_rotation` is set to.
class TicketKeyRing {
 public:
  static constexpr size_t kNameLen = 16;

  explicit TicketKeyRing(const ResumptionOptions& options);
  TicketKeyRing(const TicketKeyRing&) = delete;
  TicketKeyRing& operator=(const TicketKeyRing&) = delete;

  // Bytes a sealed ticket adds to the session: name, nonce, tag.
  static size_t MaxOverhead();

  // Encrypts `in` with the current key (rotating first when it is due) into
  // `out`, which has room for `max_out` bytes; the length goes to `*out_len`.
  // Returns false only when `max_out` is too small or the AEAD fails. The
  // buffers belong to the caller and are used only during the call.
  bool Seal(uint8_t* out, size_t* out_len, size_t max_out, const uint8_t* in, size_t in_len);

  // Decrypts a ticket sealed by Seal with a key that is current or retired
  // less than `session_lifetime` ago. Returns false (the ticket is then
  // ignored and a full handshake follows) for an unknown or expired key, a
  // truncated ticket, or a failed authentication check.
  bool Open(uint8_t* out, size_t* out_len, size_t max_out, const uint8_t* in, size_t in_len);

  // Retires the current key now and starts a new one (tests; an operator
  // command). Keys retired more than `session_lifetime` ago are dropped.
  void Rotate();

  // Keys held: the current one and those retired still able to decrypt.
  size_t key_count() const;

 private:
  struct Key {
    uint8_t name[kNameLen];
    bssl::ScopedEVP_AEAD_CTX aead;
    absl::Time created;
    absl::Time retired = absl::InfiniteFuture();
  };

  // Needs mu_ held exclusively.
  void RotateLocked(absl::Time now);

  const absl::Duration lifetime_;
  const absl::Duration rotation_;
  const std::function<absl::Time()> clock_;
  mutable std::shared_mutex mu_;
  // Guarded by mu_. keys_.front() is the current key; the rest are retired,
  // newest first.
  std::vector<std::unique_ptr<Key>> keys_;
};

// A bounded server-side session cache keyed by TLS 1.2 session ID, used by
// BoringSSL through the external cache callbacks (the internal one is off so
// the cache can outlive an SSL_CTX). Thread-safe (one mutex; a lookup or an
// insert is a hash probe plus a copy of ~350 bytes, next to a full handshake
// of several hundred microseconds).
//
// Sessions are stored serialized (SSL_SESSION_to_bytes) rather than as
// SSL_SESSION objects: about half the memory, and no tie to the SSL_CTX that
// made them. Eviction is first-in first-out: every entry has the same
// lifetime, so the oldest entry is also the one that expires first.
class SessionCache {
 public:
  explicit SessionCache(const ResumptionOptions& options);
  SessionCache(const SessionCache&) = delete;
  SessionCache& operator=(const SessionCache&) = delete;

  // Stores `session` (serialized; the caller keeps its reference) under its
  // session ID, evicting expired entries and then the oldest at capacity.
  // Sessions with an empty ID are ignored.
  void Insert(const SSL_SESSION* session);

  // A new session object for `id`, parsed against `ctx` (the context of the
  // handshake asking), or null when absent or expired. The caller owns the
  // result.
  bssl::UniquePtr<SSL_SESSION> Lookup(std::string_view id, const SSL_CTX* ctx);

  // Drops `id` if present.
  void Remove(std::string_view id);

  size_t size() const;

 private:
  struct Entry {
    std::string id;
    std::string bytes;
    absl::Time expires;
  };
  using List = std::list<Entry>;

  // Needs mu_ held.
  void EvictExpiredLocked(absl::Time now);

  const size_t capacity_;
  const absl::Duration lifetime_;
  const std::function<absl::Time()> clock_;
  mutable std::mutex mu_;
  // Guarded by mu_.
  List fifo_;  // oldest first
  absl::flat_hash_map<std::string, List::iterator> index_;
};

// Everything resumption needs, shared by all contexts of one listener
// (tickets, session cache, lifetime). Create once at startup; pass the same
// pointer to every TlsContext built later (TlsContext::Reload does).
class Resumption {
 public:
  explicit Resumption(ResumptionOptions options = {});
  Resumption(const Resumption&) = delete;
  Resumption& operator=(const Resumption&) = delete;

  const ResumptionOptions& options() const { return options_; }
  TicketKeyRing& ticket_keys() { return ticket_keys_; }
  SessionCache& session_cache() { return session_cache_; }

 private:
  const ResumptionOptions options_;
  TicketKeyRing ticket_keys_;
  SessionCache session_cache_;
};

}  // namespace sluice::tls
