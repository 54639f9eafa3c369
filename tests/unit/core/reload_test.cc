// SIGHUP's reload without signals: a policy or certificate that loads
// replaces the old one in its slot; one that does not leaves the old one.

#include "core/server/reload.h"

#include <string>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "tests/unit/tls/tls_test_peer.h"

namespace sluice::core {
namespace {

using tls::testing::KeyKind;
using tls::testing::MakePki;
using tls::testing::TempDir;
using tls::testing::TestPki;
using tls::testing::WriteFile;

std::string ReadFile(const std::string& path) {
  std::string out;
  FILE* f = std::fopen(path.c_str(), "rb");
  EXPECT_NE(f, nullptr) << path;
  if (f == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  std::fclose(f);
  return out;
}

policy::PolicyOptions NoAuthWithRules(const std::string& rules_file) {
  policy::PolicyOptions o;
  o.auth = "none";
  o.rules_file = rules_file;
  return o;
}

TEST(ReloaderTest, FirstPolicyErrorNamesTheFlag) {
  Reloader r{policy::PolicyOptions{}};  // no files, no --auth
  absl::Status st = r.LoadPolicy();
  EXPECT_FALSE(st.ok());
  EXPECT_TRUE(absl::StartsWith(st.message(), "--auth")) << st;
  EXPECT_EQ(r.policy_slot()->Get(), nullptr);
}

TEST(ReloaderTest, PolicyIsReplacedOnlyByOneThatLoads) {
  const std::string rules = TempDir("reload_policy") + "/rules.txt";
  WriteFile(rules, "deny 10.0.0.0/8\n");
  Reloader r(NoAuthWithRules(rules));
  ASSERT_TRUE(r.LoadPolicy().ok());
  auto first = r.policy_slot()->Get();
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->generation(), 1u);
  const uint64_t slot_generation = r.policy_slot()->generation();

  WriteFile(rules, "deny nonsense\n");
  r.Reload();
  EXPECT_EQ(r.policy_slot()->Get(), first);
  EXPECT_EQ(r.policy_slot()->generation(), slot_generation);

  WriteFile(rules, "deny 10.0.0.0/8\ndeny 192.168.0.0/16\n");
  r.Reload();
  auto second = r.policy_slot()->Get();
  EXPECT_NE(second, first);
  // The failed attempt used no generation number.
  EXPECT_EQ(second->generation(), 2u);
  EXPECT_EQ(r.policy_slot()->generation(), slot_generation + 1);
  // Without TLS loaded, a reload leaves the TLS slot empty.
  EXPECT_EQ(r.tls_slot()->Get(), nullptr);
}

TEST(ReloaderTest, CertificateIsReplacedOnlyByAPairThatLoads) {
  TestPki a = MakePki(KeyKind::kEcdsa, "reload_cert_a");
  TestPki b = MakePki(KeyKind::kRsa, "reload_cert_b");
  const std::string dir = TempDir("reload_cert");
  tls::TlsContextOptions options;
  options.cert_chain_path = dir + "/chain.pem";
  options.key_path = dir + "/key.pem";
  WriteFile(options.cert_chain_path, ReadFile(a.chain_path));
  WriteFile(options.key_path, ReadFile(a.key_path));

  Reloader r(NoAuthWithRules(""));
  ASSERT_TRUE(r.LoadPolicy().ok());
  ASSERT_TRUE(r.LoadTls(options).ok());
  auto first = r.tls_slot()->Get();
  ASSERT_NE(first, nullptr);

  // The same paths, new files (as certbot renews them).
  WriteFile(options.cert_chain_path, ReadFile(b.chain_path));
  WriteFile(options.key_path, ReadFile(b.key_path));
  r.Reload();
  auto second = r.tls_slot()->Get();
  ASSERT_NE(second, first);
  EXPECT_EQ(second->options().cert_chain_path, options.cert_chain_path);

  // A key that does not match: the second pair stays.
  WriteFile(options.key_path, ReadFile(a.key_path));
  r.Reload();
  EXPECT_EQ(r.tls_slot()->Get(), second);
}

TEST(ReloaderTest, FirstCertificateErrorIsReturned) {
  Reloader r(NoAuthWithRules(""));
  tls::TlsContextOptions options;
  options.cert_chain_path = TempDir("reload_cert_missing") + "/absent.pem";
  options.key_path = options.cert_chain_path;
  EXPECT_FALSE(r.LoadTls(options).ok());
  EXPECT_EQ(r.tls_slot()->Get(), nullptr);
}

}  // namespace
}  // namespace sluice::core
