// Clocks and sample statistics shared by the load tools in bench/
// (relay_delay, h2_relay_delay, cancel_latency, tls_handshakes, idle_conns,
// soak): every one of them times something and prints percentiles as
// key=value pairs for the scripts.
#pragma once

#include <time.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sluice::bench {

// Microseconds on `clock`. CLOCK_REALTIME is the clock ollama-sim stamps
// into `sim_t_us` and `last_abort_us`; CLOCK_MONOTONIC is for intervals.
int64_t NowUs(clockid_t clock);

// Percentile by rank (ceil(q * n)) of an already sorted vector; -1 if empty.
int64_t Percentile(const std::vector<int64_t>& sorted, double q);

// The distribution of a set of samples (µs). Every figure is -1 when there
// are none.
struct Summary {
  size_t n = 0;
  int64_t p50 = -1;
  int64_t p90 = -1;
  int64_t p99 = -1;
  int64_t p999 = -1;
  int64_t min = -1;
  int64_t max = -1;
  double mean = -1;
};
Summary Summarize(std::vector<int64_t> samples);

// "p50_us=.. p90_us=.. p99_us=.. p999_us=.. max_us=.. mean_us=..", the
// delay fields relay_delay and h2_relay_delay print.
std::string DelayFields(const Summary& s);

}  // namespace sluice::bench
