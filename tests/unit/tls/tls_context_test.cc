#include "tls/tls_context.h"

#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "tests/unit/tls/tls_test_peer.h"
#include "tls/tls_session.h"

// ClientOptions{.field = ...} leaves the other fields at their defaults on
// purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace sluice::tls {
namespace {

using testing::ClientOptions;
using testing::KeyKind;
using testing::MakePki;
using testing::Pump;
using testing::TestClient;
using testing::TestPki;
using testing::WriteFile;

bool Contains(const absl::Status& s, const std::string& part) {
  return std::string(s.message()).find(part) != std::string::npos;
}

TEST(TlsContextTest, LoadsEcdsaAndRsaChains) {
  for (KeyKind kind : {KeyKind::kEcdsa, KeyKind::kRsa}) {
    TestPki pki = MakePki(kind, "load");
    auto ctx = TlsContext::Create(pki.Options());
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    ASSERT_NE((*ctx)->ssl_ctx(), nullptr);
    EXPECT_NE((*ctx)->resumption(), nullptr);
    EXPECT_EQ((*ctx)->options().cert_chain_path, pki.chain_path);
  }
}

TEST(TlsContextTest, MissingFilesAreNotFoundAndNamed) {
  TestPki pki = MakePki(KeyKind::kEcdsa, "missing");
  TlsContextOptions o = pki.Options();
  o.cert_chain_path = pki.dir + "/nope.pem";
  auto ctx = TlsContext::Create(o);
  ASSERT_FALSE(ctx.ok());
  EXPECT_EQ(ctx.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(ctx.status(), o.cert_chain_path)) << ctx.status();

  o = pki.Options();
  o.key_path = pki.dir + "/nokey.pem";
  ctx = TlsContext::Create(o);
  ASSERT_FALSE(ctx.ok());
  EXPECT_EQ(ctx.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(ctx.status(), o.key_path)) << ctx.status();

  o = pki.Options();
  o.key_path.clear();
  EXPECT_EQ(TlsContext::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TlsContextTest, BadPemIsRefusedAndNamed) {
  TestPki pki = MakePki(KeyKind::kEcdsa, "badpem");
  std::string garbage = pki.dir + "/garbage.pem";
  WriteFile(garbage, "this is not a certificate\n");

  TlsContextOptions o = pki.Options();
  o.cert_chain_path = garbage;
  auto ctx = TlsContext::Create(o);
  ASSERT_FALSE(ctx.ok());
  EXPECT_EQ(ctx.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(ctx.status(), garbage)) << ctx.status();
  EXPECT_TRUE(Contains(ctx.status(), "no PEM certificate")) << ctx.status();

  o = pki.Options();
  o.key_path = garbage;
  ctx = TlsContext::Create(o);
  ASSERT_FALSE(ctx.ok());
  EXPECT_EQ(ctx.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(ctx.status(), garbage)) << ctx.status();

  // A certificate file given as the key, and the key as the chain.
  o = pki.Options();
  std::swap(o.cert_chain_path, o.key_path);
  ctx = TlsContext::Create(o);
  ASSERT_FALSE(ctx.ok());
  EXPECT_TRUE(Contains(ctx.status(), pki.key_path)) << ctx.status();

  // A valid leaf followed by a corrupted second certificate.
  std::string chain = testing::ToPem(pki.leaf.get());
  std::string ca = testing::ToPem(pki.ca.get());
  ca[ca.size() / 2] = '*';
  std::string broken = pki.dir + "/broken_chain.pem";
  WriteFile(broken, chain + ca);
  o = pki.Options();
  o.cert_chain_path = broken;
  ctx = TlsContext::Create(o);
  ASSERT_FALSE(ctx.ok());
  EXPECT_TRUE(Contains(ctx.status(), broken)) << ctx.status();
  EXPECT_TRUE(Contains(ctx.status(), "bad PEM certificate after #1")) << ctx.status();
}

TEST(TlsContextTest, MismatchedKeyIsRefusedNamingBothFiles) {
  TestPki a = MakePki(KeyKind::kEcdsa, "mismatch_a", 0);
  TestPki b = MakePki(KeyKind::kEcdsa, "mismatch_b", 1);
  TlsContextOptions o = a.Options();
  o.key_path = b.key_path;
  auto ctx = TlsContext::Create(o);
  ASSERT_FALSE(ctx.ok());
  EXPECT_EQ(ctx.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(ctx.status(), b.key_path)) << ctx.status();
  EXPECT_TRUE(Contains(ctx.status(), a.chain_path)) << ctx.status();
  EXPECT_TRUE(Contains(ctx.status(), "does not match")) << ctx.status();

  // An RSA key against an ECDSA certificate too.
  TestPki r = MakePki(KeyKind::kRsa, "mismatch_r");
  o.key_path = r.key_path;
  EXPECT_FALSE(TlsContext::Create(o).ok());
}

TEST(TlsContextTest, EncryptedKeyIsRefusedWithoutPrompting) {
  TestPki pki = MakePki(KeyKind::kEcdsa, "encrypted");
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  static char pass[] = "secret";
  ASSERT_TRUE(PEM_write_bio_PrivateKey(bio.get(), testing::SharedKey(KeyKind::kEcdsa),
                                       EVP_aes_128_cbc(), reinterpret_cast<unsigned char*>(pass), 6,
                                       nullptr, nullptr));
  const uint8_t* data;
  size_t len;
  BIO_mem_contents(bio.get(), &data, &len);
  WriteFile(pki.key_path, std::string_view(reinterpret_cast<const char*>(data), len));
  auto ctx = TlsContext::Create(pki.Options());
  ASSERT_FALSE(ctx.ok());
  EXPECT_TRUE(Contains(ctx.status(), pki.key_path)) << ctx.status();
  EXPECT_TRUE(Contains(ctx.status(), "encrypted")) << ctx.status();
}

TEST(TlsContextTest, BadAlpnNameIsRefused) {
  TestPki pki = MakePki(KeyKind::kEcdsa, "alpn");
  TlsContextOptions o = pki.Options();
  o.alpn = {"h2", ""};
  EXPECT_EQ(TlsContext::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.alpn = {std::string(256, 'x')};
  EXPECT_EQ(TlsContext::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TlsContextTest, ReloadSharesResumptionAndKeepsOldOnError) {
  TestPki a = MakePki(KeyKind::kEcdsa, "reload_a");
  TestPki b = MakePki(KeyKind::kRsa, "reload_b");
  auto first = TlsContext::Create(a.Options());
  ASSERT_TRUE(first.ok());
  auto second = (*first)->Reload(b.Options());
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_NE((*first)->ssl_ctx(), (*second)->ssl_ctx());
  EXPECT_EQ((*first)->resumption(), (*second)->resumption());

  TlsContextOptions bad = b.Options();
  bad.key_path = a.key_path;
  auto third = (*second)->Reload(bad);
  EXPECT_FALSE(third.ok());
  // The old context still serves handshakes.
  TestClient client(ClientOptions{.trust = b.ca.get()});
  TlsSession server(*second);
  EXPECT_TRUE(Pump(client, server).ok());
  EXPECT_TRUE(server.handshake_done());
  EXPECT_EQ(client.error(), "");
}

// The repository root, from this file's path (tests/unit/tls/...).
std::string SourceRoot() { return SLUICE_SOURCE_DIR; }

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

int RunMakeCerts(const std::string& args) {
  std::string cmd = SourceRoot() + "/tools/make-certs.sh " + args + " >/dev/null 2>&1";
  return std::system(cmd.c_str());
}

// tools/make-certs.sh output loads, verifies for every name it promises, and
// is not overwritten without --force. Needs the openssl command.
TEST(TlsContextTest, MakeCertsScriptOutputWorks) {
  if (std::system("command -v openssl >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "no openssl command";
  }
  for (const char* flag : {"", "--rsa"}) {
    std::string dir = testing::TempDir("make_certs");
    ASSERT_EQ(RunMakeCerts(std::string(flag) + " " + dir), 0);
    for (const char* f : {"ca.pem", "ca.key", "server.pem", "server.key"}) {
      ASSERT_TRUE(std::filesystem::exists(dir + "/" + f)) << f;
    }
    for (const char* f : {"ca.key", "server.key"}) {
      struct stat st;
      ASSERT_EQ(::stat((dir + "/" + f).c_str(), &st), 0);
      EXPECT_EQ(st.st_mode & 0777, 0600u) << f;
    }
    std::string before = ReadAll(dir + "/server.pem");
    std::string ca_before = ReadAll(dir + "/ca.pem");
    ASSERT_EQ(RunMakeCerts(dir), 0);  // idempotent
    EXPECT_EQ(ReadAll(dir + "/server.pem"), before);
    EXPECT_EQ(ReadAll(dir + "/ca.pem"), ca_before);

    TlsContextOptions o;
    o.cert_chain_path = dir + "/server.pem";
    o.key_path = dir + "/server.key";
    auto ctx = TlsContext::Create(o);
    ASSERT_TRUE(ctx.ok()) << ctx.status();

    bssl::UniquePtr<BIO> bio(BIO_new_file((dir + "/ca.pem").c_str(), "r"));
    bssl::UniquePtr<X509> ca(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    ASSERT_TRUE(ca != nullptr);
    for (const char* host : {"localhost", "127.0.0.1", "::1"}) {
      TestClient client(ClientOptions{.trust = ca.get(), .host = host});
      TlsSession server(*ctx);
      EXPECT_TRUE(Pump(client, server).ok());
      EXPECT_TRUE(client.handshake_done()) << host << ": " << client.error();
      EXPECT_EQ(client.error(), "") << host;
      EXPECT_EQ(SSL_get_verify_result(client.ssl()), X509_V_OK) << host;
    }
    {
      TestClient client(ClientOptions{.trust = ca.get(), .host = "example.com"});
      TlsSession server(*ctx);
      // The client rejects the name and alerts the server.
      EXPECT_FALSE(Pump(client, server).ok());
      EXPECT_FALSE(client.handshake_done());
      EXPECT_EQ(client.error(), "CERTIFICATE_VERIFY_FAILED");
    }
    bssl::UniquePtr<BIO> leaf_bio(BIO_new_file((dir + "/server.pem").c_str(), "r"));
    bssl::UniquePtr<X509> leaf(PEM_read_bio_X509(leaf_bio.get(), nullptr, nullptr, nullptr));
    ASSERT_TRUE(leaf != nullptr);
    bssl::UniquePtr<EVP_PKEY> pub(X509_get_pubkey(leaf.get()));
    EXPECT_EQ(EVP_PKEY_id(pub.get()), *flag ? EVP_PKEY_RSA : EVP_PKEY_EC);

    ASSERT_EQ(RunMakeCerts(std::string("--force ") + flag + " " + dir), 0);
    EXPECT_NE(ReadAll(dir + "/server.pem"), before);
    EXPECT_NE(ReadAll(dir + "/ca.pem"), ca_before);
  }
}

}  // namespace
}  // namespace sluice::tls
