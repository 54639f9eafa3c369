#include "tls/tls_context.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace sluice::tls {

// The callbacks BoringSSL calls, friends of TlsContext.
struct TlsContextCallbacks {
  static const TlsContext* FromSsl(const SSL* ssl);
  static int SelectAlpn(SSL* ssl, const uint8_t** out, uint8_t* out_len, const uint8_t* in,
                        unsigned in_len, void* arg);
  static size_t TicketMaxOverhead(SSL* ssl);
  static int TicketSeal(SSL* ssl, uint8_t* out, size_t* out_len, size_t max_out_len,
                        const uint8_t* in, size_t in_len);
  static ssl_ticket_aead_result_t TicketOpen(SSL* ssl, uint8_t* out, size_t* out_len,
                                             size_t max_out_len, const uint8_t* in, size_t in_len);
  static int NewSession(SSL* ssl, SSL_SESSION* session);
  static SSL_SESSION* GetSession(SSL* ssl, const uint8_t* id, int id_len, int* out_copy);
};

namespace {

// TLS 1.2 suites: forward-secret AEAD only, the nginx baseline's list plus
// ChaCha20-Poly1305 for clients without AES hardware. BoringSSL does not let
// TLS 1.3 suites be configured; its set is AES-GCM and ChaCha20-Poly1305.
constexpr char kTls12Ciphers[] =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

// The same on every context, so a session made before a reload is accepted
// after it (BoringSSL refuses a session whose context ID differs).
constexpr char kSessionIdContext[] = "sluice";

// A certificate or key file is a few kilobytes; refuse to slurp anything
// absurd that a wrong path might point at.
constexpr long kMaxPemFileBytes = 1 << 20;

const SSL_TICKET_AEAD_METHOD kTicketMethod = {
    &TlsContextCallbacks::TicketMaxOverhead,
    &TlsContextCallbacks::TicketSeal,
    &TlsContextCallbacks::TicketOpen,
};

int ContextIndex() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

absl::StatusOr<std::string> ReadPemFile(const std::string& path, absl::string_view what) {
  if (path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("no ", what, " file given"));
  }
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    int err = errno;
    std::string msg = absl::StrCat("cannot open ", what, " file ", path, ": ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(msg);
    if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(msg);
    return absl::FailedPreconditionError(msg);
  }
  std::string data;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) {
    data.append(buf, n);
    if (data.size() > static_cast<size_t>(kMaxPemFileBytes)) break;
  }
  bool read_error = std::ferror(f);
  std::fclose(f);
  if (read_error) {
    return absl::FailedPreconditionError(absl::StrCat("cannot read ", what, " file ", path));
  }
  if (data.size() > static_cast<size_t>(kMaxPemFileBytes)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " file ", path, " is larger than 1 MiB"));
  }
  return data;
}

// The reason of the last BoringSSL error, and the queue cleared (it is per
// thread and would otherwise leak into the next caller's diagnosis).
std::string TakeErrorReason() {
  uint32_t err = ERR_peek_last_error();
  const char* reason = err != 0 ? ERR_reason_error_string(err) : nullptr;
  ERR_clear_error();
  return reason != nullptr ? reason : "unknown error";
}

bool IsPemEof(uint32_t err) {
  return ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE;
}

// Never prompts: BoringSSL has no terminal prompt, but an encrypted key must
// fail loudly rather than wait for a password nobody can type.
int NoPassword(char*, int, int, void*) { return 0; }

absl::StatusOr<std::vector<bssl::UniquePtr<X509>>> ParseChain(const std::string& pem,
                                                              const std::string& path) {
  bssl::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), pem.size()));
  if (!bio) return absl::ResourceExhaustedError("out of memory");
  std::vector<bssl::UniquePtr<X509>> chain;
  ERR_clear_error();
  for (;;) {
    bssl::UniquePtr<X509> cert(PEM_read_bio_X509(bio.get(), nullptr, NoPassword, nullptr));
    if (!cert) break;
    chain.push_back(std::move(cert));
  }
  uint32_t err = ERR_peek_last_error();
  if (chain.empty() || (err != 0 && !IsPemEof(err))) {
    std::string reason = TakeErrorReason();
    return absl::InvalidArgumentError(absl::StrCat(
        "certificate chain file ", path,
        chain.empty() ? " has no PEM certificate"
                      : absl::StrCat(" has a bad PEM certificate after #", chain.size()),
        " (", reason, ")"));
  }
  ERR_clear_error();
  return chain;
}

absl::StatusOr<bssl::UniquePtr<EVP_PKEY>> ParseKey(const std::string& pem,
                                                   const std::string& path) {
  bssl::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), pem.size()));
  if (!bio) return absl::ResourceExhaustedError("out of memory");
  ERR_clear_error();
  bssl::UniquePtr<EVP_PKEY> key(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassword, nullptr));
  if (!key) {
    std::string reason = TakeErrorReason();
    return absl::InvalidArgumentError(
        absl::StrCat("key file ", path,
                     " has no usable PEM private key (encrypted keys are not "
                     "supported) (",
                     reason, ")"));
  }
  return key;
}

// RFC 7301 wire format: each protocol prefixed by its one-byte length.
// "http/1.1" also admits "http/1.0" right after it: the HTTP/1.x codec
// speaks both, and clients asking for 1.0 (curl --http1.0) offer only that
// name. nginx accepts it the same way.
absl::StatusOr<std::string> AlpnWire(const std::vector<std::string>& alpn) {
  std::string wire;
  auto add = [&wire](std::string_view proto) {
    wire.push_back(static_cast<char>(proto.size()));
    wire.append(proto);
  };
  bool has_http10 = false;
  for (const std::string& proto : alpn) has_http10 |= proto == "http/1.0";
  for (const std::string& proto : alpn) {
    if (proto.empty() || proto.size() > 255) {
      return absl::InvalidArgumentError(absl::StrCat("bad ALPN protocol name \"", proto, "\""));
    }
    add(proto);
    if (proto == "http/1.1" && !has_http10) add("http/1.0");
  }
  return wire;
}

// The certificate chain and its private key, read from their files.
struct KeyPair {
  std::vector<bssl::UniquePtr<X509>> chain;
  bssl::UniquePtr<EVP_PKEY> key;
};

absl::StatusOr<KeyPair> LoadKeyPair(const TlsContextOptions& options) {
  absl::StatusOr<std::string> chain_pem = ReadPemFile(options.cert_chain_path, "certificate chain");
  if (!chain_pem.ok()) return chain_pem.status();
  absl::StatusOr<std::string> key_pem = ReadPemFile(options.key_path, "key");
  if (!key_pem.ok()) return key_pem.status();
  auto chain = ParseChain(*chain_pem, options.cert_chain_path);
  if (!chain.ok()) return chain.status();
  auto key = ParseKey(*key_pem, options.key_path);
  OPENSSL_cleanse(key_pem->data(), key_pem->size());
  if (!key.ok()) return key.status();
  if (!X509_check_private_key(chain->front().get(), key->get())) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat("private key in ", options.key_path,
                                                   " does not match the first certificate in ",
                                                   options.cert_chain_path));
  }
  return KeyPair{*std::move(chain), *std::move(key)};
}

// Versions, TLS 1.2 suites and the session ID context; `self` is found
// again from the SSL_CTX by the callbacks.
absl::Status ConfigureProtocols(SSL_CTX* ctx, TlsContext* self) {
  bool ok = SSL_CTX_set_ex_data(ctx, ContextIndex(), self) &&
            SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) &&
            SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) &&
            SSL_CTX_set_strict_cipher_list(ctx, kTls12Ciphers) &&
            SSL_CTX_set_session_id_context(ctx, reinterpret_cast<const uint8_t*>(kSessionIdContext),
                                           sizeof(kSessionIdContext) - 1);
  if (!ok) {
    return absl::InternalError(absl::StrCat("configuring the TLS context: ", TakeErrorReason()));
  }
  // The client's cipher order wins: SSL_OP_CIPHER_SERVER_PREFERENCE stays
  // off, as in the nginx baseline (clients without AES hardware put
  // ChaCha20 first).
  return absl::OkStatus();
}

absl::Status InstallKeyPair(SSL_CTX* ctx, const KeyPair& key_pair, const TlsContextOptions& opts) {
  const std::vector<bssl::UniquePtr<X509>>& chain = key_pair.chain;
  if (!SSL_CTX_use_certificate(ctx, chain.front().get())) {
    return absl::InvalidArgumentError(absl::StrCat("certificate in ", opts.cert_chain_path,
                                                   " is not usable: ", TakeErrorReason()));
  }
  for (size_t i = 1; i < chain.size(); ++i) {
    if (!SSL_CTX_add1_chain_cert(ctx, chain[i].get())) {
      return absl::InternalError(absl::StrCat("adding chain certificate from ",
                                              opts.cert_chain_path, ": ", TakeErrorReason()));
    }
  }
  if (!SSL_CTX_use_PrivateKey(ctx, key_pair.key.get())) {
    return absl::InvalidArgumentError(
        absl::StrCat("key in ", opts.key_path, " is not usable: ", TakeErrorReason()));
  }
  return absl::OkStatus();
}

// Session lifetime, tickets and the external session cache.
void ConfigureResumption(SSL_CTX* ctx, const TlsContextOptions& opts,
                         const ResumptionOptions& ropts) {
  uint32_t lifetime_s = static_cast<uint32_t>(absl::ToInt64Seconds(ropts.session_lifetime));
  SSL_CTX_set_timeout(ctx, lifetime_s);
  SSL_CTX_set_session_psk_dhe_timeout(ctx, lifetime_s);
  if (opts.session_tickets) {
    SSL_CTX_set_ticket_aead_method(ctx, &kTicketMethod);
  } else {
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  }
  if (opts.session_cache) {
    // External cache only: BoringSSL's internal one belongs to this SSL_CTX
    // and would be lost on reload.
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL);
    SSL_CTX_sess_set_new_cb(ctx, &TlsContextCallbacks::NewSession);
    SSL_CTX_sess_set_get_cb(ctx, &TlsContextCallbacks::GetSession);
  } else {
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  }
}

}  // namespace

const TlsContext* TlsContextCallbacks::FromSsl(const SSL* ssl) {
  return static_cast<const TlsContext*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ContextIndex()));
}

int TlsContextCallbacks::SelectAlpn(SSL* ssl, const uint8_t** out, uint8_t* out_len,
                                    const uint8_t* in, unsigned in_len, void* arg) {
  const auto* self = static_cast<const TlsContext*>(arg);
  std::string_view ours = self->alpn_wire_;
  std::string_view theirs(reinterpret_cast<const char*>(in), in_len);
  // Server order: the first of ours that the client lists.
  while (!ours.empty()) {
    size_t len = static_cast<uint8_t>(ours[0]);
    std::string_view proto = ours.substr(1, len);
    ours.remove_prefix(1 + len);
    std::string_view rest = theirs;
    while (!rest.empty()) {
      size_t their_len = static_cast<uint8_t>(rest[0]);
      if (their_len + 1 > rest.size()) break;  // BoringSSL validated; be safe
      std::string_view offered = rest.substr(1, their_len);
      if (offered == proto) {
        *out = reinterpret_cast<const uint8_t*>(offered.data());
        *out_len = static_cast<uint8_t>(offered.size());
        return SSL_TLSEXT_ERR_OK;
      }
      rest.remove_prefix(1 + their_len);
    }
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

size_t TlsContextCallbacks::TicketMaxOverhead(SSL*) { return TicketKeyRing::MaxOverhead(); }

int TlsContextCallbacks::TicketSeal(SSL* ssl, uint8_t* out, size_t* out_len, size_t max_out_len,
                                    const uint8_t* in, size_t in_len) {
  return FromSsl(ssl)->resumption_->ticket_keys().Seal(out, out_len, max_out_len, in, in_len) ? 1
                                                                                              : 0;
}

ssl_ticket_aead_result_t TlsContextCallbacks::TicketOpen(SSL* ssl, uint8_t* out, size_t* out_len,
                                                         size_t max_out_len, const uint8_t* in,
                                                         size_t in_len) {
  // A ticket we cannot open (old key, another server's, garbage) just means
  // a full handshake, never a failed connection.
  return FromSsl(ssl)->resumption_->ticket_keys().Open(out, out_len, max_out_len, in, in_len)
             ? ssl_ticket_aead_success
             : ssl_ticket_aead_ignore_ticket;
}

int TlsContextCallbacks::NewSession(SSL* ssl, SSL_SESSION* session) {
  FromSsl(ssl)->resumption_->session_cache().Insert(session);
  return 0;  // the cache keeps a serialized copy, not this reference
}

SSL_SESSION* TlsContextCallbacks::GetSession(SSL* ssl, const uint8_t* id, int id_len,
                                             int* out_copy) {
  *out_copy = 0;  // we return a new reference
  const TlsContext* self = FromSsl(ssl);
  return self->resumption_->session_cache()
      .Lookup(std::string_view(reinterpret_cast<const char*>(id), id_len), self->ctx_.get())
      .release();
}

TlsContext::TlsContext(TlsContextOptions options, std::shared_ptr<Resumption> resumption)
    : options_(std::move(options)), resumption_(std::move(resumption)) {}

TlsContext::~TlsContext() = default;

absl::StatusOr<std::shared_ptr<const TlsContext>> TlsContext::Create(TlsContextOptions options) {
  return Create(std::move(options), std::make_shared<Resumption>());
}

absl::StatusOr<std::shared_ptr<const TlsContext>> TlsContext::Reload(
    TlsContextOptions options) const {
  return Create(std::move(options), resumption_);
}

absl::StatusOr<std::shared_ptr<const TlsContext>> TlsContext::Create(
    TlsContextOptions options, std::shared_ptr<Resumption> resumption) {
  if (resumption == nullptr) {
    return absl::InvalidArgumentError("no resumption state given");
  }
  absl::StatusOr<std::string> alpn_wire = AlpnWire(options.alpn);
  if (!alpn_wire.ok()) return alpn_wire.status();
  absl::StatusOr<KeyPair> key_pair = LoadKeyPair(options);
  if (!key_pair.ok()) return key_pair.status();

  std::shared_ptr<TlsContext> self(new TlsContext(std::move(options), std::move(resumption)));
  self->alpn_wire_ = std::move(*alpn_wire);
  self->ctx_.reset(SSL_CTX_new(TLS_method()));
  SSL_CTX* ctx = self->ctx_.get();
  if (ctx == nullptr) return absl::ResourceExhaustedError("SSL_CTX_new failed");
  const TlsContextOptions& opts = self->options_;

  if (absl::Status st = ConfigureProtocols(ctx, self.get()); !st.ok()) return st;
  if (absl::Status st = InstallKeyPair(ctx, *key_pair, opts); !st.ok()) return st;
  if (!self->alpn_wire_.empty()) {
    SSL_CTX_set_alpn_select_cb(ctx, &TlsContextCallbacks::SelectAlpn, self.get());
  }
  ConfigureResumption(ctx, opts, self->resumption_->options());
  return std::shared_ptr<const TlsContext>(std::move(self));
}

}  // namespace sluice::tls
