// The simulator's listening sockets: --listen parsing, the SO_REUSEPORT
// listeners each worker owns, and the probe that makes a busy port fail.
#pragma once

#include <sys/socket.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sluice::sim {

// A parsed --listen value.
struct ListenAddress {
  std::string display_host;  // As given ("127.0.0.1", "[::1]", "localhost").
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  int port = 0;  // 0: ephemeral.
};

// Parses "host:port" or "[v6]:port"; the host may be a literal or a name
// (resolved with getaddrinfo, first result). An empty host means 0.0.0.0.
absl::StatusOr<ListenAddress> ParseListenAddress(absl::string_view text);

// Opens a non-blocking SO_REUSEPORT listening socket on `address` with the
// port replaced by `port`. The caller owns the returned descriptor.
absl::StatusOr<int> OpenListener(const ListenAddress& address, int port);

// Fails when `address` cannot be bound by a socket without SO_REUSEPORT,
// i.e. when something already listens there.
absl::Status ProbePortFree(const ListenAddress& address);

// The port a bound socket actually got (to learn the ephemeral port).
absl::StatusOr<int> BoundPort(int fd);

// An InternalError "what: strerror(errno)".
absl::Status ErrnoStatus(absl::string_view what);

}  // namespace sluice::sim
