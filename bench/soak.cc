// soak: a bounded mixed-traffic run against sluice over TLS, checking every
// response. bench/soak.sh drives it (with reloads, log reopens and RSS
// sampling alongside); it can also be run by hand against any sluice in
// front of ollama-sim.
//
// --h1_conns HTTP/1.1 keepalive connections and --h2_conns HTTP/2
// connections (each with --streams_per_h2_conn concurrent streams) loop
// until --seconds have passed, each request drawn at random from a
// per-connection generator seeded from --seed and the connection's index
// (so the sequence of requests of a run is fixed; their timing is not):
//
//   15 %  GET /api/tags                    JSON, the simulator's two models
//   15 %  GET /api/version                 JSON with "version"
//   30 %  POST /api/generate, streaming    NDJSON, 2..--max_tokens tokens
//   15 %  POST /api/chat, "stream":false   one JSON object, "done":true
//   25 %  POST /v1/chat/completions, SSE   "data: {...}" events, [DONE]
//
// Generations carry X-Sim-Tokens and X-Sim-Token-Delay-Ms. --cancel_percent
// of the streaming requests are cancelled after a random number (1..tokens)
// of objects or events have arrived: HTTP/2 by RST_STREAM(CANCEL), HTTP/1.1
// by closing the connection (no close_notify, as a client that goes away
// does) and opening a new one. A response that completes before its cancel
// point is reached counts as ok (and as cancel_late).
//
// HTTP/2 cancels are paced: at most --h2_cancels_per_s per connection (a
// token bucket of that size), since sluice, like nghttpx, keeps nghttp2's
// rapid-reset limit (CVE-2023-44487): a client may send 1000 RST_STREAM
// frames at once and 33 per second after that; past it the connection gets
// GOAWAY(INTERNAL_ERROR) and its other streams are lost. A drawn cancel
// that finds the bucket empty runs to the end instead (cancel_skipped).
//
// Checks on every response that is not cancelled: status 200; HTTP/1.1
// framing complete and nothing after it (llhttp, strict); the body: tags
// and version parse as one JSON value with the expected content; NDJSON
// has exactly tokens + 1 lines, each a JSON object, token i carrying
// "tok<i> " in order, the last "done":true; "stream":false is one JSON
// object with "done":true and the whole text; SSE has tokens + 2 events,
// each "data: <JSON>", the tokens in order, then a finish_reason "stop"
// chunk and "data: [DONE]". HTTP/2 streams must end with no error code.
// A request not finished within --request_timeout_s is an error.
//
// At --seconds no new requests start; those in flight finish (up to
// --request_timeout_s), then connections close (HTTP/2 with GOAWAY). A
// progress line per second goes to stderr; the summary to stdout:
//
//   soak ok=.. cancelled=.. errors=.. requests=.. h1=.. h2=.. seconds=..
//        cancel_late=.. cancel_skipped=.. connects=.. server_closes=..
//        error_kinds=k:n,..
//
// requests = ok + cancelled + errors counted on requests that were sent
// (every one should appear in the access log); h1/h2 split it by protocol.
// The first 10 error descriptions follow on stderr. Exit status 1 if
// errors > 0 (connection failures included) or nothing succeeded, 2 on bad
// flags.
#include <llhttp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "bench/h2_client.h"
#include "bench/stats.h"
#include "bench/tls_client.h"

ABSL_FLAG(std::string, host, "127.0.0.1", "IPv4 address of sluice");
ABSL_FLAG(int, port, 0, "sluice's TLS port (required)");
ABSL_FLAG(std::string, sni, "localhost", "TLS server name and Host host");
ABSL_FLAG(double, seconds, 30, "How long to start new requests (1..600)");
ABSL_FLAG(int, h1_conns, 4, "HTTP/1.1 keepalive connections");
ABSL_FLAG(int, h2_conns, 2, "HTTP/2 connections");
ABSL_FLAG(int, streams_per_h2_conn, 8,
          "Concurrent streams per HTTP/2 connection");
ABSL_FLAG(int, cancel_percent, 10,
          "Share of streaming requests cancelled mid-stream (0..100)");
ABSL_FLAG(std::string, key, "",
          "API key, sent as Authorization: Bearer KEY; empty: none");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the request mix");
ABSL_FLAG(int, max_tokens, 8, "Generations have 2..max_tokens tokens");
ABSL_FLAG(std::string, token_delay_ms, "2",
          "X-Sim-Token-Delay-Ms of generations");
ABSL_FLAG(int, threads, 1,
          "Client threads (connections are dealt out to them)");
ABSL_FLAG(double, request_timeout_s, 30,
          "Longest a request may take before it is an error");
ABSL_FLAG(double, h2_cancels_per_s, 25,
          "Most RST_STREAM cancels per second per HTTP/2 connection (sluice "
          "allows 33 "
          "sustained, nghttp2's rapid-reset limit)");

namespace sluice::bench {
namespace {

constexpr int kMaxSeconds = 600;
constexpr int kDialTimeoutUs = 10'000'000;
constexpr int kRedialDelayUs = 200'000;
constexpr size_t kErrorsKept = 10;

enum class Route { kTags, kVersion, kGenerate, kChat, kOpenAiStream, kCount };
constexpr std::array<const char*, 5> kRouteNames = {
    "tags", "version", "generate", "chat", "openai_sse"};

enum class Err {
  kConnect,
  kTls,
  kStatus,
  kBody,
  kFraming,
  kReset,
  kRefused,
  kClosed,
  kTimeout,
  kH2,
  kCount
};
constexpr std::array<const char*, 10> kErrNames = {
    "connect", "tls",     "status", "body",    "framing",
    "reset",   "refused", "closed", "timeout", "h2"};

struct Stats {
  std::atomic<int64_t> ok{0}, cancelled{0}, cancel_late{0}, cancel_skipped{0},
      errors{0}, h1{0}, h2{0};
  std::atomic<int64_t> connects{0}, server_closes{0};
  std::array<std::atomic<int64_t>, static_cast<size_t>(Route::kCount)> routes{};
  std::array<std::atomic<int64_t>, static_cast<size_t>(Err::kCount)> by_kind{};
  std::mutex mu;
  std::vector<std::string> first_errors;
};
Stats g_stats;
std::atomic<bool> g_stopping{false};

void Fail(Err kind, std::string what) {
  g_stats.errors.fetch_add(1);
  g_stats.by_kind[static_cast<size_t>(kind)].fetch_add(1);
  std::lock_guard<std::mutex> lock(g_stats.mu);
  if (g_stats.first_errors.size() < kErrorsKept) {
    g_stats.first_errors.push_back(
        absl::StrCat(kErrNames[static_cast<size_t>(kind)], ": ", what));
  }
}

// A minimal RFC 8259 validator: is `s` exactly one JSON value (surrounding
// whitespace allowed)? Enough to catch truncated, spliced or corrupted text.
class JsonCheck {
 public:
  static bool Valid(std::string_view s) {
    JsonCheck j(s);
    j.Ws();
    if (!j.Value(0)) return false;
    j.Ws();
    return j.p_ == s.size();
  }

 private:
  explicit JsonCheck(std::string_view s) : s_(s) {}
  bool More() const { return p_ < s_.size(); }
  char Peek() const { return More() ? s_[p_] : '\0'; }
  void Ws() {
    while (More() && (Peek() == ' ' || Peek() == '\t' || Peek() == '\n' ||
                      Peek() == '\r'))
      ++p_;
  }
  bool Lit(std::string_view w) {
    if (s_.substr(p_, w.size()) != w) return false;
    p_ += w.size();
    return true;
  }
  bool Value(int depth) {
    if (depth > 64) return false;
    switch (Peek()) {
      case '{':
        return Container(depth, '}', true);
      case '[':
        return Container(depth, ']', false);
      case '"':
        return String();
      case 't':
        return Lit("true");
      case 'f':
        return Lit("false");
      case 'n':
        return Lit("null");
      default:
        return Number();
    }
  }
  bool Container(int depth, char close, bool object) {
    ++p_;
    Ws();
    if (Peek() == close) {
      ++p_;
      return true;
    }
    while (true) {
      Ws();
      if (object) {
        if (!String()) return false;
        Ws();
        if (Peek() != ':') return false;
        ++p_;
        Ws();
      }
      if (!Value(depth + 1)) return false;
      Ws();
      if (Peek() == ',') {
        ++p_;
        continue;
      }
      if (Peek() != close) return false;
      ++p_;
      return true;
    }
  }
  bool String() {
    if (Peek() != '"') return false;
    ++p_;
    while (More()) {
      unsigned char c = static_cast<unsigned char>(s_[p_++]);
      if (c == '"') return true;
      if (c < 0x20) return false;
      if (c == '\\') {
        if (!More()) return false;
        char e = s_[p_++];
        if (e == 'u') {
          for (int i = 0; i < 4; ++i) {
            if (!More() || !isxdigit(static_cast<unsigned char>(s_[p_++])))
              return false;
          }
        } else if (strchr("\"\\/bfnrt", e) == nullptr || e == '\0') {
          return false;
        }
      }
    }
    return false;
  }
  bool Digits() {
    size_t start = p_;
    while (More() && isdigit(static_cast<unsigned char>(Peek()))) ++p_;
    return p_ > start;
  }
  bool Number() {
    if (Peek() == '-') ++p_;
    if (Peek() == '0') {
      ++p_;
    } else if (!Digits()) {
      return false;
    }
    if (Peek() == '.') {
      ++p_;
      if (!Digits()) return false;
    }
    if (Peek() == 'e' || Peek() == 'E') {
      ++p_;
      if (Peek() == '+' || Peek() == '-') ++p_;
      if (!Digits()) return false;
    }
    return true;
  }

  std::string_view s_;
  size_t p_ = 0;
};

// One request as drawn: what to send and how to check it.
struct Request {
  Route route = Route::kTags;
  int tokens = 0;
  bool cancel = false;
  int cancel_after = 0;  // objects or events received before cancelling

  bool streaming() const {
    return route == Route::kGenerate || route == Route::kOpenAiStream;
  }
  const char* path() const {
    switch (route) {
      case Route::kTags:
        return "/api/tags";
      case Route::kVersion:
        return "/api/version";
      case Route::kGenerate:
        return "/api/generate";
      case Route::kChat:
        return "/api/chat";
      default:
        return "/v1/chat/completions";
    }
  }
  std::string body() const {
    switch (route) {
      case Route::kGenerate:
        return R"({"model":"sim:latest","prompt":"soak","stream":true})";
      case Route::kChat:
        return R"({"model":"sim:latest","messages":[{"role":"user","content":"soak"}],"stream":false})";
      case Route::kOpenAiStream:
        return R"({"model":"sim:latest","messages":[{"role":"user","content":"soak"}],"stream":true})";
      default:
        return "";
    }
  }
};

// The request sequence of one connection: the same four draws per request,
// so a run with the same seed issues the same requests in the same order.
class Mix {
 public:
  explicit Mix(uint64_t seed) : rng_(seed) {}
  Request Next() {
    const uint64_t r_route = rng_() % 100, r_tokens = rng_(),
                   r_cancel = rng_() % 100, r_after = rng_();
    Request req;
    req.route = r_route < 15   ? Route::kTags
                : r_route < 30 ? Route::kVersion
                : r_route < 60 ? Route::kGenerate
                : r_route < 75 ? Route::kChat
                               : Route::kOpenAiStream;
    const int max_tokens = absl::GetFlag(FLAGS_max_tokens);
    if (req.route != Route::kTags && req.route != Route::kVersion) {
      req.tokens = 2 + static_cast<int>(r_tokens %
                                        static_cast<uint64_t>(max_tokens - 1));
    }
    if (req.streaming() &&
        static_cast<int>(r_cancel) < absl::GetFlag(FLAGS_cancel_percent)) {
      req.cancel = true;
      req.cancel_after =
          1 + static_cast<int>(r_after % static_cast<uint64_t>(req.tokens));
    }
    return req;
  }

 private:
  std::mt19937_64 rng_;
};

// Counts the complete objects (NDJSON lines) or events (SSE, blank-line
// separated) in a growing body.
struct UnitCounter {
  size_t next = 0;  // where the next search starts
  int units = 0;
  void Update(const std::string& body, bool sse) {
    const std::string_view sep = sse ? "\n\n" : "\n";
    size_t at;
    while ((at = body.find(sep, next)) != std::string::npos) {
      ++units;
      next = at + sep.size();
    }
  }
};

// Checks a complete 200 body of `req`; returns "" or what is wrong.
std::string CheckBody(const Request& req, const std::string& body) {
  auto snippet = [&](std::string_view s) {
    std::string out(s.substr(0, 120));
    for (char& c : out) {
      if (static_cast<unsigned char>(c) < 0x20) c = '.';
    }
    return absl::StrCat("'", out, s.size() > 120 ? "...'" : "'");
  };
  switch (req.route) {
    case Route::kTags:
      if (!JsonCheck::Valid(body) || body.rfind(R"({"models":[)", 0) != 0 ||
          body.find(R"("name":"sim:latest")") == std::string::npos) {
        return "tags body " + snippet(body);
      }
      return "";
    case Route::kVersion:
      if (!JsonCheck::Valid(body) ||
          body.find(R"("version":)") == std::string::npos) {
        return "version body " + snippet(body);
      }
      return "";
    case Route::kChat: {
      std::string text;
      for (int i = 1; i <= req.tokens; ++i)
        absl::StrAppend(&text, "tok", i, " ");
      if (!JsonCheck::Valid(body) ||
          body.find(R"("done":true)") == std::string::npos ||
          body.find(absl::StrCat(R"("content":")", text, "\"")) ==
              std::string::npos) {
        return absl::StrCat("chat stream:false (", req.tokens, " tokens) body ",
                            snippet(body));
      }
      return "";
    }
    case Route::kGenerate: {
      if (body.empty() || body.back() != '\n')
        return "NDJSON not ending in a newline";
      std::vector<std::string_view> lines;
      std::string_view rest(body);
      size_t nl;
      while ((nl = rest.find('\n')) != std::string_view::npos) {
        lines.push_back(rest.substr(0, nl));
        rest.remove_prefix(nl + 1);
      }
      if (static_cast<int>(lines.size()) != req.tokens + 1) {
        return absl::StrCat("NDJSON has ", lines.size(), " lines, want ",
                            req.tokens + 1);
      }
      for (size_t i = 0; i < lines.size(); ++i) {
        if (!JsonCheck::Valid(lines[i]) || lines[i].front() != '{') {
          return absl::StrCat("NDJSON line ", i + 1,
                              " is not a JSON object: ", snippet(lines[i]));
        }
        const bool last = i + 1 == lines.size();
        std::string want = last ? R"("done":true)"
                                : absl::StrCat(R"("response":"tok)", i + 1,
                                               R"( ","done":false)");
        if (lines[i].find(want) == std::string_view::npos) {
          return absl::StrCat("NDJSON line ", i + 1, " lacks ", want, ": ",
                              snippet(lines[i]));
        }
      }
      return "";
    }
    default: {  // SSE
      if (body.size() < 2 || body.compare(body.size() - 2, 2, "\n\n") != 0) {
        return "SSE not ending in a blank line: " +
               snippet(body.substr(body.size() > 60 ? body.size() - 60 : 0));
      }
      std::vector<std::string_view> events;
      std::string_view rest(body);
      size_t end;
      while ((end = rest.find("\n\n")) != std::string_view::npos) {
        events.push_back(rest.substr(0, end));
        rest.remove_prefix(end + 2);
      }
      if (static_cast<int>(events.size()) != req.tokens + 2) {
        return absl::StrCat("SSE has ", events.size(), " events, want ",
                            req.tokens + 2);
      }
      if (events.back() != "data: [DONE]")
        return "SSE last event " + snippet(events.back());
      for (size_t i = 0; i + 1 < events.size(); ++i) {
        std::string_view e = events[i];
        if (e.rfind("data: ", 0) != 0 || !JsonCheck::Valid(e.substr(6))) {
          return absl::StrCat("SSE event ", i + 1,
                              " is not data: JSON: ", snippet(e));
        }
        std::string want =
            static_cast<int>(i) < req.tokens
                ? absl::StrCat(R"("content":"tok)", i + 1, R"( ")")
                : std::string(R"("finish_reason":"stop")");
        if (e.find(want) == std::string_view::npos) {
          return absl::StrCat("SSE event ", i + 1, " lacks ", want, ": ",
                              snippet(e));
        }
      }
      return "";
    }
  }
}

// Records a response that ran to its end (not cancelled): status and body.
void Complete(const Request& req, int status, const std::string& body,
              const char* proto) {
  if (status != 200) {
    Fail(Err::kStatus, absl::StrCat(proto, " ", req.path(), ": status ", status,
                                    " body '", body.substr(0, 200), "'"));
    return;
  }
  std::string wrong = CheckBody(req, body);
  if (!wrong.empty()) {
    Fail(Err::kBody, absl::StrCat(proto, " ", req.path(), ": ", wrong));
    return;
  }
  g_stats.ok.fetch_add(1);
  if (req.cancel) g_stats.cancel_late.fetch_add(1);
}

std::string Authority() {
  return absl::StrCat(absl::GetFlag(FLAGS_sni), ":", absl::GetFlag(FLAGS_port));
}

// A connection owned by one thread's event loop: connect and TLS handshake
// here, the protocol in the subclass. It redials after its socket ends
// until the run stops.
class Conn {
 public:
  Conn(int epfd, SSL_CTX* ctx, const sockaddr_in& addr, std::string_view alpn,
       uint64_t seed)
      : epfd_(epfd), ctx_(ctx), addr_(addr), alpn_(alpn), mix_(seed) {}
  virtual ~Conn() = default;

  void Start(int64_t now) { Dial(now); }

  void OnEvent(uint32_t events, int64_t now) {
    if (phase_ == Phase::kConnecting || phase_ == Phase::kHandshake) {
      DriveDial(events, now);
    } else if (phase_ == Phase::kOpen) {
      OnOpenEvent(events, now);
    }
  }

  void OnTick(int64_t now) {
    if (phase_ == Phase::kBackoff && now >= redial_at_) {
      if (g_stopping.load()) {
        phase_ = Phase::kFinished;
      } else {
        Dial(now);
      }
    } else if ((phase_ == Phase::kConnecting || phase_ == Phase::kHandshake) &&
               now - dial_start_ > kDialTimeoutUs) {
      DialFailed(Err::kConnect, "connect and handshake took over 10 s", now);
    } else if (phase_ == Phase::kOpen) {
      OnOpenTick(now);
    }
  }

  bool finished() const { return phase_ == Phase::kFinished; }

  // The run is over: requests still in flight count as errors.
  virtual void Abandon() = 0;

 protected:
  enum class Phase { kConnecting, kHandshake, kOpen, kBackoff, kFinished };

  virtual void OnOpen(std::unique_ptr<TlsSocket> tls, int64_t now) = 0;
  virtual void OnOpenEvent(uint32_t events, int64_t now) = 0;
  virtual void OnOpenTick(int64_t now) = 0;

  // The subclass has closed its socket: dial again, or finish when stopping.
  void Closed(int64_t now) {
    fd_ = -1;
    if (g_stopping.load()) {
      phase_ = Phase::kFinished;
    } else {
      Dial(now);
    }
  }

  void SetWantWrite(bool want) {
    if (fd_ < 0 || want == want_write_) return;
    want_write_ = want;
    epoll_event ev{};
    ev.events = want ? EPOLLIN | EPOLLOUT : EPOLLIN;
    ev.data.ptr = this;
    epoll_ctl(epfd_, EPOLL_CTL_MOD, fd_, &ev);
  }

  Request NextRequest() {
    Request req = mix_.Next();
    g_stats.routes[static_cast<size_t>(req.route)].fetch_add(1);
    return req;
  }

  Phase phase_ = Phase::kBackoff;
  int fd_ = -1;

 private:
  void Dial(int64_t now) {
    dial_start_ = now;
    int fd = StartConnect(addr_);
    if (fd < 0) {
      DialFailed(Err::kConnect, absl::StrCat("connect: ", strerror(-fd)), now);
      return;
    }
    g_stats.connects.fetch_add(1);
    fd_ = fd;
    dial_ = std::make_unique<TlsSocket>(ctx_, fd, absl::GetFlag(FLAGS_sni));
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.ptr = this;
    epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
    want_write_ = true;
    phase_ = Phase::kConnecting;
  }

  void DialFailed(Err kind, std::string what, int64_t now) {
    Fail(kind, absl::StrCat(alpn_, " ", what));
    dial_.reset();
    fd_ = -1;
    phase_ = Phase::kBackoff;
    redial_at_ = now + kRedialDelayUs;
  }

  void DriveDial(uint32_t events, int64_t now) {
    if (phase_ == Phase::kConnecting) {
      if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) == 0) return;
      int err = ConnectResult(fd_);
      if (err != 0) {
        DialFailed(Err::kConnect, absl::StrCat("connect: ", strerror(err)),
                   now);
        return;
      }
      phase_ = Phase::kHandshake;
    }
    TlsSocket::Result r = dial_->Handshake();
    if (r == TlsSocket::Result::kWantRead ||
        r == TlsSocket::Result::kWantWrite) {
      SetWantWrite(r == TlsSocket::Result::kWantWrite);
      return;
    }
    if (r != TlsSocket::Result::kDone) {
      DialFailed(Err::kTls, "TLS handshake: " + dial_->LastError(), now);
      return;
    }
    if (dial_->Alpn() != alpn_) {
      DialFailed(Err::kTls,
                 absl::StrCat("ALPN chose '", std::string(dial_->Alpn()), "'"),
                 now);
      return;
    }
    phase_ = Phase::kOpen;
    SetWantWrite(false);
    OnOpen(std::move(dial_), now);
  }

  int epfd_;
  SSL_CTX* ctx_;
  sockaddr_in addr_;
  std::string alpn_;
  Mix mix_;
  std::unique_ptr<TlsSocket> dial_;
  bool want_write_ = false;
  int64_t dial_start_ = 0;
  int64_t redial_at_ = 0;
};

// HTTP/1.1: one request at a time on a keepalive connection.
class H1Conn final : public Conn {
 public:
  H1Conn(int epfd, SSL_CTX* ctx, const sockaddr_in& addr, uint64_t seed)
      : Conn(epfd, ctx, addr, "http/1.1", seed) {
    llhttp_settings_init(&settings_);
    settings_.on_headers_complete = [](llhttp_t* p) {
      auto* c = static_cast<H1Conn*>(p->data);
      c->status_ = p->status_code;
      return 0;
    };
    settings_.on_body = [](llhttp_t* p, const char* at, size_t len) {
      static_cast<H1Conn*>(p->data)->body_.append(at, len);
      return 0;
    };
    settings_.on_message_complete = [](llhttp_t* p) {
      auto* c = static_cast<H1Conn*>(p->data);
      c->complete_ = true;
      c->keep_alive_ = llhttp_should_keep_alive(p) != 0;
      return static_cast<int>(HPE_PAUSED);
    };
  }

  void Abandon() override {
    if (in_flight_)
      Fail(Err::kTimeout,
           absl::StrCat("h1 ", req_.path(), ": unfinished at the end"));
    in_flight_ = false;
    tls_.reset();
    phase_ = Phase::kFinished;
  }

 private:
  void OnOpen(std::unique_ptr<TlsSocket> tls, int64_t now) override {
    tls_ = std::move(tls);
    if (g_stopping.load()) {
      Close(now);
    } else {
      SendNext(now);
    }
  }

  void SendNext(int64_t now) {
    req_ = NextRequest();
    const std::string body = req_.body();
    std::string head = absl::StrCat(
        body.empty() ? "GET " : "POST ", req_.path(),
        " HTTP/1.1\r\nHost: ", Authority(), "\r\nUser-Agent: sluice-soak\r\n");
    if (!absl::GetFlag(FLAGS_key).empty()) {
      absl::StrAppend(&head, "Authorization: Bearer ", absl::GetFlag(FLAGS_key),
                      "\r\n");
    }
    if (!body.empty()) {
      absl::StrAppend(
          &head,
          "Content-Type: application/json\r\nContent-Length: ", body.size(),
          "\r\nX-Sim-Tokens: ", req_.tokens,
          "\r\nX-Sim-Token-Delay-Ms: ", absl::GetFlag(FLAGS_token_delay_ms),
          "\r\n");
    }
    absl::StrAppend(&head, "\r\n", body);
    llhttp_init(&parser_, HTTP_RESPONSE, &settings_);
    parser_.data = this;
    status_ = 0;
    body_.clear();
    units_ = UnitCounter{};
    complete_ = false;
    in_flight_ = true;
    started_ = now;
    g_stats.h1.fetch_add(1);
    TlsSocket::Result r = tls_->Write(head);
    if (r == TlsSocket::Result::kError || r == TlsSocket::Result::kClosed) {
      Lost(absl::StrCat("write: ", tls_->LastError()), now);
      return;
    }
    SetWantWrite(tls_->HasPending());
  }

  void OnOpenEvent(uint32_t events, int64_t now) override {
    if ((events & EPOLLOUT) != 0 && tls_->HasPending()) {
      TlsSocket::Result r = tls_->Flush();
      if (r == TlsSocket::Result::kError || r == TlsSocket::Result::kClosed) {
        Lost(absl::StrCat("write: ", tls_->LastError()), now);
        return;
      }
      SetWantWrite(tls_->HasPending());
    }
    if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0) ReadAll(now);
  }

  void ReadAll(int64_t now) {
    char buf[16384];
    while (tls_ != nullptr) {
      size_t n = 0;
      TlsSocket::Result r = tls_->Read(buf, sizeof(buf), &n);
      if (r == TlsSocket::Result::kDone) {
        if (!Feed(std::string_view(buf, n), now)) return;
        continue;
      }
      if (r == TlsSocket::Result::kWantRead ||
          r == TlsSocket::Result::kWantWrite)
        return;
      if (!in_flight_) {
        // sluice closed an idle keepalive connection: allowed, not an error.
        g_stats.server_closes.fetch_add(1);
        Close(now);
        return;
      }
      if (r == TlsSocket::Result::kClosed &&
          llhttp_finish(&parser_) == HPE_OK && complete_) {
        Finish(now);
        return;
      }
      Lost(absl::StrCat(
               r == TlsSocket::Result::kClosed ? "server closed" : "read error",
               " mid-response (status ", status_, ", ", body_.size(),
               " body bytes): ", tls_->LastError()),
           now);
      return;
    }
  }

  // False when the connection went away (closed or re-dialled).
  bool Feed(std::string_view data, int64_t now) {
    if (!in_flight_) {
      Fail(Err::kFraming, absl::StrCat("h1: ", data.size(),
                                       " bytes with no request in flight"));
      Close(now);
      return false;
    }
    llhttp_errno_t e = llhttp_execute(&parser_, data.data(), data.size());
    if (e == HPE_PAUSED) {
      const char* pos = llhttp_get_error_pos(&parser_);
      if (pos != data.data() + data.size()) {
        Fail(Err::kFraming, absl::StrCat("h1 ", req_.path(), ": ",
                                         data.data() + data.size() - pos,
                                         " bytes after the response"));
        in_flight_ = false;
        Close(now);
        return false;
      }
      Finish(now);
      return tls_ != nullptr;
    }
    if (e != HPE_OK) {
      Fail(Err::kFraming,
           absl::StrCat("h1 ", req_.path(), ": ", llhttp_errno_name(e), " ",
                        llhttp_get_error_reason(&parser_)));
      in_flight_ = false;
      Close(now);
      return false;
    }
    if (req_.cancel && status_ == 200) {
      units_.Update(body_, req_.route == Route::kOpenAiStream);
      if (units_.units >= req_.cancel_after) {
        g_stats.cancelled.fetch_add(1);
        in_flight_ = false;
        Close(now);
        return false;
      }
    }
    return true;
  }

  void Finish(int64_t now) {
    in_flight_ = false;
    Complete(req_, status_, body_, "h1");
    if (!keep_alive_) g_stats.server_closes.fetch_add(1);
    if (!keep_alive_ || g_stopping.load()) {
      Close(now);
    } else {
      SendNext(now);
    }
  }

  // The connection failed with a request in flight.
  void Lost(std::string what, int64_t now) {
    Fail(Err::kClosed, absl::StrCat("h1 ", req_.path(), ": ", what));
    in_flight_ = false;
    Close(now);
  }

  void OnOpenTick(int64_t now) override {
    if (in_flight_ &&
        now - started_ > absl::GetFlag(FLAGS_request_timeout_s) * 1e6) {
      Fail(Err::kTimeout,
           absl::StrCat("h1 ", req_.path(), ": no complete response in ",
                        absl::GetFlag(FLAGS_request_timeout_s), " s (status ",
                        status_, ", ", body_.size(), " body bytes)"));
      in_flight_ = false;
      Close(now);
    } else if (!in_flight_ && g_stopping.load()) {
      Close(now);
    }
  }

  void Close(int64_t now) {
    tls_.reset();  // closes the socket: no close_notify, as after a cancel
    Closed(now);
  }

  std::unique_ptr<TlsSocket> tls_;
  llhttp_settings_t settings_;
  llhttp_t parser_;
  Request req_;
  bool in_flight_ = false;
  bool complete_ = false;
  bool keep_alive_ = false;
  int status_ = 0;
  std::string body_;
  UnitCounter units_;
  int64_t started_ = 0;
};

// HTTP/2: --streams_per_h2_conn streams kept in flight; a stream that ends
// is checked and replaced.
class H2Conn final : public Conn {
 public:
  H2Conn(int epfd, SSL_CTX* ctx, const sockaddr_in& addr, uint64_t seed)
      : Conn(epfd, ctx, addr, "h2", seed) {
    for (int i = 0; i < absl::GetFlag(FLAGS_streams_per_h2_conn); ++i) {
      slots_.push_back(std::make_unique<Slot>(this));
    }
  }

  void Abandon() override {
    for (auto& s : slots_) {
      if (s->active) {
        Fail(Err::kTimeout,
             absl::StrCat("h2 ", s->req.path(), ": unfinished at the end"));
        s->active = false;
      }
    }
    h2_.reset();
    phase_ = Phase::kFinished;
  }

 private:
  struct Slot final : H2StreamSink {
    explicit Slot(H2Conn* c) : conn(c) {}
    void OnStatus(int s) override { status = s; }
    void OnData(std::string_view data, int64_t) override {
      body.append(data);
      if (req.cancel && !cancel_sent && status == 200) {
        units.Update(body, req.route == Route::kOpenAiStream);
        if (units.units >= req.cancel_after) {
          if (conn->TakeCancelToken()) {
            cancel_sent = conn->h2_->Cancel(id);
          } else {
            req.cancel = false;
            g_stats.cancel_skipped.fetch_add(1);
          }
        }
      }
    }
    void OnClose(uint32_t code) override {
      closed = true;
      error_code = code;
    }

    H2Conn* conn;
    Request req;
    bool active = false;  // a request is in flight on this slot
    bool closed = false;  // ... and its stream has closed, not yet counted
    bool cancel_sent = false;
    bool timed_out = false;
    int32_t id = 0;
    uint32_t error_code = 0;
    int status = 0;
    std::string body;
    UnitCounter units;
    int64_t started = 0;
  };

  // The cancel token bucket: --h2_cancels_per_s tokens, refilled at that
  // rate.
  bool TakeCancelToken() {
    const double rate = absl::GetFlag(FLAGS_h2_cancels_per_s);
    const int64_t now = NowUs(CLOCK_MONOTONIC);
    cancel_tokens_ =
        std::min(rate, cancel_tokens_ +
                           rate * static_cast<double>(now - cancel_at_) / 1e6);
    cancel_at_ = now;
    if (cancel_tokens_ < 1) return false;
    cancel_tokens_ -= 1;
    return true;
  }

  void OnOpen(std::unique_ptr<TlsSocket> tls, int64_t now) override {
    h2_ = std::make_unique<H2ClientConn>(std::move(tls));
    going_away_ = false;
    if (!g_stopping.load()) {
      for (auto& s : slots_) Submit(*s, now);
    }
    Pump(now);
  }

  void Submit(Slot& s, int64_t now) {
    s.req = NextRequest();
    s.active = true;
    s.closed = false;
    s.cancel_sent = false;
    s.timed_out = false;
    s.error_code = 0;
    s.status = 0;
    s.body.clear();
    s.units = UnitCounter{};
    s.started = now;
    const std::string body = s.req.body();
    std::vector<H2ClientConn::Header> headers = {
        {":method", body.empty() ? "GET" : "POST"},
        {":scheme", "https"},
        {":authority", Authority()},
        {":path", s.req.path()},
        {"user-agent", "sluice-soak"},
    };
    if (!absl::GetFlag(FLAGS_key).empty()) {
      headers.push_back(
          {"authorization", "Bearer " + absl::GetFlag(FLAGS_key)});
    }
    if (!body.empty()) {
      headers.push_back({"content-type", "application/json"});
      headers.push_back({"content-length", absl::StrCat(body.size())});
      headers.push_back({"x-sim-tokens", absl::StrCat(s.req.tokens)});
      headers.push_back(
          {"x-sim-token-delay-ms", absl::GetFlag(FLAGS_token_delay_ms)});
    }
    g_stats.h2.fetch_add(1);
    s.id = h2_->Submit(headers, body, &s);
    if (s.id < 0) {
      Fail(Err::kH2, absl::StrCat("submit: ", nghttp2_strerror(s.id)));
      g_stats.h2.fetch_sub(1);
      s.active = false;
    }
  }

  // Writes what nghttp2 has queued and settles the streams that closed,
  // until nothing changes. False when the connection was lost (and
  // re-dialled or finished).
  bool Pump(int64_t now) {
    while (true) {
      if (!h2_->Flush()) {
        Lost("write: " + h2_->LastError(), now);
        return false;
      }
      bool any = false;
      for (auto& s : slots_) {
        if (!s->active || !s->closed) continue;
        any = true;
        Settle(*s);
        if (!g_stopping.load() && !going_away_) Submit(*s, now);
      }
      if (!any) break;
    }
    SetWantWrite(h2_->WantsWrite());
    if ((g_stopping.load() || going_away_) && h2_->open_streams() == 0 &&
        !h2_->WantsWrite()) {
      // Done, or the server refuses new streams here (GOAWAY): a new
      // connection, unless stopping.
      h2_->GoAway();
      h2_->Flush();
      h2_.reset();
      Closed(now);
      return false;
    }
    return true;
  }

  void Settle(Slot& s) {
    s.active = false;
    if (s.timed_out) {
      Fail(Err::kTimeout,
           absl::StrCat("h2 ", s.req.path(), ": no complete response in ",
                        absl::GetFlag(FLAGS_request_timeout_s), " s (status ",
                        s.status, ", ", s.body.size(), " body bytes)"));
    } else if (s.error_code == NGHTTP2_NO_ERROR) {
      Complete(s.req, s.status, s.body, "h2");
    } else if (s.error_code == NGHTTP2_CANCEL && s.cancel_sent) {
      g_stats.cancelled.fetch_add(1);
    } else if (s.error_code == NGHTTP2_REFUSED_STREAM) {
      // Not processed: above a GOAWAY's last stream id, or submitted after
      // it. No new streams on this connection.
      going_away_ = true;
      Fail(Err::kRefused,
           absl::StrCat("h2 ", s.req.path(), ": stream refused (GOAWAY)"));
    } else {
      Fail(Err::kReset,
           absl::StrCat("h2 ", s.req.path(), ": stream closed with error code ",
                        s.error_code, " (",
                        nghttp2_http2_strerror(s.error_code), "), status ",
                        s.status, ", ", s.body.size(), " body bytes"));
    }
  }

  void OnOpenEvent(uint32_t events, int64_t now) override {
    if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0 && !h2_->OnReadable()) {
      // Streams that closed normally before the end still count.
      for (auto& s : slots_) {
        if (s->active && s->closed) Settle(*s);
      }
      Lost(h2_->LastError(), now);
      return;
    }
    Pump(now);
  }

  void OnOpenTick(int64_t now) override {
    bool changed = g_stopping.load();
    for (auto& s : slots_) {
      if (s->active && !s->closed && !s->timed_out &&
          now - s->started > absl::GetFlag(FLAGS_request_timeout_s) * 1e6) {
        s->timed_out = true;
        h2_->Cancel(s->id);
        changed = true;
      }
    }
    if (changed) Pump(now);
  }

  // The connection ended: its streams still in flight are errors.
  void Lost(std::string what, int64_t now) {
    int open = 0;
    for (auto& s : slots_) {
      if (!s->active) continue;
      s->active = false;
      if (s->timed_out) {
        Settle(*s);
        continue;
      }
      Fail(Err::kClosed,
           absl::StrCat("h2 ", s->req.path(), ": connection lost (", what,
                        "), status ", s->status, ", ", s->body.size(),
                        " body bytes"));
      ++open;
    }
    if (open == 0) g_stats.server_closes.fetch_add(1);
    h2_.reset();
    Closed(now);
  }

  std::unique_ptr<H2ClientConn> h2_;
  std::vector<std::unique_ptr<Slot>> slots_;
  bool going_away_ = false;
  double cancel_tokens_ = absl::GetFlag(FLAGS_h2_cancels_per_s);
  int64_t cancel_at_ = NowUs(CLOCK_MONOTONIC);
};

void RunLoop(std::vector<std::unique_ptr<Conn>>* conns, int epfd,
             const int64_t* hard_deadline) {
  int64_t now = NowUs(CLOCK_MONOTONIC);
  for (auto& c : *conns) c->Start(now);
  epoll_event events[64];
  while (true) {
    int n = epoll_wait(epfd, events, 64, 20);
    now = NowUs(CLOCK_MONOTONIC);
    for (int i = 0; i < n; ++i) {
      static_cast<Conn*>(events[i].data.ptr)->OnEvent(events[i].events, now);
    }
    bool all_done = true;
    for (auto& c : *conns) {
      c->OnTick(now);
      all_done = all_done && c->finished();
    }
    if (all_done) break;
    if (g_stopping.load() && now > *hard_deadline) {
      for (auto& c : *conns) {
        if (!c->finished()) c->Abandon();
      }
      break;
    }
  }
}

// Requests sent (connection failures are errors but not requests).
int64_t Requests() { return g_stats.h1.load() + g_stats.h2.load(); }

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Mixed-traffic soak against sluice over TLS: soak --port=TLS_PORT "
      "[--seconds=30 "
      "--h1_conns=4 --h2_conns=2 --streams_per_h2_conn=8 --cancel_percent=10 "
      "--key=KEY]");
  absl::ParseCommandLine(argc, argv);
  const double seconds = absl::GetFlag(FLAGS_seconds);
  const int h1_conns = absl::GetFlag(FLAGS_h1_conns),
            h2_conns = absl::GetFlag(FLAGS_h2_conns);
  const int threads = absl::GetFlag(FLAGS_threads);
  sockaddr_in addr;
  if (!ParseAddress(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_port),
                    &addr) ||
      !(seconds >= 1 && seconds <= kMaxSeconds) || h1_conns < 0 ||
      h2_conns < 0 || h1_conns + h2_conns == 0 || h1_conns + h2_conns > 10000 ||
      absl::GetFlag(FLAGS_streams_per_h2_conn) < 1 ||
      absl::GetFlag(FLAGS_streams_per_h2_conn) > 100 ||
      absl::GetFlag(FLAGS_cancel_percent) < 0 ||
      absl::GetFlag(FLAGS_cancel_percent) > 100 ||
      absl::GetFlag(FLAGS_max_tokens) < 2 ||
      absl::GetFlag(FLAGS_max_tokens) > 10000 || threads < 1 || threads > 64 ||
      !(absl::GetFlag(FLAGS_request_timeout_s) > 0) ||
      !(absl::GetFlag(FLAGS_h2_cancels_per_s) >= 0)) {
    fprintf(stderr,
            "soak: need an IPv4 --host and --port, --seconds in 1..%d, "
            "--h1_conns and "
            "--h2_conns >= 0 (not both 0), --streams_per_h2_conn in 1..100, "
            "--cancel_percent in 0..100, --max_tokens in 2..10000, --threads "
            "in 1..64, "
            "--request_timeout_s > 0, --h2_cancels_per_s >= 0\n",
            kMaxSeconds);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  RaiseFdLimit();
  const double timeout_s = absl::GetFlag(FLAGS_request_timeout_s);
  alarm(static_cast<unsigned>(seconds + timeout_s + 60));

  SSL_CTX* ctx_h1 = NewClientContext({"http/1.1"}, "");
  SSL_CTX* ctx_h2 = NewClientContext({"h2"}, "");
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  std::vector<std::vector<std::unique_ptr<Conn>>> per_thread(threads);
  std::vector<int> epfds;
  for (int t = 0; t < threads; ++t)
    epfds.push_back(epoll_create1(EPOLL_CLOEXEC));
  for (int i = 0; i < h1_conns + h2_conns; ++i) {
    const int t = i % threads;
    const uint64_t conn_seed = seed * 1'000'003 + static_cast<uint64_t>(i);
    if (i < h1_conns) {
      per_thread[t].push_back(
          std::make_unique<H1Conn>(epfds[t], ctx_h1, addr, conn_seed));
    } else {
      per_thread[t].push_back(
          std::make_unique<H2Conn>(epfds[t], ctx_h2, addr, conn_seed));
    }
  }

  const int64_t start = NowUs(CLOCK_MONOTONIC);
  const int64_t stop_at = start + static_cast<int64_t>(seconds * 1e6);
  const int64_t hard_deadline =
      stop_at + static_cast<int64_t>(timeout_s * 1e6) + 5'000'000;
  std::atomic<int> running{threads};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      RunLoop(&per_thread[t], epfds[t], &hard_deadline);
      running.fetch_sub(1);
    });
  }
  int64_t last_requests = 0;
  int64_t next_report = start + 1'000'000;
  while (running.load() > 0) {
    usleep(50'000);
    const int64_t now = NowUs(CLOCK_MONOTONIC);
    if (!g_stopping.load() && now >= stop_at) {
      g_stopping.store(true);
      fprintf(stderr, "soak: %.0f s up, letting requests in flight finish\n",
              seconds);
    }
    if (now >= next_report) {
      const int64_t req = Requests();
      fprintf(stderr,
              "soak: t=%llds requests=%lld ok=%lld cancelled=%lld errors=%lld "
              "req/s=%lld\n",
              static_cast<long long>((now - start) / 1'000'000),
              static_cast<long long>(req),
              static_cast<long long>(g_stats.ok.load()),
              static_cast<long long>(g_stats.cancelled.load()),
              static_cast<long long>(g_stats.errors.load()),
              static_cast<long long>(req - last_requests));
      last_requests = req;
      next_report += 1'000'000;
    }
  }
  for (auto& w : workers) w.join();
  const double elapsed =
      static_cast<double>(NowUs(CLOCK_MONOTONIC) - start) / 1e6;

  std::vector<std::string> kinds;
  for (size_t k = 0; k < g_stats.by_kind.size(); ++k) {
    if (g_stats.by_kind[k].load() > 0) {
      kinds.push_back(
          absl::StrCat(kErrNames[k], ":", g_stats.by_kind[k].load()));
    }
  }
  std::vector<std::string> routes;
  for (size_t r = 0; r < g_stats.routes.size(); ++r) {
    routes.push_back(
        absl::StrCat(kRouteNames[r], "=", g_stats.routes[r].load()));
  }
  fprintf(stderr, "soak: routes %s\n", absl::StrJoin(routes, " ").c_str());
  for (const std::string& e : g_stats.first_errors)
    fprintf(stderr, "soak: error: %s\n", e.c_str());
  printf(
      "soak ok=%lld cancelled=%lld errors=%lld requests=%lld h1=%lld h2=%lld "
      "seconds=%.1f "
      "cancel_late=%lld cancel_skipped=%lld connects=%lld server_closes=%lld "
      "error_kinds=%s\n",
      static_cast<long long>(g_stats.ok.load()),
      static_cast<long long>(g_stats.cancelled.load()),
      static_cast<long long>(g_stats.errors.load()),
      static_cast<long long>(Requests()),
      static_cast<long long>(g_stats.h1.load()),
      static_cast<long long>(g_stats.h2.load()), elapsed,
      static_cast<long long>(g_stats.cancel_late.load()),
      static_cast<long long>(g_stats.cancel_skipped.load()),
      static_cast<long long>(g_stats.connects.load()),
      static_cast<long long>(g_stats.server_closes.load()),
      kinds.empty() ? "-" : absl::StrJoin(kinds, ",").c_str());
  fflush(stdout);
  SSL_CTX_free(ctx_h1);
  SSL_CTX_free(ctx_h2);
  return g_stats.errors.load() == 0 && g_stats.ok.load() > 0 ? 0 : 1;
}

}  // namespace
}  // namespace sluice::bench

int main(int argc, char** argv) { return sluice::bench::Main(argc, argv); }
