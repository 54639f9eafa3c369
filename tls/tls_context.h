#pragma once

// The server TLS configuration shared by every connection of a listener: one
// BoringSSL SSL_CTX with the certificate, protocol and cipher settings, ALPN
// selection, and the hooks into the shared resumption state.

#include <openssl/ssl.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "tls/resumption.h"

namespace sluice::tls {

struct TlsContextOptions {
  // PEM file with the leaf certificate first, then its intermediates (a
  // Let's Encrypt fullchain.pem). ECDSA and RSA leaves both work.
  std::string cert_chain_path;
  // PEM file with the leaf's private key (PKCS#8, SEC1 or PKCS#1; not
  // encrypted).
  std::string key_path;
  // RFC 5077 / TLS 1.3 session tickets, sealed with the shared
  // TicketKeyRing. Off: TLS 1.2 clients still resume through the session
  // cache; TLS 1.3 clients do not resume (BoringSSL resumes TLS 1.3 by
  // ticket only).
  bool session_tickets = true;
  // The server-side session cache for TLS 1.2 session IDs.
  bool session_cache = true;
  // ALPN protocols in server preference order. The first one the client
  // also offers wins ("h2" before "http/1.1" whatever the client's order).
  // "http/1.1" also accepts a client offering only "http/1.0" (selected as
  // such; the HTTP/1.x codec serves both), as nginx does. A client that
  // offers ALPN but none of these is refused with a no_application_protocol
  // alert (RFC 7301 3.2, as nginx does). Empty disables ALPN: every client
  // then gets HTTP/1.1.
  std::vector<std::string> alpn = {"h2", "http/1.1"};
};

// An immutable server TLS context. Build it with Create (at startup) or
// Reload (on SIGHUP), share it as std::shared_ptr<const TlsContext>: every
// TlsSession holds a reference, so a reload swaps the pointer the workers
// hand to new connections while existing connections keep theirs.
//
// Settings: TLS 1.2 and 1.3 only; TLS 1.2 suites are ECDHE with AES-GCM or
// ChaCha20-Poly1305 (ECDSA or RSA authentication, whichever the key is);
// TLS 1.3 suites are BoringSSL's fixed set (AES-GCM, ChaCha20-Poly1305).
// The client's cipher order wins (no server preference), as in the nginx
// baseline. 0-RTT early data is off (replayable). Renegotiation is refused
// (BoringSSL servers never renegotiate).
//
// Thread-safe: an SSL_CTX is safe to use from many threads once configured,
// and nothing configures it after Create returns.
class TlsContext {
 public:
  // Reads the certificate chain and key (blocking file reads: call it off
  // the event loop) and builds a context with fresh resumption state.
  // Errors, each message naming the file: kNotFound (missing file),
  // kPermissionDenied (unreadable), kInvalidArgument (no or bad PEM block, an
  // encrypted key, a key that does not match the leaf certificate, a bad
  // ALPN name).
  static absl::StatusOr<std::shared_ptr<const TlsContext>> Create(TlsContextOptions options);

  // As above, sharing `resumption` (ticket keys, session cache) with every
  // other context built from it.
  static absl::StatusOr<std::shared_ptr<const TlsContext>> Create(
      TlsContextOptions options, std::shared_ptr<Resumption> resumption);

  // A new context from `options` (usually the same paths, with new file
  // contents) that keeps this one's resumption state, so sessions and
  // tickets issued before the reload still resume after it, and it sets the
  // same session ID context. One exception: when the key type changes
  // (ECDSA to RSA), a TLS 1.2 session's suite names the old type and
  // BoringSSL falls back to a full handshake; TLS 1.3 sessions still resume.
  // This context is unchanged; on error the caller keeps using it.
  absl::StatusOr<std::shared_ptr<const TlsContext>> Reload(TlsContextOptions options) const;

  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  // The BoringSSL context, for SSL_new. Do not configure it: it is shared by
  // every thread. Valid as long as this object.
  SSL_CTX* ssl_ctx() const { return ctx_.get(); }
  const TlsContextOptions& options() const { return options_; }
  const std::shared_ptr<Resumption>& resumption() const { return resumption_; }

 private:
  TlsContext(TlsContextOptions options, std::shared_ptr<Resumption> resumption);

  friend struct TlsContextCallbacks;

  const TlsContextOptions options_;
  const std::shared_ptr<Resumption> resumption_;
  bssl::UniquePtr<SSL_CTX> ctx_;
  // options_.alpn in wire format (length-prefixed), for the ALPN callback.
  std::string alpn_wire_;
};

}  // namespace sluice::tls
