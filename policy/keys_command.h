#pragma once

// `sluice keys`: the command line that manages the API keys file
// (format in keys.h).
//
//   sluice keys add NAME --keys_file F     make a key, print it, add its hash
//   sluice keys list --keys_file F         print the key names, one a line
//   sluice keys revoke NAME --keys_file F  remove the key's line
//
// `--keys_file=F` works too. `add` prints the key, and only the key, on one
// line to stdout; it is shown this once, since the file keeps only its
// SHA-256. `add` creates a missing file with mode 0600 and appends to an
// existing one, which must parse first; a name already present is refused.
// `revoke` rewrites the file without the key's line, keeping comments, the
// other lines and the file's mode and owner, through a temporary file in the
// same directory that is fsynced and renamed over it, so a reader (a proxy
// reloading) sees the old file or the new one, never half of one. A running
// proxy keeps accepting a revoked key until it reloads its policy.
//
// Concurrent runs against the same file are not serialized: run one at a
// time.

#include <ostream>

namespace sluice::policy {

// Runs `sluice keys ...`. argv[0] is "keys" (main passes its own argv from
// the subcommand word on); the arguments are parsed by hand, apart from the
// main binary's flags. Returns the exit status: 0 on success; 2 for a usage
// error (missing or unknown subcommand, missing NAME, missing --keys_file,
// invalid name, unknown flag), after one line on stderr such as
// "sluice keys: --keys_file is required"; 1 when the file cannot be read,
// parsed or written, or the name is taken (add) or absent (revoke), after
// one line on stderr. `--help` prints the usage to stdout and returns 0.
int RunKeysCommand(int argc, char** argv);

// As above, writing to `out` instead of stdout and to `err` instead of
// stderr (tests capture both). The streams are only used during the call.
int RunKeysCommand(int argc, char** argv, std::ostream& out, std::ostream& err);

}  // namespace sluice::policy
