// What SIGHUP replaces: the access policy and the TLS certificate. Both are
// immutable snapshots in a slot the workers read (snapshot_slot.h); new
// requests and handshakes take the new one, those in flight keep theirs.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "core/server/snapshot_slot.h"
#include "policy/policy.h"
#include "tls/tls_context.h"

namespace sluice::core {

class Reloader {
 public:
  explicit Reloader(policy::PolicyOptions policy_options);

  // The first policy (generation 1), built from the options and the files
  // they name; an error names the flag or the file and line.
  absl::Status LoadPolicy();
  // The first TLS context, from `options` (re-read from the same paths on
  // each Reload). Until it is loaded, Reload leaves TLS alone.
  absl::Status LoadTls(tls::TlsContextOptions options);

  // Owned here; valid as long as the Reloader.
  PolicySlot* policy_slot() { return &policy_slot_; }
  TlsContextSlot* tls_slot() { return &tls_slot_; }

  // SIGHUP: builds the policy again (keys, users and rules replaced
  // together or not at all) and reloads the certificate pair; what does not
  // load leaves the old one in place. Each outcome is logged.
  void Reload();

 private:
  void ReloadPolicy();
  void ReloadTls();

  const policy::PolicyOptions policy_options_;
  uint64_t policy_generation_ = 1;
  PolicySlot policy_slot_;
  tls::TlsContextOptions tls_options_;
  bool tls_loaded_ = false;
  TlsContextSlot tls_slot_;
};

// Logs the policy's warning about users a stranger can tell exist by
// timing (an htpasswd file that mixes hash costs), after `prefix`.
void LogUsersWarning(const policy::Policy& policy, const char* prefix);

}  // namespace sluice::core
