#include "core/observe/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <ctime>

namespace sluice::core {
namespace {
thread_local int t_worker = -1;
// Where lines go: stderr, or a descriptor --error_log opened (replaced in
// place by dup2 on reopen, so the number never changes once set).
std::atomic<int> g_error_fd{STDERR_FILENO};
std::string g_error_path;  // set once at start-up, before any thread

int OpenAppend(const std::string& path) {
  return ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}
}  // namespace

std::string OpenErrorLog(const std::string& path) {
  int fd = OpenAppend(path);
  if (fd < 0) return strerror(errno);
  g_error_path = path;
  g_error_fd.store(fd);
  return "";
}

void ReopenErrorLog() {
  if (g_error_path.empty()) return;
  int fd = OpenAppend(g_error_path);
  if (fd < 0) {
    LogLine(LogLevel::kError, "SIGUSR1: cannot reopen %s: %s", g_error_path.c_str(),
            strerror(errno));
    return;
  }
  ::dup2(fd, g_error_fd.load());
  ::close(fd);
}

void SetLogWorker(int index) { t_worker = index; }

void LogLine(LogLevel level, const char* fmt, ...) {
  static constexpr const char* kNames[] = {"debug", "info", "warn", "error"};
  char buf[1024];
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  tm local;
  localtime_r(&ts.tv_sec, &local);
  size_t n = strftime(buf, sizeof(buf), "%Y/%m/%d %H:%M:%S", &local);
  int w =
      snprintf(buf + n, sizeof(buf) - n, " [%s] w%d: ", kNames[static_cast<int>(level)], t_worker);
  if (w > 0) n += static_cast<size_t>(w);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
  va_end(ap);
  if (m > 0) n += std::min(static_cast<size_t>(m), sizeof(buf) - n - 2);
  buf[n++] = '\n';
  ssize_t ignored = ::write(g_error_fd.load(std::memory_order_relaxed), buf, n);
  (void)ignored;
}

}  // namespace sluice::core
