#include "core/server/reload.h"

#include <string>
#include <utility>

#include "absl/strings/string_view.h"
#include "core/observe/log.h"

namespace sluice::core {

Reloader::Reloader(policy::PolicyOptions policy_options)
    : policy_options_(std::move(policy_options)) {}

absl::Status Reloader::LoadPolicy() {
  auto p = policy::Policy::Build(policy_options_, policy_generation_);
  if (!p.ok()) return p.status();
  policy_slot_.Set(*std::move(p));
  return absl::OkStatus();
}

absl::Status Reloader::LoadTls(tls::TlsContextOptions options) {
  tls_options_ = std::move(options);
  auto ctx = tls::TlsContext::Create(tls_options_);
  if (!ctx.ok()) return ctx.status();
  tls_slot_.Set(*std::move(ctx));
  tls_loaded_ = true;
  return absl::OkStatus();
}

void Reloader::Reload() {
  ReloadPolicy();
  ReloadTls();
}

void Reloader::ReloadPolicy() {
  auto p = policy::Policy::Build(policy_options_, policy_generation_ + 1);
  if (p.ok()) {
    ++policy_generation_;
    policy_slot_.Set(*std::move(p));
    LOG_INFO("SIGHUP: reloaded policy: %s", policy_slot_.Get()->Summary().c_str());
    LogUsersWarning(*policy_slot_.Get(), "SIGHUP: ");
  } else {
    LOG_ERROR("SIGHUP: policy not reloaded, keeping the old one: %s",
              std::string(p.status().message()).c_str());
  }
}

void Reloader::ReloadTls() {
  if (!tls_loaded_) return;
  auto ctx = tls_slot_.Get()->Reload(tls_options_);
  if (ctx.ok()) {
    tls_slot_.Set(*std::move(ctx));
    LOG_INFO("SIGHUP: reloaded certificate %s", tls_options_.cert_chain_path.c_str());
  } else {
    LOG_ERROR("SIGHUP: certificate not reloaded, keeping the old one: %s",
              std::string(ctx.status().message()).c_str());
  }
}

// See policy/htpasswd.h and the README's "Timing of Basic logins".
void LogUsersWarning(const policy::Policy& policy, const char* prefix) {
  if (absl::string_view w = policy.users_warning(); !w.empty()) {
    LOG_WARN("%s%.*s", prefix, static_cast<int>(w.size()), w.data());
  }
}

}  // namespace sluice::core
