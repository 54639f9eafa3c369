#include "tests/integration/proc_stats.h"

#include <dirent.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace sluice::integration {
namespace {

// "VmRSS:	   1234 kB" -> 1234.
bool StatusField(const std::string& line, absl::string_view name, int64_t* out) {
  absl::string_view rest(line);
  if (!absl::ConsumePrefix(&rest, name)) return false;
  std::string digits;
  for (char c : rest) {
    if (c >= '0' && c <= '9') digits.push_back(c);
  }
  return absl::SimpleAtoi(digits, out);
}

}  // namespace

ProcSample SampleProc(pid_t pid) {
  ProcSample s;
  {
    std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
    std::string line;
    while (std::getline(in, line)) {
      int64_t v;
      if (StatusField(line, "VmRSS:", &v)) s.rss_kib = v;
      if (StatusField(line, "Threads:", &v)) s.threads = v;
    }
  }
  {
    std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    // Fields after the command name (which may hold spaces): state is
    // field 3, utime 14, stime 15.
    size_t close = stat.rfind(')');
    if (close != std::string::npos && close + 2 <= stat.size()) {
      std::vector<std::string> f = absl::StrSplit(stat.substr(close + 2), ' ', absl::SkipEmpty());
      int64_t ut = 0, st = 0;
      if (f.size() > 12 && absl::SimpleAtoi(f[11], &ut) && absl::SimpleAtoi(f[12], &st)) {
        s.cpu_s = static_cast<double>(ut + st) / static_cast<double>(sysconf(_SC_CLK_TCK));
      }
    }
  }
  if (DIR* d = opendir(absl::StrCat("/proc/", pid, "/fd").c_str())) {
    int64_t n = 0;
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') ++n;
    }
    closedir(d);
    s.fds = n;
  }
  return s;
}

}  // namespace sluice::integration
