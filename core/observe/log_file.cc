#include "core/observe/log_file.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/observe/log.h"

namespace sluice::core {
namespace {

constexpr int kOpenFlags = O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC;

}  // namespace

absl::StatusOr<std::unique_ptr<LogFile>> LogFile::Open(const std::string& path,
                                                       size_t max_queued_bytes) {
  int fd;
  do {
    fd = ::open(path.c_str(), kOpenFlags, 0644);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    const int err = errno;
    return absl::ErrnoToStatus(err, absl::StrCat("cannot open log file ", path, " for appending"));
  }
  return std::unique_ptr<LogFile>(new LogFile(path, fd, max_queued_bytes));
}

LogFile::LogFile(std::string path, int fd, size_t max_queued_bytes)
    : path_(std::move(path)), fd_(fd), max_queued_bytes_(max_queued_bytes) {
  thread_ = std::thread([this] { Run(); });
}

LogFile::~LogFile() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_one();
  thread_.join();
  ::close(fd_);
}

bool LogFile::Submit(std::string lines, uint64_t line_count) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (lines.size() > max_queued_bytes_ || queued_bytes_ > max_queued_bytes_ - lines.size()) {
      dropped_lines_.fetch_add(line_count, std::memory_order_relaxed);
      return false;
    }
    queued_bytes_ += lines.size();
    ++submitted_;
    queue_.emplace_back(std::move(lines), line_count);
  }
  cv_.notify_one();
  return true;
}

void LogFile::Reopen() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    reopen_ = true;
    reopen_after_ = submitted_;
  }
  cv_.notify_one();
}

void LogFile::Sync() {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t target = submitted_;
  done_cv_.wait(lock, [&] { return completed_ >= target; });
}

void LogFile::DoReopen() {
  int fd;
  do {
    fd = ::open(path_.c_str(), kOpenFlags, 0644);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    const int err = errno;
    LOG_ERROR("reopening log file %s: %s; still writing to the old file", path_.c_str(),
              strerror(err));
    return;
  }
  ::close(fd_);
  fd_ = fd;
  write_error_logged_ = false;
}

bool LogFile::WriteAll(const std::string& data) {
  const char* p = data.data();
  size_t left = data.size();
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      // write(2) returning 0 for a non-empty regular-file write means no
      // progress is possible (a full device on some file systems); retrying
      // would spin.
      const int err = n < 0 ? errno : ENOSPC;
      if (!write_error_logged_) {
        write_error_logged_ = true;
        LOG_ERROR("writing log file %s: %s; dropping lines until a write succeeds", path_.c_str(),
                  strerror(err));
      }
      return false;
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  write_error_logged_ = false;
  return true;
}

void LogFile::Run() {
  std::deque<std::pair<std::string, uint64_t>> batch;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || reopen_ || !queue_.empty(); });
    if (queue_.empty() && !reopen_) {
      if (stop_) return;
      continue;
    }
    // A pending reopen splits the queue: what was submitted before
    // Reopen() (logrotate renamed the file, then signalled) still belongs
    // to the old file; the rest goes to the new one.
    size_t take = queue_.size();
    const bool reopen = reopen_;
    if (reopen) {
      take = static_cast<size_t>(std::min<uint64_t>(take, reopen_after_ - taken_));
      reopen_ = false;
    }
    for (size_t i = 0; i < take; ++i) {
      batch.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    taken_ += take;
    lock.unlock();
    // One write(2) per submitted buffer: with O_APPEND a write to a regular
    // file is not interleaved with another process's, so a buffer of whole
    // lines stays whole even with several writers on the file.
    size_t bytes = 0;
    for (auto& [lines, count] : batch) {
      bytes += lines.size();
      if (WriteAll(lines)) {
        written_lines_.fetch_add(count, std::memory_order_relaxed);
      } else {
        dropped_lines_.fetch_add(count, std::memory_order_relaxed);
      }
    }
    if (reopen) DoReopen();
    const uint64_t done = batch.size();
    batch.clear();
    lock.lock();
    // The bytes stay counted until written, so max_queued_bytes bounds all
    // the memory held for the file, not only what waits in queue_.
    queued_bytes_ -= bytes;
    completed_ += done;
    done_cv_.notify_all();
  }
}

}  // namespace sluice::core
