// The fixture of the fair-queue tests (fair_queue_test.cc and
// fair_queue_load_test.cc): a simulator that runs 2 generations at once,
// sluice in front with slots=2 and a keys file, and the requests they send.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {

using Headers = std::vector<std::pair<std::string, std::string>>;

class FairQueue : public ProxyTest {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "sluice-fair-",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name(), "-",
                        getpid());
    RunShell(absl::StrCat("rm -rf ", ShellQuote(dir_), " && mkdir -p ", ShellQuote(dir_)),
             absl::Seconds(5));
  }
  void TearDown() override {
    ProxyTest::TearDown();
    RunShell(absl::StrCat("rm -rf ", ShellQuote(dir_)), absl::Seconds(5));
  }
  std::string keys() const { return dir_ + "/keys.txt"; }
  std::string AddKey(const std::string& name) {
    CommandResult r =
        RunProgram(SluiceBinary(), {"keys", "add", name, "--keys_file", keys()}, absl::Seconds(10));
    EXPECT_EQ(r.exit.code, 0) << r.err;
    return std::string(absl::StripAsciiWhitespace(r.out));
  }

  // A simulator running 2 generations at once and sluice in front with
  // slots=2 and `args`.
  void Start(std::vector<std::string> args = {}) {
    auto sim = StartSim({"--models=llama3", "--num_parallel=2"});
    ASSERT_TRUE(sim.ok()) << sim.status();
    sim_ = std::move(*sim);
    args.push_back(absl::StrCat("--upstream=127.0.0.1:", sim_->port(), " slots=2"));
    args.push_back("--keys_file=" + keys());
    args.push_back("--rate_generation=off");
    auto sluice = StartSluice(sim_->port(), args);
    ASSERT_TRUE(sluice.ok()) << sluice.status();
    sluice_ = std::move(*sluice);
  }

  // A non-streamed generation of `tokens` tokens `delay_ms` apart.
  static std::string Generate(const std::string& key, int tokens, int delay_ms) {
    return BuildRequest("POST", "/api/generate",
                        {{"Authorization", "Bearer " + key},
                         {"X-Sim-Tokens", absl::StrCat(tokens)},
                         {"X-Sim-Token-Delay-Ms", absl::StrCat(delay_ms)}},
                        R"({"model":"llama3","prompt":"hi","stream":false})");
  }
  // `n` connections to sluice, each sending `request`; their answers are
  // read later.
  void SendEach(int n, const std::string& request,
                std::vector<std::unique_ptr<HttpConnection>>* conns) {
    for (int i = 0; i < n; ++i) {
      IT_ASSERT_OK_AND_ASSIGN(auto c, HttpConnection::Connect(proxy_port()));
      IT_ASSERT_OK(c->Send(request));
      conns->push_back(std::move(c));
    }
  }
  int64_t SimRequests() {
    absl::StatusOr<SimStats> s = FetchSimStats(sim_->port());
    return s.ok() ? s->requests : -1;
  }

  std::string dir_;
};

}  // namespace sluice::integration
