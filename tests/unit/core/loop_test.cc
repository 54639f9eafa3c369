#include "core/engine/loop.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "core/engine/stream.h"
#include "gtest/gtest.h"

namespace sluice::core {
namespace {

enum class Kind { kUring, kPoll };

std::unique_ptr<Loop> NewLoop(Kind kind) {
  Loop::Options o;
  o.recv_buffers = 64;
  o.recv_buffer_size = 1024;
  return std::make_unique<Loop>(o, kind == Kind::kUring ? NewUringBackend() : NewPollBackend());
}

// The loop on its own, through the real kernel: what every connection
// relies on (timers, deferred and posted work, end-of-turn flushes,
// accepts) without a worker around it. Every case runs on io_uring and on
// the poll backend unit tests use, which must behave the same.
class LoopTest : public ::testing::TestWithParam<Kind> {
 protected:
  void SetUp() override { loop_ = NewLoop(GetParam()); }
  // Init on the test thread; skips where io_uring is unavailable.
  bool Start() {
    absl::Status s = loop_->Init();
    if (!s.ok()) {
      skipped_ = s.ToString();
      return false;
    }
    return true;
  }
  std::unique_ptr<Loop> loop_;
  std::string skipped_;
};

INSTANTIATE_TEST_SUITE_P(Backends, LoopTest, ::testing::Values(Kind::kUring, Kind::kPoll),
                         [](const ::testing::TestParamInfo<Kind>& info) {
                           return info.param == Kind::kUring ? "uring" : "poll";
                         });

struct Recorder final : Flushable {
  std::vector<std::string>* log;
  void Flush() override { log->push_back("flush"); }
};

// Within one turn: completions, then deferred work, then timers (and work
// they defer), then flushes; the loop stops when asked after a turn.
TEST_P(LoopTest, TurnOrderAndTimers) {
  if (!Start()) GTEST_SKIP() << skipped_;
  std::vector<std::string> log;
  Recorder flush;
  flush.log = &log;
  struct Ctx {
    Loop* loop;
    std::vector<std::string>* log;
    Recorder* flush;
  } ctx{loop_.get(), &log, &flush};
  Timer t([c = &ctx] {
    c->log->push_back("timer");
    c->loop->Defer([c] { c->log->push_back("deferred by timer"); });
    c->loop->RequestFlush(c->flush);
  });
  const int64_t start = loop_->now_ns();
  loop_->Timers(20'000'000)->Arm(&t, loop_->now_ns());
  loop_->Defer([&] { log.push_back("deferred"); });
  int turns = 0;
  loop_->Run([&] { return ++turns < 1000 && log.size() < 4; });
  EXPECT_EQ(log, (std::vector<std::string>{"deferred", "timer", "deferred by timer", "flush"}));
  EXPECT_GE(loop_->now_ns() - start, 20'000'000);
  EXPECT_LT(turns, 10) << "the loop slept until the timer instead of spinning";
}

// Post is the one thread-safe entry: a closure from another thread wakes a
// sleeping loop and runs on it.
TEST_P(LoopTest, PostFromAnotherThreadWakesTheLoop) {
  if (!Start()) GTEST_SKIP() << skipped_;
  std::atomic<bool> ran{false};
  std::thread::id ran_on;
  std::thread poster([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    loop_->Post([&] {
      ran_on = std::this_thread::get_id();
      ran = true;
    });
  });
  // A timer far away: only the post can end the wait.
  Timer never([] {});
  loop_->Timers(60'000'000'000)->Arm(&never, loop_->now_ns());
  loop_->Run([&] { return !ran.load(); });
  poster.join();
  EXPECT_TRUE(ran.load());
  EXPECT_EQ(ran_on, std::this_thread::get_id());
}

struct CountingAcceptor final : Acceptor {
  std::vector<std::pair<int, int>> accepted;  // tag, fd
  int errors = 0;
  void OnAccepted(int tag, int fd) override { accepted.push_back({tag, fd}); }
  void OnAcceptError(int tag, int res) override { ++errors; }
};

int ListenLoopback(int* port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(fd, 16) != 0) {
    close(fd);
    return -1;
  }
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  *port = ntohs(a.sin_port);
  return fd;
}

int Connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Accepted sockets go to the acceptor with their listener's tag; after
// CloseListeners the kernel refuses new connections.
TEST_P(LoopTest, AcceptsUntilListenersClose) {
  int port = 0;
  int lfd = ListenLoopback(&port);
  ASSERT_GE(lfd, 0);
  CountingAcceptor acceptor;
  loop_->AddListener(lfd, 7, &acceptor);
  if (!Start()) GTEST_SKIP() << skipped_;
  std::vector<int> clients;
  for (int i = 0; i < 3; ++i) clients.push_back(Connect(port));
  int turns = 0;
  loop_->Run([&] { return acceptor.accepted.size() < 3 && ++turns < 100; });
  ASSERT_EQ(acceptor.accepted.size(), 3u);
  for (auto [tag, fd] : acceptor.accepted) {
    EXPECT_EQ(tag, 7);
    close(fd);
  }
  EXPECT_EQ(acceptor.errors, 0);
  loop_->CloseListeners();
  loop_->Run([] { return false; });  // submits the cancel
  EXPECT_LT(Connect(port), 0) << "the listening socket is closed";
  for (int fd : clients) close(fd);
}

// A drain closes the listeners in the middle of a turn while the socket may
// live on in another process (a restart hands it over). Connections that
// arrive then belong to that process: none may be taken by the closing loop
// and lost with its ring, and any it did accept reaches its acceptor.
TEST_P(LoopTest, ClosedListenersLoseNoConnection) {
  int port = 0;
  int lfd = ListenLoopback(&port);
  ASSERT_GE(lfd, 0);
  const int successor = dup(lfd);  // the socket as the new process holds it
  CountingAcceptor acceptor;
  loop_->AddListener(lfd, 1, &acceptor);
  if (!Start()) GTEST_SKIP() << skipped_;
  constexpr int kClients = 5;
  std::vector<int> clients;
  struct Ctx {
    Loop* loop;
    int port;
    std::vector<int>* clients;
  } ctx{loop_.get(), port, &clients};
  Timer drain([c = &ctx] {
    for (int i = 0; i < kClients; ++i) c->clients->push_back(Connect(c->port));
    c->loop->CloseListeners();
  });
  loop_->Timers(5'000'000)->Arm(&drain, loop_->now_ns());
  bool fired = false;
  loop_->Run([&] {
    if (drain.armed()) return true;
    fired = true;
    return false;
  });
  ASSERT_TRUE(fired);
  loop_.reset();  // the ring goes, as the old process exits
  fcntl(successor, F_SETFL, fcntl(successor, F_GETFL) | O_NONBLOCK);
  size_t taken_over = 0;
  for (;;) {
    int fd = accept4(successor, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) break;
    ++taken_over;
    close(fd);
  }
  EXPECT_EQ(acceptor.accepted.size() + taken_over, static_cast<size_t>(kClients))
      << acceptor.accepted.size() << " delivered, " << taken_over << " left for the successor";
  for (auto [tag, fd] : acceptor.accepted) close(fd);
  for (int fd : clients) close(fd);
  close(successor);
}

// The restart case with both processes' loops: the old one drains (closes
// its listeners in the middle of a turn, then stops) while the new one
// accepts on the same socket. A connection that comes after the old loop
// has stopped must reach the new one: an accept the old ring still had
// armed would take the socket's wake-up and leave the connection waiting
// in the backlog.
TEST_P(LoopTest, StoppedLoopLeavesNewConnectionsToTheNextOwner) {
  int port = 0;
  int lfd = ListenLoopback(&port);
  ASSERT_GE(lfd, 0);
  CountingAcceptor old_acceptor, new_acceptor;
  loop_->AddListener(lfd, 1, &old_acceptor);
  std::unique_ptr<Loop> next_loop = NewLoop(GetParam());
  Loop& next = *next_loop;
  next.AddListener(dup(lfd), 2, &new_acceptor);
  if (!Start()) GTEST_SKIP() << skipped_;
  ASSERT_TRUE(next.Init().ok());
  // Both accepts armed and submitted.
  Timer tick([] {});
  loop_->Timers(1'000'000)->Arm(&tick, loop_->now_ns());
  loop_->Run([] { return false; });
  Timer tick2([] {});
  next.Timers(1'000'000)->Arm(&tick2, next.now_ns());
  next.Run([] { return false; });
  // The old loop drains: listeners closed inside a turn, then it stops.
  Loop* old_loop = loop_.get();
  Timer drain([old_loop] { old_loop->CloseListeners(); });
  loop_->Timers(1'000'000)->Arm(&drain, loop_->now_ns());
  loop_->Run([&] { return drain.armed(); });
  std::vector<int> clients;
  for (int i = 0; i < 4; ++i) clients.push_back(Connect(port));
  Timer give_up([] {});
  next.Timers(2'000'000'000)->Arm(&give_up, next.now_ns());
  next.Run([&] { return new_acceptor.accepted.size() < clients.size() && give_up.armed(); });
  EXPECT_EQ(new_acceptor.accepted.size(), clients.size())
      << "connections left in the backlog after the old loop stopped";
  EXPECT_TRUE(old_acceptor.accepted.empty());
  for (auto [tag, fd] : new_acceptor.accepted) close(fd);
  for (int fd : clients) close(fd);
}

struct HoldingHandler final : StreamHandler {
  bool hold = false;
  std::vector<Slice> held;
  size_t bytes = 0;
  void OnData(Slice data) override {
    bytes += data.size();
    if (hold) held.push_back(std::move(data));
  }
  void OnReadEnd(int res) override {}
  void OnWriteError(int res) override {}
  void OnClosed() override {}
};

struct EchoHandler final : StreamHandler {
  std::string got;
  int read_end = 1;  // not yet
  int connected = 1;
  bool closed = false;
  int write_error = 0;
  void OnData(Slice data) override { got.append(data.view()); }
  void OnReadEnd(int res) override { read_end = res; }
  void OnWriteError(int res) override { write_error = res; }
  void OnConnected(int res) override { connected = res; }
  void OnClosed() override { closed = true; }
};

// A Stream's whole life on each backend: connect, a gathered send, the
// peer's answer, its half-close, and Close ending with OnClosed.
TEST_P(LoopTest, StreamConnectsSendsReceivesAndCloses) {
  if (!Start()) GTEST_SKIP() << skipped_;
  int port = 0;
  int lfd = ListenLoopback(&port);
  ASSERT_GE(lfd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  EchoHandler h;
  auto* s =
      new Stream(loop_.get(), socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), &h);
  s->Connect(reinterpret_cast<sockaddr*>(&a), sizeof(a), 1'000'000'000);
  s->WriteStatic("GET / HTTP/1.1\r\n");
  s->WriteCopy("Host: x\r\n\r\n");
  s->StartReading();
  for (int i = 0; i < 100 && h.connected == 1; ++i) loop_->Turn(10'000'000);
  ASSERT_EQ(h.connected, 0);
  int peer = accept(lfd, nullptr, nullptr);
  ASSERT_GE(peer, 0);
  std::string request;
  for (int i = 0; i < 100 && request.size() < 27; ++i) {
    loop_->Turn(10'000'000);
    char buf[64];
    ssize_t n = recv(peer, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) request.append(buf, static_cast<size_t>(n));
  }
  EXPECT_EQ(request, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_TRUE(s->write_idle());
  ASSERT_EQ(write(peer, "HTTP/1.1 200 OK\r\n", 17), 17);
  shutdown(peer, SHUT_WR);
  for (int i = 0; i < 100 && h.read_end == 1; ++i) loop_->Turn(10'000'000);
  EXPECT_EQ(h.got, "HTTP/1.1 200 OK\r\n");
  EXPECT_EQ(h.read_end, 0);
  s->Close();
  for (int i = 0; i < 100 && !h.closed; ++i) loop_->Turn(10'000'000);
  EXPECT_TRUE(h.closed);
  delete s;
  char c;
  EXPECT_EQ(read(peer, &c, 1), 0) << "the peer sees the close";
  close(peer);
  close(lfd);
}

// A refused connect reports -ECONNREFUSED through OnConnected.
TEST_P(LoopTest, RefusedConnectIsReported) {
  if (!Start()) GTEST_SKIP() << skipped_;
  int port = 0;
  int lfd = ListenLoopback(&port);
  ASSERT_GE(lfd, 0);
  close(lfd);  // nothing listens there now
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  EchoHandler h;
  Stream s(loop_.get(), socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), &h);
  s.Connect(reinterpret_cast<sockaddr*>(&a), sizeof(a), 1'000'000'000);
  for (int i = 0; i < 100 && h.connected == 1; ++i) loop_->Turn(10'000'000);
  EXPECT_EQ(h.connected, -ECONNREFUSED);
  s.Close();
  for (int i = 0; i < 100 && !h.closed; ++i) loop_->Turn(10'000'000);
  EXPECT_TRUE(h.closed);
}

// When the ring runs low, the upstream streams of the connection holding
// most of it stop receiving (so TCP pushes back on their sender) while
// other connections' streams go on; once the ring is back under half they
// resume.
TEST_P(LoopTest, RingPressurePausesTheBiggestHoldersUpstreams) {
  if (!Start()) GTEST_SKIP() << skipped_;  // 64 buffers of 1 KiB
  int greedy_fds[2], polite_fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, greedy_fds), 0);
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, polite_fds), 0);
  BufferAccount* greedy_account = loop_->NewAccount();
  BufferAccount* polite_account = loop_->NewAccount();
  HoldingHandler greedy_h, polite_h;
  greedy_h.hold = true;  // a client that never reads: its chunks stay queued
  {
    Stream greedy(loop_.get(), greedy_fds[0], &greedy_h);
    Stream polite(loop_.get(), polite_fds[0], &polite_h);
    greedy.SetAccount(greedy_account, /*upstream=*/true);
    polite.SetAccount(polite_account, /*upstream=*/true);
    greedy.StartReading();
    polite.StartReading();
    struct Tick {
      Loop* loop;
      Timer* self;
    } tick_ctx{loop_.get(), nullptr};
    Timer tick([c = &tick_ctx] { c->loop->Timers(1'000'000)->Arm(c->self, c->loop->now_ns()); });
    tick_ctx.self = &tick;
    loop_->Timers(1'000'000)->Arm(&tick, loop_->now_ns());
    auto turns = [&](int n, const std::function<bool()>& until) {
      int i = 0;
      loop_->Run([&] { return ++i < n && !until(); });
    };
    const std::string chunk(512, 'x');
    // The greedy sender writes until the stream is paused.
    for (int i = 0; i < 400 && !greedy.paused_for_pressure(); ++i) {
      ASSERT_EQ(write(greedy_fds[1], chunk.data(), chunk.size()),
                static_cast<ssize_t>(chunk.size()));
      turns(3, [&] { return greedy.paused_for_pressure(); });
    }
    ASSERT_TRUE(greedy.paused_for_pressure()) << "held " << greedy_account->held;
    EXPECT_GT(greedy_account->held, loop_->buffers().count() / 2);
    EXPECT_EQ(loop_->paused_count(), 1u);
    EXPECT_EQ(loop_->pressure_pauses(), 1u);
    EXPECT_FALSE(polite.paused_for_pressure());
    // While paused, the greedy stream takes nothing more; the polite one is
    // served.
    const size_t greedy_bytes = greedy_h.bytes;
    for (int i = 0; i < 20; ++i) {
      ASSERT_EQ(write(greedy_fds[1], chunk.data(), chunk.size()),
                static_cast<ssize_t>(chunk.size()));
      ASSERT_EQ(write(polite_fds[1], chunk.data(), chunk.size()),
                static_cast<ssize_t>(chunk.size()));
      turns(3, [] { return false; });
    }
    EXPECT_LE(greedy_h.bytes, greedy_bytes + 2 * chunk.size()) << "in flight at the pause at most";
    EXPECT_EQ(polite_h.bytes, 20 * chunk.size());
    // The client reads: the held buffers come back, the stream resumes and
    // gets what waited in its socket.
    greedy_h.hold = false;
    greedy_h.held.clear();
    turns(50, [&] {
      return !greedy.paused_for_pressure() && greedy_h.bytes >= greedy_bytes + 20 * chunk.size();
    });
    EXPECT_FALSE(greedy.paused_for_pressure());
    EXPECT_EQ(loop_->paused_count(), 0u);
    EXPECT_GE(greedy_h.bytes, greedy_bytes + 20 * chunk.size());
    greedy.SetAccount(nullptr, false);
    polite.SetAccount(nullptr, false);
    greedy.Close();
    polite.Close();
    turns(10, [] { return false; });
  }
  loop_->ReleaseAccount(greedy_account);
  loop_->ReleaseAccount(polite_account);
  close(greedy_fds[1]);
  close(polite_fds[1]);
}

}  // namespace
}  // namespace sluice::core
