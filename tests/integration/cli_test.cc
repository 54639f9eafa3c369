// The command line: bad values exit 2 with one stderr line naming the flag;
// --help exits 0 and documents every flag.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
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

void PrintTo(const BadFlag& f, std::ostream* os) {
  *os << "--" << f.flag << "=" << f.value;
}

class SluiceCliBadFlag : public ::testing::TestWithParam<BadFlag> {};

TEST_P(SluiceCliBadFlag, ExitsTwoWithOneLineNamingTheFlag) {
  const BadFlag& bad = GetParam();
  // Port 0 so that a binary that wrongly accepts the value cannot collide
  // with anything; it is killed at the timeout.
  CommandResult res =
      RunProgram(SluiceBinary(),
                 {"--listen_http=127.0.0.1:0", "--listen_tls=", "--http_mode=serve",
                  "--upstream=127.0.0.1:9", "--auth=none",
                  absl::StrCat("--", bad.flag, "=", bad.value)},
                 absl::Seconds(5));
  ASSERT_FALSE(res.timed_out)
      << "sluice accepted --" << bad.flag << "=" << bad.value
      << " and kept running; stdout: " << res.out;
  EXPECT_TRUE(res.exit.exited);
  EXPECT_EQ(res.exit.code, 2) << "stderr: " << res.err;
  std::vector<absl::string_view> lines =
      absl::StrSplit(res.err, '\n', absl::SkipEmpty());
  EXPECT_EQ(lines.size(), 1u) << "stderr: " << res.err;
  EXPECT_TRUE(absl::StrContains(res.err, bad.flag)) << "stderr: " << res.err;
}

INSTANTIATE_TEST_SUITE_P(
    Values, SluiceCliBadFlag,
    ::testing::Values(
        BadFlag{"threads", "abc"}, BadFlag{"connect_timeout", "xyz"},
        BadFlag{"read_timeout", "soon"}, BadFlag{"send_timeout", "10parsecs"},
        BadFlag{"drain_timeout", "x"}, BadFlag{"keepalive_timeout", "y"},
        BadFlag{"client_header_timeout", "z"},
        BadFlag{"client_max_body_size", "lots"},
        BadFlag{"max_header_bytes", "12q"},
        BadFlag{"auth", "bogus"}, BadFlag{"rate_api", "10r/x"},
        BadFlag{"rate_generation", "10r/m burst=-1"}, BadFlag{"allow", "1.2.3.4/40"},
        BadFlag{"deny", "nope"}, BadFlag{"admin_cidrs", "::/200"},
        BadFlag{"trusted_proxies", "10.0.0.0/8,x"}, BadFlag{"cors_origins", "app.example"},
        BadFlag{"rate_by", "moon"}, BadFlag{"auth_attempts", "fast"}, BadFlag{"max_streams_per_ip", "-1"},
        BadFlag{"limit_table_entries", "5"}, BadFlag{"keys_file", "/nonexistent/keys"},
        BadFlag{"htpasswd", "/nonexistent/users"}, BadFlag{"rules_file", "/nonexistent/rules"},
        BadFlag{"upstream_keepalive", "many"},
        BadFlag{"listen_http", "nowhere"}, BadFlag{"upstream", "nohost"},
        BadFlag{"log_level", "loud"}, BadFlag{"http_mode", "sideways"},
        BadFlag{"listen_tls", "nowhere"}, BadFlag{"busy_poll", "1s"},
        BadFlag{"h2_max_concurrent_streams", "0"},
        BadFlag{"handshake_timeout", "fast"}),
    [](const ::testing::TestParamInfo<BadFlag>& info) {
      return std::string(info.param.flag);
    });

TEST(SluiceCli, HelpExitsZeroAndListsEveryFlag) {
  CommandResult res = RunProgram(SluiceBinary(), {"--help"}, absl::Seconds(5));
  ASSERT_FALSE(res.timed_out);
  EXPECT_TRUE(res.exit.exited);
  EXPECT_EQ(res.exit.code, 0) << res.err;
  for (const char* flag :
       {"listen_http", "threads", "upstream", "upstream_host",
        "upstream_keepalive", "connect_timeout", "read_timeout", "send_timeout",
        "client_max_body_size", "max_header_bytes", "drain_timeout",
        "keepalive_timeout", "client_header_timeout", "log_level",
        "listen_tls", "http_mode", "tls_cert", "tls_key", "tls_session_tickets",
        "hsts", "handshake_timeout", "h2_max_concurrent_streams", "busy_poll"}) {
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
  CommandResult res = RunProgram(
      SluiceBinary(),
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

}  // namespace
}  // namespace sluice::integration
