#include "policy/htpasswd.h"

#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace sluice::policy {
namespace {

// Lines made by Apache's htpasswd 2.4 (apache2-utils) and by libxcrypt's
// crypt(), kept so these checks run where the tool is not installed.
constexpr absl::string_view kApr1Pass = "u:$apr1$DrUGLckq$ROP59x6XkOt2.xo.dF0G7.";
constexpr absl::string_view kApr1Empty = "u:$apr1$XCMp736h$gSdT6uW2WKMnKcn9JWWK20";
constexpr absl::string_view kApr1Long = "u:$apr1$Djn939JH$P1so/JFWMCUqTnRus95BM0";
constexpr absl::string_view kLongPassword = "correct horse battery staple, twice as long";
constexpr absl::string_view kBcryptPass =
    "u:$2y$04$xKGzC6dsYqyU66r6ohDHJudQBbzRslsDwPvW0oN78ja7K2Io/bdOy";
constexpr absl::string_view kShaPass = "u:{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ=";
constexpr absl::string_view kMd5CryptPass = "u:$1$saltsalt$hZR.9zfJXcVTsa9iTxnQR1";
constexpr absl::string_view kSha256Pass =
    "u:$5$rounds=1000$saltsalt$9XEseG1/bjdqJc4RQ15hmZfmT.KRO57mluphiNKkmkA";
constexpr absl::string_view kSha512Pass =
    "u:$6$rounds=1000$saltsalt$FiBN5PCSQz7PpTOT7vwGSzY2QH528hJHj.FtyQdehiyRbd"
    "xPIZydG7z9a4mOh.ZWHCU17ZsaRhe.JmCaRFZjY.";

Htpasswd MustParse(absl::string_view text) {
  absl::StatusOr<Htpasswd> h = Htpasswd::Parse(text, "users");
  EXPECT_TRUE(h.ok()) << h.status();
  return h.ok() ? *std::move(h) : Htpasswd();
}

// For EXPECT_PRED2, which prints both arguments when it fails.
bool HasPrefix(const std::string& s, absl::string_view prefix) {
  return absl::StartsWith(s, prefix);
}

std::string ParseError(absl::string_view text) {
  absl::StatusOr<Htpasswd> h = Htpasswd::Parse(text, ".htpasswd");
  EXPECT_FALSE(h.ok()) << text;
  if (h.ok()) return "";
  EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(h.status().message());
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

TEST(HtpasswdTest, FixedVectorsOfEveryScheme) {
  struct Case {
    absl::string_view line;
    absl::string_view password;
    bool expensive;
  } cases[] = {
      {kApr1Pass, "pass", false},  {kApr1Empty, "", false},     {kApr1Long, kLongPassword, false},
      {kBcryptPass, "pass", true}, {kShaPass, "pass", false},   {kMd5CryptPass, "pass", false},
      {kSha256Pass, "pass", true}, {kSha512Pass, "pass", true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.line);
    Htpasswd h = MustParse(c.line);
    EXPECT_EQ(h.size(), 1u);
    EXPECT_TRUE(h.Verify("u", c.password));
    EXPECT_FALSE(h.Verify("u", absl::StrCat(c.password, "x")));
    EXPECT_FALSE(h.Verify("u", "Pass"));
    EXPECT_FALSE(h.Verify("U", c.password));
    EXPECT_EQ(h.Expensive("u"), c.expensive);
  }
}

TEST(HtpasswdTest, BcryptPrefixes2y2b2aAreOneAlgorithm) {
  std::string hash(kBcryptPass.substr(2));
  ASSERT_TRUE(absl::StartsWith(hash, "$2y$")) << hash;
  for (absl::string_view prefix : {"$2y$", "$2b$", "$2a$"}) {
    Htpasswd h = MustParse(absl::StrCat("u:", prefix, hash.substr(4)));
    EXPECT_TRUE(h.Verify("u", "pass")) << prefix;
    EXPECT_FALSE(h.Verify("u", "pas")) << prefix;
  }
}

TEST(HtpasswdTest, FilesMadeByTheRealHtpasswdTool) {
  if (!HaveHtpasswdTool()) GTEST_SKIP() << "htpasswd (apache2-utils) missing";
  struct Case {
    absl::string_view flags;
    absl::string_view prefix;
    bool expensive;
  } cases[] = {
      {"-B -C 4", "$2y$04$", true},  // bcrypt, cheapest cost
      {"-B", "$2y$05$", true},       // bcrypt, htpasswd's default cost
      {"-m", "$apr1$", false},       // Apache MD5, htpasswd's default
      {"-s", "{SHA}", false},        // SHA-1
      {"-2", "$5$", true},           // SHA-256-crypt, 5000 rounds
      {"-5", "$6$", true},           // SHA-512-crypt, 5000 rounds
      {"-5 -r 1000", "$6$rounds=1000$", true},
  };
  std::string file = "# made by htpasswd\n";
  int n = 0;
  for (const Case& c : cases) {
    std::string user = absl::StrCat("user", n++);
    std::string line = RunHtpasswd(c.flags, user, absl::StrCat("pw-", user));
    EXPECT_TRUE(absl::StartsWith(line, absl::StrCat(user, ":", c.prefix))) << line;
    absl::StrAppend(&file, line, "\n");
  }
  Htpasswd h = MustParse(file);
  ASSERT_EQ(h.size(), std::size(cases));
  n = 0;
  for (const Case& c : cases) {
    std::string user = absl::StrCat("user", n++);
    SCOPED_TRACE(absl::StrCat(c.flags, " ", user));
    EXPECT_TRUE(h.Verify(user, absl::StrCat("pw-", user)));
    EXPECT_FALSE(h.Verify(user, absl::StrCat("pw-", user, " ")));
    EXPECT_FALSE(h.Verify(user, "pw-user99"));
    EXPECT_FALSE(h.Verify(user, ""));
    EXPECT_EQ(h.Expensive(user), c.expensive);
  }
  // A password that is another user's does not do for this one.
  EXPECT_FALSE(h.Verify("user0", "pw-user1"));
  EXPECT_FALSE(h.Verify("nobody", "pw-user0"));
  EXPECT_TRUE(h.Expensive("nobody"));  // the dummy is bcrypt
}

TEST(HtpasswdTest, ToolMadeApr1WithAwkwardPasswords) {
  if (!HaveHtpasswdTool()) GTEST_SKIP() << "htpasswd (apache2-utils) missing";
  // Lengths around md5-crypt's 16-byte blocks, and bytes beyond ASCII.
  for (std::string password :
       {std::string("a"), std::string(15, 'b'), std::string(16, 'c'), std::string(17, 'd'),
        std::string(33, 'e'), std::string("p\xc3\xa4ss w\xc3\xb6rd")}) {
    std::string line = RunHtpasswd("-m", "u", password);
    Htpasswd h = MustParse(line);
    EXPECT_TRUE(h.Verify("u", password)) << line;
    EXPECT_FALSE(h.Verify("u", password + password)) << line;
  }
}

TEST(HtpasswdTest, UnknownUserIsFalseAndCostsAboutAsMuch) {
  // bcrypt cost 6: ~4 ms a check, well above timer noise.
  absl::StatusOr<Htpasswd> parsed =
      Htpasswd::Parse(absl::StrCat("u2", kApr1Pass.substr(1), "\n",
                                   "alice:$2y$06$xKGzC6dsYqyU66r6ohDHJudQBbzRslsDwPvW0oN78ja7"
                                   "K2Io/bdOy\n"),
                      "users");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const Htpasswd& h = *parsed;
  EXPECT_TRUE(h.Expensive("alice"));
  EXPECT_TRUE(h.Expensive("nobody"));
  EXPECT_FALSE(h.Expensive("u2"));
  auto min_time = [&](absl::string_view user) {
    auto best = std::chrono::nanoseconds::max();
    for (int i = 0; i < 5; ++i) {
      auto start = std::chrono::steady_clock::now();
      EXPECT_FALSE(h.Verify(user, "wrong"));
      best = std::min(best, std::chrono::duration_cast<std::chrono::nanoseconds>(
                                std::chrono::steady_clock::now() - start));
    }
    return best.count();
  };
  const int64_t known = min_time("alice");
  const int64_t unknown = min_time("nobody");
  // The same work: only scheduling noise tells them apart. A quick "no such
  // user" would be ~1000 times faster.
  EXPECT_GT(unknown, known / 3) << known << " vs " << unknown << " ns";
  EXPECT_GT(known, unknown / 3) << known << " vs " << unknown << " ns";
}

TEST(HtpasswdTest, CheapDummyWhenTheFileIsCheap) {
  Htpasswd h = MustParse(absl::StrCat(kApr1Pass, "\n", "v", kShaPass.substr(1)));
  EXPECT_EQ(h.size(), 2u);
  EXPECT_FALSE(h.Expensive("nobody"));
  EXPECT_FALSE(h.Verify("nobody", "pass"));
  EXPECT_TRUE(h.Verify("v", "pass"));
}

// One scheme and cost, or schemes of equal cost: every known user costs
// what an unknown one does, nothing to warn about.
TEST(HtpasswdTest, NoCostWarningWhenEveryCheckCostsTheSame) {
  EXPECT_EQ(Htpasswd().cost_warning(), "");
  EXPECT_EQ(MustParse(kBcryptPass).cost_warning(), "");
  EXPECT_EQ(MustParse(absl::StrCat(kBcryptPass, "\nv", kBcryptPass.substr(1))).cost_warning(), "");
  // apr1 and md5-crypt: the same 1000 MD5 rounds.
  EXPECT_EQ(MustParse(absl::StrCat(kApr1Pass, "\nv", kMd5CryptPass.substr(1))).cost_warning(), "");
}

// Mixed schemes: one line naming the cheapest users, a few of them and then
// a count, and the costliest scheme that unknown users are checked with.
TEST(HtpasswdTest, CostWarningNamesTheCheapestUsers) {
  const std::string bcrypt6("$2y$06$xKGzC6dsYqyU66r6ohDHJudQBbzRslsDwPvW0oN78ja7K2Io/bdOy");
  std::string file = absl::StrCat("alice:", bcrypt6, "\n", "bob", kApr1Pass.substr(1), "\n");
  for (const char* u : {"s7", "s2", "s6", "s1", "s5", "s3", "s4"}) {
    absl::StrAppend(&file, u, kShaPass.substr(1), "\n");
  }
  absl::StatusOr<Htpasswd> h = Htpasswd::Parse(file, "/etc/sluice/users");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->cost_warning(),
            "/etc/sluice/users: hashes of unequal cost (bcrypt cost 6: 1 user, apr1: 1 user, "
            "{SHA}: 7 users); an unknown user is checked against a bcrypt cost 6 hash, so "
            "response times tell apart the 8 users with cheaper hashes from names that do "
            "not exist; cheapest ({SHA}): s1, s2, s3, s4, s5 and 2 more; give every user the "
            "same scheme and cost (htpasswd -B -C 6)");

  // bcrypt costs alone: the cheaper cost is named.
  absl::StatusOr<Htpasswd> costs =
      Htpasswd::Parse(absl::StrCat("alice:", bcrypt6, "\n", kBcryptPass, "\n"), "users");
  ASSERT_TRUE(costs.ok()) << costs.status();
  EXPECT_EQ(costs->cost_warning(),
            "users: hashes of unequal cost (bcrypt cost 6: 1 user, bcrypt cost 4: 1 user); an "
            "unknown user is checked against a bcrypt cost 6 hash, so response times tell "
            "apart the 1 user with cheaper hashes from names that do not exist; cheapest "
            "(bcrypt cost 4): u; give every user the same scheme and cost (htpasswd -B -C 6)");

  // SHA-crypt rounds count as cost too; odd bytes in names stay on one line.
  absl::StatusOr<Htpasswd> rounds =
      Htpasswd::Parse(absl::StrCat(kSha512Pass, "\n", "a\rb", kSha512Pass.substr(1), "\n",
                                   "c:$6$saltsalt$", std::string(86, 'a'), "\n"),
                      "users");
  ASSERT_TRUE(rounds.ok()) << rounds.status();
  EXPECT_EQ(rounds->cost_warning(),
            "users: hashes of unequal cost (SHA-512-crypt 5000 rounds: 1 user, SHA-512-crypt "
            "1000 rounds: 2 users); an unknown user is checked against a SHA-512-crypt 5000 "
            "rounds hash, so response times tell apart the 2 users with cheaper hashes from "
            "names that do not exist; cheapest (SHA-512-crypt 1000 rounds): a\\rb, u; give "
            "every user the same scheme and cost");
}

TEST(HtpasswdTest, EmptyFileVerifiesNobody) {
  Htpasswd h = MustParse("# no users yet\n\n");
  EXPECT_EQ(h.size(), 0u);
  EXPECT_FALSE(h.Verify("u", "pass"));
  EXPECT_FALSE(h.Expensive("u"));
  EXPECT_FALSE(Htpasswd().Verify("u", ""));
}

TEST(HtpasswdTest, PasswordWithNulNeverVerifies) {
  // crypt() would stop at the NUL and accept "pass\0anything" as "pass".
  for (absl::string_view line : {kBcryptPass, kMd5CryptPass, kApr1Pass, kShaPass}) {
    Htpasswd h = MustParse(line);
    EXPECT_FALSE(h.Verify("u", absl::string_view("pass\0x", 6))) << line;
    EXPECT_FALSE(h.Verify("u", absl::string_view("pass\0", 5))) << line;
  }
}

TEST(HtpasswdTest, CommentsBlanksCrlfAndExtraFields) {
  Htpasswd h = MustParse(absl::StrCat("# users\r\n\r\n", kApr1Pass, ":extra field\r\n  # more\n",
                                      "b", kShaPass.substr(1), "\r\n"));
  EXPECT_EQ(h.size(), 2u);
  EXPECT_TRUE(h.Verify("u", "pass"));
  EXPECT_TRUE(h.Verify("b", "pass"));
}

TEST(HtpasswdTest, ParseErrorsNameFileLineAndReason) {
  EXPECT_EQ(ParseError("# c\n\nalice\n"), ".htpasswd:3: expected user:hash");
  EXPECT_EQ(ParseError(":{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ="), ".htpasswd:1: empty user name");
  EXPECT_EQ(ParseError("alice:"), ".htpasswd:1: empty password hash");
  EXPECT_EQ(ParseError(absl::StrCat(kShaPass, "\n", kApr1Pass)),
            ".htpasswd:2: duplicate user \"u\" (first on line 1)");
  EXPECT_EQ(ParseError("alice:secret"),
            ".htpasswd:1: plain-text password not accepted; hash it "
            "(htpasswd -B)");
  EXPECT_PRED2(HasPrefix, ParseError("alice:Vz2WDF7Mo9UR."),
               ".htpasswd:1: unsupported hash scheme: DES crypt");
  EXPECT_EQ(ParseError("alice:$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"),
            ".htpasswd:1: unsupported hash scheme \"$argon2id$\"");
  EXPECT_EQ(ParseError("alice:$y$j9T$salt$hash"), ".htpasswd:1: unsupported hash scheme \"$y$\"");
  EXPECT_EQ(ParseError("alice:{SSHA}abcdefgh"), ".htpasswd:1: unsupported hash scheme \"{SSHA}\"");
  EXPECT_EQ(ParseError("alice:$2y$04$short"), ".htpasswd:1: malformed bcrypt hash");
  EXPECT_EQ(ParseError("alice:$2y$03$xKGzC6dsYqyU66r6ohDHJudQBbzRslsDwPvW0oN78"
                       "ja7K2Io/bdOy"),
            ".htpasswd:1: bcrypt cost 3 not in 4..31");
  EXPECT_EQ(ParseError("alice:$apr1$toolongsalt$ROP59x6XkOt2.xo.dF0G7."),
            ".htpasswd:1: malformed Apache MD5 ($apr1$) hash");
  EXPECT_EQ(ParseError("alice:$1$salt$short"), ".htpasswd:1: malformed md5-crypt ($1$) hash");
  EXPECT_EQ(ParseError("alice:$5$salt$short"), ".htpasswd:1: malformed SHA-256-crypt ($5$) hash");
  EXPECT_EQ(ParseError("alice:$6$rounds=x$salt$short"),
            ".htpasswd:1: malformed SHA-512-crypt ($6$) hash");
  EXPECT_EQ(ParseError("alice:{SHA}not base64!"), ".htpasswd:1: malformed {SHA} hash");
}

TEST(HtpasswdTest, LoadNamesTheFile) {
  char dir_template[] = "/tmp/htpasswd_test.XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string path = absl::StrCat(dir_template, "/users");
  absl::StatusOr<Htpasswd> h = Htpasswd::Load(path);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().message(), absl::StrCat(path, ": No such file or directory"));
  std::ofstream(path) << kApr1Pass << "\nbob:plain\n";
  h = Htpasswd::Load(path);
  ASSERT_FALSE(h.ok());
  EXPECT_TRUE(absl::StartsWith(std::string(h.status().message()),
                               absl::StrCat(path, ":2: plain-text password")))
      << std::string(h.status().message());
  std::ofstream(path) << kApr1Pass << "\n";
  h = Htpasswd::Load(path);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_TRUE(h->Verify("u", "pass"));
  unlink(path.c_str());
  rmdir(dir_template);
}

TEST(HtpasswdTest, VerifyIsThreadSafe) {
  Htpasswd h =
      MustParse(absl::StrCat(kBcryptPass, "\n", "a", kApr1Pass.substr(1), "\n", "s",
                             kSha512Pass.substr(1), "\n", "m", kMd5CryptPass.substr(1), "\n"));
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&h, &wrong, t] {
      for (int i = 0; i < 20; ++i) {
        for (absl::string_view user : {"u", "a", "s", "m"}) {
          if (!h.Verify(user, "pass")) ++wrong;
          if (h.Verify(user, t % 2 ? "pas" : "passs")) ++wrong;
        }
        if (h.Verify("nobody", "pass")) ++wrong;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

}  // namespace
}  // namespace sluice::policy
