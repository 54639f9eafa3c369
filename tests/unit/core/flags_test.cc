// The flags as main.cc turns them into the configuration: values set as
// the command line would (by text), what each function builds from them,
// and the exit 2 with its one line for each value refused.

#include "core/server/flags.h"

#include <netinet/in.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/str_cat.h"
#include "core/server/listeners.h"
#include "core/upstream/resolver.h"
#include "gtest/gtest.h"

namespace sluice::core {
namespace {

// Sets --name from `value` as the command line does.
void Set(const std::string& name, const std::string& value) {
  absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  ASSERT_NE(flag, nullptr) << name;
  std::string error;
  ASSERT_TRUE(flag->ParseFrom(value, &error)) << name << "=" << value << ": " << error;
}

using Flags = std::vector<std::pair<std::string, std::string>>;

void SetAll(const Flags& flags) {
  for (const auto& [name, value] : flags) Set(name, value);
}

// `text` as a POSIX extended regular expression that matches it literally.
std::string Literal(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

// Plain HTTP on loopback only: the least a config needs.
const Flags kServe = {{"listen_tls", ""}, {"http_mode", "serve"}, {"listen_http", "127.0.0.1:0"}};

class FlagsTest : public testing::Test {
 protected:
  absl::FlagSaver saver_;  // every test leaves the flags as it found them
};

TEST_F(FlagsTest, DefaultsAskForACertificate) {
  EXPECT_EXIT(BuildConfig(), testing::ExitedWithCode(2),
              Literal("sluice: --tls_cert: required with --listen_tls (tools/make-certs.sh "
                      "makes a local one; --listen_tls= turns TLS off)\n"));
}

TEST_F(FlagsTest, DefaultsOfAPlainHttpConfig) {
  SetAll(kServe);
  Config c = BuildConfig();
  EXPECT_TRUE(c.listen_http_enabled);
  EXPECT_TRUE(c.http_serve);
  EXPECT_FALSE(c.listen_tls_enabled);
  EXPECT_EQ(c.listen_http_text, "127.0.0.1:0");
  EXPECT_EQ(c.listen_http.family(), AF_INET);
  EXPECT_EQ(Port(c.listen_http), 0);
  EXPECT_EQ(c.hsts, "max-age=63072000; includeSubDomains");
  EXPECT_EQ(c.hsts_fields, "Strict-Transport-Security: max-age=63072000; includeSubDomains\r\n");
  EXPECT_EQ(c.h2_max_concurrent_streams, 128u);
  EXPECT_EQ(c.handshake_timeout_ns, 10'000'000'000);
  EXPECT_EQ(c.threads, 0);
  ASSERT_EQ(c.backends.size(), 1u);
  EXPECT_EQ(c.backends[0].addr.family(), AF_INET);
  EXPECT_EQ(Port(c.backends[0].addr), 11434);
  EXPECT_EQ(c.backends[0].host_header, "127.0.0.1:11434");
  EXPECT_EQ(c.backends[0].weight, 1);
  EXPECT_EQ(c.balance, Balance::kModel);
  EXPECT_EQ(c.upstream_keepalive, -1) << "auto";
  EXPECT_EQ(c.upstream_max_idle, 1024u);
  EXPECT_EQ(c.upstream_idle_timeout_ns, 60'000'000'000);
  EXPECT_EQ(c.connect_timeout_ns, 10'000'000'000);
  EXPECT_EQ(c.read_timeout_ns, 600'000'000'000);
  EXPECT_EQ(c.send_timeout_ns, 600'000'000'000);
  EXPECT_EQ(c.keepalive_timeout_ns, 75'000'000'000);
  EXPECT_EQ(c.client_header_timeout_ns, 60'000'000'000);
  EXPECT_EQ(c.client_body_timeout_ns, 60'000'000'000);
  EXPECT_EQ(c.drain_timeout_ns, 30'000'000'000);
  EXPECT_EQ(c.client_max_body_size, 100ull << 20);
  EXPECT_EQ(c.max_header_bytes, size_t{64} << 10);
  EXPECT_EQ(c.max_connections, 0);
  EXPECT_EQ(c.busy_poll_ns, 0);
  EXPECT_EQ(c.log_level, 1);
  // What main fills in.
  EXPECT_EQ(c.policy_slot, nullptr);
  EXPECT_EQ(c.tls_slot, nullptr);
  EXPECT_EQ(c.obs, nullptr);
}

TEST_F(FlagsTest, ValuesReachTheConfig) {
  SetAll(kServe);
  SetAll({{"listen_tls", "[::1]:8443"},
          {"listen_http", ":8080"},
          {"http_mode", "redirect"},
          {"tls_cert", "chain.pem"},
          {"tls_key", "key.pem"},
          {"hsts", ""},
          {"h2_max_concurrent_streams", "7"},
          {"handshake_timeout", "2s"},
          {"threads", "3"},
          {"upstream", "127.0.0.1:9"},
          {"upstream_host", "ollama.internal"},
          {"upstream_keepalive", "0"},
          {"upstream_max_idle", "64"},
          {"read_timeout", "1500ms"},
          {"drain_timeout", "1m"},
          {"client_max_body_size", "1m"},
          {"max_header_bytes", "256"},
          {"max_connections", "5000"},
          {"busy_poll", "50us"},
          {"log_level", "debug"}});
  Config c = BuildConfig();
  EXPECT_TRUE(c.listen_tls_enabled);
  EXPECT_EQ(c.listen_tls.family(), AF_INET6);
  EXPECT_EQ(Port(c.listen_tls), 8443);
  EXPECT_EQ(Port(c.listen_http), 8080);
  EXPECT_FALSE(c.http_serve);
  EXPECT_EQ(c.hsts, "");
  EXPECT_EQ(c.hsts_fields, "");
  EXPECT_EQ(c.h2_max_concurrent_streams, 7u);
  EXPECT_EQ(c.handshake_timeout_ns, 2'000'000'000);
  EXPECT_EQ(c.threads, 3);
  ASSERT_EQ(c.backends.size(), 1u);
  EXPECT_EQ(Port(c.backends[0].addr), 9);
  EXPECT_EQ(c.backends[0].host_header, "ollama.internal");
  EXPECT_EQ(c.upstream_keepalive, 0);
  EXPECT_EQ(c.upstream_max_idle, 64u);
  EXPECT_EQ(c.read_timeout_ns, 1'500'000'000);
  EXPECT_EQ(c.drain_timeout_ns, 60'000'000'000);
  EXPECT_EQ(c.client_max_body_size, 1ull << 20);
  EXPECT_EQ(c.max_header_bytes, 256u);
  EXPECT_EQ(c.max_connections, 5000);
  EXPECT_EQ(c.busy_poll_ns, 50'000);
  EXPECT_EQ(c.log_level, 0);
}

// Each refused value: exit 2 and the one line that names the flag.
TEST_F(FlagsTest, RefusedValuesExitNamingTheFlag) {
  const std::vector<std::pair<Flags, std::string>> cases = {
      {{{"http_mode", "proxy"}}, "--http_mode: expected redirect or serve"},
      {{{"http_mode", "redirect"}},
       "--http_mode: redirect needs a TLS listener; use --http_mode=serve to serve plain "
       "HTTP without --listen_tls"},
      {{{"listen_http", ""}},
       "--listen_http: at least one of --listen_http and --listen_tls is needed"},
      {{{"listen_tls", "127.0.0.1:8443"}, {"tls_cert", "c"}},
       "--tls_key: required with --listen_tls"},
      {{{"listen_http", "127.0.0.1:8443"},
        {"listen_tls", "127.0.0.1:8443"},
        {"tls_cert", "c"},
        {"tls_key", "k"}},
       "--listen_tls: 127.0.0.1:8443 is --listen_http's address too"},
      {{{"hsts", "max-age=1\r\nX: y"}}, "--hsts: must not contain line breaks"},
      {{{"h2_max_concurrent_streams", "0"}},
       "--h2_max_concurrent_streams: must be between 1 and 100000"},
      {{{"handshake_timeout", "0s"}}, "--handshake_timeout: must be positive"},
      {{{"threads", "1025"}}, "--threads: must be between 0 and 1024"},
      {{{"upstream", "https://127.0.0.1:11434"}},
       "--upstream: expected host:port without a scheme, got 'https://127.0.0.1:11434' "
       "(write '127.0.0.1:11434'); sluice reaches the upstream in plain HTTP only"},
      {{{"upstream_host", "a\nb"}}, "--upstream_host: must not contain line breaks"},
      {{{"upstream", "127.0.0.1:1,"}},
       "--upstream: empty entry in \"127.0.0.1:1,\" (backends are separated by commas)"},
      {{{"upstream", "127.0.0.1:1 weight=0"}},
       "--upstream: 127.0.0.1:1: \"weight=0\": weight is a number from 1 to 1000"},
      {{{"upstream", "127.0.0.1:1 slots=x"}},
       "--upstream: 127.0.0.1:1: \"slots=x\": slots is a number from 0 to 1024"},
      {{{"upstream", "127.0.0.1:1 slots=-1"}},
       "--upstream: 127.0.0.1:1: \"slots=-1\": slots is a number from 0 to 1024"},
      {{{"upstream", "127.0.0.1:1 slots=1025"}},
       "--upstream: 127.0.0.1:1: \"slots=1025\": slots is a number from 0 to 1024"},
      {{{"upstream", "127.0.0.1:1 fast"}},
       "--upstream: 127.0.0.1:1: unknown option \"fast\" (use name=NAME, weight=N, slots=N or "
       "max_loaded=N)"},
      {{{"upstream", "127.0.0.1:1,127.0.0.1:1"}}, "--upstream: 127.0.0.1:1: listed twice"},
      {{{"upstream", "127.0.0.1:1 name=gpu,127.0.0.1:2 name=gpu"}},
       "--upstream: 127.0.0.1:2: the name \"gpu\" is taken by another backend"},
      {{{"upstream", "127.0.0.1:1 name=a/b"}},
       "--upstream: 127.0.0.1:1: \"name=a/b\": a name is 1 to 64 letters, digits, '-', '_' or '.'"},
      {{{"upstream", "127.0.0.1:1 max_loaded=0"}},
       "--upstream: 127.0.0.1:1: \"max_loaded=0\": max_loaded is a number from 1 to 1024"},
      {{{"upstream_max_fails", "-1"}}, "--upstream_max_fails: must be >= 0"},
      {{{"resolve_interval", "0s"}}, "--resolve_interval: must be positive"},
      {{{"upstream_fail_timeout", "0s"}}, "--upstream_fail_timeout: must be positive"},
      {{{"balance", "random"}}, "--balance: \"random\": use model, round_robin or least_conn"},
      {{{"upstream_keepalive", "-1"}}, "--upstream_keepalive: \"-1\": use auto or a number >= 0"},
      {{{"upstream_keepalive", "many"}},
       "--upstream_keepalive: \"many\": use auto or a number >= 0"},
      {{{"upstream_max_idle", "0"}}, "--upstream_max_idle: must be >= 1"},
      {{{"read_timeout", "-1s"}}, "--read_timeout: must be positive"},
      {{{"drain_timeout", "0s"}}, "--drain_timeout: must be positive"},
      {{{"max_header_bytes", "255"}}, "--max_header_bytes: must be at least 256"},
      {{{"max_connections", "10000001"}}, "--max_connections: must be between 0 and 10000000"},
      {{{"busy_poll", "11ms"}}, "--busy_poll: must be between 0 and 10ms"},
      {{{"log_level", "trace"}}, "--log_level: expected debug, info, warn or error"},
  };
  for (const auto& [flags, message] : cases) {
    absl::FlagSaver saver;
    SetAll(kServe);
    SetAll(flags);
    EXPECT_EXIT(BuildConfig(), testing::ExitedWithCode(2),
                "^" + Literal("sluice: " + message + "\n") + "$")
        << message;
  }
}

TEST_F(FlagsTest, PolicyFlags) {
  SetAll({{"auth", "key"},
          {"keys_file", "/k"},
          {"htpasswd", "/h"},
          {"rules_file", "/r"},
          {"allow", "10.0.0.0/8"},
          {"deny", "10.1.0.0/16"},
          {"trusted_proxies", "127.0.0.1/32"},
          {"cors_origins", "*"},
          {"rate_generation", "off"},
          {"rate_by", "credential"},
          {"max_streams_per_ip", "2"},
          {"max_streams_per_key", "3"}});
  policy::PolicyOptions o = PolicyFlags();
  EXPECT_EQ(o.auth, "key");
  EXPECT_EQ(o.keys_file, "/k");
  EXPECT_EQ(o.htpasswd_file, "/h");
  EXPECT_EQ(o.rules_file, "/r");
  EXPECT_EQ(o.allow_cidrs, "10.0.0.0/8");
  EXPECT_EQ(o.deny_cidrs, "10.1.0.0/16");
  EXPECT_EQ(o.trusted_proxies, "127.0.0.1/32");
  EXPECT_EQ(o.admin_cidrs, "127.0.0.1/32,::1/128");
  EXPECT_EQ(o.cors_origins, "*");
  EXPECT_EQ(o.rate_generation, "off");
  EXPECT_EQ(o.rate_api, "60r/m burst=20 nodelay");
  EXPECT_EQ(o.rate_by, "credential");
  EXPECT_EQ(o.auth_attempts, "6r/m burst=10");
  EXPECT_EQ(o.max_streams_per_ip, 2u);
  EXPECT_EQ(o.max_streams_per_key, 3u);

  Set("max_streams_per_key", "-1");
  EXPECT_EXIT(PolicyFlags(), testing::ExitedWithCode(2),
              Literal("sluice: --max_streams_per_key: must be 0 or more"));
  Set("max_streams_per_ip", "-1");
  EXPECT_EXIT(PolicyFlags(), testing::ExitedWithCode(2),
              Literal("sluice: --max_streams_per_ip: must be 0 or more"));
}

TEST_F(FlagsTest, LimitTableEntries) {
  EXPECT_EQ(LimitTableEntriesFlag(), 131072u);
  Set("limit_table_entries", "1024");
  EXPECT_EQ(LimitTableEntriesFlag(), 1024u);
  Set("limit_table_entries", "1023");
  EXPECT_EXIT(LimitTableEntriesFlag(), testing::ExitedWithCode(2),
              Literal("sluice: --limit_table_entries: must be at least 1024"));
}

TEST_F(FlagsTest, ObservabilityFlags) {
  Observability d = ObservabilityFlags();
  EXPECT_EQ(d.access_log_format, AccessLogFormat::kNginx);
  EXPECT_EQ(d.access_log_flush_ns, 1'000'000'000);
  EXPECT_TRUE(d.metrics);
  EXPECT_EQ(d.metrics_path, "/metrics");
  EXPECT_EQ(d.status_path, "/status");
  EXPECT_EQ(d.status_allow.size(), 2u);
  EXPECT_EQ(d.access_log, nullptr);

  SetAll({{"access_log_format", "json"},
          {"access_log_flush", "250ms"},
          {"metrics", "false"},
          {"metrics_path", ""},
          {"status_path", "/nginx_status"},
          {"status_allow", "10.0.0.0/8"}});
  Observability o = ObservabilityFlags();
  EXPECT_EQ(o.access_log_format, AccessLogFormat::kJson);
  EXPECT_EQ(o.access_log_flush_ns, 250'000'000);
  EXPECT_FALSE(o.metrics);
  EXPECT_EQ(o.metrics_path, "");
  EXPECT_EQ(o.status_path, "/nginx_status");
  EXPECT_EQ(o.status_allow.size(), 1u);
}

TEST_F(FlagsTest, ObservabilityRefusals) {
  const std::vector<std::pair<Flags, std::string>> cases = {
      {{{"access_log_format", "combined"}}, "--access_log_format: expected nginx or json"},
      {{{"access_log_flush", "0s"}}, "--access_log_flush: must be positive"},
      {{{"metrics_path", "metrics"}}, "--metrics_path: expected a path starting with / (or empty)"},
      {{{"status_path", "/status?x"}}, "--status_path: expected a path starting with / (or empty)"},
      {{{"metrics_path", "/s"}, {"status_path", "/s"}},
       "--metrics_path: must differ from --status_path"},
  };
  for (const auto& [flags, message] : cases) {
    absl::FlagSaver saver;
    SetAll(flags);
    EXPECT_EXIT(ObservabilityFlags(), testing::ExitedWithCode(2),
                "^" + Literal("sluice: " + message + "\n") + "$")
        << message;
  }
  Set("status_allow", "nonsense");
  EXPECT_EXIT(ObservabilityFlags(), testing::ExitedWithCode(2),
              "^" + Literal("sluice: --status_allow: "));
}

TEST_F(FlagsTest, AccessLogFile) {
  EXPECT_EQ(OpenAccessLogFlag(), nullptr);  // "off"
  Set("access_log", "");
  EXPECT_EQ(OpenAccessLogFlag(), nullptr);
  char dir[] = "/tmp/sluice_flags_test_XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/access.log";
  Set("access_log", path);
  EXPECT_NE(OpenAccessLogFlag(), nullptr);
  EXPECT_EQ(access(path.c_str(), F_OK), 0);
  unlink(path.c_str());
  Set("access_log", dir);  // a directory does not open
  EXPECT_EXIT(OpenAccessLogFlag(), testing::ExitedWithCode(2),
              "^" + Literal("sluice: --access_log: "));
  rmdir(dir);
}

TEST_F(FlagsTest, TlsFlags) {
  SetAll({{"tls_cert", "/c.pem"}, {"tls_key", "/k.pem"}, {"tls_session_tickets", "false"}});
  tls::TlsContextOptions o = TlsFlags();
  EXPECT_EQ(o.cert_chain_path, "/c.pem");
  EXPECT_EQ(o.key_path, "/k.pem");
  EXPECT_FALSE(o.session_tickets);
}

// Several backends with their options, and the balance.
TEST_F(FlagsTest, SeveralBackends) {
  SetAll(kServe);
  SetAll({{"upstream", "127.0.0.1:11434 slots=4 weight=2, localhost:11435"},
          {"balance", "least_conn"}});
  Config c = BuildConfig();
  ASSERT_EQ(c.backends.size(), 2u);
  EXPECT_EQ(c.backends[0].name, "127.0.0.1:11434");
  EXPECT_EQ(c.backends[0].slots, 4);
  EXPECT_EQ(c.backends[0].weight, 2);
  EXPECT_EQ(c.backends[1].name, "localhost:11435");
  EXPECT_EQ(c.backends[1].host_header, "localhost:11435");
  EXPECT_EQ(Port(c.backends[1].addr), 11435);
  EXPECT_EQ(c.backends[1].slots, kDefaultSlots);  // one generation at once, as Ollama
  EXPECT_EQ(c.balance, Balance::kLeastConn);
}

// The model policy's flags: their defaults, values read as the keys file's
// settings, and each bad one an exit naming the flag.
TEST_F(FlagsTest, ModelPolicyFlags) {
  SetAll(kServe);
  policy::ModelPolicy defaults = policy::ModelPolicy{}.With(ModelDefaultsFlags());
  EXPECT_TRUE(defaults.models.empty());
  EXPECT_EQ(defaults.max_keep_alive_ns, int64_t{3600} * 1'000'000'000);
  EXPECT_FALSE(defaults.keep_alive_forever);
  EXPECT_EQ(defaults.max_num_ctx, policy::kNoLimit);
  EXPECT_EQ(defaults.max_num_predict, policy::kNoLimit);
  EXPECT_FALSE(defaults.refuse_over);
  {
    absl::FlagSaver saver;
    SetAll({{"models", "llama3*,qwen2.5:7b"},
            {"model_aliases", "gpt-4o=llama3.1:8b, mini=llama3.2:3b"},
            {"max_keep_alive", "inf"},
            {"keep_alive_forever", "true"},
            {"max_num_ctx", "8192"},
            {"max_num_predict", "1024"},
            {"over_max", "refuse"}});
    policy::ModelPolicy p = policy::ModelPolicy{}.With(ModelDefaultsFlags());
    EXPECT_EQ(p.models, (std::vector<std::string>{"llama3*", "qwen2.5:7b"}));
    ASSERT_EQ(p.aliases.size(), 2u);
    EXPECT_EQ(p.aliases[1].first, "mini:latest");
    EXPECT_EQ(p.aliases[1].second, "llama3.2:3b");
    EXPECT_TRUE(p.Open() == false);
    EXPECT_EQ(p.max_keep_alive_ns, policy::kNoLimit);
    EXPECT_TRUE(p.keep_alive_forever);
    EXPECT_EQ(p.max_num_ctx, 8192);
    EXPECT_EQ(p.max_num_predict, 1024);
    EXPECT_TRUE(p.refuse_over);
  }
  const std::vector<std::pair<Flags, std::string>> cases = {
      {{{"max_keep_alive", "x"}},
       "--max_keep_alive: max_keep_alive=\"x\": expected a duration such as 30m or 2h, or inf"},
      {{{"over_max", "drop"}}, "--over_max: over_max=\"drop\": expected clamp or refuse"},
      {{{"models", "a b"}},
       "--models: models=\"a b\": expected model names or globs separated by commas"},
      {{{"model_aliases", "gpt-4o"}},
       "--model_aliases: alias=\"gpt-4o\": expected NAME=MODEL, e.g. alias=gpt-4o=llama3.1:8b"},
      {{{"max_num_ctx", "-1"}},
       "--max_num_ctx: max_num_ctx=\"-1\": expected a whole number (0: no limit)"},
  };
  for (const auto& [flags, message] : cases) {
    absl::FlagSaver saver;
    SetAll(flags);
    EXPECT_EXIT(ModelDefaultsFlags(), testing::ExitedWithCode(2),
                "^" + Literal(absl::StrCat("sluice: ", message, "\n")) + "$")
        << message;
  }
}

// slots=0 turns the queue off for a backend.
TEST_F(FlagsTest, SlotsZeroIsNotQueued) {
  SetAll(kServe);
  SetAll({{"upstream", "127.0.0.1:11434 slots=0"}});
  Config c = BuildConfig();
  ASSERT_EQ(c.backends.size(), 1u);
  EXPECT_EQ(c.backends[0].slots, 0);
}

// name= names a backend (X-Sluice-Backend, logs); its Host stays host:port.
TEST_F(FlagsTest, NamedBackendKeepsItsHost) {
  SetAll(kServe);
  SetAll({{"upstream", "127.0.0.1:11434 name=gpu1 max_loaded=2,127.0.0.1:11435"}});
  Config c = BuildConfig();
  ASSERT_EQ(c.backends.size(), 2u);
  EXPECT_EQ(c.backends[0].name, "gpu1");
  EXPECT_EQ(c.backends[0].host_header, "127.0.0.1:11434");
  EXPECT_EQ(c.backends[0].max_loaded, 2);
  EXPECT_EQ(c.backends[1].name, "127.0.0.1:11435");
  EXPECT_EQ(c.balance, Balance::kModel);
}

// max_addresses=N: how many of a DNS name's addresses are backends; only
// for a name, 1 to 64.
TEST_F(FlagsTest, MaxAddressesIsForNames) {
  SetAll(kServe);
  SetAll({{"upstream", "localhost:11434 max_addresses=3, localhost:11435"}});
  Config c = BuildConfig();
  ASSERT_EQ(c.backends.size(), 2u);
  ASSERT_NE(c.backends[0].dns, nullptr);
  EXPECT_EQ(c.backends[0].dns->slots(), 3u);
  EXPECT_EQ(c.backends[1].dns->slots(), static_cast<size_t>(kDefaultMaxAddresses));
  const std::pair<const char*, const char*> cases[] = {
      {"127.0.0.1:1 max_addresses=2",
       "127.0.0.1:1: max_addresses=N is for a backend given by DNS name"},
      {"localhost:1 max_addresses=65",
       "localhost:1: \"max_addresses=65\": max_addresses is a number from 1 to 64"},
  };
  for (const auto& [upstream, message] : cases) {
    absl::FlagSaver saver;
    SetAll({{"upstream", upstream}});
    EXPECT_EXIT(BuildConfig(), testing::ExitedWithCode(2),
                "^" + Literal(absl::StrCat("sluice: --upstream: ", message, "\n")) + "$")
        << message;
  }
}

}  // namespace
}  // namespace sluice::core
