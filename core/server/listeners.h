// The listening sockets: one SO_REUSEPORT socket per worker and listener,
// made here or taken over from the process that restarted into this one,
// and the steering program that sends each client address to one worker.
#pragma once

#include <linux/filter.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/server/config.h"
#include "core/server/worker.h"

namespace sluice::core {

// The port of `addr`, in host order (0: any free port).
int Port(const SocketAddress& addr);
// The port a socket is bound to, in host order.
int Port(int fd);
// Sets the port of `addr` (host order).
void SetPort(SocketAddress* addr, int port);
// The host of a --listen_* value as written ("[::1]" of "[::1]:443"), or
// 0.0.0.0 for ":port"; for the "listening on" line.
std::string HostPart(const std::string& text);

// A listening SO_REUSEPORT socket bound to `addr` (backlog 4096); -1 with
// `error` set (strerror) when it cannot be made.
int Listen(const SocketAddress& addr, std::string* error);

// Whether some other socket already listens on `addr` (see listeners.cc):
// the errno of a bind without SO_REUSEPORT (EADDRINUSE when taken), or 0.
int ProbeAddressInUse(const SocketAddress& addr);

// The classic BPF program for a SO_REUSEPORT group of `workers` sockets:
// it returns policy::SteeringSlot(policy::SteeringHash(source), workers)
// for the packet's IPv4 or IPv6 source address.
std::vector<sock_filter> SteeringProgram(int workers);
// Attaches SteeringProgram to the group `fd` belongs to. False (and a
// warning logged) when the kernel refuses it; its own hash spreads
// connections then.
bool AttachSteering(int fd, int workers);

// One listener the flags ask for. `addr` and `text` point into the Config
// it was made from; the port is filled in by OpenListeners.
struct ListenerSpec {
  const char* flag;  // "listen_http" or "listen_tls"
  SocketAddress* addr;
  const std::string* text;
  ListenerKind kind;
  const char* scheme;  // "http" or "https"
  int port = 0;
};

// The listeners `config` enables, HTTP first (the order their sockets are
// made and handed over in).
std::vector<ListenerSpec> ListenerSpecs(Config* config);

// The sockets of every worker, and all of them in the order a restart
// hands them over (each listener's sockets, worker 0 first).
struct ListenSockets {
  std::vector<std::vector<Listener>> per_worker;
  std::vector<int> fds;
};

// Makes `workers` sockets for each spec, or takes them from `inherited`
// (the sockets a restart handed over, in the same order; empty when
// started normally). The first socket of a listener fixes the port when
// port 0 was asked for: it is written to the spec, its address in the
// config, and to config->tls_port for the TLS listener. With more than one
// worker, each group gets the steering program. On error, the message to
// print after "sluice: " (a taken address, a socket that cannot be made,
// handed-over sockets that are not what the flags ask for); the sockets
// made here are closed then.
absl::StatusOr<ListenSockets> OpenListeners(std::vector<ListenerSpec>* specs, int workers,
                                            const std::vector<int>& inherited, Config* config);

// Prints "sluice listening on SCHEME://HOST:PORT (N workers)" for each
// spec on stdout, and flushes it (tests and scripts wait for these lines).
void PrintListening(const std::vector<ListenerSpec>& specs, int workers);

}  // namespace sluice::core
