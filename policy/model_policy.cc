#include "policy/model_policy.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"

namespace sluice::policy {
namespace {

absl::Status Bad(absl::string_view name, absl::string_view value, absl::string_view expected) {
  return absl::InvalidArgumentError(
      absl::StrCat(name, "=\"", absl::CHexEscape(value), "\": expected ", expected));
}

bool ParseYesNo(absl::string_view value, bool* out) {
  if (value == "yes" || value == "true" || value == "on") {
    *out = true;
    return true;
  }
  if (value == "no" || value == "false" || value == "off") {
    *out = false;
    return true;
  }
  return false;
}

// A model name or glob as a setting may hold: printable, no spaces, commas
// or '='.
bool ValidModelWord(absl::string_view w) {
  if (w.empty() || w.size() > 256) return false;
  return std::all_of(w.begin(), w.end(), [](char c) {
    return c > ' ' && c < 0x7f && c != ',' && c != '=' && c != '"' && c != '\\';
  });
}

// A limit given as a count: 0 is no limit.
absl::Status ParseCount(absl::string_view name, absl::string_view value,
                        std::optional<int64_t>* out) {
  int64_t n = 0;
  if (!absl::SimpleAtoi(value, &n) || n < 0 || n > (int64_t{1} << 40)) {
    return Bad(name, value, "a whole number (0: no limit)");
  }
  *out = n == 0 ? kNoLimit : n;
  return absl::OkStatus();
}

std::string FormatDuration(int64_t ns) {
  if (ns == kNoLimit) return "inf";
  return absl::FormatDuration(absl::Nanoseconds(ns));
}

}  // namespace

bool ModelSettings::empty() const {
  return !models && aliases.empty() && !max_keep_alive_ns && !keep_alive_forever && !max_num_ctx &&
         !max_num_predict && !refuse_over && !registries && !max_images && !max_image_bytes;
}

absl::Status ParseModelSetting(absl::string_view name, absl::string_view value, ModelSettings* s) {
  if (name == "models") {
    std::vector<std::string> globs;
    for (absl::string_view w : absl::StrSplit(value, ',', absl::SkipEmpty())) {
      if (!ValidModelWord(w)) return Bad(name, value, "model names or globs separated by commas");
      // A glob keeps its tag as written: "llama3*" matches every tag.
      globs.push_back(w.find_first_of("*?") == absl::string_view::npos ? CanonicalModelName(w)
                                                                       : absl::AsciiStrToLower(w));
    }
    s->models = std::move(globs);
    return absl::OkStatus();
  }
  if (name == "pull_registries") {
    std::vector<std::string> hosts;
    for (absl::string_view w : absl::StrSplit(value, ',', absl::SkipEmpty())) {
      if (!ValidModelWord(w) || absl::StrContains(w, "/")) {
        return Bad(name, value, "registry hosts separated by commas, or *");
      }
      hosts.push_back(absl::AsciiStrToLower(w));
    }
    if (hosts.empty()) return Bad(name, value, "registry hosts separated by commas, or *");
    s->registries = std::move(hosts);
    return absl::OkStatus();
  }
  if (name == "alias") {
    const size_t eq = value.find('=');
    const absl::string_view from = value.substr(0, eq);
    const absl::string_view to = eq == absl::string_view::npos ? "" : value.substr(eq + 1);
    if (!ValidModelWord(from) || !ValidModelWord(to)) {
      return Bad(name, value, "NAME=MODEL, e.g. alias=gpt-4o=llama3.1:8b");
    }
    s->aliases.emplace_back(CanonicalModelName(from), std::string(to));
    return absl::OkStatus();
  }
  if (name == "max_keep_alive") {
    int64_t ns = 0;
    absl::Duration d;
    if (value == "inf") {
      s->max_keep_alive_ns = kNoLimit;
    } else if (ParseGoDuration(std::string_view(value.data(), value.size()), &ns) && ns >= 0) {
      s->max_keep_alive_ns = ns;
    } else if (absl::ParseDuration(value, &d) && d >= absl::ZeroDuration() &&
               d != absl::InfiniteDuration()) {
      s->max_keep_alive_ns = absl::ToInt64Nanoseconds(d);
    } else {
      return Bad(name, value, "a duration such as 30m or 2h, or inf");
    }
    return absl::OkStatus();
  }
  bool yes = false;
  if (name == "keep_alive_forever") {
    if (!ParseYesNo(value, &yes)) return Bad(name, value, "yes or no");
    s->keep_alive_forever = yes;
    return absl::OkStatus();
  }
  if (name == "max_num_ctx") return ParseCount(name, value, &s->max_num_ctx);
  if (name == "max_images") return ParseCount(name, value, &s->max_images);
  if (name == "max_image_bytes") {
    int64_t n = 0;
    int64_t unit = 1;
    absl::string_view digits = value;
    if (!digits.empty()) {
      const char u = absl::ascii_tolower(static_cast<unsigned char>(digits.back()));
      unit = u == 'k' ? 1024 : u == 'm' ? 1024 * 1024 : u == 'g' ? int64_t{1} << 30 : 1;
      if (unit != 1) digits.remove_suffix(1);
    }
    if (!absl::SimpleAtoi(digits, &n) || n < 0 || n > (int64_t{1} << 40) / unit) {
      return Bad(name, value, "a size such as 20M or 512k (0: no limit)");
    }
    s->max_image_bytes = n == 0 ? kNoLimit : n * unit;
    return absl::OkStatus();
  }
  if (name == "max_num_predict") return ParseCount(name, value, &s->max_num_predict);
  if (name == "over_max") {
    if (value != "clamp" && value != "refuse") return Bad(name, value, "clamp or refuse");
    s->refuse_over = value == "refuse";
    return absl::OkStatus();
  }
  return absl::NotFoundError(absl::StrCat("unknown setting \"", absl::CHexEscape(name), "\""));
}

std::vector<std::string> ModelSettingWords(const ModelSettings& s) {
  std::vector<std::string> out;
  if (s.models) out.push_back(absl::StrCat("models=", absl::StrJoin(*s.models, ",")));
  for (const auto& [from, to] : s.aliases) out.push_back(absl::StrCat("alias=", from, "=", to));
  if (s.max_keep_alive_ns) {
    out.push_back(absl::StrCat("max_keep_alive=", FormatDuration(*s.max_keep_alive_ns)));
  }
  if (s.keep_alive_forever) {
    out.push_back(absl::StrCat("keep_alive_forever=", *s.keep_alive_forever ? "yes" : "no"));
  }
  auto count = [](int64_t n) { return n == kNoLimit ? int64_t{0} : n; };
  if (s.max_num_ctx) out.push_back(absl::StrCat("max_num_ctx=", count(*s.max_num_ctx)));
  if (s.max_num_predict) {
    out.push_back(absl::StrCat("max_num_predict=", count(*s.max_num_predict)));
  }
  if (s.refuse_over) out.push_back(*s.refuse_over ? "over_max=refuse" : "over_max=clamp");
  if (s.registries) {
    out.push_back(absl::StrCat("pull_registries=", absl::StrJoin(*s.registries, ",")));
  }
  if (s.max_images) out.push_back(absl::StrCat("max_images=", count(*s.max_images)));
  if (s.max_image_bytes) {
    out.push_back(absl::StrCat("max_image_bytes=", count(*s.max_image_bytes)));
  }
  return out;
}

ModelPolicy ModelPolicy::With(const ModelSettings& over) const {
  ModelPolicy p = *this;
  if (over.models) p.models = *over.models;
  // A key's alias of a name replaces the default's of the same name.
  for (const auto& alias : over.aliases) {
    auto it = std::find_if(p.aliases.begin(), p.aliases.end(),
                           [&](const auto& a) { return a.first == alias.first; });
    if (it != p.aliases.end()) {
      it->second = alias.second;
    } else {
      p.aliases.push_back(alias);
    }
  }
  if (over.max_keep_alive_ns) p.max_keep_alive_ns = *over.max_keep_alive_ns;
  if (over.keep_alive_forever) p.keep_alive_forever = *over.keep_alive_forever;
  if (over.max_num_ctx) p.max_num_ctx = *over.max_num_ctx;
  if (over.max_num_predict) p.max_num_predict = *over.max_num_predict;
  if (over.refuse_over) p.refuse_over = *over.refuse_over;
  if (over.registries) p.registries = *over.registries;
  if (over.max_images) p.max_images = *over.max_images;
  if (over.max_image_bytes) p.max_image_bytes = *over.max_image_bytes;
  return p;
}

bool ModelPolicy::Open() const {
  return models.empty() && aliases.empty() && max_keep_alive_ns == kNoLimit && keep_alive_forever &&
         max_num_ctx == kNoLimit && max_num_predict == kNoLimit && max_images == kNoLimit &&
         max_image_bytes == kNoLimit;
}

std::string CanonicalModelName(absl::string_view name) {
  std::string out = absl::AsciiStrToLower(name);
  for (absl::string_view prefix : {"registry.ollama.ai/library/", "library/"}) {
    if (absl::StartsWith(out, prefix)) {
      out.erase(0, prefix.size());
      break;
    }
  }
  const size_t colon = out.rfind(':');
  const size_t slash = out.rfind('/');
  if (colon == std::string::npos || (slash != std::string::npos && colon < slash)) {
    out += ":latest";
  }
  return out;
}

bool GlobMatch(absl::string_view glob, absl::string_view text) {
  // Iterative matcher with one backtrack point for the last '*'.
  size_t g = 0, t = 0, star = absl::string_view::npos, mark = 0;
  while (t < text.size()) {
    if (g < glob.size() && (glob[g] == '?' || glob[g] == text[t])) {
      ++g;
      ++t;
    } else if (g < glob.size() && glob[g] == '*') {
      star = g++;
      mark = t;
    } else if (star != absl::string_view::npos) {
      g = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (g < glob.size() && glob[g] == '*') ++g;
  return g == glob.size();
}

bool ModelAllowed(const ModelPolicy& p, absl::string_view model) {
  if (p.models.empty()) return true;
  return std::any_of(p.models.begin(), p.models.end(),
                     [&](const std::string& glob) { return GlobMatch(glob, model); });
}

std::string ApplyEdits(absl::string_view body, const std::vector<BodyEdit>& edits) {
  std::string out;
  size_t at = 0;
  for (const BodyEdit& e : edits) {
    out.append(body.data() + at, e.begin - at);
    out += e.text;
    at = e.end;
  }
  if (at < body.size()) out.append(body.data() + at, body.size() - at);
  return out;
}

}  // namespace sluice::policy
