#include "sim_config.h"

#include <time.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace sluice::sim {

bool ParseMode(absl::string_view text, Mode* mode) {
  if (absl::EqualsIgnoreCase(text, "normal")) {
    *mode = Mode::kNormal;
  } else if (absl::EqualsIgnoreCase(text, "hang")) {
    *mode = Mode::kHang;
  } else if (absl::EqualsIgnoreCase(text, "garbage")) {
    *mode = Mode::kGarbage;
  } else if (absl::EqualsIgnoreCase(text, "busy")) {
    *mode = Mode::kBusy;
  } else {
    return false;
  }
  return true;
}

void SimStats::Reset() {
  opened.store(0, std::memory_order_relaxed);
  closed.store(0, std::memory_order_relaxed);
  requests.store(0, std::memory_order_relaxed);
  aborted_streams.store(0, std::memory_order_relaxed);
  last_abort_us.store(0, std::memory_order_relaxed);
}

std::string SimStats::ToJson() const {
  return absl::StrCat("{\"opened\":", opened.load(std::memory_order_relaxed),
                      ",\"closed\":", closed.load(std::memory_order_relaxed),
                      ",\"active\":", active.load(std::memory_order_relaxed),
                      ",\"requests\":", requests.load(std::memory_order_relaxed),
                      ",\"aborted_streams\":", aborted_streams.load(std::memory_order_relaxed),
                      ",\"last_abort_us\":", last_abort_us.load(std::memory_order_relaxed), "}");
}

SimStats& GlobalStats() {
  static SimStats stats;
  return stats;
}

int64_t MonotonicNowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

int64_t RealtimeNowUs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1'000'000 + ts.tv_nsec / 1000;
}

}  // namespace sluice::sim
