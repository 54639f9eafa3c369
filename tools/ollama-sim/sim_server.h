// The simulator's network side: one epoll event loop per worker thread
// (sim_listen.h opens the listening sockets). Each worker owns its own
// SO_REUSEPORT listener, its connections (sim_connection.h) and a timer heap
// for token deadlines; workers share nothing but the read-only SimConfig and
// the atomic SimStats.
#pragma once

#include <sys/epoll.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "sim_config.h"
#include "sim_listen.h"

namespace sluice::sim {

class Connection;

// One event loop thread. Construct, Init(), then Run() on the thread that
// will own it; Stop() may be called from any thread.
class Worker {
 public:
  // Takes ownership of `listen_fd`. `config` must outlive the worker.
  Worker(int listen_fd, const SimConfig* config);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Creates the epoll instance and the wake-up eventfd.
  absl::Status Init();
  // Serves until Stop(); closes every connection before returning.
  void Run();
  // Asks Run() to return. Thread-safe, async-signal-unsafe.
  void Stop();

  // Used by Connection.
  const SimConfig& config() const { return *config_; }
  // Arms the connection's single timer at `deadline_ns` (CLOCK_MONOTONIC);
  // any earlier arming of the same connection is superseded.
  void ScheduleTimer(Connection* connection, int64_t deadline_ns);
  // A scratch buffer for recv(); valid until the next event is handled.
  char* read_buffer() { return read_buffer_.data(); }
  size_t read_buffer_size() const { return read_buffer_.size(); }

 private:
  struct TimerEntry {
    int64_t deadline_ns;
    uint64_t connection_id;
    uint64_t seq;
    // std::push_heap builds a max-heap; invert to pop the earliest first.
    bool operator<(const TimerEntry& other) const { return deadline_ns > other.deadline_ns; }
  };

  void AcceptAll();
  void RunTimers();
  // epoll_wait with a nanosecond timeout derived from the nearest deadline.
  int Wait(epoll_event* events, int max_events);
  void DestroyIfDead(uint64_t id);

  int listen_fd_;
  const SimConfig* config_;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  std::atomic<bool> stop_{false};
  bool have_pwait2_ = true;
  uint64_t next_connection_id_ = 2;  // 0 and 1 tag the listener and wake fd.
  std::unordered_map<uint64_t, std::unique_ptr<Connection>> connections_;
  std::vector<TimerEntry> timers_;  // A heap ordered by TimerEntry::operator<.
  std::vector<TimerEntry> expired_;
  // 64 KiB: a full wrk pipeline batch or a large request chunk in one recv().
  std::vector<char> read_buffer_ = std::vector<char>(64 * 1024);
};

}  // namespace sluice::sim
