// The command line: every flag sluice takes is defined in flags.cc, and
// read only through the functions below. Each reads the flags as they are
// set now (after ParseFlagsOrExit, or absl::SetFlag in tests) and exits 2
// through UsageError, naming the flag, on a value it refuses; main.cc calls
// them in a fixed order, so of two bad flags the same one is always named.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "core/observe/log_file.h"
#include "core/observe/observability.h"
#include "core/server/config.h"
#include "policy/policy.h"
#include "tls/tls_context.h"

namespace sluice::core {

// The worker configuration: listeners (--listen_http, --http_mode,
// --listen_tls; a TLS listener needs --tls_cert and --tls_key), HSTS and
// HTTP/2, threads, the upstream, timeouts and limits, --busy_poll and
// --log_level. The pointers to shared state (policy, tables, logs, TLS)
// are left null for the caller to fill.
Config BuildConfig();

// --error_log: sends the log lines to that file when one is named.
void OpenErrorLogFlag();

// The access policy flags (auth, files, CIDR lists, rates, stream caps),
// for policy::Policy::Build, which reads the files they name.
policy::PolicyOptions PolicyFlags();
// --models, --model_aliases, --max_keep_alive...: the model policy of clients
// without settings of their own (exit 2 naming the flag when one is bad).
policy::ModelSettings ModelDefaultsFlags();

// --limit_table_entries: client states each limit table keeps (>= 1024).
size_t LimitTableEntriesFlag();

// Access log format and flush, metrics and the status pages. The access
// log file (OpenAccessLogFlag), the workers and the process info are left
// for the caller.
Observability ObservabilityFlags();

// --access_log opened for appending; null when "off" or empty.
std::unique_ptr<LogFile> OpenAccessLogFlag();

// --tls_cert, --tls_key and --tls_session_tickets (not checked here: the
// files are read by tls::TlsContext::Create).
tls::TlsContextOptions TlsFlags();

}  // namespace sluice::core
