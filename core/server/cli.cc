#include "core/server/cli.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>

#include "absl/flags/reflection.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/upstream/resolver.h"

namespace sluice::core {
namespace {

void ParseOne(absl::string_view arg, const std::vector<std::string>& args, size_t* i,
              std::vector<std::string>* positional, int depth, absl::string_view usage);

void ReadFlagfile(const std::string& path, std::vector<std::string>* positional, int depth,
                  absl::string_view usage) {
  if (depth > 8) UsageError(absl::StrCat("--flagfile: nesting too deep at ", path));
  std::ifstream in(path);
  if (!in) UsageError(absl::StrCat("--flagfile: cannot read ", path, ": ", strerror(errno)));
  std::vector<std::string> lines;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    size_t b = line.find_first_not_of(" \t\r");
    size_t e = line.find_last_not_of(" \t\r");
    if (b == std::string::npos || line[b] == '#') continue;
    std::string arg = line.substr(b, e - b + 1);
    if (arg.rfind("-", 0) != 0) {
      UsageError(absl::StrCat("--flagfile: ", path, ":", line_no, ": expected --flag=value, got '",
                              arg, "'"));
    }
    // "--name value", as on a command line: a file line is one argument,
    // so the value must be joined with '='.
    if (size_t space = arg.find_first_of(" \t");
        space != std::string::npos && arg.find('=') > space) {
      absl::string_view name(arg.data(), space);
      absl::string_view value =
          absl::StripLeadingAsciiWhitespace(absl::string_view(arg).substr(space));
      UsageError(absl::StrCat("--flagfile: ", path, ":", line_no, ": write ", name, "=", value,
                              " (one --name=value per line), not '", arg, "'"));
    }
    lines.push_back(std::move(arg));
  }
  for (size_t i = 0; i < lines.size(); ++i) {
    ParseOne(lines[i], lines, &i, positional, depth + 1, usage);
  }
}

bool IsOurs(const absl::CommandLineFlag& flag) {
  std::string file = flag.Filename();
  return file.find("absl/") == std::string::npos && file.find("abseil") == std::string::npos;
}

[[noreturn]] void PrintHelp(absl::string_view usage) {
  std::string out(usage);
  out += "\n\nFlags (--name=value; durations like 500ms, 10s, 10m; sizes like 64k, 100M):\n";
  std::vector<absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (IsOurs(*flag)) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(), [](auto* a, auto* b) { return a->Name() < b->Name(); });
  for (auto* f : flags) {
    absl::StrAppend(&out, "  --", f->Name(),
                    "  (default: ", f->DefaultValue().empty() ? "\"\"" : f->DefaultValue(),
                    ")\n      ", f->Help(), "\n");
  }
  out += "  --flagfile=FILE  read flags from FILE, one per line\n  --help  this text\n";
  fwrite(out.data(), 1, out.size(), stdout);
  exit(0);
}

void SetFlag(absl::string_view name, absl::string_view value) {
  absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  if (flag == nullptr || !IsOurs(*flag)) {
    UsageError(absl::StrCat("unknown flag --", name, " (see --help)"));
  }
  std::string error;
  if (!flag->ParseFrom(value, &error)) {
    UsageError(absl::StrCat("--", name, ": invalid value '", value, "': ", error));
  }
}

void ParseOne(absl::string_view arg, const std::vector<std::string>& args, size_t* i,
              std::vector<std::string>* positional, int depth, absl::string_view usage) {
  if (arg.size() < 2 || arg[0] != '-') {
    positional->emplace_back(arg);
    return;
  }
  absl::string_view body = arg.substr(arg[1] == '-' ? 2 : 1);
  size_t eq = body.find('=');
  std::string name(body.substr(0, eq));
  if (name == "help" || name == "helpfull" || name == "h") PrintHelp(usage);
  std::optional<std::string> value;
  if (eq != absl::string_view::npos) value = std::string(body.substr(eq + 1));
  if (name == "flagfile") {
    if (!value) {
      if (*i + 1 >= args.size()) UsageError("--flagfile: missing file name");
      value = args[++*i];
    }
    ReadFlagfile(*value, positional, depth, usage);
    return;
  }
  absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  if (!value) {
    if (flag && flag->IsOfType<bool>()) {
      value = "true";
    } else if (!flag && name.rfind("no", 0) == 0) {
      absl::CommandLineFlag* neg = absl::FindCommandLineFlag(name.substr(2));
      if (neg && neg->IsOfType<bool>()) {
        name = name.substr(2);
        value = "false";
      }
    }
    if (!value && flag) {
      if (*i + 1 >= args.size()) UsageError(absl::StrCat("--", name, ": missing value"));
      value = args[++*i];
    }
  }
  SetFlag(name, value.value_or(""));
}

}  // namespace

void UsageError(absl::string_view message) {
  std::string line = absl::StrCat("sluice: ", message, "\n");
  fwrite(line.data(), 1, line.size(), stderr);
  exit(2);
}

std::vector<std::string> ParseFlagsOrExit(int argc, char** argv, absl::string_view usage) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::vector<std::string> positional;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--") {
      positional.insert(positional.end(), args.begin() + i + 1, args.end());
      break;
    }
    ParseOne(args[i], args, &i, &positional, 0, usage);
  }
  return positional;
}

absl::Status SplitHostPort(absl::string_view text, std::string* host_out, std::string* port_out) {
  absl::string_view t = text;
  // A URL where an address is expected: say so, rather than fail on the
  // colon of "https://" as if it were an IPv6 address, or drop a path
  // (sluice forwards each request's own path).
  if (size_t scheme = t.find("://"); scheme != absl::string_view::npos) {
    absl::string_view rest = t.substr(scheme + 3);
    return absl::InvalidArgumentError(absl::StrCat("expected host:port without a scheme, got '",
                                                   text, "' (write '",
                                                   rest.substr(0, rest.find('/')), "')"));
  }
  if (size_t slash = t.find('/'); slash != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("expected host:port without a path, got '", text,
                                                   "' (write '", t.substr(0, slash), "')"));
  }
  std::string& host = *host_out;
  std::string& port = *port_out;
  if (!t.empty() && t[0] == '[') {
    size_t close = t.find(']');
    if (close == absl::string_view::npos || close + 1 >= t.size() || t[close + 1] != ':') {
      return absl::InvalidArgumentError(absl::StrCat("expected [ipv6]:port, got '", text, "'"));
    }
    host = std::string(t.substr(1, close - 1));
    port = std::string(t.substr(close + 2));
  } else {
    size_t colon = t.rfind(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("expected host:port, got '", text, "'"));
    }
    host = std::string(t.substr(0, colon));
    port = std::string(t.substr(colon + 1));
    if (host.find(':') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("put IPv6 addresses in brackets: '", text, "'"));
    }
  }
  if (port.empty() || port.find_first_not_of("0123456789") != std::string::npos ||
      port.size() > 5 || std::stoi(port) > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("invalid port in '", text, "'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<SocketAddress> ParseHostPort(absl::string_view text, bool numeric_only) {
  std::string host, port;
  if (absl::Status st = SplitHostPort(text, &host, &port); !st.ok()) return st;
  if (host.empty()) host = "0.0.0.0";
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (numeric_only ? AI_NUMERICHOST : 0);
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve '", text, "': ", gai_strerror(rc)));
  }
  addrinfo* pick = res;
  for (addrinfo* a = res; a; a = a->ai_next) {
    if (a->ai_family == AF_INET) {
      pick = a;
      break;
    }
  }
  SocketAddress out;
  memcpy(&out.storage, pick->ai_addr, pick->ai_addrlen);
  out.len = pick->ai_addrlen;
  freeaddrinfo(res);
  return out;
}

bool AbslParseFlag(absl::string_view text, ByteSize* out, std::string* error) {
  std::string t(text);
  if (t.empty()) {
    *error = "empty size";
    return false;
  }
  uint64_t mult = 1;
  switch (t.back()) {
    case 'k':
    case 'K':
      mult = 1ull << 10;
      t.pop_back();
      break;
    case 'm':
    case 'M':
      mult = 1ull << 20;
      t.pop_back();
      break;
    case 'g':
    case 'G':
      mult = 1ull << 30;
      t.pop_back();
      break;
    default:
      break;
  }
  if (t.empty() || t.find_first_not_of("0123456789") != std::string::npos || t.size() > 12) {
    *error = "expected a number of bytes with an optional k, m or g suffix";
    return false;
  }
  uint64_t n = std::stoull(t);
  if (n > UINT64_MAX / mult) {
    *error = "size too large";
    return false;
  }
  out->bytes = n * mult;
  return true;
}

std::string AbslUnparseFlag(ByteSize s) {
  if (s.bytes != 0 && s.bytes % (1ull << 30) == 0) return absl::StrCat(s.bytes >> 30, "G");
  if (s.bytes != 0 && s.bytes % (1ull << 20) == 0) return absl::StrCat(s.bytes >> 20, "M");
  if (s.bytes != 0 && s.bytes % (1ull << 10) == 0) return absl::StrCat(s.bytes >> 10, "K");
  return absl::StrCat(s.bytes);
}

namespace {

// One `key=value` setting of a backend in --upstream.
absl::Status ParseBackendOption(absl::string_view addr, absl::string_view w, BackendConfig* b) {
  const size_t eq = w.find('=');
  const absl::string_view key = w.substr(0, eq);
  const absl::string_view text = eq == absl::string_view::npos ? "" : w.substr(eq + 1);
  if (key == "name") {
    if (text.empty() || text.size() > 64 || !std::all_of(text.begin(), text.end(), [](char c) {
          return absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.';
        })) {
      return absl::InvalidArgumentError(
          absl::StrCat(addr, ": \"", w, "\": a name is 1 to 64 letters, digits, '-', '_' or '.'"));
    }
    b->name = std::string(text);
    return absl::OkStatus();
  }
  struct Range {
    absl::string_view key;
    int min, max;
    int* field;
  };
  const Range ranges[] = {{"weight", 1, 1000, &b->weight},
                          {"slots", 0, 1024, &b->slots},
                          {"max_loaded", 1, 1024, &b->max_loaded},
                          {"max_addresses", 1, 64, &b->max_addresses}};
  for (const Range& r : ranges) {
    if (key != r.key) continue;
    int value = 0;
    if (!absl::SimpleAtoi(text, &value) || value < r.min || value > r.max) {
      return absl::InvalidArgumentError(
          absl::StrCat(addr, ": \"", w, "\": ", key, " is a number from ", r.min, " to ", r.max));
    }
    *r.field = value;
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      addr, ": unknown option \"", w, "\" (use name=NAME, weight=N, slots=N or max_loaded=N)"));
}

}  // namespace

absl::StatusOr<std::vector<BackendConfig>> ParseBackends(absl::string_view text,
                                                         absl::string_view host_header) {
  std::vector<BackendConfig> backends;
  for (absl::string_view entry : absl::StrSplit(text, ',')) {
    std::vector<absl::string_view> words =
        absl::StrSplit(entry, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (words.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("empty entry in \"", text, "\" (backends are separated by commas)"));
    }
    std::string host, port;
    if (absl::Status st = SplitHostPort(words[0], &host, &port); !st.ok()) return st;
    BackendConfig b;
    b.name = std::string(words[0]);
    b.max_addresses = 0;  // not given
    for (size_t i = 1; i < words.size(); ++i) {
      absl::Status st = ParseBackendOption(words[0], words[i], &b);
      if (!st.ok()) return st;
    }
    in_addr v4;
    in6_addr v6;
    if (host.empty() || inet_pton(AF_INET, host.c_str(), &v4) == 1 ||
        inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
      if (b.max_addresses != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(words[0], ": max_addresses=N is for a backend given by DNS name"));
      }
      absl::StatusOr<SocketAddress> addr = ParseHostPort(words[0], /*numeric_only=*/true);
      if (!addr.ok()) return addr.status();
      b.addr = *addr;
    } else {
      // A DNS name: every address it resolves to is a backend (up to
      // max_addresses, see ExpandNames). Resolved now if it can be, and
      // again every --resolve_interval by the Resolver; one that does not
      // resolve yet is not an error (a service that comes up later).
      if (b.max_addresses == 0) b.max_addresses = kDefaultMaxAddresses;
      b.dns = std::make_shared<DnsName>(host, port, static_cast<size_t>(b.max_addresses));
      if (b.dns->Resolve().ok()) b.dns->Get(0, &b.addr);
    }
    b.host_header = host_header.empty() ? std::string(words[0]) : std::string(host_header);
    for (const BackendConfig& other : backends) {
      const bool same_address = other.dns == nullptr && b.dns == nullptr &&
                                other.addr.len == b.addr.len &&
                                memcmp(&other.addr.storage, &b.addr.storage, b.addr.len) == 0;
      const bool same_name = other.dns != nullptr && b.dns != nullptr &&
                             other.dns->host() == b.dns->host() &&
                             other.dns->port() == b.dns->port();
      if (same_address || same_name) {
        return absl::InvalidArgumentError(absl::StrCat(words[0], ": listed twice"));
      }
      if (other.name == b.name) {
        return absl::InvalidArgumentError(
            absl::StrCat(words[0], ": the name \"", b.name, "\" is taken by another backend"));
      }
    }
    backends.push_back(std::move(b));
  }
  return backends;
}

}  // namespace sluice::core
