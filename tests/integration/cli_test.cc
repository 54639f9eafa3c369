// The command line: bad values exit 2 with one stderr line naming the flag;
// --help exits 0 and documents every flag.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"

namespace sluice::integration {
namespace {

struct BadFlag {
  const char* flag;
  const char* value;
};

void PrintTo(const BadFlag& f, std::ostream* os) { *os << "--" << f.flag << "=" << f.value; }

class SluiceCliBadFlag : public ::testing::TestWithParam<BadFlag> {};

TEST_P(SluiceCliBadFlag, ExitsTwoWithOneLineNamingTheFlag) {
  const BadFlag& bad = GetParam();
  // Port 0 so that a binary that wrongly accepts the value cannot collide
  // with anything; it is killed at the timeout.
  CommandResult res = RunProgram(
      SluiceBinary(),
      {"--listen_http=127.0.0.1:0", "--listen_tls=", "--http_mode=serve", "--upstream=127.0.0.1:9",
       "--auth=none", absl::StrCat("--", bad.flag, "=", bad.value)},
      absl::Seconds(5));
  ASSERT_FALSE(res.timed_out) << "sluice accepted --" << bad.flag << "=" << bad.value
                              << " and kept running; stdout: " << res.out;
  EXPECT_TRUE(res.exit.exited);
  EXPECT_EQ(res.exit.code, 2) << "stderr: " << res.err;
  std::vector<absl::string_view> lines = absl::StrSplit(res.err, '\n', absl::SkipEmpty());
  EXPECT_EQ(lines.size(), 1u) << "stderr: " << res.err;
  EXPECT_TRUE(absl::StrContains(res.err, bad.flag)) << "stderr: " << res.err;
}

INSTANTIATE_TEST_SUITE_P(
    Values, SluiceCliBadFlag,
    ::testing::Values(
        BadFlag{"threads", "abc"}, BadFlag{"connect_timeout", "xyz"},
        BadFlag{"read_timeout", "soon"}, BadFlag{"send_timeout", "10parsecs"},
        BadFlag{"drain_timeout", "x"}, BadFlag{"keepalive_timeout", "y"},
        BadFlag{"client_header_timeout", "z"}, BadFlag{"client_max_body_size", "lots"},
        BadFlag{"max_header_bytes", "12q"}, BadFlag{"auth", "bogus"}, BadFlag{"rate_api", "10r/x"},
        BadFlag{"rate_generation", "10r/m burst=-1"}, BadFlag{"allow", "1.2.3.4/40"},
        BadFlag{"deny", "nope"}, BadFlag{"admin_cidrs", "::/200"},
        BadFlag{"trusted_proxies", "10.0.0.0/8,x"}, BadFlag{"cors_origins", "app.example"},
        BadFlag{"rate_by", "moon"}, BadFlag{"auth_attempts", "fast"},
        BadFlag{"max_streams_per_ip", "-1"}, BadFlag{"limit_table_entries", "5"},
        BadFlag{"keys_file", "/nonexistent/keys"}, BadFlag{"htpasswd", "/nonexistent/users"},
        BadFlag{"rules_file", "/nonexistent/rules"}, BadFlag{"upstream_keepalive", "many"},
        BadFlag{"upstream_max_idle", "0"}, BadFlag{"balance", "random"},
        BadFlag{"listen_http", "nowhere"}, BadFlag{"upstream", "nohost"},
        BadFlag{"log_level", "loud"}, BadFlag{"http_mode", "sideways"},
        BadFlag{"listen_tls", "nowhere"}, BadFlag{"busy_poll", "1s"},
        BadFlag{"h2_max_concurrent_streams", "0"}, BadFlag{"handshake_timeout", "fast"},
        BadFlag{"queue_timeout", "forever"}, BadFlag{"queue_per_key", "0"},
        BadFlag{"queue_max", "-5"}),
    [](const ::testing::TestParamInfo<BadFlag>& info) { return std::string(info.param.flag); });

TEST(SluiceCli, HelpExitsZeroAndListsEveryFlag) {
  CommandResult res = RunProgram(SluiceBinary(), {"--help"}, absl::Seconds(5));
  ASSERT_FALSE(res.timed_out);
  EXPECT_TRUE(res.exit.exited);
  EXPECT_EQ(res.exit.code, 0) << res.err;
  for (const char* flag : {"listen_http",
                           "threads",
                           "upstream",
                           "upstream_host",
                           "upstream_keepalive",
                           "upstream_max_idle",
                           "queue_timeout",
                           "queue_per_key",
                           "queue_max",
                           "balance",
                           "upstream_max_fails",
                           "upstream_fail_timeout",
                           "health_interval",
                           "health_timeout",
                           "connect_timeout",
                           "read_timeout",
                           "send_timeout",
                           "client_max_body_size",
                           "max_header_bytes",
                           "drain_timeout",
                           "keepalive_timeout",
                           "client_header_timeout",
                           "log_level",
                           "listen_tls",
                           "http_mode",
                           "tls_cert",
                           "tls_key",
                           "tls_session_tickets",
                           "hsts",
                           "handshake_timeout",
                           "h2_max_concurrent_streams",
                           "busy_poll"}) {
    EXPECT_TRUE(absl::StrContains(res.out, absl::StrCat("--", flag)))
        << "--help does not mention --" << flag << "\nstdout:\n"
        << res.out;
  }
}

// A port already taken (by a socket without SO_REUSEPORT, so sluice cannot
// share it): a clear error naming the flag, not a crash.
TEST(SluiceCli, ListenFailureIsReported) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  CommandResult res = RunProgram(SluiceBinary(),
                                 {absl::StrCat("--listen_http=127.0.0.1:", ntohs(addr.sin_port)),
                                  "--listen_tls=", "--http_mode=serve", "--upstream=127.0.0.1:9",
                                  "--threads=1", "--auth=none"},
                                 absl::Seconds(5));
  close(fd);
  ASSERT_FALSE(res.timed_out) << "listening on a taken port succeeded?";
  EXPECT_TRUE(res.exit.exited);
  EXPECT_NE(res.exit.code, 0);
  EXPECT_TRUE(absl::StrContains(res.err, "listen_http")) << res.err;
}

// Runs sluice in front of 127.0.0.1:9 with `args` after the defaults below
// (each flag given once: later ones win); killed after 5 s.
CommandResult RunSluiceCli(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"--listen_tls=", "--http_mode=serve", "--upstream=127.0.0.1:9",
                                   "--threads=1", "--auth=none"};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunProgram(SluiceBinary(), argv, absl::Seconds(5));
}

// How a sluice that must not start ended: exit `code`, one stderr line
// holding each of `needles`.
void ExpectOneLineExit(const CommandResult& res, int code,
                       const std::vector<std::string>& needles) {
  ASSERT_FALSE(res.timed_out) << "sluice started; stdout: " << res.out;
  EXPECT_TRUE(res.exit.exited);
  EXPECT_EQ(res.exit.code, code) << res.err;
  std::vector<absl::string_view> lines = absl::StrSplit(res.err, '\n', absl::SkipEmpty());
  EXPECT_EQ(lines.size(), 1u) << res.err;
  for (const std::string& n : needles) {
    EXPECT_TRUE(absl::StrContains(res.err, n)) << "no '" << n << "' in: " << res.err;
  }
}

// A listening socket of this process (another program, as sluice sees it)
// on `addr` with SO_REUSEPORT set, as nginx's `reuseport` or Envoy's
// listeners set it; returns the fd and the port.
std::pair<int, int> ReusePortListener(int family, const char* host) {
  int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return {-1, 0};
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  sockaddr_storage ss{};
  socklen_t len;
  if (family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    inet_pton(AF_INET6, host, &a->sin6_addr);
    len = sizeof(*a);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    inet_pton(AF_INET, host, &a->sin_addr);
    len = sizeof(*a);
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(fd, 16) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    close(fd);
    return {-1, 0};
  }
  const int port = family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                      : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return {fd, port};
}

// A second sluice on the address of a running one (say, to try a config
// with --auth=none) used to join its SO_REUSEPORT group and take part of
// its connections. It must exit 1 naming the address; the first one keeps
// every connection.
TEST(SluiceCliAddressInUse, SecondSluiceExitsOneAndTheFirstKeepsServing) {
  auto sim = StartSim();
  ASSERT_TRUE(sim.ok()) << sim.status();
  auto first = StartSluice((*sim)->port(), {"--threads=2"});
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string address = absl::StrCat("127.0.0.1:", (*first)->port());
  for (const char* threads : {"--threads=1", "--threads=2"}) {
    SCOPED_TRACE(threads);
    CommandResult res = RunSluiceCli({"--listen_http=" + address, threads,
                                      absl::StrCat("--upstream=127.0.0.1:", (*sim)->port())});
    ExpectOneLineExit(res, 1, {"--listen_http", address, "address already in use"});
  }
  // The first one still serves, alone.
  for (int i = 0; i < 20; ++i) {
    auto r = Exchange((*first)->port(), BuildRequest("GET", "/api/version"));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 200) << r->body;
  }
  EXPECT_TRUE((*first)->running());
}

// Listeners of other programs: a plain one (python's http.server, where
// Python is installed) and SO_REUSEPORT ones on IPv4 and IPv6, which a
// sluice of the same user could join without the check.
TEST(SluiceCliAddressInUse, ListenerOfAnotherProgramIsNamed) {
  if (RunShell("command -v python3", absl::Seconds(5)).exit.code == 0) {
    const int port = UnusedPort();
    ASSERT_GT(port, 0);
    auto py = ChildProcess::Spawn(
        "/bin/sh", {"-c", absl::StrCat("exec python3 -m http.server ", port, " --bind 127.0.0.1")});
    ASSERT_TRUE(py.ok()) << py.status();
    // Up once a connection is accepted.
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    bool up = false;
    while (!up && absl::Now() < deadline && (*py)->running()) {
      up = HttpConnection::Connect(port, absl::Milliseconds(200)).ok();
      if (!up) absl::SleepFor(absl::Milliseconds(50));
    }
    ASSERT_TRUE(up) << (*py)->Stderr();
    const std::string address = absl::StrCat("127.0.0.1:", port);
    ExpectOneLineExit(RunSluiceCli({"--listen_http=" + address}), 1,
                      {"--listen_http", address, "address already in use"});
    (*py)->Terminate();
  }

  auto [fd4, port4] = ReusePortListener(AF_INET, "127.0.0.1");
  ASSERT_GE(fd4, 0) << strerror(errno);
  const std::string address4 = absl::StrCat("127.0.0.1:", port4);
  ExpectOneLineExit(RunSluiceCli({"--listen_http=" + address4}), 1,
                    {"--listen_http", address4, "address already in use"});
  // The wildcard address covers 127.0.0.1 too.
  ExpectOneLineExit(RunSluiceCli({absl::StrCat("--listen_http=0.0.0.0:", port4)}), 1,
                    {"--listen_http", absl::StrCat("0.0.0.0:", port4), "already in use"});
  close(fd4);

  auto [fd6, port6] = ReusePortListener(AF_INET6, "::1");
  if (fd6 < 0) GTEST_SKIP() << "no IPv6 loopback here";
  const std::string address6 = absl::StrCat("[::1]:", port6);
  ExpectOneLineExit(RunSluiceCli({"--listen_http=" + address6}), 1,
                    {"--listen_http", address6, "address already in use"});
  close(fd6);
}

// The plain and TLS listeners on one address would share one SO_REUSEPORT
// group, each taking part of the other's clients.
TEST(SluiceCli, OneAddressForBothListenersIsRefused) {
  const std::string address = absl::StrCat("127.0.0.1:", UnusedPort());
  ExpectOneLineExit(RunSluiceCli({"--listen_http=" + address, "--listen_tls=" + address,
                                  "--tls_cert=/nonexistent.pem", "--tls_key=/nonexistent.key"}),
                    2, {"--listen_tls", address, "--listen_http"});
}

// --upstream is host:port: a URL is refused with what to write instead.
TEST(SluiceCli, UpstreamUrlIsRefusedNamingTheFlag) {
  struct Case {
    const char* value;
    std::vector<std::string> needles;
  };
  const std::vector<Case> cases = {
      {"http://127.0.0.1:11434", {"--upstream", "without a scheme", "write '127.0.0.1:11434'"}},
      {"https://ollama.example:443",
       {"--upstream", "without a scheme", "write 'ollama.example:443'", "plain HTTP"}},
      {"127.0.0.1:11434/api", {"--upstream", "without a path", "write '127.0.0.1:11434'"}},
      {"127.0.0.1:11434/", {"--upstream", "without a path"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.value);
    ExpectOneLineExit(
        RunSluiceCli({"--listen_http=127.0.0.1:0", absl::StrCat("--upstream=", c.value)}), 2,
        c.needles);
  }
}

// Words that are not flags are refused: most often the value of a boolean
// flag written "--flag value", which was silently lost.
TEST(SluiceCli, PositionalArgumentsAreRefused) {
  ExpectOneLineExit(RunSluiceCli({"--listen_http=127.0.0.1:0", "--metrics", "false"}), 2,
                    {"unexpected argument 'false'", "--name=value"});
  ExpectOneLineExit(RunSluiceCli({"--listen_http=127.0.0.1:0", "serve"}), 2,
                    {"unexpected argument 'serve'"});
  ExpectOneLineExit(RunSluiceCli({"--listen_http=127.0.0.1:0", "--", "extra"}), 2,
                    {"unexpected argument 'extra'"});
}

// A flagfile holds one argument a line, so "--name value" (the command
// line's other form) cannot work there: the message says what to write.
TEST(SluiceCli, FlagfileNameSpaceValueSaysWriteNameEqualsValue) {
  const std::string path =
      absl::StrCat(::testing::TempDir(), "sluice-flagfile-", getpid(), ".conf");
  {
    std::ofstream out(path);
    out << "# comment\n--listen_http=127.0.0.1:0\n--threads  2\n";
  }
  ExpectOneLineExit(RunSluiceCli({"--flagfile=" + path}), 2,
                    {absl::StrCat(path, ":3"), "write --threads=2", "'--threads  2'"});
  unlink(path.c_str());
}

}  // namespace
}  // namespace sluice::integration
