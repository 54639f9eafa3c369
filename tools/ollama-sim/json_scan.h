// A minimal reader for the few top-level fields the simulator looks at in a
// request body ("model", "name", "stream", "stream_options"). It is not a
// JSON validator: it walks one object, skipping nested values by bracket
// balance, which is all an echo server needs.
#pragma once

#include <optional>

#include "absl/strings/string_view.h"

namespace sluice::sim {

struct JsonValue {
  // For a string: the characters between the quotes, escapes left as they
  // are (so the text can be echoed back into JSON verbatim). Otherwise the
  // literal text of the value, e.g. "true", "12" or "{...}".
  absl::string_view raw;
  bool is_string = false;
};

// Finds the value of `key` among the top-level members of the JSON object in
// `json`. Returns nullopt when the key is absent or the text is malformed
// before the key is reached. The result points into `json`.
std::optional<JsonValue> FindJsonField(absl::string_view json, absl::string_view key);

// Convenience: the string value of `key`, or nullopt when absent, not a
// string, or empty.
std::optional<absl::string_view> FindJsonString(absl::string_view json, absl::string_view key);

// Convenience: the boolean value of `key`, or nullopt when absent or not a
// boolean literal.
std::optional<bool> FindJsonBool(absl::string_view json, absl::string_view key);

// The number of elements of the JSON array `array` ("[...]"), or -1 when it
// is not an array or is malformed.
int CountJsonArrayElements(absl::string_view array);

}  // namespace sluice::sim
