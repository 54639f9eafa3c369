// The fixture of the fair-queue tests (fair_queue_test.cc and
// fair_queue_load_test.cc): a simulator that runs 2 generations at once,
// sluice in front with slots=2 and a keys file, and the requests they send.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/integration/json_lite.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {

using Headers = std::vector<std::pair<std::string, std::string>>;

// The simulator's counters of its model llama3.
struct ModelStats {
  int64_t requests = -1;
  int64_t running = -1;
  int64_t waiting = -1;
  int64_t max_running = -1;
  int64_t queued = -1;
  std::string text;  // the whole answer, for failure messages
};

inline absl::StatusOr<ModelStats> FetchModelStats(int sim_port) {
  auto r = Exchange(sim_port, BuildRequest("GET", "/sim/stats"));
  if (!r.ok()) return r.status();
  std::optional<JsonValue> json = JsonValue::Parse(r->body);
  const JsonValue* models = json.has_value() ? json->Get("models") : nullptr;
  if (models == nullptr) return absl::InternalError(absl::StrCat("no models in ", r->body));
  for (const auto& [name, m] : models->members()) {
    if (!absl::StartsWith(name, "llama3")) continue;
    ModelStats s;
    s.requests = m.GetInt("requests").value_or(-1);
    s.running = m.GetInt("running").value_or(-1);
    s.waiting = m.GetInt("waiting").value_or(-1);
    s.max_running = m.GetInt("max_running").value_or(-1);
    s.queued = m.GetInt("queued").value_or(-1);
    s.text = r->body;
    return s;
  }
  return absl::NotFoundError(absl::StrCat("no llama3 in ", r->body));
}

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
  // `backend_options` (slots=2 unless a test says otherwise) and `args`.
  void Start(std::vector<std::string> args = {}, const std::string& backend_options = " slots=2") {
    auto sim = StartSim({"--models=llama3", "--num_parallel=2"});
    ASSERT_TRUE(sim.ok()) << sim.status();
    sim_ = std::move(*sim);
    args.push_back(absl::StrCat("--upstream=127.0.0.1:", sim_->port(), backend_options));
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
