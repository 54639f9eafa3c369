// h2_relay_delay: how late each streamed token reaches an HTTP/2 client over
// TLS, with many concurrent streams multiplexed on a few connections.
//
// The HTTP/2 counterpart of relay_delay. It opens --connections TLS
// connections (ALPN h2) to a proxy in front of ollama-sim, waits for each
// server's SETTINGS, then starts --streams POST /api/generate streams in
// total, stream i on connection i % connections, their starts spread over
// one token interval (--stagger). Each NDJSON object of a response carries
// "sim_t_us", the simulator's CLOCK_REALTIME (µs) when it wrote the object;
// the client takes CLOCK_REALTIME right after the SSL_read that returned the
// object's last bytes and records the difference. ollama-sim speaks only
// HTTP/1.1, so there is no direct h2 baseline: compare two proxies, and run
// relay_delay against the simulator for the direct HTTP/1.1 figure.
//
// It also records each stream's time to first chunk: from the moment the
// request was submitted to the first object's arrival. The nghttp2 client
// queues a stream locally while the server's SETTINGS_MAX_CONCURRENT_STREAMS
// are all in use, so that wait shows up here.
//
// Output, one line on stdout:
//   label=.. connections=.. streams=.. requests_ok=.. requests_failed=..
//   non2xx=.. refused=.. conn_errors=.. server_closes=.. unfinished=..
//   chunks=.. p50_us=.. p90_us=.. p99_us=.. p999_us=.. max_us=.. mean_us=..
//   ttfc_p50_us=.. ttfc_p99_us=.. ttfc_max_us=.. setup_s=.. elapsed_s=..
//   timed_out=0|1
// server_closes counts connections the server closed after all their
// streams had ended (nginx does after keepalive_requests, 1000 by default).
// The exit status is 0 when every stream ended normally with a 2xx.
//
// Bounds: --streams requests, --duration_s of wall time (clamped to 600 s),
// after which open streams are abandoned and counted as unfinished; an
// alarm() watchdog kills the process 10 s past that in any case.
#include <signal.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "bench/h2_client.h"
#include "bench/stats.h"
#include "bench/tls_client.h"

ABSL_FLAG(std::string, host, "127.0.0.1", "IPv4 address to connect to");
ABSL_FLAG(int, port, 0, "TLS port to connect to (required)");
ABSL_FLAG(std::string, sni, "localhost", "TLS server name (SNI) and :authority host");
ABSL_FLAG(std::string, ca, "", "CA file to verify the server with; empty: no verification");
ABSL_FLAG(int, connections, 10, "TLS connections the streams are spread over");
ABSL_FLAG(int, streams, 1000, "Concurrent streams in total");
ABSL_FLAG(int, tokens, 50, "Tokens per generation (X-Sim-Tokens)");
ABSL_FLAG(std::string, token_delay_ms, "20", "Delay between tokens in ms (X-Sim-Token-Delay-Ms)");
ABSL_FLAG(std::string, path, "/api/generate", "Request target");
ABSL_FLAG(std::string, authorization, "",
          "Authorization header value sent with every request; empty: none");
ABSL_FLAG(bool, stagger, true, "Spread the stream starts evenly over one token interval");
ABSL_FLAG(double, duration_s, 30, "Wall-time bound in seconds (clamped to [0.1, 600])");
ABSL_FLAG(double, setup_timeout_s, 10,
          "Time allowed for all connections to finish TLS and SETTINGS");
ABSL_FLAG(std::string, label, "-", "Printed first, as label=...");

namespace sluice::bench {
namespace {

constexpr double kMaxDurationS = 600;
constexpr int kMaxStreams = 100000;
constexpr int kMaxConnections = 10000;
constexpr int kMaxErrorsPrinted = 5;
constexpr std::string_view kSimTimeKey = "\"sim_t_us\":";

class LoadClient;

struct StreamState final : H2StreamSink {
  LoadClient* client = nullptr;
  int index = 0;
  int conn = 0;
  bool submitted = false;
  bool closed = false;
  int status = 0;
  int64_t start_at_us = 0;  // CLOCK_MONOTONIC, when to submit
  int64_t submit_us = 0;    // CLOCK_REALTIME at submission
  int64_t first_chunk_us = -1;
  std::string partial_line;

  void OnStatus(int s) override { status = s; }
  void OnData(std::string_view data, int64_t read_time_us) override;
  void OnClose(uint32_t error_code) override;
};

enum class Phase { kConnecting, kHandshaking, kSettings, kReady, kFailed };

struct Conn {
  int index = 0;
  Phase phase = Phase::kConnecting;
  int fd = -1;
  uint32_t events = 0;             // the epoll interest now registered
  std::unique_ptr<TlsSocket> tls;  // until the handshake is done
  std::unique_ptr<H2ClientConn> h2;
};

class LoadClient {
 public:
  LoadClient(sockaddr_in addr, SSL_CTX* ctx, int connections, int streams,
             std::vector<H2ClientConn::Header> headers, std::string body)
      : addr_(addr),
        ctx_(ctx),
        headers_(std::move(headers)),
        body_(std::move(body)),
        conns_(connections),
        streams_(streams) {
    for (int i = 0; i < connections; ++i) conns_[i].index = i;
    for (int i = 0; i < streams; ++i) {
      streams_[i].client = this;
      streams_[i].index = i;
      streams_[i].conn = i % connections;
    }
  }

  ~LoadClient() {
    for (Conn& c : conns_) {
      c.h2.reset();
      c.tls.reset();
    }
    if (epoll_fd_ >= 0) close(epoll_fd_);
  }

  bool Run(int64_t setup_timeout_us, int64_t stagger_us, int64_t duration_us) {
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd_ < 0) {
      perror("h2_relay_delay: epoll_create1");
      return false;
    }
    const int64_t setup_start = NowUs(CLOCK_MONOTONIC);
    for (Conn& c : conns_) StartConnect(c);
    // Phase 1: every connection through TLS and the server's SETTINGS, so
    // that the first stream does not race the server's concurrency limit.
    while (CountPhase(Phase::kReady) + CountPhase(Phase::kFailed) <
           static_cast<int>(conns_.size())) {
      int64_t left = setup_start + setup_timeout_us - NowUs(CLOCK_MONOTONIC);
      if (left <= 0) {
        for (Conn& c : conns_) {
          if (c.phase != Phase::kReady) Fail(c, "setup timed out");
        }
        break;
      }
      Poll(static_cast<int>(std::min<int64_t>(left / 1000 + 1, 100)));
    }
    setup_us_ = NowUs(CLOCK_MONOTONIC) - setup_start;

    // Phase 2: the streams.
    const int64_t t0 = NowUs(CLOCK_MONOTONIC);
    const int64_t deadline = t0 + duration_us;
    for (StreamState& s : streams_) {
      s.start_at_us = t0 + stagger_us * s.index / static_cast<int64_t>(streams_.size());
    }
    size_t next = 0;  // streams_ are in start order
    while (closed_ < streams_.size()) {
      int64_t now = NowUs(CLOCK_MONOTONIC);
      if (now >= deadline) {
        timed_out_ = true;
        break;
      }
      while (next < streams_.size() && streams_[next].start_at_us <= now) {
        Submit(streams_[next++]);
      }
      for (Conn& c : conns_) Flush(c);
      int64_t wake = deadline;
      if (next < streams_.size()) wake = std::min(wake, streams_[next].start_at_us);
      Poll(static_cast<int>(std::max<int64_t>((wake - now + 999) / 1000, 0)));
    }
    elapsed_us_ = NowUs(CLOCK_MONOTONIC) - t0;
    for (const StreamState& s : streams_) {
      if (!s.closed) ++unfinished_;
    }
    for (Conn& c : conns_) {
      if (c.h2 != nullptr) {
        c.h2->GoAway();
        c.h2->Flush();
      }
    }
    return true;
  }

  bool Report(std::string_view label) {
    std::vector<int64_t> ttfc_us;
    for (const StreamState& s : streams_) {
      if (s.first_chunk_us >= 0) ttfc_us.push_back(s.first_chunk_us - s.submit_us);
    }
    const Summary d = Summarize(delays_us_);
    const Summary ttfc = Summarize(std::move(ttfc_us));
    printf(
        "label=%s connections=%zu streams=%zu requests_ok=%ld "
        "requests_failed=%ld non2xx=%ld refused=%ld conn_errors=%ld "
        "server_closes=%ld unfinished=%ld chunks=%zu %s ttfc_p50_us=%ld "
        "ttfc_p99_us=%ld ttfc_max_us=%ld setup_s=%.2f elapsed_s=%.2f "
        "timed_out=%d\n",
        std::string(label).c_str(), conns_.size(), streams_.size(), ok_, failed_, non2xx_, refused_,
        conn_errors_, server_closes_, unfinished_, d.n, DelayFields(d).c_str(), ttfc.p50, ttfc.p99,
        ttfc.max, static_cast<double>(setup_us_) / 1e6, static_cast<double>(elapsed_us_) / 1e6,
        timed_out_ ? 1 : 0);
    fflush(stdout);
    return failed_ == 0 && unfinished_ == 0 && d.n > 0;
  }

  void RecordLine(StreamState& s, std::string_view line, int64_t read_time_us) {
    size_t key = line.find(kSimTimeKey);
    if (key == std::string_view::npos) return;
    std::string_view digits = line.substr(key + kSimTimeKey.size());
    int64_t sim_t_us = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), sim_t_us);
    if (ec != std::errc() || end == digits.data()) return;
    if (s.first_chunk_us < 0) s.first_chunk_us = read_time_us;
    delays_us_.push_back(read_time_us - sim_t_us);
  }

  void StreamClosed(StreamState& s, uint32_t error_code) {
    if (s.closed) return;
    s.closed = true;
    ++closed_;
    if (s.status != 0 && (s.status < 200 || s.status > 299)) {
      ++non2xx_;
      Error(s.conn, absl::StrCat("stream ", s.index, ": HTTP status ", s.status));
    }
    if (error_code == NGHTTP2_REFUSED_STREAM) ++refused_;
    if (error_code == 0 && s.status >= 200 && s.status <= 299) {
      ++ok_;
    } else {
      ++failed_;
      if (error_code != 0) {
        Error(s.conn,
              absl::StrCat("stream ", s.index, " reset: ", nghttp2_http2_strerror(error_code)));
      }
    }
  }

 private:
  int CountPhase(Phase p) const {
    int n = 0;
    for (const Conn& c : conns_) n += c.phase == p;
    return n;
  }

  void Error(int conn, std::string_view what) {
    if (++errors_printed_ <= kMaxErrorsPrinted) {
      fprintf(stderr, "h2_relay_delay: conn %d: %.*s\n", conn, static_cast<int>(what.size()),
              what.data());
    }
  }

  void StartConnect(Conn& c) {
    int fd = bench::StartConnect(addr_);
    if (fd < 0) {
      Fail(c, absl::StrCat("connect: ", strerror(-fd)));
      return;
    }
    c.fd = fd;
    c.tls = std::make_unique<TlsSocket>(ctx_, fd, absl::GetFlag(FLAGS_sni));
    c.phase = Phase::kConnecting;
    c.events = EPOLLIN | EPOLLOUT;
    epoll_event ev{};
    ev.events = c.events;
    ev.data.u32 = static_cast<uint32_t>(c.index);
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
  }

  void SetInterest(Conn& c, bool want_write) {
    uint32_t events = EPOLLIN | (want_write ? EPOLLOUT : 0u);
    if (events == c.events || c.fd < 0) return;
    c.events = events;
    epoll_event ev{};
    ev.events = events;
    ev.data.u32 = static_cast<uint32_t>(c.index);
    epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c.fd, &ev);
  }

  // A failed connection fails its streams that have not ended. A server
  // may close a connection whose streams are all done (nginx does after
  // keepalive_requests); that is counted apart, not as an error.
  void Fail(Conn& c, std::string_view why) {
    if (c.phase == Phase::kFailed) return;
    bool all_done = c.phase == Phase::kReady;
    for (size_t i = c.index; i < streams_.size() && all_done; i += conns_.size()) {
      all_done = streams_[i].closed;
    }
    c.phase = Phase::kFailed;
    if (all_done) {
      ++server_closes_;
    } else {
      ++conn_errors_;
      Error(c.index, why);
    }
    c.h2.reset();  // closes the socket, which leaves the epoll set
    c.tls.reset();
    c.fd = -1;
    for (size_t i = c.index; i < streams_.size(); i += conns_.size()) {
      StreamState& s = streams_[i];
      if (s.submitted && !s.closed) StreamClosed(s, NGHTTP2_INTERNAL_ERROR);
    }
  }

  void Submit(StreamState& s) {
    s.submitted = true;
    s.submit_us = NowUs(CLOCK_REALTIME);
    Conn& c = conns_[s.conn];
    if (c.phase != Phase::kReady) {
      StreamClosed(s, NGHTTP2_INTERNAL_ERROR);
      return;
    }
    int32_t id = c.h2->Submit(headers_, body_, &s);
    if (id < 0) {
      Error(c.index, absl::StrCat("submit: ", nghttp2_strerror(id)));
      StreamClosed(s, NGHTTP2_INTERNAL_ERROR);
    }
  }

  void Flush(Conn& c) {
    if (c.h2 == nullptr) return;
    if (!c.h2->Flush()) {
      Fail(c, c.h2->LastError());
      return;
    }
    SetInterest(c, c.h2->WantsWrite());
  }

  void Poll(int timeout_ms) {
    epoll_event events[256];
    int n = epoll_wait(epoll_fd_, events, 256, timeout_ms);
    for (int i = 0; i < n; ++i) {
      HandleEvent(conns_[events[i].data.u32], events[i].events);
    }
  }

  void HandleEvent(Conn& c, uint32_t events) {
    if (c.phase == Phase::kFailed) return;
    if (c.phase == Phase::kConnecting) {
      if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
      int err = ConnectResult(c.fd);
      if (err != 0) {
        Fail(c, absl::StrCat("connect: ", strerror(err)));
        return;
      }
      c.phase = Phase::kHandshaking;
    }
    if (c.phase == Phase::kHandshaking) {
      switch (c.tls->Handshake()) {
        case TlsSocket::Result::kDone:
          break;
        case TlsSocket::Result::kWantRead:
          SetInterest(c, false);
          return;
        case TlsSocket::Result::kWantWrite:
          SetInterest(c, true);
          return;
        default:
          Fail(c, "TLS handshake: " + c.tls->LastError());
          return;
      }
      if (c.tls->Alpn() != "h2") {
        Fail(c, "ALPN chose '" + std::string(c.tls->Alpn()) + "', not h2");
        return;
      }
      c.h2 = std::make_unique<H2ClientConn>(std::move(c.tls));
      c.phase = Phase::kSettings;
      Flush(c);
      if (c.phase == Phase::kFailed) return;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
      if (!c.h2->OnReadable()) {
        Fail(c, c.h2->LastError());
        return;
      }
    } else if (events & EPOLLOUT) {
      Flush(c);
      if (c.phase == Phase::kFailed) return;
    }
    if (c.phase == Phase::kSettings && c.h2->settings_received()) {
      c.phase = Phase::kReady;
    }
    SetInterest(c, c.h2->WantsWrite());
  }

  const sockaddr_in addr_;
  SSL_CTX* const ctx_;
  const std::vector<H2ClientConn::Header> headers_;
  const std::string body_;
  std::vector<Conn> conns_;
  std::vector<StreamState> streams_;
  int epoll_fd_ = -1;
  std::vector<int64_t> delays_us_;
  size_t closed_ = 0;
  long ok_ = 0;
  long failed_ = 0;
  long non2xx_ = 0;
  long refused_ = 0;
  long conn_errors_ = 0;
  long server_closes_ = 0;
  long unfinished_ = 0;
  int errors_printed_ = 0;
  bool timed_out_ = false;
  int64_t setup_us_ = 0;
  int64_t elapsed_us_ = 0;
};

void StreamState::OnData(std::string_view data, int64_t read_time_us) {
  while (!data.empty()) {
    size_t nl = data.find('\n');
    if (nl == std::string_view::npos) {
      partial_line.append(data);
      break;
    }
    if (partial_line.empty()) {
      client->RecordLine(*this, data.substr(0, nl), read_time_us);
    } else {
      partial_line.append(data.substr(0, nl));
      client->RecordLine(*this, partial_line, read_time_us);
      partial_line.clear();
    }
    data.remove_prefix(nl + 1);
  }
}

void StreamState::OnClose(uint32_t error_code) { client->StreamClosed(*this, error_code); }

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Per-chunk delay of streamed generations over HTTP/2 + TLS: "
      "h2_relay_delay --port=PORT [--connections=10 --streams=1000 ...]");
  absl::ParseCommandLine(argc, argv);

  const int port = absl::GetFlag(FLAGS_port);
  const int connections = absl::GetFlag(FLAGS_connections);
  const int streams = absl::GetFlag(FLAGS_streams);
  const int tokens = absl::GetFlag(FLAGS_tokens);
  double token_delay_ms;
  sockaddr_in addr;
  if (!ParseAddress(absl::GetFlag(FLAGS_host), port, &addr) || connections < 1 ||
      connections > kMaxConnections || streams < 1 || streams > kMaxStreams || tokens < 0 ||
      !absl::SimpleAtod(absl::GetFlag(FLAGS_token_delay_ms), &token_delay_ms) ||
      !(token_delay_ms >= 0)) {
    fprintf(stderr,
            "h2_relay_delay: need an IPv4 --host, --port in 1..65535, "
            "--connections in 1..%d, --streams in 1..%d, --tokens >= 0, "
            "--token_delay_ms >= 0\n",
            kMaxConnections, kMaxStreams);
    return 2;
  }
  const double duration_s = std::clamp(absl::GetFlag(FLAGS_duration_s), 0.1, kMaxDurationS);
  const double setup_s = std::clamp(absl::GetFlag(FLAGS_setup_timeout_s), 0.1, kMaxDurationS);
  alarm(static_cast<unsigned>(std::ceil(duration_s + setup_s)) + 10);
  signal(SIGPIPE, SIG_IGN);
  RaiseFdLimit();

  SSL_CTX* ctx = NewClientContext({"h2"}, absl::GetFlag(FLAGS_ca));
  std::vector<H2ClientConn::Header> headers = {
      {":method", "POST"},
      {":scheme", "https"},
      {":authority", absl::StrCat(absl::GetFlag(FLAGS_sni), ":", port)},
      {":path", absl::GetFlag(FLAGS_path)},
      {"user-agent", "sluice-h2-relay-delay"},
      {"accept", "application/x-ndjson"},
      {"content-type", "application/json"},
      {"x-sim-tokens", absl::StrCat(tokens)},
      {"x-sim-token-delay-ms", absl::GetFlag(FLAGS_token_delay_ms)},
  };
  if (!absl::GetFlag(FLAGS_authorization).empty()) {
    headers.push_back({"authorization", absl::GetFlag(FLAGS_authorization)});
  }
  const std::string body =
      R"({"model":"sim:latest","prompt":"Why is the sky blue?","stream":true})";
  headers.push_back({"content-length", absl::StrCat(body.size())});

  const int64_t stagger_us =
      absl::GetFlag(FLAGS_stagger) ? static_cast<int64_t>(std::llround(token_delay_ms * 1000)) : 0;
  auto client =
      std::make_unique<LoadClient>(addr, ctx, connections, streams, std::move(headers), body);
  bool ran = client->Run(static_cast<int64_t>(setup_s * 1e6), stagger_us,
                         static_cast<int64_t>(duration_s * 1e6));
  bool clean = ran && client->Report(absl::GetFlag(FLAGS_label));
  client.reset();
  SSL_CTX_free(ctx);
  return clean ? 0 : 1;
}

}  // namespace
}  // namespace sluice::bench

int main(int argc, char** argv) { return sluice::bench::Main(argc, argv); }
