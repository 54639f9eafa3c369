#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/observe/access_log.h"
#include "core/observe/log_file.h"
#include "core/observe/metrics.h"
#include "policy/ip_set.h"

namespace sluice::core {

class Shard;

// What the workers need for logs and metrics, built by core/server/flags.cc from
// the flags and fixed once the workers run (the log file itself is reopened in
// place on SIGUSR1).
struct Observability {
  // Every worker's shard, for a scrape to ask each for its counters (filled
  // before the worker threads start; read-only afterwards).
  std::vector<Shard*> shards;
  // --access_log; null when off.
  LogFile* access_log = nullptr;
  AccessLogFormat access_log_format = AccessLogFormat::kNginx;
  // --access_log_flush: the longest a line waits in its worker's buffer.
  int64_t access_log_flush_ns = 1'000'000'000;
  // --metrics: count per request and read token streams. Off, /metrics is
  // not served (404 from the upstream) and JSON log lines carry no token
  // fields.
  bool metrics = true;
  // --status_path, --metrics_path (empty: not served) and who may read them
  // (--status_allow, checked against the client address the policy
  // resolves, i.e. after --trusted_proxies).
  std::string status_path = "/status";
  std::string metrics_path = "/metrics";
  policy::IpSet status_allow;
  ProcessInfo info;

  // Whether per-request accounting is needed at all.
  bool accounting() const { return metrics || access_log != nullptr; }
};

}  // namespace sluice::core
