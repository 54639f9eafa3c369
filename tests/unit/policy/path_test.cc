#include "policy/path.h"

#include <random>
#include <string>

#include "gtest/gtest.h"

namespace sluice::policy {
namespace {

NormalizedPath Norm(absl::string_view target) {
  absl::StatusOr<NormalizedPath> n = NormalizePath(target);
  EXPECT_TRUE(n.ok()) << target << ": " << n.status();
  return n.ok() ? *n : NormalizedPath{};
}

// Every spelling of /api/delete that Ollama would route (or that a naive
// prefix check would miss) must hit a rule on "/api/delete".
TEST(PathNormalize, DeleteRuleCannotBeBypassed) {
  for (absl::string_view target : {
           "/api/delete",
           "/api//delete",
           "/api/%64elete",
           "/api/./x/../delete",
           "/API/DELETE",
           "/api/delete/",
           "/api%2Fdelete",
           "/api%2fdelete",
           "/api/x%2F..%2Fdelete",
           "/api/x/..%2Fdelete",
           "//api/delete",
           "/api/delete?x=1",
           "/api/del%65te",
           "/%61pi/delete",
           "/api/%44ELETE",
           "/api/%2e/delete",
           "/api/%2e%2e/api/delete",
           "/api/.%2E/api/delete",
           "/api/delete/.",
           "/api/delete%2F",
           "/api/delete%2f.",
           "/api/delete//",
           "/api/delete/sub",
           "/api/delete/../delete",
           "///api///delete///",
           "/api/%2F/delete",
       }) {
    NormalizedPath n = Norm(target);
    EXPECT_TRUE(PathMatches("/api/delete", n.match))
        << target << " -> match " << n.match << ", forward " << n.forward;
  }
}

TEST(PathNormalize, OtherPathsDoNotMatchDelete) {
  for (absl::string_view target :
       {"/api/deletex", "/api/tags", "/api/delet", "/api/delete-x", "/apix/delete",
        "/api/delete%3Fx", "/x/api/delete", "/api/delete.json", "/", "*"}) {
    NormalizedPath n = Norm(target);
    EXPECT_FALSE(PathMatches("/api/delete", n.match)) << target << " -> " << n.match;
  }
}

TEST(PathNormalize, ForwardAndMatchForms) {
  struct Case {
    absl::string_view target, forward, match;
  };
  for (const Case& c : std::initializer_list<Case>{
           {"/api/generate", "/api/generate", "/api/generate"},
           {"/api//x/./y/../z?q=%2F", "/api/x/z?q=%2F", "/api/x/z"},
           {"/api/%7Efoo", "/api/~foo", "/api/~foo"},
           {"/api/%7efoo", "/api/~foo", "/api/~foo"},
           {"/a%2fb", "/a%2Fb", "/a/b"},
           {"/a%2Fb/", "/a%2Fb/", "/a/b"},
           {"/", "/", "/"},
           {"//", "/", "/"},
           {"/./", "/", "/"},
           {"/a/..", "/", "/"},
           {"/a/b/", "/a/b/", "/a/b"},
           {"/a/b/..", "/a/", "/a"},
           {"/a/b/.", "/a/b/", "/a/b"},
           {"/%41%42c", "/ABc", "/abc"},
           {"/A/B?X=Y", "/A/B?X=Y", "/a/b"},
           {"/a%20b", "/a%20b", "/a b"},
           {"/a%c3%A9", "/a%C3%A9", "/a\xc3\xa9"},
           {"/a%25%32%46b", "/a%252Fb", "/a%2fb"},
           {"/a?b/../c//d", "/a?b/../c//d", "/a"},
           {"/a/?", "/a/?", "/a"},
           {"/a/%2e%2e/b", "/b", "/b"},
           {"/a/.%2e/b", "/b", "/b"},
           {"/a/.../b", "/a/.../b", "/a/.../b"},
           {"/a/..b/.c", "/a/..b/.c", "/a/..b/.c"},
           {"/a/x%2F..%2Fb", "/a/x%2F..%2Fb", "/a/b"},
           {"/v1/chat/completions", "/v1/chat/completions", "/v1/chat/completions"},
           {"/api/blobs/sha256:abc", "/api/blobs/sha256:abc", "/api/blobs/sha256:abc"},
           {"/a;b=c", "/a;b=c", "/a;b=c"},
           {"*", "*", "*"},
       }) {
    NormalizedPath n = Norm(c.target);
    EXPECT_EQ(n.forward, c.forward) << c.target;
    EXPECT_EQ(n.match, c.match) << c.target;
  }
}

TEST(PathNormalize, RejectsBadTargets) {
  for (absl::string_view bad : {
           "",
           "api/tags",
           "http://host/api/tags",
           "?x",
           "/a%G1",
           "/a%1G",
           "/a%4",
           "/a%",
           "/a%%41",
           "/a%00",
           "/a%1f",
           "/a%0A",
           "/a%7F",
           "/a b",
           "/a\tb",
           "/a\x7f",
           "/a\x01",
           "/a\\b",
           "/a%5Cb",
           "/a%5cb",
           "/..",
           "/../a",
           "/a/../..",
           "/%2e%2e/",
           "/a/%2E%2E/%2e%2e",
           "/a%2F..%2F..%2Fb",
           "/..%2Fx",
           "/a#frag",
           "/a?x y",
           "/a?\x01",
       }) {
    absl::StatusOr<NormalizedPath> n = NormalizePath(bad);
    EXPECT_FALSE(n.ok()) << bad << " -> " << (n.ok() ? n->forward : "");
    EXPECT_EQ(n.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(n.status().message().substr(0, 16), "bad request path") << bad;
  }
  EXPECT_FALSE(NormalizePath(absl::string_view("/a\0b", 4)).ok());
}

TEST(PathNormalize, ForwardFormIsAFixedPoint) {
  // Normalising what we forward changes nothing, so the upstream never sees
  // a path whose meaning differs from the one the rules were checked on.
  constexpr absl::string_view kAlphabet = "/./%2Fe5Ca?dD%2e";
  std::mt19937 rng(12345);
  int accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string target = "/";
    const int len = static_cast<int>(rng() % 24);
    for (int j = 0; j < len; ++j) target.push_back(kAlphabet[rng() % kAlphabet.size()]);
    absl::StatusOr<NormalizedPath> n = NormalizePath(target);
    if (!n.ok()) continue;
    ++accepted;
    absl::StatusOr<NormalizedPath> again = NormalizePath(n->forward);
    ASSERT_TRUE(again.ok()) << target << " -> " << n->forward;
    EXPECT_EQ(again->forward, n->forward) << target;
    EXPECT_EQ(again->match, n->match) << target;
    EXPECT_EQ(n->match.find("//"), std::string::npos) << target;
    EXPECT_TRUE(n->match == "/" || n->match.back() != '/') << target;
  }
  EXPECT_GT(accepted, 1000);
}

TEST(PathMatches, Patterns) {
  struct Case {
    absl::string_view pattern, path;
    bool matches;
  };
  for (const Case& c : std::initializer_list<Case>{
           {"/api/delete", "/api/delete", true},
           {"/api/delete", "/api/delete/x", true},
           {"/api/delete", "/api/deletex", false},
           {"/api/delete", "/api", false},
           {"/api/delete", "/", false},
           {"/", "/", true},
           {"/", "/anything/at/all", true},
           {"*", "/x", true},
           {"/v1/*", "/v1/chat/completions", true},
           {"/v1/*", "/v1/", true},
           {"/v1/*", "/v1", false},
           {"/v1/*", "/v10/x", false},
           {"/api/blob*", "/api/blobs/sha256:abc", true},
           {"/api/blob*", "/api/blob", true},
           {"/api/blob*", "/api/blo", false},
           {"/api/", "/api", true},
           {"/api/", "/api/tags", true},
           {"/api/", "/apix", false},
           {"", "/", false},
       }) {
    EXPECT_EQ(PathMatches(c.pattern, c.path), c.matches) << c.pattern << " vs " << c.path;
  }
}

}  // namespace
}  // namespace sluice::policy
