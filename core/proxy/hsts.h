#pragma once

#include <string_view>
#include <vector>

#include "core/server/config.h"
#include "http/message.h"

namespace sluice::core {

// Strict-Transport-Security (--hsts): one decision for both downstream
// sessions. Every response on a TLS connection carries it while --hsts is
// set; none over plain HTTP (RFC 6797 7.2: a host must not send it there).
inline bool SendsHsts(const Config& cfg, bool secure) { return secure && !cfg.hsts.empty(); }

// HTTP/1.1: the field line ("Strict-Transport-Security: ...\r\n") to add to
// a response on this connection, or nothing.
inline std::string_view HstsFields(const Config& cfg, bool secure) {
  return SendsHsts(cfg, secure) ? std::string_view(cfg.hsts_fields) : std::string_view();
}

// HTTP/2: appends the field to a response's `headers` when it gets one.
inline void AddHsts(const Config& cfg, bool secure, std::vector<http::Header>& headers) {
  if (SendsHsts(cfg, secure)) {
    headers.push_back(http::Header{"strict-transport-security", cfg.hsts});
  }
}

}  // namespace sluice::core
