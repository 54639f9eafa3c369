// A backend whose health-check answers are hostile (very slow, larger than
// the 4 MiB sluice reads, not a model list) beside a well-behaved
// simulator: the checks take it out of the rotation, sluice keeps serving
// from the other backend, promptly and with bounded memory, and the checks
// go on (the backend comes back once it answers well).
//
// The hostile backend is a small server on a thread of the test, on
// loopback; each of its connections is bounded in time.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/integration/prom_text.h"
#include "tests/integration/proxy_test_base.h"
#include "tests/integration/timing.h"

namespace sluice::integration {
namespace {

// How the fake backend answers GET /api/ps and GET /api/tags. Every other
// request gets 200 {"fake":true} (and is counted: none should come).
enum class Answer {
  kOk,          // {"models":[]}
  kSlow,        // 200 head, then one byte of body every 50 ms, never done
  kHuge,        // a valid model list of 6 MiB
  kNotJson,     // 200 with an HTML page
  kDeep,        // {"models": and 100,000 nested arrays
  kBadNames,    // {"models":[{"name":42},{"size":1}]}
  kNotHttp,     // bytes that are no HTTP answer
  kEndlessHead  // a response head that never ends (header lines every 1 ms)
};

class FakeBackend {
 public:
  FakeBackend() {
    listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
        listen(listen_fd_, 64) == 0 &&
        getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      port_ = ntohs(addr.sin_port);
    }
    acceptor_ = std::thread([this] { Accept(); });
  }
  ~FakeBackend() {
    stop_ = true;
    acceptor_.join();
    std::lock_guard<std::mutex> lock(mu_);
    for (std::thread& t : handlers_) t.join();
    close(listen_fd_);
  }
  FakeBackend(const FakeBackend&) = delete;
  FakeBackend& operator=(const FakeBackend&) = delete;

  int port() const { return port_; }
  // How /api/ps and /api/tags are answered; set_tags_answer for /api/tags
  // alone.
  void set_answer(Answer a) {
    answer_ = a;
    tags_answer_ = a;
  }
  void set_tags_answer(Answer a) { tags_answer_ = a; }
  int64_t probes() const { return probes_; }
  int64_t others() const { return others_; }

 private:
  // Each connection is served for at most this long.
  static constexpr absl::Duration kConnectionLimit = absl::Seconds(5);

  void Accept() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      std::lock_guard<std::mutex> lock(mu_);
      handlers_.emplace_back([this, fd] {
        Serve(fd);
        close(fd);
      });
    }
  }

  // Waits until `fd` is ready for `events`, the deadline or a stop.
  bool Wait(int fd, short events, absl::Time deadline) const {
    while (!stop_ && absl::Now() < deadline) {
      pollfd p{fd, events, 0};
      const int n = poll(&p, 1, 20);
      if (n > 0) return (p.revents & (POLLERR | POLLHUP)) == 0 || (p.revents & events) != 0;
      if (n < 0 && errno != EINTR) return false;
    }
    return false;
  }

  // Sends all of `bytes`; false once the peer is gone or time is up.
  bool SendAll(int fd, absl::string_view bytes, absl::Time deadline) const {
    if (stop_) return false;
    while (!bytes.empty()) {
      const ssize_t n = send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        bytes.remove_prefix(static_cast<size_t>(n));
      } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        if (!Wait(fd, POLLOUT, deadline)) return false;
      } else {
        return false;
      }
    }
    return true;
  }

  void Serve(int fd) {
    const absl::Time deadline = absl::Now() + kConnectionLimit;
    std::string head;
    char buf[4096];
    while (!absl::StrContains(head, "\r\n\r\n")) {
      if (head.size() > 65536 || !Wait(fd, POLLIN, deadline)) return;
      const ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return;
      if (n > 0) head.append(buf, static_cast<size_t>(n));
    }
    const bool tags = absl::StartsWith(head, "GET /api/tags ");
    const bool probe = tags || absl::StartsWith(head, "GET /api/ps ");
    if (!probe) {
      ++others_;
      SendAll(fd,
              "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n"
              "Connection: close\r\n\r\n{\"fake\":true}",
              deadline);
      return;
    }
    ++probes_;
    constexpr absl::string_view kHead =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";
    switch (tags ? tags_answer_.load() : answer_.load()) {
      case Answer::kOk:
        SendAll(fd, absl::StrCat(kHead, R"({"models":[]})"), deadline);
        break;
      case Answer::kSlow:
        if (!SendAll(fd, kHead, deadline)) return;
        while (SendAll(fd, " ", deadline)) absl::SleepFor(absl::Milliseconds(50));
        break;
      case Answer::kHuge: {
        if (!SendAll(fd, absl::StrCat(kHead, R"({"models":[)"), deadline)) return;
        // 64 MiB of entries, 64 KiB at a time, unless the reader goes.
        std::string piece;
        for (int i = 0; piece.size() < 65536; ++i) {
          absl::StrAppend(&piece, R"({"name":"model-)", i, R"(:latest","size":1000},)");
        }
        for (size_t sent = 0; sent < (64u << 20); sent += piece.size()) {
          if (!SendAll(fd, piece, deadline)) return;
        }
        SendAll(fd, R"({"name":"last:latest"}]})", deadline);
        break;
      }
      case Answer::kNotJson:
        SendAll(fd, absl::StrCat(kHead, "<html><body>502 Bad Gateway</body></html>"), deadline);
        break;
      case Answer::kDeep:
        SendAll(fd, absl::StrCat(kHead, R"({"models":)", std::string(100000, '[')), deadline);
        break;
      case Answer::kBadNames:
        SendAll(fd, absl::StrCat(kHead, R"({"models":[{"name":42},{"size":1}]})"), deadline);
        break;
      case Answer::kNotHttp:
        SendAll(fd, "SSH-2.0-OpenSSH_9.2\r\n\r\n{\"models\":[]}", deadline);
        break;
      case Answer::kEndlessHead:
        if (!SendAll(fd, "HTTP/1.1 200 OK\r\n", deadline)) return;
        while (SendAll(fd, "X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n", deadline)) {
          absl::SleepFor(absl::Milliseconds(1));
        }
        break;
    }
  }

  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<Answer> answer_{Answer::kOk};
  std::atomic<Answer> tags_answer_{Answer::kOk};
  std::atomic<int64_t> probes_{0};
  std::atomic<int64_t> others_{0};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<std::thread> handlers_;  // guarded by mu_
};

// VmHWM of `pid` (its peak resident size) in KiB, or -1.
int64_t PeakRssKib(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    int64_t kib = 0;
    if (absl::StartsWith(line, "VmHWM:") &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::StripSuffix(line.substr(6), "kB")),
                         &kib)) {
      return kib;
    }
  }
  return -1;
}

class HostileBackends : public ProxyTest {
 protected:
  // The fake backend ("bad", answering `answer`) and a simulator ("good")
  // with the model alpha behind sluice, checks every 100 ms with 500 ms
  // each.
  void Start(Answer answer) {
    fake_ = std::make_unique<FakeBackend>();
    ASSERT_NE(fake_->port(), 0);
    fake_->set_answer(answer);
    auto sim = StartSim({"--models=alpha"});
    ASSERT_TRUE(sim.ok()) << sim.status();
    sim_ = std::move(*sim);
    auto sluice = StartSluice(sim_->port(),
                              {"--threads=1", "--health_interval=100ms", "--health_timeout=500ms",
                               absl::StrCat("--upstream=127.0.0.1:", fake_->port(),
                                            " name=bad,127.0.0.1:", sim_->port(), " name=good")});
    ASSERT_TRUE(sluice.ok()) << sluice.status();
    sluice_ = std::move(*sluice);
  }
  void TearDown() override {
    ProxyTest::TearDown();
    fake_.reset();
  }

  // sluice_backend_up for `name`, or -1.
  int Up(absl::string_view name) {
    auto families = ScrapeMetrics(proxy_port());
    if (!families.ok()) return -1;
    return static_cast<int>(
        FindSample(*families, "sluice_backend_up", {{"backend", std::string(name)}}).value_or(-1));
  }
  // Waits up to 5 s for the bad backend's sluice_backend_up to be `up`.
  void AwaitBad(int up) {
    const absl::Time deadline = absl::Now() + absl::Seconds(5 * TimingSlack());
    while (Up("bad") != up && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
    ASSERT_EQ(Up("bad"), up) << "probes answered: " << fake_->probes();
  }

  // For `d`: /api/version and a generation of alpha, one after the other on
  // one connection; every answer comes from the simulator, each within
  // 300 ms (times the sanitizer slack), and the fake backend gets none.
  void ServedMeanwhile(absl::Duration d) {
    IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
    const absl::Time end = absl::Now() + d;
    int n = 0;
    absl::Duration slowest;
    for (; absl::Now() < end || n < 4; ++n) {
      const std::string request =
          n % 2 ? BuildRequest("GET", "/api/version")
                : BuildRequest("POST", "/api/generate", {{"X-Sim-Tokens", "2"}},
                               R"({"model":"alpha","prompt":"hi","stream":false})");
      const absl::Time sent = absl::Now();
      IT_ASSERT_OK(conn->Send(request));
      IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse(absl::Seconds(5)));
      slowest = std::max(slowest, absl::Now() - sent);
      ASSERT_EQ(r.status, 200) << r.body;
      ASSERT_FALSE(absl::StrContains(r.body, "fake")) << "answered by the hostile backend";
      ASSERT_TRUE(absl::StrContains(r.body, n % 2 ? "\"version\"" : "\"done\":true")) << r.body;
    }
    EXPECT_LT(slowest, absl::Milliseconds(300 * TimingSlack())) << n << " requests";
    EXPECT_EQ(fake_->others(), 0);
  }

  std::unique_ptr<FakeBackend> fake_;
};

// /api/ps answers that trickle and never end: each check gives up at
// --health_timeout, the backend is out after two, requests never wait on
// the checks, and the checks go on: the backend is back once it answers.
TEST_F(HostileBackends, SlowCheckAnswers) {
  ASSERT_NO_FATAL_FAILURE(Start(Answer::kSlow));
  ASSERT_NO_FATAL_FAILURE(AwaitBad(0));
  const int64_t probes = fake_->probes();
  ASSERT_NO_FATAL_FAILURE(ServedMeanwhile(absl::Seconds(2)));
  // 2 s of checks that each take 500 ms.
  EXPECT_GE(fake_->probes() - probes, 2);
  EXPECT_EQ(Up("good"), 1);
  fake_->set_answer(Answer::kOk);
  ASSERT_NO_FATAL_FAILURE(AwaitBad(1));
}

// A response head that never ends is no answer either.
TEST_F(HostileBackends, EndlessCheckHead) {
  ASSERT_NO_FATAL_FAILURE(Start(Answer::kEndlessHead));
  ASSERT_NO_FATAL_FAILURE(AwaitBad(0));
  ASSERT_NO_FATAL_FAILURE(ServedMeanwhile(absl::Seconds(1)));
  EXPECT_EQ(Up("good"), 1);
}

// /api/ps answers of 64 MiB, checked ten times a second: each is dropped
// once past 4 MiB, the backend is out, and sluice's memory stays bounded:
// its peak resident size grows by about one capped answer, never by one
// whole answer.
TEST_F(HostileBackends, HugeCheckAnswers) {
  ASSERT_NO_FATAL_FAILURE(Start(Answer::kHuge));
  const int64_t peak_at_start = PeakRssKib(sluice_->pid());
  ASSERT_NO_FATAL_FAILURE(AwaitBad(0));
  const int64_t probes = fake_->probes();
  ASSERT_NO_FATAL_FAILURE(ServedMeanwhile(absl::Seconds(2)));
  EXPECT_GE(fake_->probes() - probes, 5) << "the checks went on";
  const int64_t peak = PeakRssKib(sluice_->pid());
  ASSERT_GT(peak_at_start, 0);
  if (FreedMemoryIsReused()) {
    EXPECT_LT(peak - peak_at_start, 24 * 1024 * MemorySlack())
        << "peak RSS " << peak_at_start << " KiB -> " << peak << " KiB";
  }
  EXPECT_EQ(Up("good"), 1);
  fake_->set_answer(Answer::kOk);
  ASSERT_NO_FATAL_FAILURE(AwaitBad(1));
}

// Answers that are not a model list, one after the other, each after the
// backend was back: not JSON, 100,000 nested arrays (no deep recursion),
// entries without a string "name", bytes that are not HTTP. Each takes the
// backend out and sluice keeps serving from the other.
TEST_F(HostileBackends, MalformedCheckAnswers) {
  ASSERT_NO_FATAL_FAILURE(Start(Answer::kOk));
  ASSERT_NO_FATAL_FAILURE(AwaitBad(1));
  for (Answer a : {Answer::kNotJson, Answer::kDeep, Answer::kBadNames, Answer::kNotHttp}) {
    SCOPED_TRACE(static_cast<int>(a));
    fake_->set_answer(a);
    ASSERT_NO_FATAL_FAILURE(AwaitBad(0));
    ASSERT_NO_FATAL_FAILURE(ServedMeanwhile(absl::Milliseconds(300)));
    fake_->set_answer(Answer::kOk);
    ASSERT_NO_FATAL_FAILURE(AwaitBad(1));
  }
  EXPECT_EQ(Up("good"), 1);
}

// The model lists that sluice merges from every backend (GET /api/tags)
// are read on a worker's loop: a backend that passes its checks but
// answers the list with 64 MiB, a trickle, or not JSON is left out of the
// union (past 8 MiB, at --health_timeout), the client gets the other
// backend's models in time, and memory stays bounded: the peak grows by
// what one capped answer takes (up to 8 MiB read into a string that grows
// by doubling: about 24 MiB at its reallocation), never by a whole answer.
TEST_F(HostileBackends, HostileModelListsAreLeftOutOfTheUnion) {
  ASSERT_NO_FATAL_FAILURE(Start(Answer::kOk));
  ASSERT_NO_FATAL_FAILURE(AwaitBad(1));
  const int64_t peak_at_start = PeakRssKib(sluice_->pid());
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  for (Answer a : {Answer::kHuge, Answer::kSlow, Answer::kNotJson, Answer::kHuge}) {
    SCOPED_TRACE(static_cast<int>(a));
    fake_->set_tags_answer(a);
    for (int i = 0; i < 3; ++i) {
      const absl::Time sent = absl::Now();
      IT_ASSERT_OK(conn->Send(BuildRequest("GET", "/api/tags")));
      IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse(absl::Seconds(10)));
      EXPECT_LT(absl::Now() - sent, absl::Milliseconds(1500 * TimingSlack()));
      ASSERT_EQ(r.status, 200) << r.body.substr(0, 300);
      EXPECT_TRUE(absl::StrContains(r.body, "\"alpha:latest\"")) << r.body.substr(0, 300);
      EXPECT_FALSE(absl::StrContains(r.body, "model-")) << r.body.substr(0, 300);
    }
  }
  const int64_t peak = PeakRssKib(sluice_->pid());
  ASSERT_GT(peak_at_start, 0);
  if (FreedMemoryIsReused()) {
    EXPECT_LT(peak - peak_at_start, 40 * 1024 * MemorySlack())
        << "peak RSS " << peak_at_start << " KiB -> " << peak << " KiB";
  }
  EXPECT_EQ(Up("bad"), 1) << "a bad model list alone does not take a backend out";
  EXPECT_EQ(fake_->others(), 0);
}

}  // namespace
}  // namespace sluice::integration
