#include "core/upstream/resolver.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/observe/log.h"

namespace sluice::core {
namespace {

int64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// (family rank, address bytes, port): IPv4 first.
std::tuple<int, std::string, uint16_t> SortKey(const SocketAddress& a) {
  if (a.family() == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&a.storage);
    return {0, std::string(reinterpret_cast<const char*>(&in->sin_addr), 4), ntohs(in->sin_port)};
  }
  if (a.family() == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&a.storage);
    return {1, std::string(reinterpret_cast<const char*>(&in6->sin6_addr), 16),
            ntohs(in6->sin6_port)};
  }
  return {2, std::string(reinterpret_cast<const char*>(&a.storage), a.len), 0};
}

}  // namespace

bool SameAddress(const SocketAddress& a, const SocketAddress& b) {
  return SortKey(a) == SortKey(b);
}

void SortAddresses(std::vector<SocketAddress>* addresses) {
  std::stable_sort(
      addresses->begin(), addresses->end(),
      [](const SocketAddress& a, const SocketAddress& b) { return SortKey(a) < SortKey(b); });
  addresses->erase(std::unique(addresses->begin(), addresses->end(), SameAddress),
                   addresses->end());
}

std::vector<std::optional<SocketAddress>> AssignSlots(
    const std::vector<std::optional<SocketAddress>>& current,
    const std::vector<SocketAddress>& sorted) {
  std::vector<std::optional<SocketAddress>> next(current.size());
  std::vector<bool> placed(sorted.size(), false);
  for (size_t i = 0; i < current.size(); ++i) {
    if (!current[i]) continue;
    for (size_t k = 0; k < sorted.size(); ++k) {
      if (!placed[k] && SameAddress(*current[i], sorted[k])) {
        next[i] = sorted[k];
        placed[k] = true;
        break;
      }
    }
  }
  size_t free = 0;
  for (size_t k = 0; k < sorted.size(); ++k) {
    if (placed[k]) continue;
    while (free < next.size() && next[free]) ++free;
    if (free == next.size()) break;
    next[free] = sorted[k];
  }
  return next;
}

std::string AddressText(const SocketAddress& a) {
  char buf[INET6_ADDRSTRLEN] = "?";
  if (a.family() == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&a.storage);
    inet_ntop(AF_INET, &in->sin_addr, buf, sizeof(buf));
    return absl::StrCat(buf, ":", ntohs(in->sin_port));
  }
  if (a.family() == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&a.storage);
    inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof(buf));
    return absl::StrCat("[", buf, "]:", ntohs(in6->sin6_port));
  }
  return buf;
}

DnsName::DnsName(std::string host, std::string port, size_t slots)
    : host_(std::move(host)),
      port_(std::move(port)),
      n_(std::max<size_t>(1, slots)),
      slots_(new Slot[n_]) {}

bool DnsName::Get(size_t slot, SocketAddress* out) const {
  if (!has(slot)) return false;
  std::lock_guard<std::mutex> lock(mu_);
  *out = slots_[slot].addr;
  return true;
}

absl::Status DnsName::Resolve(Change* change) {
  if (change) *change = Change{};
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host_.c_str(), port_.c_str(), &hints, &res); rc != 0) {
    return absl::UnavailableError(gai_strerror(rc));
  }
  std::vector<SocketAddress> found;
  for (addrinfo* a = res; a; a = a->ai_next) {
    if ((a->ai_family != AF_INET && a->ai_family != AF_INET6) ||
        a->ai_addrlen > sizeof(sockaddr_storage)) {
      continue;
    }
    SocketAddress s;
    memcpy(&s.storage, a->ai_addr, a->ai_addrlen);
    s.len = a->ai_addrlen;
    found.push_back(s);
  }
  freeaddrinfo(res);
  if (found.empty()) return absl::UnavailableError("no IPv4 or IPv6 address");
  Apply(std::move(found), change);
  return absl::OkStatus();
}

void DnsName::Apply(std::vector<SocketAddress> addresses, Change* change) {
  if (change) *change = Change{};
  SortAddresses(&addresses);
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::optional<SocketAddress>> current(n_);
  for (size_t i = 0; i < n_; ++i) {
    if (has(i)) current[i] = slots_[i].addr;
  }
  const std::vector<std::optional<SocketAddress>> next = AssignSlots(current, addresses);
  size_t count = 0;
  for (size_t i = 0; i < n_; ++i) {
    count += next[i] ? 1 : 0;
    const bool same = current[i].has_value() == next[i].has_value() &&
                      (!current[i] || SameAddress(*current[i], *next[i]));
    if (same) continue;
    if (change && current[i]) change->went.emplace_back(i, *current[i]);
    if (change && next[i]) change->came.emplace_back(i, *next[i]);
    if (next[i]) slots_[i].addr = *next[i];
    slots_[i].generation.fetch_add(1, std::memory_order_acq_rel);
    slots_[i].has.store(next[i].has_value(), std::memory_order_release);
  }
  count_.store(count, std::memory_order_release);
  left_out_.store(addresses.size() - count, std::memory_order_release);
  if (change) change->left_out = addresses.size() - count;
}

void ExpandNames(std::vector<BackendConfig>* backends) {
  std::vector<BackendConfig> out;
  for (BackendConfig& b : *backends) {
    if (b.dns == nullptr) {
      out.push_back(std::move(b));
      continue;
    }
    for (size_t i = 0; i < b.dns->slots(); ++i) {
      BackendConfig slot = b;
      slot.dns_slot = i;
      if (i > 0) slot.name = absl::StrCat(b.name, "#", i + 1);
      slot.addr = SocketAddress{};
      b.dns->Get(i, &slot.addr);
      out.push_back(std::move(slot));
    }
  }
  *backends = std::move(out);
}

size_t CountBackends(const std::vector<BackendConfig>& backends) {
  size_t n = 0;
  for (const BackendConfig& b : backends) {
    if (b.dns == nullptr || b.dns->has(b.dns_slot)) {
      ++n;
    } else if (b.dns_slot == 0 && !b.dns->resolved()) {
      ++n;  // a name that does not resolve (yet) counts as one backend
    }
  }
  return n;
}

bool CurrentAddress(const BackendConfig& b, SocketAddress* out) {
  if (b.dns != nullptr) return b.dns->Get(b.dns_slot, out);
  *out = b.addr;
  return true;
}

Resolver::Resolver(const std::vector<BackendConfig>& backends, int64_t interval_ns,
                   std::function<void(size_t)> on_change)
    : on_change_(std::move(on_change)), interval_ns_(interval_ns) {
  for (size_t i = 0; i < backends.size(); ++i) {
    const BackendConfig& b = backends[i];
    if (b.dns == nullptr) continue;
    auto it = std::find_if(names_.begin(), names_.end(),
                           [&b](const Name& n) { return n.dns == b.dns.get(); });
    if (it == names_.end()) {
      Name name;
      name.label = b.name;
      name.dns = b.dns.get();
      names_.push_back(std::move(name));
      names_.back().left_out = b.dns->left_out();  // LogStarted told it
      names_.back().backends.assign(b.dns->slots(), SIZE_MAX);
      names_.back().slot_names.assign(b.dns->slots(), b.name);
      it = names_.end() - 1;
    }
    Name& n = *it;
    if (b.dns_slot < n.backends.size()) {
      n.backends[b.dns_slot] = i;
      n.slot_names[b.dns_slot] = b.name;
    }
  }
}

Resolver::~Resolver() { Stop(); }

void Resolver::Start() {
  if (!needed()) return;
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

void Resolver::RefreshOthers() {
  if (others_source_ == nullptr) return;
  std::vector<Name> now;
  for (OtherName& o : others_source_()) {
    if (o.dns == nullptr) continue;
    auto it = std::find_if(others_.begin(), others_.end(),
                           [&o](const Name& n) { return n.dns == o.dns.get(); });
    if (it != others_.end()) {
      now.push_back(std::move(*it));
      continue;
    }
    Name n;
    n.label = std::move(o.label);
    n.dns = o.dns.get();
    n.keep = std::move(o.dns);
    n.left_out = n.dns->left_out();
    n.backends.assign(n.dns->slots(), SIZE_MAX);  // no --upstream index: nothing to forget
    n.slot_names = std::move(o.slot_names);
    n.slot_names.resize(n.dns->slots(), n.label);
    now.push_back(std::move(n));
  }
  others_ = std::move(now);
}

void Resolver::ResolveAll(bool only_requested) {
  if (!only_requested) RefreshOthers();
  for (std::vector<Name>* list : {&names_, &others_}) {
    for (Name& n : *list) ResolveName(n, only_requested);
  }
}

void Resolver::ResolveName(Name& n, bool only_requested) {
  const bool asked = n.dns->TakeRequest();
  if (only_requested && !asked) return;
  DnsName::Change change;
  absl::Status st = n.dns->Resolve(&change);
  if (!st.ok()) {
    if (!n.failing) {
      LOG_WARN("backend %s: %s does not resolve: %s%s", n.label.c_str(), n.dns->host().c_str(),
               std::string(st.message()).c_str(),
               n.dns->resolved() ? " (the last addresses stay in use)"
                                 : " (not used until it does: 503)");
    }
    n.failing = true;
    return;
  }
  n.failing = false;
  Report(n, change);
}

// One line per lookup that changed something: which addresses came (and
// the backend each is now), which went.
void Resolver::Report(Name& n, const DnsName::Change& change) {
  if (!change.empty()) {
    std::vector<std::string> came, went;
    for (const auto& [slot, addr] : change.came) {
      came.push_back(absl::StrCat(AddressText(addr), " (", n.slot_names[slot], ")"));
    }
    for (const auto& [slot, addr] : change.went) {
      went.push_back(absl::StrCat(AddressText(addr), " (", n.slot_names[slot], ")"));
    }
    LOG_INFO("backend %s: %s resolves to %zu address(es) now; came: %s; went: %s", n.label.c_str(),
             n.dns->host().c_str(), n.dns->count(),
             came.empty() ? "none" : absl::StrJoin(came, ", ").c_str(),
             went.empty() ? "none" : absl::StrJoin(went, ", ").c_str());
    if (on_change_) {
      std::vector<bool> told(n.backends.size(), false);
      for (const auto& list : {change.went, change.came}) {
        for (const auto& [slot, addr] : list) {
          if (told[slot] || n.backends[slot] == SIZE_MAX) continue;
          told[slot] = true;
          on_change_(n.backends[slot]);
        }
      }
    }
  }
  if (change.left_out != n.left_out) {
    if (change.left_out > 0) {
      LOG_WARN(
          "backend %s: %s has %zu more address(es) than its max_addresses=%zu; those are "
          "not used",
          n.label.c_str(), n.dns->host().c_str(), change.left_out, n.dns->slots());
    }
    n.left_out = change.left_out;
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
