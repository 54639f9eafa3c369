// Fuzzes policy::KeyStore::Parse (policy/keys.h), the keys file reader, and
// PresentedKey, which finds the key in a request's headers.
//
// Input: the keys file text. Its first line is also tried as an
// Authorization value and as an x-api-key value.
//
// Checks what keys.h documents: errors are InvalidArgument; a parsed store
// has valid, distinct names; the key "sk-fuzz-known" (whose digest the seed
// corpus holds) is found under the name the file gives it or not at all;
// the lines KeyLine writes for the parsed names parse back to a store that
// finds each of those keys; PresentedKey returns a view into its arguments.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "fuzz_util.h"
#include "policy/keys.h"

namespace sluice::fuzz {
namespace {

using policy::KeyStore;

bool InsideAbsl(absl::string_view part, absl::string_view whole) {
  return Inside(std::string_view(part.data(), part.size()),
                std::string_view(whole.data(), whole.size()));
}

void CheckStore(const KeyStore& store) {
  const std::vector<std::string> names = store.names();
  FUZZ_CHECK(names.size() == store.size(), "size() differs from names()");
  absl::flat_hash_set<std::string> seen;
  for (const std::string& name : names) {
    FUZZ_CHECK(policy::ValidKeyName(name), "invalid name accepted");
    FUZZ_CHECK(seen.insert(name).second, "duplicate name accepted");
  }
  for (absl::string_view key : {"sk-fuzz-known", "", "sk-", "alice"}) {
    if (const std::string* name = store.Lookup(key)) {
      FUZZ_CHECK(seen.contains(*name), "Lookup returned an unknown name");
    }
  }
  // KeyLine's lines for the same names make a store that finds each key.
  std::string text = "# regenerated\n";
  for (const std::string& name : names) {
    absl::StrAppend(&text, policy::KeyLine(name, absl::StrCat("sk-", name, "-fuzz")), "\n");
  }
  absl::StatusOr<KeyStore> again = KeyStore::Parse(text, "regenerated");
  FUZZ_CHECK(again.ok(), std::string(again.status().message()).c_str());
  FUZZ_CHECK(again->names() == names, "names changed");
  for (const std::string& name : names) {
    const std::string* found = again->Lookup(absl::StrCat("sk-", name, "-fuzz"));
    FUZZ_CHECK(found != nullptr && *found == name, "KeyLine's key not found");
  }
}

}  // namespace
}  // namespace sluice::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::fuzz;
  if (size > 64 * 1024) return -1;
  const Piece piece(std::string_view(reinterpret_cast<const char*>(data), size));
  const absl::string_view text(piece.view().data(), piece.size());

  absl::StatusOr<sluice::policy::KeyStore> store = sluice::policy::KeyStore::Parse(text, "fuzz");
  if (store.ok()) {
    CheckStore(*store);
  } else {
    FUZZ_CHECK(store.status().code() == absl::StatusCode::kInvalidArgument, "odd error code");
    FUZZ_CHECK(absl::StartsWith(store.status().message(), "fuzz:"), "error not labelled");
  }

  const absl::string_view line = text.substr(0, text.find('\n'));
  for (const auto& [auth, api_key] :
       {std::pair<absl::string_view, absl::string_view>{line, ""}, {"", line}, {line, line}}) {
    std::optional<absl::string_view> key = sluice::policy::PresentedKey(auth, api_key);
    if (key) {
      FUZZ_CHECK(!key->empty(), "empty key presented");
      FUZZ_CHECK(InsideAbsl(*key, auth) || InsideAbsl(*key, api_key),
                 "presented key outside the arguments");
    }
  }
  return 0;
}
