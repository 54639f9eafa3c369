// What /proc says about a process the tests started: resident memory, CPU
// time and open file descriptors. Used to check that attacks and faults
// leave the proxy bounded and that it returns to its baseline afterwards.
#pragma once

#include <sys/types.h>

#include <cstdint>

namespace sluice::integration {

struct ProcSample {
  int64_t rss_kib = -1;  // VmRSS
  double cpu_s = -1;     // utime + stime, seconds
  int64_t fds = -1;      // entries in /proc/PID/fd
  int64_t threads = -1;  // Threads:
};

// -1 fields where /proc could not be read (the process is gone).
ProcSample SampleProc(pid_t pid);

}  // namespace sluice::integration
