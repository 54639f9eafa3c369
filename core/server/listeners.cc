#include "core/server/listeners.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "core/observe/log.h"
#include "core/proxy/client_connection.h"
#include "core/server/restart.h"

namespace sluice::core {

int Port(const SocketAddress& addr) {
  if (addr.family() == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&addr.storage)->sin6_port);
  }
  return ntohs(reinterpret_cast<const sockaddr_in*>(&addr.storage)->sin_port);
}

int Port(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

void SetPort(SocketAddress* addr, int port) {
  if (addr->family() == AF_INET6) {
    reinterpret_cast<sockaddr_in6*>(&addr->storage)->sin6_port = htons(port);
  } else {
    reinterpret_cast<sockaddr_in*>(&addr->storage)->sin_port = htons(port);
  }
}

std::string HostPart(const std::string& text) {
  std::string_view t = text;
  size_t colon = t.rfind(':');
  std::string host(t.substr(0, colon));
  return host.empty() ? "0.0.0.0" : host;
}

int Listen(const SocketAddress& addr, std::string* error) {
  int fd = ::socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = strerror(errno);
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (::bind(fd, addr.get(), addr.len) != 0 || ::listen(fd, 4096) != 0) {
    *error = strerror(errno);
    ::close(fd);
    return -1;
  }
  return fd;
}

// The workers' sockets set SO_REUSEPORT, and Linux lets a SO_REUSEPORT
// socket join a group held by any process of the same user, so binding them
// would succeed and quietly split the connections with whoever holds the
// port (a second sluice, or another program). A probe bound without
// SO_REUSEPORT fails with EADDRINUSE whenever anything listens there
// (SO_REUSEADDR only lets it past connections in TIME_WAIT, so a quick
// restart on the same port still works). The probe is closed before the
// workers bind; the gap between the two is a few microseconds. Port 0
// needs no probe (the kernel never hands out a port a listener holds);
// sockets handed over by a restart (SIGUSR2) skip it, as they are shared
// on purpose.
int ProbeAddressInUse(const SocketAddress& addr) {
  int fd = ::socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;  // the real Listen() reports it
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  int err = ::bind(fd, addr.get(), addr.len) == 0 ? 0 : errno;
  ::close(fd);
  return err;
}

// The program returns the index of the socket (= the worker: sockets join
// the group in listen order) from the packet's source address, hashed as
// policy::SteeringHash and SteeringSlot do. One address's connections then
// meet one worker, whose own stripes of the rate table hold its state, so
// checks do not move cache lines between CPUs (bench/RESULTS.md). Without
// it (an old kernel) the kernel's own hash spreads connections, and limits
// stay exact.
std::vector<sock_filter> SteeringProgram(int workers) {
  return {
      // A = IP version (high nibble of the first byte of the IP header).
      BPF_STMT(BPF_LD | BPF_B | BPF_ABS, static_cast<uint32_t>(SKF_NET_OFF)),
      BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 4),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 6, 2, 0),
      // IPv4: the source address at offset 12.
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, static_cast<uint32_t>(SKF_NET_OFF + 12)),
      BPF_JUMP(BPF_JMP | BPF_JA, 1, 0, 0),
      // IPv6: the last 32 bits of the source address (offset 8 + 12).
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, static_cast<uint32_t>(SKF_NET_OFF + 20)),
      BPF_STMT(BPF_ALU | BPF_MUL | BPF_K, 0x9E3779B1u),
      BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 16),
      // policy::SteeringSlot: (hash * workers) >> 16.
      BPF_STMT(BPF_ALU | BPF_MUL | BPF_K, static_cast<uint32_t>(workers)),
      BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 16),
      BPF_STMT(BPF_RET | BPF_A, 0),
  };
}

bool AttachSteering(int fd, int workers) {
  std::vector<sock_filter> code = SteeringProgram(workers);
  sock_fprog prog{static_cast<unsigned short>(code.size()), code.data()};
  if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof(prog)) != 0) {
    LOG_WARN("SO_ATTACH_REUSEPORT_CBPF: %s (clients are spread by the kernel's hash)",
             strerror(errno));
    return false;
  }
  return true;
}

std::vector<ListenerSpec> ListenerSpecs(Config* config) {
  std::vector<ListenerSpec> specs;
  if (config->listen_http_enabled) {
    specs.push_back({"listen_http", &config->listen_http, &config->listen_http_text,
                     config->http_serve ? ListenerKind::kHttp : ListenerKind::kRedirect, "http"});
  }
  if (config->listen_tls_enabled) {
    specs.push_back(
        {"listen_tls", &config->listen_tls, &config->listen_tls_text, ListenerKind::kTls, "https"});
  }
  return specs;
}

namespace {

// Worker `i`'s socket for `spec`: the next handed-over one, or a new one
// (after the in-use probe, for worker 0 and a fixed port).
absl::StatusOr<int> OpenOne(const ListenerSpec& spec, int i, const std::vector<int>& inherited,
                            size_t* next_inherited) {
  if (!inherited.empty()) {
    int fd = inherited[(*next_inherited)++];
    if (!ListenerMatches(fd, *spec.addr)) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "restart: the listening socket handed over for --%s is not bound to %s: start the "
          "new process with the same listeners",
          spec.flag, *spec.text));
    }
    return fd;
  }
  if (i == 0 && Port(*spec.addr) != 0) {
    if (int err = ProbeAddressInUse(*spec.addr); err == EADDRINUSE) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "--%s: cannot listen on %s: address already in use (another program, or another "
          "sluice, listens there)",
          spec.flag, *spec.text));
    }
  }
  std::string error;
  int fd = Listen(*spec.addr, &error);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("--%s: cannot listen on %s: %s", spec.flag, *spec.text, error));
  }
  return fd;
}

}  // namespace

absl::StatusOr<ListenSockets> OpenListeners(std::vector<ListenerSpec>* specs, int workers,
                                            const std::vector<int>& inherited, Config* config) {
  const size_t needed = specs->size() * static_cast<size_t>(workers);
  if (!inherited.empty() && inherited.size() != needed) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "restart: %zu listening sockets handed over, %zu needed: start the new process with "
        "the same --listen_http, --listen_tls and --threads",
        inherited.size(), needed));
  }
  ListenSockets out;
  out.per_worker.resize(workers);
  size_t next_inherited = 0;
  for (ListenerSpec& spec : *specs) {
    for (int i = 0; i < workers; ++i) {
      absl::StatusOr<int> fd = OpenOne(spec, i, inherited, &next_inherited);
      if (!fd.ok()) {
        if (inherited.empty()) {
          for (int made : out.fds) ::close(made);
        }
        return fd.status();
      }
      if (i == 0) {
        spec.port = Port(*fd);
        SetPort(spec.addr, spec.port);
      }
      out.per_worker[i].push_back(Listener{*fd, spec.kind});
      out.fds.push_back(*fd);
    }
    if (spec.kind == ListenerKind::kTls) config->tls_port = spec.port;
    if (workers > 1) AttachSteering(out.per_worker[0].back().fd, workers);
  }
  return out;
}

void PrintListening(const std::vector<ListenerSpec>& specs, int workers) {
  for (const ListenerSpec& spec : specs) {
    printf("sluice listening on %s://%s:%d (%d workers)\n", spec.scheme,
           HostPart(*spec.text).c_str(), spec.port, workers);
  }
  fflush(stdout);
}

}  // namespace sluice::core
