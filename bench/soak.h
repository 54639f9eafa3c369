// The parts of the soak client (soak.cc describes the run) share this: the
// flags, the request mix, the run's counters, the response checks
// (soak_check.cc) and the connection base (soak_conn.cc) that the HTTP/1.1
// (soak_h1.cc) and HTTP/2 (soak_h2.cc) connections build on.
#pragma once

#include <netinet/in.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/declare.h"
#include "bench/tls_client.h"

ABSL_DECLARE_FLAG(int, port);
ABSL_DECLARE_FLAG(std::string, sni);
ABSL_DECLARE_FLAG(int, streams_per_h2_conn);
ABSL_DECLARE_FLAG(int, cancel_percent);
ABSL_DECLARE_FLAG(std::string, key);
ABSL_DECLARE_FLAG(int, max_tokens);
ABSL_DECLARE_FLAG(std::string, token_delay_ms);
ABSL_DECLARE_FLAG(double, request_timeout_s);
ABSL_DECLARE_FLAG(double, h2_cancels_per_s);

namespace sluice::bench::soak {

enum class Route { kTags, kVersion, kGenerate, kChat, kOpenAiStream, kCount };
inline constexpr std::array<const char*, 5> kRouteNames = {"tags", "version", "generate", "chat",
                                                           "openai_sse"};

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
inline constexpr std::array<const char*, 10> kErrNames = {
    "connect", "tls", "status", "body", "framing", "reset", "refused", "closed", "timeout", "h2"};

struct Stats {
  std::atomic<int64_t> ok{0}, cancelled{0}, cancel_late{0}, cancel_skipped{0}, errors{0}, h1{0},
      h2{0};
  std::atomic<int64_t> connects{0}, server_closes{0};
  std::array<std::atomic<int64_t>, static_cast<size_t>(Route::kCount)> routes{};
  std::array<std::atomic<int64_t>, static_cast<size_t>(Err::kCount)> by_kind{};
  std::mutex mu;
  std::vector<std::string> first_errors;
};
// The run's counters, shared by every client thread.
extern Stats g_stats;
// Set when --seconds have passed: no new requests start.
extern std::atomic<bool> g_stopping;

// Counts an error of `kind`; the first few descriptions are kept.
void Fail(Err kind, std::string what);

// One request as drawn: what to send and how to check it.
struct Request {
  Route route = Route::kTags;
  int tokens = 0;
  bool cancel = false;
  int cancel_after = 0;  // objects or events received before cancelling

  bool streaming() const { return route == Route::kGenerate || route == Route::kOpenAiStream; }
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
  Request Next();

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
std::string CheckBody(const Request& req, const std::string& body);

// Records a response that ran to its end (not cancelled): status and body.
void Complete(const Request& req, int status, const std::string& body, const char* proto);

// The Host (HTTP/1.1) and :authority (HTTP/2) of every request.
std::string Authority();

// A connection owned by one thread's event loop: connect and TLS handshake
// here, the protocol in the subclass. It redials after its socket ends
// until the run stops.
class Conn {
 public:
  Conn(int epfd, SSL_CTX* ctx, const sockaddr_in& addr, std::string_view alpn, uint64_t seed)
      : epfd_(epfd), ctx_(ctx), addr_(addr), alpn_(alpn), mix_(seed) {}
  virtual ~Conn() = default;

  void Start(int64_t now) { Dial(now); }

  void OnEvent(uint32_t events, int64_t now);
  void OnTick(int64_t now);

  bool finished() const { return phase_ == Phase::kFinished; }

  // The run is over: requests still in flight count as errors.
  virtual void Abandon() = 0;

 protected:
  enum class Phase { kConnecting, kHandshake, kOpen, kBackoff, kFinished };

  virtual void OnOpen(std::unique_ptr<TlsSocket> tls, int64_t now) = 0;
  virtual void OnOpenEvent(uint32_t events, int64_t now) = 0;
  virtual void OnOpenTick(int64_t now) = 0;

  // The subclass has closed its socket: dial again, or finish when stopping.
  void Closed(int64_t now);
  void SetWantWrite(bool want);
  Request NextRequest();

  Phase phase_ = Phase::kBackoff;
  int fd_ = -1;

 private:
  void Dial(int64_t now);
  void DialFailed(Err kind, std::string what, int64_t now);
  void DriveDial(uint32_t events, int64_t now);

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

std::unique_ptr<Conn> NewH1Conn(int epfd, SSL_CTX* ctx, const sockaddr_in& addr, uint64_t seed);
std::unique_ptr<Conn> NewH2Conn(int epfd, SSL_CTX* ctx, const sockaddr_in& addr, uint64_t seed);

}  // namespace sluice::bench::soak
