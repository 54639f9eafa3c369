#include "json_scan.h"

#include <cstddef>

namespace sluice::sim {
namespace {

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

void SkipSpace(absl::string_view s, size_t* i) {
  while (*i < s.size() && IsSpace(s[*i])) ++*i;
}

// On entry s[*i] is the opening quote; on success *i is just past the closing
// quote and *content spans the characters between them.
bool ReadString(absl::string_view s, size_t* i, absl::string_view* content) {
  size_t start = *i + 1;
  for (size_t j = start; j < s.size(); ++j) {
    if (s[j] == '\\') {
      ++j;  // Skip the escaped character, whatever it is.
    } else if (s[j] == '"') {
      *content = s.substr(start, j - start);
      *i = j + 1;
      return true;
    }
  }
  return false;
}

// Skips one value of any kind starting at s[*i]; reports its raw span.
bool ReadValue(absl::string_view s, size_t* i, JsonValue* value) {
  if (*i >= s.size()) return false;
  char c = s[*i];
  if (c == '"') {
    value->is_string = true;
    return ReadString(s, i, &value->raw);
  }
  value->is_string = false;
  size_t start = *i;
  if (c == '{' || c == '[') {
    int depth = 0;
    while (*i < s.size()) {
      char d = s[*i];
      if (d == '"') {
        absl::string_view ignored;
        if (!ReadString(s, i, &ignored)) return false;
        continue;
      }
      if (d == '{' || d == '[') ++depth;
      if (d == '}' || d == ']') --depth;
      ++*i;
      if (depth == 0) {
        value->raw = s.substr(start, *i - start);
        return true;
      }
    }
    return false;
  }
  while (*i < s.size() && s[*i] != ',' && s[*i] != '}' && !IsSpace(s[*i])) {
    ++*i;
  }
  value->raw = s.substr(start, *i - start);
  return !value->raw.empty();
}

}  // namespace

std::optional<JsonValue> FindJsonField(absl::string_view json, absl::string_view key) {
  size_t i = 0;
  SkipSpace(json, &i);
  if (i >= json.size() || json[i] != '{') return std::nullopt;
  ++i;
  while (true) {
    SkipSpace(json, &i);
    if (i >= json.size() || json[i] != '"') return std::nullopt;
    absl::string_view member;
    if (!ReadString(json, &i, &member)) return std::nullopt;
    SkipSpace(json, &i);
    if (i >= json.size() || json[i] != ':') return std::nullopt;
    ++i;
    SkipSpace(json, &i);
    JsonValue value;
    if (!ReadValue(json, &i, &value)) return std::nullopt;
    if (member == key) return value;
    SkipSpace(json, &i);
    if (i >= json.size() || json[i] != ',') return std::nullopt;
    ++i;
  }
}

std::optional<absl::string_view> FindJsonString(absl::string_view json, absl::string_view key) {
  std::optional<JsonValue> value = FindJsonField(json, key);
  if (!value || !value->is_string || value->raw.empty()) return std::nullopt;
  return value->raw;
}

std::optional<bool> FindJsonBool(absl::string_view json, absl::string_view key) {
  std::optional<JsonValue> value = FindJsonField(json, key);
  if (!value || value->is_string) return std::nullopt;
  if (value->raw == "true") return true;
  if (value->raw == "false") return false;
  return std::nullopt;
}

int CountJsonArrayElements(absl::string_view array) {
  size_t i = 0;
  SkipSpace(array, &i);
  if (i >= array.size() || array[i] != '[') return -1;
  ++i;
  SkipSpace(array, &i);
  if (i < array.size() && array[i] == ']') return 0;
  int count = 0;
  while (i < array.size()) {
    char c = array[i];
    if (c == '"' || c == '{' || c == '[') {
      JsonValue ignored;
      if (!ReadValue(array, &i, &ignored)) return -1;
    } else {
      size_t start = i;
      while (i < array.size() && array[i] != ',' && array[i] != ']' && !IsSpace(array[i])) {
        ++i;
      }
      if (i == start) return -1;
    }
    ++count;
    SkipSpace(array, &i);
    if (i >= array.size()) return -1;
    if (array[i] == ']') return count;
    if (array[i] != ',') return -1;
    ++i;
    SkipSpace(array, &i);
  }
  return -1;
}

}  // namespace sluice::sim
