#include "sim_server.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "absl/status/status.h"
#include "sim_connection.h"

namespace sluice::sim {
namespace {

constexpr uint64_t kListenerTag = 0;
constexpr uint64_t kWakeTag = 1;

}  // namespace

Worker::Worker(int listen_fd, const SimConfig* config) : listen_fd_(listen_fd), config_(config) {}

Worker::~Worker() {
  connections_.clear();
  if (epoll_fd_ >= 0) close(epoll_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
  if (listen_fd_ >= 0) close(listen_fd_);
}

absl::Status Worker::Init() {
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return ErrnoStatus("epoll_create1");
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) return ErrnoStatus("eventfd");
  epoll_event ev{};
  // The listener is level-triggered: AcceptAll takes a bounded batch per
  // wake-up and the rest are reported again.
  ev.events = EPOLLIN;
  ev.data.u64 = kListenerTag;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev) != 0) {
    return ErrnoStatus("epoll_ctl(listener)");
  }
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeTag;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev) != 0) {
    return ErrnoStatus("epoll_ctl(eventfd)");
  }
  return absl::OkStatus();
}

void Worker::Stop() {
  stop_.store(true);
  uint64_t one = 1;
  ssize_t ignored = write(wake_fd_, &one, sizeof(one));
  (void)ignored;
}

void Worker::ScheduleTimer(Connection* connection, int64_t deadline_ns) {
  timers_.push_back({deadline_ns, connection->id(), connection->NextTimerSeq()});
  std::push_heap(timers_.begin(), timers_.end());
}

int Worker::Wait(epoll_event* events, int max_events) {
  int64_t timeout_ns = -1;
  if (!timers_.empty()) {
    timeout_ns = std::max<int64_t>(0, timers_.front().deadline_ns - MonotonicNowNs());
  }
  if (have_pwait2_) {
    // epoll_pwait2 takes a timespec: sub-millisecond token delays (0.5 ms)
    // need better than epoll_wait's millisecond timeout.
    timespec ts{static_cast<time_t>(timeout_ns / 1'000'000'000),
                static_cast<long>(timeout_ns % 1'000'000'000)};
    int n = epoll_pwait2(epoll_fd_, events, max_events, timeout_ns < 0 ? nullptr : &ts, nullptr);
    if (n >= 0 || errno != ENOSYS) return n;
    have_pwait2_ = false;
  }
  int timeout_ms = timeout_ns < 0 ? -1 : static_cast<int>((timeout_ns + 999'999) / 1'000'000);
  return epoll_wait(epoll_fd_, events, max_events, timeout_ms);
}

void Worker::Run() {
  epoll_event events[256];
  while (!stop_.load(std::memory_order_relaxed)) {
    int n = Wait(events, 256);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("ollama-sim: epoll_wait");
      break;
    }
    for (int i = 0; i < n; ++i) {
      uint64_t tag = events[i].data.u64;
      if (tag == kListenerTag) {
        AcceptAll();
      } else if (tag == kWakeTag) {
        uint64_t value;
        ssize_t ignored = read(wake_fd_, &value, sizeof(value));
        (void)ignored;
      } else {
        auto it = connections_.find(tag);
        if (it == connections_.end()) continue;
        it->second->OnEvents(events[i].events);
        DestroyIfDead(tag);
      }
    }
    RunTimers();
  }
  connections_.clear();
}

void Worker::RunTimers() {
  if (timers_.empty()) return;
  int64_t now = MonotonicNowNs();
  // Collect first: a connection may re-arm at `now`, which must wait for the
  // next loop turn rather than spin here.
  expired_.clear();
  while (!timers_.empty() && timers_.front().deadline_ns <= now) {
    std::pop_heap(timers_.begin(), timers_.end());
    expired_.push_back(timers_.back());
    timers_.pop_back();
  }
  for (const TimerEntry& entry : expired_) {
    auto it = connections_.find(entry.connection_id);
    if (it == connections_.end() || it->second->timer_seq() != entry.seq) {
      continue;  // Superseded, or the connection is gone.
    }
    it->second->OnTimer();
    DestroyIfDead(entry.connection_id);
  }
}

void Worker::DestroyIfDead(uint64_t id) {
  auto it = connections_.find(id);
  if (it != connections_.end() && it->second->dead()) connections_.erase(it);
}

void Worker::AcceptAll() {
  for (int i = 0; i < 64; ++i) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) perror("ollama-sim: accept4");
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    uint64_t id = next_connection_id_++;
    SimStats& stats = GlobalStats();
    stats.opened.fetch_add(1, std::memory_order_relaxed);
    stats.active.fetch_add(1, std::memory_order_relaxed);
    auto connection = std::make_unique<Connection>(this, fd, id);
    epoll_event ev{};
    // Registered once, edge-triggered, for everything: EPOLLRDHUP stays armed
    // while a stream is being generated so a client's FIN or RST is noticed
    // at once rather than at the next token write.
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = id;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      perror("ollama-sim: epoll_ctl(connection)");
      continue;  // The unique_ptr closes it and counts the close.
    }
    connections_.emplace(id, std::move(connection));
  }
}

}  // namespace sluice::sim
