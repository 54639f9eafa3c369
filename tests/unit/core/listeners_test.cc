// Listening sockets on loopback: ports, the in-use probe, taking sockets
// over from a restart, and the SO_REUSEPORT steering program, run both by
// a small classic BPF interpreter and by the kernel.

#include "core/server/listeners.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/proxy/client_connection.h"
#include "core/server/cli.h"
#include "gtest/gtest.h"
#include "policy/ip_set.h"

namespace sluice::core {
namespace {

SocketAddress Addr(const std::string& text) {
  absl::StatusOr<SocketAddress> a = ParseHostPort(text, /*numeric_only=*/true);
  EXPECT_TRUE(a.ok()) << a.status();
  return a.ok() ? *a : SocketAddress{};
}

// Plain HTTP served on `http`, and TLS on `tls` unless empty.
Config LoopbackConfig(const std::string& http, const std::string& tls = "") {
  Config c;
  c.listen_http_text = http;
  c.listen_http = Addr(http);
  c.http_serve = true;
  c.listen_tls_enabled = !tls.empty();
  if (c.listen_tls_enabled) {
    c.listen_tls_text = tls;
    c.listen_tls = Addr(tls);
  }
  return c;
}

void CloseAll(const std::vector<int>& fds) {
  for (int fd : fds) close(fd);
}

TEST(ListenersTest, PortsAndHosts) {
  SocketAddress a = Addr("127.0.0.1:8080");
  EXPECT_EQ(Port(a), 8080);
  SetPort(&a, 9090);
  EXPECT_EQ(Port(a), 9090);
  SocketAddress b = Addr("[::1]:443");
  EXPECT_EQ(Port(b), 443);
  SetPort(&b, 8443);
  EXPECT_EQ(Port(b), 8443);
  EXPECT_EQ(HostPart("127.0.0.1:80"), "127.0.0.1");
  EXPECT_EQ(HostPart("[::1]:443"), "[::1]");
  EXPECT_EQ(HostPart(":8080"), "0.0.0.0");
}

TEST(ListenersTest, ProbeSeesAnyListenerButNotAFreePort) {
  std::string error;
  int fd = Listen(Addr("127.0.0.1:0"), &error);
  ASSERT_GE(fd, 0) << error;
  const int port = Port(fd);
  ASSERT_GT(port, 0);
  SocketAddress taken = Addr(absl::StrCat("127.0.0.1:", port));
  EXPECT_EQ(ProbeAddressInUse(taken), EADDRINUSE);
  close(fd);
  EXPECT_EQ(ProbeAddressInUse(taken), 0);
}

TEST(ListenersTest, SpecsFollowTheConfig) {
  Config c = LoopbackConfig("127.0.0.1:0", "127.0.0.1:0");
  std::vector<ListenerSpec> specs = ListenerSpecs(&c);
  ASSERT_EQ(specs.size(), 2u);
  EXPECT_STREQ(specs[0].flag, "listen_http");
  EXPECT_EQ(specs[0].kind, ListenerKind::kHttp);
  EXPECT_STREQ(specs[0].scheme, "http");
  EXPECT_EQ(specs[0].addr, &c.listen_http);
  EXPECT_STREQ(specs[1].flag, "listen_tls");
  EXPECT_EQ(specs[1].kind, ListenerKind::kTls);
  EXPECT_STREQ(specs[1].scheme, "https");
  c.http_serve = false;
  EXPECT_EQ(ListenerSpecs(&c)[0].kind, ListenerKind::kRedirect);
  c.listen_http_enabled = false;
  specs = ListenerSpecs(&c);
  ASSERT_EQ(specs.size(), 1u);
  EXPECT_EQ(specs[0].kind, ListenerKind::kTls);
}

// Port 0: the first socket of each listener picks the port, the other
// workers' sockets join it, and the config learns it.
TEST(ListenersTest, PortZeroIsFixedByTheFirstSocket) {
  Config c = LoopbackConfig("127.0.0.1:0", "127.0.0.1:0");
  std::vector<ListenerSpec> specs = ListenerSpecs(&c);
  absl::StatusOr<ListenSockets> s = OpenListeners(&specs, 2, {}, &c);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->per_worker.size(), 2u);
  ASSERT_EQ(s->fds.size(), 4u);
  for (int w = 0; w < 2; ++w) {
    ASSERT_EQ(s->per_worker[w].size(), 2u);
    EXPECT_EQ(s->per_worker[w][0].kind, ListenerKind::kHttp);
    EXPECT_EQ(s->per_worker[w][1].kind, ListenerKind::kTls);
    // Handed over listener by listener, worker 0 first.
    EXPECT_EQ(s->per_worker[w][0].fd, s->fds[w]);
    EXPECT_EQ(s->per_worker[w][1].fd, s->fds[2 + w]);
  }
  EXPECT_GT(specs[0].port, 0);
  EXPECT_GT(specs[1].port, 0);
  EXPECT_NE(specs[0].port, specs[1].port);
  EXPECT_EQ(Port(s->fds[0]), specs[0].port);
  EXPECT_EQ(Port(s->fds[1]), specs[0].port);
  EXPECT_EQ(Port(s->fds[2]), specs[1].port);
  EXPECT_EQ(Port(s->fds[3]), specs[1].port);
  EXPECT_EQ(Port(c.listen_http), specs[0].port);
  EXPECT_EQ(Port(c.listen_tls), specs[1].port);
  EXPECT_EQ(c.tls_port, specs[1].port);
  CloseAll(s->fds);
}

TEST(ListenersTest, AnAddressInUseIsRefusedNotShared) {
  std::string error;
  int other = Listen(Addr("127.0.0.1:0"), &error);  // "another sluice"
  ASSERT_GE(other, 0) << error;
  const std::string text = absl::StrCat("127.0.0.1:", Port(other));
  Config c = LoopbackConfig(text);
  std::vector<ListenerSpec> specs = ListenerSpecs(&c);
  absl::StatusOr<ListenSockets> s = OpenListeners(&specs, 2, {}, &c);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().message(),
            absl::StrCat("--listen_http: cannot listen on ", text,
                         ": address already in use (another program, or another sluice, "
                         "listens there)"));
  close(other);
}

TEST(ListenersTest, ASocketThatCannotBeMadeIsNamed) {
  Config c = LoopbackConfig("192.0.2.1:0");  // not an address of this host
  std::vector<ListenerSpec> specs = ListenerSpecs(&c);
  absl::StatusOr<ListenSockets> s = OpenListeners(&specs, 1, {}, &c);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().message(),
            "--listen_http: cannot listen on 192.0.2.1:0: Cannot assign requested address");
}

// After a restart the sockets handed over are used as they are, in order.
TEST(ListenersTest, HandedOverSocketsAreTakenOver) {
  Config old_config = LoopbackConfig("127.0.0.1:0", "127.0.0.1:0");
  std::vector<ListenerSpec> old_specs = ListenerSpecs(&old_config);
  absl::StatusOr<ListenSockets> old_sockets = OpenListeners(&old_specs, 2, {}, &old_config);
  ASSERT_TRUE(old_sockets.ok()) << old_sockets.status();

  Config c = LoopbackConfig("127.0.0.1:0", "127.0.0.1:0");
  std::vector<ListenerSpec> specs = ListenerSpecs(&c);
  absl::StatusOr<ListenSockets> s = OpenListeners(&specs, 2, old_sockets->fds, &c);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->fds, old_sockets->fds);
  EXPECT_EQ(s->per_worker[1][1].fd, old_sockets->per_worker[1][1].fd);
  EXPECT_EQ(specs[0].port, old_specs[0].port);
  EXPECT_EQ(c.tls_port, old_specs[1].port);
  CloseAll(s->fds);
}

TEST(ListenersTest, HandedOverSocketsMustBeWhatTheFlagsAskFor) {
  Config old_config = LoopbackConfig("127.0.0.1:0", "127.0.0.1:0");
  std::vector<ListenerSpec> old_specs = ListenerSpecs(&old_config);
  absl::StatusOr<ListenSockets> old_sockets = OpenListeners(&old_specs, 2, {}, &old_config);
  ASSERT_TRUE(old_sockets.ok()) << old_sockets.status();

  // Other --threads: another count of sockets.
  Config c = LoopbackConfig("127.0.0.1:0", "127.0.0.1:0");
  std::vector<ListenerSpec> specs = ListenerSpecs(&c);
  absl::StatusOr<ListenSockets> s = OpenListeners(&specs, 3, old_sockets->fds, &c);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().message(),
            "restart: 4 listening sockets handed over, 6 needed: start the new process with "
            "the same --listen_http, --listen_tls and --threads");

  // Another address.
  Config moved = LoopbackConfig("127.0.0.2:0", "127.0.0.1:0");
  specs = ListenerSpecs(&moved);
  s = OpenListeners(&specs, 2, old_sockets->fds, &moved);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().message(),
            "restart: the listening socket handed over for --listen_http is not bound to "
            "127.0.0.2:0: start the new process with the same listeners");
  CloseAll(old_sockets->fds);
}

// A classic BPF interpreter for the instructions SteeringProgram uses, over
// a packet whose network header is `ip` (SKF_NET_OFF-relative loads).
uint32_t RunSteering(const std::vector<sock_filter>& code, const std::vector<uint8_t>& ip) {
  uint32_t a = 0;
  auto at = [&](uint32_t k, size_t size) {
    const size_t off = static_cast<size_t>(static_cast<int32_t>(k) - SKF_NET_OFF);
    EXPECT_LE(off + size, ip.size());
    uint32_t v = 0;
    for (size_t i = 0; i < size && off + i < ip.size(); ++i) v = (v << 8) | ip[off + i];
    return v;
  };
  for (size_t pc = 0; pc < code.size(); ++pc) {
    const sock_filter& f = code[pc];
    switch (f.code) {
      case BPF_LD | BPF_B | BPF_ABS:
        a = at(f.k, 1);
        break;
      case BPF_LD | BPF_W | BPF_ABS:
        a = at(f.k, 4);
        break;
      case BPF_ALU | BPF_RSH | BPF_K:
        a >>= f.k;
        break;
      case BPF_ALU | BPF_MUL | BPF_K:
        a *= f.k;
        break;
      case BPF_JMP | BPF_JEQ | BPF_K:
        pc += a == f.k ? f.jt : f.jf;
        break;
      case BPF_JMP | BPF_JA:
        pc += f.k;
        break;
      case BPF_RET | BPF_A:
        return a;
      default:
        ADD_FAILURE() << "unexpected instruction " << f.code;
        return ~0u;
    }
  }
  ADD_FAILURE() << "program ran off its end";
  return ~0u;
}

std::vector<uint8_t> IpHeader(const policy::IpAddress& src, bool v6) {
  if (!v6) {
    std::vector<uint8_t> h(20, 0);
    h[0] = 0x45;
    for (int i = 0; i < 4; ++i) h[12 + i] = src.bytes[12 + i];
    return h;
  }
  std::vector<uint8_t> h(40, 0);
  h[0] = 0x60;
  for (int i = 0; i < 16; ++i) h[8 + i] = src.bytes[i];
  return h;
}

// The program picks the worker policy::SteeringSlot does, for IPv4 and IPv6
// sources, so the limit tables' stripes and the worker agree.
TEST(ListenersTest, SteeringProgramPicksTheWorkerThePolicyExpects) {
  for (int workers : {2, 3, 4, 7, 16, 64}) {
    std::vector<sock_filter> code = SteeringProgram(workers);
    std::array<int, 64> seen{};
    for (uint32_t i = 0; i < 2000; ++i) {
      for (bool v6 : {false, true}) {
        policy::IpAddress src = *policy::IpAddress::Parse(v6 ? "2001:db8::" : "10.0.0.0");
        src.bytes[13] = static_cast<uint8_t>(i * 7);
        src.bytes[14] = static_cast<uint8_t>(i >> 8);
        src.bytes[15] = static_cast<uint8_t>(i);
        const uint32_t want = policy::SteeringSlot(policy::SteeringHash(src), workers);
        const uint32_t got = RunSteering(code, IpHeader(src, v6));
        ASSERT_EQ(got, want) << "workers " << workers << " source " << src.ToString();
        ++seen[got];
      }
    }
    for (int w = 0; w < workers; ++w) EXPECT_GT(seen[w], 0) << workers;
  }
}

// The kernel runs the program: connections from several loopback sources
// each arrive at the worker SteeringSlot names.
TEST(ListenersTest, KernelSteersEachSourceToItsWorker) {
  constexpr int kWorkers = 3;
  Config c = LoopbackConfig("127.0.0.1:0");
  std::vector<ListenerSpec> specs = ListenerSpecs(&c);
  absl::StatusOr<ListenSockets> s = OpenListeners(&specs, kWorkers, {}, &c);
  ASSERT_TRUE(s.ok()) << s.status();
  if (!AttachSteering(s->fds[0], kWorkers)) {
    CloseAll(s->fds);
    GTEST_SKIP() << "SO_ATTACH_REUSEPORT_CBPF refused by this kernel";
  }
  for (int k = 1; k <= 12; ++k) {
    const std::string source = absl::StrCat("127.0.0.", k);
    int client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(client, 0);
    SocketAddress from = Addr(source + ":0");
    ASSERT_EQ(bind(client, from.get(), from.len), 0) << strerror(errno);
    ASSERT_EQ(connect(client, c.listen_http.get(), c.listen_http.len), 0) << strerror(errno);
    std::vector<pollfd> fds;
    for (int fd : s->fds) fds.push_back({fd, POLLIN, 0});
    ASSERT_EQ(poll(fds.data(), fds.size(), 2000), 1) << source;
    int arrived = -1;
    for (int w = 0; w < kWorkers; ++w) {
      if (fds[w].revents & POLLIN) arrived = w;
    }
    const uint32_t want =
        policy::SteeringSlot(policy::SteeringHash(*policy::IpAddress::Parse(source)), kWorkers);
    EXPECT_EQ(arrived, static_cast<int>(want)) << source;
    if (arrived >= 0) close(accept(s->fds[arrived], nullptr, nullptr));
    close(client);
  }
  CloseAll(s->fds);
}

}  // namespace
}  // namespace sluice::core
