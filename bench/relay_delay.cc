// relay_delay: a one-thread epoll load client that measures how late each
// streamed token reaches the client.
//
// It opens --connections keepalive HTTP/1.1 connections, each running
// --rounds POST /api/generate requests one after another against ollama-sim
// (directly, or through the proxy). Every NDJSON object of the response
// carries "sim_t_us", the simulator's CLOCK_REALTIME (µs) when it wrote the
// object; the client takes CLOCK_REALTIME right after the read() that
// completed the object and records the difference. Run once directly and
// once through the proxy: the difference between the two is the delay the
// proxy adds per chunk. Both clocks are the same host's, so they agree.
//
// Output is one line of key=value pairs on stdout, for scripts:
//   label=.. connections=.. requests_ok=.. requests_failed=.. non2xx=..
//   conn_errors=.. unfinished=.. chunks=.. p50_us=.. p90_us=.. p99_us=..
//   p999_us=.. max_us=.. mean_us=.. elapsed_s=.. timed_out=0|1
// Diagnostics (the first few errors) go to stderr. The exit status is 0 when
// every request finished with a 2xx and at least one chunk was measured.
//
// Bounds: at most connections * rounds requests, and --duration_s of wall
// time (clamped to 600 s) after which unfinished streams are abandoned and
// counted; an alarm() watchdog kills the process 10 s past that in any case.
#include <arpa/inet.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
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
#include "bench/stats.h"

ABSL_FLAG(std::string, host, "127.0.0.1", "IPv4 address to connect to");
ABSL_FLAG(int, port, 0, "Port to connect to (required)");
ABSL_FLAG(int, connections, 100, "Concurrent connections (streams)");
ABSL_FLAG(int, rounds, 1, "Requests per connection, one after another");
ABSL_FLAG(double, duration_s, 30,
          "Wall-time bound in seconds (clamped to [0.1, 600]); streams still "
          "running then are abandoned and counted as unfinished");
ABSL_FLAG(int, tokens, 50, "Tokens per generation (X-Sim-Tokens)");
ABSL_FLAG(std::string, token_delay_ms, "20", "Delay between tokens in ms (X-Sim-Token-Delay-Ms)");
ABSL_FLAG(std::string, path, "/api/generate", "Request target");
ABSL_FLAG(bool, stagger, true,
          "Spread the connections' first requests evenly over one token "
          "interval, so that tokens do not all arrive in the same instant");
ABSL_FLAG(std::string, label, "-", "Printed first, as label=...");
ABSL_FLAG(int, worst, 0,
          "Also print the N largest delays to stderr, each with its "
          "connection, round, chunk index and time into the run");

namespace sluice::bench {
namespace {

constexpr double kMaxDurationS = 600;
constexpr int kMaxConnections = 10000;
constexpr int kMaxErrorsPrinted = 5;
constexpr std::string_view kSimTimeKey = "\"sim_t_us\":";

enum class Phase { kWaiting, kConnecting, kSending, kReceiving, kDone };

class LoadClient;

struct Conn {
  LoadClient* client = nullptr;
  int index = 0;
  int fd = -1;
  Phase phase = Phase::kWaiting;
  int64_t start_at_us = 0;  // CLOCK_MONOTONIC time of the first request
  int rounds_done = 0;
  size_t sent = 0;
  llhttp_t parser;           // its data points back at this Conn
  std::string partial_line;  // an NDJSON object cut by a read boundary
  bool message_complete = false;
  bool keep_alive = true;
  int64_t read_time_us = 0;  // CLOCK_REALTIME of the current read
  int chunk_index = 0;       // NDJSON objects so far in this response
};

// One measured chunk, kept to explain the worst delays.
struct Sample {
  int64_t delay_us;
  int64_t at_us;  // CLOCK_REALTIME of the read
  int conn;
  int round;
  int chunk;
};

class LoadClient {
 public:
  LoadClient(sockaddr_in addr, int connections, int rounds, int64_t stagger_us, std::string request)
      : addr_(addr), rounds_(rounds), request_(std::move(request)) {
    conns_.resize(connections);
    for (int i = 0; i < connections; ++i) {
      conns_[i].client = this;
      conns_[i].index = i;
      conns_[i].start_at_us = stagger_us * i / connections;
    }
    llhttp_settings_init(&settings_);
    settings_.on_headers_complete = &LoadClient::OnHeadersComplete;
    settings_.on_body = &LoadClient::OnBody;
    settings_.on_message_complete = &LoadClient::OnMessageComplete;
  }

  ~LoadClient() {
    for (Conn& c : conns_) {
      if (c.fd >= 0) close(c.fd);
    }
    if (epoll_fd_ >= 0) close(epoll_fd_);
  }

  // Runs until every connection is done or `duration_us` has passed.
  // Returns false when the run could not start at all.
  bool Run(int64_t duration_us) {
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd_ < 0) {
      perror("relay_delay: epoll_create1");
      return false;
    }
    const int64_t t0 = NowUs(CLOCK_MONOTONIC);
    const int64_t deadline = t0 + duration_us;
    for (Conn& c : conns_) c.start_at_us += t0;
    int done = 0;
    epoll_event events[256];
    while (true) {
      const int64_t now = NowUs(CLOCK_MONOTONIC);
      int64_t next_wake = deadline;
      done = 0;
      for (Conn& c : conns_) {
        if (c.phase == Phase::kWaiting) {
          if (c.start_at_us <= now) {
            StartRequest(c);
          } else {
            next_wake = std::min(next_wake, c.start_at_us);
          }
        }
        if (c.phase == Phase::kDone) ++done;
      }
      if (done == static_cast<int>(conns_.size())) break;
      if (now >= deadline) {
        timed_out_ = true;
        break;
      }
      int timeout_ms = static_cast<int>((next_wake - now + 999) / 1000);
      int n = epoll_wait(epoll_fd_, events, 256, std::max(timeout_ms, 0));
      if (n < 0) {
        if (errno == EINTR) continue;
        perror("relay_delay: epoll_wait");
        return false;
      }
      for (int i = 0; i < n; ++i) {
        Conn& c = conns_[events[i].data.u32];
        HandleEvent(c, events[i].events);
      }
    }
    elapsed_us_ = NowUs(CLOCK_MONOTONIC) - t0;
    for (Conn& c : conns_) {
      if (c.phase == Phase::kConnecting || c.phase == Phase::kSending ||
          c.phase == Phase::kReceiving) {
        ++unfinished_;
      }
    }
    return true;
  }

  // Prints the one-line summary; returns whether the run was clean.
  bool Report(std::string_view label, int worst) {
    if (worst > 0 && !samples_.empty()) {
      std::vector<Sample> sorted = samples_;
      int64_t first_us = samples_.front().at_us;
      for (const Sample& sample : samples_) {
        first_us = std::min(first_us, sample.at_us);
      }
      size_t k = std::min(sorted.size(), static_cast<size_t>(worst));
      std::partial_sort(sorted.begin(), sorted.begin() + k, sorted.end(),
                        [](const Sample& a, const Sample& b) { return a.delay_us > b.delay_us; });
      for (size_t i = 0; i < k; ++i) {
        fprintf(stderr,
                "relay_delay: worst %zu: delay_us=%ld conn=%d round=%d "
                "chunk=%d at_ms=%.1f recv_t_us=%ld\n",
                i + 1, sorted[i].delay_us, sorted[i].conn, sorted[i].round, sorted[i].chunk,
                static_cast<double>(sorted[i].at_us - first_us) / 1000, sorted[i].at_us);
      }
    }
    std::vector<int64_t> delays_us;
    delays_us.reserve(samples_.size());
    for (const Sample& sample : samples_) delays_us.push_back(sample.delay_us);
    const Summary d = Summarize(std::move(delays_us));
    printf(
        "label=%s connections=%zu requests_ok=%ld requests_failed=%ld "
        "non2xx=%ld conn_errors=%ld unfinished=%ld chunks=%zu %s "
        "elapsed_s=%.2f timed_out=%d\n",
        std::string(label).c_str(), conns_.size(), requests_ok_, requests_failed_, non2xx_,
        conn_errors_, unfinished_, d.n, DelayFields(d).c_str(),
        static_cast<double>(elapsed_us_) / 1e6, timed_out_ ? 1 : 0);
    fflush(stdout);
    return requests_failed_ == 0 && unfinished_ == 0 && d.n > 0;
  }

 private:
  static Conn& ConnOf(llhttp_t* p) { return *static_cast<Conn*>(p->data); }
  static LoadClient* Self(llhttp_t* p) { return ConnOf(p).client; }

  static int OnHeadersComplete(llhttp_t* p) {
    LoadClient* self = Self(p);
    if (p->status_code < 200 || p->status_code > 299) {
      ++self->non2xx_;
      self->Error(ConnOf(p), absl::StrCat("HTTP status ", p->status_code));
    }
    return 0;
  }

  static int OnBody(llhttp_t* p, const char* at, size_t len) {
    LoadClient* self = Self(p);
    Conn& c = ConnOf(p);
    std::string_view data(at, len);
    while (!data.empty()) {
      size_t nl = data.find('\n');
      if (nl == std::string_view::npos) {
        c.partial_line.append(data);
        break;
      }
      if (c.partial_line.empty()) {
        self->OnLine(c, data.substr(0, nl));
      } else {
        c.partial_line.append(data.substr(0, nl));
        self->OnLine(c, c.partial_line);
        c.partial_line.clear();
      }
      data.remove_prefix(nl + 1);
    }
    return 0;
  }

  static int OnMessageComplete(llhttp_t* p) {
    Conn& c = ConnOf(p);
    c.message_complete = true;
    c.keep_alive = llhttp_should_keep_alive(p) != 0;
    return HPE_PAUSED;
  }

  void OnLine(Conn& c, std::string_view line) {
    size_t key = line.find(kSimTimeKey);
    if (key == std::string_view::npos) return;
    std::string_view digits = line.substr(key + kSimTimeKey.size());
    int64_t sim_t_us = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), sim_t_us);
    if (ec != std::errc() || end == digits.data()) return;
    samples_.push_back(Sample{.delay_us = c.read_time_us - sim_t_us,
                              .at_us = c.read_time_us,
                              .conn = c.index,
                              .round = c.rounds_done,
                              .chunk = c.chunk_index++});
  }

  void Error(const Conn& c, std::string_view what) {
    if (++errors_printed_ <= kMaxErrorsPrinted) {
      fprintf(stderr, "relay_delay: conn %d round %d: %.*s\n", c.index, c.rounds_done,
              static_cast<int>(what.size()), what.data());
    }
  }

  void StartRequest(Conn& c) {
    c.sent = 0;
    c.partial_line.clear();
    c.message_complete = false;
    c.chunk_index = 0;
    llhttp_init(&c.parser, HTTP_RESPONSE, &settings_);
    c.parser.data = &c;
    if (c.fd >= 0) {
      c.phase = Phase::kSending;
      Send(c);
      return;
    }
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) {
      ConnFailed(c, absl::StrCat("socket: ", strerror(errno)));
      return;
    }
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    epoll_event ev{};
    ev.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP;
    ev.data.u32 = static_cast<uint32_t>(c.index);
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, c.fd, &ev);
    if (connect(c.fd, reinterpret_cast<const sockaddr*>(&addr_), sizeof(addr_)) == 0) {
      c.phase = Phase::kSending;
      Send(c);
    } else if (errno == EINPROGRESS) {
      c.phase = Phase::kConnecting;
    } else {
      ConnFailed(c, absl::StrCat("connect: ", strerror(errno)));
    }
  }

  void HandleEvent(Conn& c, uint32_t events) {
    if (c.phase == Phase::kConnecting) {
      if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        ConnFailed(c, absl::StrCat("connect: ", strerror(err)));
        return;
      }
      c.phase = Phase::kSending;
    }
    if (c.phase == Phase::kSending && (events & EPOLLOUT)) Send(c);
    if ((c.phase == Phase::kReceiving || c.phase == Phase::kSending) &&
        (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
      Receive(c);
    }
  }

  void Send(Conn& c) {
    while (c.sent < request_.size()) {
      ssize_t n = send(c.fd, request_.data() + c.sent, request_.size() - c.sent, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        ConnFailed(c, absl::StrCat("send: ", strerror(errno)));
        return;
      }
      c.sent += static_cast<size_t>(n);
    }
    c.phase = Phase::kReceiving;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u32 = static_cast<uint32_t>(c.index);
    epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c.fd, &ev);
  }

  void Receive(Conn& c) {
    // One read per wake-up: the time taken right after it is the arrival
    // time of everything it returned.
    ssize_t n = read(c.fd, buf_, sizeof(buf_));
    c.read_time_us = NowUs(CLOCK_REALTIME);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      ConnFailed(c, absl::StrCat("read: ", strerror(errno)));
      return;
    }
    if (n == 0) {
      // A close-delimited body ends here; anything else is cut short.
      if (llhttp_finish(&c.parser) == HPE_OK && c.message_complete) {
        c.keep_alive = false;
        RequestDone(c);
      } else {
        ConnFailed(c, "connection closed before the response was complete");
      }
      return;
    }
    if (c.phase == Phase::kSending) {
      ConnFailed(c, "response before the request was sent");
      return;
    }
    llhttp_errno_t err = llhttp_execute(&c.parser, buf_, static_cast<size_t>(n));
    if (err == HPE_PAUSED) {
      if (llhttp_get_error_pos(&c.parser) != buf_ + n) {
        ConnFailed(c, "bytes after the end of the response");
        return;
      }
      RequestDone(c);
    } else if (err != HPE_OK) {
      ConnFailed(c, absl::StrCat("malformed response: ", llhttp_get_error_reason(&c.parser)));
    }
  }

  void RequestDone(Conn& c) {
    int status = c.parser.status_code;
    if (status >= 200 && status <= 299) {
      ++requests_ok_;
    } else {
      ++requests_failed_;
    }
    NextRound(c, /*reuse=*/c.keep_alive);
  }

  void ConnFailed(Conn& c, std::string_view what) {
    ++conn_errors_;
    ++requests_failed_;
    Error(c, what);
    NextRound(c, /*reuse=*/false);
  }

  // A failed request still uses up its round, so a failing server cannot
  // make the client loop.
  void NextRound(Conn& c, bool reuse) {
    ++c.rounds_done;
    if (!reuse && c.fd >= 0) {
      close(c.fd);  // also removes it from the epoll set
      c.fd = -1;
    }
    if (c.rounds_done >= rounds_) {
      if (c.fd >= 0) {
        close(c.fd);
        c.fd = -1;
      }
      c.phase = Phase::kDone;
      return;
    }
    StartRequest(c);
  }

  const sockaddr_in addr_;
  const int rounds_;
  const std::string request_;
  std::vector<Conn> conns_;
  llhttp_settings_t settings_;
  int epoll_fd_ = -1;
  char buf_[64 * 1024];
  std::vector<Sample> samples_;
  long requests_ok_ = 0;
  long requests_failed_ = 0;
  long non2xx_ = 0;
  long conn_errors_ = 0;
  long unfinished_ = 0;
  int errors_printed_ = 0;
  bool timed_out_ = false;
  int64_t elapsed_us_ = 0;
};

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Measures per-chunk delay of streamed generations: "
      "relay_delay --port=PORT [--connections=100 --rounds=1 ...]");
  absl::ParseCommandLine(argc, argv);

  const int port = absl::GetFlag(FLAGS_port);
  const int connections = absl::GetFlag(FLAGS_connections);
  const int rounds = absl::GetFlag(FLAGS_rounds);
  const int tokens = absl::GetFlag(FLAGS_tokens);
  double token_delay_ms;
  if (port <= 0 || port > 65535 || connections < 1 || connections > kMaxConnections || rounds < 1 ||
      tokens < 0 || !absl::SimpleAtod(absl::GetFlag(FLAGS_token_delay_ms), &token_delay_ms) ||
      !(token_delay_ms >= 0)) {
    fprintf(stderr,
            "relay_delay: need --port in 1..65535, --connections in 1..%d, "
            "--rounds >= 1, --tokens >= 0, --token_delay_ms >= 0\n",
            kMaxConnections);
    return 2;
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, absl::GetFlag(FLAGS_host).c_str(), &addr.sin_addr) != 1) {
    fprintf(stderr, "relay_delay: --host must be an IPv4 address\n");
    return 2;
  }
  const double duration_s = std::clamp(absl::GetFlag(FLAGS_duration_s), 0.1, kMaxDurationS);

  // Watchdog: the loop honours the deadline itself, this is for the case
  // where it does not.
  alarm(static_cast<unsigned>(std::ceil(duration_s)) + 10);
  signal(SIGPIPE, SIG_IGN);
  rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }

  const std::string body =
      R"({"model":"sim:latest","prompt":"Why is the sky blue?","stream":true})";
  const std::string request =
      absl::StrCat("POST ", absl::GetFlag(FLAGS_path), " HTTP/1.1\r\n",
                   "Host: ", absl::GetFlag(FLAGS_host), ":", port, "\r\n",
                   "User-Agent: sluice-relay-delay\r\n"
                   "Accept: application/x-ndjson\r\n"
                   "Content-Type: application/json\r\n"
                   "X-Sim-Tokens: ",
                   tokens, "\r\n", "X-Sim-Token-Delay-Ms: ", absl::GetFlag(FLAGS_token_delay_ms),
                   "\r\n", "Content-Length: ", body.size(), "\r\n\r\n", body);

  const int64_t stagger_us =
      absl::GetFlag(FLAGS_stagger) ? static_cast<int64_t>(std::llround(token_delay_ms * 1000)) : 0;
  // 64 KiB read buffer inside; keep it off the stack.
  auto client = std::make_unique<LoadClient>(addr, connections, rounds, stagger_us, request);
  if (!client->Run(static_cast<int64_t>(duration_s * 1e6))) return 1;
  return client->Report(absl::GetFlag(FLAGS_label), absl::GetFlag(FLAGS_worst)) ? 0 : 1;
}

}  // namespace
}  // namespace sluice::bench

int main(int argc, char** argv) { return sluice::bench::Main(argc, argv); }
