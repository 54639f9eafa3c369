#include "core/upstream/resolver.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/observe/log.h"

namespace sluice::core {
namespace {

int64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

std::string AddressText(const SocketAddress& a) {
  char buf[INET6_ADDRSTRLEN] = "?";
  if (a.family() == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&a.storage)->sin_addr, buf,
              sizeof(buf));
  } else if (a.family() == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&a.storage)->sin6_addr, buf,
              sizeof(buf));
  }
  return buf;
}

}  // namespace

bool DnsAddress::Get(SocketAddress* out) const {
  if (!resolved()) return false;
  std::lock_guard<std::mutex> lock(mu_);
  *out = addr_;
  return true;
}

absl::Status DnsAddress::Resolve(bool* changed) {
  if (changed) *changed = false;
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host_.c_str(), port_.c_str(), &hints, &res); rc != 0) {
    return absl::UnavailableError(gai_strerror(rc));
  }
  addrinfo* pick = res;
  for (addrinfo* a = res; a; a = a->ai_next) {
    if (a->ai_family == AF_INET) {
      pick = a;
      break;
    }
  }
  SocketAddress next;
  memcpy(&next.storage, pick->ai_addr, pick->ai_addrlen);
  next.len = pick->ai_addrlen;
  freeaddrinfo(res);
  std::lock_guard<std::mutex> lock(mu_);
  const bool same =
      resolved() && addr_.len == next.len && memcmp(&addr_.storage, &next.storage, next.len) == 0;
  if (same) return absl::OkStatus();
  addr_ = next;
  generation_.fetch_add(1, std::memory_order_acq_rel);
  resolved_.store(true, std::memory_order_release);
  if (changed) *changed = true;
  return absl::OkStatus();
}

bool CurrentAddress(const BackendConfig& b, SocketAddress* out) {
  if (b.dns != nullptr) return b.dns->Get(out);
  *out = b.addr;
  return true;
}

Resolver::Resolver(const std::vector<BackendConfig>& backends, int64_t interval_ns)
    : interval_ns_(interval_ns) {
  for (const BackendConfig& b : backends) {
    if (b.dns != nullptr) names_.push_back(Name{b.name, b.dns.get()});
  }
}

Resolver::~Resolver() { Stop(); }

void Resolver::Start() {
  if (names_.empty()) return;
  thread_ = std::thread([this] { Run(); });
}

void Resolver::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Resolver::ResolveAll(bool only_requested) {
  for (Name& n : names_) {
    const bool asked = n.dns->TakeRequest();
    if (only_requested && !asked) continue;
    bool changed = false;
    absl::Status st = n.dns->Resolve(&changed);
    if (!st.ok()) {
      if (!n.failing) {
        LOG_WARN("backend %s: %s does not resolve: %s%s", n.label.c_str(), n.dns->host().c_str(),
                 std::string(st.message()).c_str(),
                 n.dns->resolved() ? " (the last address stays in use)"
                                   : " (not used until it does: 503)");
      }
      n.failing = true;
      continue;
    }
    n.failing = false;
    if (changed) {
      SocketAddress a;
      n.dns->Get(&a);
      LOG_INFO("backend %s: %s is %s now", n.label.c_str(), n.dns->host().c_str(),
               AddressText(a).c_str());
    }
  }
}

// Every second: the names workers asked about; every interval: all.
void Resolver::Run() {
  int64_t next_all = MonotonicNs() + interval_ns_;
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, std::chrono::nanoseconds(std::min<int64_t>(interval_ns_, 1'000'000'000)),
                 [this] { return stop_; });
    if (stop_) break;
    lock.unlock();
    const int64_t now = MonotonicNs();
    const bool all = now >= next_all;
    if (all) next_all = now + interval_ns_;
    ResolveAll(/*only_requested=*/!all);
    lock.lock();
  }
}

}  // namespace sluice::core
