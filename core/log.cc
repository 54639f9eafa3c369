#include "core/log.h"

#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <ctime>

namespace sluice::core {
namespace {
thread_local int t_worker = -1;
}  // namespace

void SetLogWorker(int index) { t_worker = index; }

void LogLine(LogLevel level, const char* fmt, ...) {
  static constexpr const char* kNames[] = {"debug", "info", "warn", "error"};
  char buf[1024];
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  tm local;
  localtime_r(&ts.tv_sec, &local);
  size_t n = strftime(buf, sizeof(buf), "%Y/%m/%d %H:%M:%S", &local);
  int w = snprintf(buf + n, sizeof(buf) - n, " [%s] w%d: ",
                   kNames[static_cast<int>(level)], t_worker);
  if (w > 0) n += static_cast<size_t>(w);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
  va_end(ap);
  if (m > 0) n += std::min(static_cast<size_t>(m), sizeof(buf) - n - 2);
  buf[n++] = '\n';
  ssize_t ignored = ::write(STDERR_FILENO, buf, n);
  (void)ignored;
}

}  // namespace sluice::core
