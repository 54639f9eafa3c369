#include "tests/integration/attack_probe.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "tests/integration/h2_frames.h"

namespace sluice::integration {
namespace {

absl::Status Errno(absl::string_view what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", strerror(errno)));
}

// Waits for `events` on `fd` until `deadline`: OK, or kDeadlineExceeded.
absl::Status WaitFor(int fd, short events, absl::Time deadline) {
  while (true) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError("timed out");
    }
    pollfd p{fd, events, 0};
    int ms =
        static_cast<int>(std::ceil(absl::ToDoubleMilliseconds(std::min(left, absl::Seconds(1)))));
    int n = poll(&p, 1, std::max(ms, 1));
    if (n < 0 && errno != EINTR) return Errno("poll");
    if (n > 0) return absl::OkStatus();
  }
}

// One recv() into `buf` once readable: OK with bytes appended,
// kUnavailable at EOF or reset, kDeadlineExceeded.
absl::Status RecvSome(int fd, std::string* buf, absl::Time deadline) {
  while (true) {
    absl::Status st = WaitFor(fd, POLLIN, deadline);
    if (!st.ok()) return st;
    char tmp[16384];
    ssize_t n = recv(fd, tmp, sizeof(tmp), 0);
    if (n > 0) {
      buf->append(tmp, static_cast<size_t>(n));
      return absl::OkStatus();
    }
    if (n == 0) return absl::UnavailableError("closed (EOF)");
    if (errno == EAGAIN || errno == EINTR) continue;
    return Errno("closed");
  }
}

// The value of header `name` in an HTTP/1.1 head, if present.
std::optional<std::string> HeadField(absl::string_view head, absl::string_view name) {
  for (absl::string_view line : absl::StrSplit(head, "\r\n")) {
    size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    if (absl::EqualsIgnoreCase(line.substr(0, colon), name)) {
      return std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    }
  }
  return std::nullopt;
}

// The counts and percentiles of `r->samples` whose `control` is `control`.
void Summarise(ProbeReport* r, bool control = false) {
  r->ok = 0;
  r->failed = 0;
  std::vector<absl::Duration> net, raw;
  net.reserve(r->samples.size());
  raw.reserve(r->samples.size());
  for (const ProbeSample& s : r->samples) {
    if (s.control != control) continue;
    net.push_back(std::max(absl::ZeroDuration(), s.latency - s.run_delay));
    raw.push_back(s.latency);
    if (s.synthetic) continue;
    if (s.ok) {
      ++r->ok;
    } else {
      ++r->failed;
    }
  }
  r->p50 = Percentile(net, 0.50);
  r->max_latency = Percentile(net, 1.0);
  // Without the slowest (ProbeReport::p99).
  std::sort(net.begin(), net.end());
  std::sort(raw.begin(), raw.end());
  if (net.size() > 1) net.pop_back();
  if (raw.size() > 1) raw.pop_back();
  r->p99 = Percentile(std::move(net), 0.99);
  r->raw_p99 = Percentile(std::move(raw), 0.99);
}

int64_t CountFds(pid_t pid) {
  DIR* d = opendir(absl::StrCat("/proc/", pid, "/fd").c_str());
  if (d == nullptr) return -1;
  int64_t n = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n;
}

std::string Ms(absl::Duration d) { return absl::StrFormat("%.2f", absl::ToDoubleMilliseconds(d)); }

}  // namespace

absl::Duration P99Bound(absl::Duration idle_p99) {
  return std::max(2 * idle_p99, idle_p99 + kJitterFloor * TimingSlack());
}

absl::Duration Percentile(std::vector<absl::Duration> values, double q) {
  if (values.empty()) return absl::ZeroDuration();
  std::sort(values.begin(), values.end());
  size_t rank = static_cast<size_t>(std::ceil(q * values.size()));
  rank = std::clamp<size_t>(rank, 1, values.size());
  return values[rank - 1];
}

bool AtTimeout(absl::Duration d, absl::Duration timeout) {
  return d >= timeout - absl::Milliseconds(100) &&
         d <= timeout + absl::Milliseconds(1500) * TimingSlack();
}

std::string MsText(absl::Duration d) {
  return absl::StrFormat("%.2f", absl::ToDoubleMilliseconds(d));
}

std::string Tally(const std::map<std::string, int>& counts) {
  std::vector<std::string> parts;
  for (const auto& [k, n] : counts) parts.push_back(absl::StrCat(k, "x", n));
  return absl::StrJoin(parts, ",");
}

ScopedFd& ScopedFd::operator=(ScopedFd&& o) noexcept {
  if (this != &o) reset(o.release());
  return *this;
}

void ScopedFd::reset(int fd) {
  if (fd_ >= 0) close(fd_);
  fd_ = fd;
}

absl::StatusOr<ScopedFd> ConnectFrom(const std::string& source, int port, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  ScopedFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return Errno("socket");
  int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  // The port is picked at connect(), per destination, not at bind().
  setsockopt(fd.get(), IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
  sockaddr_in src{};
  src.sin_family = AF_INET;
  if (inet_pton(AF_INET, source.c_str(), &src.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("bad address ", source));
  }
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&src), sizeof(src)) != 0) {
    return Errno(absl::StrCat("bind ", source));
  }
  sockaddr_in dst{};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(static_cast<uint16_t>(port));
  dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&dst), sizeof(dst)) != 0) {
    if (errno != EINPROGRESS) return Errno(absl::StrCat("connect :", port));
    absl::Status st = WaitFor(fd.get(), POLLOUT, deadline);
    if (!st.ok()) return st;
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      errno = err;
      return Errno(absl::StrCat("connect :", port));
    }
  }
  return fd;
}

absl::Status SendAll(int fd, absl::string_view bytes, absl::Time deadline) {
  while (!bytes.empty()) {
    ssize_t n = send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      bytes.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN) return Errno("send");
    absl::Status st = WaitFor(fd, POLLOUT, deadline);
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::StatusOr<int> ReadHttpStatus(int fd, absl::Time deadline) {
  std::string buf;
  size_t head_end;
  while ((head_end = buf.find("\r\n\r\n")) == std::string::npos) {
    absl::Status st = RecvSome(fd, &buf, deadline);
    if (!st.ok()) {
      return absl::Status(st.code(), absl::StrCat("response head: ", st.message(), " after ",
                                                  buf.size(), " bytes"));
    }
  }
  const absl::string_view head = absl::string_view(buf).substr(0, head_end);
  std::vector<absl::string_view> first =
      absl::StrSplit(head.substr(0, head.find("\r\n")), absl::MaxSplits(' ', 2));
  int status = 0;
  if (first.size() < 2 || !absl::StartsWith(first[0], "HTTP/1.") ||
      !absl::SimpleAtoi(first[1], &status)) {
    return absl::InternalError(absl::StrCat("bad status line: ", first[0]));
  }
  const size_t body_start = head_end + 4;
  const std::optional<std::string> length = HeadField(head, "content-length");
  const std::optional<std::string> te = HeadField(head, "transfer-encoding");
  if (length.has_value()) {
    size_t n = 0;
    if (!absl::SimpleAtoi(*length, &n)) {
      return absl::InternalError(absl::StrCat("bad content-length ", *length));
    }
    while (buf.size() < body_start + n) {
      absl::Status st = RecvSome(fd, &buf, deadline);
      if (!st.ok()) {
        return absl::Status(st.code(), absl::StrCat("body: ", st.message()));
      }
    }
  } else if (te.has_value() && absl::StrContains(absl::AsciiStrToLower(*te), "chunked")) {
    // Enough for the short answers probed here: the last chunk and an
    // empty trailer section.
    while (buf.find("0\r\n\r\n", body_start) == std::string::npos) {
      absl::Status st = RecvSome(fd, &buf, deadline);
      if (!st.ok()) {
        return absl::Status(st.code(), absl::StrCat("chunked body: ", st.message()));
      }
    }
  } else if (status >= 200 && status != 204 && status != 304) {
    while (true) {
      absl::Status st = RecvSome(fd, &buf, deadline);
      if (absl::IsUnavailable(st)) break;
      if (!st.ok()) return st;
    }
  }
  return status;
}

int64_t ReadRssKib(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view rest(line);
    if (!absl::ConsumePrefix(&rest, "VmRSS:")) continue;
    rest = absl::StripAsciiWhitespace(rest);
    absl::ConsumeSuffix(&rest, " kB");
    int64_t v = -1;
    if (absl::SimpleAtoi(rest, &v)) return v;
  }
  return -1;
}

RunDelay::RunDelay(const std::vector<pid_t>& pids) {
  for (pid_t pid : pids) {
    if (pid > 0) AddThreads(pid);
  }
  paths_.push_back(absl::StrCat("/proc/self/task/", syscall(SYS_gettid), "/schedstat"));
}

void RunDelay::AddThreads(pid_t pid) {
  const std::string task = absl::StrCat("/proc/", pid, "/task");
  DIR* d = opendir(task.c_str());
  if (d == nullptr) return;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.' || absl::StrCat(pid) == e->d_name) continue;
    const std::string dir = absl::StrCat(task, "/", e->d_name);
    std::ifstream in(dir + "/stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t close = stat.rfind(')');
    if (close == std::string::npos || close + 2 > stat.size()) continue;
    // Field 41, the scheduling policy (field 3 is the first after ")").
    std::vector<absl::string_view> f =
        absl::StrSplit(absl::string_view(stat).substr(close + 2), ' ');
    if (f.size() > 38 && f[38] == "5") continue;  // SCHED_IDLE
    paths_.push_back(dir + "/schedstat");
  }
  closedir(d);
}

absl::Duration RunDelay::Total() const {
  int64_t total_ns = 0;
  for (const std::string& path : paths_) {
    std::ifstream in(path);
    int64_t on_cpu = 0, waiting = 0;
    if (in >> on_cpu >> waiting) total_ns += waiting;
  }
  return absl::Nanoseconds(total_ns);
}

// ------------------------------------------------------------ probes

absl::Status ProbeH1Once(const ProbeOptions& o) {
  const absl::Time deadline = absl::Now() + o.timeout;
  absl::StatusOr<ScopedFd> fd = ConnectFrom(o.source, o.port, o.timeout);
  if (!fd.ok()) return fd.status();
  std::string req = absl::StrCat("GET ", o.path, " HTTP/1.1\r\nHost: 127.0.0.1\r\n");
  for (const auto& [n, v] : o.headers) absl::StrAppend(&req, n, ": ", v, "\r\n");
  req += "\r\n";
  absl::Status st = SendAll(fd->get(), req, deadline);
  if (!st.ok()) return st;
  absl::StatusOr<int> status = ReadHttpStatus(fd->get(), deadline);
  if (!status.ok()) return status.status();
  if (*status != 200) return absl::InternalError(absl::StrCat("h1 status ", *status));
  return absl::OkStatus();
}

absl::Status ProbeH2Once(const ProbeOptions& o) {
  const absl::Time deadline = absl::Now() + o.timeout;
  absl::StatusOr<ScopedFd> fd = ConnectFrom(o.source, o.port, o.timeout);
  if (!fd.ok()) return fd.status();
  // The preface, our SETTINGS and the request in one write: no round trip
  // waits for the server's SETTINGS (RFC 9113 3.4 allows it).
  const std::string out =
      absl::StrCat(h2::ClientMagic(), h2::SettingsFrame(),
                   h2::HeadersFrame(1, h2::HpackBlock(h2::RequestFields("GET", o.path, o.headers)),
                                    /*end_stream=*/true));
  absl::Status st = SendAll(fd->get(), out, deadline);
  if (!st.ok()) return st;

  nghttp2_hd_inflater* hd = nullptr;
  if (nghttp2_hd_inflate_new(&hd) != 0) return absl::InternalError("inflater");
  struct Del {
    nghttp2_hd_inflater* hd;
    ~Del() { nghttp2_hd_inflate_del(hd); }
  } del{hd};

  std::string rx;
  size_t pos = 0;
  std::string block;  // HEADERS (+ CONTINUATION) of stream 1 so far
  int status = 0;
  while (true) {
    while (rx.size() - pos >= 9) {
      const auto* p = reinterpret_cast<const uint8_t*>(rx.data() + pos);
      const uint32_t len = (uint32_t{p[0]} << 16) | (uint32_t{p[1]} << 8) | p[2];
      const uint8_t type = p[3];
      const uint8_t flags = p[4];
      const uint32_t sid =
          ((uint32_t{p[5]} << 24) | (uint32_t{p[6]} << 16) | (uint32_t{p[7]} << 8) | p[8]) &
          0x7fffffff;
      if (rx.size() - pos < 9 + len) break;
      absl::string_view payload(rx.data() + pos + 9, len);
      pos += 9 + len;
      if (type == h2::kSettings && (flags & h2::kFlagAck) == 0) {
        st = SendAll(fd->get(), h2::SettingsAckFrame(), deadline);
        if (!st.ok()) return st;
      } else if (type == h2::kGoaway) {
        return absl::UnavailableError("h2 GOAWAY");
      } else if (type == h2::kRstStream && sid == 1) {
        return absl::UnavailableError("h2 RST_STREAM on the probe");
      } else if ((type == h2::kHeaders || type == h2::kContinuation) && sid == 1) {
        if (type == h2::kHeaders) {
          size_t skip = 0, pad = 0;
          if ((flags & h2::kFlagPadded) != 0 && !payload.empty()) {
            pad = static_cast<uint8_t>(payload[0]);
            skip = 1;
          }
          if ((flags & h2::kFlagPriority) != 0) skip += 5;
          if (skip + pad > payload.size()) return absl::InternalError("bad HEADERS");
          payload = payload.substr(skip, payload.size() - skip - pad);
        }
        block.append(payload.data(), payload.size());
        if ((flags & h2::kFlagEndHeaders) != 0) {
          auto* in = reinterpret_cast<const uint8_t*>(block.data());
          size_t left = block.size();
          while (true) {
            nghttp2_nv nv;
            int out_flags = 0;
            ssize_t rv = nghttp2_hd_inflate_hd2(hd, &nv, &out_flags, in, left, 1);
            if (rv < 0) return absl::InternalError("h2 header block does not decode");
            in += rv;
            left -= static_cast<size_t>(rv);
            if ((out_flags & NGHTTP2_HD_INFLATE_EMIT) != 0 &&
                absl::string_view(reinterpret_cast<const char*>(nv.name), nv.namelen) ==
                    ":status") {
              absl::SimpleAtoi(
                  absl::string_view(reinterpret_cast<const char*>(nv.value), nv.valuelen), &status);
            }
            if ((out_flags & NGHTTP2_HD_INFLATE_FINAL) != 0) {
              nghttp2_hd_inflate_end_headers(hd);
              break;
            }
            if ((out_flags & NGHTTP2_HD_INFLATE_EMIT) == 0 && left == 0) break;
          }
          block.clear();
        }
      }
      // The stream's end, on its HEADERS or its last DATA frame.
      if (sid == 1 && (type == h2::kHeaders || type == h2::kData) &&
          (flags & h2::kFlagEndStream) != 0 && status >= 200) {
        if (status != 200) return absl::InternalError(absl::StrCat("h2 status ", status));
        return absl::OkStatus();
      }
    }
    st = RecvSome(fd->get(), &rx, deadline);
    if (!st.ok()) {
      return absl::Status(st.code(), absl::StrCat("h2 probe: ", st.message()));
    }
  }
}

// ------------------------------------------------------------ Prober

ProbeReport ProbeReport::Between(absl::Time from, absl::Time to) const {
  ProbeReport r;
  r.peak_rss_kib = peak_rss_kib;
  r.peak_fds = peak_fds;
  for (const ProbeSample& s : samples) {
    if (s.start >= from && s.start < to) r.samples.push_back(s);
  }
  Summarise(&r);
  return r;
}

ProbeReport ProbeReport::Control() const {
  ProbeReport r;
  r.peak_rss_kib = peak_rss_kib;
  r.peak_fds = peak_fds;
  for (const ProbeSample& s : samples) {
    if (!s.control) continue;
    r.samples.push_back(s);
    r.samples.back().control = false;
  }
  Summarise(&r);
  return r;
}

std::string ProbeReport::Summary() const {
  return absl::StrCat(ok, " ok / ", failed, " failed, p50 ", Ms(p50), " ms p99 ", Ms(p99),
                      " ms max ", Ms(max_latency), " ms (raw p99 ", Ms(raw_p99), " ms)");
}

std::string ProbeReport::Slowest(size_t n, absl::Time origin) const {
  std::vector<ProbeSample> sorted;
  for (const ProbeSample& s : samples) {
    if (!s.control && !s.synthetic) sorted.push_back(s);
  }
  std::sort(sorted.begin(), sorted.end(), [](const ProbeSample& a, const ProbeSample& b) {
    return a.latency - a.run_delay > b.latency - b.run_delay;
  });
  sorted.resize(std::min(n, sorted.size()));
  std::string out;
  for (const ProbeSample& s : sorted) {
    absl::StrAppend(&out, "  +", absl::ToInt64Milliseconds(s.start - origin), " ms ",
                    s.control ? "control " : "", s.h2 ? "h2" : "h1", " ",
                    Ms(s.latency - s.run_delay), " ms net (", Ms(s.latency),
                    " ms, waiting for a CPU ", Ms(s.run_delay), " ms)", s.ok ? "" : " (failed)",
                    "\n");
  }
  return out;
}

Prober::Prober(ProbeOptions options) : options_(std::move(options)) {}

Prober::~Prober() {
  stop_.store(true);
  for (std::thread* t : {&thread_, &control_thread_}) {
    if (t->joinable()) t->join();
  }
}

void Prober::Start() {
  // Both threads probe at the same instants, so that a stall of the
  // machine (every runnable thread waiting for a CPU) meets both.
  const absl::Time epoch = absl::Now();
  thread_ = std::thread([this, epoch] { Run(/*control=*/false, epoch); });
  if (options_.control_port != 0) {
    control_thread_ = std::thread([this, epoch] { Run(/*control=*/true, epoch); });
  }
}

ProbeReport Prober::Stop() {
  stop_.store(true);
  for (std::thread* t : {&thread_, &control_thread_}) {
    if (t->joinable()) t->join();
  }
  std::lock_guard<std::mutex> lock(mu_);
  ProbeReport r = report_;
  std::sort(r.samples.begin(), r.samples.end(),
            [](const ProbeSample& a, const ProbeSample& b) { return a.start < b.start; });
  Summarise(&r);
  return r;
}

void Prober::Record(absl::Time start, absl::Duration latency, absl::Duration wait, bool h2,
                    bool control, const absl::Status& st) {
  const bool ok = st.ok() && latency <= options_.timeout;
  std::lock_guard<std::mutex> lock(mu_);
  report_.samples.push_back({start, latency, wait, ok, h2, control});
  // The probes this one kept from starting on time (the thread probes one
  // at a time), as each would have waited: HdrHistogram's correction for
  // coordinated omission. Without it a stall of the proxy would count
  // once, however long it lasted.
  const absl::Duration net = latency - wait;
  for (int64_t k = 1; net - k * options_.interval >= options_.interval; ++k) {
    ProbeSample missed;
    missed.start = start + k * options_.interval;
    missed.latency = net - k * options_.interval;
    missed.ok = ok;
    missed.h2 = h2;
    missed.control = control;
    missed.synthetic = true;
    report_.samples.push_back(missed);
  }
  if (!ok && report_.failures.size() < 5) {
    report_.failures.push_back(
        absl::StrCat(control ? "control " : "", h2 ? "h2 " : "h1 ",
                     absl::FormatTime("%H:%M:%E3S", start, absl::LocalTimeZone()), " after ",
                     Ms(latency), " ms: ", st.ok() ? "slower than the timeout" : st.ToString()));
  }
}

void Prober::SampleProcess(absl::Time* next_fd_sample) {
  if (options_.pid <= 0) return;
  const int64_t rss = ReadRssKib(options_.pid);
  int64_t fds = -1;
  const absl::Time now = absl::Now();
  if (options_.fd_sample_interval > absl::ZeroDuration() && now >= *next_fd_sample) {
    fds = CountFds(options_.pid);
    *next_fd_sample = now + options_.fd_sample_interval;
  }
  std::lock_guard<std::mutex> lock(mu_);
  report_.peak_rss_kib = std::max(report_.peak_rss_kib, rss);
  report_.peak_fds = std::max(report_.peak_fds, fds);
}

void Prober::Run(bool control, absl::Time epoch) {
  ProbeOptions o = options_;
  if (control) o.port = options_.control_port;
  const RunDelay run_delay(control ? options_.control_wait_pids : options_.wait_pids);
  absl::Time next_fd_sample = absl::Now();
  for (int64_t tick = 0; !stop_.load();) {
    const absl::Time start = absl::Now();
    const bool h2 = options_.kind == ProbeKind::kH2 ||
                    (options_.kind == ProbeKind::kAlternate && tick % 2 == 1);
    const absl::Duration wait_before = run_delay.Total();
    absl::Status st = h2 ? ProbeH2Once(o) : ProbeH1Once(o);
    const absl::Duration latency = absl::Now() - start;
    Record(start, latency, std::min(latency, run_delay.Total() - wait_before), h2, control, st);
    // The next tick of the common schedule (skipping those a slow probe
    // overran).
    tick = std::max(tick + 1, (absl::Now() - epoch) / options_.interval + 1);
    const absl::Time next = epoch + tick * options_.interval;
    do {
      if (!control) SampleProcess(&next_fd_sample);
      absl::SleepFor(std::min(absl::Milliseconds(10), next - absl::Now()));
    } while (absl::Now() < next && !stop_.load());
  }
}

absl::StatusOr<std::unique_ptr<ControlStack>> ControlStack::Start(
    const std::vector<std::string>& sluice_args) {
  std::unique_ptr<ControlStack> c(new ControlStack());
  auto sim = StartSim();
  if (!sim.ok()) return sim.status();
  c->sim_ = std::move(*sim);
  auto sluice = StartSluice(c->sim_->port(), sluice_args);
  if (!sluice.ok()) return sluice.status();
  c->sluice_ = std::move(*sluice);
  return c;
}

ControlStack::~ControlStack() {
  if (sluice_ != nullptr) sluice_->Terminate();
  if (sim_ != nullptr) sim_->Terminate();
}

ProbeReport MeasureIdle(const ProbeOptions& options, absl::Duration duration) {
  Prober p(options);
  p.Start();
  absl::SleepFor(duration);
  return p.Stop();
}

std::string AttackLine(const AttackFigures& f) {
  auto word = [](absl::string_view s) {
    std::string w = absl::StrReplaceAll(s, {{" ", "_"}, {"\t", "_"}, {"=", ":"}});
    return w.empty() ? std::string("-") : w;
  };
  return absl::StrCat("[ attack   ] name=", word(f.name), " answer=", word(f.answer),
                      " probes=", f.probes, " probes_failed=", f.probes_failed,
                      " idle_p99_ms=", Ms(f.idle_p99), " control_p99_ms=", Ms(f.control_p99),
                      " attack_p99_ms=", Ms(f.attack_p99), " attack_max_ms=", Ms(f.attack_max),
                      " attack_raw_p99_ms=", Ms(f.attack_raw_p99), " bound_ms=", Ms(f.bound),
                      " cpu_s=", absl::StrFormat("%.2f", f.cpu_s), " rss_base_kib=", f.rss_base_kib,
                      " rss_peak_kib=", f.rss_peak_kib, " fds_base=", f.fds_base,
                      " fds_peak=", f.fds_peak);
}

AttackFigures ReportAttack(const AttackRun& r) {
  const ProbeReport control = r.window.Control();
  AttackFigures f;
  f.name = r.name;
  f.answer = r.answer;
  f.probes = r.window.count();
  f.probes_failed = r.all.failed;
  f.idle_p99 = r.idle.p99;
  f.control_p99 = control.p99;
  f.attack_p99 = r.window.p99;
  f.attack_max = r.window.max_latency;
  f.attack_raw_p99 = r.window.raw_p99;
  f.bound = P99Bound(std::max(r.idle.p99, control.p99));
  f.cpu_s = r.now.cpu_s - r.before.cpu_s;
  f.rss_base_kib = r.baseline.rss_kib;
  f.rss_peak_kib = std::max(r.all.peak_rss_kib, r.now.rss_kib);
  f.fds_base = r.baseline.fds;
  f.fds_peak = std::max(r.all.peak_fds, r.now.fds);
  std::cout << AttackLine(f) << std::endl;
  std::cout << "[ measure  ] " << r.name << ": idle probes " << r.idle.Summary() << "; during "
            << r.window.Summary() << " (all: " << r.all.Summary() << "); control during "
            << control.Summary() << "; RSS +"
            << absl::StrFormat("%.2f", (f.rss_peak_kib - f.rss_base_kib) / 1024.0) << " MiB peak, +"
            << absl::StrFormat("%.2f", (r.now.rss_kib - f.rss_base_kib) / 1024.0)
            << " MiB at the end; fds " << f.fds_base << " -> peak " << f.fds_peak << " -> "
            << r.now.fds << "; sluice CPU " << absl::StrFormat("%.2f", f.cpu_s) << " s"
            << std::endl;
  EXPECT_GT(r.window.count(), 0) << r.name << ": no probe ran during the attack";
  EXPECT_EQ(r.all.failed, 0) << r.name << ": probes failed or took over " << ProbeTimeout() << ":\n"
                             << absl::StrJoin(r.all.failures, "\n");
  EXPECT_TRUE(!r.check_p99 || r.window.p99 <= f.bound)
      << r.name << ": probe p99 " << r.window.p99 << " over the bound " << f.bound << " (idle p99 "
      << r.idle.p99 << ", control p99 " << control.p99
      << "); the slowest, from the attack's start:\n"
      << r.window.Slowest(8, r.start) << "idle:\n"
      << r.idle.Slowest(4, r.idle.samples.empty() ? absl::Now() : r.idle.samples[0].start);
  EXPECT_LT(f.cpu_s, r.cpu_bound_s * TimingSlack())
      << r.name << ": sluice used " << f.cpu_s << " s of CPU";
  if (r.check_rss) {
    EXPECT_LT(f.rss_peak_kib - f.rss_base_kib, r.rss_bound_kib * MemorySlack())
        << r.name << ": RSS grew from " << f.rss_base_kib << " KiB to " << f.rss_peak_kib << " KiB";
  }
  return f;
}

}  // namespace sluice::integration
