#pragma once

// Users and password hashes from an Apache htpasswd file, for HTTP Basic
// authentication.
//
// One `user:hash` a line; blank lines and lines starting with `#` are
// ignored. Accepted hashes, as made by Apache's `htpasswd` and `mkpasswd`:
//
//   $2y$ / $2b$ / $2a$  bcrypt (htpasswd -B)            ~1 ms at cost 4,
//                                                        doubling per step
//   $5$ / $6$           SHA-256-crypt / SHA-512-crypt    ~1.2-1.5 ms at the
//                       (htpasswd -2 / -5)               default 5000 rounds
//   $apr1$              Apache MD5 (htpasswd -m, its default)  ~0.1 ms
//   $1$                 md5-crypt                        ~0.1 ms
//   {SHA}               unsalted SHA-1 (htpasswd -s)     ~1 us
//
// (Times measured on the development machine, one core.) Refused: plain-text
// passwords (htpasswd -p) and DES crypt (htpasswd -d, 8-character limit).
// bcrypt only reads a password's first 72 bytes; that is bcrypt's, as in
// Apache. A password containing a NUL byte never verifies: the crypt family
// stops at the first NUL, which would let "pw\0anything" pass as "pw".

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sluice::policy {

// The users of one htpasswd file. Immutable once built: Verify may run on
// any number of threads at once. Copyable and movable.
class Htpasswd {
 public:
  // An empty file: every Verify fails.
  Htpasswd() = default;

  // Parses the contents of an htpasswd file. `file_name` only labels errors,
  // which are InvalidArgument with the message "FILE:LINE: reason": a line
  // without ':', an empty user, a user seen before, a malformed hash, a
  // plain-text password ("plain-text password not accepted") or another
  // unsupported scheme (named). Also prepares the dummy hash that unknown
  // users are checked against (one crypt call for the costliest scheme in
  // the file, so up to tens of ms for an expensive bcrypt cost).
  static absl::StatusOr<Htpasswd> Parse(absl::string_view text, absl::string_view file_name);

  // Reads and parses the htpasswd file at `path`. A file that cannot be read
  // gives an error naming the path and the reason; parse errors are as for
  // Parse, labelled with `path`.
  static absl::StatusOr<Htpasswd> Load(const std::string& path);

  // True when `user` exists and `password` is theirs. Thread-safe. Costs
  // what the user's scheme costs (up to tens of ms for bcrypt: see
  // Expensive). For an unknown user it checks `password` against a dummy
  // hash of the file's costliest scheme before returning false, so the time
  // taken does not tell whether the user exists. Results compare in
  // constant time (CRYPTO_memcmp).
  bool Verify(absl::string_view user, absl::string_view password) const;

  // True when Verify(user, ...) costs more than about a millisecond (bcrypt,
  // SHA-256/512-crypt, and an unknown user when the dummy hash is one of
  // them), so the caller should run it off the event loop.
  bool Expensive(absl::string_view user) const;

  // Number of users.
  size_t size() const { return users_.size(); }

  // Empty when every user's check costs what an unknown user's does (one
  // scheme and cost in the file). Otherwise one line for the error log:
  // the file's schemes and costs with their user counts, how many users
  // answer faster than an unknown name (so timing tells those names
  // exist), and the cheapest of them by name (at most five, sorted, then a
  // count), e.g.
  //   users: hashes of unequal cost (bcrypt cost 10: 2 users, {SHA}: 3
  //   users); an unknown user is checked against a bcrypt cost 10 hash, so
  //   response times tell apart the 3 users with cheaper hashes from names
  //   that do not exist; cheapest ({SHA}): ann, bob, cat; give every user
  //   the same scheme and cost (htpasswd -B -C 10)
  const std::string& cost_warning() const { return cost_warning_; }

 private:
  enum class Scheme : uint8_t {
    kBcrypt,       // $2a$, $2b$, $2y$ via crypt_rn
    kSha256Crypt,  // $5$ via crypt_rn
    kSha512Crypt,  // $6$ via crypt_rn
    kMd5Crypt,     // $1$ via crypt_rn
    kApr1,         // $apr1$, computed here
    kSha1,         // {SHA}, computed here
  };
  struct Entry {
    Scheme scheme;
    // Rough cost of one verification, in nanoseconds: picks the dummy.
    uint64_t cost_ns;
    std::string hash;
  };

  // One user's hash: its scheme and cost, or why it is refused (the error
  // without the file and line).
  static absl::StatusOr<Entry> ParseHash(absl::string_view hash);
  // Sets dummy_ from the parsed users (none: left unset).
  absl::Status SetDummy(absl::string_view file_name);
  static bool Check(const Entry& entry, absl::string_view password);
  // "bcrypt cost 10", "SHA-512-crypt 5000 rounds", "apr1", "{SHA}", ...
  static std::string CostLabel(const Entry& entry);
  // The cost_warning() text for the parsed users (after the dummy is set).
  std::string CostWarning(absl::string_view file_name) const;
  static bool IsExpensive(Scheme scheme);

  absl::flat_hash_map<std::string, Entry> users_;
  // Checked instead of a user's hash when the user is unknown: a hash of a
  // random password with the costliest entry's scheme and settings. Unset
  // (empty hash) when the file has no users.
  Entry dummy_{Scheme::kSha1, 0, {}};
  std::string cost_warning_;
};

}  // namespace sluice::policy
