// TLS and HTTP/2 termination through the real binary: curl (HTTP/2 and
// HTTP/1.1 over TLS, no ALPN, h2c), nghttp, h2load, node's http2 module and
// the npm openai client over TLS, the port-80 redirect, HSTS, certificate
// reload on SIGHUP, and handshakes that fail or stall.
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {
namespace {

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// A scratch directory with a CA and a server certificate for 127.0.0.1,
// made by tools/make-certs.sh as a user would.
std::string MakeCerts(const std::string& name, bool rsa = false) {
  std::string dir = absl::StrCat(::testing::TempDir(), "sluice-", name, "-", getpid());
  CommandResult res =
      RunShell(absl::StrCat("rm -rf ", ShellQuote(dir), " && bash ", ShellQuote(SLUICE_SOURCE_DIR),
                            "/tools/make-certs.sh ", rsa ? "--rsa " : "", ShellQuote(dir)),
               absl::Seconds(30));
  EXPECT_TRUE(res.exit.exited && res.exit.code == 0) << res.out << res.err;
  return dir;
}

class H2ToH1Tls : public ProxyTest {
 protected:
  void StartTls(std::vector<std::string> extra = {}, bool rsa = false) {
    certs_ = MakeCerts(::testing::UnitTest::GetInstance()->current_test_info()->name(), rsa);
    std::vector<std::string> args = {"--listen_tls=127.0.0.1:0", "--http_mode=redirect",
                                     absl::StrCat("--tls_cert=", certs_, "/server.pem"),
                                     absl::StrCat("--tls_key=", certs_, "/server.key")};
    args.insert(args.end(), extra.begin(), extra.end());
    ASSERT_NO_FATAL_FAILURE(StartStack({}, args));
    ASSERT_GT(sluice_->tls_port(), 0);
  }
  std::string https() const { return absl::StrCat("https://127.0.0.1:", sluice_->tls_port()); }
  std::string ca() const { return absl::StrCat(certs_, "/ca.pem"); }
  // curl against the TLS port; `opts` go before the URL.
  CommandResult Curl(const std::string& opts, const std::string& path,
                     const std::string& ca_file = "") {
    return RunShell(absl::StrCat("curl -sS --max-time 10 --cacert ",
                                 ShellQuote(ca_file.empty() ? ca() : ca_file), " ", opts, " ",
                                 ShellQuote(https() + path)),
                    absl::Seconds(15));
  }
  CommandResult Node(const std::string& script, const std::vector<std::string>& args) {
    std::vector<std::string> argv = {absl::StrCat(SLUICE_NODE_DIR, "/", script)};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunProgram(SLUICE_NODE_BIN, argv, absl::Seconds(30),
                      {absl::StrCat("SLUICE_URL=", https()), absl::StrCat("SLUICE_CA=", ca()),
                       absl::StrCat("NODE_EXTRA_CA_CERTS=", ca())});
  }

  std::string certs_;
};

TEST_F(H2ToH1Tls, CurlHttp2GetsHstsAndTheModelList) {
  ASSERT_NO_FATAL_FAILURE(StartTls());
  CommandResult res = Curl("--http2 -i -w '\\nversion=%{http_version}'", "/api/tags");
  ASSERT_EQ(res.exit.code, 0) << res.err;
  EXPECT_TRUE(absl::StrContains(res.out, "HTTP/2 200")) << res.out;
  EXPECT_TRUE(absl::StrContains(res.out, "version=2")) << res.out;
  EXPECT_TRUE(
      ContainsIgnoreCase(res.out, "strict-transport-security: max-age=63072000; includeSubDomains"))
      << res.out;
  EXPECT_TRUE(absl::StrContains(res.out, "\"models\"")) << res.out;
}

TEST_F(H2ToH1Tls, CurlHttp11AndNoAlpnFallBackToHttp11) {
  ASSERT_NO_FATAL_FAILURE(StartTls());
  for (const char* opts : {"--http1.1", "--http1.1 --no-alpn", "--http2 --no-alpn"}) {
    CommandResult res =
        Curl(absl::StrCat(opts, " -i -w '\\nversion=%{http_version}'"), "/api/version");
    ASSERT_EQ(res.exit.code, 0) << opts << ": " << res.err;
    EXPECT_TRUE(absl::StrContains(res.out, "HTTP/1.1 200")) << opts << ": " << res.out;
    EXPECT_TRUE(absl::StrContains(res.out, "version=1.1")) << opts << ": " << res.out;
    EXPECT_TRUE(ContainsIgnoreCase(res.out, "strict-transport-security:")) << res.out;
  }
}

TEST_F(H2ToH1Tls, RsaCertificateWorksToo) {
  ASSERT_NO_FATAL_FAILURE(StartTls({}, /*rsa=*/true));
  CommandResult res = Curl("--http2 -o /dev/null -w '%{http_code}'", "/api/version");
  EXPECT_EQ(res.out, "200") << res.err;
}

TEST_F(H2ToH1Tls, PlainPortRedirectsToHttps) {
  ASSERT_NO_FATAL_FAILURE(StartTls());
  IT_ASSERT_OK_AND_ASSIGN(
      HttpResponse r, Exchange(proxy_port(), BuildRequest("GET", "/api/tags?x=1",
                                                          {{"Host", "example.test:80"}}, "", "")));
  EXPECT_EQ(r.status, 301);
  EXPECT_EQ(r.Header("location").value_or(""),
            absl::StrCat("https://example.test:", sluice_->tls_port(), "/api/tags?x=1"));
  // Nothing went upstream.
  IT_ASSERT_OK_AND_ASSIGN(SimStats stats, FetchSimStats(sim_port()));
  EXPECT_EQ(stats.requests, 0);
}

TEST_F(H2ToH1Tls, HstsCanBeTurnedOff) {
  ASSERT_NO_FATAL_FAILURE(StartTls({"--hsts="}));
  CommandResult res = Curl("--http2 -i", "/api/version");
  ASSERT_EQ(res.exit.code, 0) << res.err;
  EXPECT_FALSE(ContainsIgnoreCase(res.out, "strict-transport-security")) << res.out;
}

TEST_F(H2ToH1Tls, H2cWithPriorKnowledgeOnThePlainListener) {
  ASSERT_NO_FATAL_FAILURE(StartStack());  // plain: --http_mode=serve, no TLS
  CommandResult res = RunShell(
      absl::StrCat(
          "curl -sS --max-time 10 --http2-prior-knowledge -w '\\nversion=%{http_version}' ",
          proxy_url(), "/api/version"),
      absl::Seconds(15));
  ASSERT_EQ(res.exit.code, 0) << res.err;
  EXPECT_TRUE(absl::StrContains(res.out, "version=2")) << res.out;
  EXPECT_TRUE(absl::StrContains(res.out, "0.0.0-sim")) << res.out;
}

// HTTP/2 request bodies are held to --client_max_body_size as HTTP/1.1
// ones are, over TLS and h2c, with curl and node's http2: a content-length
// above the cap gets 413 before anything goes upstream; a body sent
// without one is cut where it passes the cap (413, the upstream request
// abandoned); a body under the cap is served.
TEST_F(H2ToH1Tls, RequestBodiesOverTheCapGet413) {
  ASSERT_NO_FATAL_FAILURE(StartTls({"--client_max_body_size=1k", "--http_mode=serve"}));
  const std::string file = absl::StrCat(certs_, "/body-10k.json");
  {
    std::ofstream out(file);
    out << "{\"model\":\"sim\",\"prompt\":\"" << std::string(10 * 1024, 'x') << "\"}";
  }
  IT_ASSERT_OK_AND_ASSIGN(SimStats before, FetchSimStats(sim_port()));
  const std::string h2c = absl::StrCat(proxy_url(), "/api/generate");
  const std::string write_status = " -w '\\nstatus=%{http_code} version=%{http_version}'";
  struct CurlCase {
    std::string name;
    std::string command;
    bool declared;  // sent with content-length
  };
  const std::vector<CurlCase> cases = {
      {"curl tls content-length",
       absl::StrCat("curl -sS --max-time 10 --http2 --cacert ", ShellQuote(ca()), write_status,
                    " --data-binary @", ShellQuote(file), " ", https(), "/api/generate"),
       true},
      {"curl h2c content-length",
       absl::StrCat("curl -sS --max-time 10 --http2-prior-knowledge", write_status,
                    " --data-binary @", ShellQuote(file), " ", h2c),
       true},
      {"curl tls streamed",
       absl::StrCat("cat ", ShellQuote(file), " | curl -sS --max-time 10 --http2 --cacert ",
                    ShellQuote(ca()), write_status, " -X POST -T - ", https(), "/api/generate"),
       false},
      {"curl h2c streamed",
       absl::StrCat("cat ", ShellQuote(file), " | curl -sS --max-time 10 --http2-prior-knowledge",
                    write_status, " -X POST -T - ", h2c),
       false},
  };
  for (const CurlCase& c : cases) {
    CommandResult res = RunShell(c.command, absl::Seconds(15));
    EXPECT_TRUE(absl::StrContains(res.out, "status=413 version=2"))
        << c.name << ": " << res.out << res.err;
    EXPECT_TRUE(absl::StrContains(res.out, "{\"error\":\"request body too large\"}"))
        << c.name << ": " << res.out;
    if (c.declared) {
      IT_ASSERT_OK_AND_ASSIGN(SimStats now, FetchSimStats(sim_port()));
      EXPECT_EQ(now.requests, before.requests) << c.name << ": the request went upstream";
      before = now;
    }
  }
  // node's http2 module, both ways, both transports.
  for (const std::string& base : {https(), proxy_url()}) {
    for (const char* how : {"length", "stream"}) {
      CommandResult res =
          RunProgram(SLUICE_NODE_BIN,
                     {absl::StrCat(SLUICE_NODE_DIR, "/h2_client.mjs"), "upload", "10240", how},
                     absl::Seconds(30),
                     {absl::StrCat("SLUICE_URL=", base), absl::StrCat("SLUICE_CA=", ca()),
                      absl::StrCat("NODE_EXTRA_CA_CERTS=", ca())});
      ASSERT_EQ(res.exit.code, 0) << base << " " << how << ": " << res.err << res.out;
      EXPECT_TRUE(absl::StrContains(res.out, "\"status\":413"))
          << base << " " << how << ": " << res.out;
      EXPECT_TRUE(absl::StrContains(res.out, "request body too large")) << res.out;
    }
    CommandResult small =
        RunProgram(SLUICE_NODE_BIN,
                   {absl::StrCat(SLUICE_NODE_DIR, "/h2_client.mjs"), "upload", "1000", "length"},
                   absl::Seconds(30),
                   {absl::StrCat("SLUICE_URL=", base), absl::StrCat("SLUICE_CA=", ca()),
                    absl::StrCat("NODE_EXTRA_CA_CERTS=", ca())});
    ASSERT_EQ(small.exit.code, 0) << small.err << small.out;
    EXPECT_TRUE(absl::StrContains(small.out, "\"status\":200")) << base << ": " << small.out;
  }
  // Streamed bodies reached the simulator only to be abandoned: no link is
  // left open on a request that will never complete. What stays is the
  // stats request's own connection and the idle links of the two served
  // uploads.
  absl::Time deadline = absl::Now() + absl::Seconds(3);
  SimStats after;
  do {
    IT_ASSERT_OK_AND_ASSIGN(after, FetchSimStats(sim_port()));
    if (after.active <= 3) break;
    absl::SleepFor(absl::Milliseconds(50));
  } while (absl::Now() < deadline);
  EXPECT_LE(after.active, 3) << "upstream links held by abandoned uploads";
}

TEST_F(H2ToH1Tls, NghttpStreamsAGeneration) {
  ASSERT_NO_FATAL_FAILURE(StartTls());
  std::string body = absl::StrCat(certs_, "/body.json");
  RunShell(absl::StrCat("echo '{\"model\":\"sim\",\"prompt\":\"hi\"}' > ", ShellQuote(body)),
           absl::Seconds(5));
  CommandResult res = RunShell(absl::StrCat("nghttp -v -d ", ShellQuote(body),
                                            " -H 'x-sim-tokens: 5' ", https(), "/api/generate"),
                               absl::Seconds(15));
  ASSERT_EQ(res.exit.code, 0) << res.err << res.out;
  EXPECT_TRUE(absl::StrContains(res.out, ":status: 200")) << res.out;
  EXPECT_TRUE(absl::StrContains(res.out, "\"done\":true")) << res.out;
  // Each token is its own DATA frame, relayed as it came.
  int data_frames = 0;
  for (absl::string_view line : absl::StrSplit(res.out, '\n')) {
    if (absl::StrContains(line, "recv DATA frame")) ++data_frames;
  }
  EXPECT_GE(data_frames, 6) << res.out;
}

TEST_F(H2ToH1Tls, H2loadHundredStreamsOnOneConnection) {
  ASSERT_NO_FATAL_FAILURE(StartTls());
  CommandResult res =
      RunShell(absl::StrCat("h2load -n 500 -c 1 -m 100 ", https(), "/api/tags"), absl::Seconds(30));
  ASSERT_EQ(res.exit.code, 0) << res.err << res.out;
  EXPECT_TRUE(absl::StrContains(res.out, "500 succeeded, 0 failed, 0 errored")) << res.out;
  EXPECT_TRUE(absl::StrContains(res.out, "status codes: 500 2xx")) << res.out;
}

TEST_F(H2ToH1Tls, NodeHttp2StreamArrivesIncrementally) {
  ASSERT_NO_FATAL_FAILURE(StartTls());
  CommandResult res = Node("h2_client.mjs", {"stream"});
  ASSERT_EQ(res.exit.code, 0) << res.err << res.out;
  std::optional<JsonValue> json = JsonValue::Parse(res.out);
  ASSERT_TRUE(json.has_value()) << res.out;
  const JsonValue* arrivals = json->Get("arrivals_ms");
  const JsonValue* lags = json->Get("lags_us");
  ASSERT_TRUE(arrivals && lags && arrivals->is_array() && lags->is_array()) << res.out;
  ASSERT_GE(arrivals->array().size(), 11u) << res.out;
  // 10 tokens 100 ms apart: the last chunk comes about 1 s after the first;
  // a buffering proxy would deliver them together.
  double first = static_cast<double>(arrivals->array().front().AsInt64().value_or(0));
  double last = static_cast<double>(arrivals->array().back().AsInt64().value_or(0));
  EXPECT_GE(last - first, 700) << res.out;
  // Every chunk reaches the client soon after the simulator sent it (loose
  // bound: this is a correctness test, the delay figure is in bench/).
  for (const JsonValue& lag : lags->array())
    EXPECT_LT(lag.AsInt64().value_or(1 << 30), 50000) << res.out;
}

TEST_F(H2ToH1Tls, NodeHttp2HundredConcurrentStreamsOneSession) {
  ASSERT_NO_FATAL_FAILURE(StartTls());
  CommandResult res = Node("h2_client.mjs", {"concurrent"});
  ASSERT_EQ(res.exit.code, 0) << res.err << res.out;
  EXPECT_TRUE(absl::StrContains(res.out, "\"ok\":100")) << res.out;
}

TEST_F(H2ToH1Tls, RstStreamClosesTheUpstreamWithin50ms) {
  ASSERT_NO_FATAL_FAILURE(StartTls());
  CommandResult res = Node("h2_client.mjs", {"cancel"});
  ASSERT_EQ(res.exit.code, 0) << res.err << res.out;
  std::optional<int64_t> cancel_us = FindJsonInt(res.out, "cancel_us");
  ASSERT_TRUE(cancel_us.has_value()) << res.out;
  int64_t abort_us = -1;
  for (int i = 0; i < 100 && abort_us <= 0; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(SimStats stats, FetchSimStats(sim_port()));
    abort_us = stats.last_abort_us;
    if (abort_us <= 0) absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_GT(abort_us, 0) << "the simulator never saw the stream aborted";
  EXPECT_LT(abort_us - *cancel_us, 50000)
      << "cancel at " << *cancel_us << ", upstream close at " << abort_us;
  // The connection and the proxy keep working.
  CommandResult after = Curl("--http2 -o /dev/null -w '%{http_code}'", "/api/version");
  EXPECT_EQ(after.out, "200");
}

TEST_F(H2ToH1Tls, OpenAiClientStreamsOverTls) {
  ASSERT_TRUE(Exists(absl::StrCat(SLUICE_NODE_DIR, "/node_modules/openai/package.json")))
      << "run `npm ci` in tests/integration/node";
  ASSERT_NO_FATAL_FAILURE(StartTls());
  CommandResult res = Node("openai_chat.mjs", {});
  EXPECT_EQ(res.exit.code, 0) << res.err << res.out;
}

TEST_F(H2ToH1Tls, SighupReloadsCertificateAndRefusesABrokenPair) {
  ASSERT_NO_FATAL_FAILURE(StartTls());
  const std::string old_ca = ca();
  // A new pair from a different CA, copied over the files sluice was given.
  std::string fresh = MakeCerts("reload-new");
  ASSERT_EQ(RunShell(absl::StrCat("cp ", fresh, "/server.pem ", fresh, "/server.key ", certs_, "/"),
                     absl::Seconds(5))
                .exit.code,
            0);
  ASSERT_TRUE(sluice_->Signal(SIGHUP));
  bool reloaded = false;
  for (int i = 0; i < 100 && !reloaded; ++i) {
    reloaded = absl::StrContains(sluice_->Stderr(), "reloaded certificate");
    if (!reloaded) absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(reloaded) << sluice_->Stderr();
  EXPECT_EQ(
      Curl("--http2 -o /dev/null -w '%{http_code}'", "/api/version", absl::StrCat(fresh, "/ca.pem"))
          .out,
      "200");
  EXPECT_NE(Curl("--http2 -o /dev/null", "/api/version", old_ca).exit.code, 0)
      << "the old certificate is still served";

  // A broken pair: the key file holds garbage. It is refused, the last good
  // pair stays in use.
  ASSERT_EQ(
      RunShell(absl::StrCat("echo garbage > ", certs_, "/server.key"), absl::Seconds(5)).exit.code,
      0);
  ASSERT_TRUE(sluice_->Signal(SIGHUP));
  bool refused = false;
  for (int i = 0; i < 100 && !refused; ++i) {
    refused = absl::StrContains(sluice_->Stderr(), "not reloaded");
    if (!refused) absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(refused) << sluice_->Stderr();
  EXPECT_EQ(
      Curl("--http2 -o /dev/null -w '%{http_code}'", "/api/version", absl::StrCat(fresh, "/ca.pem"))
          .out,
      "200");
}

TEST_F(H2ToH1Tls, StalledHandshakeClosedAfterTimeoutOthersServed) {
  ASSERT_NO_FATAL_FAILURE(StartTls({"--handshake_timeout=1s"}));
  IT_ASSERT_OK_AND_ASSIGN(auto idle, HttpConnection::Connect(sluice_->tls_port()));
  // Plain HTTP sent to the TLS port: that connection fails alone.
  IT_ASSERT_OK_AND_ASSIGN(auto plain, HttpConnection::Connect(sluice_->tls_port()));
  IT_ASSERT_OK(plain->Send(BuildRequest("GET", "/api/tags")));
  EXPECT_TRUE(plain->ExpectClosed(absl::Seconds(3)).ok());
  EXPECT_EQ(Curl("--http2 -o /dev/null -w '%{http_code}'", "/api/version").out, "200");
  absl::Time start = absl::Now();
  EXPECT_TRUE(idle->ExpectClosed(absl::Seconds(5)).ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

TEST_F(H2ToH1Tls, MissingOrBadCertificateIsAFlagError) {
  CommandResult no_cert = RunProgram(
      SluiceBinary(), {"--listen_http=", "--listen_tls=127.0.0.1:0", "--upstream=127.0.0.1:9"},
      absl::Seconds(5));
  EXPECT_EQ(no_cert.exit.code, 2) << no_cert.err;
  EXPECT_TRUE(absl::StrContains(no_cert.err, "--tls_cert")) << no_cert.err;
  std::string dir = MakeCerts("badpair");
  RunShell(absl::StrCat("echo junk > ", dir, "/bad.pem"), absl::Seconds(5));
  CommandResult bad =
      RunProgram(SluiceBinary(),
                 {"--listen_http=", "--listen_tls=127.0.0.1:0", "--upstream=127.0.0.1:9",
                  "--auth=none", absl::StrCat("--tls_cert=", dir, "/bad.pem"),
                  absl::StrCat("--tls_key=", dir, "/server.key")},
                 absl::Seconds(5));
  EXPECT_EQ(bad.exit.code, 2) << bad.err;
  EXPECT_TRUE(absl::StrContains(bad.err, "bad.pem")) << bad.err;
  EXPECT_EQ(std::count(bad.err.begin(), bad.err.end(), '\n'), 1) << bad.err;
}

}  // namespace
}  // namespace sluice::integration

namespace sluice::integration {
namespace {

TEST_F(H2ToH1Tls, SigtermLetsAnH2StreamFinishThenExitsZero) {
  ASSERT_NO_FATAL_FAILURE(StartTls());
  // A 10-token stream, 100 ms apart (about 1 s), on its own h2 connection.
  auto client = ChildProcess::Spawn(
      SLUICE_NODE_BIN, {absl::StrCat(SLUICE_NODE_DIR, "/h2_client.mjs"), "stream"},
      {absl::StrCat("SLUICE_URL=", https()), absl::StrCat("SLUICE_CA=", ca())});
  ASSERT_TRUE(client.ok()) << client.status();
  // Once the stream runs upstream (node may take a while to start on a
  // loaded machine), a few tokens in.
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    auto stats = FetchSimStats(sim_port());
    if (stats.ok() && stats->requests >= 1) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  absl::SleepFor(absl::Milliseconds(250));
  ASSERT_TRUE(sluice_->Signal(SIGTERM));
  // New connections are refused while the stream finishes.
  absl::SleepFor(absl::Milliseconds(100));
  CommandResult late = Curl("--http2 -o /dev/null", "/api/version");
  EXPECT_NE(late.exit.code, 0) << "a new connection was accepted during the drain";
  std::optional<ExitInfo> done = (*client)->WaitExit(absl::Seconds(10));
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->code, 0) << (*client)->Stderr();
  EXPECT_TRUE(absl::StrContains((*client)->Stdout(), "\"chunks\":11")) << (*client)->Stdout();
  std::optional<ExitInfo> exit = sluice_->WaitExit(absl::Seconds(5));
  ASSERT_TRUE(exit.has_value()) << "sluice still running after the stream ended";
  EXPECT_TRUE(exit->exited && exit->code == 0);
  expect_sluice_exit_ = true;
}

}  // namespace
}  // namespace sluice::integration
