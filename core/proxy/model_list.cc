#include "core/proxy/model_list.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "simdjson.h"

namespace sluice::core {
namespace {

std::string_view TrimRight(std::string_view s) {
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\t' || s.back() == '\n' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

// The string `key` of one entry (its raw JSON text).
bool EntryKey(simdjson::ondemand::parser* parser, std::string_view entry, std::string_view key,
              std::string* out) {
  simdjson::padded_string padded(entry.data(), entry.size());
  simdjson::ondemand::document doc;
  simdjson::ondemand::object o;
  std::string_view value;
  if (parser->iterate(padded).get(doc) != simdjson::SUCCESS ||
      doc.get_object().get(o) != simdjson::SUCCESS ||
      o[key].get_string().get(value) != simdjson::SUCCESS) {
    return false;
  }
  out->assign(value);
  return true;
}

}  // namespace

absl::Status ModelListMerger::Add(std::string_view body) {
  const char* const array_key = kind_ == ModelList::kOpenAi ? "data" : "models";
  const char* const entry_key = kind_ == ModelList::kOpenAi ? "id" : "name";
  simdjson::padded_string padded(body.data(), body.size());
  // The on-demand parser skips what it is not asked for without checking
  // it, and entries are copied as text: the whole answer is validated
  // first so that only well-formed JSON reaches the client.
  {
    simdjson::dom::parser dom;
    simdjson::dom::element root;
    if (dom.parse(padded).get(root) != simdjson::SUCCESS) {
      return absl::InvalidArgumentError("not JSON");
    }
  }
  simdjson::ondemand::parser parser;
  simdjson::ondemand::parser entry_parser;
  simdjson::ondemand::document doc;
  simdjson::ondemand::value list;
  if (parser.iterate(padded).get(doc) != simdjson::SUCCESS ||
      doc[array_key].get(list) != simdjson::SUCCESS) {
    return absl::InvalidArgumentError(absl::StrCat("no \"", array_key, "\" array"));
  }
  // A Go nil slice is encoded as null: an Ollama without models may answer
  // "data":null.
  if (list.is_null()) return absl::OkStatus();
  simdjson::ondemand::array array;
  if (list.get_array().get(array) != simdjson::SUCCESS) {
    return absl::InvalidArgumentError(absl::StrCat("no \"", array_key, "\" array"));
  }
  std::vector<std::pair<std::string, std::string_view>> entries;
  for (auto item : array) {
    simdjson::ondemand::object o;
    std::string_view raw;
    std::string name;
    if (item.get_object().get(o) != simdjson::SUCCESS ||
        o.raw_json().get(raw) != simdjson::SUCCESS ||
        !EntryKey(&entry_parser, TrimRight(raw), entry_key, &name)) {
      return absl::InvalidArgumentError(absl::StrCat("an entry without a \"", entry_key, "\""));
    }
    entries.emplace_back(std::move(name), TrimRight(raw));
  }
  for (auto& [name, raw] : entries) {
    if (filter_ != nullptr && !policy::ModelAllowed(*filter_, policy::CanonicalModelName(name))) {
      continue;
    }
    if (!seen_.insert(std::move(name)).second) continue;
    if (!entries_.empty()) entries_.push_back(',');
    entries_.append(raw);
  }
  return absl::OkStatus();
}

std::string ModelListMerger::Finish() const {
  if (kind_ == ModelList::kOpenAi)
    return absl::StrCat("{\"object\":\"list\",\"data\":[", entries_, "]}");
  return absl::StrCat("{\"models\":[", entries_, "]}");
}

}  // namespace sluice::core
