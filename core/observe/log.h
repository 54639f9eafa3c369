#pragma once

#include <atomic>
#include <string>

namespace sluice::core {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// Process-wide minimum level (set once from --log_level).
inline std::atomic<int> g_log_level{1};

// Writes one line to stderr: time, level, worker, message. A single
// write(2) per line, so lines from workers never interleave.
void LogLine(LogLevel level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// The calling thread's worker index, shown in log lines (-1: main).
void SetLogWorker(int index);

// --error_log: sends log lines to `path` (appending, created 0644) instead
// of stderr. Returns an error message, or empty on success.
std::string OpenErrorLog(const std::string& path);
// SIGUSR1: opens the --error_log path again (after logrotate renamed it).
// The new file replaces the old descriptor in one dup2, so a line being
// written by a worker at that moment goes whole to one file or the other.
void ReopenErrorLog();

}  // namespace sluice::core

#define SLUICE_LOG(level, ...)                                                                  \
  do {                                                                                          \
    if (static_cast<int>(level) >= ::sluice::core::g_log_level.load(std::memory_order_relaxed)) \
      ::sluice::core::LogLine(level, __VA_ARGS__);                                              \
  } while (0)
#define LOG_DEBUG(...) SLUICE_LOG(::sluice::core::LogLevel::kDebug, __VA_ARGS__)
#define LOG_INFO(...) SLUICE_LOG(::sluice::core::LogLevel::kInfo, __VA_ARGS__)
#define LOG_WARN(...) SLUICE_LOG(::sluice::core::LogLevel::kWarn, __VA_ARGS__)
#define LOG_ERROR(...) SLUICE_LOG(::sluice::core::LogLevel::kError, __VA_ARGS__)
