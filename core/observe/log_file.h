#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace sluice::core {

// A log file written by its own thread, so that a slow or stalled disk never
// stops an event loop: workers hand over whole buffers of complete lines
// (Submit), the thread writes them with write(2) in order of arrival.
// Opened with O_APPEND, so several writers and logrotate's copytruncate
// are safe; Reopen (SIGUSR1) makes the thread open the path again before
// its next write, which is what logrotate's `postrotate kill -USR1` needs.
class LogFile {
 public:
  // Opens (creating, mode 0644) `path` for appending. At most
  // `max_queued_bytes` wait for the thread; beyond that Submit drops the
  // buffer and counts its lines (dropped_lines), it never blocks.
  static absl::StatusOr<std::unique_ptr<LogFile>> Open(const std::string& path,
                                                       size_t max_queued_bytes = 64 << 20);
  // Writes everything already submitted, then stops the thread.
  ~LogFile();
  LogFile(const LogFile&) = delete;
  LogFile& operator=(const LogFile&) = delete;

  // Thread-safe, never blocks on I/O. `lines` holds `line_count` complete
  // lines. Returns false when it was dropped.
  bool Submit(std::string lines, uint64_t line_count);
  // Thread-safe: open the path again (the old file was renamed). Every
  // buffer submitted before the call is still written to the old file;
  // those submitted after it go to the new one. If opening fails, the
  // error goes to the error log and the old descriptor stays in use.
  void Reopen();
  // Blocks until everything submitted before the call is written (tests
  // and shutdown).
  void Sync();

  uint64_t dropped_lines() const { return dropped_lines_.load(std::memory_order_relaxed); }
  uint64_t written_lines() const { return written_lines_.load(std::memory_order_relaxed); }
  const std::string& path() const { return path_; }

 private:
  LogFile(std::string path, int fd, size_t max_queued_bytes);
  void Run();
  // Writes all of `data` (writer thread); false on an error other than EINTR.
  bool WriteAll(const std::string& data);
  // Opens path_ again (writer thread), keeping the old descriptor on failure.
  void DoReopen();

  const std::string path_;
  int fd_;  // used by the writer thread only (after construction)
  // Writer thread only: a failing disk fails every write; log the first
  // failure of a run of them, not one line per buffer.
  bool write_error_logged_ = false;
  const size_t max_queued_bytes_;
  std::mutex mu_;
  std::condition_variable cv_;       // work for the thread
  std::condition_variable done_cv_;  // progress, for Sync
  std::deque<std::pair<std::string, uint64_t>> queue_;
  size_t queued_bytes_ = 0;
  uint64_t submitted_ = 0;  // buffers accepted
  uint64_t completed_ = 0;  // buffers written (or failed)
  bool reopen_ = false;
  // With reopen_: the buffers (counted as submitted_ counts) that go to
  // the old file first.
  uint64_t reopen_after_ = 0;
  uint64_t taken_ = 0;  // buffers the writer thread has taken off queue_
  bool stop_ = false;
  std::atomic<uint64_t> dropped_lines_{0};
  std::atomic<uint64_t> written_lines_{0};
  std::thread thread_;
};

}  // namespace sluice::core
