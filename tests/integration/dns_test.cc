// Backends given by DNS name (--upstream=ollama.test:PORT). sluice runs in
// a mount namespace of its own whose /etc/hosts is the test's file
// (unshare -m and a bind mount), so the test decides what a name resolves
// to without touching the machine's resolver configuration; rewriting the
// file in place changes what the next lookup sees.
#include <unistd.h>

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {
namespace {

class Dns : public ProxyTest {
 protected:
  void SetUp() override {
    CommandResult probe = RunProgram("/usr/bin/unshare", {"-m", "true"}, absl::Seconds(5));
    if (probe.exit.code != 0) {
      GTEST_SKIP() << "needs a private mount namespace (root): unshare -m failed: " << probe.err;
    }
    hosts_ = absl::StrCat(::testing::TempDir(), "sluice-dns-hosts-", getpid());
    WriteHosts("");
  }
  void TearDown() override {
    ProxyTest::TearDown();
    if (sim_b_) sim_b_->Terminate();
    unlink(hosts_.c_str());
  }
  // Rewrites the hosts file in place (the bind mount follows the inode).
  void WriteHosts(const std::string& lines) {
    std::ofstream out(hosts_, std::ios::trunc);
    out << "127.0.0.1 localhost\n" << lines;
  }
  // sluice with `args`, its /etc/hosts being the test's file.
  void StartSluiceWithHosts(const std::vector<std::string>& args) {
    std::string command = absl::StrCat("mount --bind ", ShellQuote(hosts_), " /etc/hosts && exec ",
                                       ShellQuote(SluiceBinary()));
    for (const std::string& a :
         {std::string("--listen_http=127.0.0.1:0"), std::string("--listen_tls="),
          std::string("--http_mode=serve"), std::string("--threads=1"), std::string("--auth=none"),
          std::string("--rate_generation=off"), std::string("--rate_api=off")}) {
      absl::StrAppend(&command, " ", ShellQuote(a));
    }
    for (const std::string& a : args) absl::StrAppend(&command, " ", ShellQuote(a));
    auto child = ChildProcess::Spawn("/usr/bin/unshare",
                                     {"-m", "--propagation", "private", "/bin/sh", "-c", command});
    ASSERT_TRUE(child.ok()) << child.status();
    sluice_ = std::move(*child);
    absl::Status st = sluice_->WaitListening(absl::Seconds(10));
    ASSERT_TRUE(st.ok()) << st << "\n" << sluice_->Stderr();
  }
  // The requests a simulator on `host`:`port` counted.
  int64_t Requests(int port, const std::string& host = "127.0.0.1") {
    CommandResult r = RunProgram(
        "/usr/bin/curl",
        {"-s", "--max-time", "5", absl::StrCat("http://", host, ":", port, "/sim/stats")},
        absl::Seconds(10));
    return FindJsonInt(r.out, "requests").value_or(-1);
  }
  int Status() {
    absl::StatusOr<HttpResponse> r =
        integration::Exchange(proxy_port(), BuildRequest("GET", "/api/version"));
    return r.ok() ? r->status : -1;
  }

  std::string hosts_;
  std::unique_ptr<ChildProcess> sim_b_;
};

// The name moves from one address to another: within --resolve_interval
// the requests follow it (the idle links to the old address close).
TEST_F(Dns, RequestsFollowTheNameToItsNewAddress) {
  auto a = StartSim({"--listen=127.0.0.1:0"});
  ASSERT_TRUE(a.ok()) << a.status();
  sim_ = std::move(*a);
  const int port = sim_->port();
  auto b = StartSim({absl::StrCat("--listen=127.0.0.2:", port)});
  ASSERT_TRUE(b.ok()) << b.status();
  sim_b_ = std::move(*b);
  WriteHosts("127.0.0.1 ollama.test\n");
  ASSERT_NO_FATAL_FAILURE(
      StartSluiceWithHosts({absl::StrCat("--upstream=ollama.test:", port),
                            "--upstream_host=localhost", "--resolve_interval=200ms"}));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Status(), 200);
  EXPECT_EQ(Requests(port), 3);
  WriteHosts("127.0.0.2 ollama.test\n");
  absl::SleepFor(absl::Milliseconds(700));
  const int64_t b_before = Requests(port, "127.0.0.2");
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Status(), 200);
  EXPECT_EQ(Requests(port), 3) << "nothing more to the old address";
  EXPECT_EQ(Requests(port, "127.0.0.2") - b_before, 3);
}

// A name that does not resolve yet at start (a service that comes up
// later) is no start-up error: its requests get 503 until it resolves.
TEST_F(Dns, NameThatResolvesLaterIs503UntilItDoes) {
  auto a = StartSim({});
  ASSERT_TRUE(a.ok()) << a.status();
  sim_ = std::move(*a);
  ASSERT_NO_FATAL_FAILURE(
      StartSluiceWithHosts({absl::StrCat("--upstream=later.test:", sim_->port()),
                            "--upstream_host=localhost", "--resolve_interval=200ms"}));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r,
                          integration::Exchange(proxy_port(), BuildRequest("GET", "/api/version")));
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body, "{\"error\":\"no Ollama backend available\"}\n");
  EXPECT_TRUE(r.Header("retry-after").has_value());
  EXPECT_NE(sluice_->Stderr().find("later.test does not resolve yet"), std::string::npos)
      << sluice_->Stderr();
  WriteHosts("127.0.0.1 later.test\n");
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  int status = 0;
  while (absl::Now() < deadline && (status = Status()) != 200) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(status, 200);
}

// A refused connect asks for the name again at once, whatever
// --resolve_interval says: the backend moved, and within about a second
// the requests reach it there.
TEST_F(Dns, ConnectFailureResolvesTheNameAgain) {
  auto a = StartSim({"--listen=127.0.0.1:0"});
  ASSERT_TRUE(a.ok()) << a.status();
  sim_ = std::move(*a);
  const int port = sim_->port();
  WriteHosts("127.0.0.1 ollama.test\n");
  ASSERT_NO_FATAL_FAILURE(
      StartSluiceWithHosts({absl::StrCat("--upstream=ollama.test:", port),
                            "--upstream_host=localhost", "--resolve_interval=1h"}));
  EXPECT_EQ(Status(), 200);
  sim_->Terminate();
  auto b = StartSim({absl::StrCat("--listen=127.0.0.2:", port)});
  ASSERT_TRUE(b.ok()) << b.status();
  sim_b_ = std::move(*b);
  WriteHosts("127.0.0.2 ollama.test\n");
  EXPECT_EQ(Status(), 502) << "the old address refuses";
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  int status = 0;
  while (absl::Now() < deadline && (status = Status()) != 200) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(status, 200);
}

}  // namespace
}  // namespace sluice::integration
