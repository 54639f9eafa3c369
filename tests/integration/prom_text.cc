#include "tests/integration/prom_text.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tests/integration/harness.h"

namespace sluice::integration {
namespace {

using Labels = std::vector<std::pair<std::string, std::string>>;

bool IsMetricNameStart(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
}
bool IsMetricNameChar(char c) { return IsMetricNameStart(c) || (c >= '0' && c <= '9'); }
bool IsLabelNameStart(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool IsLabelNameChar(char c) { return IsLabelNameStart(c) || (c >= '0' && c <= '9'); }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// Consumes a metric name at the front of `*s`; empty when there is none.
absl::string_view TakeMetricName(absl::string_view* s) {
  size_t i = 0;
  if (s->empty() || !IsMetricNameStart((*s)[0])) return {};
  while (i < s->size() && IsMetricNameChar((*s)[i])) ++i;
  absl::string_view name = s->substr(0, i);
  s->remove_prefix(i);
  return name;
}

// Decimal floats as Go's strconv.ParseFloat reads them, plus the spellings
// Prometheus writes for the special values. No hex floats, no blanks.
bool ParseFloatStrict(absl::string_view t, double* out) {
  if (t == "+Inf" || t == "Inf") {
    *out = HUGE_VAL;
    return true;
  }
  if (t == "-Inf") {
    *out = -HUGE_VAL;
    return true;
  }
  if (t == "NaN") {
    *out = std::nan("");
    return true;
  }
  size_t i = 0;
  if (i < t.size() && (t[i] == '+' || t[i] == '-')) ++i;
  size_t int_digits = 0, frac_digits = 0;
  while (i < t.size() && IsDigit(t[i])) ++i, ++int_digits;
  if (i < t.size() && t[i] == '.') {
    ++i;
    while (i < t.size() && IsDigit(t[i])) ++i, ++frac_digits;
  }
  if (int_digits + frac_digits == 0) return false;
  if (i < t.size() && (t[i] == 'e' || t[i] == 'E')) {
    ++i;
    if (i < t.size() && (t[i] == '+' || t[i] == '-')) ++i;
    size_t exp_digits = 0;
    while (i < t.size() && IsDigit(t[i])) ++i, ++exp_digits;
    if (exp_digits == 0) return false;
  }
  if (i != t.size()) return false;
  std::string copy(t);
  *out = std::strtod(copy.c_str(), nullptr);
  return true;
}

bool IsInteger(absl::string_view t) {
  if (!t.empty() && t[0] == '-') t.remove_prefix(1);
  if (t.empty() || t.size() > 18) return false;
  return std::all_of(t.begin(), t.end(), IsDigit);
}

const std::string* LabelValue(const Labels& labels, absl::string_view name) {
  for (const auto& [k, v] : labels) {
    if (k == name) return &v;
  }
  return nullptr;
}

// The label set without `skip`, sorted: the identity of a series group.
std::string LabelKey(const Labels& labels, absl::string_view skip) {
  Labels sorted;
  for (const auto& kv : labels) {
    if (kv.first != skip) sorted.push_back(kv);
  }
  std::sort(sorted.begin(), sorted.end());
  std::string key;
  for (const auto& [k, v] : sorted) absl::StrAppend(&key, k, "=", v, "\x01");
  return key;
}

class Parser {
 public:
  absl::StatusOr<std::vector<PromFamily>> Run(absl::string_view text) {
    if (text.empty()) return std::vector<PromFamily>{};
    if (text.back() != '\n') {
      return absl::InvalidArgumentError("the last line does not end in \\n");
    }
    size_t pos = 0;
    while (pos < text.size()) {
      ++line_no_;
      const size_t nl = text.find('\n', pos);
      absl::string_view line = text.substr(pos, nl - pos);
      pos = nl + 1;
      absl::Status s = Line(line);
      if (!s.ok())
        return absl::InvalidArgumentError(absl::StrCat("line ", line_no_, ": ", s.message()));
    }
    absl::Status s = CloseFamily();
    if (!s.ok()) return s;
    return std::move(families_);
  }

 private:
  struct Current {
    bool open = false;
    bool has_help = false;
    bool has_type = false;
    int first_line = 0;
  };

  absl::Status Line(absl::string_view line) {
    if (line.empty()) return absl::InvalidArgumentError("empty line");
    if (line[0] == '#') return Comment(line.substr(1));
    return Sample(line);
  }

  absl::Status Comment(absl::string_view rest) {
    const bool help = absl::StartsWith(rest, " HELP ") || rest == " HELP";
    const bool type = absl::StartsWith(rest, " TYPE ") || rest == " TYPE";
    if (!help && !type) return absl::OkStatus();  // a plain comment
    rest.remove_prefix(std::min<size_t>(6, rest.size()));
    absl::string_view name = TakeMetricName(&rest);
    if (name.empty()) return absl::InvalidArgumentError("HELP/TYPE without a valid metric name");
    std::string value;
    if (!rest.empty()) {
      if (rest[0] != ' ')
        return absl::InvalidArgumentError(
            absl::StrCat("bad metric name in ", help ? "HELP" : "TYPE"));
      rest.remove_prefix(1);
    }
    if (help) {
      for (size_t i = 0; i < rest.size(); ++i) {
        if (rest[i] != '\\') {
          value.push_back(rest[i]);
          continue;
        }
        if (++i == rest.size()) return absl::InvalidArgumentError("HELP ends in a lone backslash");
        if (rest[i] == '\\') {
          value.push_back('\\');
        } else if (rest[i] == 'n') {
          value.push_back('\n');
        } else {
          return absl::InvalidArgumentError(
              absl::StrCat("invalid escape \\", rest.substr(i, 1), " in HELP"));
        }
      }
    } else {
      static const std::set<std::string, std::less<>> kTypes = {"counter", "gauge", "histogram",
                                                                "summary", "untyped"};
      if (kTypes.find(rest) == kTypes.end()) {
        return absl::InvalidArgumentError(absl::StrCat("unknown type '", rest, "'"));
      }
      value = std::string(rest);
    }

    if (!cur_.open || families_.back().name != name) {
      absl::Status s = OpenFamily(name);
      if (!s.ok()) return s;
    }
    PromFamily& f = families_.back();
    if (!f.samples.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(help ? "HELP" : "TYPE", " for ", name, " after its samples"));
    }
    if (help) {
      if (cur_.has_help) return absl::InvalidArgumentError(absl::StrCat("second HELP for ", name));
      cur_.has_help = true;
      f.help = std::move(value);
    } else {
      if (cur_.has_type) return absl::InvalidArgumentError(absl::StrCat("second TYPE for ", name));
      cur_.has_type = true;
      f.type = std::move(value);
    }
    return absl::OkStatus();
  }

  absl::Status OpenFamily(absl::string_view name) {
    absl::Status s = CloseFamily();
    if (!s.ok()) return s;
    if (closed_names_.count(std::string(name))) {
      return absl::InvalidArgumentError(absl::StrCat("family ", name, " appears a second time"));
    }
    families_.push_back(PromFamily{std::string(name), "untyped", "", {}});
    cur_ = Current{true, false, false, line_no_};
    return absl::OkStatus();
  }

  absl::Status Sample(absl::string_view line) {
    PromSample sample;
    absl::string_view rest = line;
    absl::string_view name = TakeMetricName(&rest);
    if (name.empty()) return absl::InvalidArgumentError("invalid metric name");
    sample.name = std::string(name);
    if (!rest.empty() && rest[0] == '{') {
      rest.remove_prefix(1);
      absl::Status s = LabelList(&rest, &sample.labels);
      if (!s.ok()) return s;
    }
    if (rest.empty() || rest[0] != ' ')
      return absl::InvalidArgumentError("expected ' ' and a value after the metric name or labels");
    rest.remove_prefix(1);
    const size_t sp = rest.find(' ');
    absl::string_view value_text = rest.substr(0, sp);
    if (!ParseFloatStrict(value_text, &sample.value)) {
      return absl::InvalidArgumentError(absl::StrCat("invalid value '", value_text, "'"));
    }
    if (sp != absl::string_view::npos) {
      absl::string_view ts = rest.substr(sp + 1);
      if (!IsInteger(ts))
        return absl::InvalidArgumentError(absl::StrCat("invalid timestamp '", ts, "'"));
    }

    if (!cur_.open || !Belongs(families_.back(), sample.name)) {
      if (cur_.open &&
          (sample.name == families_.back().name || Derived(families_.back(), sample.name))) {
        return absl::InvalidArgumentError(absl::StrCat("sample ", sample.name, " does not fit ",
                                                       families_.back().type, " ",
                                                       families_.back().name));
      }
      absl::Status s = OpenFamily(sample.name);
      if (!s.ok()) return s;
    }
    PromFamily& f = families_.back();

    const std::string series = sample.name + "\x02" + LabelKey(sample.labels, "");
    if (!series_.insert(series).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("duplicate series ", sample.name, " ", LabelKey(sample.labels, "")));
    }

    const bool is_bucket = f.type == "histogram" && sample.name == f.name + "_bucket";
    const bool is_count =
        (f.type == "histogram" || f.type == "summary") && sample.name == f.name + "_count";
    const bool is_sum =
        (f.type == "histogram" || f.type == "summary") && sample.name == f.name + "_sum";
    if (f.type == "counter" && sample.value < 0) {
      return absl::InvalidArgumentError(absl::StrCat("counter ", sample.name, " is negative"));
    }
    if ((is_bucket || is_count) && !(sample.value >= 0)) {
      return absl::InvalidArgumentError(absl::StrCat(sample.name, " is negative or NaN"));
    }
    if (f.type == "histogram") {
      const std::string* le = LabelValue(sample.labels, "le");
      if (is_bucket) {
        double bound;
        if (le == nullptr)
          return absl::InvalidArgumentError(absl::StrCat(sample.name, " without an le label"));
        if (!ParseFloatStrict(*le, &bound) || std::isnan(bound)) {
          return absl::InvalidArgumentError(absl::StrCat("invalid le '", *le, "'"));
        }
      } else if (le != nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(sample.name, " with an le label"));
      }
    }
    if (f.type == "summary") {
      const std::string* q = LabelValue(sample.labels, "quantile");
      if (!is_sum && !is_count) {
        double quantile;
        if (q == nullptr || !ParseFloatStrict(*q, &quantile) || !(quantile >= 0 && quantile <= 1)) {
          return absl::InvalidArgumentError(
              absl::StrCat(sample.name, " without a quantile in [0, 1]"));
        }
      } else if (q != nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(sample.name, " with a quantile label"));
      }
    }
    f.samples.push_back(std::move(sample));
    return absl::OkStatus();
  }

  absl::Status LabelList(absl::string_view* rest, Labels* labels) {
    std::set<std::string> seen;
    for (;;) {
      if (rest->empty()) return absl::InvalidArgumentError("unterminated label list");
      if ((*rest)[0] == '}') {
        rest->remove_prefix(1);
        return absl::OkStatus();
      }
      size_t i = 0;
      if (!IsLabelNameStart((*rest)[0])) return absl::InvalidArgumentError("invalid label name");
      while (i < rest->size() && IsLabelNameChar((*rest)[i])) ++i;
      std::string name(rest->substr(0, i));
      rest->remove_prefix(i);
      if (absl::StartsWith(name, "__"))
        return absl::InvalidArgumentError(absl::StrCat("reserved label name ", name));
      if (!seen.insert(name).second)
        return absl::InvalidArgumentError(absl::StrCat("label ", name, " given twice"));
      if (rest->size() < 2 || (*rest)[0] != '=' || (*rest)[1] != '"') {
        return absl::InvalidArgumentError(absl::StrCat("expected =\" after label ", name));
      }
      rest->remove_prefix(2);
      std::string value;
      for (;;) {
        if (rest->empty())
          return absl::InvalidArgumentError(absl::StrCat("unterminated value of label ", name));
        const char c = (*rest)[0];
        rest->remove_prefix(1);
        if (c == '"') break;
        if (c != '\\') {
          value.push_back(c);
          continue;
        }
        if (rest->empty())
          return absl::InvalidArgumentError("label value ends in a lone backslash");
        const char e = (*rest)[0];
        rest->remove_prefix(1);
        if (e == '\\' || e == '"') {
          value.push_back(e);
        } else if (e == 'n') {
          value.push_back('\n');
        } else {
          return absl::InvalidArgumentError(
              absl::StrCat("invalid escape \\", std::string(1, e), " in label ", name));
        }
      }
      labels->emplace_back(std::move(name), std::move(value));
      if (!rest->empty() && (*rest)[0] == ',') {
        rest->remove_prefix(1);  // a trailing comma before '}' is allowed
      } else if (rest->empty() || (*rest)[0] != '}') {
        return absl::InvalidArgumentError("expected , or } after a label value");
      }
    }
  }

  static bool Belongs(const PromFamily& f, const std::string& sample_name) {
    if (f.type == "histogram") return Derived(f, sample_name);
    if (f.type == "summary") return sample_name == f.name || Derived(f, sample_name);
    return sample_name == f.name;
  }

  // name_bucket (histograms only), name_sum, name_count.
  static bool Derived(const PromFamily& f, const std::string& s) {
    if (s == f.name + "_sum" || s == f.name + "_count")
      return f.type == "histogram" || f.type == "summary";
    return f.type == "histogram" && s == f.name + "_bucket";
  }

  absl::Status CloseFamily() {
    if (!cur_.open) return absl::OkStatus();
    cur_.open = false;
    const PromFamily& f = families_.back();
    closed_names_.insert(f.name);
    for (const PromSample& s : f.samples) closed_names_.insert(s.name);
    if (f.type == "histogram" || f.type == "summary") {
      closed_names_.insert(f.name + "_sum");
      closed_names_.insert(f.name + "_count");
      if (f.type == "histogram") closed_names_.insert(f.name + "_bucket");
    }
    if (f.type != "histogram") return absl::OkStatus();

    struct Group {
      std::vector<std::pair<double, double>> buckets;  // (le, value) in line order
      int sums = 0;
      int counts = 0;
      double count = 0;
    };
    std::map<std::string, Group> groups;
    for (const PromSample& s : f.samples) {
      Group& g = groups[LabelKey(s.labels, "le")];
      if (s.name == f.name + "_bucket") {
        double le = 0;
        ParseFloatStrict(*LabelValue(s.labels, "le"), &le);
        g.buckets.emplace_back(le, s.value);
      } else if (s.name == f.name + "_sum") {
        ++g.sums;
      } else {
        ++g.counts;
        g.count = s.value;
      }
    }
    const auto fail = [&](const std::string& key, absl::string_view what) {
      return absl::InvalidArgumentError(absl::StrCat("histogram ", f.name, " (from line ",
                                                     cur_.first_line, ") {", key, "}: ", what));
    };
    for (const auto& [key, g] : groups) {
      if (g.buckets.empty() || !std::isinf(g.buckets.back().first) || g.buckets.back().first < 0) {
        return fail(key, "no +Inf bucket last");
      }
      for (size_t i = 1; i < g.buckets.size(); ++i) {
        if (!(g.buckets[i].first > g.buckets[i - 1].first))
          return fail(key, "le bounds not ascending");
        if (g.buckets[i].second < g.buckets[i - 1].second)
          return fail(key, "buckets not cumulative");
      }
      if (g.sums != 1) return fail(key, "needs exactly one _sum");
      if (g.counts != 1) return fail(key, "needs exactly one _count");
      if (g.count != g.buckets.back().second)
        return fail(key, "_count differs from the +Inf bucket");
    }
    return absl::OkStatus();
  }

  std::vector<PromFamily> families_;
  Current cur_;
  int line_no_ = 0;
  std::set<std::string> closed_names_;
  std::set<std::string> series_;
};

}  // namespace

absl::StatusOr<std::vector<PromFamily>> ParsePrometheusText(absl::string_view text) {
  return Parser().Run(text);
}

std::optional<double> FindSample(const std::vector<PromFamily>& families, absl::string_view name,
                                 const std::vector<std::pair<std::string, std::string>>& labels) {
  for (const PromFamily& f : families) {
    for (const PromSample& s : f.samples) {
      if (s.name != name) continue;
      bool all = true;
      for (const auto& [k, v] : labels) {
        const std::string* have = LabelValue(s.labels, k);
        if (have == nullptr || *have != v) {
          all = false;
          break;
        }
      }
      if (all) return s.value;
    }
  }
  return std::nullopt;
}

const PromFamily* FindFamily(const std::vector<PromFamily>& families, absl::string_view name) {
  for (const PromFamily& f : families) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

absl::StatusOr<std::vector<PromFamily>> ScrapeMetrics(int port) {
  absl::StatusOr<HttpResponse> r =
      Exchange(port, BuildRequest("GET", "/metrics"), absl::Seconds(5));
  if (!r.ok()) return r.status();
  if (r->status != 200) {
    return absl::InternalError(absl::StrCat("/metrics: ", r->status));
  }
  return ParsePrometheusText(r->body);
}

}  // namespace sluice::integration
