// Routes to other upstreams than Ollama through the real binary: `upstream`
// lines of the rules file and routes that pick them by Host and by path
// prefix (a web UI on its own host name with its WebSocket, the Ollama API
// on another), with the route's own auth=, the proxy's headers, the
// aggregated model lists left to Ollama's routes, a dead upstream, reloads
// that change or drop an upstream, and broken upstream lines.
#include <signal.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {
namespace {

using Headers = std::vector<std::pair<std::string, std::string>>;

class NamedUpstream : public ProxyTest {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "sluice-upstreams-",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name(), "-",
                        getpid());
    RunShell(absl::StrCat("rm -rf ", ShellQuote(dir_), " && mkdir -p ", ShellQuote(dir_)),
             absl::Seconds(5));
  }
  void TearDown() override {
    ProxyTest::TearDown();
    web_.reset();
    other_.reset();
    RunShell(absl::StrCat("rm -rf ", ShellQuote(dir_)), absl::Seconds(5));
  }

  std::string rules() const { return dir_ + "/rules.txt"; }
  std::string keys() const { return dir_ + "/keys.txt"; }
  void WriteRules(const std::string& text) { std::ofstream(rules(), std::ios::trunc) << text; }

  // Ollama (sim_, models "llama3"), the "web UI" (web_, another simulator
  // that lists "webui-only" so its answers are told apart) and sluice with
  // one API key (key_) and `rules`.
  void Start(const std::string& rules_text, std::vector<std::string> sluice_args = {}) {
    auto web = StartSim({"--models=webui-only"});
    ASSERT_TRUE(web.ok()) << web.status();
    web_ = std::move(*web);
    WriteRules(
        absl::StrReplaceAll(rules_text, {{"WEB", absl::StrCat("127.0.0.1:", web_->port())}}));
    CommandResult r = RunProgram(SluiceBinary(), {"keys", "add", "alice", "--keys_file", keys()},
                                 absl::Seconds(10));
    ASSERT_EQ(r.exit.code, 0) << r.err;
    key_ = std::string(absl::StripAsciiWhitespace(r.out));
    sluice_args.push_back("--keys_file=" + keys());
    sluice_args.push_back("--rules_file=" + rules());
    ASSERT_NO_FATAL_FAILURE(StartStack({"--models=llama3"}, sluice_args));
  }

  HttpResponse Request(const std::string& host, const std::string& target, Headers headers = {},
                       const std::string& method = "GET", const std::string& body = "") {
    headers.insert(headers.begin(), {"Host", host});
    auto r = Exchange(proxy_port(), BuildRequest(method, target, headers, body));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : HttpResponse{};
  }
  // Which simulator answered a /sim/echo: the Host sluice sent names it.
  std::string EchoedHost(const HttpResponse& r) {
    std::optional<EchoedRequest> echo = ParseEcho(r.body);
    if (!echo) return "(no echo: " + std::to_string(r.status) + " " + r.body + ")";
    return echo->First("host").value_or("(none)");
  }
  std::string web_host() const { return absl::StrCat("127.0.0.1:", web_->port()); }
  std::string sim_host() const { return absl::StrCat("127.0.0.1:", sim_port()); }
  Headers Key() const { return {{"Authorization", "Bearer " + key_}}; }

  std::string dir_;
  std::string key_;
  std::unique_ptr<ChildProcess> web_;
  std::unique_ptr<ChildProcess> other_;
};

constexpr char kWebUiRules[] =
    "upstream webui WEB\n"
    "route /* allow host=chat.example.com upstream=webui auth=none\n";

TEST_F(NamedUpstream, HostPicksTheUpstreamAndItsOwnAuth) {
  ASSERT_NO_FATAL_FAILURE(Start(kWebUiRules));
  // The web UI's host: no key asked, the application's own token passes
  // through untouched, the proxy's headers are set.
  HttpResponse web =
      Request("Chat.Example.com", "/sim/echo", {{"Authorization", "Bearer app-session-token"}});
  ASSERT_EQ(web.status, 200) << web.body;
  EXPECT_EQ(EchoedHost(web), web_host());
  std::optional<EchoedRequest> echo = ParseEcho(web.body);
  ASSERT_TRUE(echo.has_value());
  EXPECT_EQ(echo->First("authorization").value_or(""), "Bearer app-session-token");
  EXPECT_EQ(echo->First("x-forwarded-host").value_or(""), "Chat.Example.com");
  EXPECT_EQ(echo->First("x-real-ip").value_or(""), "127.0.0.1");

  // Any other host is Ollama's, with the key check and without the key
  // reaching Ollama.
  EXPECT_EQ(Request("ollama.example.com", "/sim/echo").status, 401);
  HttpResponse api = Request("ollama.example.com", "/sim/echo", Key());
  ASSERT_EQ(api.status, 200) << api.body;
  EXPECT_EQ(EchoedHost(api), sim_host());
  echo = ParseEcho(api.body);
  ASSERT_TRUE(echo.has_value());
  EXPECT_FALSE(echo->First("authorization").has_value());
  // The web UI gets its own page's Origin (its own checks need it); a
  // foreign page is refused by the proxy's CORS check, as for Ollama.
  HttpResponse same =
      Request("chat.example.com", "/sim/echo", {{"Origin", "http://chat.example.com"}});
  ASSERT_EQ(same.status, 200) << same.body;
  echo = ParseEcho(same.body);
  ASSERT_TRUE(echo.has_value());
  EXPECT_EQ(echo->First("origin").value_or(""), "http://chat.example.com");
  EXPECT_EQ(Request("chat.example.com", "/sim/echo", {{"Origin", "https://evil.example"}}).status,
            403);
  // A look-alike host is not the web UI's.
  EXPECT_EQ(Request("chat.example.com.evil.net", "/sim/echo").status, 401);
}

// Over HTTP/2 (curl, prior knowledge) the :authority picks the route.
TEST_F(NamedUpstream, AuthorityPicksTheUpstreamOverHttp2) {
  ASSERT_NO_FATAL_FAILURE(Start(kWebUiRules));
  auto curl = [&](const std::string& host, const std::string& extra) {
    CommandResult r = RunShell(
        absl::StrCat("curl -s --http2-prior-knowledge -H ", ShellQuote("Host: " + host), " ", extra,
                     " -w '\\n%{http_version} %{http_code}' ", proxy_url(), "/sim/echo"),
        absl::Seconds(10));
    EXPECT_EQ(r.exit.code, 0) << r.err;
    return r.out;
  };
  const std::string web = curl("chat.example.com", "");
  EXPECT_TRUE(absl::EndsWith(web, "\n2 200")) << web;
  EXPECT_TRUE(absl::StrContains(web, web_host())) << web;
  EXPECT_TRUE(absl::EndsWith(curl("ollama.example.com", ""), "\n2 401"));
  const std::string api =
      curl("ollama.example.com", "-H " + ShellQuote("Authorization: Bearer " + key_));
  EXPECT_TRUE(absl::EndsWith(api, "\n2 200")) << api;
  EXPECT_TRUE(absl::StrContains(api, sim_host())) << api;
}

TEST_F(NamedUpstream, OllamasBuiltInRulesDoNotApplyToTheWebUi) {
  ASSERT_NO_FATAL_FAILURE(Start(kWebUiRules));
  // /api/delete is the web UI's own path on its host (Ollama's is blocked).
  HttpResponse del = Request("chat.example.com", "/api/delete", {}, "DELETE", "{}");
  EXPECT_NE(del.status, 403) << del.body;
  EXPECT_EQ(Request("ollama.example.com", "/api/delete", Key(), "DELETE", "{}").status, 403);
  // No default rate zone: a page load's burst of assets is not limited
  // (Ollama's API allows 20 at once by default).
  for (int i = 0; i < 40; ++i) {
    HttpResponse r = Request("chat.example.com", "/sim/echo");
    ASSERT_EQ(r.status, 200) << i << " " << r.body;
  }
}

TEST_F(NamedUpstream, ModelListsOnTheWebUiHostAreNotAggregated) {
  auto other = StartSim({"--models=mistral"});
  ASSERT_TRUE(other.ok()) << other.status();
  other_ = std::move(*other);
  ASSERT_NO_FATAL_FAILURE(Start(kWebUiRules, {"--health_interval=200ms"}));
  // Two Ollama backends: sluice itself answers /api/tags with the union.
  // (StartStack gave --upstream the first; a restart with both follows.)
  sluice_->Terminate();
  auto sluice = StartSluice(
      sim_port(), {"--upstream=" + sim_host() + ",127.0.0.1:" + std::to_string(other_->port()),
                   "--health_interval=200ms", "--keys_file=" + keys(), "--rules_file=" + rules()});
  ASSERT_TRUE(sluice.ok()) << sluice.status();
  sluice_ = std::move(*sluice);
  absl::Time deadline = absl::Now() + absl::Seconds(5);
  HttpResponse api;
  do {
    api = Request("ollama.example.com", "/api/tags", Key());
    if (absl::StrContains(api.body, "mistral") && absl::StrContains(api.body, "llama3")) break;
    absl::SleepFor(absl::Milliseconds(50));
  } while (absl::Now() < deadline);
  EXPECT_TRUE(absl::StrContains(api.body, "mistral")) << api.body;
  EXPECT_TRUE(absl::StrContains(api.body, "llama3")) << api.body;
  EXPECT_FALSE(absl::StrContains(api.body, "webui-only")) << api.body;
  HttpResponse web = Request("chat.example.com", "/api/tags");
  ASSERT_EQ(web.status, 200) << web.body;
  EXPECT_TRUE(absl::StrContains(web.body, "webui-only")) << web.body;
  EXPECT_FALSE(absl::StrContains(web.body, "llama3")) << web.body;
  // A model request on the web UI's host is not routed by model: it goes
  // to the web UI whatever it names.
  HttpResponse chat = Request("chat.example.com", "/api/chat", {}, "POST",
                              R"({"model":"mistral","messages":[],"stream":false})");
  EXPECT_NE(chat.status, 200) << chat.body;  // the web UI has no "mistral"
}

TEST_F(NamedUpstream, PathPrefixPicksTheUpstreamOnAnyHost) {
  ASSERT_NO_FATAL_FAILURE(
      Start("upstream webui WEB\n"
            "route /sim/* allow upstream=webui auth=none\n"));
  EXPECT_EQ(EchoedHost(Request("a.example.com", "/sim/echo")), web_host());
  EXPECT_EQ(EchoedHost(Request("127.0.0.1", "/sim/echo?x=1")), web_host());
  // Other paths stay Ollama's.
  HttpResponse tags = Request("a.example.com", "/api/tags", Key());
  ASSERT_EQ(tags.status, 200);
  EXPECT_TRUE(absl::StrContains(tags.body, "llama3")) << tags.body;
}

// RFC 6455 1.3's key and accept.
constexpr char kWsKey[] = "dGhlIHNhbXBsZSBub25jZQ==";
constexpr char kWsAccept[] = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

TEST_F(NamedUpstream, WebSocketThroughTheNamedUpstream) {
  ASSERT_NO_FATAL_FAILURE(Start(kWebUiRules));
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(
      conn->Send(absl::StrCat("GET /ws HTTP/1.1\r\nHost: chat.example.com\r\nUpgrade: websocket\r\n"
                              "Connection: Upgrade\r\nSec-WebSocket-Key: ",
                              kWsKey, "\r\nSec-WebSocket-Version: 13\r\n\r\n")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse head, conn->ReadHead(absl::Seconds(5)));
  ASSERT_EQ(head.status, 101);
  EXPECT_EQ(head.Header("Sec-WebSocket-Accept").value_or(""), kWsAccept);
  // One masked text frame "hello"; the simulator echoes it unmasked.
  const unsigned char mask[4] = {1, 2, 3, 4};
  std::string frame = {static_cast<char>(0x81), static_cast<char>(0x80 | 5)};
  frame.append(reinterpret_cast<const char*>(mask), 4);
  const std::string text = "hello";
  for (size_t i = 0; i < text.size(); ++i) frame.push_back(text[i] ^ mask[i % 4]);
  IT_ASSERT_OK(conn->Send(frame));
  IT_ASSERT_OK_AND_ASSIGN(std::string reply, conn->ReadExactly(7, absl::Seconds(5)));
  EXPECT_EQ(static_cast<unsigned char>(reply[0]), 0x81);
  EXPECT_EQ(reply[1], 5);
  EXPECT_EQ(reply.substr(2), "hello");
  // The simulator that answered is the web UI's.
  IT_ASSERT_OK_AND_ASSIGN(SimStats web_stats, FetchSimStats(web_->port()));
  IT_ASSERT_OK_AND_ASSIGN(SimStats ollama_stats, FetchSimStats(sim_port()));
  EXPECT_GE(web_stats.requests, 1);
  EXPECT_EQ(ollama_stats.requests, 0);
}

// An upstream given by DNS name is resolved when the file is read.
TEST_F(NamedUpstream, UpstreamByName) {
  ASSERT_NO_FATAL_FAILURE(Start(""));
  WriteRules(absl::StrCat("upstream webui localhost:", web_->port(),
                          " max_addresses=1\nroute /* allow host=chat.example.com upstream=webui "
                          "auth=none\n"));
  ASSERT_TRUE(sluice_->Signal(SIGHUP));
  absl::Time deadline = absl::Now() + absl::Seconds(5);
  HttpResponse r;
  do {
    r = Request("chat.example.com", "/sim/echo");
    if (r.status == 200) break;
    absl::SleepFor(absl::Milliseconds(20));
  } while (absl::Now() < deadline);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(EchoedHost(r), absl::StrCat("localhost:", web_->port()));
}

TEST_F(NamedUpstream, DeadUpstreamIs502AndOllamaKeepsServing) {
  const int dead = UnusedPort();
  ASSERT_NO_FATAL_FAILURE(Start(absl::StrCat("upstream gone 127.0.0.1:", dead,
                                             "\nroute /* allow host=gone.example.com "
                                             "upstream=gone auth=none\n")));
  HttpResponse r = Request("gone.example.com", "/");
  EXPECT_EQ(r.status, 502) << r.body;
  EXPECT_EQ(JsonError(r.body).value_or(""), "upstream unavailable");
  EXPECT_EQ(Request("ollama.example.com", "/api/version", Key()).status, 200);
}

TEST_F(NamedUpstream, ReloadMovesOrDropsTheUpstream) {
  auto other = StartSim({"--models=other-ui"});
  ASSERT_TRUE(other.ok()) << other.status();
  other_ = std::move(*other);
  ASSERT_NO_FATAL_FAILURE(Start(kWebUiRules));
  // A kept-alive connection to the web UI, open across the reloads.
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  auto on_conn = [&] {
    EXPECT_TRUE(conn->Send(BuildRequest("GET", "/sim/echo", {}, "", "chat.example.com")).ok());
    auto r = conn->ReadResponse(absl::Seconds(5));
    return r.ok() ? EchoedHost(*r) : std::string("(failed)");
  };
  EXPECT_EQ(on_conn(), web_host());

  const std::string other_host = absl::StrCat("127.0.0.1:", other_->port());
  WriteRules(absl::StrCat("upstream webui ", other_host,
                          "\nroute /* allow host=chat.example.com upstream=webui auth=none\n"));
  ASSERT_TRUE(sluice_->Signal(SIGHUP));
  absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (EchoedHost(Request("chat.example.com", "/sim/echo")) != other_host &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(EchoedHost(Request("chat.example.com", "/sim/echo")), other_host);
  EXPECT_EQ(on_conn(), other_host);

  // Dropped: the host is Ollama's again (the key is asked).
  WriteRules("# no upstreams\n");
  ASSERT_TRUE(sluice_->Signal(SIGHUP));
  deadline = absl::Now() + absl::Seconds(5);
  while (Request("chat.example.com", "/sim/echo").status != 401 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(Request("chat.example.com", "/sim/echo").status, 401);
  EXPECT_EQ(EchoedHost(Request("chat.example.com", "/sim/echo", Key())), sim_host());

  // A broken upstream line is refused with its file and line; the policy
  // in force stays.
  WriteRules("upstream webui http://127.0.0.1:1/\nroute /* allow upstream=webui\n");
  ASSERT_TRUE(sluice_->Signal(SIGHUP));
  deadline = absl::Now() + absl::Seconds(5);
  while (!absl::StrContains(sluice_->Stderr(), "rules.txt:1: upstream webui") &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(absl::StrContains(sluice_->Stderr(), "rules.txt:1: upstream webui"))
      << sluice_->Stderr();
  EXPECT_EQ(Request("chat.example.com", "/sim/echo").status, 401);
}

TEST_F(NamedUpstream, BrokenUpstreamLinesStopTheStartWithOneLine) {
  struct Case {
    std::string text;
    std::string message;
  } cases[] = {
      {"upstream webui\n", "rules.txt:1: upstream NAME ADDRESS"},
      {"upstream webui http://127.0.0.1:8080\n", "rules.txt:1: upstream webui: "},
      {"upstream webui 127.0.0.1:8080 slots=4\n", "slots= and max_loaded= are for Ollama"},
      {"upstream webui balance=random 127.0.0.1:8080\n", "balance=random: use round_robin"},
      {"route /* allow upstream=webui\n", "rules.txt:1: upstream \"webui\" is not defined"},
      {"upstream ollama 127.0.0.1:8080\n", "the name \"ollama\" is taken"},
      {"route /* allow host=chat.example.com:443\n", "rules.txt:1: host=chat.example.com:443"},
  };
  for (const Case& c : cases) {
    WriteRules(c.text);
    CommandResult r = RunProgram(SluiceBinary(),
                                 {"--listen_http=127.0.0.1:0", "--listen_tls=", "--http_mode=serve",
                                  "--auth=none", "--rules_file=" + rules()},
                                 absl::Seconds(10));
    EXPECT_EQ(r.exit.code, 2) << c.text << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, c.message)) << c.text << " -> " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}

}  // namespace
}  // namespace sluice::integration
