#include "core/upstream/health.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/observe/log.h"
#include "core/upstream/resolver.h"
#include "simdjson.h"

namespace sluice::core {
namespace {

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// Waits for `events` on `fd` until `deadline_ns`.
bool WaitFor(int fd, short events, int64_t deadline_ns) {
  for (;;) {
    const int64_t left = deadline_ns - NowNs();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    const int n = poll(&p, 1, static_cast<int>((left + 999'999) / 1'000'000));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

}  // namespace

std::vector<std::string> BackendHealth::models() const {
  std::lock_guard<std::mutex> lock(mu_);
  return models_;
}

std::vector<std::string> BackendHealth::loaded() const {
  std::lock_guard<std::mutex> lock(mu_);
  return loaded_;
}

absl::StatusOr<std::vector<std::string>> ModelNames(std::string_view json) {
  simdjson::ondemand::parser parser;
  simdjson::padded_string padded(json.data(), json.size());
  std::vector<std::string> names;
  simdjson::ondemand::document doc;
  if (parser.iterate(padded).get(doc) != simdjson::SUCCESS) {
    return absl::InvalidArgumentError("not JSON");
  }
  simdjson::ondemand::array models;
  if (doc["models"].get_array().get(models) != simdjson::SUCCESS) {
    return absl::InvalidArgumentError("no \"models\" array");
  }
  for (auto entry : models) {
    simdjson::ondemand::object o;
    std::string_view name;
    if (entry.get_object().get(o) != simdjson::SUCCESS ||
        o["name"].get_string().get(name) != simdjson::SUCCESS) {
      return absl::InvalidArgumentError("a model without a \"name\"");
    }
    names.emplace_back(name);
  }
  return names;
}

absl::StatusOr<ProbeAnswer> ProbeGet(const BackendConfig& backend, std::string_view path,
                                     int64_t timeout_ns) {
  const int64_t deadline = NowNs() + timeout_ns;
  SocketAddress addr;
  if (!CurrentAddress(backend, &addr)) return absl::UnavailableError("its name does not resolve");
  Fd s{socket(addr.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)};
  if (s.fd < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  if (connect(s.fd, addr.get(), addr.len) != 0 && errno != EINPROGRESS) {
    return absl::UnavailableError(absl::StrCat("connect: ", strerror(errno)));
  }
  if (!WaitFor(s.fd, POLLOUT, deadline)) return absl::DeadlineExceededError("connect timed out");
  int err = 0;
  socklen_t len = sizeof(err);
  getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) return absl::UnavailableError(absl::StrCat("connect: ", strerror(err)));
  const std::string request = absl::StrCat("GET ", absl::string_view(path.data(), path.size()),
                                           " HTTP/1.1\r\nHost: ", backend.host_header,
                                           "\r\nUser-Agent: sluice-health\r\n"
                                           "Connection: close\r\n\r\n");
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = send(s.fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && errno == EAGAIN) {
      if (!WaitFor(s.fd, POLLOUT, deadline)) return absl::DeadlineExceededError("send timed out");
    } else {
      return absl::UnavailableError(absl::StrCat("send: ", strerror(errno)));
    }
  }
  // The answer ends where the connection does (Connection: close); at most
  // 4 MiB (a model list).
  std::string answer;
  char buf[16384];
  for (;;) {
    const ssize_t n = recv(s.fd, buf, sizeof(buf), 0);
    if (n > 0) {
      answer.append(buf, static_cast<size_t>(n));
      if (answer.size() > (4u << 20)) return absl::ResourceExhaustedError("answer too large");
    } else if (n == 0) {
      break;
    } else if (errno == EAGAIN) {
      if (!WaitFor(s.fd, POLLIN, deadline)) return absl::DeadlineExceededError("answer timed out");
    } else {
      return absl::UnavailableError(absl::StrCat("recv: ", strerror(errno)));
    }
  }
  ProbeAnswer a;
  const size_t head_end = answer.find("\r\n\r\n");
  if (answer.compare(0, 9, "HTTP/1.1 ") != 0 || head_end == std::string::npos ||
      !absl::SimpleAtoi(absl::string_view(answer).substr(9, 3), &a.status)) {
    return absl::InvalidArgumentError("not an HTTP/1.1 answer");
  }
  a.body = answer.substr(head_end + 4);
  return a;
}

HealthProber::HealthProber(const std::vector<BackendConfig>& backends, int64_t interval_ns,
                           int64_t timeout_ns)
    : backends_(backends), interval_ns_(interval_ns), timeout_ns_(timeout_ns) {
  for (size_t i = 0; i < backends_.size(); ++i) {
    health_.push_back(std::make_unique<BackendHealth>(backends_[i].max_loaded));
  }
}

HealthProber::~HealthProber() { Stop(); }

void HealthProber::Start() {
  thread_ = std::thread([this] { Run(); });
}

void HealthProber::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void HealthProber::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    lock.unlock();
    CheckAll();
    lock.lock();
    cv_.wait_for(lock, std::chrono::nanoseconds(interval_ns_), [this] { return stop_; });
  }
}

void HealthProber::Forget(size_t i) {
  BackendHealth& h = *health_[i];
  h.table_.Reset();
  {
    std::lock_guard<std::mutex> lock(h.mu_);
    h.models_.clear();
    h.loaded_.clear();
  }
  h.up_.store(true, std::memory_order_relaxed);
  h.forgotten_.store(true, std::memory_order_release);
}

void HealthProber::CheckAll() {
  // A lone backend is never left out: checking it would change nothing.
  if (CountBackends(backends_) < 2) return;
  const bool with_tags = rounds_++ % 10 == 0;
  for (size_t i = 0; i < backends_.size(); ++i) {
    if (HasAddress(backends_[i])) Check(i, with_tags);
  }
}

void HealthProber::Check(size_t i, bool with_tags) {
  BackendHealth& h = *health_[i];
  const BackendConfig& b = backends_[i];
  // A new address starts afresh, with its model list asked at once.
  const uint64_t generation = AddressGeneration(b);
  if (h.forgotten_.exchange(false, std::memory_order_acquire) ||
      generation != h.address_generation_) {
    h.address_generation_ = generation;
    h.failures_in_row_ = 0;
    with_tags = true;
  }
  h.checks_.fetch_add(1, std::memory_order_relaxed);
  const int64_t asked_ns = NowNs();
  absl::StatusOr<ProbeAnswer> ps = ProbeGet(b, "/api/ps", timeout_ns_);
  absl::StatusOr<std::vector<std::string>> loaded =
      !ps.ok()            ? ps.status()
      : ps->status != 200 ? absl::UnavailableError(absl::StrCat("/api/ps answered ", ps->status))
                          : ModelNames(ps->body);
  if (!loaded.ok()) {
    h.failed_.fetch_add(1, std::memory_order_relaxed);
    if (++h.failures_in_row_ == 2 && h.up()) {
      LOG_WARN("backend %s is down: %s", b.name.c_str(),
               std::string(loaded.status().message()).c_str());
      h.up_.store(false, std::memory_order_relaxed);
    }
    return;
  }
  h.table_.SetLoaded(*loaded, asked_ns);
  {
    std::lock_guard<std::mutex> lock(h.mu_);
    h.loaded_ = *std::move(loaded);
  }
  if (with_tags || h.failures_in_row_ > 0) {
    absl::StatusOr<ProbeAnswer> tags = ProbeGet(b, "/api/tags", timeout_ns_);
    if (tags.ok() && tags->status == 200) {
      if (absl::StatusOr<std::vector<std::string>> models = ModelNames(tags->body); models.ok()) {
        h.table_.SetAvailable(*models);
        std::lock_guard<std::mutex> lock(h.mu_);
        h.models_ = *std::move(models);
      }
    }
  }
  if (!h.up()) LOG_INFO("backend %s is up again", b.name.c_str());
  h.failures_in_row_ = 0;
  h.up_.store(true, std::memory_order_relaxed);
}

}  // namespace sluice::core
