#pragma once

// API keys: the keys file, the in-memory store that answers "which key is
// this?", and the helpers that make new keys and find the key a request
// presents.
//
// The file holds only SHA-256 digests, never keys, so reading it does not
// give access. One key per line:
//
//   # comment
//   alice:sha256:<64 hex digits: SHA-256 of the whole key, "sk-..." included>
//   batch:sha256:<hex> weight=3
//
// Blank lines and lines starting with `#` are ignored; whitespace around each
// field is trimmed. After the digest, whitespace-separated settings of the
// key may follow:
//   weight=N   its share of generation slots against other keys waiting
//              for the same ones (1 to 1000; default 1): see SlotScheduler.
//   models=..., alias=..., max_keep_alive=..., keep_alive_forever=...,
//   max_num_ctx=..., max_num_predict=..., over_max=...
//              its model policy (model_policy.h, ParseModelSetting); each
//              one not given is the flags' default.
// `sluice keys add` (keys_command.h) writes these lines.

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "policy/model_policy.h"

namespace sluice::policy {

// Longest key name accepted, in bytes.
inline constexpr size_t kMaxKeyNameLength = 64;

// The largest weight= a key may have.
inline constexpr uint32_t kMaxKeyWeight = 1000;

// One key of a keys file: its name and settings.
struct KeyEntry {
  std::string name;
  uint32_t weight = 1;  // share of generation slots
  ModelSettings model;  // its own model settings, as written
  // The model policy in force: the defaults with `model` over them (set by
  // KeyStore::ResolveModelPolicies; until then the built-in defaults).
  ModelPolicy model_policy;
};

// True when `name` is a valid key name: 1 to 64 characters of
// [A-Za-z0-9._@-]. Names end up in logs and in the keys file, so they never
// contain ':', spaces or control characters.
bool ValidKeyName(absl::string_view name);

// The set of accepted API keys, loaded from a keys file. Immutable once
// built, so one KeyStore may be read by any number of threads at once.
// Copyable and movable; pointers returned by Lookup point into this object
// (a move keeps them valid, a copy has its own).
class KeyStore {
 public:
  // An empty store: every Lookup misses.
  KeyStore() = default;

  // Parses the contents of a keys file. `file_name` only labels errors,
  // which are InvalidArgument with the message "FILE:LINE: reason" (for
  // example "keys.txt:3: expected NAME:sha256:HEX"). A name or a digest
  // that appears twice is an error.
  static absl::StatusOr<KeyStore> Parse(absl::string_view text, absl::string_view file_name);

  // Reads and parses the keys file at `path`. A file that cannot be read
  // gives an error naming the path and the reason (strerror); a parse error
  // is as for Parse, labelled with `path`.
  static absl::StatusOr<KeyStore> Load(const std::string& path);

  // Returns the name of the key `presented_key` is, or nullptr when it is
  // none of them. Hashes the presented key (SHA-256), finds the digest in a
  // hash table and confirms all 32 bytes in constant time, so the time
  // taken does not depend on how much of a stored digest matches. The
  // returned string lives as long as this store.
  const std::string* Lookup(absl::string_view presented_key) const;
  // The same, with the key's settings: its entry, or nullptr.
  const KeyEntry* Find(absl::string_view presented_key) const;

  // Number of keys.
  size_t size() const { return entries_.size(); }

  // Sets each key's model_policy: `defaults` with its own settings over
  // them. Called once, before the store is shared.
  void ResolveModelPolicies(const ModelPolicy& defaults);

  // The key names, in file order.
  std::vector<std::string> names() const;
  // The keys with their settings, in file order.
  const std::vector<KeyEntry>& entries() const { return entries_; }

 private:
  // A SHA-256 digest as a hash-table key.
  struct Digest {
    std::array<uint8_t, 32> bytes;
  };
  // A digest is uniformly distributed, so its first 8 bytes are already a
  // good hash; no mixing needed.
  struct DigestHash {
    size_t operator()(const Digest& d) const {
      uint64_t h;
      std::memcpy(&h, d.bytes.data(), sizeof(h));
      return static_cast<size_t>(h);
    }
  };
  // Constant-time comparison of all 32 bytes (CRYPTO_memcmp).
  struct DigestEq {
    bool operator()(const Digest& a, const Digest& b) const;
  };

  // Keys in file order; by_digest_ maps each digest to its index here.
  std::vector<KeyEntry> entries_;
  absl::flat_hash_map<Digest, uint32_t, DigestHash, DigestEq> by_digest_;
};

// Reads the whole of a policy file (keys, htpasswd) into a string. Errors
// name the path and the reason: "PATH: No such file or directory"
// (NotFound), other read failures (PermissionDenied when access is denied,
// otherwise Unavailable), or a file over 64 MiB (InvalidArgument), which is
// no keys file.
absl::StatusOr<std::string> ReadPolicyFile(const std::string& path);

// Makes a new API key: "sk-" followed by 43 characters, the unpadded
// base64url encoding of 32 bytes from the system CSPRNG (RAND_bytes), so
// 256 bits of entropy. Aborts if the CSPRNG fails.
std::string GenerateKey();

// The keys-file line (without newline) that accepts `key` under `name`:
// "NAME:sha256:HEX", HEX being the lowercase hex SHA-256 of `key`, then
// " weight=N" when `weight` is not 1, then each of `settings` (model
// settings, "name=value") after a space. The caller checks the name with
// ValidKeyName first, and the settings with ParseModelSetting.
std::string KeyLine(absl::string_view name, absl::string_view key, uint32_t weight = 1,
                    const std::vector<std::string>& settings = {});

// Finds the API key a request presents. `authorization` is the value of its
// Authorization header and `x_api_key` that of its x-api-key header, each
// empty when the header is absent. "Bearer KEY" in Authorization wins (the
// scheme is case-insensitive, followed by one or more spaces); otherwise a
// non-empty x-api-key is the key. Returns nullopt when neither presents a
// key (an Authorization header with another scheme, such as Basic, does
// not). The result points into one of the arguments.
std::optional<absl::string_view> PresentedKey(absl::string_view authorization,
                                              absl::string_view x_api_key);

}  // namespace sluice::policy
