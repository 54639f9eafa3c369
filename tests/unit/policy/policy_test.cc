#include "policy/policy.h"

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace sluice::policy {
namespace {

constexpr int64_t kSec = 1'000'000'000;
// Any monotonic origin will do; far from 0 so that "now" never looks special.
constexpr int64_t kT0 = 1'000 * kSec;

// A client address outside every default rule (not loopback, not admin).
constexpr absl::string_view kClient = "192.0.2.10";

// htpasswd 2.4 lines (the hashes of tests/unit/policy/htpasswd_test.cc under
// other user names: apr1 and bcrypt hash only the password and the salt).
// Both passwords are "pass". ann is cheap (apr1), bea is bcrypt cost 4.
constexpr absl::string_view kAnnApr1 = "ann:$apr1$DrUGLckq$ROP59x6XkOt2.xo.dF0G7.";
constexpr absl::string_view kBeaBcrypt =
    "bea:$2y$04$xKGzC6dsYqyU66r6ohDHJudQBbzRslsDwPvW0oN78ja7K2Io/bdOy";

// For EXPECT_PRED2, which prints both arguments when it fails.
bool HasPrefix(const std::string& s, absl::string_view prefix) {
  return absl::StartsWith(s, prefix);
}
bool Contains(const std::string& s, absl::string_view part) { return absl::StrContains(s, part); }

IpAddress Ip(absl::string_view text) {
  std::optional<IpAddress> ip = IpAddress::Parse(text);
  EXPECT_TRUE(ip.has_value()) << text;
  return ip.value_or(IpAddress{});
}

// A GET from `peer` to https://proxy.example`target`, no credentials.
RequestFacts Get(absl::string_view target, absl::string_view peer = kClient) {
  RequestFacts r;
  r.method = "GET";
  r.target = target;
  r.scheme = "https";
  r.host = "proxy.example";
  r.peer = Ip(peer);
  return r;
}

// The value of header `name`, or "(absent)".
std::string Header(const std::vector<HeaderField>& headers, absl::string_view name) {
  for (const HeaderField& h : headers) {
    if (h.first == name) return h.second;
  }
  return "(absent)";
}

PolicyOptions NoAuth() {
  PolicyOptions o;
  o.auth = "none";
  return o;
}

std::shared_ptr<const Policy> MustBuild(const PolicyOptions& o, uint64_t generation = 1) {
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Build(o, generation);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *p : nullptr;
}

std::string BuildError(const PolicyOptions& o) {
  absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Build(o, 1);
  EXPECT_FALSE(p.ok()) << "built: " << (*p)->Summary();
  if (p.ok()) return "";
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << p.status();
  return std::string(p.status().message());
}

int ZoneIndex(const Policy& p, absl::string_view name) {
  for (size_t i = 0; i < p.zones().size(); ++i) {
    if (p.zones()[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

bool HaveHtpasswdTool() { return system("command -v htpasswd >/dev/null 2>&1") == 0; }

// Runs the real `htpasswd -nb <flags> user password` and returns its line.
std::string RunHtpasswd(absl::string_view flags, absl::string_view user,
                        absl::string_view password) {
  std::string cmd =
      absl::StrCat("htpasswd -nb ", flags, " '", user, "' '", password, "' 2>/dev/null");
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return "";
  std::string out;
  char buf[512];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  EXPECT_EQ(pclose(p), 0) << cmd;
  return std::string(absl::StripAsciiWhitespace(out));
}

std::string BasicHeader(absl::string_view user_colon_password) {
  return absl::StrCat("Basic ", absl::Base64Escape(user_colon_password));
}

// Files in a directory of their own under TempDir, removed after the test;
// three API keys (alice, bob, carol) and the limit tables.
class PolicyFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = absl::StrCat(::testing::TempDir(), "/sluice_policy_", getpid(), "_",
                        info->test_suite_name(), "_", info->name());
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    ASSERT_TRUE(std::filesystem::create_directories(dir_, ec)) << dir_ << ": " << ec.message();
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::string Write(absl::string_view name, absl::string_view text) {
    std::string path = absl::StrCat(dir_, "/", name);
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    EXPECT_TRUE(out.good()) << path;
    return path;
  }
  std::string KeysFile() {
    return Write("keys.txt",
                 absl::StrCat("# API keys\n", KeyLine("alice", alice_), "\n", KeyLine("bob", bob_),
                              "\n", KeyLine("carol", carol_), "\n"));
  }
  std::string UsersFile() {
    return Write("users.htpasswd", absl::StrCat(kAnnApr1, "\n", kBeaBcrypt, "\n"));
  }
  std::string RulesFile(absl::string_view text) { return Write("rules.txt", text); }

  // Screen, Authenticate (which must end kDone) and Limit at `now`.
  LimitStep Admit(const Policy& p, const RequestFacts& r, int64_t now, Admission* a) {
    if (!p.Screen(r, a)) {
      ADD_FAILURE() << r.target << ": screened out with " << a->status << " " << a->error;
      return LimitStep{LimitStep::kRefuse, 0};
    }
    const AuthStep auth = p.Authenticate(r, a, &cache_, now);
    if (auth != AuthStep::kDone) {
      ADD_FAILURE() << r.target << ": auth ended " << static_cast<int>(auth);
      return LimitStep{LimitStep::kRefuse, 0};
    }
    return p.Limit(a, &rates_, &conns_, now);
  }
  LimitStep Admit(const Policy& p, const RequestFacts& r, int64_t now) {
    Admission a;
    return Admit(p, r, now, &a);
  }

  std::string dir_;
  const std::string alice_ = GenerateKey();
  const std::string bob_ = GenerateKey();
  const std::string carol_ = GenerateKey();
  BasicAuthCache cache_{64, absl::Minutes(5), absl::Seconds(30)};
  RateTable rates_{4096};
  ConcurrencyTable conns_{4096};
};

// ---------------------------------------------------------------- Build

class PolicyBuildTest : public PolicyFixture {};

TEST_F(PolicyBuildTest, NoFilesAndNoAuthModeNamesTheAuthFlag) {
  EXPECT_PRED2(HasPrefix, BuildError(PolicyOptions{}),
               "--auth: no --keys_file or --htpasswd given; sluice does not run without "
               "authentication unless --auth=none is set");
}

// Each bad value is refused with a message that starts with its flag; the
// whole message where it is fixed, its start where it goes on with the
// parser's detail.
TEST_F(PolicyBuildTest, BadValuesNameTheirFlag) {
  struct Case {
    std::function<void(PolicyOptions*)> set;
    std::string error;
    bool whole = true;  // else a prefix
  } cases[] = {
      {[&](PolicyOptions* o) {
         o->auth = "key";
         o->htpasswd_file = UsersFile();
       },
       "--auth: --auth=key needs --keys_file"},
      {[&](PolicyOptions* o) {
         o->auth = "basic";
         o->keys_file = KeysFile();
       },
       "--auth: --auth=basic needs --htpasswd"},
      {[](PolicyOptions* o) { o->auth = "key_or_basic"; },
       "--auth: --auth=key_or_basic needs --keys_file or --htpasswd"},
      {[&](PolicyOptions* o) {
         o->auth = "token";
         o->keys_file = KeysFile();
       },
       "--auth: \"token\": use key, basic, key_or_basic or none"},
      {[&](PolicyOptions* o) {
         o->auth = "KEY";  // case matters
         o->keys_file = KeysFile();
       },
       "--auth: \"KEY\"", false},
      {[](PolicyOptions* o) {
         *o = NoAuth();
         o->cors_origins = "https://ok.example,app.example";
       },
       "--cors_origins: \"app.example\": an origin is scheme://host[:port] or *"},
      {[](PolicyOptions* o) {
         *o = NoAuth();
         o->rate_api = "fast";
       },
       "--rate_api: rate spec: unknown token \"fast\"", false},
      {[](PolicyOptions* o) {
         *o = NoAuth();
         o->rate_generation = "10r/h burst=5";
       },
       "--rate_generation: rate spec: unknown token \"10r/h\"", false},
      {[](PolicyOptions* o) {
         *o = NoAuth();
         o->rate_generation = "burst=5";
       },
       "--rate_generation: rate spec", false},
      {[](PolicyOptions* o) {
         *o = NoAuth();
         o->auth_attempts = "5 per minute";
       },
       "--auth_attempts: rate spec", false},
      {[](PolicyOptions* o) {
         *o = NoAuth();
         o->rate_by = "host";
       },
       "--rate_by: \"host\": use ip or credential"},
  };
  for (const Case& c : cases) {
    PolicyOptions o;
    c.set(&o);
    if (c.whole) {
      EXPECT_EQ(BuildError(o), c.error);
    } else {
      EXPECT_PRED2(HasPrefix, BuildError(o), c.error);
    }
  }
}

// Good values next to the bad ones above.
TEST_F(PolicyBuildTest, GoodValuesBuild) {
  PolicyOptions o = NoAuth();
  o.cors_origins = "https://a.example, http://b.example:8080/ *";
  EXPECT_NE(MustBuild(o), nullptr);
  o = NoAuth();
  o.auth_attempts = "off";
  EXPECT_NE(MustBuild(o), nullptr);
  for (const char* by : {"ip", "credential", "key", "user"}) {
    o = NoAuth();
    o.rate_by = by;
    EXPECT_NE(MustBuild(o), nullptr) << by;
  }
}

TEST_F(PolicyBuildTest, BadCidrNamesItsFlag) {
  struct Case {
    std::string PolicyOptions::*field;
    absl::string_view flag;
  } cases[] = {
      {&PolicyOptions::allow_cidrs, "--allow: "},
      {&PolicyOptions::deny_cidrs, "--deny: "},
      {&PolicyOptions::trusted_proxies, "--trusted_proxies: "},
      {&PolicyOptions::admin_cidrs, "--admin_cidrs: "},
  };
  for (const Case& c : cases) {
    PolicyOptions o = NoAuth();
    o.*c.field = "10.0.0.0/8, 10.0.0.0/33";
    const std::string error = BuildError(o);
    EXPECT_PRED2(HasPrefix, error, absl::StrCat(c.flag, "bad CIDR"));
    EXPECT_PRED2(Contains, error, "10.0.0.0/33");
  }
}

TEST_F(PolicyBuildTest, RatesOffLeaveNoZones) {
  PolicyOptions o = NoAuth();
  o.rate_generation = "off";
  o.rate_api = "off";
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  EXPECT_TRUE(p->zones().empty());
  for (const char* path : {"/api/tags", "/api/chat", "/v1/models"}) {
    Admission a;
    ASSERT_TRUE(p->Screen(Get(path), &a)) << path;
    EXPECT_EQ(a.zone, -1) << path;
  }
  EXPECT_EQ(p->Summary(), "auth=none keys=0 users=0 routes=14 zones=none");
}

TEST_F(PolicyBuildTest, KeysFileErrorsNameFileAndLine) {
  PolicyOptions o;
  const std::string path =
      Write("keys.txt", absl::StrCat("# keys\n", KeyLine("alice", alice_), "\nnot a key line\n"));
  o.keys_file = path;
  EXPECT_EQ(BuildError(o), absl::StrCat("--keys_file: ", path, ":3: expected NAME:sha256:HEX"));

  Write("keys.txt", absl::StrCat(KeyLine("alice", alice_), "\n", KeyLine("alice", bob_), "\n"));
  EXPECT_PRED2(HasPrefix, BuildError(o),
               absl::StrCat("--keys_file: ", path, ":2: duplicate key name \"alice\""));

  o.keys_file = absl::StrCat(dir_, "/missing.txt");
  EXPECT_EQ(BuildError(o),
            absl::StrCat("--keys_file: ", dir_, "/missing.txt: No such file or directory"));
}

TEST_F(PolicyBuildTest, HtpasswdErrorsNameTheFlagFileAndLine) {
  PolicyOptions o;
  o.htpasswd_file = Write("users", "ann:plaintext\n");
  EXPECT_PRED2(HasPrefix, BuildError(o), absl::StrCat("--htpasswd: ", o.htpasswd_file, ":1: "));
  o.htpasswd_file = absl::StrCat(dir_, "/nope");
  EXPECT_EQ(BuildError(o), absl::StrCat("--htpasswd: ", dir_, "/nope: No such file or directory"));
}

TEST_F(PolicyBuildTest, RulesFileErrorsNameFileAndLine) {
  struct Case {
    absl::string_view text;
    int line;
    absl::string_view message;  // the start of what follows "FILE:LINE: "
  } cases[] = {
      {"# comment\n\nfrobnicate 10.0.0.0/8\n", 3,
       "\"frobnicate\": expected allow, deny, zone, upstream or route"},
      {"allow 10.0.0.0/33\n", 1, "bad CIDR"},
      {"deny 10.0.0.0/8 10.1.0.0/16\n", 1, "deny takes one CIDR list"},
      {"allow\n", 1, "allow takes one CIDR list"},
      {"zone z\n", 1, "zone NAME [by=ip|credential] RATE ..."},
      {"zone z burst=3\n", 1, "rate spec"},
      {"zone z by=ip\n", 1, "rate spec"},
      {"zone z 5r/h\n", 1, "rate spec: unknown token"},
      {"zone z by=host 1r/s\n", 1, "\"host\": use ip or credential"},
      {"route /x\n", 1, "route PATTERN allow|deny|admin [options]"},
      {"route /x permit\n", 1, "\"permit\": use allow, deny or admin"},
      {"route /x allow speed=9\n", 1, "\"speed\": unknown route option"},
      {"route /x allow zone\n", 1, "\"zone\": expected key=value"},
      {"route /x allow allow_ip=10.0.0.0/40\n", 1, "bad CIDR"},
      {"route /x allow deny_ip=nonsense\n", 1, "bad CIDR"},
      {"route /x allow max_per_ip=many\n", 1, "\"max_per_ip=many\": not a count"},
      {"route /x allow max_per_key=-1\n", 1, "\"max_per_key=-1\": not a count"},
      {"route api/x allow\n", 1, "a route pattern starts with /"},
      {"route *.json allow\n", 1, "a route pattern starts with /"},
      {"route /../x allow\n", 1, "bad pattern: "},
      {"zone z 1r/s\nroute /x allow zone=z\n\nroute /y allow zone=nope\n", 4,
       "zone \"nope\" is not defined"},
  };
  for (const Case& c : cases) {
    PolicyOptions o = NoAuth();
    o.rules_file = RulesFile(c.text);
    EXPECT_PRED2(HasPrefix, BuildError(o),
                 absl::StrCat("--rules_file: ", o.rules_file, ":", c.line, ": ", c.message))
        << c.text;
  }
  PolicyOptions o = NoAuth();
  o.rules_file = absl::StrCat(dir_, "/absent.txt");
  EXPECT_EQ(BuildError(o),
            absl::StrCat("--rules_file: ", dir_, "/absent.txt: No such file or directory"));
}

TEST_F(PolicyBuildTest, DefaultAuthModeIsKeyOrBasicWithEitherFile) {
  PolicyOptions o;
  o.keys_file = KeysFile();
  std::shared_ptr<const Policy> keys_only = MustBuild(o);
  ASSERT_NE(keys_only, nullptr);
  EXPECT_EQ(keys_only->auth_mode(), AuthMode::kKeyOrBasic);
  EXPECT_EQ(keys_only->key_count(), 3u);
  EXPECT_EQ(keys_only->user_count(), 0u);

  o = PolicyOptions{};
  o.htpasswd_file = UsersFile();
  std::shared_ptr<const Policy> users_only = MustBuild(o);
  ASSERT_NE(users_only, nullptr);
  EXPECT_EQ(users_only->auth_mode(), AuthMode::kKeyOrBasic);
  EXPECT_EQ(users_only->key_count(), 0u);
  EXPECT_EQ(users_only->user_count(), 2u);

  o.keys_file = KeysFile();
  std::shared_ptr<const Policy> both = MustBuild(o, 7);
  ASSERT_NE(both, nullptr);
  EXPECT_EQ(both->auth_mode(), AuthMode::kKeyOrBasic);
  EXPECT_EQ(both->generation(), 7u);

  for (auto [text, mode] :
       {std::pair{"key", AuthMode::kKey}, std::pair{"basic", AuthMode::kBasic},
        std::pair{"key_or_basic", AuthMode::kKeyOrBasic}, std::pair{"none", AuthMode::kNone}}) {
    o.auth = text;
    std::shared_ptr<const Policy> p = MustBuild(o);
    ASSERT_NE(p, nullptr) << text;
    EXPECT_EQ(p->auth_mode(), mode) << text;
  }
  // --auth=none needs no file at all.
  std::shared_ptr<const Policy> none = MustBuild(NoAuth());
  ASSERT_NE(none, nullptr);
  EXPECT_EQ(none->auth_mode(), AuthMode::kNone);
}

TEST_F(PolicyBuildTest, Summary) {
  PolicyOptions o;
  o.keys_file = KeysFile();
  o.htpasswd_file = UsersFile();
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->Summary(),
            "auth=key_or_basic keys=3 users=2 routes=14 zones=gen(10r/m "
            "burst=5),api(60r/m "
            "burst=20)");

  o.auth = "basic";
  o.rate_api = "off";
  o.rules_file = RulesFile("zone slow 1r/s burst=2\nroute /api/tags allow zone=slow\n");
  p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->Summary(),
            "auth=basic keys=3 users=2 routes=15 zones=gen(10r/m "
            "burst=5),slow(60r/m burst=2)");
}

TEST_F(PolicyBuildTest, DefaultRoutesAndZones) {
  PolicyOptions o = NoAuth();
  o.max_streams_per_ip = 4;
  o.max_streams_per_key = 2;
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  const std::vector<Route>& routes = p->routes();
  ASSERT_EQ(routes.size(), 14u);
  ASSERT_EQ(p->zones().size(), 2u);
  const int gen = ZoneIndex(*p, "gen"), api = ZoneIndex(*p, "api");
  ASSERT_GE(gen, 0);
  ASSERT_GE(api, 0);
  EXPECT_EQ(p->zones()[gen].rate.burst, 5u);
  EXPECT_EQ(p->zones()[gen].rate.delay, 5u);  // nodelay
  EXPECT_EQ(p->zones()[gen].by, LimitBy::kIp);
  EXPECT_EQ(p->zones()[api].rate.burst, 20u);
  EXPECT_NE(p->zones()[gen].id, p->zones()[api].id);

  EXPECT_EQ(routes[0].pattern, "/api/delete");
  EXPECT_EQ(routes[1].pattern, "/api/push");
  for (int i : {0, 1}) {
    EXPECT_EQ(routes[i].action, RouteAction::kDeny);
    EXPECT_EQ(routes[i].group, "blocked");
    EXPECT_EQ(routes[i].zone, -1);
  }
  const char* admin[] = {"/api/pull", "/api/create", "/api/copy", "/api/blobs"};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(routes[2 + i].pattern, admin[i]);
    EXPECT_EQ(routes[2 + i].action, RouteAction::kAdmin);
    EXPECT_EQ(routes[2 + i].group, "admin");
    EXPECT_EQ(routes[2 + i].zone, api);
  }
  for (int i = 6; i < 13; ++i) {
    EXPECT_TRUE(IsGenerationPath(routes[i].pattern)) << routes[i].pattern;
    EXPECT_EQ(routes[i].action, RouteAction::kAllow);
    EXPECT_EQ(routes[i].group, "generation");
    EXPECT_EQ(routes[i].zone, gen);
    // The caps come from the flags per request (file routes get them too).
    Admission a;
    ASSERT_TRUE(p->Screen(Get(routes[i].pattern), &a));
    EXPECT_EQ(a.max_per_ip, 4u);
    EXPECT_EQ(a.max_per_credential, 2u);
  }
  EXPECT_EQ(routes[13].pattern, "/");
  EXPECT_EQ(routes[13].group, "api");
  EXPECT_EQ(routes[13].zone, api);
  EXPECT_EQ(routes[13].max_per_ip, 0u);
  for (const Route& r : routes) EXPECT_EQ(r.source, "default");
}

TEST_F(PolicyBuildTest, RulesFileRoutesAndZones) {
  PolicyOptions o = NoAuth();
  o.rules_file = RulesFile(
      "# routes may name zones defined further down\n"
      "route /API//Tags/ admin zone=team allow_ip=10.0.0.0/8,fd00::/8 "
      "deny_ip=10.9.0.0/16 "
      "max_per_ip=3 max_per_key=1 group=tags   # trailing comment\n"
      "route /V1/* deny\r\n"
      "route /api/blob* allow zone=off\n"
      "route /* allow zone=gen\n"
      "\t route /api/chat allow\n"
      "zone team by=credential 30r/m burst=4 delay=2\n"
      "zone gen 2r/s burst=1\n");
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  const std::vector<Route>& routes = p->routes();
  ASSERT_EQ(routes.size(), 14u + 5u);

  const int team = ZoneIndex(*p, "team"), gen = ZoneIndex(*p, "gen"), api = ZoneIndex(*p, "api");
  ASSERT_EQ(p->zones().size(), 3u);
  ASSERT_GE(team, 0);
  EXPECT_GE(api, 0) << "the flags' api zone is kept beside the file's";
  EXPECT_NE(api, team);
  EXPECT_NE(api, gen);
  EXPECT_EQ(p->zones()[team].by, LimitBy::kCredential);
  EXPECT_EQ(p->zones()[team].rate.burst, 4u);
  EXPECT_EQ(p->zones()[team].rate.delay, 2u);
  EXPECT_DOUBLE_EQ(p->zones()[team].rate.rate_per_s, 0.5);
  // "zone gen" redefines the flag's zone in place (same index, same id).
  EXPECT_EQ(gen, 0);
  EXPECT_DOUBLE_EQ(p->zones()[gen].rate.rate_per_s, 2);
  EXPECT_EQ(p->zones()[gen].rate.burst, 1u);
  EXPECT_EQ(p->zones()[gen].rate.delay, 0u);
  EXPECT_EQ(p->zones()[gen].by, LimitBy::kIp);

  const Route& tags = routes[0];
  EXPECT_EQ(tags.pattern, "/api/tags");
  EXPECT_EQ(tags.action, RouteAction::kAdmin);
  EXPECT_EQ(tags.zone, team);
  EXPECT_EQ(tags.allow_ip.size(), 2u);
  EXPECT_TRUE(tags.allow_ip.Contains(Ip("fd00::1")));
  EXPECT_TRUE(tags.deny_ip.Contains(Ip("10.9.1.1")));
  EXPECT_EQ(tags.max_per_ip, 3u);
  EXPECT_EQ(tags.max_per_credential, 1u);
  EXPECT_EQ(tags.group, "tags");
  EXPECT_EQ(tags.source, absl::StrCat(o.rules_file, ":2"));

  EXPECT_EQ(routes[1].pattern, "/v1/*");
  EXPECT_EQ(routes[1].action, RouteAction::kDeny);
  // No zone= and no group=: decided per path, as the built-ins would.
  EXPECT_EQ(routes[1].zone, Route::kZoneByPath);
  EXPECT_EQ(routes[1].group, "");
  EXPECT_EQ(routes[1].source, absl::StrCat(o.rules_file, ":3"));
  EXPECT_EQ(routes[2].pattern, "/api/blob*");
  EXPECT_EQ(routes[2].zone, -1);
  EXPECT_EQ(routes[3].pattern, "/*");
  EXPECT_EQ(routes[3].zone, gen);
  EXPECT_EQ(routes[4].pattern, "/api/chat");
  EXPECT_EQ(routes[4].zone, Route::kZoneByPath);
  Admission chat;
  ASSERT_TRUE(p->Screen(Get("/api/chat"), &chat));
  EXPECT_EQ(chat.route, &routes[3]);  // "/*" comes first
  EXPECT_EQ(chat.zone, gen);
  EXPECT_EQ(chat.group, "generation");
  EXPECT_EQ(routes[4].source, absl::StrCat(o.rules_file, ":6"));
  EXPECT_EQ(routes[5].pattern, "/api/delete");  // the built-ins follow
  EXPECT_EQ(routes[5].source, "default");
}

// ---------------------------------------------------------------- Screen

class PolicyScreenTest : public PolicyFixture {};

TEST_F(PolicyScreenTest, BadTargetsAre400) {
  std::shared_ptr<const Policy> p = MustBuild(NoAuth());
  ASSERT_NE(p, nullptr);
  for (absl::string_view target : {"api/tags", "", "/api/%zz", "/api/%4", "/a b", "/../api/tags",
                                   "/api\\tags", "/api/%5Ctags", "/api/%00", "/api#x"}) {
    Admission a;
    EXPECT_FALSE(p->Screen(Get(target), &a)) << target;
    EXPECT_EQ(a.status, 400) << target;
    EXPECT_EQ(a.error, "bad request path") << target;
    EXPECT_EQ(a.route, nullptr) << target;
  }
  Admission a;
  ASSERT_TRUE(p->Screen(Get("/API/./Tags/?x=%zz"), &a)) << a.error;
  EXPECT_EQ(a.status, 0);
  EXPECT_EQ(a.path.match, "/api/tags");
  EXPECT_EQ(a.path.forward, "/API/Tags/?x=%zz");
  EXPECT_EQ(a.client_text, kClient);
}

TEST_F(PolicyScreenTest, GlobalIpRulesFirstMatchFileThenDenyThenAllow) {
  PolicyOptions o = NoAuth();
  o.rules_file = RulesFile("allow 10.1.0.0/16\ndeny 10.0.0.0/8\n");
  o.deny_cidrs = "10.1.2.0/24, 192.0.2.66";
  o.allow_cidrs = "10.0.0.0/8,192.0.2.0/24";
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  struct Case {
    absl::string_view peer;
    bool allowed;
  } cases[] = {
      {"10.1.2.3", true},       // the file's allow comes before --deny
      {"10.2.0.1", false},      // the file's deny
      {"192.0.2.66", false},    // --deny before --allow
      {"192.0.2.7", true},      // --allow
      {"198.51.100.1", false},  // --allow's implicit deny all
      {"::1", false},           // which covers IPv6 too
      {"127.0.0.1", false},
  };
  for (const Case& c : cases) {
    Admission a;
    EXPECT_EQ(p->Screen(Get("/api/tags", c.peer), &a), c.allowed) << c.peer;
    if (!c.allowed) {
      EXPECT_EQ(a.status, 403) << c.peer;
      EXPECT_EQ(a.error, "access denied for this address") << c.peer;
    }
  }

  // Without --allow nothing is implied; the file may deny all itself.
  o = NoAuth();
  o.rules_file = RulesFile("allow 192.0.2.0/25\ndeny all\n");
  p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  Admission a;
  EXPECT_TRUE(p->Screen(Get("/api/tags", "192.0.2.1"), &a));
  EXPECT_FALSE(p->Screen(Get("/api/tags", "192.0.2.200"), &a));
  EXPECT_FALSE(p->Screen(Get("/api/tags", "2001:db8::1"), &a));

  p = MustBuild(NoAuth());
  ASSERT_NE(p, nullptr);
  for (absl::string_view peer : {"198.51.100.1", "::1", "2001:db8::1"}) {
    Admission b;
    EXPECT_TRUE(p->Screen(Get("/api/tags", peer), &b)) << peer;
  }
}

TEST_F(PolicyScreenTest, ForwardedForIsReadOnlyFromTrustedProxies) {
  PolicyOptions o = NoAuth();
  o.trusted_proxies = "10.0.0.0/8";
  o.deny_cidrs = "203.0.113.0/24";
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);

  RequestFacts r = Get("/api/tags", "10.0.0.5");
  r.forwarded_for = "203.0.113.9";
  Admission a;
  EXPECT_FALSE(p->Screen(r, &a));
  EXPECT_EQ(a.status, 403);
  EXPECT_EQ(a.client_text, "203.0.113.9");

  r.forwarded_for = "203.0.113.9, 198.51.100.4, 10.0.0.7";
  a = Admission{};
  EXPECT_TRUE(p->Screen(r, &a));
  EXPECT_EQ(a.client_text, "198.51.100.4");

  // From an untrusted peer the header is ignored, both ways.
  r = Get("/api/tags", "198.51.100.1");
  r.forwarded_for = "203.0.113.9";
  a = Admission{};
  EXPECT_TRUE(p->Screen(r, &a));
  EXPECT_EQ(a.client_text, "198.51.100.1");
  r = Get("/api/tags", "203.0.113.5");
  r.forwarded_for = "198.51.100.1";
  a = Admission{};
  EXPECT_FALSE(p->Screen(r, &a));
  EXPECT_EQ(a.client_text, "203.0.113.5");

  // Without --trusted_proxies nobody is believed, not even loopback.
  p = MustBuild(NoAuth());
  ASSERT_NE(p, nullptr);
  r = Get("/api/pull", "192.0.2.1");
  r.forwarded_for = "127.0.0.1";
  a = Admission{};
  EXPECT_FALSE(p->Screen(r, &a));
  EXPECT_EQ(a.client_text, "192.0.2.1");
}

TEST_F(PolicyScreenTest, DeniedRoutesHoldOnEveryPathVariant) {
  std::shared_ptr<const Policy> p = MustBuild(NoAuth());
  ASSERT_NE(p, nullptr);
  struct Case {
    absl::string_view target;
    absl::string_view error;
  } cases[] = {
      {"/api/delete", "/api/delete is not permitted via API"},
      {"/api//delete", "/api/delete is not permitted via API"},
      {"/API/DELETE", "/api/delete is not permitted via API"},
      {"/api/%64elete", "/api/delete is not permitted via API"},
      {"/api%2Fdelete", "/api/delete is not permitted via API"},
      {"/api/./x/../delete/", "/api/delete is not permitted via API"},
      {"/api/delete?model=x", "/api/delete is not permitted via API"},
      {"/api/delete/sub", "/api/delete is not permitted via API"},
      {"/api/push", "/api/push is not permitted via API"},
      {"/Api/P%75sh", "/api/push is not permitted via API"},
  };
  for (const Case& c : cases) {
    // Not even from an admin address.
    for (absl::string_view peer : {kClient, absl::string_view("127.0.0.1")}) {
      Admission a;
      EXPECT_FALSE(p->Screen(Get(c.target, peer), &a)) << c.target;
      EXPECT_EQ(a.status, 403) << c.target;
      EXPECT_EQ(a.error, c.error) << c.target;
      ASSERT_NE(a.route, nullptr) << c.target;
      EXPECT_EQ(a.route->group, "blocked");
    }
  }
  Admission a;
  EXPECT_TRUE(p->Screen(Get("/api/deletex"), &a));
  EXPECT_EQ(a.route->pattern, "/");
}

TEST_F(PolicyScreenTest, AdminRoutesOnlyFromAdminCidrs) {
  std::shared_ptr<const Policy> p = MustBuild(NoAuth());
  ASSERT_NE(p, nullptr);
  struct Case {
    absl::string_view target;
    absl::string_view shown;
  } cases[] = {
      {"/api/pull", "/api/pull"},   {"/api/create", "/api/create"},
      {"/api/copy", "/api/copy"},   {"/api/blobs/sha256:0123abcd", "/api/blobs"},
      {"/API/%50ull", "/api/pull"},
  };
  for (const Case& c : cases) {
    Admission a;
    EXPECT_FALSE(p->Screen(Get(c.target), &a)) << c.target;
    EXPECT_EQ(a.status, 403) << c.target;
    EXPECT_EQ(a.error, absl::StrCat(c.shown, " is only permitted from admin addresses"));
    for (absl::string_view peer : {"127.0.0.1", "::1"}) {
      Admission b;
      EXPECT_TRUE(p->Screen(Get(c.target, peer), &b)) << c.target << " from " << peer;
      EXPECT_EQ(b.route->group, "admin");
    }
  }
  Admission a;
  EXPECT_FALSE(p->Screen(Get("/api/pull", "127.0.0.2"), &a));  // only 127.0.0.1/32

  PolicyOptions o = NoAuth();
  o.admin_cidrs = "192.0.2.0/24";
  p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  Admission b;
  EXPECT_TRUE(p->Screen(Get("/api/pull", "192.0.2.200"), &b));
  Admission c;
  EXPECT_FALSE(p->Screen(Get("/api/pull", "127.0.0.1"), &c));
  EXPECT_EQ(c.status, 403);

  o.admin_cidrs = "";  // nobody
  p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  Admission d;
  EXPECT_FALSE(p->Screen(Get("/api/create", "127.0.0.1"), &d));
}

TEST_F(PolicyScreenTest, RouteIpRulesFromTheRulesFile) {
  PolicyOptions o = NoAuth();
  o.rules_file = RulesFile(
      "route /api/tags allow allow_ip=10.0.0.0/8 deny_ip=10.9.0.0/16\n"
      "route /api/ps allow deny_ip=192.0.2.0/24\n"
      "route /api/pull admin allow_ip=127.0.0.0/8,192.0.2.0/24\n");
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  struct Case {
    absl::string_view target, peer;
    int status;  // 0: passes
    absl::string_view error;
  } cases[] = {
      {"/api/tags", "10.1.1.1", 0, ""},
      {"/api/tags", "10.9.1.1", 403, "access denied for this address"},
      {"/api/tags", "192.0.2.1", 403, "access denied for this address"},
      {"/api/ps", "192.0.2.1", 403, "access denied for this address"},
      {"/api/ps", "10.9.1.1", 0, ""},
      {"/api/version", "192.0.2.1", 0, ""},  // other routes are untouched
      // An admin route's own ACL narrows --admin_cidrs; it does not widen it.
      {"/api/pull", "127.0.0.1", 0, ""},
      {"/api/pull", "192.0.2.1", 403, "/api/pull is only permitted from admin addresses"},
      {"/api/pull", "::1", 403, "access denied for this address"},
  };
  for (const Case& c : cases) {
    Admission a;
    EXPECT_EQ(p->Screen(Get(c.target, c.peer), &a), c.status == 0) << c.target << " " << c.peer;
    EXPECT_EQ(a.status, c.status) << c.target << " " << c.peer;
    EXPECT_EQ(a.error, c.error) << c.target << " " << c.peer;
  }
}

TEST_F(PolicyScreenTest, FileRoutesComeBeforeBuiltInOnes) {
  PolicyOptions o = NoAuth();
  o.rules_file = RulesFile(
      "route /api/delete allow\n"
      "route /api/tags deny\n"
      "route /api/pull allow\n"
      "route /api/ps admin\n");
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);

  // The file's allow wins over the built-in deny of /api/delete.
  Admission a;
  EXPECT_TRUE(p->Screen(Get("/api/%64elete"), &a)) << a.error;
  ASSERT_NE(a.route, nullptr);
  EXPECT_EQ(a.route->source, absl::StrCat(o.rules_file, ":1"));
  EXPECT_EQ(a.route->action, RouteAction::kAllow);
  EXPECT_EQ(a.group, "api");
  EXPECT_EQ(a.zone, ZoneIndex(*p, "api"));
  // /api/push keeps its built-in deny.
  Admission b;
  EXPECT_FALSE(p->Screen(Get("/api/push"), &b));
  EXPECT_EQ(b.error, "/api/push is not permitted via API");

  Admission c;
  EXPECT_FALSE(p->Screen(Get("/api/tags"), &c));
  EXPECT_EQ(c.status, 403);
  EXPECT_EQ(c.error, "/api/tags is not permitted via API");

  Admission d;
  EXPECT_TRUE(p->Screen(Get("/api/pull"), &d)) << d.error;  // no longer admin-only
  Admission e;
  EXPECT_FALSE(p->Screen(Get("/api/ps"), &e));
  EXPECT_EQ(e.error, "/api/ps is only permitted from admin addresses");
  Admission f;
  EXPECT_TRUE(p->Screen(Get("/api/ps", "::1"), &f));
}

TEST_F(PolicyScreenTest, RouteGroupsAndZones) {
  std::shared_ptr<const Policy> p = MustBuild(NoAuth());
  ASSERT_NE(p, nullptr);
  const int gen = ZoneIndex(*p, "gen"), api = ZoneIndex(*p, "api");
  for (absl::string_view target :
       {"/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/v1/chat/completions",
        "/v1/completions", "/v1/embeddings", "/API/Chat/", "/v1//chat/completions?stream=1"}) {
    Admission a;
    ASSERT_TRUE(p->Screen(Get(target), &a)) << target;
    EXPECT_EQ(a.route->group, "generation") << target;
    EXPECT_EQ(a.route->zone, gen) << target;
    EXPECT_EQ(p->zones()[a.route->zone].name, "gen");
  }
  for (absl::string_view target :
       {"/api/tags", "/api/show", "/api/ps", "/api/version", "/v1/models", "/", "/api/chatx"}) {
    Admission a;
    ASSERT_TRUE(p->Screen(Get(target), &a)) << target;
    EXPECT_EQ(a.route->group, "api") << target;
    EXPECT_EQ(a.route->zone, api) << target;
    EXPECT_EQ(a.route->pattern, "/") << target;
  }
}

TEST_F(PolicyScreenTest, StarPatternsArePrefixMatches) {
  PolicyOptions o = NoAuth();
  o.rules_file = RulesFile(
      "route /v1/* deny\n"
      "route /api/ps* deny\n"
      "route /api/show allow allow_ip=10.0.0.0/8\n");
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  struct Case {
    absl::string_view target;
    absl::string_view error;  // empty: passes
  } cases[] = {
      {"/v1/models", "/v1/ is not permitted via API"},
      {"/V1/Chat/Completions", "/v1/ is not permitted via API"},
      {"/v1/", "(passes)"},  // the match form drops the trailing slash: "/v1"
      {"/v1", "(passes)"},
      {"/v1x/models", "(passes)"},
      {"/api/ps", "/api/ps is not permitted via API"},
      {"/api/psx", "/api/ps is not permitted via API"},
      {"/api/ps/1", "/api/ps is not permitted via API"},
      {"/api/p", "(passes)"},
      // Without a star, a pattern covers itself and what lies under it.
      {"/api/show/x", "access denied for this address"},
      {"/api/showx", "(passes)"},
  };
  for (const Case& c : cases) {
    Admission a;
    const bool passes = c.error == "(passes)";
    EXPECT_EQ(p->Screen(Get(c.target), &a), passes) << c.target;
    if (!passes) {
      EXPECT_EQ(a.error, c.error) << c.target;
    }
  }
}

TEST_F(PolicyScreenTest, OptionsStarUsesTheRootRoute) {
  RequestFacts r = Get("*");
  r.method = "OPTIONS";
  std::shared_ptr<const Policy> p = MustBuild(NoAuth());
  ASSERT_NE(p, nullptr);
  Admission a;
  ASSERT_TRUE(p->Screen(r, &a)) << a.error;
  EXPECT_EQ(a.path.match, "*");
  EXPECT_EQ(a.path.forward, "*");
  ASSERT_NE(a.route, nullptr);
  EXPECT_EQ(a.route->pattern, "/");
  EXPECT_EQ(a.route->source, "default");
  EXPECT_EQ(a.route->group, "api");

  // "*" is matched as "/": a file rule for "/" or "/*" covers it, others not.
  PolicyOptions o = NoAuth();
  o.rules_file = RulesFile("route /v1/* deny\nroute /* allow allow_ip=10.0.0.0/8\n");
  p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  Admission b;
  EXPECT_FALSE(p->Screen(r, &b));
  EXPECT_EQ(b.error, "access denied for this address");
  EXPECT_EQ(b.route->pattern, "/*");

  o.rules_file = RulesFile("route / deny\n");
  p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  Admission c;
  EXPECT_FALSE(p->Screen(r, &c));
  EXPECT_EQ(c.error, "/ is not permitted via API");
}

// ---------------------------------------------------------------- CORS

class PolicyCorsTest : public PolicyFixture {};

TEST_F(PolicyCorsTest, ListedOriginIsEchoed) {
  PolicyOptions o = NoAuth();
  o.cors_origins = "https://app.example, https://B.example:8443/";
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);

  RequestFacts r = Get("/api/tags");
  r.origin = "https://app.example";
  Admission a;
  ASSERT_TRUE(p->Screen(r, &a)) << a.error;
  EXPECT_EQ(a.cors_origin, "https://app.example");
  EXPECT_TRUE(a.headers.empty());
  std::vector<HeaderField> want = {{"Access-Control-Allow-Origin", "https://app.example"},
                                   {"Access-Control-Allow-Credentials", "true"},
                                   {"Vary", "Origin"}};
  EXPECT_EQ(a.ResponseHeaders(), want);

  // Compared without case and without the listed trailing slash; echoed as
  // sent.
  r.origin = "https://b.EXAMPLE:8443";
  Admission b;
  ASSERT_TRUE(p->Screen(r, &b)) << b.error;
  EXPECT_EQ(b.cors_origin, "https://b.EXAMPLE:8443");
  EXPECT_EQ(Header(b.ResponseHeaders(), "Access-Control-Allow-Origin"), "https://b.EXAMPLE:8443");

  // No Origin: no CORS headers.
  Admission c;
  ASSERT_TRUE(p->Screen(Get("/api/tags"), &c));
  EXPECT_TRUE(c.cors_origin.empty());
  EXPECT_TRUE(c.ResponseHeaders().empty());
}

TEST_F(PolicyCorsTest, PreflightIsAnswered204) {
  PolicyOptions o = NoAuth();
  o.cors_origins = "https://app.example";
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  RequestFacts r = Get("/api/chat");
  r.method = "OPTIONS";
  r.origin = "https://app.example";
  r.ac_request_method = "POST";
  r.ac_request_headers = "authorization, content-type, x-requested-with";
  Admission a;
  EXPECT_FALSE(p->Screen(r, &a));
  EXPECT_EQ(a.status, 204);
  EXPECT_TRUE(a.error.empty());
  EXPECT_EQ(Header(a.headers, "Access-Control-Allow-Origin"), "https://app.example");
  EXPECT_EQ(Header(a.headers, "Access-Control-Allow-Credentials"), "true");
  EXPECT_EQ(Header(a.headers, "Vary"), "Origin");
  EXPECT_EQ(Header(a.headers, "Access-Control-Allow-Methods"),
            "GET, POST, PUT, DELETE, HEAD, OPTIONS");
  EXPECT_EQ(Header(a.headers, "Access-Control-Allow-Headers"),
            "authorization, content-type, x-requested-with");
  EXPECT_EQ(Header(a.headers, "Access-Control-Max-Age"), "86400");

  // Requested headers that could smuggle anything are replaced by the default
  // list.
  for (absl::string_view bad : {"x-a\r\nSet-Cookie: x", "x;y", "x:y", ""}) {
    r.ac_request_headers = bad;
    Admission b;
    EXPECT_FALSE(p->Screen(r, &b));
    EXPECT_EQ(b.status, 204);
    EXPECT_EQ(Header(b.headers, "Access-Control-Allow-Headers"),
              "authorization, content-type, x-api-key")
        << bad;
  }

  // OPTIONS without Access-Control-Request-Method is no preflight.
  r.ac_request_method = "";
  Admission c;
  EXPECT_TRUE(p->Screen(r, &c));
  EXPECT_EQ(c.status, 0);
  EXPECT_EQ(c.cors_origin, "https://app.example");

  // A preflight from an unlisted origin is refused.
  r.ac_request_method = "POST";
  r.origin = "https://evil.example";
  Admission d;
  EXPECT_FALSE(p->Screen(r, &d));
  EXPECT_EQ(d.status, 403);
  EXPECT_EQ(d.error, "origin not allowed");
}

TEST_F(PolicyCorsTest, UnlistedOriginIs403) {
  PolicyOptions o = NoAuth();
  o.cors_origins = "https://app.example";
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  for (absl::string_view origin : {"https://evil.example", "http://app.example",
                                   "https://app.example.evil", "https://app.example:443", "null"}) {
    RequestFacts r = Get("/api/tags");
    r.origin = origin;
    Admission a;
    EXPECT_FALSE(p->Screen(r, &a)) << origin;
    EXPECT_EQ(a.status, 403) << origin;
    EXPECT_EQ(a.error, "origin not allowed") << origin;
    EXPECT_TRUE(a.cors_origin.empty()) << origin;
    EXPECT_EQ(Header(a.headers, "Access-Control-Allow-Origin"), "(absent)") << origin;
  }
  // Without --cors_origins every foreign origin is refused.
  p = MustBuild(NoAuth());
  ASSERT_NE(p, nullptr);
  RequestFacts r = Get("/api/tags");
  r.origin = "https://app.example";
  Admission a;
  EXPECT_FALSE(p->Screen(r, &a));
  EXPECT_EQ(a.status, 403);
}

TEST_F(PolicyCorsTest, SameOriginPassesWithoutCorsHeaders) {
  std::shared_ptr<const Policy> p = MustBuild(NoAuth());
  ASSERT_NE(p, nullptr);
  RequestFacts r = Get("/api/tags");  // https://proxy.example
  for (absl::string_view origin : {"https://proxy.example", "HTTPS://Proxy.Example"}) {
    r.origin = origin;
    Admission a;
    EXPECT_TRUE(p->Screen(r, &a)) << origin << ": " << a.error;
    EXPECT_TRUE(a.cors_origin.empty());
    EXPECT_TRUE(a.ResponseHeaders().empty());
  }
  r.origin = "http://proxy.example";  // another scheme is another origin
  Admission b;
  EXPECT_FALSE(p->Screen(r, &b));
  EXPECT_EQ(b.status, 403);

  r.host = "proxy.example:8443";
  r.origin = "https://proxy.example:8443";
  Admission c;
  EXPECT_TRUE(p->Screen(r, &c)) << c.error;
  r.origin = "https://proxy.example";
  Admission d;
  EXPECT_FALSE(p->Screen(r, &d));

  // A same-origin preflight is answered, without Allow-Origin.
  r.method = "OPTIONS";
  r.origin = "https://proxy.example:8443";
  r.ac_request_method = "DELETE";
  Admission e;
  EXPECT_FALSE(p->Screen(r, &e));
  EXPECT_EQ(e.status, 204);
  EXPECT_EQ(Header(e.headers, "Access-Control-Allow-Origin"), "(absent)");
  EXPECT_EQ(Header(e.headers, "Access-Control-Max-Age"), "86400");
}

TEST_F(PolicyCorsTest, StarAllowsEveryOrigin) {
  PolicyOptions o = NoAuth();
  o.cors_origins = "*";
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  for (absl::string_view origin : {"https://anything.example", "http://localhost:3000", "null"}) {
    RequestFacts r = Get("/api/tags");
    r.origin = origin;
    Admission a;
    EXPECT_TRUE(p->Screen(r, &a)) << origin;
    EXPECT_EQ(a.cors_origin, origin);
    // "*" without credentials: a page may use its own key, never the
    // browser's stored Basic credentials.
    EXPECT_EQ(Header(a.ResponseHeaders(), "Access-Control-Allow-Origin"), "*");
    EXPECT_EQ(Header(a.ResponseHeaders(), "Access-Control-Allow-Credentials"), "(absent)");
  }
}

TEST_F(PolicyCorsTest, RefusalsToAListedOriginCarryCorsHeaders) {
  PolicyOptions o;
  o.keys_file = KeysFile();
  o.cors_origins = "https://app.example";
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  RequestFacts r = Get("/api/delete");
  r.origin = "https://app.example";
  Admission a;
  EXPECT_FALSE(p->Screen(r, &a));
  EXPECT_EQ(a.status, 403);
  EXPECT_EQ(Header(a.headers, "Access-Control-Allow-Origin"), "https://app.example");

  r.target = "/api/tags";
  Admission b;
  ASSERT_TRUE(p->Screen(r, &b));
  EXPECT_EQ(p->Authenticate(r, &b, &cache_, kT0), AuthStep::kRefused);
  EXPECT_EQ(b.status, 401);
  EXPECT_EQ(Header(b.headers, "Access-Control-Allow-Origin"), "https://app.example");
  EXPECT_EQ(Header(b.headers, "WWW-Authenticate"), "Bearer realm=\"sluice\"");

  // The global IP rules come first: a denied address gets no CORS headers.
  o.deny_cidrs = std::string(kClient);
  p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  Admission c;
  EXPECT_FALSE(p->Screen(r, &c));
  EXPECT_EQ(c.error, "access denied for this address");
  EXPECT_TRUE(c.headers.empty());
}

// ---------------------------------------------------------------- Authenticate

class PolicyAuthTest : public PolicyFixture {
 protected:
  // Screens `r` (which must pass) and authenticates it at kT0.
  AuthStep Auth(const Policy& p, const RequestFacts& r, Admission* a) {
    EXPECT_TRUE(p.Screen(r, a)) << a->error;
    return p.Authenticate(r, a, &cache_, kT0);
  }
};

TEST_F(PolicyAuthTest, KeyByBearerOrXApiKey) {
  PolicyOptions o;
  o.keys_file = KeysFile();
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);

  RequestFacts r = Get("/api/tags");
  const std::string bearer = absl::StrCat("Bearer ", alice_);
  r.authorization = bearer;
  Admission a;
  EXPECT_EQ(Auth(*p, r, &a), AuthStep::kDone);
  EXPECT_EQ(a.principal, "key:alice");
  EXPECT_EQ(a.user_name, "alice");
  EXPECT_EQ(a.status, 0);
  EXPECT_TRUE(a.headers.empty());

  const std::string lower = absl::StrCat("bearer   ", bob_);
  r.authorization = lower;
  Admission b;
  EXPECT_EQ(Auth(*p, r, &b), AuthStep::kDone);
  EXPECT_EQ(b.principal, "key:bob");

  r.authorization = "";
  r.x_api_key = carol_;
  Admission c;
  EXPECT_EQ(Auth(*p, r, &c), AuthStep::kDone);
  EXPECT_EQ(c.principal, "key:carol");

  // The same key in both fields names one client.
  const std::string carol = absl::StrCat("Bearer ", carol_);
  r.authorization = carol;
  Admission d;
  EXPECT_EQ(Auth(*p, r, &d), AuthStep::kDone);
  EXPECT_EQ(d.principal, "key:carol");
}

// Credentials that cannot be told apart are refused before any check, and
// the refusal is no login attempt: 400 whatever the keys are worth.
TEST_F(PolicyAuthTest, AmbiguousCredentialsAre400) {
  PolicyOptions o;
  o.keys_file = KeysFile();
  o.htpasswd_file = UsersFile();
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  const std::string alice = absl::StrCat("Bearer ", alice_);
  const std::string basic = BasicHeader("ann:pass");
  struct Case {
    absl::string_view authorization;
    absl::string_view x_api_key;
    bool repeated;
  };
  for (const Case& c : {Case{alice, carol_, false}, Case{basic, alice_, false},
                        Case{"Token whatever", alice_, false}, Case{alice, "", true},
                        Case{"", alice_, true}, Case{basic, "", true}}) {
    RequestFacts r = Get("/api/tags");
    r.authorization = c.authorization;
    r.x_api_key = c.x_api_key;
    r.repeated_credentials = c.repeated;
    Admission a;
    EXPECT_EQ(Auth(*p, r, &a), AuthStep::kRefused) << c.authorization << " / " << c.x_api_key;
    EXPECT_EQ(a.status, 400);
    EXPECT_TRUE(absl::StrContains(a.error, "ambiguous credentials")) << a.error;
    EXPECT_TRUE(a.principal.empty());
  }
  // With --auth=none nothing is read, so nothing is ambiguous.
  PolicyOptions none;
  none.auth = "none";
  std::shared_ptr<const Policy> open = MustBuild(none);
  ASSERT_NE(open, nullptr);
  RequestFacts r = Get("/api/tags");
  r.authorization = alice;
  r.x_api_key = carol_;
  r.repeated_credentials = true;
  Admission a;
  EXPECT_EQ(Auth(*open, r, &a), AuthStep::kDone);
}

TEST_F(PolicyAuthTest, WrongOrMissingKeyIs401WithBearerChallengeWithoutUsers) {
  PolicyOptions o;
  o.keys_file = KeysFile();
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  const std::string wrong = absl::StrCat("Bearer ", GenerateKey());
  const std::string almost = absl::StrCat("Bearer ", alice_, "x");
  const std::string basic = BasicHeader("ann:pass");
  for (absl::string_view authorization :
       {absl::string_view(), absl::string_view("Bearer "), absl::string_view(wrong),
        absl::string_view(almost), absl::string_view(basic), absl::string_view("Token whatever")}) {
    RequestFacts r = Get("/api/tags");
    r.authorization = authorization;
    Admission a;
    EXPECT_EQ(Auth(*p, r, &a), AuthStep::kRefused) << authorization;
    EXPECT_EQ(a.status, 401);
    EXPECT_EQ(a.error, "Unauthorized");
    EXPECT_EQ(Header(a.headers, "WWW-Authenticate"), "Bearer realm=\"sluice\"");
    EXPECT_TRUE(a.principal.empty());
  }
  RequestFacts r = Get("/api/tags");
  r.x_api_key = "sk-nope";
  Admission a;
  EXPECT_EQ(Auth(*p, r, &a), AuthStep::kRefused);
}

TEST_F(PolicyAuthTest, ChallengeIsBasicWhenThereAreUsers) {
  PolicyOptions o;
  o.keys_file = KeysFile();
  o.htpasswd_file = UsersFile();
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  const std::string wrong = absl::StrCat("Bearer ", GenerateKey());
  for (absl::string_view authorization : {absl::string_view(), absl::string_view(wrong)}) {
    RequestFacts r = Get("/api/tags");
    r.authorization = authorization;
    Admission a;
    EXPECT_EQ(Auth(*p, r, &a), AuthStep::kRefused);
    EXPECT_EQ(a.status, 401);
    EXPECT_EQ(Header(a.headers, "WWW-Authenticate"), "Basic realm=\"sluice\", charset=\"UTF-8\"");
  }
  // --auth=key never asks a browser for a password.
  o.auth = "key";
  p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  Admission a;
  EXPECT_EQ(Auth(*p, Get("/api/tags"), &a), AuthStep::kRefused);
  EXPECT_EQ(Header(a.headers, "WWW-Authenticate"), "Bearer realm=\"sluice\"");
}

TEST_F(PolicyAuthTest, BasicApr1UserIsVerifiedInline) {
  PolicyOptions o;
  o.keys_file = KeysFile();
  o.htpasswd_file = UsersFile();
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  RequestFacts r = Get("/api/tags");
  const std::string good = BasicHeader("ann:pass");
  r.authorization = good;
  Admission a;
  EXPECT_EQ(Auth(*p, r, &a), AuthStep::kDone);
  EXPECT_EQ(a.principal, "user:ann");
  EXPECT_EQ(a.user_name, "ann");
  EXPECT_EQ(a.basic_user, "ann");
  EXPECT_TRUE(a.basic_password.empty());
  EXPECT_EQ(a.status, 0);
  EXPECT_EQ(cache_.size(), 1u);  // recorded

  // The scheme is case-insensitive.
  const std::string upper = absl::StrCat("BASIC ", absl::Base64Escape("ann:pass"));
  r.authorization = upper;
  Admission b;
  EXPECT_EQ(Auth(*p, r, &b), AuthStep::kDone);
  EXPECT_EQ(b.principal, "user:ann");

  const std::string bad = BasicHeader("ann:wrong");
  r.authorization = bad;
  Admission c;
  EXPECT_EQ(Auth(*p, r, &c), AuthStep::kRefused);
  EXPECT_EQ(c.status, 401);
  EXPECT_EQ(c.error, "Unauthorized");
  EXPECT_TRUE(c.principal.empty());
  EXPECT_TRUE(c.basic_password.empty());
  EXPECT_EQ(Header(c.headers, "WWW-Authenticate"), "Basic realm=\"sluice\", charset=\"UTF-8\"");
}

TEST_F(PolicyAuthTest, BcryptUserNeedsVerifyThenTheCacheAnswers) {
  PolicyOptions o;
  o.htpasswd_file = UsersFile();
  std::shared_ptr<const Policy> p = MustBuild(o, 1);
  ASSERT_NE(p, nullptr);
  RequestFacts r = Get("/api/chat");
  const std::string good = BasicHeader("bea:pass");
  r.authorization = good;

  Admission a;
  ASSERT_EQ(Auth(*p, r, &a), AuthStep::kNeedVerify);
  EXPECT_EQ(a.basic_user, "bea");
  EXPECT_EQ(a.basic_password, "pass");
  EXPECT_TRUE(a.principal.empty());
  EXPECT_EQ(a.status, 0);
  EXPECT_EQ(cache_.size(), 0u);
  const bool valid = p->VerifyBasic(a.basic_user, a.basic_password);
  EXPECT_TRUE(valid);
  EXPECT_TRUE(p->FinishBasic(valid, &a, &cache_, kT0));
  EXPECT_EQ(a.principal, "user:bea");
  EXPECT_EQ(a.user_name, "bea");
  EXPECT_TRUE(a.basic_password.empty());
  EXPECT_EQ(cache_.size(), 1u);

  // The second request is answered from the cache, on the loop.
  Admission b;
  EXPECT_EQ(Auth(*p, r, &b), AuthStep::kDone);
  EXPECT_EQ(b.principal, "user:bea");
  EXPECT_TRUE(b.basic_password.empty());

  // A wrong password: verified once, then refused from the cache.
  const std::string bad = BasicHeader("bea:wrong");
  r.authorization = bad;
  Admission c;
  ASSERT_EQ(Auth(*p, r, &c), AuthStep::kNeedVerify);
  EXPECT_FALSE(p->VerifyBasic(c.basic_user, c.basic_password));
  EXPECT_FALSE(p->FinishBasic(false, &c, &cache_, kT0));
  EXPECT_EQ(c.status, 401);
  EXPECT_EQ(c.error, "Unauthorized");
  EXPECT_TRUE(c.principal.empty());
  EXPECT_EQ(Header(c.headers, "WWW-Authenticate"), "Basic realm=\"sluice\", charset=\"UTF-8\"");
  Admission d;
  EXPECT_EQ(Auth(*p, r, &d), AuthStep::kRefused);
  EXPECT_EQ(d.status, 401);
  EXPECT_TRUE(d.basic_password.empty());

  // A new snapshot (another generation) does not trust the old entries.
  std::shared_ptr<const Policy> reloaded = MustBuild(o, 2);
  ASSERT_NE(reloaded, nullptr);
  r.authorization = good;
  Admission e;
  EXPECT_EQ(Auth(*reloaded, r, &e), AuthStep::kNeedVerify);
  r.authorization = bad;
  Admission f;
  EXPECT_EQ(Auth(*reloaded, r, &f), AuthStep::kNeedVerify);
  // ... while the old snapshot, still held by older requests, still hits.
  r.authorization = good;
  Admission g;
  EXPECT_EQ(Auth(*p, r, &g), AuthStep::kDone);
}

TEST_F(PolicyAuthTest, UnknownUserIsCheckedAsExpensiveAsTheCostliestUser) {
  PolicyOptions o;
  o.htpasswd_file = UsersFile();
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  RequestFacts r = Get("/api/tags");
  const std::string who = BasicHeader("mallory:pass");
  r.authorization = who;
  Admission a;
  ASSERT_EQ(Auth(*p, r, &a), AuthStep::kNeedVerify);
  EXPECT_FALSE(p->VerifyBasic(a.basic_user, a.basic_password));
  EXPECT_FALSE(p->FinishBasic(false, &a, &cache_, kT0));
  EXPECT_EQ(a.status, 401);
}

TEST_F(PolicyAuthTest, MalformedBasicCredentialsAre401) {
  PolicyOptions o;
  o.htpasswd_file = UsersFile();
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  const std::string no_colon = BasicHeader("annpass");
  const std::string empty_user = BasicHeader(":pass");
  for (absl::string_view authorization :
       {absl::string_view("Basic !!!!"), absl::string_view("Basic a"), absl::string_view(no_colon),
        absl::string_view(empty_user), absl::string_view("Basic ")}) {
    RequestFacts r = Get("/api/tags");
    r.authorization = authorization;
    Admission a;
    EXPECT_EQ(Auth(*p, r, &a), AuthStep::kRefused) << authorization;
    EXPECT_EQ(a.status, 401) << authorization;
    EXPECT_EQ(a.error, "Unauthorized");
    EXPECT_TRUE(a.principal.empty());
  }
  EXPECT_EQ(cache_.size(), 0u);
}

TEST_F(PolicyAuthTest, BasicModeRefusesKeys) {
  PolicyOptions o;
  o.auth = "basic";
  o.keys_file = KeysFile();
  o.htpasswd_file = UsersFile();
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  const std::string bearer = absl::StrCat("Bearer ", alice_);
  RequestFacts r = Get("/api/tags");
  r.authorization = bearer;
  Admission a;
  EXPECT_EQ(Auth(*p, r, &a), AuthStep::kRefused);
  EXPECT_EQ(a.status, 401);
  EXPECT_EQ(Header(a.headers, "WWW-Authenticate"), "Basic realm=\"sluice\", charset=\"UTF-8\"");

  r.authorization = "";
  r.x_api_key = alice_;
  Admission b;
  EXPECT_EQ(Auth(*p, r, &b), AuthStep::kRefused);

  // Basic with an x-api-key beside it is read as a key presentation: refused.
  const std::string basic = BasicHeader("ann:pass");
  r.authorization = basic;
  Admission c;
  EXPECT_EQ(Auth(*p, r, &c), AuthStep::kRefused);

  r.x_api_key = "";
  Admission d;
  EXPECT_EQ(Auth(*p, r, &d), AuthStep::kDone);
  EXPECT_EQ(d.principal, "user:ann");
}

TEST_F(PolicyAuthTest, KeyModeRefusesBasic) {
  PolicyOptions o;
  o.auth = "key";
  o.keys_file = KeysFile();
  o.htpasswd_file = UsersFile();
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  const std::string basic = BasicHeader("ann:pass");
  RequestFacts r = Get("/api/tags");
  r.authorization = basic;
  Admission a;
  EXPECT_EQ(Auth(*p, r, &a), AuthStep::kRefused);
  EXPECT_EQ(a.status, 401);
  EXPECT_EQ(Header(a.headers, "WWW-Authenticate"), "Bearer realm=\"sluice\"");
}

TEST_F(PolicyAuthTest, AuthNoneLetsEveryoneIn) {
  std::shared_ptr<const Policy> p = MustBuild(NoAuth());
  ASSERT_NE(p, nullptr);
  RequestFacts r = Get("/api/tags");
  r.authorization = "Bearer whatever";
  Admission a;
  EXPECT_EQ(Auth(*p, r, &a), AuthStep::kDone);
  EXPECT_TRUE(a.principal.empty());
  EXPECT_TRUE(a.user_name.empty());
  EXPECT_EQ(a.status, 0);
  EXPECT_TRUE(a.headers.empty());
  EXPECT_FALSE(p->VerifyBasic("ann", "pass"));  // no users at all
}

TEST_F(PolicyAuthTest, FinishBasicClearsThePassword) {
  PolicyOptions o;
  o.htpasswd_file = UsersFile();
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  Admission a;
  a.basic_user = "bea";
  a.basic_password = "pass";
  EXPECT_TRUE(p->FinishBasic(true, &a, nullptr, kT0));  // no cache: nothing recorded
  EXPECT_TRUE(a.basic_password.empty());
  EXPECT_EQ(a.principal, "user:bea");

  Admission b;
  b.basic_user = "bea";
  b.basic_password = "wrong";
  EXPECT_FALSE(p->FinishBasic(false, &b, &cache_, kT0));
  EXPECT_TRUE(b.basic_password.empty());
  EXPECT_EQ(b.status, 401);
  EXPECT_EQ(cache_.size(), 1u);
  EXPECT_EQ(cache_.Lookup("bea", "wrong", p->generation(), kT0), CacheResult::kInvalid);
}

TEST_F(PolicyAuthTest, LinesMadeByTheRealHtpasswdTool) {
  if (!HaveHtpasswdTool()) GTEST_SKIP() << "htpasswd (apache2-utils) not installed";
  const std::string md5 = RunHtpasswd("-m", "tom", "s3cret pw");
  const std::string bcrypt = RunHtpasswd("-B -C 4", "tim", "s3cret pw");
  ASSERT_PRED2(HasPrefix, md5, "tom:$apr1$");
  ASSERT_PRED2(HasPrefix, bcrypt, "tim:$2y$04$");
  PolicyOptions o;
  o.htpasswd_file = Write("tool.htpasswd", absl::StrCat(md5, "\n", bcrypt, "\n"));
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->user_count(), 2u);

  RequestFacts r = Get("/api/tags");
  const std::string tom = BasicHeader("tom:s3cret pw");
  r.authorization = tom;
  Admission a;
  EXPECT_EQ(Auth(*p, r, &a), AuthStep::kDone);
  EXPECT_EQ(a.principal, "user:tom");

  const std::string tim = BasicHeader("tim:s3cret pw");
  r.authorization = tim;
  Admission b;
  ASSERT_EQ(Auth(*p, r, &b), AuthStep::kNeedVerify);
  EXPECT_TRUE(p->FinishBasic(p->VerifyBasic(b.basic_user, b.basic_password), &b, &cache_, kT0));
  EXPECT_EQ(b.principal, "user:tim");
}

// --auth_attempts: "6r/m burst=3" admits 4 attempts at once from one
// address, then one every 10 s.
class PolicyLoginLimitTest : public PolicyAuthTest {
 protected:
  std::shared_ptr<const Policy> Build(const std::string& attempts) {
    PolicyOptions o;
    o.keys_file = KeysFile();
    o.htpasswd_file = UsersFile();
    o.auth_attempts = attempts;
    return MustBuild(o, 1);
  }
  // Screen + Authenticate at `now` with the limit; for kNeedVerify, runs
  // the bcrypt check and finishes, as the relay does. The final status (0
  // when admitted).
  int Try(const Policy& p, absl::string_view authorization, int64_t now,
          absl::string_view peer = kClient, bool api_key = false) {
    RequestFacts r = Get("/api/tags", peer);
    if (api_key) {
      r.x_api_key = authorization;
    } else {
      r.authorization = authorization;
    }
    Admission a;
    EXPECT_TRUE(p.Screen(r, &a)) << a.error;
    AuthStep step = p.Authenticate(r, &a, &cache_, now, &rates_);
    if (step == AuthStep::kNeedVerify) {
      ++bcrypt_runs_;
      const bool ok = p.VerifyBasic(a.basic_user, a.basic_password);
      step = p.FinishBasic(ok, &a, &cache_, now, &rates_) ? AuthStep::kDone : AuthStep::kRefused;
    }
    if (a.status == 429) {
      retry_after_ = "";
      for (const auto& [name, value] : a.headers) {
        if (name == "Retry-After") retry_after_ = value;
      }
      EXPECT_EQ(a.error, "too many failed logins, retry later");
    }
    EXPECT_EQ(step == AuthStep::kDone, a.status == 0);
    return a.status;
  }
  int bcrypt_runs_ = 0;
  std::string retry_after_;
};

TEST_F(PolicyLoginLimitTest, WrongPasswordsThen429WithoutCheckingIt) {
  std::shared_ptr<const Policy> p = Build("6r/m burst=3");
  ASSERT_NE(p, nullptr);
  // Four different wrong bcrypt guesses are checked and refused.
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(Try(*p, BasicHeader(absl::StrCat("bea:guess", i)), kT0), 401) << i;
  }
  EXPECT_EQ(bcrypt_runs_, 4);
  // The fifth gets 429 and no bcrypt run; so does the right password,
  // which nobody has verified lately (an uncached check).
  EXPECT_EQ(Try(*p, BasicHeader("bea:guess4"), kT0), 429);
  EXPECT_EQ(Try(*p, BasicHeader("bea:pass"), kT0), 429);
  EXPECT_EQ(retry_after_, "10");
  EXPECT_EQ(bcrypt_runs_, 4);
  // A cheap scheme is not checked either (its answer would be the oracle).
  EXPECT_EQ(Try(*p, BasicHeader("ann:pass"), kT0), 429);
  // A repeated wrong password (the cache knows it) is a failure: 429 now.
  EXPECT_EQ(Try(*p, BasicHeader("bea:guess0"), kT0), 429);
  // Another address is not affected: bea logs in from there.
  EXPECT_EQ(Try(*p, BasicHeader("bea:pass"), kT0, "192.0.2.11"), 0);
  EXPECT_EQ(bcrypt_runs_, 5);
  // Her password is now known good (cached): it is answered from the
  // locked-out address too, uncounted and unchecked.
  EXPECT_EQ(Try(*p, BasicHeader("bea:pass"), kT0), 0);
  EXPECT_EQ(bcrypt_runs_, 5);
  // 10 s later the address may try again: a new wrong password is checked
  // and uses the one attempt; the cached one still passes.
  EXPECT_EQ(Try(*p, BasicHeader("bea:other"), kT0 + 10 * kSec), 401);
  EXPECT_EQ(Try(*p, BasicHeader("bea:other2"), kT0 + 10 * kSec), 429);
  EXPECT_EQ(Try(*p, BasicHeader("bea:pass"), kT0 + 10 * kSec), 0);
  EXPECT_EQ(bcrypt_runs_, 6);
}

TEST_F(PolicyLoginLimitTest, KnownGoodCredentialsPassUncounted) {
  std::shared_ptr<const Policy> p = Build("6r/m burst=3");
  ASSERT_NE(p, nullptr);
  // bea logs in (her password is checked, then cached; a right password is
  // no failed attempt), and goes on working: cached answers and valid keys
  // are not attempts, nor are requests without credentials.
  EXPECT_EQ(Try(*p, BasicHeader("bea:pass"), kT0), 0);
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(Try(*p, BasicHeader("bea:pass"), kT0), 0);
    EXPECT_EQ(Try(*p, absl::StrCat("Bearer ", alice_), kT0), 0);
    EXPECT_EQ(Try(*p, "", kT0), 401);
  }
  EXPECT_EQ(bcrypt_runs_, 1);
  // Wrong keys are plain 401s and are not counted (a key answers no
  // guess); four malformed headers use up the burst (4 attempts at once:
  // none was taken by the login above); then refusals of Basic credentials
  // are 429, while a wrong key is still told it is wrong.
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(Try(*p, absl::StrCat("Bearer sk-wrong", i), kT0), 401) << i;
  }
  for (int i = 0; i < 4; ++i) EXPECT_EQ(Try(*p, "Basic !!!", kT0), 401) << i;
  EXPECT_EQ(Try(*p, "Basic !!!", kT0), 429);
  EXPECT_FALSE(retry_after_.empty());
  EXPECT_EQ(Try(*p, "Bearer sk-wrong", kT0), 401);
  // ann's password has not been checked lately: refused unchecked.
  EXPECT_EQ(Try(*p, BasicHeader("ann:pass"), kT0), 429);
  // Known good credentials still pass: bea's cached password, and valid
  // keys (a 256-bit random key answers no guess).
  EXPECT_EQ(Try(*p, BasicHeader("bea:pass"), kT0), 0);
  EXPECT_EQ(Try(*p, absl::StrCat("Bearer ", alice_), kT0), 0);
  EXPECT_EQ(Try(*p, bob_, kT0, kClient, /*api_key=*/true), 0);
  // A request without credentials is still the plain challenge.
  EXPECT_EQ(Try(*p, "", kT0), 401);
  EXPECT_EQ(bcrypt_runs_, 1);
}

// Behind one NAT address: many users' first logins are right passwords,
// not failed attempts, so none of them locks the address; one client with
// a stale key gets 401 every time and locks nobody out; one with a wrong
// password gets 401 until its failures reach the limit, then 429, while
// every user known good goes on.
TEST_F(PolicyLoginLimitTest, FirstLoginsAreNotAttempts) {
  std::shared_ptr<const Policy> p = Build("6r/m burst=3");
  ASSERT_NE(p, nullptr);
  for (int round = 0; round < 10; ++round) {
    // A fresh cache each round: every login is a checked password.
    cache_ = BasicAuthCache(100, absl::Minutes(5), absl::Seconds(30));
    EXPECT_EQ(Try(*p, BasicHeader("bea:pass"), kT0), 0) << round;
    EXPECT_EQ(Try(*p, BasicHeader("ann:pass"), kT0), 0) << round;
  }
  EXPECT_EQ(bcrypt_runs_, 10);
  // A stale key: 401, however often; a first login after it is checked.
  for (int i = 0; i < 20; ++i) EXPECT_EQ(Try(*p, "Bearer sk-stale", kT0), 401) << i;
  cache_ = BasicAuthCache(100, absl::Minutes(5), absl::Seconds(30));
  EXPECT_EQ(Try(*p, BasicHeader("bea:pass"), kT0), 0);
  // A wrong password: 401 for the 4 attempts the limit admits at once,
  // then 429.
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(Try(*p, BasicHeader(absl::StrCat("ann:guess", i)), kT0), 401) << i;
  }
  EXPECT_EQ(Try(*p, BasicHeader("ann:guess9"), kT0), 429);
  EXPECT_EQ(retry_after_, "10");
  // The others, known good, are not refused: bea (cached) and a valid key;
  // ann's right password, not verified since the cache was emptied, is an
  // uncached check and waits for the limit.
  EXPECT_EQ(Try(*p, BasicHeader("bea:pass"), kT0), 0);
  EXPECT_EQ(Try(*p, absl::StrCat("Bearer ", alice_), kT0), 0);
  EXPECT_EQ(Try(*p, BasicHeader("ann:pass"), kT0), 429);
}

// A password check is counted before it runs, so that guesses in flight
// at once are bounded; the right password gives the count back when its
// check ends, a wrong one keeps it, and a check that never ran (its queue
// was full) gives it back too.
TEST_F(PolicyLoginLimitTest, ChecksInFlightAreCountedAndRightOnesGivenBack) {
  std::shared_ptr<const Policy> p = Build("6r/m burst=1");
  ASSERT_NE(p, nullptr);
  auto start = [&](absl::string_view credentials, Admission* a) {
    RequestFacts r = Get("/api/tags");
    r.authorization = credentials;
    EXPECT_TRUE(p->Screen(r, a));
    return p->Authenticate(r, a, &cache_, kT0, &rates_);
  };
  const std::string right = BasicHeader("bea:pass");
  const std::string wrong = BasicHeader("bea:nope");
  Admission a1, a2, a3;
  ASSERT_EQ(start(right, &a1), AuthStep::kNeedVerify);
  ASSERT_EQ(start(wrong, &a2), AuthStep::kNeedVerify);
  // Two checks in flight fill "burst=1": the third waits its turn.
  EXPECT_EQ(start(wrong, &a3), AuthStep::kRefused);
  EXPECT_EQ(a3.status, 429);
  EXPECT_TRUE(p->FinishBasic(true, &a1, &cache_, kT0, &rates_));
  // The right password's count came back: one more check may start.
  Admission a4;
  ASSERT_EQ(start(BasicHeader("bea:nope2"), &a4), AuthStep::kNeedVerify);
  p->ForgoVerify(&a4, &rates_, kT0);
  Admission a5;
  ASSERT_EQ(start(BasicHeader("bea:nope3"), &a5), AuthStep::kNeedVerify);
  EXPECT_FALSE(p->FinishBasic(false, &a2, &cache_, kT0, &rates_));
  EXPECT_FALSE(p->FinishBasic(false, &a5, &cache_, kT0, &rates_));
  // Two failures held: refused until the rate (one per 10 s) lets one go.
  Admission a6;
  EXPECT_EQ(start(BasicHeader("bea:nope4"), &a6), AuthStep::kRefused);
  EXPECT_EQ(a6.status, 429);
}

TEST_F(PolicyLoginLimitTest, OffCountsNothing) {
  std::shared_ptr<const Policy> p = Build("off");
  ASSERT_NE(p, nullptr);
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(Try(*p, BasicHeader(absl::StrCat("ann:guess", i)), kT0), 401) << i;
  }
  EXPECT_EQ(Try(*p, BasicHeader("ann:pass"), kT0), 0);
}

// ---------------------------------------------------------------- Limit

class PolicyLimitTest : public PolicyFixture {};

TEST_F(PolicyLimitTest, BurstThen429WithRetryAfter) {
  std::shared_ptr<const Policy> p = MustBuild(NoAuth());
  ASSERT_NE(p, nullptr);
  // Default generation zone: 10r/m burst=5 nodelay, so 6 at once, then one
  // every 6 s.
  for (int i = 0; i < 6; ++i) {
    LimitStep s = Admit(*p, Get("/api/chat"), kT0);
    EXPECT_EQ(s.kind, LimitStep::kAdmit) << i;
    EXPECT_EQ(s.delay_ns, 0) << i;
  }
  Admission a;
  LimitStep s = Admit(*p, Get("/api/chat"), kT0, &a);
  EXPECT_EQ(s.kind, LimitStep::kRefuse);
  EXPECT_EQ(a.status, 429);
  EXPECT_EQ(a.error, "rate limit exceeded");
  EXPECT_EQ(Header(a.headers, "Retry-After"), "6");
  EXPECT_TRUE(a.held.empty());

  Admission b;  // rounded up to whole seconds
  EXPECT_EQ(Admit(*p, Get("/api/chat"), kT0 + kSec / 2, &b).kind, LimitStep::kRefuse);
  EXPECT_EQ(Header(b.headers, "Retry-After"), "6");
  EXPECT_EQ(Admit(*p, Get("/api/chat"), kT0 + 6 * kSec - 1).kind, LimitStep::kRefuse);
  EXPECT_EQ(Admit(*p, Get("/api/chat"), kT0 + 6 * kSec).kind, LimitStep::kAdmit);

  // Another address has its own bucket; another zone too.
  EXPECT_EQ(Admit(*p, Get("/api/chat", "192.0.2.11"), kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p, Get("/api/tags"), kT0).kind, LimitStep::kAdmit);
  // The generation routes share the zone.
  EXPECT_EQ(Admit(*p, Get("/v1/chat/completions"), kT0 + 6 * kSec).kind, LimitStep::kRefuse);

  // A refusal less than a second from admission still says at least 1.
  PolicyOptions o = NoAuth();
  o.rate_api = "10r/s";
  p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(Admit(*p, Get("/api/tags", "198.51.100.7"), kT0).kind, LimitStep::kAdmit);
  Admission c;
  EXPECT_EQ(Admit(*p, Get("/api/tags", "198.51.100.7"), kT0 + 1, &c).kind, LimitStep::kRefuse);
  EXPECT_EQ(Header(c.headers, "Retry-After"), "1");
}

TEST_F(PolicyLimitTest, DelayedModeReturnsTheDelay) {
  PolicyOptions o = NoAuth();
  o.rate_api = "1r/s burst=3";
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  LimitStep s = Admit(*p, Get("/api/tags"), kT0);
  EXPECT_EQ(s.kind, LimitStep::kAdmit);
  EXPECT_EQ(s.delay_ns, 0);
  for (int i = 1; i <= 3; ++i) {
    s = Admit(*p, Get("/api/tags"), kT0);
    EXPECT_EQ(s.kind, LimitStep::kDelay) << i;
    EXPECT_EQ(s.delay_ns, i * kSec) << i;
  }
  Admission a;
  EXPECT_EQ(Admit(*p, Get("/api/tags"), kT0, &a).kind, LimitStep::kRefuse);
  EXPECT_EQ(Header(a.headers, "Retry-After"), "1");

  // delay=1: the first excess request goes at once, the next ones wait.
  o.rate_api = "1r/s burst=3 delay=1";
  p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  const RequestFacts r = Get("/api/tags", "192.0.2.99");
  EXPECT_EQ(Admit(*p, r, kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p, r, kT0).kind, LimitStep::kAdmit);
  s = Admit(*p, r, kT0 + kSec / 4);
  EXPECT_EQ(s.kind, LimitStep::kDelay);
  EXPECT_EQ(s.delay_ns, kSec - kSec / 4);
  s = Admit(*p, r, kT0 + kSec / 4);
  EXPECT_EQ(s.kind, LimitStep::kDelay);
  EXPECT_EQ(s.delay_ns, 2 * kSec - kSec / 4);
}

TEST_F(PolicyLimitTest, RateByCredentialCountsPerKey) {
  PolicyOptions o;
  o.keys_file = KeysFile();
  o.rate_by = "credential";
  o.rate_api = "60r/m burst=1 nodelay";
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  const std::string alice = absl::StrCat("Bearer ", alice_), bob = absl::StrCat("Bearer ", bob_);
  RequestFacts ra = Get("/api/tags"), rb = Get("/api/tags");
  ra.authorization = alice;
  rb.authorization = bob;
  EXPECT_EQ(Admit(*p, ra, kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p, ra, kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p, ra, kT0).kind, LimitStep::kRefuse);
  // Same address, another key: its own burst.
  EXPECT_EQ(Admit(*p, rb, kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p, rb, kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p, rb, kT0).kind, LimitStep::kRefuse);
  // The same key from another address shares the key's bucket.
  ra.peer = Ip("198.51.100.1");
  EXPECT_EQ(Admit(*p, ra, kT0).kind, LimitStep::kRefuse);

  // By address (the default), two keys from one address share one bucket.
  o.rate_by = "ip";
  p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  RequestFacts rc = Get("/api/tags", "203.0.113.1"), rd = Get("/api/tags", "203.0.113.1");
  rc.authorization = alice;
  rd.authorization = bob;
  EXPECT_EQ(Admit(*p, rc, kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p, rd, kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p, rc, kT0).kind, LimitStep::kRefuse);
  EXPECT_EQ(Admit(*p, rd, kT0).kind, LimitStep::kRefuse);
}

TEST_F(PolicyLimitTest, RateByCredentialFallsBackToTheAddressWhenAnonymous) {
  PolicyOptions o = NoAuth();
  o.rate_by = "credential";
  o.rate_api = "60r/m burst=1 nodelay";
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->zones()[ZoneIndex(*p, "api")].by, LimitBy::kCredential);
  EXPECT_EQ(Admit(*p, Get("/api/tags"), kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p, Get("/api/tags"), kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p, Get("/api/tags"), kT0).kind, LimitStep::kRefuse);
  EXPECT_EQ(Admit(*p, Get("/api/tags", "192.0.2.11"), kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p, Get("/api/tags", "::ffff:192.0.2.10"), kT0).kind, LimitStep::kRefuse);
}

TEST_F(PolicyLimitTest, ZoneByOptionOverridesRateBy) {
  PolicyOptions o;
  o.keys_file = KeysFile();
  o.rules_file = RulesFile(
      "zone perkey by=credential 60r/m burst=0\n"
      "route /api/tags allow zone=perkey\n");
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  const std::string alice = absl::StrCat("Bearer ", alice_), bob = absl::StrCat("Bearer ", bob_);
  RequestFacts ra = Get("/api/tags"), rb = Get("/api/tags");
  ra.authorization = alice;
  rb.authorization = bob;
  EXPECT_EQ(Admit(*p, ra, kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p, ra, kT0).kind, LimitStep::kRefuse);
  EXPECT_EQ(Admit(*p, rb, kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p, ra, kT0 + kSec).kind, LimitStep::kAdmit);
}

TEST_F(PolicyLimitTest, ZoneOffHasNoRateLimit) {
  PolicyOptions o = NoAuth();
  o.rate_api = "60r/m burst=0 nodelay";
  o.rules_file = RulesFile("route /api/tags allow zone=off\n");
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  Admission a;
  ASSERT_TRUE(p->Screen(Get("/api/tags"), &a));
  EXPECT_EQ(a.route->zone, -1);
  for (int i = 0; i < 100; ++i) {
    ASSERT_EQ(Admit(*p, Get("/api/tags"), kT0).kind, LimitStep::kAdmit) << i;
  }
  EXPECT_EQ(Admit(*p, Get("/api/ps"), kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p, Get("/api/ps"), kT0).kind, LimitStep::kRefuse);

  // --rate_api=off: the api routes are unlimited.
  o = NoAuth();
  o.rate_api = "off";
  p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  for (int i = 0; i < 100; ++i) {
    ASSERT_EQ(Admit(*p, Get("/api/ps", "192.0.2.77"), kT0).kind, LimitStep::kAdmit) << i;
  }
}

TEST_F(PolicyLimitTest, StreamCapsPerIpAndPerKey) {
  PolicyOptions o;
  o.keys_file = KeysFile();
  o.max_streams_per_ip = 2;
  o.max_streams_per_key = 1;
  o.rate_generation = "off";
  o.rate_api = "off";
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  const std::string alice = absl::StrCat("Bearer ", alice_), bob = absl::StrCat("Bearer ", bob_),
                    carol = absl::StrCat("Bearer ", carol_);
  auto req = [](absl::string_view target, absl::string_view peer, const std::string& auth) {
    RequestFacts r = Get(target, peer);
    r.authorization = auth;
    return r;
  };
  const IpAddress ip1 = Ip("192.0.2.1"), ip2 = Ip("192.0.2.2");

  Admission a1;
  ASSERT_EQ(Admit(*p, req("/api/chat", "192.0.2.1", alice), kT0, &a1).kind, LimitStep::kAdmit);
  ASSERT_EQ(a1.held.size(), 2u);
  const uint32_t ip_zone = a1.held[0].first, key_zone = a1.held[1].first;
  EXPECT_NE(ip_zone, key_zone);
  EXPECT_EQ(a1.held[0].second, ip1.AsBytes());
  EXPECT_EQ(a1.held[1].second, "key:alice");
  EXPECT_EQ(conns_.Count(ip_zone, ip1.AsBytes()), 1u);
  EXPECT_EQ(conns_.Count(key_zone, "key:alice"), 1u);

  // alice again: the IP cap has room, the key cap not; the IP slot taken
  // first is given back.
  Admission a2;
  EXPECT_EQ(Admit(*p, req("/api/chat", "192.0.2.1", alice), kT0, &a2).kind, LimitStep::kRefuse);
  EXPECT_EQ(a2.status, 429);
  EXPECT_EQ(a2.error, "too many concurrent requests");
  EXPECT_EQ(Header(a2.headers, "Retry-After"), "1");
  EXPECT_TRUE(a2.held.empty());
  EXPECT_EQ(conns_.Count(ip_zone, ip1.AsBytes()), 1u);
  Admission a3;
  EXPECT_EQ(Admit(*p, req("/api/generate", "192.0.2.2", alice), kT0, &a3).kind, LimitStep::kRefuse);
  EXPECT_EQ(conns_.Count(ip_zone, ip2.AsBytes()), 0u);
  EXPECT_EQ(conns_.Count(key_zone, "key:alice"), 1u);

  // bob fills the address's second place; carol finds none, on any
  // generation route (one group).
  Admission b1;
  EXPECT_EQ(Admit(*p, req("/api/chat", "192.0.2.1", bob), kT0, &b1).kind, LimitStep::kAdmit);
  EXPECT_EQ(conns_.Count(ip_zone, ip1.AsBytes()), 2u);
  Admission c1;
  EXPECT_EQ(Admit(*p, req("/v1/embeddings", "192.0.2.1", carol), kT0, &c1).kind,
            LimitStep::kRefuse);
  EXPECT_EQ(c1.error, "too many concurrent requests");
  EXPECT_EQ(conns_.Count(key_zone, "key:carol"), 0u);
  // Other routes have no caps.
  Admission c2;
  EXPECT_EQ(Admit(*p, req("/api/tags", "192.0.2.1", carol), kT0, &c2).kind, LimitStep::kAdmit);
  EXPECT_TRUE(c2.held.empty());

  // Release gives the places back.
  Policy::Release(&a1, &conns_);
  EXPECT_TRUE(a1.held.empty());
  EXPECT_EQ(conns_.Count(ip_zone, ip1.AsBytes()), 1u);
  EXPECT_EQ(conns_.Count(key_zone, "key:alice"), 0u);
  Admission c3;
  EXPECT_EQ(Admit(*p, req("/api/chat", "192.0.2.1", carol), kT0, &c3).kind, LimitStep::kAdmit);
  Policy::Release(&a1, &conns_);  // twice: nothing more
  EXPECT_EQ(conns_.Count(ip_zone, ip1.AsBytes()), 2u);
  Policy::Release(&b1, &conns_);
  Policy::Release(&c3, &conns_);
  EXPECT_EQ(conns_.Count(ip_zone, ip1.AsBytes()), 0u);
  EXPECT_EQ(conns_.size(), 0u);
}

TEST_F(PolicyLimitTest, StreamCapPerIpWithoutCredentials) {
  PolicyOptions o = NoAuth();
  o.max_streams_per_ip = 1;
  o.max_streams_per_key = 1;  // no principal: not applied
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  Admission a;
  ASSERT_EQ(Admit(*p, Get("/api/chat"), kT0, &a).kind, LimitStep::kAdmit);
  EXPECT_EQ(a.held.size(), 1u);
  Admission b;
  EXPECT_EQ(Admit(*p, Get("/api/chat"), kT0, &b).kind, LimitStep::kRefuse);
  EXPECT_EQ(Admit(*p, Get("/api/chat", "192.0.2.11"), kT0).kind, LimitStep::kAdmit);
  Policy::Release(&a, &conns_);
  Admission c;
  EXPECT_EQ(Admit(*p, Get("/api/chat"), kT0, &c).kind, LimitStep::kAdmit);
}

// A request the stream cap refuses is not charged to the rate zone: once a
// stream ends, the next request still finds the zone's whole burst.
TEST_F(PolicyLimitTest, CapRefusalsDoNotSpendTheRateZone) {
  PolicyOptions o = NoAuth();
  o.max_streams_per_ip = 1;
  o.rate_generation = "1r/m burst=1 nodelay";
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  Admission a;
  ASSERT_EQ(Admit(*p, Get("/api/chat"), kT0, &a).kind, LimitStep::kAdmit);
  for (int i = 0; i < 5; ++i) {
    Admission b;
    EXPECT_EQ(Admit(*p, Get("/api/chat"), kT0, &b).kind, LimitStep::kRefuse);
    EXPECT_EQ(b.error, "too many concurrent requests");
    EXPECT_TRUE(b.held.empty());
  }
  Policy::Release(&a, &conns_);
  Admission c;
  EXPECT_EQ(Admit(*p, Get("/api/chat"), kT0, &c).kind, LimitStep::kAdmit);
  Policy::Release(&c, &conns_);
  Admission d;
  EXPECT_EQ(Admit(*p, Get("/api/chat"), kT0, &d).kind, LimitStep::kRefuse);
  EXPECT_EQ(d.error, "rate limit exceeded");
}

TEST_F(PolicyLimitTest, FileRouteCapsCountPerGroup) {
  PolicyOptions o = NoAuth();
  o.rate_api = "off";
  o.rules_file = RulesFile(
      "route /api/show allow max_per_ip=1 group=meta\n"
      "route /api/ps allow max_per_ip=1 group=meta\n");
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  Admission a;
  ASSERT_EQ(Admit(*p, Get("/api/show"), kT0, &a).kind, LimitStep::kAdmit);
  Admission b;
  EXPECT_EQ(Admit(*p, Get("/api/ps"), kT0, &b).kind, LimitStep::kRefuse);
  Policy::Release(&a, &conns_);
  Admission c;
  EXPECT_EQ(Admit(*p, Get("/api/ps"), kT0, &c).kind, LimitStep::kAdmit);
  Policy::Release(&c, &conns_);
}

TEST_F(PolicyLimitTest, ZonesKeepTheirStateAcrossARebuild) {
  PolicyOptions o = NoAuth();
  o.rate_api = "60r/m burst=1 nodelay";
  std::shared_ptr<const Policy> p1 = MustBuild(o, 1);
  ASSERT_NE(p1, nullptr);
  EXPECT_EQ(Admit(*p1, Get("/api/tags"), kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p1, Get("/api/tags"), kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p1, Get("/api/tags"), kT0).kind, LimitStep::kRefuse);

  std::shared_ptr<const Policy> p2 = MustBuild(o, 2);
  ASSERT_NE(p2, nullptr);
  EXPECT_EQ(p2->zones()[ZoneIndex(*p2, "api")].id, p1->zones()[ZoneIndex(*p1, "api")].id);
  EXPECT_EQ(Admit(*p2, Get("/api/tags"), kT0).kind, LimitStep::kRefuse);

  // A changed rate keeps the state too: the TAT is 2 s ahead, burst=3 allows
  // 3 s, so two more pass (a fresh zone would let four through).
  o.rate_api = "60r/m burst=3 nodelay";
  std::shared_ptr<const Policy> p3 = MustBuild(o, 3);
  ASSERT_NE(p3, nullptr);
  EXPECT_EQ(Admit(*p3, Get("/api/tags"), kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p3, Get("/api/tags"), kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p3, Get("/api/tags"), kT0).kind, LimitStep::kRefuse);

  // A zone of another name starts afresh.
  o.rules_file = RulesFile("zone other 60r/m burst=1 nodelay\nroute /api/tags allow zone=other\n");
  std::shared_ptr<const Policy> p4 = MustBuild(o, 4);
  ASSERT_NE(p4, nullptr);
  EXPECT_EQ(Admit(*p4, Get("/api/tags"), kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p4, Get("/api/tags"), kT0).kind, LimitStep::kAdmit);
  EXPECT_EQ(Admit(*p4, Get("/api/tags"), kT0).kind, LimitStep::kRefuse);

  // A slot taken under one snapshot is released without it.
  o = NoAuth();
  o.max_streams_per_ip = 1;
  std::shared_ptr<const Policy> p5 = MustBuild(o, 5);
  ASSERT_NE(p5, nullptr);
  Admission held;
  ASSERT_EQ(Admit(*p5, Get("/api/chat", "198.51.100.5"), kT0, &held).kind, LimitStep::kAdmit);
  std::shared_ptr<const Policy> p6 = MustBuild(o, 6);
  ASSERT_NE(p6, nullptr);
  EXPECT_EQ(Admit(*p6, Get("/api/chat", "198.51.100.5"), kT0 + 6 * kSec).kind, LimitStep::kRefuse);
  p5.reset();
  Policy::Release(&held, &conns_);
  Admission again;
  EXPECT_EQ(Admit(*p6, Get("/api/chat", "198.51.100.5"), kT0 + 12 * kSec, &again).kind,
            LimitStep::kAdmit);
  Policy::Release(&again, &conns_);
}

TEST_F(PolicyLimitTest, RateRefusalToAListedOriginCarriesCorsHeaders) {
  PolicyOptions o = NoAuth();
  o.cors_origins = "https://app.example";
  o.rate_api = "60r/m burst=0";
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  RequestFacts r = Get("/api/tags");
  r.origin = "https://app.example";
  EXPECT_EQ(Admit(*p, r, kT0).kind, LimitStep::kAdmit);
  Admission a;
  EXPECT_EQ(Admit(*p, r, kT0, &a).kind, LimitStep::kRefuse);
  EXPECT_EQ(a.status, 429);
  EXPECT_EQ(Header(a.headers, "Access-Control-Allow-Origin"), "https://app.example");
  EXPECT_EQ(Header(a.headers, "Retry-After"), "1");
}

// ---------------------------------------------------------------- Limits
// that file routes inherit from the built-in ones

// --max_streams_per_ip is documented as the cap on "concurrent requests on
// the generation routes per client address". A rules-file route for a
// generation path that only adds an address rule (no max_per_ip=) gets the
// generation zone and group from the defaults (policy.cc:216-219), but not
// the flag's caps, so the cap silently disappears on that path.
TEST_F(PolicyLimitTest, FileRouteForAGenerationPathKeepsTheStreamCaps) {
  PolicyOptions o = NoAuth();
  o.max_streams_per_ip = 1;
  o.rules_file = RulesFile("route /api/chat allow deny_ip=203.0.113.0/24\n");
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  Admission a;
  ASSERT_EQ(Admit(*p, Get("/api/chat"), kT0, &a).kind, LimitStep::kAdmit);
  EXPECT_EQ(a.group, "generation");
  EXPECT_EQ(a.max_per_ip, 1u);
  Admission b;
  EXPECT_EQ(Admit(*p, Get("/api/chat"), kT0, &b).kind, LimitStep::kRefuse);
  Policy::Release(&a, &conns_);
  Policy::Release(&b, &conns_);
}

// A rules-file route without zone= gets "the zone the defaults would give
// it" (policy.cc:215-218), decided by IsGenerationPath(pattern). For a star
// pattern such as "/v1/*" that test is false, so /v1/chat/completions moves
// from the generation zone (10r/m burst=5) to the api zone (60r/m burst=20)
// and group "api" as soon as a rule like this one is added for its ACL.
TEST_F(PolicyLimitTest, StarRouteOverGenerationPathsKeepsTheGenerationZone) {
  PolicyOptions o = NoAuth();
  o.rules_file = RulesFile("route /v1/* allow deny_ip=203.0.113.0/24\n");
  std::shared_ptr<const Policy> p = MustBuild(o);
  ASSERT_NE(p, nullptr);
  Admission a;
  ASSERT_TRUE(p->Screen(Get("/v1/chat/completions"), &a));
  EXPECT_EQ(a.group, "generation");
  EXPECT_EQ(a.zone, ZoneIndex(*p, "gen"));
  Admission models;
  ASSERT_TRUE(p->Screen(Get("/v1/models"), &models));
  EXPECT_EQ(models.group, "api");
  EXPECT_EQ(models.zone, ZoneIndex(*p, "api"));
  int admitted = 0;
  for (int i = 0; i < 10; ++i) {
    admitted += Admit(*p, Get("/v1/chat/completions"), kT0).kind == LimitStep::kAdmit;
  }
  EXPECT_EQ(admitted, 6);  // 1 + burst 5 of the generation zone
}

// ----------------------------------------------------------------
// IsGenerationPath

TEST(PolicyGenerationPathTest, IsGenerationPath) {
  for (absl::string_view path :
       {"/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/v1/chat/completions",
        "/v1/completions", "/v1/embeddings", "/api/chat/sub"}) {
    EXPECT_TRUE(IsGenerationPath(path)) << path;
  }
  for (absl::string_view path :
       {"/api/chatx", "/api/tags", "/api/generate2", "/v1/models", "/v1/chat", "/v1", "/", "*", "",
        "/API/CHAT", "/api/embedding", "/api"}) {
    EXPECT_FALSE(IsGenerationPath(path)) << path;
  }
}

}  // namespace
}  // namespace sluice::policy
