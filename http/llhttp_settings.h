#pragma once

#include <llhttp.h>

namespace sluice::http {

// The llhttp callback table of a parser whose callbacks are the public static
// member functions of `Callbacks`, named after llhttp's settings:
// OnMessageBegin, OnUrl, OnStatus, OnHeaderField, OnHeaderValue,
// OnHeaderValueComplete, OnHeadersComplete, OnBody, OnMessageComplete. Each
// one the type declares is set; llhttp skips the others. Built once per type,
// on first use, and shared by every parser of that type.
template <typename Callbacks>
const llhttp_settings_t& LlhttpSettings() {
  // Every parser needs to know where a message ends; without it the type is
  // incomplete here or its callbacks are not visible.
  static_assert(
      requires { &Callbacks::OnMessageComplete; },
      "Callbacks must be complete and declare a public OnMessageComplete");
  static const llhttp_settings_t settings = [] {
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    using C = Callbacks;
    if constexpr (requires { &C::OnMessageBegin; }) s.on_message_begin = &C::OnMessageBegin;
    if constexpr (requires { &C::OnUrl; }) s.on_url = &C::OnUrl;
    if constexpr (requires { &C::OnStatus; }) s.on_status = &C::OnStatus;
    if constexpr (requires { &C::OnHeaderField; }) s.on_header_field = &C::OnHeaderField;
    if constexpr (requires { &C::OnHeaderValue; }) s.on_header_value = &C::OnHeaderValue;
    if constexpr (requires { &C::OnHeaderValueComplete; }) {
      s.on_header_value_complete = &C::OnHeaderValueComplete;
    }
    if constexpr (requires { &C::OnHeadersComplete; }) {
      s.on_headers_complete = &C::OnHeadersComplete;
    }
    if constexpr (requires { &C::OnBody; }) s.on_body = &C::OnBody;
    if constexpr (requires { &C::OnMessageComplete; }) {
      s.on_message_complete = &C::OnMessageComplete;
    }
    return s;
  }();
  return settings;
}

}  // namespace sluice::http
