// Fuzzes policy::Htpasswd::Parse (policy/htpasswd.h), the htpasswd reader,
// and Verify on the users it accepted.
//
// Input: the htpasswd file text.
//
// Parse runs crypt once for the costliest entry (the dummy hash for unknown
// users), so inputs naming a bcrypt cost above 4 or more than 5000
// SHA-crypt rounds are skipped: bcrypt at cost 31 takes hours, which is the
// file author's choice, not a parser bug. Verify runs only where
// Expensive() says it is cheap (MD5, Apache MD5, {SHA}).
//
// Checks what htpasswd.h documents: errors are InvalidArgument labelled
// "FILE:LINE"; a password holding a NUL never verifies; a user whose hash
// is one of the known cheap hashes of "password" below (the seeds use
// them) verifies with "password".

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "fuzz_util.h"
#include "policy/htpasswd.h"

namespace {

// Cheap hashes of "password" (openssl passwd -1 / -apr1 -salt saltsalt,
// htpasswd -s).
constexpr absl::string_view kKnownHashes[] = {
    "$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/",
    "$apr1$saltsalt$yAAkm4libquA.ZWLHbSBq/",
    "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
};

// True when some line could make Parse's dummy crypt call slow.
bool TooCostly(absl::string_view text) {
  for (absl::string_view marker : {"$2a$", "$2b$", "$2y$"}) {
    for (size_t at = text.find(marker); at != absl::string_view::npos;
         at = text.find(marker, at + 1)) {
      absl::string_view cost = text.substr(at + 4, 2);
      if (cost != "04") return true;
    }
  }
  for (size_t at = text.find("rounds="); at != absl::string_view::npos;
       at = text.find("rounds=", at + 1)) {
    absl::string_view digits = text.substr(at + 7);
    size_t n = 0;
    while (n < digits.size() && absl::ascii_isdigit(static_cast<unsigned char>(digits[n]))) ++n;
    uint64_t rounds = 0;
    if (n > 9 || !absl::SimpleAtoi(digits.substr(0, n), &rounds) || rounds > 5000) {
      if (n > 0) return true;
    }
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::fuzz;
  if (size > 16 * 1024) return -1;
  const Piece piece(std::string_view(reinterpret_cast<const char*>(data), size));
  const absl::string_view text(piece.view().data(), piece.size());
  if (TooCostly(text)) return -1;

  absl::StatusOr<sluice::policy::Htpasswd> users = sluice::policy::Htpasswd::Parse(text, "fuzz");
  if (!users.ok()) {
    FUZZ_CHECK(users.status().code() == absl::StatusCode::kInvalidArgument, "odd error code");
    FUZZ_CHECK(absl::StartsWith(users.status().message(), "fuzz"), "error not labelled");
    return 0;
  }
  // The users, found as the header describes the format.
  std::vector<std::pair<absl::string_view, absl::string_view>> entries;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    const size_t colon = line.find(':');
    absl::string_view hash = line.substr(colon + 1);
    entries.emplace_back(line.substr(0, colon), hash.substr(0, hash.find(':')));
  }
  FUZZ_CHECK(entries.size() == users->size(), "user count differs from the lines");
  entries.emplace_back("no-such-user", "");
  for (const auto& [user, hash] : entries) {
    if (users->Expensive(user)) continue;
    const bool ok = users->Verify(user, "password");
    for (absl::string_view known : kKnownHashes) {
      if (hash == known) FUZZ_CHECK(ok, "a known hash of \"password\" fails");
    }
    FUZZ_CHECK(!users->Verify(user, absl::string_view("password\0x", 10)),
               "a password with a NUL verified");
    (void)users->Verify(user, "");
  }
  return 0;
}
