#pragma once

// One server-side TLS connection over memory buffers. The engine owns the
// socket: it feeds the ciphertext it received, sends the ciphertext this
// session produces, and passes plaintext between this session and the HTTP
// codec. No socket, file descriptor or event loop is touched here (h2o's
// custom-BIO pattern), so the session is unit-testable and fuzzable alone.
//
// Typical use, on the worker that owns the connection:
//   TlsSession tls(current_context);
//   on recv(bytes):   status = tls.Feed(bytes, &plain);
//                     if handshake_done(): pick the codec by alpn(), hand it
//                     `plain`; if HasOutput(): TakeOutput(&iov) and send.
//                     If !status.ok(): send what output there is (an alert),
//                     then close.
//   on response data: tls.Write(bytes) or WriteV(pieces); TakeOutput; send.
//   to close:         tls.Shutdown(); TakeOutput; send; close.
//
// Memory. An idle session (handshake done, nothing pending) holds:
//   - this object (136 bytes) and one reference to the TlsContext;
//   - BoringSSL's SSL with its record state: the SSL and SSL3_STATE
//     structures, the read and write AEAD contexts and the established
//     SSL_SESSION; our BIO.
// It holds no record buffer: BoringSSL allocates its read buffer only while
// a record is incomplete and its write buffer only while a record is being
// written, and frees each once drained (SSL_MODE_RELEASE_BUFFERS is a no-op
// defined to 0 in BoringSSL, which always behaves this way). The handshake
// state (SSL_HANDSHAKE, transcript, key shares) is freed when the handshake
// ends, and SSL_set_shed_handshake_config drops this connection's copy of the
// certificate/key/cipher configuration then too. Our own buffers are freed
// when their Slices are: plaintext blocks once the codec drops its slices,
// output blocks once TakeOutput's slices are sent and dropped.
// Measured (tls_session_test.cc, IdleSessionMemory; glibc heap in use per
// session, ECDSA P-256, X25519): 2.8 KiB for TLS 1.2, 3.3 KiB for TLS 1.3.
// The same measurement of an idle OpenSSL 3.0 server SSL, as nginx keeps
// per connection (SSL_MODE_RELEASE_BUFFERS, tickets off): 13.1 KiB for TLS
// 1.2, 14.6 KiB for TLS 1.3. So about a quarter of nginx's TLS state.
// While a connection is busy add at most: one 16 KiB output block per send
// in flight, BoringSSL's ~16.7 KiB read buffer while a record is partial,
// and the plaintext blocks the codec still holds.
//
// Not thread-safe; a session lives and dies on its worker. Not movable: the
// BIO refers to `this`.

#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "core/engine/slice.h"
#include "tls/tls_context.h"

namespace sluice::tls {

class TlsSession {
 public:
  // A server session using `context`, which it keeps alive (a reload does
  // not affect sessions already created).
  explicit TlsSession(std::shared_ptr<const TlsContext> context);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  // Takes all of `ciphertext` (bytes of an incomplete record are buffered
  // inside BoringSSL; the caller may reuse its buffer as soon as Feed
  // returns), advances the handshake, and appends the decrypted application
  // data to `*plaintext` as Slices over heap blocks of 16 KiB that this
  // session no longer references: the caller owns them, and a block is freed
  // when its last Slice is. Bytes after a close_notify are ignored.
  // Output may be pending afterwards (handshake flights, TLS 1.2 session
  // tickets, an alert): check HasOutput. BoringSSL holds TLS 1.3 session
  // tickets and the answer to a KeyUpdate back until the next Write, so they
  // leave in the same packet as our first response (RFC 8446 4.6.3 only
  // asks the KeyUpdate to precede our next application data).
  //
  // Errors are final (every later call returns the same status) and have
  // code kInvalidArgument with a short reason from BoringSSL, e.g. "tls
  // handshake failed: UNSUPPORTED_PROTOCOL" (a TLS 1.1 client), "...:
  // HTTP_REQUEST" (plain HTTP sent to the TLS port), "tls record error:
  // DECRYPTION_FAILED_OR_BAD_RECORD_MAC". A fatal alert for the peer is
  // usually pending in the output then: send it before closing.
  absl::Status Feed(std::string_view ciphertext, std::vector<core::Slice>* plaintext);

  // Encrypts `plaintext` into records (at most 16 KiB each) appended to the
  // pending output; the caller's buffer is not referenced after the call.
  // Only after the handshake (the codec exists only once ALPN is known):
  // before it, and after Shutdown, returns kFailedPrecondition and writes
  // nothing. After a Feed error returns that error.
  absl::Status Write(std::string_view plaintext);

  // Like Write for the concatenation of `pieces`, packed into as few records
  // as possible (an HTTP/2 frame header and its payload share one record).
  // Whole 16 KiB records are encrypted straight from the caller's memory;
  // only the pieces that straddle record boundaries are copied, into a stack
  // buffer.
  absl::Status WriteV(std::span<const std::string_view> pieces);

  // Queues a close_notify alert (once). Later writes fail. Before the
  // handshake is done nothing is queued (closing the socket is enough).
  void Shutdown();

  // Ciphertext waiting to be sent.
  bool HasOutput() const { return output_bytes_ > 0; }
  size_t output_bytes() const { return output_bytes_; }
  // Appends the pending ciphertext to `*out`, in order, as Slices the caller
  // owns (usually one or two per call; a large Write gives one per 16 KiB
  // block); afterwards HasOutput() is false. The session keeps no reference
  // to the blocks, so an idle session holds no output memory once the
  // caller has released the Slices.
  void TakeOutput(std::vector<core::Slice>* out);

  bool handshake_done() const { return handshake_done_; }
  // True once a Feed has failed.
  bool failed() const { return !status_.ok(); }
  // True once the peer's close_notify was received.
  bool peer_closed() const { return peer_closed_; }
  // After the handshake: the negotiated ALPN protocol ("h2", "http/1.1",
  // or "http/1.0" from a client offering only that), or "http/1.1" when the
  // client offered no ALPN. Anything but "h2" means the HTTP/1.x codec.
  // Empty before the handshake. Points to static or session-owned memory
  // valid while this session lives.
  std::string_view alpn() const { return alpn_; }
  // After the handshake: whether it resumed a session (ticket or cache).
  bool session_reused() const;
  // After the handshake: TLS1_2_VERSION (0x0303) or TLS1_3_VERSION (0x0304);
  // 0 before.
  int version() const;
  // After the handshake: the cipher suite's name (static storage); empty
  // before.
  std::string_view cipher() const;
  // The SNI host name the client sent, empty if none; valid while this
  // session lives.
  std::string_view server_name() const;
  // The context this session was created with.
  const std::shared_ptr<const TlsContext>& context() const { return context_; }

 private:
  friend struct TlsSessionBio;

  absl::Status ReadApplicationData(std::vector<core::Slice>* plaintext);
  absl::Status Fail(int ssl_error, const char* what);
  absl::Status WriteRecords(const char* data, size_t len);
  // BIO callbacks.
  int BioRead(char* out, int len);
  void BioWrite(const char* data, size_t len);

  std::shared_ptr<const TlsContext> context_;
  bssl::UniquePtr<SSL> ssl_;
  // The bytes of the current Feed not yet pulled by BoringSSL.
  std::string_view input_;
  // Ciphertext produced by BoringSSL: full blocks in output_, the current
  // block's untaken bytes in the writer.
  core::SliceWriter output_writer_;
  std::vector<core::Slice> output_;
  size_t output_bytes_ = 0;
  absl::Status status_;
  std::string_view alpn_;
  bool handshake_done_ = false;
  bool peer_closed_ = false;
  bool shutdown_ = false;
};

}  // namespace sluice::tls
