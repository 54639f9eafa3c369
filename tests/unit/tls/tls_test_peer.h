#pragma once

// Test helpers for tls/: certificates made in-process with BoringSSL (no
// openssl binary needed), and a real BoringSSL client running over memory
// BIOs that talks to a TlsSession with no socket.

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "core/engine/slice.h"
#include "gtest/gtest.h"
#include "tls/tls_session.h"

namespace sluice::tls::testing {

enum class KeyKind { kEcdsa, kRsa };

inline bssl::UniquePtr<EVP_PKEY> NewKey(KeyKind kind) {
  bssl::UniquePtr<EVP_PKEY> pkey(EVP_PKEY_new());
  if (kind == KeyKind::kEcdsa) {
    EC_KEY* ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    EXPECT_TRUE(ec != nullptr && EC_KEY_generate_key(ec));
    EVP_PKEY_assign_EC_KEY(pkey.get(), ec);
  } else {
    RSA* rsa = RSA_new();
    bssl::UniquePtr<BIGNUM> e(BN_new());
    BN_set_word(e.get(), RSA_F4);
    EXPECT_TRUE(RSA_generate_key_ex(rsa, 2048, e.get(), nullptr));
    EVP_PKEY_assign_RSA(pkey.get(), rsa);
  }
  return pkey;
}

// RSA key generation takes a noticeable fraction of a second; tests share
// leaf keys by (kind, slot) (each certificate is still new).
inline EVP_PKEY* SharedKey(KeyKind kind, int slot = 0) {
  static EVP_PKEY* keys[2][3] = {};
  EVP_PKEY*& k = keys[kind == KeyKind::kRsa][slot];
  if (k == nullptr) k = NewKey(kind).release();
  return k;
}

inline void AddExt(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  bssl::UniquePtr<X509_EXTENSION> ext(X509V3_EXT_nconf_nid(nullptr, &ctx, nid, value));
  ASSERT_TRUE(ext != nullptr) << value;
  ASSERT_TRUE(X509_add_ext(cert, ext.get(), -1));
}

// A certificate for `key` named `cn`, signed by (issuer, issuer_key), or
// self-signed when issuer is null.
inline bssl::UniquePtr<X509> NewCert(EVP_PKEY* key, const char* cn, X509* issuer,
                                     EVP_PKEY* issuer_key, bool is_ca) {
  static long serial = 1;
  bssl::UniquePtr<X509> cert(X509_new());
  X509_set_version(cert.get(), X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial++);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 30L * 24 * 3600);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const uint8_t*>(cn), -1, -1,
                             0);
  X509* signer = issuer != nullptr ? issuer : cert.get();
  X509_set_issuer_name(cert.get(), X509_get_subject_name(signer));
  if (is_ca) {
    AddExt(cert.get(), signer, NID_basic_constraints, "critical,CA:TRUE");
    AddExt(cert.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    AddExt(cert.get(), signer, NID_basic_constraints, "critical,CA:FALSE");
    AddExt(cert.get(), signer, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1,IP:::1");
    AddExt(cert.get(), signer, NID_ext_key_usage, "serverAuth");
  }
  EXPECT_TRUE(X509_sign(cert.get(), issuer_key != nullptr ? issuer_key : key, EVP_sha256()));
  return cert;
}

inline std::string ToPem(X509* cert) {
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), cert);
  const uint8_t* data;
  size_t len;
  BIO_mem_contents(bio.get(), &data, &len);
  return std::string(reinterpret_cast<const char*>(data), len);
}

inline std::string ToPem(EVP_PKEY* key) {
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  const uint8_t* data;
  size_t len;
  BIO_mem_contents(bio.get(), &data, &len);
  return std::string(reinterpret_cast<const char*>(data), len);
}

inline void WriteFile(const std::string& path, std::string_view data) {
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_TRUE(f != nullptr) << path;
  std::fwrite(data.data(), 1, data.size(), f);
  std::fclose(f);
}

// Directories made by TempDir, removed when the test program exits.
struct TempDirs {
  std::vector<std::string> dirs;
  ~TempDirs() {
    std::error_code ignored;
    for (const std::string& d : dirs) std::filesystem::remove_all(d, ignored);
  }
};

// A fresh directory under the test temp dir, removed at exit.
inline std::string TempDir(const std::string& name) {
  static TempDirs made;
  static int counter = 0;
  std::string dir = ::testing::TempDir() + "/sluice_tls_" + std::to_string(::getpid()) + "_" +
                    name + "_" + std::to_string(counter++);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  made.dirs.push_back(dir);
  return dir;
}

// A CA and a server certificate for localhost, 127.0.0.1 and ::1, written as
// chain.pem (leaf then CA) and key.pem in a fresh directory.
struct TestPki {
  std::string dir;
  std::string chain_path;
  std::string key_path;
  bssl::UniquePtr<X509> ca;
  bssl::UniquePtr<X509> leaf;

  TlsContextOptions Options() const {
    TlsContextOptions o;
    o.cert_chain_path = chain_path;
    o.key_path = key_path;
    return o;
  }
};

inline TestPki MakePki(KeyKind kind, const std::string& name, int key_slot = 0) {
  TestPki pki;
  pki.dir = TempDir(name);
  // A CA of its own (P-256 keys are quick to make), so one PKI's clients
  // do not trust another's server.
  bssl::UniquePtr<EVP_PKEY> ca_key = NewKey(KeyKind::kEcdsa);
  EVP_PKEY* key = SharedKey(kind, key_slot);
  std::string ca_name = "sluice test CA " + name;
  pki.ca = NewCert(ca_key.get(), ca_name.c_str(), nullptr, nullptr, true);
  pki.leaf = NewCert(key, "localhost", pki.ca.get(), ca_key.get(), false);
  pki.chain_path = pki.dir + "/chain.pem";
  pki.key_path = pki.dir + "/key.pem";
  WriteFile(pki.chain_path, ToPem(pki.leaf.get()) + ToPem(pki.ca.get()));
  WriteFile(pki.key_path, ToPem(key));
  return pki;
}

struct ClientOptions {
  uint16_t min_version = TLS1_2_VERSION;
  uint16_t max_version = TLS1_3_VERSION;
  std::vector<std::string> alpn;   // empty: no ALPN extension
  X509* trust = nullptr;           // verify the server against it if set
  std::string host = "localhost";  // SNI and the name verified
  SSL_SESSION* session = nullptr;  // offered for resumption if set
  std::string cipher_list;         // TLS 1.2 suites offered, if set
};

// A BoringSSL client over memory BIOs.
class TestClient {
 public:
  explicit TestClient(const ClientOptions& o) {
    ctx_.reset(SSL_CTX_new(TLS_method()));
    SSL_CTX_set_min_proto_version(ctx_.get(), o.min_version);
    SSL_CTX_set_max_proto_version(ctx_.get(), o.max_version);
    if (!o.cipher_list.empty()) {
      EXPECT_TRUE(SSL_CTX_set_strict_cipher_list(ctx_.get(), o.cipher_list.c_str()));
    }
    SSL_CTX_set_session_cache_mode(ctx_.get(), SSL_SESS_CACHE_CLIENT);
    SSL_CTX_sess_set_new_cb(ctx_.get(), [](SSL* ssl, SSL_SESSION* s) {
      static_cast<TestClient*>(SSL_get_app_data(ssl))->sessions_.emplace_back(s);
      return 1;  // we keep the reference
    });
    if (o.trust != nullptr) {
      X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx_.get()), o.trust);
      SSL_CTX_set_verify(ctx_.get(), SSL_VERIFY_PEER, nullptr);
    }
    ssl_.reset(SSL_new(ctx_.get()));
    SSL_set_app_data(ssl_.get(), this);
    SSL_set_connect_state(ssl_.get());
    if (!o.host.empty()) {
      SSL_set_tlsext_host_name(ssl_.get(), o.host.c_str());
      if (o.trust != nullptr) {
        X509_VERIFY_PARAM* param = SSL_get0_param(ssl_.get());
        if (o.host.find(':') != std::string::npos || (o.host[0] >= '0' && o.host[0] <= '9')) {
          X509_VERIFY_PARAM_set1_ip_asc(param, o.host.c_str());
        } else {
          X509_VERIFY_PARAM_set1_host(param, o.host.c_str(), o.host.size());
        }
      }
    }
    if (!o.alpn.empty()) {
      std::string wire;
      for (const std::string& p : o.alpn) {
        wire.push_back(static_cast<char>(p.size()));
        wire += p;
      }
      SSL_set_alpn_protos(ssl_.get(), reinterpret_cast<const uint8_t*>(wire.data()), wire.size());
    }
    if (o.session != nullptr) SSL_set_session(ssl_.get(), o.session);
    BIO* rbio = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(rbio, -1);
    BIO* wbio = BIO_new(BIO_s_mem());
    SSL_set_bio(ssl_.get(), rbio, wbio);
  }

  SSL* ssl() { return ssl_.get(); }

  // Bytes from the server.
  void Receive(std::string_view bytes) {
    if (!bytes.empty())
      BIO_write(SSL_get_rbio(ssl_.get()), bytes.data(), static_cast<int>(bytes.size()));
  }
  void Receive(const std::vector<core::Slice>& slices) {
    for (const core::Slice& s : slices) Receive(s.view());
  }

  // Bytes for the server.
  std::string TakeOutput() {
    BIO* wbio = SSL_get_wbio(ssl_.get());
    const uint8_t* data;
    size_t len;
    BIO_mem_contents(wbio, &data, &len);
    std::string out(reinterpret_cast<const char*>(data), len);
    BIO_reset(wbio);
    return out;
  }

  // Advances the handshake and reads what application data there is.
  // Returns false once the client has failed (error() says why).
  bool Step() {
    if (!error_.empty() || closed_) return error_.empty();
    if (!SSL_is_init_finished(ssl_.get())) {
      int r = SSL_do_handshake(ssl_.get());
      if (r != 1) return CheckError(r);
    }
    char buf[16384];
    for (;;) {
      int n = SSL_read(ssl_.get(), buf, sizeof(buf));
      if (n <= 0) return CheckError(n);
      received_.append(buf, n);
    }
  }

  void Write(std::string_view data) {
    while (!data.empty()) {
      int n = SSL_write(ssl_.get(), data.data(),
                        static_cast<int>(std::min<size_t>(data.size(), 1 << 20)));
      ASSERT_GT(n, 0);
      data.remove_prefix(n);
    }
  }

  bool handshake_done() { return SSL_is_init_finished(ssl_.get()); }
  bool closed() const { return closed_; }
  const std::string& error() const { return error_; }
  std::string& received() { return received_; }
  std::vector<bssl::UniquePtr<SSL_SESSION>>& sessions() { return sessions_; }
  SSL_SESSION* last_session() { return sessions_.empty() ? nullptr : sessions_.back().get(); }
  std::string_view alpn() {
    const uint8_t* p;
    unsigned len;
    SSL_get0_alpn_selected(ssl_.get(), &p, &len);
    return std::string_view(reinterpret_cast<const char*>(p), len);
  }

 private:
  bool CheckError(int r) {
    int err = SSL_get_error(ssl_.get(), r);
    if (err == SSL_ERROR_WANT_READ) return true;
    if (err == SSL_ERROR_ZERO_RETURN) {
      closed_ = true;
      return true;
    }
    uint32_t e = ERR_peek_error();
    error_ = e != 0 ? ERR_reason_error_string(e) : SSL_error_description(err);
    ERR_clear_error();
    return false;
  }

  bssl::UniquePtr<SSL_CTX> ctx_;
  bssl::UniquePtr<SSL> ssl_;
  std::vector<bssl::UniquePtr<SSL_SESSION>> sessions_;
  std::string received_;
  std::string error_;
  bool closed_ = false;
};

inline std::string Concat(const std::vector<core::Slice>& slices) {
  std::string s;
  for (const core::Slice& slice : slices) s.append(slice.view());
  return s;
}

// Moves bytes between `client` and `server` until neither has anything to
// say. Client bytes reach the server in chunks of `chunk(remaining)` bytes
// (all at once by default). Server plaintext is appended to `*plaintext`.
// Returns the server's first error.
inline absl::Status Pump(TestClient& client, TlsSession& server, std::string* plaintext = nullptr,
                         const std::function<size_t(size_t)>& chunk = nullptr) {
  for (int round = 0; round < 1000; ++round) {
    client.Step();
    std::string out = client.TakeOutput();
    bool moved = !out.empty();
    std::string_view rest = out;
    while (!rest.empty()) {
      size_t n = chunk ? std::max<size_t>(1, chunk(rest.size())) : rest.size();
      n = std::min(n, rest.size());
      std::vector<core::Slice> plain;
      absl::Status s = server.Feed(rest.substr(0, n), &plain);
      if (plaintext != nullptr) plaintext->append(Concat(plain));
      rest.remove_prefix(n);
      if (!s.ok()) {
        std::vector<core::Slice> alert;
        server.TakeOutput(&alert);
        client.Receive(alert);
        client.Step();
        return s;
      }
    }
    if (server.HasOutput()) {
      std::vector<core::Slice> slices;
      server.TakeOutput(&slices);
      client.Receive(slices);
      moved = true;
    }
    if (!moved) {
      client.Step();
      return absl::OkStatus();
    }
  }
  return absl::DeadlineExceededError("pump did not settle");
}

}  // namespace sluice::tls::testing
