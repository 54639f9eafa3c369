// Logs and metrics through the real binary: the nginx-format access log read
// by the operators' one-liners of NGINX_BASELINE.md, the JSON access log
// with token accounting (Ollama NDJSON, OpenAI SSE with usage, non-streamed
// answers, a stream the client cancels), SIGUSR1 log reopening, the error
// log, /status (stub_status) and /metrics (Prometheus text, parsed strictly)
// moving as requests are made, across workers and over TLS, and the access
// rule of both pages.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/integration/h2_frames.h"
#include "tests/integration/prom_text.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {
namespace {

std::string ReadWhole(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  for (absl::string_view l : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    out.emplace_back(l);
  }
  return out;
}

class ObservabilityIt : public ProxyTest {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "sluice-obs-",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name(), "-",
                        getpid());
    RunShell(absl::StrCat("rm -rf ", ShellQuote(dir_), " && mkdir -p ", ShellQuote(dir_)),
             absl::Seconds(5));
  }
  std::string log_path() const { return dir_ + "/access.log"; }

  // Adds an API key named `name`; returns the key.
  std::string AddKey(const std::string& name) {
    CommandResult r =
        RunProgram(SluiceBinary(), {"keys", "add", name, "--keys_file", dir_ + "/keys.txt"},
                   absl::Seconds(10));
    EXPECT_EQ(r.exit.code, 0) << r.err;
    return std::string(absl::StripAsciiWhitespace(r.out));
  }

  // A keys file with one key; returns its path.
  std::string AddKeyFile() {
    AddKey("team");
    return dir_ + "/keys.txt";
  }

  // Waits until `path` holds at least `n` lines; returns them.
  std::vector<std::string> WaitLines(const std::string& path, size_t n,
                                     absl::Duration timeout = absl::Seconds(10)) {
    const absl::Time deadline = absl::Now() + timeout;
    std::vector<std::string> lines;
    while (absl::Now() < deadline) {
      lines = Lines(ReadWhole(path));
      if (lines.size() >= n) return lines;
      absl::SleepFor(absl::Milliseconds(20));
    }
    ADD_FAILURE() << path << ": " << lines.size() << " line(s), expected " << n;
    return lines;
  }

  // curl against the plain listener, from `source` (any 127.0.0.0/8
  // address: they are all local). Returns the status code, or the body
  // when `body` is set.
  std::string Curl(const std::string& opts, const std::string& path,
                   const std::string& source = "127.0.0.1", bool body = false) {
    CommandResult r = RunShell(absl::StrCat("curl -sS --max-time 20 --interface ", source, " ",
                                            body ? "" : "-o /dev/null -w '%{http_code}' ", opts,
                                            " ", ShellQuote(absl::StrCat(proxy_url(), path))),
                               absl::Seconds(25));
    EXPECT_EQ(r.exit.code, 0) << opts << " " << path << ": " << r.err;
    return r.out;
  }

  // GET on a fresh connection from 127.0.0.1.
  HttpResponse Get(const std::string& target,
                   const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    auto r = Exchange(proxy_port(), BuildRequest("GET", target, headers));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : HttpResponse{};
  }

  std::vector<PromFamily> Scrape() {
    HttpResponse r = Get("/metrics");
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_TRUE(absl::StartsWith(r.Header("content-type").value_or(""), "text/plain"));
    auto families = ParsePrometheusText(r.body);
    EXPECT_TRUE(families.ok()) << families.status() << "\n" << r.body;
    return families.ok() ? *families : std::vector<PromFamily>{};
  }
  static double Value(const std::vector<PromFamily>& f, const std::string& name,
                      const std::vector<std::pair<std::string, std::string>>& labels = {}) {
    return FindSample(f, name, labels).value_or(-1);
  }

  std::string dir_;
};

// The nginx baseline's log_format, field for field, and the one-liners
// operators run on it (README.md, Observability) giving the right answers.
TEST_F(ObservabilityIt, NginxFormatLogAnswersTheOperatorsOneLiners) {
  const std::string key = AddKey("team");
  ASSERT_NO_FATAL_FAILURE(StartStack({"--token_delay_ms=1", "--tokens=3"},
                                     {"--keys_file=" + dir_ + "/keys.txt",
                                      "--access_log=" + log_path(), "--access_log_flush=10ms"}));
  const std::string auth = ShellQuote("Authorization: Bearer " + key);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Curl("-H " + auth, "/api/tags"), "200");
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(Curl("-H " + auth + " -H 'Referer: https://app.example/x'", "/api/ps", "127.0.0.2"),
              "200");
  }
  const std::string gen = "-H " + auth + " -d '{\"model\":\"sim\",\"prompt\":\"hi\"}'";
  EXPECT_EQ(Curl(gen + " -H 'X-Sim-TTFT-Ms: 400'", "/api/generate"), "200");
  EXPECT_EQ(Curl(gen, "/api/generate"), "200");
  EXPECT_EQ(Curl(gen, "/api/generate", "127.0.0.3"), "200");
  EXPECT_EQ(Curl("", "/api/tags", "127.0.0.3"), "401");
  const std::vector<std::string> lines = WaitLines(log_path(), 9);
  ASSERT_EQ(lines.size(), 9u);

  // $remote_addr - $remote_user [$time_local] "$request" $status
  // $body_bytes_sent "$http_referer" "$http_user_agent" rt= urt=
  const std::string& tags = lines[0];
  std::vector<std::string> f = absl::StrSplit(tags, ' ');
  ASSERT_GE(f.size(), 13u) << tags;
  EXPECT_EQ(f[0], "127.0.0.1") << tags;
  EXPECT_EQ(f[1], "-") << tags;
  EXPECT_EQ(f[2], "team") << tags;
  EXPECT_EQ(f[3].size(), 21u) << tags;  // [25/Nov/2026:21:41:52
  EXPECT_EQ(f[3][0], '[') << tags;
  EXPECT_EQ(f[4].size(), 6u) << tags;  // +0000]
  EXPECT_EQ(f[5], "\"GET") << tags;
  EXPECT_EQ(f[6], "/api/tags") << tags;
  EXPECT_EQ(f[7], "HTTP/1.1\"") << tags;
  EXPECT_EQ(f[8], "200") << tags;
  EXPECT_EQ(f[9], "457") << tags;  // the simulator's model list
  EXPECT_EQ(f[10], "\"-\"") << tags;
  EXPECT_TRUE(absl::StartsWith(f[11], "\"curl/")) << tags;
  EXPECT_TRUE(absl::StartsWith(f[f.size() - 2], "rt=")) << tags;
  EXPECT_TRUE(absl::StartsWith(f.back(), "urt=")) << tags;
  EXPECT_NE(f.back(), "urt=-") << tags;
  EXPECT_TRUE(absl::StrContains(lines[3], "\"https://app.example/x\"")) << lines[3];
  // The refused request: no user, no upstream.
  EXPECT_TRUE(absl::StartsWith(lines[8], "127.0.0.3 - - [")) << lines[8];
  EXPECT_TRUE(absl::StrContains(lines[8], "\" 401 ")) << lines[8];
  EXPECT_TRUE(absl::EndsWith(lines[8], " urt=-")) << lines[8];

  const std::string log = ShellQuote(log_path());
  // Requests per client address.
  CommandResult per_ip = RunShell(
      absl::StrCat("awk '{print $1}' ", log, " | sort | uniq -c | sort -rn"), absl::Seconds(5));
  EXPECT_EQ(per_ip.out, "      5 127.0.0.1\n      2 127.0.0.3\n      2 127.0.0.2\n");
  // The slowest requests by rt=.
  CommandResult slowest = RunShell(
      absl::StrCat("awk '{for (i = 1; i <= NF; i++) if ($i ~ /^rt=/) print substr($i, 4), $7}' ",
                   log, " | sort -rn | head -1"),
      absl::Seconds(5));
  std::vector<std::string> top =
      absl::StrSplit(absl::StripTrailingAsciiWhitespace(slowest.out), ' ');
  ASSERT_EQ(top.size(), 2u) << slowest.out;
  double rt = 0;
  ASSERT_TRUE(absl::SimpleAtod(top[0], &rt)) << slowest.out;
  EXPECT_GE(rt, 0.4);
  EXPECT_LT(rt, 5.0);
  EXPECT_EQ(top[1], "/api/generate");
  // The mean rt= of /api/generate.
  CommandResult mean = RunShell(
      absl::StrCat("awk '$7 == \"/api/generate\" {for (i = 1; i <= NF; i++) if ($i ~ /^rt=/) "
                   "{s += substr($i, 4); n++}} END {printf \"%d %.3f\\n\", n, s / n}' ",
                   log),
      absl::Seconds(5));
  std::vector<std::string> m = absl::StrSplit(absl::StripTrailingAsciiWhitespace(mean.out), ' ');
  ASSERT_EQ(m.size(), 2u) << mean.out;
  EXPECT_EQ(m[0], "3");
  double avg = 0;
  ASSERT_TRUE(absl::SimpleAtod(m[1], &avg)) << mean.out;
  EXPECT_GE(avg, 0.4 / 3);
  EXPECT_LT(avg, 2.0);
}

// The JSON format: key, model, stream, time to first token, gaps and token
// counts from the answers themselves; a stream the client abandons is 499
// with the tokens that were relayed.
TEST_F(ObservabilityIt, JsonLogCountsTokensOfEveryAnswerShape) {
  const std::string key = AddKey("alice");
  ASSERT_NO_FATAL_FAILURE(
      StartStack({"--token_delay_ms=5", "--tokens=5"},
                 {"--keys_file=" + dir_ + "/keys.txt", "--access_log=" + log_path(),
                  "--access_log_format=json", "--access_log_flush=10ms"}));
  const std::string auth = ShellQuote("Authorization: Bearer " + key);
  // 1: Ollama NDJSON stream.
  EXPECT_EQ(Curl("-H " + auth + " -d '{\"model\":\"llama3\",\"prompt\":\"hi\"}'", "/api/generate"),
            "200");
  // 2: Ollama, not streamed.
  EXPECT_EQ(Curl("-H " + auth +
                     " -d '{\"model\":\"qwen\",\"stream\":false,\"messages\":[{\"role\":\"user\","
                     "\"content\":\"hi\"}]}'",
                 "/api/chat"),
            "200");
  // 3: OpenAI SSE with usage, over HTTP/2 (h2c).
  EXPECT_EQ(Curl("--http2-prior-knowledge -H " + auth +
                     " -H 'Content-Type: application/json' -d '{\"model\":\"gpt-sim\","
                     "\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                     "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'",
                 "/v1/chat/completions"),
            "200");
  // 4: a long stream the client leaves after three tokens.
  {
    auto conn = HttpConnection::Connect(proxy_port());
    ASSERT_TRUE(conn.ok()) << conn.status();
    const std::string body = "{\"model\":\"llama3\",\"prompt\":\"long\"}";
    IT_ASSERT_OK((*conn)->Send(BuildRequest("POST", "/api/generate",
                                            {{"Authorization", "Bearer " + key},
                                             {"X-Sim-Tokens", "200"},
                                             {"X-Sim-Token-Delay-Ms", "20"},
                                             {"Content-Type", "application/json"}},
                                            body)));
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse head, (*conn)->ReadHead(absl::Seconds(5)));
    EXPECT_EQ(head.status, 200);
    for (int i = 0; i < 3; ++i) {
      auto chunk = (*conn)->ReadChunk(absl::Seconds(5));
      ASSERT_TRUE(chunk.ok()) << chunk.status();
    }
    (*conn)->Close();
  }
  const std::vector<std::string> lines = WaitLines(log_path(), 4);
  ASSERT_EQ(lines.size(), 4u);
  std::vector<JsonValue> v;
  for (const std::string& l : lines) {
    std::optional<JsonValue> j = JsonValue::Parse(l);
    ASSERT_TRUE(j.has_value() && j->is_object()) << l;
    v.push_back(*j);
  }
  for (size_t i = 0; i < v.size(); ++i) {
    EXPECT_EQ(v[i].GetString("remote_addr"), "127.0.0.1") << lines[i];
    EXPECT_EQ(v[i].GetString("user"), "alice") << lines[i];
    EXPECT_EQ(v[i].GetString("key"), "key:alice") << lines[i];
    EXPECT_EQ(v[i].GetString("route"), "generation") << lines[i];
    ASSERT_NE(v[i].Get("request_time"), nullptr) << lines[i];
    ASSERT_NE(v[i].Get("upstream_response_time"), nullptr) << lines[i];
  }
  // Ollama stream: 5 tokens, prompt 8 (the simulator's prompt_eval_count).
  EXPECT_EQ(v[0].GetString("uri"), "/api/generate");
  EXPECT_EQ(v[0].GetInt("status"), 200);
  EXPECT_EQ(v[0].GetString("model"), "llama3");
  EXPECT_TRUE(v[0].GetBool("stream")) << lines[0];
  EXPECT_EQ(v[0].GetInt("prompt_tokens"), 8) << lines[0];
  EXPECT_EQ(v[0].GetInt("completion_tokens"), 5) << lines[0];
  EXPECT_FALSE(v[0].GetBool("cancelled")) << lines[0];
  for (const char* t : {"ttft", "gap_p50", "gap_max"}) {
    const JsonValue* x = v[0].Get(t);
    ASSERT_NE(x, nullptr) << t;
    EXPECT_EQ(x->type(), JsonValue::Type::kNumber) << t << ": " << lines[0];
  }
  // Not streamed.
  EXPECT_EQ(v[1].GetString("model"), "qwen");
  EXPECT_FALSE(v[1].GetBool("stream")) << lines[1];
  EXPECT_EQ(v[1].GetInt("prompt_tokens"), 8) << lines[1];
  EXPECT_EQ(v[1].GetInt("completion_tokens"), 5) << lines[1];
  // OpenAI stream with usage, over HTTP/2.
  EXPECT_EQ(v[2].GetString("protocol"), "HTTP/2.0") << lines[2];
  EXPECT_EQ(v[2].GetString("model"), "gpt-sim") << lines[2];
  EXPECT_TRUE(v[2].GetBool("stream")) << lines[2];
  EXPECT_EQ(v[2].GetInt("prompt_tokens"), 8) << lines[2];
  EXPECT_EQ(v[2].GetInt("completion_tokens"), 5) << lines[2];
  // Cancelled: 499, the tokens relayed before the client left.
  EXPECT_EQ(v[3].GetInt("status"), 499) << lines[3];
  EXPECT_TRUE(v[3].GetBool("cancelled")) << lines[3];
  const int64_t relayed = v[3].GetInt("completion_tokens").value_or(-1);
  EXPECT_GE(relayed, 3) << lines[3];
  EXPECT_LT(relayed, 200) << lines[3];
  ASSERT_NE(v[3].Get("prompt_tokens"), nullptr);
  EXPECT_EQ(v[3].Get("prompt_tokens")->type(), JsonValue::Type::kNull) << lines[3];
}

// A request whose body stops coming is answered 408 at
// --client_body_timeout, over HTTP/1.1 and HTTP/2 alike, and counted once:
// one access line with its method, path and route (not a 499 for the
// abandoned upstream request and a bare 408 besides), and one 408 in the
// metrics.
TEST_F(ObservabilityIt, BodyTimeoutIsOneLoggedRequest) {
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--client_body_timeout=1s", "--access_log=" + log_path(),
                                          "--access_log_format=json", "--access_log_flush=10ms"}));
  // HTTP/1.1: 10 of 100 announced bytes, then nothing.
  {
    auto conn = HttpConnection::Connect(proxy_port());
    ASSERT_TRUE(conn.ok()) << conn.status();
    IT_ASSERT_OK(
        (*conn)->Send("POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                      "{\"model\":"));
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, (*conn)->ReadResponse(absl::Seconds(5)));
    EXPECT_EQ(r.status, 408);
    EXPECT_EQ(r.body, "{\"error\":\"request body timeout\"}\n");
  }
  // HTTP/2 (h2c): the same on stream 1; stream 3 on the same connection
  // is served afterwards.
  {
    auto c = h2::Connection::Connect(proxy_port());
    ASSERT_TRUE(c.ok()) << c.status();
    IT_ASSERT_OK((*c)->Establish());
    IT_ASSERT_OK((*c)->Send(
        h2::HeadersFrame(1,
                         h2::HpackBlock(h2::RequestFields(
                             "POST", "/api/generate",
                             {{"content-type", "application/json"}, {"content-length", "100"}})),
                         /*end_stream=*/false) +
        h2::DataFrame(1, "{\"model\":", /*end_stream=*/false)));
    h2::ReadOutcome o = (*c)->ReadUntilStreamEnd(1, absl::Seconds(5));
    EXPECT_EQ(o.StatusOf(1), 408) << o.Describe();
    auto next = (*c)->Get(3, "/api/version");
    ASSERT_TRUE(next.ok()) << next.status();
    EXPECT_EQ(*next, 200);
  }
  const std::vector<std::string> lines = WaitLines(log_path(), 3);
  absl::SleepFor(absl::Milliseconds(100));  // no fourth line comes
  ASSERT_EQ(Lines(ReadWhole(log_path())).size(), 3u) << ReadWhole(log_path());
  for (size_t i = 0; i < 2; ++i) {
    std::optional<JsonValue> v = JsonValue::Parse(lines[i]);
    ASSERT_TRUE(v.has_value() && v->is_object()) << lines[i];
    EXPECT_EQ(v->GetInt("status"), 408) << lines[i];
    EXPECT_EQ(v->GetString("uri"), "/api/generate") << lines[i];
    EXPECT_EQ(v->GetString("route"), "generation") << lines[i];
    EXPECT_EQ(v->GetString("protocol"), i == 0 ? "HTTP/1.1" : "HTTP/2.0") << lines[i];
  }
  const std::vector<PromFamily> f = Scrape();
  EXPECT_EQ(Value(f, "sluice_http_requests_total", {{"route", "generation"}, {"code", "408"}}), 2);
  EXPECT_EQ(Value(f, "sluice_http_requests_total", {{"route", "generation"}, {"code", "499"}}), -1);
}

// logrotate's way: rename the files, SIGUSR1, and new lines go to new files
// at the configured paths while nothing is lost.
TEST_F(ObservabilityIt, Sigusr1ReopensAccessAndErrorLogs) {
  const std::string err_path = dir_ + "/error.log";
  ASSERT_NO_FATAL_FAILURE(StartStack(
      {}, {"--access_log=" + log_path(), "--access_log_flush=10ms", "--error_log=" + err_path}));
  EXPECT_EQ(Get("/api/tags").status, 200);
  EXPECT_EQ(Get("/api/version").status, 200);
  WaitLines(log_path(), 2);
  ASSERT_EQ(rename(log_path().c_str(), (log_path() + ".1").c_str()), 0);
  ASSERT_EQ(rename(err_path.c_str(), (err_path + ".1").c_str()), 0);
  ASSERT_TRUE(sluice_->Signal(SIGUSR1));
  // The reopen is logged once the new error log is open.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (absl::Now() < deadline && !absl::StrContains(ReadWhole(err_path), "reopened log files")) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(absl::StrContains(ReadWhole(err_path), "reopened log files"));
  EXPECT_TRUE(absl::StrContains(ReadWhole(err_path + ".1"), "listening") ||
              absl::StrContains(ReadWhole(err_path + ".1"), "upstream"))
      << ReadWhole(err_path + ".1");
  EXPECT_EQ(Get("/api/ps").status, 200);
  std::vector<std::string> fresh = WaitLines(log_path(), 1);
  ASSERT_EQ(fresh.size(), 1u);
  EXPECT_TRUE(absl::StrContains(fresh[0], "/api/ps")) << fresh[0];
  std::vector<std::string> old = Lines(ReadWhole(log_path() + ".1"));
  ASSERT_EQ(old.size(), 2u);
  EXPECT_TRUE(absl::StrContains(old[0], "/api/tags"));
  EXPECT_TRUE(absl::StrContains(old[1], "/api/version"));
}

// logrotate renames the file, then sends SIGUSR1: the lines the workers
// still hold (up to --access_log_flush of them) belong to the old file.
TEST_F(ObservabilityIt, Sigusr1SendsBufferedLinesToTheOldFile) {
  const std::string err_path = dir_ + "/error.log";
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--access_log=" + log_path(), "--access_log_flush=60s",
                                          "--threads=2", "--error_log=" + err_path}));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(Get("/api/tags").status, 200);
  EXPECT_EQ(Get("/api/version").status, 200);
  // Still in the workers' buffers.
  EXPECT_EQ(ReadWhole(log_path()), "");
  ASSERT_EQ(rename(log_path().c_str(), (log_path() + ".1").c_str()), 0);
  ASSERT_TRUE(sluice_->Signal(SIGUSR1));
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (absl::Now() < deadline && !absl::StrContains(ReadWhole(err_path), "reopened log files")) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(absl::StrContains(ReadWhole(err_path), "reopened log files"));
  EXPECT_EQ(Get("/api/ps").status, 200);
  // Stopping hands over the rest.
  expect_sluice_exit_ = true;
  ExitInfo stopped = sluice_->Terminate(absl::Seconds(10));
  EXPECT_TRUE(stopped.exited && stopped.code == 0);
  std::vector<std::string> old = Lines(ReadWhole(log_path() + ".1"));
  ASSERT_EQ(old.size(), 5u) << ReadWhole(log_path() + ".1");
  for (const std::string& l : old) EXPECT_FALSE(absl::StrContains(l, "/api/ps")) << l;
  std::vector<std::string> fresh = Lines(ReadWhole(log_path()));
  ASSERT_EQ(fresh.size(), 1u) << ReadWhole(log_path());
  EXPECT_TRUE(absl::StrContains(fresh[0], "/api/ps")) << fresh[0];
}

// The plain port's 301 carries a small JSON body naming the new location:
// $body_bytes_sent counts it, as nginx counts its redirect page.
TEST_F(ObservabilityIt, RedirectLogsItsBodyBytes) {
  CommandResult certs = RunShell(absl::StrCat("bash ", ShellQuote(SLUICE_SOURCE_DIR),
                                              "/tools/make-certs.sh ", ShellQuote(dir_ + "/certs")),
                                 absl::Seconds(30));
  ASSERT_EQ(certs.exit.code, 0) << certs.err;
  ASSERT_NO_FATAL_FAILURE(StartStack(
      {}, {"--listen_tls=127.0.0.1:0", "--http_mode=redirect",
           "--tls_cert=" + dir_ + "/certs/server.pem", "--tls_key=" + dir_ + "/certs/server.key",
           "--access_log=" + log_path(), "--access_log_flush=10ms"}));
  HttpResponse r = Get("/api/tags?x=1");
  ASSERT_EQ(r.status, 301);
  ASSERT_GT(r.body.size(), 0u);
  std::vector<std::string> lines = WaitLines(log_path(), 1);
  ASSERT_EQ(lines.size(), 1u);
  std::vector<std::string> f = absl::StrSplit(lines[0], ' ');
  ASSERT_GE(f.size(), 13u) << lines[0];
  EXPECT_EQ(f[6], "/api/tags?x=1") << lines[0];
  EXPECT_EQ(f[8], "301") << lines[0];
  EXPECT_EQ(f[9], absl::StrCat(r.body.size())) << lines[0];
}

// A refused Basic login logs the user name that was tried, as nginx's
// $remote_user does (it is what an operator greps for after a lockout);
// a refused key names no one.
TEST_F(ObservabilityIt, FailedBasicLoginLogsTheUserTried) {
  const std::string users = dir_ + "/users.htpasswd";
  {
    std::ofstream out(users);
    out << "alice:{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ=\n";  // password "pass"
  }
  auto basic = [](const std::string& user, const std::string& pass) {
    return std::pair<std::string, std::string>{
        "Authorization", absl::StrCat("Basic ", absl::Base64Escape(user + ":" + pass))};
  };
  const std::string keys = AddKeyFile();
  for (const char* format : {"nginx", "json"}) {
    SCOPED_TRACE(format);
    const std::string log = absl::StrCat(dir_, "/access-", format, ".log");
    if (sluice_) sluice_->Terminate();
    if (!sim_) {
      auto sim = StartSim();
      ASSERT_TRUE(sim.ok()) << sim.status();
      sim_ = std::move(*sim);
    }
    auto s = StartSluice(sim_->port(),
                         {"--htpasswd=" + users, "--keys_file=" + keys, "--access_log=" + log,
                          "--access_log_flush=10ms", absl::StrCat("--access_log_format=", format)});
    ASSERT_TRUE(s.ok()) << s.status();
    sluice_ = std::move(*s);
    EXPECT_EQ(Get("/api/tags", {basic("alice", "pass")}).status, 200);
    EXPECT_EQ(Get("/api/tags", {basic("alice", "wrong")}).status, 401);
    EXPECT_EQ(Get("/api/tags", {basic("mallory", "guess")}).status, 401);
    EXPECT_EQ(Get("/api/tags", {{"Authorization", "Bearer sk-not-a-key"}}).status, 401);
    std::vector<std::string> lines = WaitLines(log, 4);
    ASSERT_EQ(lines.size(), 4u);
    const std::vector<std::string> want = {"alice", "alice", "mallory", ""};
    for (size_t i = 0; i < 4; ++i) {
      if (std::string(format) == "nginx") {
        std::vector<std::string> f = absl::StrSplit(lines[i], ' ');
        ASSERT_GE(f.size(), 3u) << lines[i];
        EXPECT_EQ(f[2], want[i].empty() ? "-" : want[i]) << lines[i];
      } else {
        EXPECT_TRUE(absl::StrContains(
            lines[i], want[i].empty() ? "\"user\":null" : "\"user\":\"" + want[i] + "\""))
            << lines[i];
        // Only a login that succeeded is a principal.
        EXPECT_EQ(absl::StrContains(lines[i], "\"key\":\"user:alice\""), i == 0) << lines[i];
      }
    }
  }
}

// An htpasswd file whose hashes differ in cost lets a stranger tell which
// user names exist by timing: the error log says so at start and on every
// reload, naming the cheap users.
TEST_F(ObservabilityIt, MixedHtpasswdCostsAreWarnedAtLoad) {
  const std::string users = dir_ + "/users.htpasswd";
  const std::string err_path = dir_ + "/error.log";
  const std::string bcrypt4 = "$2y$04$xKGzC6dsYqyU66r6ohDHJudQBbzRslsDwPvW0oN78ja7K2Io/bdOy";
  auto write_users = [&](const std::string& text) {
    std::ofstream out(users);
    out << text;
  };
  write_users(absl::StrCat("alice:", bcrypt4, "\nbob:{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ=\n"));
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--htpasswd=" + users, "--error_log=" + err_path}));
  auto warning_lines = [&] {
    std::vector<std::string> out;
    for (const std::string& l : Lines(ReadWhole(err_path))) {
      if (absl::StrContains(l, "hashes of unequal cost")) out.push_back(l);
    }
    return out;
  };
  // The error log is written by its own thread: the line may come a
  // moment after the listening line.
  const absl::Time logged = absl::Now() + absl::Seconds(5);
  while (absl::Now() < logged && warning_lines().empty()) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  std::vector<std::string> w = warning_lines();
  ASSERT_EQ(w.size(), 1u) << ReadWhole(err_path);
  EXPECT_TRUE(absl::StrContains(w[0], "[warn]")) << w[0];
  EXPECT_TRUE(absl::StrContains(w[0], users)) << w[0];
  EXPECT_TRUE(absl::StrContains(w[0], "cheapest ({SHA}): bob;")) << w[0];

  // A reload with one more cheap user warns again, naming both.
  write_users(absl::StrCat("alice:", bcrypt4, "\nbob:{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ=\n",
                           "carol:{SHA}nU4eI71bcnBGqeO0t9tXvY1u5oQ=\n"));
  ASSERT_TRUE(sluice_->Signal(SIGHUP));
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (absl::Now() < deadline && warning_lines().size() < 2) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  w = warning_lines();
  ASSERT_EQ(w.size(), 2u) << ReadWhole(err_path);
  EXPECT_TRUE(absl::StrContains(w[1], "SIGHUP: ")) << w[1];
  EXPECT_TRUE(absl::StrContains(w[1], "cheapest ({SHA}): bob, carol;")) << w[1];

  // One scheme and cost: no warning on the next reload.
  write_users(absl::StrCat("alice:", bcrypt4, "\n"));
  ASSERT_TRUE(sluice_->Signal(SIGHUP));
  auto reloads = [&] {
    const std::string text = ReadWhole(err_path);
    size_t n = 0;
    for (size_t at = text.find("SIGHUP: reloaded policy"); at != std::string::npos;
         at = text.find("SIGHUP: reloaded policy", at + 1)) {
      ++n;
    }
    return n;
  };
  const absl::Time reloaded = absl::Now() + absl::Seconds(5);
  while (absl::Now() < reloaded && reloads() < 2) absl::SleepFor(absl::Milliseconds(20));
  ASSERT_EQ(reloads(), 2u) << ReadWhole(err_path);
  EXPECT_EQ(warning_lines().size(), 2u) << ReadWhole(err_path);
}

// One line per event, with the level, the connection and the cause;
// --log_level filters.
TEST_F(ObservabilityIt, ErrorLogNamesConnectionAndCause) {
  // An upstream that refuses: sluice in front of a closed port.
  const std::string err_path = dir_ + "/error.log";
  auto s = StartSluice(1, {"--error_log=" + err_path});
  ASSERT_TRUE(s.ok()) << s.status();
  sluice_ = std::move(*s);
  EXPECT_EQ(Get("/api/tags").status, 502);
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  std::string text;
  while (absl::Now() < deadline) {
    text = ReadWhole(err_path);
    if (absl::StrContains(text, "502")) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  std::string line;
  for (const std::string& l : Lines(text)) {
    if (absl::StrContains(l, "502")) line = l;
  }
  EXPECT_TRUE(absl::StrContains(line, "[warn]")) << text;
  EXPECT_TRUE(absl::StrContains(line, " client 127.0.0.1: GET /api/tags: 502")) << line;
  EXPECT_TRUE(absl::StrContains(line, ": *")) << line;
  EXPECT_TRUE(absl::StrContains(line, "connect failed: Connection refused")) << line;

  // At --log_level=error the same failure writes nothing.
  sluice_->Terminate();
  const std::string quiet_path = dir_ + "/quiet.log";
  auto q = StartSluice(1, {"--error_log=" + quiet_path, "--log_level=error"});
  ASSERT_TRUE(q.ok()) << q.status();
  sluice_ = std::move(*q);
  EXPECT_EQ(Get("/api/tags").status, 502);
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_FALSE(absl::StrContains(ReadWhole(quiet_path), "502")) << ReadWhole(quiet_path);
}

// stub_status in nginx's exact layout, its numbers moving with requests.
TEST_F(ObservabilityIt, StubStatusLayoutAndCounts) {
  ASSERT_NO_FATAL_FAILURE(StartStack({"--token_delay_ms=50", "--tokens=40"}, {"--threads=2"}));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(Get("/api/tags").status, 200);
  // A stream in flight and an idle keepalive connection.
  auto streaming = HttpConnection::Connect(proxy_port());
  ASSERT_TRUE(streaming.ok());
  IT_ASSERT_OK((*streaming)
                   ->Send(BuildRequest("POST", "/api/generate", {},
                                       "{\"model\":\"sim\",\"prompt\":\"x\"}")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse head, (*streaming)->ReadHead(absl::Seconds(5)));
  EXPECT_EQ(head.status, 200);
  auto idle = HttpConnection::Connect(proxy_port());
  ASSERT_TRUE(idle.ok());
  IT_ASSERT_OK((*idle)->Send(BuildRequest("GET", "/api/ps")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse ps, (*idle)->ReadResponse());
  EXPECT_EQ(ps.status, 200);

  HttpResponse r = Get("/status");
  ASSERT_EQ(r.status, 200) << r.body;
  const std::vector<std::string> lines = absl::StrSplit(r.body, '\n');
  ASSERT_EQ(lines.size(), 5u) << r.body;
  EXPECT_EQ(lines[4], "");
  int active = -1, accepts = -1, handled = -1, requests = -1, reading = -1, writing = -1,
      waiting = -1;
  ASSERT_EQ(sscanf(lines[0].c_str(), "Active connections: %d ", &active), 1) << r.body;
  EXPECT_TRUE(absl::EndsWith(lines[0], " ")) << r.body;
  EXPECT_EQ(lines[1], "server accepts handled requests");
  ASSERT_EQ(sscanf(lines[2].c_str(), " %d %d %d ", &accepts, &handled, &requests), 3);
  EXPECT_TRUE(absl::StartsWith(lines[2], " ") && absl::EndsWith(lines[2], " ")) << r.body;
  ASSERT_EQ(sscanf(lines[3].c_str(), "Reading: %d Writing: %d Waiting: %d ", &reading, &writing,
                   &waiting),
            3)
      << r.body;
  EXPECT_EQ(accepts, 7) << r.body;  // 4 + streaming + idle + this one
  EXPECT_EQ(handled, 7) << r.body;
  EXPECT_EQ(requests, 7) << r.body;
  EXPECT_EQ(active, 3) << r.body;  // streaming, idle, this one
  EXPECT_EQ(writing, 2) << r.body;
  EXPECT_EQ(waiting, 1) << r.body;
  EXPECT_EQ(reading, 0) << r.body;
  EXPECT_EQ(active, reading + writing + waiting);
}

// /metrics: strictly valid Prometheus text whose counters move with the
// requests made, summed over two workers; tokens by key and model; TLS
// handshakes and resumptions; rejections.
TEST_F(ObservabilityIt, MetricsAreValidAndMoveWithRequests) {
  const std::string key = AddKey("bob");
  CommandResult certs = RunShell(absl::StrCat("bash ", ShellQuote(SLUICE_SOURCE_DIR),
                                              "/tools/make-certs.sh ", ShellQuote(dir_ + "/certs")),
                                 absl::Seconds(30));
  ASSERT_EQ(certs.exit.code, 0) << certs.err;
  ASSERT_NO_FATAL_FAILURE(StartStack(
      {"--token_delay_ms=1", "--tokens=7"},
      {"--threads=2", "--keys_file=" + dir_ + "/keys.txt", "--listen_tls=127.0.0.1:0",
       "--tls_cert=" + dir_ + "/certs/server.pem", "--tls_key=" + dir_ + "/certs/server.key"}));
  const std::vector<PromFamily> before = Scrape();
  ASSERT_FALSE(before.empty());
  EXPECT_EQ(Value(before, "sluice_workers"), 2);
  EXPECT_EQ(Value(before, "sluice_build_info", {{"version", "0.1.0"}}), 1);
  const std::string auth = ShellQuote("Authorization: Bearer " + key);
  // Spread over both workers (steering hashes the client address).
  for (int i = 1; i <= 6; ++i) {
    EXPECT_EQ(Curl("-H " + auth, "/api/tags", absl::StrCat("127.0.0.", i)), "200");
  }
  EXPECT_EQ(Curl("", "/api/tags", "127.0.0.9"), "401");
  for (int i = 1; i <= 2; ++i) {
    EXPECT_EQ(Curl("-H " + auth + " -d '{\"model\":\"llama3\",\"prompt\":\"hi\"}'", "/api/generate",
                   absl::StrCat("127.0.0.", i)),
              "200");
  }
  // Two TLS connections from one curl: the second resumes the session.
  CommandResult tls = RunShell(
      absl::StrCat(
          "curl -sS --http1.1 --max-time 10 --cacert ", ShellQuote(dir_ + "/certs/ca.pem"),
          " -H 'Connection: close' -o /dev/null -w '%{http_code}\\n' -H ", auth, " ",
          ShellQuote(absl::StrCat("https://127.0.0.1:", sluice_->tls_port(), "/api/tags")),
          " --next --http1.1 --cacert ", ShellQuote(dir_ + "/certs/ca.pem"), " -H ", auth,
          " -o /dev/null -w '%{http_code}\\n' ",
          ShellQuote(absl::StrCat("https://127.0.0.1:", sluice_->tls_port(), "/api/version"))),
      absl::Seconds(20));
  EXPECT_EQ(tls.out, "200\n200\n") << tls.err;

  const std::vector<PromFamily> after = Scrape();
  const auto delta = [&](const std::string& name,
                         const std::vector<std::pair<std::string, std::string>>& labels = {}) {
    return FindSample(after, name, labels).value_or(0) -
           FindSample(before, name, labels).value_or(0);
  };
  // A scrape is counted once it is answered: the first one is in `after`.
  EXPECT_EQ(delta("sluice_http_requests_total", {{"route", "api"}, {"code", "200"}}), 6 + 2);
  EXPECT_EQ(delta("sluice_http_requests_total", {{"route", "generation"}, {"code", "200"}}), 2);
  EXPECT_EQ(delta("sluice_http_requests_total", {{"route", "api"}, {"code", "401"}}), 1);
  EXPECT_EQ(delta("sluice_http_requests_total", {{"route", "internal"}, {"code", "200"}}), 1);
  EXPECT_EQ(delta("sluice_rejections_total", {{"reason", "auth"}}), 1);
  EXPECT_EQ(Value(after, "sluice_tokens_total",
                  {{"key", "key:bob"}, {"model", "llama3"}, {"type", "completion"}}),
            14);
  EXPECT_EQ(Value(after, "sluice_tokens_total",
                  {{"key", "key:bob"}, {"model", "llama3"}, {"type", "prompt"}}),
            16);
  EXPECT_EQ(Value(after, "sluice_token_requests_total", {{"key", "key:bob"}, {"model", "llama3"}}),
            2);
  EXPECT_EQ(Value(after, "sluice_time_to_first_token_seconds_count", {{"route", "generation"}}), 2);
  EXPECT_EQ(Value(after, "sluice_inter_token_gap_seconds_count", {{"route", "generation"}}), 12);
  EXPECT_EQ(Value(after, "sluice_request_duration_seconds_count", {{"route", "generation"}}), 2);
  EXPECT_EQ(Value(after, "sluice_upstream_response_seconds_count", {{"route", "generation"}}), 2);
  EXPECT_GE(delta("sluice_connections_accepted_total"), 11);
  EXPECT_EQ(delta("sluice_tls_handshakes_total"), 2);
  EXPECT_EQ(delta("sluice_tls_resumptions_total"), 1);
  EXPECT_GE(Value(after, "sluice_upstream_connections", {{"state", "idle"}}), 1);
  EXPECT_GE(delta("sluice_upstream_connects_total"), 1);
  EXPECT_EQ(Value(after, "sluice_active_streams"), 1);  // the scrape itself
  EXPECT_EQ(Value(after, "sluice_connections", {{"state", "writing"}}), 1);
}

// Both pages answer only the allowed addresses (by default loopback's
// 127.0.0.1 and ::1, as the nginx baseline's `allow 127.0.0.1`), after
// --trusted_proxies resolution, GET and HEAD only.
TEST_F(ObservabilityIt, PagesRefusedOutsideAllowedAddresses) {
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--trusted_proxies=127.0.0.1/32"}));
  for (const char* page : {"/status", "/metrics"}) {
    EXPECT_EQ(Curl("", page), "200") << page;
    EXPECT_EQ(Curl("", page, "127.0.0.2"), "403") << page;
    EXPECT_EQ(Curl("-H 'X-Forwarded-For: 203.0.113.7'", page), "403") << page;
    EXPECT_EQ(Curl("-I", page), "200") << page;
    EXPECT_EQ(Curl("-X POST -d x", page), "405") << page;
  }
  std::string body = Curl("", "/status", "127.0.0.2", /*body=*/true);
  std::optional<JsonValue> j = JsonValue::Parse(body);
  ASSERT_TRUE(j.has_value()) << body;
  EXPECT_TRUE(j->GetString("error").has_value()) << body;

  sluice_->Terminate();
  auto s = StartSluice(sim_port(), {"--status_allow=192.0.2.0/24", "--metrics=false",
                                    "--status_path=/nginx_status"});
  ASSERT_TRUE(s.ok()) << s.status();
  sluice_ = std::move(*s);
  EXPECT_EQ(Curl("", "/nginx_status"), "403");
  // Not served at all: the upstream answers (the simulator's 404).
  EXPECT_EQ(Curl("", "/metrics"), "404");
  EXPECT_EQ(Curl("", "/status"), "404");
}

TEST_F(ObservabilityIt, BadFlagsNameTheFlag) {
  struct Case {
    std::vector<std::string> args;
    std::string flag;
  };
  const std::vector<Case> cases = {
      {{"--access_log_format=xml"}, "--access_log_format"},
      {{"--access_log=" + dir_ + "/missing/dir/access.log"}, "--access_log"},
      {{"--error_log=" + dir_ + "/missing/dir/error.log"}, "--error_log"},
      {{"--status_allow=10.0.0.0/40"}, "--status_allow"},
      {{"--metrics_path=metrics"}, "--metrics_path"},
      {{"--status_path=/x", "--metrics_path=/x"}, "--metrics_path"},
      {{"--access_log_flush=0s"}, "--access_log_flush"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"--listen_http=127.0.0.1:0",
                                     "--listen_tls=", "--http_mode=serve", "--auth=none"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    CommandResult r = RunProgram(SluiceBinary(), args, absl::Seconds(10));
    EXPECT_EQ(r.exit.code, 2) << c.flag << ": " << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, c.flag)) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}

}  // namespace
}  // namespace sluice::integration
