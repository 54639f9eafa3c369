#pragma once

#include <cstddef>
#include <vector>

#include "http/message.h"

namespace sluice::http {

// Gathers llhttp's header field/value spans into Header entries, for the
// request codec and the response parser alike, and spots obs-fold.
//
// llhttp accepts an obs-fold (CRLF then SP/HTAB) and reports the value as
// two spans. A span ends at the end of the input, at the end of the value
// (on_header_value_complete), or at a fold: so a second span of the same
// value whose predecessor stopped short of the input's end is a fold, which
// RFC 9112 5.2 lets a proxy only reject or rewrite.
class HeaderCollector {
 public:
  enum class Result { kOk, kValueWithoutName, kObsFold };

  // A new message begins.
  void Reset() {
    last_was_value_ = false;
    value_open_ = false;
    value_span_at_end_ = false;
  }
  // The end of the input handed to llhttp_execute (for fold detection).
  void set_input_end(const char* end) { input_end_ = end; }

  void OnField(std::vector<Header>* headers, const char* at, size_t len) {
    if (last_was_value_ || headers->empty()) headers->emplace_back();
    last_was_value_ = false;
    headers->back().name.append(at, len);
  }
  Result OnValue(std::vector<Header>* headers, const char* at, size_t len) {
    if (headers->empty()) return Result::kValueWithoutName;
    if (value_open_ && !value_span_at_end_) return Result::kObsFold;
    value_open_ = true;
    value_span_at_end_ = (at + len == input_end_);
    last_was_value_ = true;
    headers->back().value.append(at, len);
    return Result::kOk;
  }
  void OnValueComplete() { value_open_ = false; }

 private:
  const char* input_end_ = nullptr;
  bool last_was_value_ = false;
  bool value_open_ = false;
  bool value_span_at_end_ = false;
};

}  // namespace sluice::http
