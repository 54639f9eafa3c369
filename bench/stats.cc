#include "bench/stats.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace sluice::bench {

int64_t NowUs(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return int64_t{ts.tv_sec} * 1'000'000 + ts.tv_nsec / 1000;
}

int64_t Percentile(const std::vector<int64_t>& sorted, double q) {
  const size_t n = sorted.size();
  if (n == 0) return -1;
  size_t r = static_cast<size_t>(std::ceil(q * static_cast<double>(n)));
  return sorted[std::clamp<size_t>(r, 1, n) - 1];
}

Summary Summarize(std::vector<int64_t> samples) {
  Summary s;
  s.n = samples.size();
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  s.p50 = Percentile(samples, 0.50);
  s.p90 = Percentile(samples, 0.90);
  s.p99 = Percentile(samples, 0.99);
  s.p999 = Percentile(samples, 0.999);
  s.min = samples.front();
  s.max = samples.back();
  double sum = 0;
  for (int64_t v : samples) sum += static_cast<double>(v);
  s.mean = sum / static_cast<double>(s.n);
  return s;
}

std::string DelayFields(const Summary& s) {
  char buf[160];
  snprintf(buf, sizeof buf, "p50_us=%ld p90_us=%ld p99_us=%ld p999_us=%ld max_us=%ld mean_us=%.0f",
           s.p50, s.p90, s.p99, s.p999, s.max, s.mean);
  return buf;
}

}  // namespace sluice::bench
