#include "policy/keys.h"

#include <fcntl.h>
#include <openssl/mem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace sluice::policy {
namespace {

constexpr absl::string_view kScheme = "sha256";
constexpr size_t kMaxPolicyFileBytes = size_t{64} << 20;

bool KeyNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '@' ||
         c == '-';
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

absl::Status LineError(absl::string_view file_name, int line, absl::string_view reason) {
  return absl::InvalidArgumentError(absl::StrCat(file_name, ":", line, ": ", reason));
}

// One `name=value` setting after a key's digest.
absl::Status ParseSetting(absl::string_view setting, KeyEntry* entry) {
  const size_t eq = setting.find('=');
  const absl::string_view name = setting.substr(0, eq);
  const absl::string_view value = eq == absl::string_view::npos ? "" : setting.substr(eq + 1);
  if (name == "weight") {
    uint32_t weight = 0;
    if (!absl::SimpleAtoi(value, &weight) || weight < 1 || weight > kMaxKeyWeight) {
      return absl::InvalidArgumentError(
          absl::StrFormat("weight=\"%s\": expected a whole number from 1 to %d",
                          absl::CHexEscape(value), kMaxKeyWeight));
    }
    entry->weight = weight;
    return absl::OkStatus();
  }
  absl::Status status = ParseModelSetting(name, value, &entry->model);
  if (absl::IsNotFound(status)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "unknown setting \"%s\" after the digest (expected weight=N, models=, alias=, "
        "max_keep_alive=, keep_alive_forever=, max_num_ctx=, max_num_predict=, over_max=, "
        "pull_registries=, max_images= or max_image_bytes=)",
        absl::CHexEscape(setting)));
  }
  return status;
}

}  // namespace

bool ValidKeyName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxKeyNameLength) return false;
  for (char c : name) {
    if (!KeyNameChar(c)) return false;
  }
  return true;
}

bool KeyStore::DigestEq::operator()(const Digest& a, const Digest& b) const {
  return CRYPTO_memcmp(a.bytes.data(), b.bytes.data(), a.bytes.size()) == 0;
}

absl::StatusOr<KeyStore> KeyStore::Parse(absl::string_view text, absl::string_view file_name) {
  KeyStore store;
  std::vector<int> lines;  // the line of each name, for duplicate errors
  absl::flat_hash_map<std::string, size_t> name_index;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    // NAME:sha256:HEX, then settings, which may hold ':' themselves
    // (alias=gpt-4o=llama3.1:8b).
    std::vector<absl::string_view> fields = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (fields.size() != 3) {
      return LineError(file_name, line_no, "expected NAME:sha256:HEX");
    }
    absl::string_view name = absl::StripAsciiWhitespace(fields[0]);
    absl::string_view scheme = absl::StripAsciiWhitespace(fields[1]);
    // The digest, then the key's settings.
    std::vector<absl::string_view> rest =
        absl::StrSplit(fields[2], absl::ByAnyChar(" \t"), absl::SkipEmpty());
    absl::string_view hex = rest.empty() ? absl::string_view() : rest[0];
    if (absl::StrContains(hex, ':')) {
      return LineError(file_name, line_no, "expected NAME:sha256:HEX");
    }
    if (!ValidKeyName(name)) {
      return LineError(file_name, line_no,
                       absl::StrFormat("invalid key name \"%s\" (1 to %d characters of "
                                       "A-Za-z0-9._@-)",
                                       absl::CHexEscape(name), kMaxKeyNameLength));
    }
    if (scheme != kScheme) {
      return LineError(file_name, line_no,
                       absl::StrFormat("unsupported hash \"%s\" (expected "
                                       "sha256)",
                                       absl::CHexEscape(scheme)));
    }
    Digest digest;
    bool hex_ok = hex.size() == 2 * digest.bytes.size();
    for (size_t i = 0; hex_ok && i < digest.bytes.size(); ++i) {
      int hi = HexValue(hex[2 * i]);
      int lo = HexValue(hex[2 * i + 1]);
      hex_ok = hi >= 0 && lo >= 0;
      digest.bytes[i] = static_cast<uint8_t>(hi << 4 | lo);
    }
    if (!hex_ok) {
      return LineError(file_name, line_no,
                       "expected 64 hex digits (the SHA-256 of the key) "
                       "after \"sha256:\"");
    }
    KeyEntry entry;
    entry.name = std::string(name);
    for (size_t i = 1; i < rest.size(); ++i) {
      if (absl::Status s = ParseSetting(rest[i], &entry); !s.ok()) {
        return LineError(file_name, line_no, s.message());
      }
    }
    if (auto it = name_index.find(name); it != name_index.end()) {
      return LineError(file_name, line_no,
                       absl::StrFormat("duplicate key name \"%s\" (first on "
                                       "line %d)",
                                       name, lines[it->second]));
    }
    size_t index = store.entries_.size();
    auto [it, inserted] = store.by_digest_.emplace(digest, static_cast<uint32_t>(index));
    if (!inserted) {
      return LineError(file_name, line_no,
                       absl::StrFormat("duplicate key hash (the same key as "
                                       "\"%s\" on line %d)",
                                       store.entries_[it->second].name, lines[it->second]));
    }
    name_index.emplace(std::string(name), index);
    store.entries_.push_back(std::move(entry));
    lines.push_back(line_no);
  }
  return store;
}

absl::StatusOr<KeyStore> KeyStore::Load(const std::string& path) {
  absl::StatusOr<std::string> text = ReadPolicyFile(path);
  if (!text.ok()) return text.status();
  return Parse(*text, path);
}

const std::string* KeyStore::Lookup(absl::string_view presented_key) const {
  const KeyEntry* entry = Find(presented_key);
  return entry != nullptr ? &entry->name : nullptr;
}

std::vector<std::string> KeyStore::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const KeyEntry& e : entries_) out.push_back(e.name);
  return out;
}

const KeyEntry* KeyStore::Find(absl::string_view presented_key) const {
  if (by_digest_.empty()) return nullptr;
  Digest digest;
  SHA256(reinterpret_cast<const uint8_t*>(presented_key.data()), presented_key.size(),
         digest.bytes.data());
  auto it = by_digest_.find(digest);
  if (it == by_digest_.end()) return nullptr;
  return &entries_[it->second];
}

absl::StatusOr<std::string> ReadPolicyFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    std::string message = absl::StrCat(path, ": ", strerror(err));
    if (err == ENOENT) return absl::NotFoundError(message);
    if (err == EACCES || err == EPERM) {
      return absl::PermissionDeniedError(message);
    }
    return absl::UnavailableError(message);
  }
  std::string text;
  char buf[16384];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      close(fd);
      return absl::UnavailableError(absl::StrCat(path, ": ", strerror(err)));
    }
    if (n == 0) break;
    if (text.size() + static_cast<size_t>(n) > kMaxPolicyFileBytes) {
      close(fd);
      return absl::InvalidArgumentError(absl::StrCat(path, ": file larger than 64 MiB"));
    }
    text.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return text;
}

std::string GenerateKey() {
  uint8_t bytes[32];
  // BoringSSL's RAND_bytes aborts rather than fail; check anyway.
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) std::abort();
  std::string key = absl::StrCat("sk-", absl::WebSafeBase64Escape(absl::string_view(
                                            reinterpret_cast<const char*>(bytes), sizeof(bytes))));
  OPENSSL_cleanse(bytes, sizeof(bytes));
  return key;
}

void KeyStore::ResolveModelPolicies(const ModelPolicy& defaults) {
  for (KeyEntry& e : entries_) e.model_policy = defaults.With(e.model);
}

std::string KeyLine(absl::string_view name, absl::string_view key, uint32_t weight,
                    const std::vector<std::string>& settings) {
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const uint8_t*>(key.data()), key.size(), digest);
  std::string line = absl::StrCat(name, ":", kScheme, ":",
                                  absl::BytesToHexString(absl::string_view(
                                      reinterpret_cast<const char*>(digest), sizeof(digest))));
  if (weight != 1) absl::StrAppend(&line, " weight=", weight);
  for (const std::string& s : settings) absl::StrAppend(&line, " ", s);
  return line;
}

std::optional<absl::string_view> PresentedKey(absl::string_view authorization,
                                              absl::string_view x_api_key) {
  // RFC 9110 section 11.4: credentials = auth-scheme [ 1*SP token68 ], the
  // scheme case-insensitive.
  constexpr absl::string_view kBearer = "bearer";
  if (authorization.size() > kBearer.size() &&
      absl::EqualsIgnoreCase(authorization.substr(0, kBearer.size()), kBearer) &&
      authorization[kBearer.size()] == ' ') {
    absl::string_view key = authorization.substr(kBearer.size());
    while (!key.empty() && key.front() == ' ') key.remove_prefix(1);
    key = absl::StripTrailingAsciiWhitespace(key);
    if (!key.empty()) return key;
  }
  if (!x_api_key.empty()) return x_api_key;
  return std::nullopt;
}

}  // namespace sluice::policy
