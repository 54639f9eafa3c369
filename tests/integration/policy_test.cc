// The access policy through the real binary: API keys made by `sluice keys`,
// htpasswd files made by Apache's htpasswd, the operators' checks of
// NGINX_BASELINE.md over TLS (HTTP/2 and HTTP/1.1), blocked and admin-only
// routes on every path variant, IP rules and X-Forwarded-For, CORS, rate
// limits (nodelay and delayed, exact across two workers), concurrency caps,
// bcrypt off the event loop, and SIGHUP reloads (good, broken, under load).
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "policy/ip_set.h"
#include "tests/integration/proxy_test_base.h"
#include "tests/integration/timing.h"

namespace sluice::integration {
namespace {

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

class PolicyIt : public ProxyTest {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "sluice-policy-",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name(), "-",
                        getpid());
    RunShell(absl::StrCat("rm -rf ", ShellQuote(dir_), " && mkdir -p ", ShellQuote(dir_)),
             absl::Seconds(5));
  }
  std::string keys() const { return dir_ + "/keys.txt"; }
  std::string users() const { return dir_ + "/users.htpasswd"; }
  std::string rules() const { return dir_ + "/rules.txt"; }

  // `sluice keys ...` as an operator runs it.
  CommandResult KeysCommand(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"keys"};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunProgram(SluiceBinary(), argv, absl::Seconds(10));
  }
  // Adds a key; returns the key printed once.
  std::string AddKey(const std::string& name) {
    CommandResult r = KeysCommand({"add", name, "--keys_file", keys()});
    EXPECT_EQ(r.exit.code, 0) << r.err;
    return std::string(absl::StripAsciiWhitespace(r.out));
  }
  // htpasswd -b<flags> as an operator runs it (-c on the first user).
  void AddUser(const std::string& flags, const std::string& user, const std::string& pass) {
    struct stat st;
    const bool exists = stat(users().c_str(), &st) == 0;
    CommandResult r =
        RunShell(absl::StrCat("htpasswd -b", exists ? "" : "c", flags, " ", ShellQuote(users()),
                              " ", ShellQuote(user), " ", ShellQuote(pass)),
                 absl::Seconds(30));
    ASSERT_EQ(r.exit.code, 0) << r.err;
  }
  // One request on a fresh connection; returns the response.
  HttpResponse Get(const std::string& target,
                   const std::vector<std::pair<std::string, std::string>>& headers = {},
                   const std::string& method = "GET", const std::string& body = "") {
    auto r = Exchange(proxy_port(), BuildRequest(method, target, headers, body));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : HttpResponse{};
  }
  static std::pair<std::string, std::string> Bearer(const std::string& key) {
    return {"Authorization", absl::StrCat("Bearer ", key)};
  }
  // Runs sluice with `args` (no harness defaults) and returns how it ended.
  CommandResult RunSluice(std::vector<std::string> args) {
    args.insert(args.begin(), {"--listen_http=127.0.0.1:0", "--listen_tls=", "--http_mode=serve",
                               "--upstream=127.0.0.1:9"});
    return RunProgram(SluiceBinary(), args, absl::Seconds(10));
  }
  int64_t SimRequests() {
    auto stats = FetchSimStats(sim_port());
    EXPECT_TRUE(stats.ok()) << stats.status();
    return stats.ok() ? stats->requests : -1;
  }

  std::string dir_;
};

TEST_F(PolicyIt, RefusesToStartWithoutAuthUnlessAskedAndNamesBadFlags) {
  CommandResult r = RunSluice({});
  EXPECT_EQ(r.exit.code, 2);
  EXPECT_TRUE(absl::StrContains(r.err, "--auth")) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;

  WriteFile(keys(), "ok:sha256:" + std::string(64, 'a') + "\nbroken line\n");
  WriteFile(rules(), "route /api/tags deny\nroute /x maybe\n");
  struct Case {
    std::vector<std::string> args;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {{"--auth=bogus"}, "--auth"},
      {{"--auth=key"}, "--auth"},
      {{"--auth=none", "--rate_api=10r/x"}, "--rate_api"},
      {{"--auth=none", "--rate_generation=fast"}, "--rate_generation"},
      {{"--auth=none", "--allow=10.0.0.0/33"}, "--allow"},
      {{"--auth=none", "--trusted_proxies=nonsense"}, "--trusted_proxies"},
      {{"--auth=none", "--cors_origins=app.example"}, "--cors_origins"},
      {{"--auth=none", "--rate_by=moon"}, "--rate_by"},
      {{"--keys_file=" + keys()}, "keys.txt:2:"},
      {{"--keys_file=" + dir_ + "/missing.txt"}, "missing.txt"},
      {{"--htpasswd=" + dir_ + "/missing.htpasswd"}, "--htpasswd"},
      {{"--auth=none", "--rules_file=" + rules()}, "rules.txt:2:"},
  };
  for (const Case& c : cases) {
    CommandResult res = RunSluice(c.args);
    EXPECT_EQ(res.exit.code, 2) << absl::StrJoin(c.args, " ") << ": " << res.err;
    EXPECT_TRUE(absl::StrContains(res.err, c.expect))
        << absl::StrJoin(c.args, " ") << ": " << res.err;
    EXPECT_EQ(std::count(res.err.begin(), res.err.end(), '\n'), 1) << res.err;
  }
}

TEST_F(PolicyIt, KeysMadeByTheBinaryAuthenticateAndRevokeOnReload) {
  const std::string alice = AddKey("alice");
  const std::string bob = AddKey("bob");
  ASSERT_TRUE(absl::StartsWith(alice, "sk-")) << alice;
  ASSERT_NE(alice, bob);
  struct stat st;
  ASSERT_EQ(stat(keys().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600);
  // The file holds hashes, never the key.
  std::ifstream in(keys());
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_FALSE(absl::StrContains(text, alice));
  CommandResult list = KeysCommand({"list", "--keys_file", keys()});
  EXPECT_EQ(list.out, "alice\nbob\n");
  EXPECT_EQ(KeysCommand({"add", "alice", "--keys_file", keys()}).exit.code, 1);
  EXPECT_EQ(KeysCommand({"add", "--keys_file", keys()}).exit.code, 2);

  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--keys_file=" + keys()}));
  HttpResponse none = Get("/api/tags");
  EXPECT_EQ(none.status, 401);
  EXPECT_EQ(none.body, "{\"error\":\"Unauthorized\"}\n");
  EXPECT_TRUE(absl::StartsWith(none.Header("www-authenticate").value_or(""), "Bearer"));
  EXPECT_EQ(Get("/api/tags", {Bearer(alice)}).status, 200);
  EXPECT_EQ(Get("/api/tags", {{"x-api-key", bob}}).status, 200);
  EXPECT_EQ(Get("/api/tags", {{"Authorization", "bearer  " + bob}}).status, 200);
  EXPECT_EQ(Get("/api/tags", {Bearer(alice + "x")}).status, 401);
  EXPECT_EQ(Get("/api/tags", {Bearer("")}).status, 401);
  EXPECT_EQ(SimRequests(), 3);

  // The proxy's credentials are not passed on to Ollama.
  HttpResponse echo = Get("/sim/echo", {Bearer(alice), {"x-api-key", alice}});
  std::optional<EchoedRequest> e = ParseEcho(echo.body);
  ASSERT_TRUE(e.has_value()) << echo.body;
  EXPECT_TRUE(e->All("Authorization").empty()) << e->HeaderDump();
  EXPECT_TRUE(e->All("x-api-key").empty()) << e->HeaderDump();

  ASSERT_EQ(KeysCommand({"revoke", "alice", "--keys_file", keys()}).exit.code, 0);
  ASSERT_TRUE(sluice_->Signal(SIGHUP));
  absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (Get("/api/tags", {Bearer(alice)}).status != 401 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(Get("/api/tags", {Bearer(alice)}).status, 401);
  EXPECT_EQ(Get("/api/tags", {Bearer(bob)}).status, 200);
}

TEST_F(PolicyIt, BasicAuthWithEveryHtpasswdFormat) {
  // bcrypt (cheap cost for the test), apr1 MD5 (htpasswd's default), SHA-1,
  // and the crypt SHA-256 / SHA-512 schemes.
  const std::vector<std::pair<std::string, std::string>> formats = {
      {"B -C 5", "bcrypt"}, {"m", "apr1"}, {"s", "sha1"}, {"2", "sha256"}, {"5", "sha512"}};
  for (const auto& [flags, user] : formats) {
    ASSERT_NO_FATAL_FAILURE(AddUser(flags, user, "pw-" + user));
  }
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--htpasswd=" + users()}));
  for (const auto& [flags, user] : formats) {
    auto basic = [](const std::string& u, const std::string& p) {
      return std::pair<std::string, std::string>{
          "Authorization", absl::StrCat("Basic ", absl::Base64Escape(u + ":" + p))};
    };
    EXPECT_EQ(Get("/api/tags", {basic(user, "pw-" + user)}).status, 200) << user;
    HttpResponse wrong = Get("/api/tags", {basic(user, "pw-" + user + "x")});
    EXPECT_EQ(wrong.status, 401) << user;
    EXPECT_TRUE(absl::StartsWith(wrong.Header("www-authenticate").value_or(""), "Basic realm="))
        << user;
    // A cached answer gives the same result.
    EXPECT_EQ(Get("/api/tags", {basic(user, "pw-" + user)}).status, 200) << user;
  }
  EXPECT_EQ(Get("/api/tags").status, 401);
}

// The checks of NGINX_BASELINE.md, with curl over TLS, HTTP/2 and HTTP/1.1,
// and nothing but the keys and users files given: the default limits hold.
TEST_F(PolicyIt, OperatorChecksOverTlsWithDefaults) {
  const std::string key = AddKey("team");
  ASSERT_NO_FATAL_FAILURE(AddUser("B -C 5", "ann", "s3cret"));
  CommandResult certs = RunShell(absl::StrCat("bash ", ShellQuote(SLUICE_SOURCE_DIR),
                                              "/tools/make-certs.sh ", ShellQuote(dir_ + "/certs")),
                                 absl::Seconds(30));
  ASSERT_EQ(certs.exit.code, 0) << certs.err;
  ASSERT_NO_FATAL_FAILURE(StartStack(
      {"--token_delay_ms=0"},
      {"--listen_tls=127.0.0.1:0", "--http_mode=redirect",
       "--tls_cert=" + dir_ + "/certs/server.pem", "--tls_key=" + dir_ + "/certs/server.key",
       "--keys_file=" + keys(), "--htpasswd=" + users(), "--rate_generation=10r/m burst=5 nodelay",
       "--rate_api=60r/m burst=20 nodelay"}));
  auto curl = [&](const std::string& opts, const std::string& path) {
    return RunShell(
               absl::StrCat(
                   "curl -sS --max-time 10 --path-as-is --cacert ",
                   ShellQuote(dir_ + "/certs/ca.pem"), " -o /dev/null -w '%{http_code}' ", opts,
                   " ", ShellQuote(absl::StrCat("https://127.0.0.1:", sluice_->tls_port(), path))),
               absl::Seconds(15))
        .out;
  };
  const std::string auth = ShellQuote("Authorization: Bearer " + key);
  for (const char* proto : {"--http2", "--http1.1"}) {
    EXPECT_EQ(curl(proto, "/api/tags"), "401") << proto;
    EXPECT_EQ(curl(absl::StrCat(proto, " -H ", auth), "/api/tags"), "200") << proto;
    EXPECT_EQ(curl(absl::StrCat(proto, " -u ann:s3cret"), "/api/tags"), "200") << proto;
    EXPECT_EQ(curl(absl::StrCat(proto, " -u ann:wrong"), "/api/tags"), "401") << proto;
    for (const char* path : {"/api/delete", "/api//delete", "/api/%64elete", "/api/./x/../delete",
                             "/API/DELETE", "/api/push"}) {
      EXPECT_EQ(curl(absl::StrCat(proto, " -X DELETE -H ", auth), path), "403")
          << proto << " " << path;
    }
  }
  // 20 rapid generations with a valid key, alternating HTTP/2 and
  // HTTP/1.1: 1 + burst pass, the rest get 429.
  std::vector<std::string> codes;
  for (int i = 0; i < 20; ++i) {
    codes.push_back(curl(absl::StrCat(i % 2 ? "--http1.1" : "--http2", " -H ", auth,
                                      " -d '{\"model\":\"m\",\"stream\":false}'"),
                         "/api/generate"));
  }
  EXPECT_EQ(std::count(codes.begin(), codes.end(), "200"), 6) << absl::StrJoin(codes, " ");
  EXPECT_EQ(std::count(codes.begin(), codes.end(), "429"), 14) << absl::StrJoin(codes, " ");
  EXPECT_EQ(codes.back(), "429");
}

TEST_F(PolicyIt, BlockedRoutesHoldOnEveryPathVariantAndNothingReachesOllama) {
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--auth=none"}));
  for (const char* target :
       {"/api/delete", "/api//delete", "//api/delete", "/api/%64elete", "/api/del%65te",
        "/%61pi/delete", "/api/./x/../delete", "/API/DELETE", "/Api/Delete/", "/api/delete/",
        "/api%2Fdelete", "/api/x%2F..%2Fdelete", "/api/delete?name=m", "/api/push", "/api/%70ush",
        "/api/./push/"}) {
    HttpResponse r = Get(target, {}, "DELETE", "{\"model\":\"m\"}");
    EXPECT_EQ(r.status, 403) << target;
    EXPECT_TRUE(absl::StrContains(r.body, "not permitted via API")) << target << ": " << r.body;
  }
  for (const char* target :
       {"/api/../../x", "/api/%00", "/api/a%2", "/api\\delete", "/api/%5cdelete"}) {
    EXPECT_EQ(Get(target).status, 400) << target;
  }
  EXPECT_EQ(SimRequests(), 0);
  // Ollama gets the normalised path, the query untouched.
  HttpResponse echo = Get("/sim//x/../echo?q=%2F..%2F");
  std::optional<EchoedRequest> e = ParseEcho(echo.body);
  ASSERT_TRUE(e.has_value()) << echo.status << " " << echo.body;
  EXPECT_EQ(e->target, "/sim/echo?q=%2F..%2F");
}

TEST_F(PolicyIt, AdminRoutesAndTrustedProxies) {
  ASSERT_NO_FATAL_FAILURE(StartStack({"--token_delay_ms=0"}, {"--auth=none"}));
  // Default admin addresses are loopback: the test client is one.
  EXPECT_EQ(Get("/api/pull", {}, "POST", "{\"model\":\"m\",\"stream\":false}").status, 200);
  sluice_.reset();
  ASSERT_NO_FATAL_FAILURE(
      StartStack({"--token_delay_ms=0"},
                 {"--auth=none", "--admin_cidrs=10.9.9.0/24", "--trusted_proxies=127.0.0.0/8"}));
  for (const char* path :
       {"/api/pull", "/api/create", "/api/copy", "/api/blobs/sha256:00", "/api//PULL/"}) {
    HttpResponse r = Get(path, {}, "POST", "{}");
    EXPECT_EQ(r.status, 403) << path;
    EXPECT_TRUE(absl::StrContains(r.body, "admin")) << r.body;
  }
  // From a trusted proxy, X-Forwarded-For names the client.
  EXPECT_EQ(Get("/api/pull", {{"X-Forwarded-For", "10.9.9.7"}}, "POST",
                "{\"model\":\"m\",\"stream\":false}")
                .status,
            200);
  // Ollama is told the resolved client in X-Real-IP; X-Forwarded-For keeps
  // the chain with the TCP peer appended.
  HttpResponse echo = Get("/sim/echo", {{"X-Forwarded-For", "10.9.9.7"}});
  std::optional<EchoedRequest> e = ParseEcho(echo.body);
  ASSERT_TRUE(e.has_value()) << echo.body;
  EXPECT_EQ(e->All("X-Real-IP"), std::vector<std::string>{"10.9.9.7"}) << e->HeaderDump();
  EXPECT_EQ(e->All("X-Forwarded-For"), std::vector<std::string>{"10.9.9.7, 127.0.0.1"});
  // A forged hop left of an untrusted one is not believed.
  EXPECT_EQ(Get("/api/pull", {{"X-Forwarded-For", "10.9.9.7, 192.0.2.1"}}, "POST", "{}").status,
            403);
  sluice_.reset();
  // Without --trusted_proxies the header is ignored.
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--auth=none", "--admin_cidrs=10.9.9.0/24"}));
  EXPECT_EQ(Get("/api/pull", {{"X-Forwarded-For", "10.9.9.7"}}, "POST", "{}").status, 403);
}

TEST_F(PolicyIt, IpRulesGlobalAndPerRoute) {
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--auth=none", "--allow=192.168.1.0/24"}));
  HttpResponse r = Get("/api/tags");
  EXPECT_EQ(r.status, 403);
  EXPECT_TRUE(absl::StrContains(r.body, "address")) << r.body;
  sluice_.reset();
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--auth=none", "--deny=127.0.0.1"}));
  EXPECT_EQ(Get("/api/tags").status, 403);
  sluice_.reset();
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--auth=none", "--allow=::1,127.0.0.0/8"}));
  EXPECT_EQ(Get("/api/tags").status, 200);
  sluice_.reset();
  WriteFile(rules(),
            "# per-route rules\n"
            "route /api/tags allow deny_ip=127.0.0.1\n"
            "route /api/version allow allow_ip=10.0.0.0/8\n"
            "route /api/ps deny\n"
            "route /v1/* allow allow_ip=127.0.0.0/8\n");
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--auth=none", "--rules_file=" + rules()}));
  EXPECT_EQ(Get("/api/tags").status, 403);
  EXPECT_EQ(Get("/api/version").status, 403);
  EXPECT_EQ(Get("/api/ps").status, 403);
  EXPECT_EQ(Get("/v1/models").status, 200);
  EXPECT_EQ(SimRequests(), 1);
}

TEST_F(PolicyIt, RulesReloadAtomicallyAndABrokenFileKeepsTheOldPolicy) {
  WriteFile(rules(), "route /api/tags deny\n");
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--auth=none", "--rules_file=" + rules()}));
  EXPECT_EQ(Get("/api/tags").status, 403);
  WriteFile(rules(), "route /api/version deny\n");
  ASSERT_TRUE(sluice_->Signal(SIGHUP));
  absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (Get("/api/tags").status != 200 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(Get("/api/tags").status, 200);
  EXPECT_EQ(Get("/api/version").status, 403);
  WriteFile(rules(), "route /api/tags deny\nroute /api/version sometimes\n");
  ASSERT_TRUE(sluice_->Signal(SIGHUP));
  deadline = absl::Now() + absl::Seconds(5);
  while (!absl::StrContains(sluice_->Stderr(), "rules.txt:2:") && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(absl::StrContains(sluice_->Stderr(), "policy not reloaded")) << sluice_->Stderr();
  EXPECT_TRUE(absl::StrContains(sluice_->Stderr(), "rules.txt:2:")) << sluice_->Stderr();
  // Neither half of the broken file applies.
  EXPECT_EQ(Get("/api/tags").status, 200);
  EXPECT_EQ(Get("/api/version").status, 403);
}

TEST_F(PolicyIt, CorsIsAnsweredByTheProxy) {
  const std::string key = AddKey("web");
  ASSERT_NO_FATAL_FAILURE(
      StartStack({}, {"--keys_file=" + keys(), "--cors_origins=https://app.example"}));
  // A preflight carries no credentials and is answered here.
  HttpResponse pre = Get("/api/chat",
                         {{"Origin", "https://app.example"},
                          {"Access-Control-Request-Method", "POST"},
                          {"Access-Control-Request-Headers", "authorization, content-type"}},
                         "OPTIONS");
  EXPECT_EQ(pre.status, 204);
  EXPECT_EQ(pre.Header("access-control-allow-origin").value_or(""), "https://app.example");
  EXPECT_TRUE(absl::StrContains(pre.Header("access-control-allow-methods").value_or(""), "POST"));
  EXPECT_EQ(pre.Header("access-control-allow-headers").value_or(""), "authorization, content-type");
  // The real request: allowed origin echoed, Origin not forwarded.
  HttpResponse echo = Get("/sim/echo", {{"Origin", "https://app.example"}, Bearer(key)});
  EXPECT_EQ(echo.status, 200);
  EXPECT_EQ(echo.Header("access-control-allow-origin").value_or(""), "https://app.example");
  std::optional<EchoedRequest> e = ParseEcho(echo.body);
  ASSERT_TRUE(e.has_value()) << echo.body;
  EXPECT_TRUE(e->All("Origin").empty()) << e->HeaderDump();
  // A 401 is readable by the allowed page too.
  HttpResponse denied = Get("/api/tags", {{"Origin", "https://app.example"}});
  EXPECT_EQ(denied.status, 401);
  EXPECT_EQ(denied.Header("access-control-allow-origin").value_or(""), "https://app.example");
  // Other origins are refused, preflight or not.
  EXPECT_EQ(Get("/api/chat",
                {{"Origin", "https://evil.example"}, {"Access-Control-Request-Method", "POST"}},
                "OPTIONS")
                .status,
            403);
  EXPECT_EQ(Get("/api/tags", {{"Origin", "https://evil.example"}, Bearer(key)}).status, 403);
  EXPECT_EQ(SimRequests(), 0);  // /sim/echo is not counted
}

// Each client address is steered to one worker (the SO_REUSEPORT program
// and policy::SteeringSlot agree), so its limit state stays on that CPU.
TEST_F(PolicyIt, EachClientAddressIsSteeredToOneWorker) {
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--auth=none", "--threads=2", "--log_level=debug"}));
  CommandResult r =
      RunShell(absl::StrCat("for x in 1 2 3 4 5 6 7 8; do for k in 1 2; do curl -s -o /dev/null "
                            "--max-time 5 --interface 127.0.0.$x ",
                            proxy_url(), "/api/version; done; done"),
               absl::Seconds(30));
  ASSERT_EQ(r.exit.code, 0) << r.err;
  std::map<std::string, std::set<std::string>> workers;  // address -> wN
  for (absl::string_view line : absl::StrSplit(sluice_->Stderr(), '\n')) {
    if (!absl::StrContains(line, ": accepted")) continue;
    std::vector<std::string> words = absl::StrSplit(line, ' ', absl::SkipEmpty());
    // "DATE TIME [debug] wN: *CONN client ADDR: accepted"
    ASSERT_GE(words.size(), 8u) << line;
    std::string addr = words[6];
    addr.pop_back();  // ':'
    workers[addr].insert(words[3]);
  }
  ASSERT_EQ(workers.size(), 8u) << sluice_->Stderr();
  std::set<std::string> used;
  for (const auto& [addr, ws] : workers) {
    std::optional<policy::IpAddress> ip = policy::IpAddress::Parse(addr);
    ASSERT_TRUE(ip.has_value()) << addr;
    const std::string expected =
        absl::StrCat("w", policy::SteeringSlot(policy::SteeringHash(*ip), 2), ":");
    EXPECT_EQ(ws, std::set<std::string>{expected}) << addr;
    used.insert(ws.begin(), ws.end());
  }
  EXPECT_EQ(used.size(), 2u);  // these 8 addresses use both workers
}

// Connections of one client (a key, or an address behind a trusted proxy)
// from 8 source addresses, so on both workers: the limit is counted once.
TEST_F(PolicyIt, RateLimitIsExactAcrossWorkers) {
  const std::string key = AddKey("shared");
  // 40 requests, 5 from each of 127.0.0.1..8; prints one status per line.
  auto burst = [&](const std::string& extra) {
    CommandResult r = RunShell(
        absl::StrCat("for k in 1 2 3 4 5; do for x in 1 2 3 4 5 6 7 8; do curl -s -o /dev/null "
                     "-w '%{http_code}\\n' --max-time 5 --interface 127.0.0.$x -H ",
                     ShellQuote("Authorization: Bearer " + key), " ", extra, " ", proxy_url(),
                     "/api/version; done; done"),
        absl::Seconds(60));
    EXPECT_EQ(r.exit.code, 0) << r.err;
    std::map<std::string, int> codes;
    for (absl::string_view c : absl::StrSplit(r.out, '\n', absl::SkipEmpty())) {
      ++codes[std::string(c)];
    }
    return codes;
  };
  // By key: the connections of one key meet both workers.
  ASSERT_NO_FATAL_FAILURE(
      StartStack({}, {"--keys_file=" + keys(), "--threads=2", "--rate_api=6r/m burst=9 nodelay",
                      "--rate_by=credential"}));
  std::map<std::string, int> codes = burst("");
  EXPECT_EQ(codes["200"], 10);
  EXPECT_EQ(codes["429"], 30);
  // By address: one client behind trusted proxies on both workers.
  sluice_.reset();
  ASSERT_NO_FATAL_FAILURE(
      StartStack({}, {"--keys_file=" + keys(), "--threads=2", "--rate_api=6r/m burst=9 nodelay",
                      "--trusted_proxies=127.0.0.0/8"}));
  codes = burst("-H 'X-Forwarded-For: 203.0.113.5'");
  EXPECT_EQ(codes["200"], 10);
  EXPECT_EQ(codes["429"], 30);
}

TEST_F(PolicyIt, DelayedModeQueuesUpToTheBurst) {
  // 4 r/s, burst 2, no nodelay: the first passes at once, the next two wait
  // 250 and 500 ms, the fourth is refused.
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--auth=none", "--rate_api=4r/s burst=2"}));
  std::vector<std::unique_ptr<HttpConnection>> conns;
  const absl::Time start = absl::Now();
  for (int i = 0; i < 4; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(auto c, HttpConnection::Connect(proxy_port()));
    IT_ASSERT_OK(c->Send(BuildRequest("GET", "/api/version")));
    conns.push_back(std::move(c));
  }
  std::vector<int> status;
  std::vector<double> ms;
  for (auto& c : conns) {
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, c->ReadResponse(absl::Seconds(5)));
    status.push_back(r.status);
    ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
  }
  EXPECT_EQ(status, (std::vector<int>{200, 200, 200, 429}));
  EXPECT_LT(ms[0], 200);
  EXPECT_GE(ms[1], 200);
  EXPECT_GE(ms[2], 450);
}

TEST_F(PolicyIt, ConcurrencyCapsPerIpAndPerKey) {
  const std::string key = AddKey("solo");
  ASSERT_NO_FATAL_FAILURE(
      StartStack({"--tokens=200", "--token_delay_ms=10"},
                 {"--keys_file=" + keys(), "--max_streams_per_key=2", "--max_streams_per_ip=3"}));
  auto start_stream = [&](std::unique_ptr<HttpConnection>* out, int* status) {
    auto c = HttpConnection::Connect(proxy_port());
    ASSERT_TRUE(c.ok());
    IT_ASSERT_OK(
        (*c)->Send(BuildRequest("POST", "/api/generate", {Bearer(key)}, "{\"model\":\"m\"}")));
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse head, (*c)->ReadHead(absl::Seconds(5)));
    *status = head.status;
    *out = std::move(*c);
  };
  std::unique_ptr<HttpConnection> a, b, c;
  int sa = 0, sb = 0, sc = 0;
  ASSERT_NO_FATAL_FAILURE(start_stream(&a, &sa));
  ASSERT_NO_FATAL_FAILURE(start_stream(&b, &sb));
  ASSERT_NO_FATAL_FAILURE(start_stream(&c, &sc));
  EXPECT_EQ(sa, 200);
  EXPECT_EQ(sb, 200);
  EXPECT_EQ(sc, 429);
  // Other routes are not capped.
  EXPECT_EQ(Get("/api/tags", {Bearer(key)}).status, 200);
  // Ending a stream gives its place back.
  a->CloseWithReset();
  absl::Time deadline = absl::Now() + absl::Seconds(3);
  int sd = 0;
  std::unique_ptr<HttpConnection> d;
  do {
    absl::SleepFor(absl::Milliseconds(20));
    ASSERT_NO_FATAL_FAILURE(start_stream(&d, &sd));
  } while (sd != 200 && absl::Now() < deadline);
  EXPECT_EQ(sd, 200);
}

// bcrypt at cost 12 takes a few hundred ms: checks run on helper threads,
// so key-authenticated requests on the same worker stay fast meanwhile.
TEST_F(PolicyIt, WrongBcryptPasswordsDoNotStallOtherClients) {
  const std::string key = AddKey("probe");
  ASSERT_NO_FATAL_FAILURE(AddUser("B -C 12", "slow", "right"));
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--keys_file=" + keys(), "--htpasswd=" + users()}));
  std::vector<std::unique_ptr<HttpConnection>> flood;
  for (int i = 0; i < 6; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(auto c, HttpConnection::Connect(proxy_port()));
    IT_ASSERT_OK(c->Send(BuildRequest(
        "GET", "/api/tags",
        {{"Authorization", "Basic " + absl::Base64Escape(absl::StrCat("slow:wrong", i))}})));
    flood.push_back(std::move(c));
  }
  double worst_ms = 0;
  for (int i = 0; i < 20; ++i) {
    const absl::Time t0 = absl::Now();
    EXPECT_EQ(Get("/api/version", {Bearer(key)}).status, 200);
    worst_ms = std::max(worst_ms, absl::ToDoubleMilliseconds(absl::Now() - t0));
  }
  // One bcrypt on the loop would be ~200 ms or more.
  EXPECT_LT(worst_ms, 100.0 * TimingSlack());
  for (auto& c : flood) {
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, c->ReadResponse(absl::Seconds(30)));
    EXPECT_EQ(r.status, 401);
  }
}

// A refused request that asked for 100-continue gets the refusal, never a
// 100 inviting a body nobody will read; an admitted one gets its 100.
TEST_F(PolicyIt, ExpectContinueOnlyOnceAdmitted) {
  const std::string key = AddKey("up");
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--keys_file=" + keys()}));
  const std::string head_only =
      "POST /sim/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
      "Expect: 100-continue\r\n";
  IT_ASSERT_OK_AND_ASSIGN(auto refused, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(refused->Send(head_only + "\r\n"));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, refused->ReadResponse(absl::Seconds(5)));
  EXPECT_EQ(r.status, 401);
  IT_ASSERT_OK_AND_ASSIGN(auto admitted, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(admitted->Send(head_only + "Authorization: Bearer " + key + "\r\n\r\n"));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse cont, admitted->ReadResponse(absl::Seconds(5)));
  EXPECT_EQ(cont.status, 100);
  IT_ASSERT_OK(admitted->Send("hello"));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse ok, admitted->ReadResponse(absl::Seconds(5)));
  EXPECT_EQ(ok.status, 200);
  EXPECT_TRUE(absl::StrContains(ok.body, "hello")) << ok.body;
}

// SIGTERM while a bcrypt check is on a helper thread: the draining worker
// still gets its answer and replies, instead of holding the request until
// --drain_timeout.
TEST_F(PolicyIt, DrainDeliversAPendingPasswordCheck) {
  ASSERT_NO_FATAL_FAILURE(AddUser("B -C 12", "slow", "right"));
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--htpasswd=" + users()}));
  IT_ASSERT_OK_AND_ASSIGN(auto c, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(c->Send(BuildRequest(
      "GET", "/api/tags", {{"Authorization", "Basic " + absl::Base64Escape("slow:right")}})));
  absl::SleepFor(absl::Milliseconds(20));
  ASSERT_TRUE(sluice_->Signal(SIGTERM));
  const absl::Time t0 = absl::Now();
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, c->ReadResponse(absl::Seconds(10)));
  EXPECT_EQ(r.status, 200);
  EXPECT_LT(absl::Now() - t0, absl::Seconds(5));
  std::optional<ExitInfo> exit = sluice_->WaitExit(absl::Seconds(5));
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->code, 0);
  expect_sluice_exit_ = true;
}

// Behind one NAT address (every client here is 127.0.0.1): 50 users log
// in for the first time and 50 keys are used, then a client with a stale
// key keeps trying, then one with a wrong password. Right passwords are not
// failed logins, so the first logins lock nobody out; a wrong key is a
// plain 401 that does not count (keys answer no guess), so the stale key
// locks nobody out either; the wrong password gets 401 until the address's
// failures reach --auth_attempts (default 6r/m burst=10: 11 at once), then
// 429 with Retry-After. Every known-good user goes on getting 200
// throughout; only a password nobody verified lately is refused meanwhile.
TEST_F(PolicyIt, OneAddressManyUsersAndAStaleKey) {
  constexpr int kUsers = 50;
  // Half bcrypt (checked on a helper thread), half apr1 (checked inline),
  // plus two users who log in only late.
  std::string script = absl::StrCat("set -e; f=", ShellQuote(users()),
                                    "; htpasswd -cbB -C 4 \"$f\" late late-pw 2>/dev/null",
                                    "; htpasswd -bB -C 4 \"$f\" later later-pw 2>/dev/null");
  for (int i = 0; i < kUsers; ++i) {
    absl::StrAppend(&script, "; htpasswd -b", i % 2 ? "m" : "B -C 4", " \"$f\" user", i, " pw", i,
                    " 2>/dev/null");
  }
  CommandResult made = RunShell(script, absl::Seconds(60));
  ASSERT_EQ(made.exit.code, 0) << made.err;
  std::vector<std::string> app_keys;
  for (int i = 0; i < kUsers; ++i) app_keys.push_back(AddKey(absl::StrCat("app", i)));
  ASSERT_NO_FATAL_FAILURE(
      StartStack({}, {"--keys_file=" + keys(), "--htpasswd=" + users(), "--rate_by=credential"}));
  auto basic = [](const std::string& user, const std::string& pw) {
    return std::pair<std::string, std::string>{
        "Authorization", "Basic " + absl::Base64Escape(absl::StrCat(user, ":", pw))};
  };
  auto user = [&](int i) { return basic(absl::StrCat("user", i), absl::StrCat("pw", i)); };
  std::map<std::string, int> good_failures;
  auto good = [&](const std::pair<std::string, std::string>& credential, const std::string& who) {
    HttpResponse r = Get("/api/tags", {credential});
    if (r.status != 200) ++good_failures[absl::StrCat(who, ": ", r.status, " ", r.body)];
  };
  auto others = [&](int round, const std::string& phase) {
    for (int k = 0; k < 5; ++k) {
      const int i = (round * 5 + k) % kUsers;
      good(user(i), absl::StrCat("user", i, " in ", phase, " round ", round));
      good(Bearer(app_keys[i]), absl::StrCat("app", i, " in ", phase, " round ", round));
    }
  };
  const absl::Time start = absl::Now();
  // Every user's first login is a password checked now, and right.
  for (int i = 0; i < kUsers; ++i) good(user(i), absl::StrCat("first login of user", i));
  for (int i = 0; i < kUsers; ++i) good(Bearer(app_keys[i]), absl::StrCat("key app", i));
  EXPECT_TRUE(good_failures.empty()) << good_failures.begin()->first;

  // The stale key, with the others working in between: 401 every time.
  const std::string stale = "sk-stale0000000000000000000000000000000000000000";
  std::vector<int> stale_statuses;
  for (int round = 0; round < 20; ++round) {
    HttpResponse r = Get("/api/tags", {Bearer(stale)});
    stale_statuses.push_back(
        r.status == 401 && r.Header("WWW-Authenticate").has_value() ? 401 : r.status);
    others(round, "stale key");
  }
  EXPECT_EQ(std::count(stale_statuses.begin(), stale_statuses.end(), 401), 20)
      << absl::StrJoin(stale_statuses, " ");
  // ... and it locked nobody out: a first login now is checked.
  HttpResponse late = Get("/api/tags", {basic("late", "late-pw")});
  EXPECT_EQ(late.status, 200) << late.body;

  // A wrong password: 401 while under the limit, then 429.
  std::vector<int> bad_statuses;
  std::string bad_mismatch;
  for (int round = 0; round < 20; ++round) {
    HttpResponse r = Get("/api/tags", {basic("user0", absl::StrCat("guess", round))});
    bad_statuses.push_back(r.status);
    const bool ok401 = r.status == 401 && r.Header("WWW-Authenticate").has_value();
    const bool ok429 = r.status == 429 && r.Header("Retry-After").has_value() &&
                       JsonError(r.body) == "too many failed logins, retry later";
    if (!ok401 && !ok429 && bad_mismatch.empty()) {
      bad_mismatch = absl::StrCat(r.status, " ", r.body);
    }
    others(round, "wrong password");
  }
  // A password checked nowhere lately is an uncached check: refused
  // unchecked while the address is past its limit.
  HttpResponse later = Get("/api/tags", {basic("later", "later-pw")});
  const double took_s = absl::ToDoubleSeconds(absl::Now() - start);

  EXPECT_TRUE(good_failures.empty())
      << good_failures.size() << " refusals of good users, e.g. " << good_failures.begin()->first;
  EXPECT_TRUE(bad_mismatch.empty()) << bad_mismatch;
  const int n401 = static_cast<int>(std::count(bad_statuses.begin(), bad_statuses.end(), 401));
  const int n429 = static_cast<int>(std::count(bad_statuses.begin(), bad_statuses.end(), 429));
  EXPECT_EQ(n401 + n429, 20);
  // The failures the limit admits: 11 at once, one more per 10 s.
  EXPECT_GE(n401, 11) << absl::StrJoin(bad_statuses, " ");
  EXPECT_LE(n401, 11 + static_cast<int>(took_s / 10) + 1) << absl::StrJoin(bad_statuses, " ");
  // 401 while under the limit, then 429: never a 401 after the first 429
  // within one refill interval.
  if (took_s < 10) {
    EXPECT_TRUE(std::is_sorted(bad_statuses.begin(), bad_statuses.end()))
        << absl::StrJoin(bad_statuses, " ");
  }
  EXPECT_EQ(later.status, 429) << later.body;
  EXPECT_TRUE(later.Header("Retry-After").has_value());
}

// SIGHUP while requests flow: every request with a key that stays valid
// succeeds, none is dropped.
TEST_F(PolicyIt, ReloadUnderLoadLosesNothing) {
  const std::string key = AddKey("steady");
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--keys_file=" + keys(), "--threads=2"}));
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, bad{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&] {
      while (!stop.load()) {
        auto r = Exchange(proxy_port(), BuildRequest("GET", "/api/tags", {Bearer(key)}));
        (r.ok() && r->status == 200 ? ok : bad)++;
      }
    });
  }
  for (int i = 0; i < 10; ++i) {
    AddKey(absl::StrCat("extra", i));
    ASSERT_TRUE(sluice_->Signal(SIGHUP));
    absl::SleepFor(absl::Milliseconds(100));
  }
  stop = true;
  for (auto& t : clients) t.join();
  EXPECT_GT(ok.load(), 100);
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(absl::StrContains(sluice_->Stderr(), "reloaded policy"), true);
}

}  // namespace
}  // namespace sluice::integration
