// Host-routed rules and rules-file upstreams: host= patterns, upstream
// lines, upstream= and auth= on routes (policy/route_rules.h, Policy).

#include "policy/route_rules.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "policy/policy.h"

namespace sluice::policy {
namespace {

// What the proxy's parser would make of an upstream line: here, the text.
struct FakeTarget final : UpstreamTarget {
  std::string spec;
};

absl::StatusOr<std::shared_ptr<const UpstreamTarget>> FakeParse(absl::string_view spec) {
  if (absl::StrContains(spec, "bad")) return absl::InvalidArgumentError("bad address");
  auto t = std::make_shared<FakeTarget>();
  t->spec = std::string(spec);
  return std::shared_ptr<const UpstreamTarget>(std::move(t));
}

// ann's password is "pass" (apr1: checked on the spot).
constexpr absl::string_view kAnnApr1 = "ann:$apr1$DrUGLckq$ROP59x6XkOt2.xo.dF0G7.";

class RouteRulesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = absl::StrCat(::testing::TempDir(), "/sluice_routes_", getpid(), "_", info->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    options_.htpasswd_file = Write("users", absl::StrCat(kAnnApr1, "\n"));
    options_.parse_upstream = FakeParse;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Write(absl::string_view name, absl::string_view text) {
    std::string path = absl::StrCat(dir_, "/", name);
    std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
    return path;
  }
  std::shared_ptr<const Policy> Build(absl::string_view rules) {
    options_.rules_file = Write("rules", rules);
    absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Build(options_, 1);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? *p : nullptr;
  }
  std::string Error(absl::string_view rules) {
    options_.rules_file = Write("rules", rules);
    absl::StatusOr<std::shared_ptr<const Policy>> p = Policy::Build(options_, 1);
    EXPECT_FALSE(p.ok());
    return p.ok() ? "" : std::string(p.status().message());
  }

  std::string dir_;
  PolicyOptions options_;
};

RequestFacts Get(absl::string_view host, absl::string_view target) {
  RequestFacts r;
  r.method = "GET";
  r.target = target;
  r.scheme = "https";
  r.host = host;
  r.peer = *IpAddress::Parse("192.0.2.10");
  return r;
}

TEST(MatchHostTest, LowercaseWithoutPortOrTrailingDot) {
  EXPECT_EQ(MatchHost("Chat.Example.COM"), "chat.example.com");
  EXPECT_EQ(MatchHost("chat.example.com:8443"), "chat.example.com");
  EXPECT_EQ(MatchHost("chat.example.com.:443"), "chat.example.com");
  EXPECT_EQ(MatchHost("[::1]:8080"), "[::1]");
  EXPECT_EQ(MatchHost("[::1]"), "[::1]");
  EXPECT_EQ(MatchHost("10.0.0.1:80"), "10.0.0.1");
  EXPECT_EQ(MatchHost(""), "");
}

TEST(HostMatchesTest, ExactAndWildcard) {
  const std::vector<std::string> p = {"chat.example.com", "*.lab.example.com"};
  EXPECT_TRUE(HostMatches(p, "chat.example.com"));
  EXPECT_TRUE(HostMatches(p, "gpu1.lab.example.com"));
  EXPECT_TRUE(HostMatches(p, "a.b.lab.example.com"));
  EXPECT_FALSE(HostMatches(p, "lab.example.com"));  // the wildcard needs a label
  EXPECT_FALSE(HostMatches(p, "xlab.example.com"));
  EXPECT_FALSE(HostMatches(p, "chat.example.com.evil"));
  EXPECT_FALSE(HostMatches(p, "example.com"));
  EXPECT_FALSE(HostMatches(p, ""));
}

TEST_F(RouteRulesTest, RoutesPickTheirUpstreamByHostAndPrefix) {
  auto p = Build(
      "upstream webui 127.0.0.1:8080\n"
      "upstream docs balance=least_conn 127.0.0.1:9000, 127.0.0.1:9001\n"
      "route /* allow host=Chat.Example.com upstream=webui auth=none\n"
      "route /docs/* allow upstream=docs\n"
      "route /api/* allow host=ollama.example.com upstream=ollama\n");
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(p->upstreams().size(), 2u);
  EXPECT_EQ(p->upstreams()[0].name, "webui");
  EXPECT_EQ(static_cast<const FakeTarget&>(*p->upstreams()[1].target).spec,
            "balance=least_conn 127.0.0.1:9000, 127.0.0.1:9001");
  EXPECT_TRUE(p->has_upstream_routes());

  struct Case {
    absl::string_view host, target;
    int upstream;
  } cases[] = {
      {"chat.example.com", "/", 0},
      {"CHAT.example.com:443", "/api/tags", 0},  // the app's own /api
      {"chat.example.com", "/ws/socket.io/?EIO=4", 0},
      {"ollama.example.com", "/api/tags", -1},
      {"ollama.example.com", "/docs/intro", 1},  // any host
      {"other.example.com", "/docs/a/b", 1},
      {"other.example.com", "/docs", -1},  // "/docs/*" is what is below /docs/
      {"other.example.com", "/api/chat", -1},
      {"chat.example.com.evil", "/", -1},
  };
  for (const Case& c : cases) {
    const Route* r = p->FindRoute(c.host, c.target);
    ASSERT_NE(r, nullptr) << c.host << c.target;
    EXPECT_EQ(r->upstream, c.upstream) << c.host << c.target;
    Admission a;
    ASSERT_TRUE(p->Screen(Get(c.host, c.target), &a)) << c.host << c.target << a.error;
    EXPECT_EQ(a.route, r) << c.host << c.target;
  }
  EXPECT_EQ(p->FindRoute("chat.example.com", "/../x"), nullptr);
}

TEST_F(RouteRulesTest, UpstreamRoutesHaveNoneOfOllamasDefaultLimits) {
  auto p = Build(
      "zone web 600r/m burst=100\n"
      "upstream webui 127.0.0.1:8080\n"
      "route /* allow host=chat.example.com upstream=webui\n"
      "route /* allow host=strict.example.com upstream=webui zone=web group=ui max_per_ip=3\n");
  ASSERT_NE(p, nullptr);
  Admission a;
  ASSERT_TRUE(p->Screen(Get("chat.example.com", "/api/chat"), &a));
  EXPECT_EQ(a.zone, -1);
  EXPECT_EQ(a.group, "webui");
  EXPECT_EQ(a.max_per_ip, 0u);
  Admission b;
  ASSERT_TRUE(p->Screen(Get("strict.example.com", "/"), &b));
  EXPECT_GE(b.zone, 0);
  EXPECT_EQ(p->zones()[b.zone].name, "web");
  EXPECT_EQ(b.group, "ui");
  EXPECT_EQ(b.max_per_ip, 3u);
  // Ollama's routes keep theirs.
  Admission c;
  ASSERT_TRUE(p->Screen(Get("ollama.example.com", "/api/chat"), &c));
  EXPECT_EQ(c.group, "generation");
  EXPECT_GE(c.zone, 0);
}

TEST_F(RouteRulesTest, RouteAuthOverridesTheFlag) {
  auto p = Build(
      "upstream webui 127.0.0.1:8080\n"
      "route /* allow host=chat.example.com upstream=webui auth=none\n"
      "route /api/version allow auth=none\n");
  ASSERT_NE(p, nullptr);
  BasicAuthCache cache(16, absl::Minutes(1), absl::Minutes(1));
  // auth=none: an Authorization the proxy does not know is not its
  // business (the application's own token).
  RequestFacts web = Get("chat.example.com", "/api/v1/chats");
  web.authorization = "Bearer eyJhbGciOi.app-token";
  Admission a;
  ASSERT_TRUE(p->Screen(web, &a));
  EXPECT_EQ(p->AuthFor(a), AuthMode::kNone);
  EXPECT_EQ(p->Authenticate(web, &a, &cache, 0), AuthStep::kDone);
  EXPECT_EQ(a.principal, "");

  Admission v;
  RequestFacts version = Get("x", "/api/version");
  ASSERT_TRUE(p->Screen(version, &v));
  EXPECT_EQ(p->Authenticate(version, &v, &cache, 0), AuthStep::kDone);

  // Elsewhere --auth holds.
  Admission t;
  RequestFacts tags = Get("chat.example.org", "/api/tags");
  ASSERT_TRUE(p->Screen(tags, &t));
  EXPECT_EQ(p->AuthFor(t), AuthMode::kKeyOrBasic);  // derived from the htpasswd file
  EXPECT_EQ(p->Authenticate(tags, &t, &cache, 0), AuthStep::kRefused);
  EXPECT_EQ(t.status, 401);
  Admission u;
  const std::string basic = "Basic " + absl::Base64Escape("ann:pass");
  tags.authorization = basic;
  ASSERT_TRUE(p->Screen(tags, &u));
  EXPECT_EQ(p->Authenticate(tags, &u, &cache, 0), AuthStep::kDone);
  EXPECT_EQ(u.principal, "user:ann");
}

TEST_F(RouteRulesTest, DenyAndAdminStillApplyOnUpstreamRoutes) {
  auto p = Build(
      "upstream webui 127.0.0.1:8080\n"
      "route /admin/* admin host=chat.example.com upstream=webui\n"
      "route /* allow host=chat.example.com upstream=webui auth=none\n");
  ASSERT_NE(p, nullptr);
  Admission a;
  EXPECT_FALSE(p->Screen(Get("chat.example.com", "/admin/users"), &a));
  EXPECT_EQ(a.status, 403);
}

TEST_F(RouteRulesTest, ErrorsNameFileLineAndWhat) {
  struct Case {
    absl::string_view text;
    int line;
    absl::string_view message;
  } cases[] = {
      {"upstream\n", 1, "upstream NAME ADDRESS[,ADDRESS...]"},
      {"upstream webui\n", 1, "upstream NAME ADDRESS[,ADDRESS...]"},
      {"upstream web/ui 127.0.0.1:1\n", 1, "\"web/ui\": a name is 1 to 64"},
      {"upstream ollama 127.0.0.1:1\n", 1, "the name \"ollama\" is taken"},
      {"upstream a 127.0.0.1:1\n\nupstream a 127.0.0.1:2\n", 3,
       "upstream \"a\" is already defined at "},
      {"upstream a bad:1\n", 1, "upstream a: bad address"},
      {"route /* allow upstream=nope\n", 1, "upstream \"nope\" is not defined"},
      {"route /* allow upstream=a/b\n", 1, "upstream=a/b: not a name"},
      {"route /* allow host=a.example.com:8080\n", 1,
       "host=a.example.com:8080: expected host names"},
      {"route /* allow host=\n", 1, "host=: expected host names"},
      {"route /* allow host=a..b\n", 1, "host=a..b: expected"},
      {"route /* allow host=*.[::1]\n", 1, "host=*.[::1]: expected"},
      {"route /* allow auth=maybe\n", 1, "auth=maybe: use key, basic, key_or_basic or none"},
      {"route /* allow auth=key\n", 1, "auth=key needs the credentials file"},
  };
  for (const Case& c : cases) {
    const std::string err = Error(c.text);
    EXPECT_TRUE(absl::StartsWith(
        err, absl::StrCat("--rules_file: ", options_.rules_file, ":", c.line, ": ", c.message)))
        << c.text << " -> " << err;
  }
  options_.parse_upstream = nullptr;
  EXPECT_TRUE(absl::StrContains(Error("upstream a 127.0.0.1:1\n"), "upstream lines are not read"));
}

TEST_F(RouteRulesTest, HostsAreNormalisedAndAddressesAccepted) {
  auto p = Build(
      "upstream a 127.0.0.1:1\n"
      "route /* allow host=Chat.Example.COM.,10.0.0.1,[::1],*.Lab.example.com upstream=a\n");
  ASSERT_NE(p, nullptr);
  const Route& r = p->routes().front();
  EXPECT_EQ(r.hosts, (std::vector<std::string>{"chat.example.com", "10.0.0.1", "[::1]",
                                               "*.lab.example.com"}));
  EXPECT_EQ(p->FindRoute("[::1]:8080", "/")->upstream, 0);
  EXPECT_EQ(p->FindRoute("10.0.0.1", "/")->upstream, 0);
  EXPECT_EQ(p->FindRoute("x.lab.example.com", "/")->upstream, 0);
}

}  // namespace
}  // namespace sluice::policy
