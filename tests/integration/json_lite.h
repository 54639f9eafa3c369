// A small JSON reader for the integration tests: enough to look inside the
// simulator's answers (NDJSON tokens, SSE events, /sim/echo, error bodies).
// Not a general-purpose parser: no streaming, recursion bounded by kMaxDepth,
// numbers kept as their source text so 64-bit integers stay exact.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace sluice::integration {

class JsonValue {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

  // Parses `text` (surrounding whitespace allowed). Returns nullopt on any
  // syntax error or on trailing bytes.
  static std::optional<JsonValue> Parse(absl::string_view text);

  Type type() const { return type_; }
  bool is_object() const { return type_ == Type::kObject; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_string() const { return type_ == Type::kString; }

  // Object member `key`, or nullptr when absent or not an object. The pointer
  // is valid as long as this value is neither modified nor destroyed.
  const JsonValue* Get(absl::string_view key) const;

  // The string of a kString value (empty otherwise).
  const std::string& str() const { return string_; }
  // kBool: the value; anything else: false.
  bool boolean() const { return type_ == Type::kBool && bool_; }
  // kNumber as an integer when its text is one; nullopt otherwise.
  std::optional<int64_t> AsInt64() const;
  // Elements of a kArray value (empty otherwise).
  const std::vector<JsonValue>& array() const { return array_; }
  // Members of a kObject value in source order (empty otherwise).
  const std::vector<std::pair<std::string, JsonValue>>& members() const { return members_; }

  // Convenience: the string member `key`, or nullopt.
  std::optional<std::string> GetString(absl::string_view key) const;
  // Convenience: the integer member `key`, or nullopt.
  std::optional<int64_t> GetInt(absl::string_view key) const;
  // Convenience: true iff member `key` is the literal true.
  bool GetBool(absl::string_view key) const;

 private:
  friend class JsonParser;
  static constexpr int kMaxDepth = 64;

  Type type_ = Type::kNull;
  bool bool_ = false;
  std::string string_;  // kString value, or kNumber source text.
  std::vector<JsonValue> array_;
  std::vector<std::pair<std::string, JsonValue>> members_;
};

}  // namespace sluice::integration
