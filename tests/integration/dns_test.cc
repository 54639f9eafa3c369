// Backends given by DNS name (--upstream=ollama.test:PORT). sluice runs in
// a mount namespace of its own whose /etc/hosts is the test's file
// (unshare -m and a bind mount), so the test decides what a name resolves
// to without touching the machine's resolver configuration; rewriting the
// file in place changes what the next lookup sees.
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/integration/json_lite.h"
#include "tests/integration/prom_text.h"
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
    for (auto& sim : more_sims_) sim->Terminate();
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

  // A simulator on `host`:`port` (port 0: any) with `args`; its port.
  int StartSimAt(const std::string& host, int port, std::vector<std::string> args = {}) {
    args.push_back(absl::StrCat("--listen=", host, ":", port));
    auto sim = StartSim(args);
    EXPECT_TRUE(sim.ok()) << sim.status();
    if (!sim.ok()) return -1;
    const int bound = (*sim)->port();
    more_sims_.push_back(std::move(*sim));
    return bound;
  }
  // A model's counter ("requests", "loads") at the simulator on `host`.
  int64_t ModelCount(int port, const std::string& host, const std::string& model,
                     const std::string& what) {
    CommandResult r = RunProgram(
        "/usr/bin/curl",
        {"-s", "--max-time", "5", absl::StrCat("http://", host, ":", port, "/sim/stats")},
        absl::Seconds(10));
    std::optional<JsonValue> json = JsonValue::Parse(r.out);
    if (!json || !json->Get("models")) return -1;
    const JsonValue* m = json->Get("models")->Get(absl::StrCat(model, ":latest"));
    return m ? m->GetInt(what).value_or(-1) : 0;
  }
  // /status?format=json's backends: name to address ("" when none given).
  std::map<std::string, std::string> StatusBackends() {
    std::map<std::string, std::string> out;
    absl::StatusOr<HttpResponse> r =
        integration::Exchange(proxy_port(), BuildRequest("GET", "/status?format=json"));
    if (!r.ok()) return out;
    std::optional<JsonValue> json = JsonValue::Parse(r->body);
    if (!json || !json->Get("backends")) return out;
    for (const JsonValue& b : json->Get("backends")->array()) {
      out[b.GetString("name").value_or("?")] = b.Get("address") ? b.Get("address")->str() : "";
    }
    return out;
  }
  // `n` requests to /api/version, all answered 200.
  void Versions(int n) {
    for (int i = 0; i < n; ++i) ASSERT_EQ(Status(), 200) << i;
  }
  // Polls until `done` or 5 s pass.
  template <typename F>
  bool WaitFor(F done) {
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    while (absl::Now() < deadline) {
      if (done()) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return done();
  }

  std::string hosts_;
  std::unique_ptr<ChildProcess> sim_b_;
  std::vector<std::unique_ptr<ChildProcess>> more_sims_;
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

// Every address of a name is a backend of its own: requests spread over
// both (round robin), and /metrics, the status page and the access log name
// each (the first by the name as written, the second NAME#2).
TEST_F(Dns, EveryAddressOfTheNameIsABackend) {
  const int port = StartSimAt("127.0.0.2", 0);
  ASSERT_GT(port, 0);
  ASSERT_GT(StartSimAt("127.0.0.3", port), 0);
  WriteHosts("127.0.0.3 ollama.test\n127.0.0.2 ollama.test\n");
  const std::string log = absl::StrCat(::testing::TempDir(), "sluice-dns-", getpid(), ".log");
  unlink(log.c_str());
  const std::string name = absl::StrCat("ollama.test:", port);
  ASSERT_NO_FATAL_FAILURE(StartSluiceWithHosts({"--upstream=" + name, "--upstream_host=localhost",
                                                "--balance=round_robin", "--health_interval=0",
                                                "--access_log=" + log, "--access_log_flush=10ms"}));
  ASSERT_NO_FATAL_FAILURE(Versions(10));
  EXPECT_EQ(Requests(port, "127.0.0.2"), 5);
  EXPECT_EQ(Requests(port, "127.0.0.3"), 5);
  // In address order: 127.0.0.2 is the first.
  auto families = ScrapeMetrics(proxy_port());
  ASSERT_TRUE(families.ok()) << families.status();
  EXPECT_EQ(FindSample(*families, "sluice_backend_requests_total", {{"backend", name}}), 5);
  EXPECT_EQ(FindSample(*families, "sluice_backend_requests_total", {{"backend", name + "#2"}}), 5);
  EXPECT_EQ(FindSample(*families, "sluice_backend_address",
                       {{"backend", name}, {"address", absl::StrCat("127.0.0.2:", port)}}),
            1);
  EXPECT_EQ(FindSample(*families, "sluice_backend_address",
                       {{"backend", name + "#2"}, {"address", absl::StrCat("127.0.0.3:", port)}}),
            1);
  EXPECT_FALSE(FindSample(*families, "sluice_backend_requests_total", {{"backend", name + "#3"}})
                   .has_value())
      << "a spare slot that never had an address is not shown";
  EXPECT_EQ(StatusBackends(),
            (std::map<std::string, std::string>{{name, absl::StrCat("127.0.0.2:", port)},
                                                {name + "#2", absl::StrCat("127.0.0.3:", port)}}));
  std::string text;
  WaitFor([&] {
    std::ifstream in(log);
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    return absl::StrContains(text, " ua=" + name + "\n") &&
           absl::StrContains(text, " ua=" + name + "#2\n");
  });
  EXPECT_TRUE(absl::StrContains(text, " ua=" + name + "#2\n")) << text;
  unlink(log.c_str());
  // X-Sluice-Backend names one address's backend.
  for (int i = 0; i < 3; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(
        HttpResponse r,
        integration::Exchange(proxy_port(), BuildRequest("GET", "/api/version",
                                                         {{"X-Sluice-Backend", name + "#2"}})));
    EXPECT_EQ(r.status, 200) << r.body;
  }
  EXPECT_EQ(Requests(port, "127.0.0.2"), 5);
  EXPECT_EQ(Requests(port, "127.0.0.3"), 8);
}

// Addresses come and go with the name: one removed from the hosts file
// gets nothing more once the name is resolved again; one added starts
// getting requests (least_conn), in the slot the removed one left. Each
// change is logged once.
TEST_F(Dns, AddressesThatGoStopAndAddressesThatComeStart) {
  const int port = StartSimAt("127.0.0.2", 0);
  ASSERT_GT(port, 0);
  ASSERT_GT(StartSimAt("127.0.0.3", port), 0);
  ASSERT_GT(StartSimAt("127.0.0.4", port), 0);
  WriteHosts("127.0.0.2 ollama.test\n127.0.0.3 ollama.test\n");
  const std::string name = absl::StrCat("ollama.test:", port);
  ASSERT_NO_FATAL_FAILURE(StartSluiceWithHosts({"--upstream=" + name, "--upstream_host=localhost",
                                                "--balance=least_conn", "--health_interval=0",
                                                "--resolve_interval=200ms"}));
  ASSERT_NO_FATAL_FAILURE(Versions(6));
  EXPECT_EQ(Requests(port, "127.0.0.2"), 3);
  EXPECT_EQ(Requests(port, "127.0.0.3"), 3);
  WriteHosts("127.0.0.3 ollama.test\n");
  // The first backend has no address now.
  ASSERT_TRUE(WaitFor([&] { return StatusBackends()[name].empty(); })) << sluice_->Stderr();
  EXPECT_EQ(StatusBackends(), (std::map<std::string, std::string>{
                                  {name + "#2", absl::StrCat("127.0.0.3:", port)}, {name, ""}}));
  ASSERT_NO_FATAL_FAILURE(Versions(4));
  EXPECT_EQ(Requests(port, "127.0.0.2"), 3) << "nothing more to the address that went";
  EXPECT_EQ(Requests(port, "127.0.0.3"), 7);
  WriteHosts("127.0.0.3 ollama.test\n127.0.0.4 ollama.test\n");
  ASSERT_TRUE(WaitFor([&] { return StatusBackends()[name] == absl::StrCat("127.0.0.4:", port); }))
      << sluice_->Stderr();
  ASSERT_NO_FATAL_FAILURE(Versions(6));
  EXPECT_EQ(Requests(port, "127.0.0.2"), 3);
  EXPECT_EQ(Requests(port, "127.0.0.3"), 10);
  EXPECT_EQ(Requests(port, "127.0.0.4"), 3);
  const std::string err = sluice_->Stderr();
  EXPECT_TRUE(
      absl::StrContains(err, absl::StrCat("came: none; went: 127.0.0.2:", port, " (", name, ")")))
      << err;
  EXPECT_TRUE(absl::StrContains(err, absl::StrCat("came: 127.0.0.4:", port, " (", name, ")")))
      << err;
  size_t lines = 0;
  for (size_t at = 0; (at = err.find("resolves to", at)) != std::string::npos; ++at) ++lines;
  EXPECT_EQ(lines, 2u) << "each change once\n" << err;
}

// Model routing among a name's addresses: a model goes to the address
// where it is loaded, every time.
TEST_F(Dns, ModelGoesToTheAddressWhereItIsLoaded) {
  const std::vector<std::string> models = {"--models=alpha,beta", "--max_loaded_models=1"};
  const int port = StartSimAt("127.0.0.2", 0, models);
  ASSERT_GT(port, 0);
  ASSERT_GT(StartSimAt("127.0.0.3", port, models), 0);
  for (const auto& [host, model] :
       {std::pair<std::string, std::string>{"127.0.0.2", "alpha"}, {"127.0.0.3", "beta"}}) {
    CommandResult r =
        RunProgram("/usr/bin/curl",
                   {"-s", "--max-time", "5", "-H", "Host: localhost", "-d",
                    absl::StrCat(R"({"model":")", model, R"(","prompt":"hi","stream":false})"),
                    absl::StrCat("http://", host, ":", port, "/api/generate")},
                   absl::Seconds(10));
    ASSERT_EQ(r.exit.code, 0) << r.err;
  }
  WriteHosts("127.0.0.2 ollama.test\n127.0.0.3 ollama.test\n");
  ASSERT_NO_FATAL_FAILURE(
      StartSluiceWithHosts({absl::StrCat("--upstream=ollama.test:", port, " max_loaded=1"),
                            "--upstream_host=localhost", "--health_interval=200ms"}));
  // The first round of checks has asked each what it has loaded.
  ASSERT_TRUE(WaitFor([&] { return Requests(port, "127.0.0.3") >= 3; }));
  absl::SleepFor(absl::Milliseconds(100));
  for (const char* model : {"beta", "alpha", "beta", "beta", "alpha", "beta"}) {
    IT_ASSERT_OK_AND_ASSIGN(
        HttpResponse r,
        integration::Exchange(proxy_port(),
                              BuildRequest("POST", "/api/generate", {},
                                           absl::StrCat(R"({"model":")", model,
                                                        R"(","prompt":"hi","stream":false})"))));
    ASSERT_EQ(r.status, 200) << r.body;
  }
  EXPECT_EQ(ModelCount(port, "127.0.0.2", "alpha", "requests"), 3);
  EXPECT_EQ(ModelCount(port, "127.0.0.2", "beta", "requests"), 0);
  EXPECT_EQ(ModelCount(port, "127.0.0.3", "beta", "requests"), 5);
  EXPECT_EQ(ModelCount(port, "127.0.0.3", "alpha", "requests"), 0);
  EXPECT_EQ(ModelCount(port, "127.0.0.3", "beta", "loads"), 1);
}

// An address that takes the place another had is another backend: what
// the checks and the router knew of the old one (its loaded models) is
// forgotten at once, not carried over until the next check.
TEST_F(Dns, ANewAddressInAPlaceStartsAfresh) {
  const std::vector<std::string> models = {"--models=alpha"};
  const int port = StartSimAt("127.0.0.2", 0, models);
  ASSERT_GT(port, 0);
  ASSERT_GT(StartSimAt("127.0.0.3", port, models), 0);
  ASSERT_GT(StartSimAt("127.0.0.4", port, models), 0);
  CommandResult warm = RunProgram("/usr/bin/curl",
                                  {"-s", "--max-time", "5", "-H", "Host: localhost", "-d",
                                   R"({"model":"alpha","prompt":"hi","stream":false})",
                                   absl::StrCat("http://127.0.0.2:", port, "/api/generate")},
                                  absl::Seconds(10));
  ASSERT_EQ(warm.exit.code, 0) << warm.err;
  WriteHosts("127.0.0.2 ollama.test\n127.0.0.3 ollama.test\n");
  const std::string name = absl::StrCat("ollama.test:", port);
  // One round of checks, at start; none after.
  ASSERT_NO_FATAL_FAILURE(
      StartSluiceWithHosts({"--upstream=" + name, "--upstream_host=localhost",
                            "--health_interval=1h", "--resolve_interval=200ms"}));
  auto loaded = [&]() -> std::string {
    absl::StatusOr<HttpResponse> r =
        integration::Exchange(proxy_port(), BuildRequest("GET", "/status?format=json"));
    if (!r.ok()) return "?";
    std::optional<JsonValue> json = JsonValue::Parse(r->body);
    if (!json || !json->Get("backends")) return "?";
    for (const JsonValue& b : json->Get("backends")->array()) {
      if (b.GetString("name") != name || !b.Get("loaded")) continue;
      std::string out = b.Get("address") ? b.Get("address")->str() : "";
      for (const JsonValue& m : b.Get("loaded")->array()) out += " " + m.str();
      return out;
    }
    return "?";
  };
  ASSERT_TRUE(WaitFor([&] {
    return loaded() == absl::StrCat("127.0.0.2:", port, " alpha:latest");
  })) << loaded();
  WriteHosts("127.0.0.3 ollama.test\n127.0.0.4 ollama.test\n");
  ASSERT_TRUE(
      WaitFor([&] { return loaded() != absl::StrCat("127.0.0.2:", port, " alpha:latest"); }));
  EXPECT_EQ(loaded(), absl::StrCat("127.0.0.4:", port)) << "nothing loaded there that sluice knows";
}

// A rules-file upstream given by name is re-resolved like --upstream's
// backends (every --resolve_interval), not only when the file is read
// again: its requests follow the name to a new address without a SIGHUP.
TEST_F(Dns, RulesFileUpstreamFollowsItsName) {
  const int ollama = StartSimAt("127.0.0.1", 0);
  ASSERT_GT(ollama, 0);
  const int port = StartSimAt("127.0.0.2", 0);
  ASSERT_GT(port, 0);
  ASSERT_GT(StartSimAt("127.0.0.3", port), 0);
  WriteHosts("127.0.0.2 ui.test\n");
  const std::string rules = hosts_ + ".rules";
  {
    std::ofstream out(rules, std::ios::trunc);
    out << "upstream ui ui.test:" << port << "\nroute /ui/* allow upstream=ui auth=none\n";
  }
  ASSERT_NO_FATAL_FAILURE(
      StartSluiceWithHosts({absl::StrCat("--upstream=127.0.0.1:", ollama), "--rules_file=" + rules,
                            "--resolve_interval=200ms"}));
  auto ui = [&] {
    absl::StatusOr<HttpResponse> r =
        integration::Exchange(proxy_port(), BuildRequest("GET", "/ui/x", {{"Host", "localhost"}}));
    return r.ok() ? r->status : -1;
  };
  for (int i = 0; i < 3; ++i) ui();
  EXPECT_EQ(Requests(port, "127.0.0.2"), 3);
  WriteHosts("127.0.0.3 ui.test\n");
  absl::SleepFor(absl::Milliseconds(700));
  for (int i = 0; i < 3; ++i) ui();
  EXPECT_EQ(Requests(port, "127.0.0.2"), 3) << "nothing more to the old address";
  EXPECT_EQ(Requests(port, "127.0.0.3"), 3);
  EXPECT_EQ(Requests(ollama), 0);
  EXPECT_TRUE(absl::StrContains(sluice_->Stderr(), "upstream ui")) << sluice_->Stderr();
  unlink(rules.c_str());
}

}  // namespace
}  // namespace sluice::integration
