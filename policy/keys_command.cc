#include "policy/keys_command.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "policy/keys.h"

namespace sluice::policy {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

constexpr absl::string_view kUsage =
    "usage: sluice keys add NAME --keys_file F     make a key, print it once, "
    "store its hash\n"
    "         [--weight N]                         its share of generation slots "
    "(1-1000, default 1)\n"
    "         [--set SETTING=VALUE]...             its model policy, e.g. "
    "--set models=llama3*,qwen2.5:7b --set max_num_predict=1024\n"
    "       sluice keys list --keys_file F         print the key names (and weights "
    "other than 1, and settings)\n"
    "       sluice keys revoke NAME --keys_file F  remove a key\n"
    "NAME: 1 to 64 characters of A-Za-z0-9._@-\n";

struct Args {
  std::vector<std::string> positional;
  std::string keys_file;
  std::optional<std::string> weight;
  std::vector<std::string> settings;  // --set NAME=VALUE
  bool help = false;
};

// Parses argv[1..]; on a usage error returns the message.
std::optional<std::string> ParseArgs(int argc, char** argv, Args& args) {
  constexpr absl::string_view kFlag = "--keys_file";
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == kFlag) {
      if (i + 1 >= argc) return "--keys_file needs a value";
      args.keys_file = argv[++i];
    } else if (absl::StartsWith(arg, "--keys_file=")) {
      args.keys_file = std::string(arg.substr(kFlag.size() + 1));
    } else if (arg == "--weight") {
      if (i + 1 >= argc) return "--weight needs a value";
      args.weight = argv[++i];
    } else if (absl::StartsWith(arg, "--weight=")) {
      args.weight = std::string(arg.substr(9));
    } else if (arg == "--set") {
      if (i + 1 >= argc) return "--set needs a value";
      args.settings.emplace_back(argv[++i]);
    } else if (absl::StartsWith(arg, "--set=")) {
      args.settings.emplace_back(arg.substr(6));
    } else if (arg == "--help" || arg == "-h" || arg == "-help") {
      args.help = true;
    } else if (arg.size() > 1 && arg.front() == '-') {
      return absl::StrCat("unknown flag \"", absl::CHexEscape(arg), "\"");
    } else {
      args.positional.emplace_back(arg);
    }
  }
  return std::nullopt;
}

std::string ErrnoMessage(absl::string_view what, absl::string_view path, int err) {
  return absl::StrCat(what, " ", path, ": ", strerror(err));
}

absl::Status WriteAll(int fd, absl::string_view data, absl::string_view path) {
  while (!data.empty()) {
    ssize_t n = write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(ErrnoMessage("writing", path, errno));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Makes a rename or a file creation in `dir` durable. Best effort: some
// file systems refuse fsync on a directory, and the data itself is already
// synced by then.
void SyncDir(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  fsync(fd);
  close(fd);
}

// Reads the keys file; a missing file reads as empty when `missing_ok`.
absl::StatusOr<std::string> ReadKeys(const std::string& path, bool missing_ok) {
  absl::StatusOr<std::string> text = ReadPolicyFile(path);
  if (!text.ok() && missing_ok && absl::IsNotFound(text.status())) {
    return std::string();
  }
  return text;
}

bool HasName(const KeyStore& store, absl::string_view name) {
  for (const std::string& n : store.names()) {
    if (n == name) return true;
  }
  return false;
}

absl::Status Add(const std::string& path, const std::string& name, uint32_t weight,
                 const std::vector<std::string>& settings, std::ostream& out) {
  bool exists = access(path.c_str(), F_OK) == 0;
  absl::StatusOr<std::string> text = ReadKeys(path, /*missing_ok=*/true);
  if (!text.ok()) return text.status();
  absl::StatusOr<KeyStore> store = KeyStore::Parse(*text, path);
  if (!store.ok()) return store.status();
  if (HasName(*store, name)) {
    return absl::AlreadyExistsError(absl::StrCat("key \"", name, "\" already exists in ", path));
  }
  std::string key = GenerateKey();
  std::string line = KeyLine(name, key, weight, settings);
  if (!text->empty() && text->back() != '\n') line.insert(0, "\n");
  line.push_back('\n');

  // O_EXCL when creating, so a file that appeared meanwhile is not
  // appended to unread.
  int flags = O_WRONLY | O_APPEND | O_CLOEXEC | (exists ? 0 : O_CREAT | O_EXCL);
  int fd = open(path.c_str(), flags, 0600);
  if (fd < 0) {
    return absl::UnavailableError(ErrnoMessage("opening", path, errno));
  }
  absl::Status status = WriteAll(fd, line, path);
  if (status.ok() && fsync(fd) != 0) {
    status = absl::UnavailableError(ErrnoMessage("syncing", path, errno));
  }
  close(fd);
  if (!status.ok()) return status;
  if (!exists) SyncDir(DirName(path));
  // Shown only once the line is on disk, so a key the proxy will never
  // accept is never handed out.
  out << key << "\n";
  out.flush();
  return absl::OkStatus();
}

absl::Status List(const std::string& path, std::ostream& out) {
  absl::StatusOr<std::string> text = ReadKeys(path, /*missing_ok=*/false);
  if (!text.ok()) return text.status();
  absl::StatusOr<KeyStore> store = KeyStore::Parse(*text, path);
  if (!store.ok()) return store.status();
  for (const KeyEntry& key : store->entries()) {
    out << key.name;
    if (key.weight != 1) out << " weight=" << key.weight;
    for (const std::string& w : ModelSettingWords(key.model)) out << " " << w;
    out << "\n";
  }
  out.flush();
  return absl::OkStatus();
}

// The name on a keys-file line, or empty for a blank or comment line. Only
// used on text KeyStore::Parse accepted.
absl::string_view LineName(absl::string_view line) {
  line = absl::StripAsciiWhitespace(line);
  if (line.empty() || line.front() == '#') return {};
  return absl::StripAsciiWhitespace(line.substr(0, line.find(':')));
}

absl::Status Revoke(const std::string& given_path, const std::string& name) {
  // Replace the file a symlink points to, not the symlink.
  char resolved[PATH_MAX];
  if (realpath(given_path.c_str(), resolved) == nullptr) {
    return absl::UnavailableError(ErrnoMessage("opening", given_path, errno));
  }
  const std::string path = resolved;
  absl::StatusOr<std::string> text = ReadKeys(path, /*missing_ok=*/false);
  if (!text.ok()) return text.status();
  absl::StatusOr<KeyStore> store = KeyStore::Parse(*text, given_path);
  if (!store.ok()) return store.status();
  if (!HasName(*store, name)) {
    return absl::NotFoundError(absl::StrCat("no key named \"", name, "\" in ", given_path));
  }
  std::vector<absl::string_view> kept;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    if (LineName(line) != name) kept.push_back(line);
  }
  std::string new_text = absl::StrJoin(kept, "\n");

  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return absl::UnavailableError(ErrnoMessage("reading", path, errno));
  }
  std::string dir = DirName(path);
  std::string tmp = absl::StrCat(path, ".tmp.XXXXXX");
  int fd = mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) {
    return absl::UnavailableError(ErrnoMessage("creating a file in", dir, errno));
  }
  absl::Status status = WriteAll(fd, new_text, tmp);
  if (status.ok() && fchmod(fd, st.st_mode & 07777) != 0) {
    status = absl::UnavailableError(ErrnoMessage("chmod", tmp, errno));
  }
  struct stat tmp_st;
  if (status.ok() && fstat(fd, &tmp_st) == 0 &&
      (tmp_st.st_uid != st.st_uid || tmp_st.st_gid != st.st_gid) &&
      fchown(fd, st.st_uid, st.st_gid) != 0) {
    // Say so rather than leave a file the proxy's user may not read.
    status =
        absl::UnavailableError(ErrnoMessage("giving the owner of the original to", tmp, errno));
  }
  if (status.ok() && fsync(fd) != 0) {
    status = absl::UnavailableError(ErrnoMessage("syncing", tmp, errno));
  }
  close(fd);
  if (status.ok() && rename(tmp.c_str(), path.c_str()) != 0) {
    status = absl::UnavailableError(ErrnoMessage("replacing", path, errno));
  }
  if (!status.ok()) {
    unlink(tmp.c_str());
    return status;
  }
  SyncDir(dir);
  return absl::OkStatus();
}

}  // namespace

int RunKeysCommand(int argc, char** argv) {
  return RunKeysCommand(argc, argv, std::cout, std::cerr);
}

int RunKeysCommand(int argc, char** argv, std::ostream& out, std::ostream& err) {
  auto usage_error = [&err](absl::string_view message) {
    err << "sluice keys: " << message << "\n";
    err.flush();
    return kExitUsage;
  };
  Args args;
  if (std::optional<std::string> error = ParseArgs(argc, argv, args)) {
    return usage_error(*error);
  }
  if (args.help) {
    out << kUsage;
    out.flush();
    return kExitOk;
  }
  if (args.positional.empty()) {
    return usage_error("missing subcommand (add, list or revoke)");
  }
  const std::string& sub = args.positional[0];
  const bool takes_name = sub == "add" || sub == "revoke";
  if (!takes_name && sub != "list") {
    return usage_error(
        absl::StrCat("unknown subcommand \"", absl::CHexEscape(sub), "\" (add, list or revoke)"));
  }
  const size_t want = takes_name ? 2 : 1;
  if (args.positional.size() < want) {
    return usage_error(absl::StrCat(sub, " needs a key NAME"));
  }
  if (args.positional.size() > want) {
    return usage_error(
        absl::StrCat("unexpected argument \"", absl::CHexEscape(args.positional[want]), "\""));
  }
  if (takes_name && !ValidKeyName(args.positional[1])) {
    return usage_error(absl::StrCat("invalid key name \"", absl::CHexEscape(args.positional[1]),
                                    "\" (1 to 64 characters of A-Za-z0-9._@-)"));
  }
  if (args.keys_file.empty()) return usage_error("--keys_file is required");
  uint32_t weight = 1;
  if (args.weight.has_value()) {
    if (sub != "add") return usage_error("--weight: only for add");
    if (!absl::SimpleAtoi(*args.weight, &weight) || weight < 1 || weight > kMaxKeyWeight) {
      return usage_error(absl::StrCat("--weight: expected a whole number from 1 to ", kMaxKeyWeight,
                                      ", got \"", absl::CHexEscape(*args.weight), "\""));
    }
  }
  if (!args.settings.empty() && sub != "add") return usage_error("--set: only for add");
  ModelSettings settings;
  for (const std::string& s : args.settings) {
    const size_t eq = s.find('=');
    absl::Status st = eq == std::string::npos
                          ? absl::InvalidArgumentError(absl::StrCat("\"", absl::CHexEscape(s),
                                                                    "\": expected SETTING=VALUE"))
                          : ParseModelSetting(s.substr(0, eq), s.substr(eq + 1), &settings);
    if (!st.ok()) return usage_error(absl::StrCat("--set: ", st.message()));
  }

  absl::Status status;
  if (sub == "add") {
    status = Add(args.keys_file, args.positional[1], weight, args.settings, out);
  } else if (sub == "list") {
    status = List(args.keys_file, out);
  } else {
    status = Revoke(args.keys_file, args.positional[1]);
  }
  if (!status.ok()) {
    err << "sluice keys: " << status.message() << "\n";
    err.flush();
    return kExitFailure;
  }
  return kExitOk;
}

}  // namespace sluice::policy
