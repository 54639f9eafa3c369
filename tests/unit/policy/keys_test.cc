#include "policy/keys.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "policy/keys_command.h"

namespace sluice::policy {
namespace {

// SHA-256("abc"), FIPS 180-2 appendix B.1.
constexpr absl::string_view kAbcDigest =
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

// For EXPECT_PRED2, which prints both arguments when it fails.
bool HasPrefix(const std::string& s, absl::string_view prefix) {
  return absl::StartsWith(s, prefix);
}

std::string ParseError(absl::string_view text) {
  absl::StatusOr<KeyStore> store = KeyStore::Parse(text, "keys.txt");
  EXPECT_FALSE(store.ok()) << text;
  if (store.ok()) return "";
  EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(store.status().message());
}

TEST(KeysTest, KeyLineIsNameSchemeAndLowercaseHexSha256) {
  EXPECT_EQ(KeyLine("alice", "abc"), absl::StrCat("alice:sha256:", kAbcDigest));
}

TEST(KeysTest, GenerateKeyIsSkAnd43Base64UrlCharacters) {
  std::string a = GenerateKey();
  std::string b = GenerateKey();
  for (const std::string& key : {a, b}) {
    ASSERT_EQ(key.size(), 3u + 43u) << key;
    EXPECT_TRUE(absl::StartsWith(key, "sk-")) << key;
    for (char c : key.substr(3)) {
      EXPECT_TRUE(absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_')
          << key;
    }
  }
  EXPECT_NE(a, b);
}

TEST(KeysTest, LookupFindsEachKeyByNameAndMissesOthers) {
  std::string alice = GenerateKey();
  std::string bob = GenerateKey();
  absl::StatusOr<KeyStore> store = KeyStore::Parse(
      absl::StrCat(KeyLine("alice", alice), "\n", KeyLine("bob", bob), "\n"), "keys.txt");
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_EQ(store->size(), 2u);
  const std::string* name = store->Lookup(alice);
  ASSERT_NE(name, nullptr);
  EXPECT_EQ(*name, "alice");
  name = store->Lookup(bob);
  ASSERT_NE(name, nullptr);
  EXPECT_EQ(*name, "bob");

  EXPECT_EQ(store->Lookup(GenerateKey()), nullptr);
  EXPECT_EQ(store->Lookup(""), nullptr);
  EXPECT_EQ(store->Lookup(alice.substr(0, alice.size() - 1)), nullptr);
  EXPECT_EQ(store->Lookup(alice + "x"), nullptr);
  // The digest itself is not a key.
  EXPECT_EQ(store->Lookup(KeyLine("alice", alice).substr(13)), nullptr);
}

TEST(KeysTest, LookupSurvivesMoveAndCopy) {
  std::string key = GenerateKey();
  absl::StatusOr<KeyStore> parsed = KeyStore::Parse(KeyLine("svc", key), "keys.txt");
  ASSERT_TRUE(parsed.ok());
  KeyStore moved = std::move(*parsed);
  KeyStore copy = moved;
  ASSERT_NE(moved.Lookup(key), nullptr);
  ASSERT_NE(copy.Lookup(key), nullptr);
  EXPECT_EQ(*copy.Lookup(key), "svc");
  EXPECT_EQ(KeyStore().Lookup(key), nullptr);
  EXPECT_EQ(KeyStore().size(), 0u);
}

TEST(KeysTest, CommentsBlanksWhitespaceCrlfAndUppercaseHex) {
  // The hex of SHA-256("def"), in capitals.
  std::string upper = KeyLine("x", "def").substr(9);
  for (char& c : upper) c = absl::ascii_toupper(static_cast<unsigned char>(c));
  absl::StatusOr<KeyStore> store =
      KeyStore::Parse(absl::StrCat("# keys for the lab\n\n   \n  # indented comment\n",
                                   "  first.user@example-1 : sha256 : ", kAbcDigest, "  \r\n",
                                   "second_one:sha256:", upper, "\n"),
                      "keys.txt");
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(store->names(), (std::vector<std::string>{"first.user@example-1", "second_one"}));
  ASSERT_NE(store->Lookup("abc"), nullptr);
  EXPECT_EQ(*store->Lookup("abc"), "first.user@example-1");
  ASSERT_NE(store->Lookup("def"), nullptr);
  EXPECT_EQ(*store->Lookup("def"), "second_one");
}

TEST(KeysTest, EmptyFileIsAnEmptyStore) {
  absl::StatusOr<KeyStore> store = KeyStore::Parse("# nothing yet\n", "k");
  ASSERT_TRUE(store.ok());
  EXPECT_EQ(store->size(), 0u);
  EXPECT_TRUE(store->names().empty());
  EXPECT_EQ(store->Lookup("abc"), nullptr);
}

TEST(KeysTest, ParseErrorsNameFileAndLine) {
  const std::string good = absl::StrCat("a:sha256:", kAbcDigest);
  EXPECT_EQ(ParseError("# c\n\njust-a-name\n"), "keys.txt:3: expected NAME:sha256:HEX");
  EXPECT_EQ(ParseError(absl::StrCat("a:b:sha256:", kAbcDigest)),
            "keys.txt:1: expected NAME:sha256:HEX");
  EXPECT_PRED2(HasPrefix, ParseError(absl::StrCat("bad name:sha256:", kAbcDigest)),
               "keys.txt:1: invalid key name");
  EXPECT_PRED2(HasPrefix, ParseError(absl::StrCat(":sha256:", kAbcDigest)),
               "keys.txt:1: invalid key name");
  EXPECT_PRED2(HasPrefix, ParseError(absl::StrCat(std::string(65, 'n'), ":sha256:", kAbcDigest)),
               "keys.txt:1: invalid key name");
  EXPECT_PRED2(HasPrefix, ParseError(absl::StrCat("a:md5:", kAbcDigest)),
               "keys.txt:1: unsupported hash \"md5\"");
  EXPECT_PRED2(HasPrefix, ParseError("a:sha256:abcd"), "keys.txt:1: expected 64 hex digits");
  EXPECT_PRED2(HasPrefix, ParseError(absl::StrCat("a:sha256:", kAbcDigest.substr(1), "g")),
               "keys.txt:1: expected 64 hex digits");
  EXPECT_EQ(ParseError(absl::StrCat(good, "\n#\n", KeyLine("a", "other"))),
            "keys.txt:3: duplicate key name \"a\" (first on line 1)");
  EXPECT_EQ(ParseError(absl::StrCat(good, "\nb:sha256:", kAbcDigest)),
            "keys.txt:2: duplicate key hash (the same key as \"a\" on line 1)");
}

// Settings after the digest: weight=N (1..1000), the slot share; a key
// without one has weight 1. Anything else is an error naming the line.
TEST(KeysTest, WeightSettingAfterTheDigest) {
  absl::StatusOr<KeyStore> store = KeyStore::Parse(
      absl::StrCat(KeyLine("batch", "kb", 3), "\n", KeyLine("alice", "ka"), "\n",
                   "  carol : sha256 : ", KeyLine("c", "kc").substr(9), "\tweight=1000  \r\n"),
      "keys.txt");
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(KeyLine("batch", "kb", 3), absl::StrCat(KeyLine("batch", "kb"), " weight=3"));
  ASSERT_NE(store->Find("kb"), nullptr);
  EXPECT_EQ(store->Find("kb")->name, "batch");
  EXPECT_EQ(store->Find("kb")->weight, 3u);
  EXPECT_EQ(store->Find("ka")->weight, 1u);
  EXPECT_EQ(store->Find("kc")->weight, 1000u);
  EXPECT_EQ(*store->Lookup("kb"), "batch");
  EXPECT_EQ(store->Find("nope"), nullptr);
  EXPECT_EQ(store->names(), (std::vector<std::string>{"batch", "alice", "carol"}));

  const std::string good = absl::StrCat("a:sha256:", kAbcDigest);
  for (const char* bad : {"0", "1001", "-1", "x", "", "2.5", "99999999999"}) {
    EXPECT_EQ(
        ParseError(absl::StrCat(good, " weight=", bad)),
        absl::StrCat("keys.txt:1: weight=\"", bad, "\": expected a whole number from 1 to 1000"));
  }
  EXPECT_EQ(ParseError(absl::StrCat("# c\n", good, " colour=blue")),
            "keys.txt:2: unknown setting \"colour=blue\" after the digest (expected weight=N, "
            "models=, alias=, max_keep_alive=, keep_alive_forever=, max_num_ctx=, "
            "max_num_predict=, over_max=, pull_registries=, max_images= or max_image_bytes=)");
  EXPECT_EQ(ParseError(absl::StrCat(good, " max_num_ctx=lots")),
            "keys.txt:1: max_num_ctx=\"lots\": expected a whole number (0: no limit)");
  EXPECT_EQ(ParseError(absl::StrCat(good, " weight")),
            "keys.txt:1: weight=\"\": expected a whole number from 1 to 1000");
}

// Model settings after the digest: kept as written, and resolved over the
// defaults for the key's policy.
TEST(KeysTest, ModelSettings) {
  const std::string text = absl::StrCat(
      "a:sha256:", kAbcDigest, " weight=2 models=llama3*,qwen2.5:7b alias=gpt-4o=llama3.1:8b",
      " max_num_predict=256\n", "b:sha256:", std::string(64, 'b'), "\n");
  absl::StatusOr<KeyStore> store = KeyStore::Parse(text, "keys.txt");
  ASSERT_TRUE(store.ok()) << store.status();
  ModelPolicy defaults;
  defaults.max_num_ctx = 4096;
  store->ResolveModelPolicies(defaults);
  const KeyEntry& a = store->entries()[0];
  EXPECT_EQ(a.weight, 2u);
  EXPECT_EQ(ModelSettingWords(a.model),
            (std::vector<std::string>{"models=llama3*,qwen2.5:7b",
                                      "alias=gpt-4o:latest=llama3.1:8b", "max_num_predict=256"}));
  EXPECT_EQ(a.model_policy.models, (std::vector<std::string>{"llama3*", "qwen2.5:7b"}));
  EXPECT_EQ(a.model_policy.max_num_predict, 256);
  EXPECT_EQ(a.model_policy.max_num_ctx, 4096);  // from the defaults
  const KeyEntry& b = store->entries()[1];
  EXPECT_TRUE(b.model_policy.models.empty());
  EXPECT_EQ(b.model_policy.max_num_ctx, 4096);
  EXPECT_EQ(KeyLine("c", "kc", 1, {"models=x", "max_num_ctx=8"}),
            absl::StrCat(KeyLine("c", "kc"), " models=x max_num_ctx=8"));
}

TEST(KeysTest, ValidKeyName) {
  EXPECT_TRUE(ValidKeyName("a"));
  EXPECT_TRUE(ValidKeyName("ci-bot_2.prod@team"));
  EXPECT_TRUE(ValidKeyName(std::string(64, 'x')));
  EXPECT_FALSE(ValidKeyName(""));
  EXPECT_FALSE(ValidKeyName(std::string(65, 'x')));
  EXPECT_FALSE(ValidKeyName("a:b"));
  EXPECT_FALSE(ValidKeyName("a b"));
  EXPECT_FALSE(ValidKeyName("a/b"));
  EXPECT_FALSE(ValidKeyName("tab\t"));
  EXPECT_FALSE(ValidKeyName("caf\xc3\xa9"));
}

TEST(KeysTest, LoadReadsTheFileAndNamesAMissingOne) {
  char dir_template[] = "/tmp/keys_test.XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string path = absl::StrCat(dir_template, "/keys");
  {
    std::ofstream f(path);
    f << KeyLine("alice", "abc") << "\nbroken line\n";
  }
  absl::StatusOr<KeyStore> store = KeyStore::Load(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().message(), absl::StrCat(path, ":2: expected NAME:sha256:HEX"));
  {
    std::ofstream f(path);
    f << KeyLine("alice", "abc") << "\n";
  }
  store = KeyStore::Load(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(store->names(), (std::vector<std::string>{"alice"}));

  unlink(path.c_str());
  store = KeyStore::Load(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store.status().message(), absl::StrCat(path, ": No such file or directory"));
  rmdir(dir_template);
}

TEST(KeysTest, PresentedKeyFromBearerOrXApiKey) {
  using Opt = std::optional<absl::string_view>;
  EXPECT_EQ(PresentedKey("Bearer sk-1", ""), Opt("sk-1"));
  EXPECT_EQ(PresentedKey("bearer sk-1", ""), Opt("sk-1"));
  EXPECT_EQ(PresentedKey("BEARER    sk-1", ""), Opt("sk-1"));
  EXPECT_EQ(PresentedKey("Bearer sk-1  ", ""), Opt("sk-1"));
  // Bearer wins over x-api-key.
  EXPECT_EQ(PresentedKey("Bearer sk-1", "sk-2"), Opt("sk-1"));
  EXPECT_EQ(PresentedKey("", "sk-2"), Opt("sk-2"));
  // Another scheme is not a key; x-api-key still is.
  EXPECT_EQ(PresentedKey("Basic YTpi", ""), std::nullopt);
  EXPECT_EQ(PresentedKey("Basic YTpi", "sk-2"), Opt("sk-2"));
  // No space after the scheme, or no key after it: nothing presented.
  EXPECT_EQ(PresentedKey("Bearersk-1", ""), std::nullopt);
  EXPECT_EQ(PresentedKey("Bearer", ""), std::nullopt);
  EXPECT_EQ(PresentedKey("Bearer   ", ""), std::nullopt);
  EXPECT_EQ(PresentedKey("Bearer   ", "sk-2"), Opt("sk-2"));
  EXPECT_EQ(PresentedKey("", ""), std::nullopt);
  EXPECT_EQ(PresentedKey("Bear sk-1", ""), std::nullopt);
}

// `sluice keys` end to end, in a temporary directory.
class KeysCommandTest : public ::testing::Test {
 protected:
  struct Result {
    int code;
    std::string out;
    std::string err;
  };

  void SetUp() override {
    char dir_template[] = "/tmp/keys_command_test.XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    dir_ = dir_template;
    file_ = dir_ + "/keys.txt";
  }

  void TearDown() override {
    std::string cmd = absl::StrCat("rm -rf '", dir_, "'");
    ASSERT_EQ(system(cmd.c_str()), 0);
  }

  Result Run(std::vector<std::string> args) {
    args.insert(args.begin(), "keys");
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::ostringstream out, err;
    int code = RunKeysCommand(static_cast<int>(args.size()), argv.data(), out, err);
    return {code, out.str(), err.str()};
  }

  // Runs `keys add NAME` and returns the printed key.
  std::string Add(const std::string& name) {
    Result r = Run({"add", name, "--keys_file", file_});
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_TRUE(r.err.empty()) << r.err;
    EXPECT_EQ(r.out.size(), 47u) << r.out;
    EXPECT_TRUE(absl::EndsWith(r.out, "\n"));
    return r.out.substr(0, r.out.size() - 1);
  }

  std::string ReadFile() {
    std::ifstream f(file_);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
  }

  void WriteFile(const std::string& text, mode_t mode) {
    std::ofstream(file_) << text;
    ASSERT_EQ(chmod(file_.c_str(), mode), 0);
  }

  mode_t Mode() {
    struct stat st;
    EXPECT_EQ(stat(file_.c_str(), &st), 0);
    return st.st_mode & 07777;
  }

  // Expects a usage error: status 2, nothing on stdout, one stderr line.
  void ExpectUsage(std::vector<std::string> args, absl::string_view message) {
    Result r = Run(std::move(args));
    EXPECT_EQ(r.code, 2);
    EXPECT_TRUE(r.out.empty()) << r.out;
    EXPECT_EQ(r.err, absl::StrCat("sluice keys: ", message, "\n"));
  }

  // Expects a failure: status 1, nothing on stdout, one stderr line.
  void ExpectFailure(std::vector<std::string> args, absl::string_view substring) {
    Result r = Run(std::move(args));
    EXPECT_EQ(r.code, 1);
    EXPECT_TRUE(r.out.empty()) << r.out;
    EXPECT_TRUE(absl::StartsWith(r.err, "sluice keys: ")) << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, substring)) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }

  std::string dir_;
  std::string file_;
};

TEST_F(KeysCommandTest, AddListLookupRevoke) {
  const std::string alice = Add("alice");
  EXPECT_EQ(Mode(), 0600u);
  // --keys_file=F works as well as --keys_file F, before the name too.
  Result r = Run({"add", "--keys_file=" + file_, "bob"});
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string bob = r.out.substr(0, r.out.size() - 1);
  EXPECT_NE(alice, bob);
  EXPECT_EQ(ReadFile(), absl::StrCat(KeyLine("alice", alice), "\n", KeyLine("bob", bob), "\n"));

  r = Run({"list", "--keys_file", file_});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out, "alice\nbob\n");
  EXPECT_TRUE(r.err.empty()) << r.err;

  absl::StatusOr<KeyStore> store = KeyStore::Load(file_);
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_NE(store->Lookup(alice), nullptr);
  EXPECT_EQ(*store->Lookup(alice), "alice");
  ASSERT_NE(store->Lookup(bob), nullptr);
  EXPECT_EQ(*store->Lookup(bob), "bob");

  r = Run({"revoke", "alice", "--keys_file", file_});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_TRUE(r.err.empty()) << r.err;
  EXPECT_EQ(Mode(), 0600u);
  store = KeyStore::Load(file_);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(store->Lookup(alice), nullptr);
  ASSERT_NE(store->Lookup(bob), nullptr);
  EXPECT_EQ(Run({"list", "--keys_file", file_}).out, "bob\n");
  // No temporary file left behind.
  std::string ls = absl::StrCat("test $(ls -A '", dir_, "' | wc -l) -eq 1");
  EXPECT_EQ(system(ls.c_str()), 0);
}

// `keys add NAME --weight N` writes the setting; list shows weights other
// than 1; a bad weight is a usage error and writes nothing.
TEST_F(KeysCommandTest, AddWithWeightAndListShowsIt) {
  Result r = Run({"add", "batch", "--weight", "4", "--keys_file", file_});
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string batch = r.out.substr(0, r.out.size() - 1);
  r = Run({"add", "alice", "--weight=1", "--keys_file", file_});
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string alice = r.out.substr(0, r.out.size() - 1);
  EXPECT_EQ(ReadFile(),
            absl::StrCat(KeyLine("batch", batch, 4), "\n", KeyLine("alice", alice), "\n"));
  EXPECT_EQ(Run({"list", "--keys_file", file_}).out, "batch weight=4\nalice\n");
  absl::StatusOr<KeyStore> store = KeyStore::Load(file_);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(store->Find(batch)->weight, 4u);
  // Revoking works on weighted lines too.
  ASSERT_EQ(Run({"revoke", "batch", "--keys_file", file_}).code, 0);
  EXPECT_EQ(Run({"list", "--keys_file", file_}).out, "alice\n");

  const std::string before = ReadFile();
  ExpectUsage({"add", "c", "--weight", "0", "--keys_file", file_},
              "--weight: expected a whole number from 1 to 1000, got \"0\"");
  ExpectUsage({"add", "c", "--weight=lots", "--keys_file", file_},
              "--weight: expected a whole number from 1 to 1000, got \"lots\"");
  ExpectUsage({"add", "c", "--keys_file", file_, "--weight"}, "--weight needs a value");
  ExpectUsage({"list", "--weight", "2", "--keys_file", file_}, "--weight: only for add");
  EXPECT_EQ(ReadFile(), before);
}

// `keys add NAME --set S=V` writes model settings; list shows them; a bad
// one is a usage error naming it and writes nothing.
TEST_F(KeysCommandTest, AddWithModelSettings) {
  Result r = Run({"add", "intern", "--set", "models=llama3.2*", "--set=max_num_predict=512",
                  "--weight", "2", "--keys_file", file_});
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string intern = r.out.substr(0, r.out.size() - 1);
  EXPECT_EQ(ReadFile(),
            absl::StrCat(KeyLine("intern", intern, 2, {"models=llama3.2*", "max_num_predict=512"}),
                         "\n"));
  EXPECT_EQ(Run({"list", "--keys_file", file_}).out,
            "intern weight=2 models=llama3.2* max_num_predict=512\n");
  absl::StatusOr<KeyStore> store = KeyStore::Load(file_);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(store->Find(intern)->model.max_num_predict, 512);

  const std::string before = ReadFile();
  ExpectUsage({"add", "c", "--set", "max_num_ctx=big", "--keys_file", file_},
              "--set: max_num_ctx=\"big\": expected a whole number (0: no limit)");
  ExpectUsage({"add", "c", "--set", "colour=blue", "--keys_file", file_},
              "--set: unknown setting \"colour\"");
  ExpectUsage({"add", "c", "--set", "models", "--keys_file", file_},
              "--set: \"models\": expected SETTING=VALUE");
  ExpectUsage({"add", "c", "--set", "models=a b", "--keys_file", file_},
              "--set: models=\"a b\": expected model names or globs separated by commas");
  ExpectUsage({"add", "c", "--keys_file", file_, "--set"}, "--set needs a value");
  ExpectUsage({"list", "--set", "models=x", "--keys_file", file_}, "--set: only for add");
  EXPECT_EQ(ReadFile(), before);
}

TEST_F(KeysCommandTest, RevokeKeepsCommentsOtherLinesAndMode) {
  const std::string text =
      absl::StrCat("# team keys\n", KeyLine("a", "ka"), "\n\n", "  # b is the CI bot\n",
                   "  b : sha256 : ", KeyLine("b", "kb").substr(9), "\n", KeyLine("c", "kc"));
  WriteFile(text, 0640);
  Result r = Run({"revoke", "b", "--keys_file", file_});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(ReadFile(), absl::StrCat("# team keys\n", KeyLine("a", "ka"), "\n\n",
                                     "  # b is the CI bot\n", KeyLine("c", "kc")));
  EXPECT_EQ(Mode(), 0640u);
  // The last line, without a newline after it.
  ASSERT_EQ(Run({"revoke", "c", "--keys_file", file_}).code, 0);
  EXPECT_EQ(ReadFile(),
            absl::StrCat("# team keys\n", KeyLine("a", "ka"), "\n\n", "  # b is the CI bot"));
  // Adding after a last line without newline starts a new line.
  const std::string d = Add("d");
  EXPECT_EQ(ReadFile(), absl::StrCat("# team keys\n", KeyLine("a", "ka"), "\n\n",
                                     "  # b is the CI bot\n", KeyLine("d", d), "\n"));
  EXPECT_EQ(Mode(), 0640u);  // an existing file keeps its mode
}

TEST_F(KeysCommandTest, RevokeThroughSymlinkReplacesTheTarget) {
  WriteFile(absl::StrCat(KeyLine("a", "ka"), "\n", KeyLine("b", "kb"), "\n"), 0600);
  const std::string link = dir_ + "/link";
  ASSERT_EQ(symlink(file_.c_str(), link.c_str()), 0);
  ASSERT_EQ(Run({"revoke", "a", "--keys_file", link}).code, 0);
  struct stat st;
  ASSERT_EQ(lstat(link.c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  EXPECT_EQ(ReadFile(), absl::StrCat(KeyLine("b", "kb"), "\n"));
}

TEST_F(KeysCommandTest, UsageErrorsExitTwoWithOneLine) {
  ExpectUsage({}, "missing subcommand (add, list or revoke)");
  ExpectUsage({"add", "alice"}, "--keys_file is required");
  ExpectUsage({"list"}, "--keys_file is required");
  ExpectUsage({"rotate", "--keys_file", file_},
              "unknown subcommand \"rotate\" (add, list or revoke)");
  ExpectUsage({"add", "--keys_file", file_}, "add needs a key NAME");
  ExpectUsage({"revoke", "--keys_file", file_}, "revoke needs a key NAME");
  ExpectUsage({"add", "a:b", "--keys_file", file_},
              "invalid key name \"a:b\" (1 to 64 characters of "
              "A-Za-z0-9._@-)");
  ExpectUsage({"add", "a", "b", "--keys_file", file_}, "unexpected argument \"b\"");
  ExpectUsage({"list", "x", "--keys_file", file_}, "unexpected argument \"x\"");
  ExpectUsage({"list", "--keys-file", file_}, "unknown flag \"--keys-file\"");
  ExpectUsage({"list", "--keys_file"}, "--keys_file needs a value");
  // Nothing was created.
  EXPECT_NE(access(file_.c_str(), F_OK), 0);

  Result r = Run({"--help"});
  EXPECT_EQ(r.code, 0);
  EXPECT_TRUE(absl::StrContains(r.out, "sluice keys add NAME --keys_file F")) << r.out;
}

TEST_F(KeysCommandTest, FailuresExitOneWithOneLine) {
  ExpectFailure({"list", "--keys_file", file_}, "No such file or directory");
  ExpectFailure({"revoke", "a", "--keys_file", file_}, "No such file or directory");
  const std::string alice = Add("alice");
  const std::string before = ReadFile();
  ExpectFailure({"add", "alice", "--keys_file", file_}, "key \"alice\" already exists in " + file_);
  ExpectFailure({"revoke", "bob", "--keys_file", file_}, "no key named \"bob\" in " + file_);
  EXPECT_EQ(ReadFile(), before);

  // A file that does not parse is left alone.
  WriteFile(before + "garbage\n", 0600);
  ExpectFailure({"add", "bob", "--keys_file", file_}, file_ + ":2: expected NAME:sha256:HEX");
  ExpectFailure({"revoke", "alice", "--keys_file", file_}, file_ + ":2: expected NAME:sha256:HEX");
  ExpectFailure({"list", "--keys_file", file_}, file_ + ":2: expected NAME:sha256:HEX");
  EXPECT_EQ(ReadFile(), before + "garbage\n");

  ExpectFailure({"add", "x", "--keys_file", dir_ + "/no/such/dir/keys"},
                "No such file or directory");
}

}  // namespace
}  // namespace sluice::policy
