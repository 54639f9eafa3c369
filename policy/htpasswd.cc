#include "policy/htpasswd.h"

#include <crypt.h>
#include <openssl/md5.h>
#include <openssl/mem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "policy/keys.h"

namespace sluice::policy {
namespace {

// The crypt family's base64 alphabet (not RFC 4648's).
constexpr absl::string_view kCryptB64 =
    "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
constexpr absl::string_view kApr1Magic = "$apr1$";

bool AllCryptB64(absl::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return kCryptB64.find(c) != absl::string_view::npos; });
}

bool AllDigits(absl::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return absl::ascii_isdigit(static_cast<unsigned char>(c));
  });
}

// Rough costs in nanoseconds, measured on the development machine: only
// their order matters (the dummy hash) and whether they pass ~1 ms.
constexpr uint64_t kBcryptCostUnitNs = 62'500;  // cost 4: ~1 ms; x2 a step
constexpr uint64_t kSha256CryptRoundNs = 300;   // 5000 rounds: ~1.5 ms
constexpr uint64_t kSha512CryptRoundNs = 240;   // 5000 rounds: ~1.2 ms
constexpr uint64_t kMd5CryptNs = 115'000;       // 1000 MD5 iterations
constexpr uint64_t kSha1Ns = 1'000;

// md5-crypt (Poul-Henning Kamp, FreeBSD 1994), as Apache's apr_md5_encode
// computes it for `magic` "$apr1$": the magic takes part in the hash. Salt:
// at most 8 characters. Returns magic + salt + "$" + 22 characters.
std::string Md5Crypt(absl::string_view magic, absl::string_view pw, absl::string_view salt) {
  auto update = [](MD5_CTX* ctx, absl::string_view s) { MD5_Update(ctx, s.data(), s.size()); };
  uint8_t final[MD5_DIGEST_LENGTH];
  MD5_CTX ctx;
  MD5_Init(&ctx);
  update(&ctx, pw);
  update(&ctx, salt);
  update(&ctx, pw);
  MD5_Final(final, &ctx);

  MD5_Init(&ctx);
  update(&ctx, pw);
  update(&ctx, magic);
  update(&ctx, salt);
  for (size_t left = pw.size(); left > 0; left -= std::min<size_t>(left, 16)) {
    MD5_Update(&ctx, final, std::min<size_t>(left, 16));
  }
  // The original clears `final` here, then feeds its first byte (a zero)
  // or the password's first byte for each bit of the length.
  const char first = pw.empty() ? '\0' : pw[0];
  for (size_t i = pw.size(); i != 0; i >>= 1) {
    const char c = (i & 1) ? '\0' : first;
    MD5_Update(&ctx, &c, 1);
  }
  MD5_Final(final, &ctx);

  // 1000 rounds "to make things run slower".
  for (int i = 0; i < 1000; ++i) {
    MD5_Init(&ctx);
    if (i & 1) {
      update(&ctx, pw);
    } else {
      MD5_Update(&ctx, final, sizeof(final));
    }
    if (i % 3) update(&ctx, salt);
    if (i % 7) update(&ctx, pw);
    if (i & 1) {
      MD5_Update(&ctx, final, sizeof(final));
    } else {
      update(&ctx, pw);
    }
    MD5_Final(final, &ctx);
  }
  OPENSSL_cleanse(&ctx, sizeof(ctx));

  std::string out = absl::StrCat(magic, salt, "$");
  auto to64 = [&out](uint32_t v, int n) {
    while (n-- > 0) {
      out.push_back(kCryptB64[v & 0x3f]);
      v >>= 6;
    }
  };
  static constexpr int kOrder[5][3] = {{0, 6, 12}, {1, 7, 13}, {2, 8, 14}, {3, 9, 15}, {4, 10, 5}};
  for (const auto& o : kOrder) {
    to64(uint32_t{final[o[0]]} << 16 | uint32_t{final[o[1]]} << 8 | final[o[2]], 4);
  }
  to64(final[11], 2);
  OPENSSL_cleanse(final, sizeof(final));
  return out;
}

// Calls crypt_rn with `setting` (a stored hash). Empty on failure.
std::string CryptRn(absl::string_view password, const std::string& setting) {
  // struct crypt_data is 32 KiB: too big for a small (event loop or pool)
  // thread's stack, and thread_local would cost every thread 32 KiB.
  // Value-initialized: zeroed, as crypt_rn wants on first use.
  auto data = std::make_unique<crypt_data>();
  std::string pw(password);
  const char* result =
      crypt_rn(pw.c_str(), setting.c_str(), data.get(), static_cast<int>(sizeof(crypt_data)));
  std::string out;
  // libxcrypt fails with NULL or a string starting with '*'.
  if (result != nullptr && result[0] != '*') out = result;
  OPENSSL_cleanse(data.get(), sizeof(crypt_data));
  OPENSSL_cleanse(pw.data(), pw.size());
  return out;
}

// The salt of a "$1$" or "$apr1$" hash (the text between the magic and the
// next '$').
absl::string_view Md5Salt(absl::string_view hash, absl::string_view magic) {
  absl::string_view rest = hash.substr(magic.size());
  return rest.substr(0, rest.find('$'));
}

std::string Sha1Base64(absl::string_view password) {
  uint8_t digest[SHA_DIGEST_LENGTH];
  SHA1(reinterpret_cast<const uint8_t*>(password.data()), password.size(), digest);
  return absl::Base64Escape(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
}

// Checks an "$1$" or "$apr1$" hash: magic, salt of at most 8 characters
// without '$', '$', 22 characters.
bool ValidMd5Hash(absl::string_view hash, absl::string_view magic) {
  absl::string_view rest = hash.substr(magic.size());
  size_t dollar = rest.find('$');
  return dollar != absl::string_view::npos && dollar <= 8 && rest.size() - dollar - 1 == 22 &&
         AllCryptB64(rest.substr(dollar + 1));
}

// Checks a "$5$" / "$6$" hash: prefix, optional "rounds=N$", a salt of at
// most 16 characters (crypt truncates longer ones, which would never match),
// '$', `hash_chars` characters. Sets `*rounds` (5000 when absent, clamped to
// 1000..999999999 as crypt does).
bool ValidShaCryptHash(absl::string_view hash, size_t hash_chars, uint64_t* rounds) {
  absl::string_view rest = hash.substr(3);
  *rounds = 5000;
  if (absl::ConsumePrefix(&rest, "rounds=")) {
    size_t dollar = rest.find('$');
    if (dollar == absl::string_view::npos || dollar > 9 || !AllDigits(rest.substr(0, dollar))) {
      return false;
    }
    uint64_t n = 0;
    for (char c : rest.substr(0, dollar)) n = n * 10 + (c - '0');
    *rounds = std::clamp<uint64_t>(n, 1000, 999'999'999);
    rest.remove_prefix(dollar + 1);
  }
  size_t dollar = rest.find('$');
  return dollar != absl::string_view::npos && dollar <= 16 &&
         rest.substr(0, dollar).find_first_of(":\n") == absl::string_view::npos &&
         rest.size() - dollar - 1 == hash_chars && AllCryptB64(rest.substr(dollar + 1));
}

// The scheme's name in an error: "$xyz$" or "{XYZ}".
std::string SchemeLabel(absl::string_view hash) {
  size_t end = hash.front() == '$' ? hash.find('$', 1) : hash.find('}');
  if (end == absl::string_view::npos || end > 16) {
    end = std::min<size_t>(hash.size(), 16) - 1;
  }
  return absl::CHexEscape(hash.substr(0, end + 1));
}

// The cost of a "$2y$NN$..." hash (checked at parse time).
int BcryptCost(absl::string_view hash) { return (hash[4] - '0') * 10 + (hash[5] - '0'); }

}  // namespace

bool Htpasswd::IsExpensive(Scheme scheme) {
  switch (scheme) {
    case Scheme::kBcrypt:
    case Scheme::kSha256Crypt:
    case Scheme::kSha512Crypt:
      return true;
    case Scheme::kMd5Crypt:
    case Scheme::kApr1:
    case Scheme::kSha1:
      return false;
  }
  return true;
}

bool Htpasswd::Check(const Entry& entry, absl::string_view password) {
  if (password.find('\0') != absl::string_view::npos) return false;
  std::string computed;
  switch (entry.scheme) {
    case Scheme::kBcrypt:
    case Scheme::kSha256Crypt:
    case Scheme::kSha512Crypt:
    case Scheme::kMd5Crypt:
      computed = CryptRn(password, entry.hash);
      break;
    case Scheme::kApr1:
      computed = Md5Crypt(kApr1Magic, password, Md5Salt(entry.hash, kApr1Magic));
      break;
    case Scheme::kSha1:
      computed = absl::StrCat("{SHA}", Sha1Base64(password));
      break;
  }
  // The length is the scheme's, not a secret.
  bool match = computed.size() == entry.hash.size() &&
               CRYPTO_memcmp(computed.data(), entry.hash.data(), computed.size()) == 0;
  OPENSSL_cleanse(computed.data(), computed.size());
  return match;
}

absl::StatusOr<Htpasswd::Entry> Htpasswd::ParseHash(absl::string_view hash) {
  auto error = [](absl::string_view reason) { return absl::InvalidArgumentError(reason); };
  Entry entry{Scheme::kSha1, 0, std::string(hash)};
  if (absl::StartsWith(hash, "$2a$") || absl::StartsWith(hash, "$2b$") ||
      absl::StartsWith(hash, "$2y$")) {
    // $2y$ is PHP's and Apache's name for the fixed $2a$ ($2b$ in
    // OpenBSD): the same algorithm. libxcrypt takes all three.
    absl::string_view rest = hash.substr(4);
    if (rest.size() != 56 || !AllDigits(rest.substr(0, 2)) || rest[2] != '$' ||
        !AllCryptB64(rest.substr(3))) {
      return error("malformed bcrypt hash");
    }
    int cost = (rest[0] - '0') * 10 + (rest[1] - '0');
    if (cost < 4 || cost > 31) {
      return error(absl::StrFormat("bcrypt cost %d not in 4..31", cost));
    }
    entry.scheme = Scheme::kBcrypt;
    entry.cost_ns = kBcryptCostUnitNs << cost;
  } else if (absl::StartsWith(hash, "$5$") || absl::StartsWith(hash, "$6$")) {
    const bool sha256 = hash[1] == '5';
    uint64_t rounds;
    if (!ValidShaCryptHash(hash, sha256 ? 43 : 86, &rounds)) {
      return error(sha256 ? "malformed SHA-256-crypt ($5$) hash"
                          : "malformed SHA-512-crypt ($6$) hash");
    }
    entry.scheme = sha256 ? Scheme::kSha256Crypt : Scheme::kSha512Crypt;
    entry.cost_ns = rounds * (sha256 ? kSha256CryptRoundNs : kSha512CryptRoundNs);
  } else if (absl::StartsWith(hash, kApr1Magic)) {
    if (!ValidMd5Hash(hash, kApr1Magic)) {
      return error("malformed Apache MD5 ($apr1$) hash");
    }
    entry.scheme = Scheme::kApr1;
    entry.cost_ns = kMd5CryptNs;
  } else if (absl::StartsWith(hash, "$1$")) {
    if (!ValidMd5Hash(hash, "$1$")) {
      return error("malformed md5-crypt ($1$) hash");
    }
    entry.scheme = Scheme::kMd5Crypt;
    entry.cost_ns = kMd5CryptNs;
  } else if (absl::StartsWith(hash, "{SHA}")) {
    std::string digest;
    if (hash.size() != 5 + 28 || !absl::Base64Unescape(hash.substr(5), &digest) ||
        digest.size() != SHA_DIGEST_LENGTH) {
      return error("malformed {SHA} hash");
    }
    entry.scheme = Scheme::kSha1;
    entry.cost_ns = kSha1Ns;
  } else if (hash.front() == '$' || hash.front() == '{') {
    return error(absl::StrCat("unsupported hash scheme \"", SchemeLabel(hash), "\""));
  } else if (hash.size() == 13 && AllCryptB64(hash)) {
    return error(
        "unsupported hash scheme: DES crypt (htpasswd -d); use bcrypt "
        "(htpasswd -B)");
  } else {
    return error("plain-text password not accepted; hash it (htpasswd -B)");
  }
  return entry;
}

// The dummy: the costliest entry's settings (salt, cost, rounds) with a
// random password nobody knows, so checking an unknown user costs what
// checking that user does. The result is discarded either way.
absl::Status Htpasswd::SetDummy(absl::string_view file_name) {
  const Entry* costliest = nullptr;
  for (const auto& [user, entry] : users_) {
    if (costliest == nullptr || entry.cost_ns > costliest->cost_ns) {
      costliest = &entry;
    }
  }
  if (costliest == nullptr) return absl::OkStatus();
  uint8_t random[16];
  RAND_bytes(random, sizeof(random));
  std::string password = absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(random), sizeof(random)));
  Entry dummy = *costliest;
  switch (dummy.scheme) {
    case Scheme::kBcrypt:
    case Scheme::kSha256Crypt:
    case Scheme::kSha512Crypt:
    case Scheme::kMd5Crypt:
      dummy.hash = CryptRn(password, costliest->hash);
      break;
    case Scheme::kApr1:
      dummy.hash = Md5Crypt(kApr1Magic, password, Md5Salt(costliest->hash, kApr1Magic));
      break;
    case Scheme::kSha1:
      dummy.hash = absl::StrCat("{SHA}", Sha1Base64(password));
      break;
  }
  if (dummy.hash.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file_name,
                     ": this system's crypt() rejects the hash settings of "
                     "the costliest entry"));
  }
  dummy_ = std::move(dummy);
  return absl::OkStatus();
}

absl::StatusOr<Htpasswd> Htpasswd::Parse(absl::string_view text, absl::string_view file_name) {
  Htpasswd result;
  absl::flat_hash_map<std::string, int> first_line;
  int line_no = 0;
  auto error = [&](absl::string_view reason) {
    return absl::InvalidArgumentError(absl::StrCat(file_name, ":", line_no, ": ", reason));
  };
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    size_t colon = line.find(':');
    if (colon == absl::string_view::npos) return error("expected user:hash");
    absl::string_view user = line.substr(0, colon);
    // As Apache's mod_authn_file: the hash ends at the next ':', if any.
    absl::string_view hash = line.substr(colon + 1);
    hash = hash.substr(0, hash.find(':'));
    if (user.empty()) return error("empty user name");
    if (auto it = first_line.find(user); it != first_line.end()) {
      return error(absl::StrFormat("duplicate user \"%s\" (first on line %d)",
                                   absl::CHexEscape(user), it->second));
    }
    if (hash.empty()) return error("empty password hash");
    absl::StatusOr<Entry> entry = ParseHash(hash);
    if (!entry.ok()) return error(entry.status().message());
    first_line.emplace(std::string(user), line_no);
    result.users_.emplace(std::string(user), *std::move(entry));
  }
  if (absl::Status st = result.SetDummy(file_name); !st.ok()) return st;
  result.cost_warning_ = result.CostWarning(file_name);
  return result;
}

std::string Htpasswd::CostLabel(const Entry& entry) {
  switch (entry.scheme) {
    case Scheme::kBcrypt:
      return absl::StrCat("bcrypt cost ", BcryptCost(entry.hash));
    case Scheme::kSha256Crypt:
    case Scheme::kSha512Crypt:
      return absl::StrCat(
          entry.scheme == Scheme::kSha256Crypt ? "SHA-256" : "SHA-512", "-crypt ",
          entry.cost_ns /
              (entry.scheme == Scheme::kSha256Crypt ? kSha256CryptRoundNs : kSha512CryptRoundNs),
          " rounds");
    case Scheme::kMd5Crypt:
      return "md5-crypt";
    case Scheme::kApr1:
      return "apr1";
    case Scheme::kSha1:
      return "{SHA}";
  }
  return "?";
}

std::string Htpasswd::CostWarning(absl::string_view file_name) const {
  if (dummy_.hash.empty()) return "";
  // Schemes and costs, costliest first; apr1 and md5-crypt cost the same
  // but are told apart here for the operator.
  struct Group {
    uint64_t cost_ns;
    std::string label;
    std::vector<absl::string_view> users;
  };
  std::vector<Group> groups;
  size_t cheaper = 0;
  for (const auto& [user, entry] : users_) {
    if (entry.cost_ns < dummy_.cost_ns) ++cheaper;
    std::string label = CostLabel(entry);
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const Group& g) { return g.label == label; });
    if (it == groups.end()) {
      groups.push_back(Group{entry.cost_ns, std::move(label), {}});
      it = groups.end() - 1;
    }
    it->users.push_back(user);
  }
  // Only a cost difference is a leak: every user at the dummy's cost (one
  // scheme, or apr1 with md5-crypt) answers as an unknown user does.
  if (cheaper == 0) return "";
  std::sort(groups.begin(), groups.end(), [](const Group& a, const Group& b) {
    return a.cost_ns != b.cost_ns ? a.cost_ns > b.cost_ns : a.label < b.label;
  });
  auto count = [](size_t n) { return absl::StrCat(n, n == 1 ? " user" : " users"); };
  std::string out = absl::StrCat(file_name, ": hashes of unequal cost (");
  for (size_t i = 0; i < groups.size(); ++i) {
    absl::StrAppend(&out, i ? ", " : "", groups[i].label, ": ", count(groups[i].users.size()));
  }
  const std::string dummy_label = CostLabel(dummy_);
  absl::StrAppend(&out, "); an unknown user is checked against a ", dummy_label,
                  " hash, so response times tell apart the ", count(cheaper),
                  " with cheaper hashes from names that do not exist; cheapest (",
                  groups.back().label, "): ");
  std::vector<absl::string_view>& cheapest = groups.back().users;
  std::sort(cheapest.begin(), cheapest.end());
  constexpr size_t kNamed = 5;
  for (size_t i = 0; i < std::min(kNamed, cheapest.size()); ++i) {
    // Names come from the file; escaped so the warning stays one line.
    absl::StrAppend(&out, i ? ", " : "", absl::CHexEscape(cheapest[i]));
  }
  if (cheapest.size() > kNamed) absl::StrAppend(&out, " and ", cheapest.size() - kNamed, " more");
  absl::StrAppend(&out, "; give every user the same scheme and cost");
  if (dummy_.scheme == Scheme::kBcrypt) {
    absl::StrAppend(&out, " (htpasswd -B -C ", BcryptCost(dummy_.hash), ")");
  }
  return out;
}

absl::StatusOr<Htpasswd> Htpasswd::Load(const std::string& path) {
  absl::StatusOr<std::string> text = ReadPolicyFile(path);
  if (!text.ok()) return text.status();
  return Parse(*text, path);
}

bool Htpasswd::Verify(absl::string_view user, absl::string_view password) const {
  auto it = users_.find(user);
  if (it == users_.end()) {
    if (!dummy_.hash.empty()) Check(dummy_, password);
    return false;
  }
  return Check(it->second, password);
}

bool Htpasswd::Expensive(absl::string_view user) const {
  auto it = users_.find(user);
  if (it == users_.end()) {
    return !dummy_.hash.empty() && IsExpensive(dummy_.scheme);
  }
  return IsExpensive(it->second.scheme);
}

}  // namespace sluice::policy
