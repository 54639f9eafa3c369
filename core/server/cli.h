#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/server/config.h"

namespace sluice::core {

// Parses argv against the registered absl flags. Accepts --name=value,
// --name value, --bool / --nobool, and --flagfile=FILE (one flag per line,
// '#' comments). --help prints every sluice flag with its default and
// exits 0. Any bad flag, value or file exits 2 after one line on stderr
// that names the flag; a flagfile line "--name value" is told to write
// "--name=value". Returns the positional arguments.
std::vector<std::string> ParseFlagsOrExit(int argc, char** argv, absl::string_view usage);

// A byte count flag: plain bytes or with a k/m/g suffix (powers of 1024),
// as nginx writes client_max_body_size.
struct ByteSize {
  uint64_t bytes = 0;
};
bool AbslParseFlag(absl::string_view text, ByteSize* out, std::string* error);
std::string AbslUnparseFlag(ByteSize s);

// Prints `message` as "sluice: <message>" and exits 2 (bad invocation).
[[noreturn]] void UsageError(absl::string_view message);

// "host:port", "[v6]:port" or ":port" (all IPv4 addresses); numeric hosts
// only when `numeric_only`, else names are resolved (IPv4 preferred, since
// Ollama binds 127.0.0.1 by default). A scheme ("http://") or a path is
// refused with a message that shows the host:port to write instead.
absl::StatusOr<SocketAddress> ParseHostPort(absl::string_view text, bool numeric_only);
// The host and port of "host:port" or "[v6]:port", checked but not
// resolved (host may be empty: ":port").
absl::Status SplitHostPort(absl::string_view text, std::string* host, std::string* port);

// --upstream: Ollama backends separated by commas, each an address as
// ParseHostPort takes it followed by options separated by spaces:
// `weight=N` (1..1000, share of requests under --balance=round_robin) and
// `slots=N` (0..1024, generations it runs at once: its OLLAMA_NUM_PARALLEL;
// 0: not queued by sluice; left kSlotsNotGiven when not written),
// `max_loaded=N`, `name=NAME` and, for a DNS name, `max_addresses=N` (1..64,
// default 8: how many of its addresses are backends; see ExpandNames).
// E.g. "10.0.0.5:11434 slots=4 weight=2, 10.0.0.6:11434". Each backend's
// Host header is `host_header` when not empty, else its address as written.
absl::StatusOr<std::vector<BackendConfig>> ParseBackends(absl::string_view text,
                                                         absl::string_view host_header);

}  // namespace sluice::core
