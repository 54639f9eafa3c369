// Zero-downtime restart (SIGUSR2, core/server/restart.h) through the real binary:
// the running process starts the binary at its path again with the
// listening sockets handed over, then drains and exits once the new one
// serves. Under load no connection is refused and no request fails;
// streams in flight finish on the old process. A new binary that fails to
// start leaves the old one serving; a replaced binary takes over (upgrade).
//
// The new process is a child of the old one; this test process makes
// itself a subreaper so that it inherits (and stops, and reaps) it.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {
namespace {

class Restart : public ProxyTest {
 protected:
  void SetUp() override {
    expect_sluice_exit_ = true;
    ASSERT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  }
  void TearDown() override {
    for (pid_t pid : successors_) {
      if (kill(pid, SIGTERM) == 0) {
        for (int i = 0; i < 100 && waitpid(pid, nullptr, WNOHANG) == 0; ++i) {
          absl::SleepFor(absl::Milliseconds(50));
        }
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
      }
    }
    ProxyTest::TearDown();
    if (!dir_.empty()) {
      RunShell(absl::StrCat("rm -rf ", ShellQuote(dir_)), absl::Seconds(10));
    }
  }

  // The PIDs the old process logged as "started new process N", in order.
  std::vector<pid_t> NewProcesses() {
    std::vector<pid_t> out;
    static const std::regex kLine("started new process ([0-9]+)");
    const std::string err = sluice_->Stderr();
    for (std::sregex_iterator it(err.begin(), err.end(), kLine), end; it != end; ++it) {
      out.push_back(static_cast<pid_t>(std::stoi((*it)[1].str())));
    }
    return out;
  }

  // Waits for the old process to exit 0 after handing over; records the
  // new one for TearDown.
  void ExpectHandedOver(absl::Duration timeout) {
    std::optional<ExitInfo> exit = sluice_->WaitExit(timeout);
    ASSERT_TRUE(exit.has_value()) << "the old process still runs after the restart";
    EXPECT_TRUE(exit->exited && exit->code == 0)
        << "old process: code " << exit->code << " signal " << exit->signal;
    std::vector<pid_t> started = NewProcesses();
    ASSERT_FALSE(started.empty()) << sluice_->Stderr();
    successors_.push_back(started.back());
    EXPECT_EQ(kill(started.back(), 0), 0) << "the new process is not running";
    EXPECT_TRUE(absl::StrContains(sluice_->Stderr(), "new process")) << sluice_->Stderr();
  }

  std::vector<pid_t> successors_;
  std::string dir_;
};

int GetStatus(int port) {
  auto r = Exchange(port, BuildRequest("GET", "/api/version"), absl::Seconds(5));
  return r.ok() ? r->status : 0;
}

// Under load from new-connection clients, keepalive clients and streams in
// flight, a restart refuses nothing and fails nothing.
TEST_F(Restart, UnderLoadNothingIsRefusedOrLost) {
  ASSERT_NO_FATAL_FAILURE(StartStack({"--threads=2"}, {"--threads=2"}));
  const int port = proxy_port();

  // Two streams begun before the restart finish on the old process.
  constexpr int kStreams = 2;
  std::vector<std::unique_ptr<HttpConnection>> streams;
  for (int i = 0; i < kStreams; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(auto c, HttpConnection::Connect(port));
    IT_ASSERT_OK(c->Send(BuildRequest("POST", "/api/generate",
                                      {{"Content-Type", "application/json"},
                                       {"X-Sim-Tokens", "30"},
                                       {"X-Sim-Token-Delay-Ms", "50"}},
                                      R"({"model":"sim","prompt":"hi"})")));
    streams.push_back(std::move(c));
  }

  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, bad{0};
  std::mutex mu;
  std::vector<std::string> failures;
  auto fail = [&](std::string what) {
    ++bad;
    std::lock_guard<std::mutex> lock(mu);
    if (failures.size() < 5) failures.push_back(std::move(what));
  };
  std::vector<std::thread> clients;
  // A new connection per request.
  for (int t = 0; t < 3; ++t) {
    clients.emplace_back([&] {
      for (int i = 0; i < 20000 && !stop.load(); ++i) {
        auto r = Exchange(port, BuildRequest("GET", "/api/version"), absl::Seconds(5));
        if (r.ok() && r->status == 200) {
          ++ok;
        } else {
          fail(r.ok() ? absl::StrCat("new connection: status ", r->status)
                      : absl::StrCat("new connection: ", r.status().ToString()));
        }
      }
    });
  }
  // Keepalive: one connection until the server says Connection: close,
  // then a new one, as HTTP/1.1 clients do.
  for (int t = 0; t < 2; ++t) {
    clients.emplace_back([&] {
      std::unique_ptr<HttpConnection> conn;
      for (int i = 0; i < 20000 && !stop.load(); ++i) {
        if (conn == nullptr) {
          auto c = HttpConnection::Connect(port);
          if (!c.ok()) {
            fail(absl::StrCat("keepalive connect: ", c.status().ToString()));
            continue;
          }
          conn = std::move(*c);
        }
        absl::Status st = conn->Send(BuildRequest("GET", "/api/version"));
        auto r = st.ok() ? conn->ReadResponse(absl::Seconds(5)) : absl::StatusOr<HttpResponse>(st);
        if (r.ok() && r->status == 200) {
          ++ok;
          if (r->Header("Connection") == "close") conn.reset();
        } else {
          fail(r.ok() ? absl::StrCat("keepalive: status ", r->status)
                      : absl::StrCat("keepalive: ", r.status().ToString()));
          conn.reset();
        }
      }
    });
  }

  absl::SleepFor(absl::Milliseconds(300));
  const int before = ok.load();
  ASSERT_TRUE(sluice_->Signal(SIGUSR2));
  ASSERT_NO_FATAL_FAILURE(ExpectHandedOver(absl::Seconds(10)));
  const int during = ok.load() - before;
  absl::SleepFor(absl::Milliseconds(300));
  stop = true;
  for (std::thread& t : clients) t.join();

  for (const std::string& f : failures) ADD_FAILURE() << f;
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(before, 20);
  EXPECT_GT(during, 0);
  std::cout << "[ measure  ] requests " << ok.load() << " ok, " << bad.load() << " failed; "
            << during << " while the old process handed over\n";

  // The streams ran to their end on the old process before it exited.
  for (int i = 0; i < kStreams; ++i) {
    auto r = streams[i]->ReadResponse(absl::Seconds(5));
    ASSERT_TRUE(r.ok()) << "stream " << i << ": " << r.status();
    EXPECT_EQ(r->status, 200);
    EXPECT_TRUE(r->saw_last_chunk && absl::StrContains(r->body, "tok30 ") &&
                absl::StrContains(r->body, "\"done\":true"))
        << "stream " << i << ": " << r->body;
  }
  // The new process serves on the same port.
  EXPECT_EQ(GetStatus(port), 200);
}

// The binary at the path is replaced: first by one that cannot start (the
// old process keeps serving and says why), then by a working one, which
// takes over (an upgrade in place).
TEST_F(Restart, FailedStartKeepsTheOldProcessAndAnUpgradeTakesOver) {
  dir_ = absl::StrCat(::testing::TempDir(), "sluice-restart-", getpid());
  const std::string bin = dir_ + "/sluice";
  CommandResult cp =
      RunShell(absl::StrCat("rm -rf ", ShellQuote(dir_), " && mkdir -p ", ShellQuote(dir_),
                            " && cp ", ShellQuote(SluiceBinary()), " ", ShellQuote(bin)),
               absl::Seconds(10));
  ASSERT_TRUE(cp.exit.exited && cp.exit.code == 0) << cp.err;
  auto sim = StartSim();
  ASSERT_TRUE(sim.ok()) << sim.status();
  sim_ = std::move(*sim);
  auto sluice = StartSluiceAt(bin, sim_->port(), {});
  ASSERT_TRUE(sluice.ok()) << sluice.status();
  sluice_ = std::move(*sluice);
  const int port = proxy_port();
  ASSERT_EQ(GetStatus(port), 200);

  // A broken binary in its place (renamed over it, as package managers do).
  {
    std::ofstream broken(dir_ + "/broken");
    broken << "#!/bin/sh\necho 'cannot start' >&2\nexit 3\n";
  }
  ASSERT_EQ(chmod((dir_ + "/broken").c_str(), 0755), 0);
  ASSERT_EQ(rename((dir_ + "/broken").c_str(), bin.c_str()), 0);
  ASSERT_TRUE(sluice_->Signal(SIGUSR2));
  absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (absl::Now() < deadline && !absl::StrContains(sluice_->Stderr(), "keeps serving")) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(
      absl::StrContains(sluice_->Stderr(), "failed (exit status 3); this one keeps serving"))
      << sluice_->Stderr();
  EXPECT_TRUE(sluice_->running());
  EXPECT_EQ(GetStatus(port), 200);

  // The working binary back in place: the restart goes through.
  cp = RunShell(absl::StrCat("cp ", ShellQuote(SluiceBinary()), " ", ShellQuote(bin + ".new"),
                             " && mv ", ShellQuote(bin + ".new"), " ", ShellQuote(bin)),
                absl::Seconds(10));
  ASSERT_TRUE(cp.exit.exited && cp.exit.code == 0) << cp.err;
  ASSERT_TRUE(sluice_->Signal(SIGUSR2));
  ASSERT_NO_FATAL_FAILURE(ExpectHandedOver(absl::Seconds(10)));
  EXPECT_EQ(GetStatus(port), 200);
}

// A second SIGUSR2 while a restart is under way is ignored (one new
// process, not two).
TEST_F(Restart, OneRestartAtATime) {
  ASSERT_NO_FATAL_FAILURE(StartStack());
  ASSERT_TRUE(sluice_->Signal(SIGUSR2));
  ASSERT_TRUE(sluice_->Signal(SIGUSR2));
  ASSERT_NO_FATAL_FAILURE(ExpectHandedOver(absl::Seconds(10)));
  EXPECT_EQ(NewProcesses().size(), 1u) << sluice_->Stderr();
  EXPECT_EQ(GetStatus(proxy_port()), 200);
}

// On a fixed port, the handed-over sockets are the only shared ones: the
// new process takes them without the "address already in use" check that
// stops any other start on that address, and after the hand-over a fresh
// start on it is still refused.
TEST_F(Restart, FixedPortIsHandedOverAndStillRefusedToOthers) {
  auto sim = StartSim();
  ASSERT_TRUE(sim.ok()) << sim.status();
  sim_ = std::move(*sim);
  const int port = UnusedPort();
  ASSERT_GT(port, 0);
  const std::string address = absl::StrCat("127.0.0.1:", port);
  auto sluice = StartSluice(sim_->port(), {"--listen_http=" + address, "--threads=2"});
  ASSERT_TRUE(sluice.ok()) << sluice.status();
  sluice_ = std::move(*sluice);
  ASSERT_EQ(GetStatus(port), 200);
  ASSERT_TRUE(sluice_->Signal(SIGUSR2));
  ASSERT_NO_FATAL_FAILURE(ExpectHandedOver(absl::Seconds(10)));
  EXPECT_FALSE(absl::StrContains(sluice_->Stderr(), "already in use")) << sluice_->Stderr();
  EXPECT_EQ(GetStatus(port), 200);
  CommandResult other = RunProgram(
      SluiceBinary(),
      {"--listen_http=" + address, "--listen_tls=", "--http_mode=serve",
       absl::StrCat("--upstream=127.0.0.1:", sim_->port()), "--threads=1", "--auth=none"},
      absl::Seconds(5));
  ASSERT_FALSE(other.timed_out) << "a second instance started on " << address;
  EXPECT_EQ(other.exit.code, 1) << other.err;
  EXPECT_TRUE(absl::StrContains(other.err, address)) << other.err;
  EXPECT_EQ(GetStatus(port), 200);
}

}  // namespace
}  // namespace sluice::integration
