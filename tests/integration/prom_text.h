// A strict reader of the Prometheus text exposition format (version 0.0.4)
// for tests: it accepts what a Prometheus server accepts and rejects, with
// the line number, what sluice must never emit (a family split in two, HELP
// after samples, a histogram whose buckets are not cumulative, duplicate
// series, unescaped label values, empty lines, a missing final newline).
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sluice::integration {

// One sample line. Label values are unescaped; labels keep their order on
// the line.
struct PromSample {
  std::string name;
  std::vector<std::pair<std::string, std::string>> labels;
  double value = 0;
};

// One metric family: the name from # HELP / # TYPE (or, without them, the
// sample's name), its type ("untyped" when no # TYPE line), its unescaped
// help text ("" when no # HELP line), and its samples in order.
struct PromFamily {
  std::string name;
  std::string type;
  std::string help;
  std::vector<PromSample> samples;
};

// Parses and validates `text`: metric and label name grammar, label value
// escapes (\\, \", \n only), HELP and TYPE at most once per family and
// before its samples, types counter|gauge|histogram|summary|untyped, a
// family's samples contiguous and never repeated later, no duplicate
// series (same name and label set), float values (+Inf, -Inf, NaN
// included) with an optional integer timestamp, counters and histogram
// counts not negative, histograms made only of name_bucket (with le,
// ascending, cumulative, ending in +Inf), name_sum and name_count (equal
// to the +Inf bucket) for each label set, every line ending in '\n' and
// none empty. Comments other than HELP and TYPE are skipped. Empty text is
// valid (no families). Errors are InvalidArgument naming the line.
absl::StatusOr<std::vector<PromFamily>> ParsePrometheusText(absl::string_view text);

// The value of the first sample called `name` (a sample name, such as
// "x_bucket") that carries every label in `labels` with the same value (it
// may carry others too); nullopt when none does.
std::optional<double> FindSample(const std::vector<PromFamily>& families, absl::string_view name,
                                 const std::vector<std::pair<std::string, std::string>>& labels);

// sluice's counters and gauges: GET /metrics on `port` over plain HTTP
// from 127.0.0.1, parsed.
absl::StatusOr<std::vector<PromFamily>> ScrapeMetrics(int port);

// The family called `name`, or nullptr. The pointer is valid while
// `families` is neither modified nor destroyed.
const PromFamily* FindFamily(const std::vector<PromFamily>& families, absl::string_view name);

}  // namespace sluice::integration
