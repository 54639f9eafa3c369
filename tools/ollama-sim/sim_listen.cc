#include "sim_listen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace sluice::sim {

absl::Status ErrnoStatus(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", strerror(errno)));
}

absl::StatusOr<ListenAddress> ParseListenAddress(absl::string_view text) {
  ListenAddress result;
  absl::string_view host;
  absl::string_view port;
  if (absl::StartsWith(text, "[")) {
    size_t end = text.find("]:");
    if (end == absl::string_view::npos) {
      return absl::InvalidArgumentError("expected [v6-address]:port");
    }
    host = text.substr(1, end - 1);
    port = text.substr(end + 2);
    result.display_host = absl::StrCat("[", host, "]");
  } else {
    size_t colon = text.rfind(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError("expected host:port");
    }
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != absl::string_view::npos) {
      return absl::InvalidArgumentError("IPv6 addresses need brackets: [addr]:port");
    }
    if (host.empty()) host = "0.0.0.0";
    result.display_host = std::string(host);
  }
  if (!absl::SimpleAtoi(port, &result.port) || result.port < 0 || result.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("bad port '", port, "'"));
  }
  std::string host_str(host);
  auto* v4 = reinterpret_cast<sockaddr_in*>(&result.addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&result.addr);
  if (inet_pton(AF_INET, host_str.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    result.addr_len = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, host_str.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    result.addr_len = sizeof(sockaddr_in6);
  } else {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    int rc = getaddrinfo(host_str.c_str(), nullptr, &hints, &found);
    if (rc != 0 || found == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot resolve '", host, "': ", gai_strerror(rc)));
    }
    memcpy(&result.addr, found->ai_addr, found->ai_addrlen);
    result.addr_len = found->ai_addrlen;
    freeaddrinfo(found);
  }
  return result;
}

namespace {

sockaddr_storage WithPort(const ListenAddress& address, int port) {
  sockaddr_storage addr = address.addr;
  if (addr.ss_family == AF_INET) {
    reinterpret_cast<sockaddr_in*>(&addr)->sin_port = htons(port);
  } else {
    reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port = htons(port);
  }
  return addr;
}

}  // namespace

absl::Status ProbePortFree(const ListenAddress& address) {
  sockaddr_storage addr = WithPort(address, address.port);
  int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus("socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  absl::Status status = absl::OkStatus();
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), address.addr_len) != 0) {
    status = ErrnoStatus(absl::StrCat("bind ", address.display_host, ":", address.port));
  }
  close(fd);
  return status;
}

absl::StatusOr<int> OpenListener(const ListenAddress& address, int port) {
  sockaddr_storage addr = WithPort(address, port);
  int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus("socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
    absl::Status status = ErrnoStatus("setsockopt(SO_REUSEPORT)");
    close(fd);
    return status;
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), address.addr_len) != 0) {
    absl::Status status = ErrnoStatus(absl::StrCat("bind ", address.display_host, ":", port));
    close(fd);
    return status;
  }
  // A deep backlog: wrk opens all its connections at once.
  if (listen(fd, 4096) != 0) {
    absl::Status status = ErrnoStatus("listen");
    close(fd);
    return status;
  }
  return fd;
}

absl::StatusOr<int> BoundPort(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return ErrnoStatus("getsockname");
  }
  if (addr.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  }
  return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
}

}  // namespace sluice::sim
