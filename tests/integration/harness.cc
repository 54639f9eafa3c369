#include "tests/integration/harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

extern char** environ;

namespace sluice::integration {
namespace {

// A peer that closes while we write must give EPIPE, not kill the test.
[[maybe_unused]] const bool kSigpipeIgnored = [] {
  signal(SIGPIPE, SIG_IGN);
  return true;
}();

constexpr absl::Duration kStartTimeout = absl::Seconds(5);
constexpr size_t kMaxHeadBytes = 1 << 20;

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string TempDir() {
  const char* dir = getenv("TMPDIR");
  return (dir != nullptr && *dir != '\0') ? dir : "/tmp";
}

// Creates an empty temp file; returns its path and an O_CLOEXEC fd.
absl::StatusOr<std::pair<std::string, int>> MakeTempFile(absl::string_view tag) {
  std::string path = absl::StrCat(TempDir(), "/sluice-it-", tag, "-XXXXXX");
  int fd = mkostemp(path.data(), O_CLOEXEC);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("mkostemp: ", strerror(errno)));
  }
  return std::make_pair(path, fd);
}

std::string Tail(absl::string_view s, size_t n) {
  return std::string(s.size() > n ? s.substr(s.size() - n) : s);
}

ExitInfo DecodeWaitStatus(int status) {
  ExitInfo info;
  if (WIFEXITED(status)) {
    info.exited = true;
    info.code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    info.signal = WTERMSIG(status);
  }
  return info;
}

bool HasFlag(const std::vector<std::string>& args, absl::string_view flag) {
  for (const std::string& a : args) {
    if (absl::StartsWith(a, absl::StrCat("--", flag, "="))) return true;
  }
  return false;
}

absl::Status Errno(absl::string_view what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", strerror(errno)));
}

}  // namespace

bool ContainsIgnoreCase(absl::string_view haystack, absl::string_view needle) {
  return absl::StrContains(absl::AsciiStrToLower(haystack), absl::AsciiStrToLower(needle));
}

int64_t RealtimeMicros() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

// ---------------------------------------------------------------- processes

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(
    const std::string& path, const std::vector<std::string>& args,
    const std::vector<std::string>& extra_env) {
  std::unique_ptr<ChildProcess> child(new ChildProcess());
  auto out = MakeTempFile("out");
  if (!out.ok()) return out.status();
  auto err = MakeTempFile("err");
  if (!err.ok()) {
    close(out->second);
    unlink(out->first.c_str());
    return err.status();
  }
  child->stdout_path_ = out->first;
  child->stderr_path_ = err->first;

  std::vector<std::string> argv_storage;
  argv_storage.push_back(path);
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);

  // `extra_env` overrides inherited variables of the same name (getenv
  // would otherwise find the inherited one first).
  std::vector<std::string> env_storage;
  for (char** e = environ; *e != nullptr; ++e) {
    absl::string_view entry(*e);
    absl::string_view name = entry.substr(0, entry.find('=') + 1);
    bool overridden = false;
    for (const std::string& x : extra_env) {
      if (!name.empty() && absl::StartsWith(x, name)) overridden = true;
    }
    if (!overridden) env_storage.emplace_back(entry);
  }
  env_storage.insert(env_storage.end(), extra_env.begin(), extra_env.end());
  std::vector<char*> envp;
  for (std::string& e : env_storage) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out->second, 1);
  posix_spawn_file_actions_adddup2(&actions, err->second, 2);

  // The test process ignores SIGPIPE; ignored dispositions survive exec, so
  // give the child the defaults back. Its own process group lets a timed-out
  // shell be killed together with its children.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t empty, defaults;
  sigemptyset(&empty);
  sigemptyset(&defaults);
  for (int s : {SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGUSR1}) {
    sigaddset(&defaults, s);
  }
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);

  pid_t pid;
  int rc = posix_spawn(&pid, path.c_str(), &actions, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  close(out->second);
  close(err->second);
  if (rc != 0) {
    return absl::NotFoundError(absl::StrCat("posix_spawn ", path, ": ", strerror(rc)));
  }
  child->pid_ = pid;
  return child;
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0) Terminate();
  if (!stdout_path_.empty()) unlink(stdout_path_.c_str());
  if (!stderr_path_.empty()) unlink(stderr_path_.c_str());
}

std::string ChildProcess::Stdout() const { return ReadWholeFile(stdout_path_); }
std::string ChildProcess::Stderr() const { return ReadWholeFile(stderr_path_); }

namespace {
// The port of the first complete "<marker>HOST:PORT" line in `out`: 0 when
// there is none yet, -1 when it does not parse.
int FindListening(absl::string_view out, absl::string_view marker, std::string* host) {
  size_t at = out.find(marker);
  if (at == absl::string_view::npos) return 0;
  size_t start = at + marker.size();
  size_t end = out.find_first_of(" \r\n", start);
  if (end == absl::string_view::npos) return 0;
  absl::string_view hostport = out.substr(start, end - start);
  size_t colon = hostport.rfind(':');
  int port = 0;
  if (colon == absl::string_view::npos || !absl::SimpleAtoi(hostport.substr(colon + 1), &port) ||
      port <= 0 || port > 65535) {
    return -1;
  }
  *host = std::string(hostport.substr(0, colon));
  return port;
}
}  // namespace

absl::Status ChildProcess::WaitListening(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (true) {
    std::string out = Stdout();
    std::string host, tls_host;
    int port = FindListening(out, "listening on http://", &host);
    int tls_port = FindListening(out, "listening on https://", &tls_host);
    if (port < 0 || tls_port < 0) {
      return absl::InternalError(absl::StrCat("cannot parse listening line: ", out));
    }
    // sluice prints all its listening lines at once, after every listener
    // is up; the last line ends with a newline.
    if ((port > 0 || tls_port > 0) && !out.empty() && out.back() == '\n') {
      host_ = port > 0 ? host : tls_host;
      port_ = port;
      tls_port_ = tls_port;
      return absl::OkStatus();
    }
    if (!running() || WaitExit(absl::ZeroDuration()).has_value()) {
      return absl::InternalError(absl::StrCat(
          "process exited (code ", exit_->code, ", signal ", exit_->signal,
          ") before listening; stdout:\n", Tail(out, 2000), "\nstderr:\n", Tail(Stderr(), 4000)));
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("no 'listening on' line within ", absl::FormatDuration(timeout),
                       "; stdout:\n", Tail(out, 2000), "\nstderr:\n", Tail(Stderr(), 4000)));
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
}

bool ChildProcess::Signal(int sig) {
  if (pid_ <= 0 || exit_.has_value()) return false;
  return kill(pid_, sig) == 0;
}

std::optional<ExitInfo> ChildProcess::WaitExit(absl::Duration timeout) {
  if (exit_.has_value()) return exit_;
  if (pid_ <= 0) return std::nullopt;
  absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exit_ = DecodeWaitStatus(status);
      return exit_;
    }
    if (r < 0 && errno != EINTR) {
      exit_ = ExitInfo{};
      return exit_;
    }
    if (absl::Now() >= deadline) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(2));
  }
}

ExitInfo ChildProcess::Terminate(absl::Duration grace) {
  if (exit_.has_value()) return *exit_;
  if (pid_ <= 0) return ExitInfo{};
  kill(pid_, SIGTERM);
  if (auto info = WaitExit(grace)) return *info;
  // Still running (not reaped), so the group id is still ours: this kills
  // the child and anything it started (a shell's curl or node).
  kill(-pid_, SIGKILL);
  kill(pid_, SIGKILL);
  auto info = WaitExit(absl::Seconds(5));
  return info.value_or(ExitInfo{});
}

std::string SluiceBinary() { return SLUICE_BIN; }
std::string OllamaSimBinary() { return OLLAMA_SIM_BIN; }

absl::StatusOr<std::unique_ptr<ChildProcess>> StartSim(const std::vector<std::string>& extra_args) {
  std::vector<std::string> args;
  if (!HasFlag(extra_args, "listen")) args.push_back("--listen=127.0.0.1:0");
  if (!HasFlag(extra_args, "threads")) args.push_back("--threads=1");
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  auto child = ChildProcess::Spawn(OllamaSimBinary(), args);
  if (!child.ok()) return child.status();
  absl::Status st = (*child)->WaitListening(kStartTimeout);
  if (!st.ok()) {
    return absl::Status(st.code(), absl::StrCat("ollama-sim: ", st.message()));
  }
  return child;
}

absl::StatusOr<std::unique_ptr<ChildProcess>> StartSluice(
    int upstream_port, const std::vector<std::string>& extra_args) {
  return StartSluiceAt(SluiceBinary(), upstream_port, extra_args);
}

absl::StatusOr<std::unique_ptr<ChildProcess>> StartSluiceAt(
    const std::string& binary, int upstream_port, const std::vector<std::string>& extra_args) {
  std::vector<std::string> args;
  if (!HasFlag(extra_args, "listen_http")) {
    args.push_back("--listen_http=127.0.0.1:0");
  }
  // Plain HTTP tests run without TLS unless they ask for it.
  if (!HasFlag(extra_args, "listen_tls")) args.push_back("--listen_tls=");
  if (!HasFlag(extra_args, "http_mode")) args.push_back("--http_mode=serve");
  // Tests of other features send generations to the simulator at once, as
  // they would reach a server without sluice's queue (slots=0); the fair
  // queue's tests (and the default of one slot) give their own --upstream.
  if (!HasFlag(extra_args, "upstream")) {
    args.push_back(absl::StrCat("--upstream=127.0.0.1:", upstream_port, " slots=0"));
  }
  if (!HasFlag(extra_args, "threads")) args.push_back("--threads=1");
  // Tests of other features send any bytes as generation bodies, and see
  // them streamed up as they come: the model policy reads nothing unless a
  // test sets one of its flags (model_policy_test.cc runs the defaults).
  bool model_policy = false;
  for (const char* flag :
       {"models", "model_aliases", "max_keep_alive", "keep_alive_forever", "max_num_ctx",
        "max_num_predict", "over_max", "pull_registries", "max_images", "max_image_bytes"}) {
    model_policy = model_policy || HasFlag(extra_args, flag);
  }
  if (!model_policy) {
    args.push_back("--max_keep_alive=inf");
    args.push_back("--keep_alive_forever");
    args.push_back("--pull_registries=*");
  }
  // Tests of other features run without the access policy unless they set
  // it up: no credentials, no rate limits (the policy tests pass their own).
  if (!HasFlag(extra_args, "auth") && !HasFlag(extra_args, "keys_file") &&
      !HasFlag(extra_args, "htpasswd")) {
    args.push_back("--auth=none");
  }
  if (!HasFlag(extra_args, "rate_generation")) args.push_back("--rate_generation=off");
  if (!HasFlag(extra_args, "rate_api")) args.push_back("--rate_api=off");
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  auto child = ChildProcess::Spawn(binary, args);
  if (!child.ok()) return child.status();
  absl::Status st = (*child)->WaitListening(kStartTimeout);
  if (!st.ok()) {
    return absl::Status(st.code(), absl::StrCat("sluice: ", st.message()));
  }
  return child;
}

CommandResult RunProgram(const std::string& path, const std::vector<std::string>& args,
                         absl::Duration timeout, const std::vector<std::string>& extra_env) {
  CommandResult result;
  auto child = ChildProcess::Spawn(path, args, extra_env);
  if (!child.ok()) {
    result.err = std::string(child.status().message());
    return result;
  }
  std::optional<ExitInfo> info = (*child)->WaitExit(timeout);
  if (!info.has_value()) {
    result.timed_out = true;
    // Not reaped yet, so the process group is still the child's own.
    kill(-(*child)->pid(), SIGKILL);
    info = (*child)->Terminate(absl::Seconds(1));
  }
  result.exit = *info;
  result.out = (*child)->Stdout();
  result.err = (*child)->Stderr();
  return result;
}

CommandResult RunShell(const std::string& command, absl::Duration timeout,
                       const std::vector<std::string>& extra_env) {
  return RunProgram("/bin/sh", {"-c", command}, timeout, extra_env);
}

std::string ShellQuote(absl::string_view s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out.push_back(c);
    }
  }
  out += "'";
  return out;
}

// ------------------------------------------------------------------ client

std::optional<std::string> HttpResponse::Header(absl::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (absl::EqualsIgnoreCase(n, name)) return v;
  }
  return std::nullopt;
}

std::vector<TimedRecord> SplitRecords(const std::vector<Chunk>& chunks,
                                      absl::string_view separator) {
  std::vector<TimedRecord> out;
  std::string pending;
  for (const Chunk& chunk : chunks) {
    pending += chunk.data;
    size_t at;
    while ((at = pending.find(separator.data(), 0, separator.size())) != std::string::npos) {
      out.push_back({pending.substr(0, at), chunk.arrival_us});
      pending.erase(0, at + separator.size());
    }
  }
  if (!pending.empty()) {
    out.push_back({pending, chunks.empty() ? 0 : chunks.back().arrival_us});
  }
  return out;
}

absl::StatusOr<std::unique_ptr<HttpConnection>> HttpConnection::Connect(int port,
                                                                        absl::Duration timeout) {
  return ConnectFrom(port, "", timeout);
}

absl::StatusOr<std::unique_ptr<HttpConnection>> HttpConnection::ConnectFrom(
    int port, const std::string& source_ip, absl::Duration timeout) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket");
  if (!source_ip.empty()) {
    sockaddr_in src{};
    src.sin_family = AF_INET;
    if (inet_pton(AF_INET, source_ip.c_str(), &src.sin_addr) != 1) {
      close(fd);
      return absl::InvalidArgumentError(absl::StrCat("bad source address ", source_ip));
    }
    if (bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof(src)) != 0) {
      absl::Status st = Errno(absl::StrCat("bind ", source_ip));
      close(fd);
      return st;
    }
  }
  // SO_SNDTIMEO bounds a blocking connect() on Linux.
  timeval tv = absl::ToTimeval(timeout);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  while (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (errno == EINTR) continue;
    absl::Status st = Errno(absl::StrCat("connect 127.0.0.1:", port));
    close(fd);
    return st;
  }
  return std::unique_ptr<HttpConnection>(new HttpConnection(fd));
}

HttpConnection::~HttpConnection() { Close(); }

absl::Status HttpConnection::Send(absl::string_view bytes) {
  if (fd_ < 0) return absl::FailedPreconditionError("socket closed");
  while (!bytes.empty()) {
    ssize_t n = send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("send");
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

void HttpConnection::Compact() {
  if (pos_ > 0 && pos_ * 2 >= buf_.size()) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
}

absl::Status HttpConnection::Fill(absl::Time deadline) {
  if (eof_) return absl::UnavailableError("connection closed by peer");
  if (fd_ < 0) return absl::FailedPreconditionError("socket closed");
  while (true) {
    absl::Duration left = deadline - absl::Now();
    if (left < absl::ZeroDuration()) left = absl::ZeroDuration();
    timespec ts = absl::ToTimespec(left);
    pollfd pfd{fd_, POLLIN, 0};
    int r = ppoll(&pfd, 1, &ts, nullptr);
    if (r < 0) {
      if (errno == EINTR) continue;
      return Errno("poll");
    }
    if (r == 0) {
      return absl::DeadlineExceededError(
          absl::StrCat("timed out waiting for data; have ", buffered().size(), " unread bytes"));
    }
    char tmp[65536];
    ssize_t n = recv(fd_, tmp, sizeof(tmp), 0);
    if (n > 0) {
      Compact();
      buf_.append(tmp, static_cast<size_t>(n));
      last_recv_us_ = RealtimeMicros();
      return absl::OkStatus();
    }
    if (n == 0) {
      eof_ = true;
      return absl::UnavailableError("connection closed by peer");
    }
    if (errno == EINTR || errno == EAGAIN) continue;
    if (errno == ECONNRESET) {
      eof_ = true;
      return absl::UnavailableError("connection reset by peer");
    }
    return Errno("recv");
  }
}

absl::StatusOr<std::string> HttpConnection::ReadLineUntil(absl::Time deadline) {
  while (true) {
    absl::string_view have = buffered();
    size_t lf = have.find('\n');
    if (lf != absl::string_view::npos) {
      if (lf == 0 || have[lf - 1] != '\r') {
        return absl::DataLossError(
            absl::StrCat("bare LF in the response: '", absl::CEscape(have.substr(0, lf + 1)), "'"));
      }
      std::string line(have.substr(0, lf - 1));
      pos_ += lf + 1;
      return line;
    }
    if (have.size() > kMaxHeadBytes) {
      return absl::DataLossError("response line too long");
    }
    absl::Status st = Fill(deadline);
    if (!st.ok()) return st;
  }
}

absl::StatusOr<std::string> HttpConnection::ReadLine(absl::Duration timeout) {
  return ReadLineUntil(absl::Now() + timeout);
}

absl::StatusOr<std::string> HttpConnection::ReadExactlyUntil(size_t n, absl::Time deadline) {
  while (buffered().size() < n) {
    absl::Status st = Fill(deadline);
    if (!st.ok()) {
      return absl::Status(st.code(), absl::StrCat(st.message(), " (wanted ", n, " bytes, have ",
                                                  buffered().size(), ")"));
    }
  }
  std::string out(buffered().substr(0, n));
  pos_ += n;
  return out;
}

absl::StatusOr<std::string> HttpConnection::ReadExactly(size_t n, absl::Duration timeout) {
  return ReadExactlyUntil(n, absl::Now() + timeout);
}

absl::StatusOr<HttpResponse> HttpConnection::ReadHeadUntil(absl::Time deadline, bool no_body) {
  HttpResponse r;
  auto status_line = ReadLineUntil(deadline);
  if (!status_line.ok()) return status_line.status();
  r.head_arrival_us = last_recv_us_;
  std::vector<absl::string_view> parts = absl::StrSplit(*status_line, absl::MaxSplits(' ', 2));
  if (parts.size() < 2 || !absl::StartsWith(parts[0], "HTTP/1.") || parts[1].size() != 3 ||
      !absl::SimpleAtoi(parts[1], &r.status)) {
    return absl::DataLossError(
        absl::StrCat("bad status line: '", absl::CEscape(*status_line), "'"));
  }
  r.version = std::string(parts[0]);
  if (parts.size() == 3) r.reason = std::string(parts[2]);
  while (true) {
    auto line = ReadLineUntil(deadline);
    if (!line.ok()) return line.status();
    if (line->empty()) break;
    size_t colon = line->find(':');
    if (colon == std::string::npos || colon == 0) {
      return absl::DataLossError(absl::StrCat("bad header line: '", absl::CEscape(*line), "'"));
    }
    r.headers.emplace_back(
        line->substr(0, colon),
        std::string(absl::StripAsciiWhitespace(absl::string_view(*line).substr(colon + 1))));
  }
  framing_ = Framing::kClose;
  remaining_ = 0;
  std::optional<std::string> te = r.Header("Transfer-Encoding");
  std::optional<std::string> cl = r.Header("Content-Length");
  if (no_body || r.status / 100 == 1 || r.status == 204 || r.status == 304) {
    framing_ = Framing::kNone;
  } else if (te.has_value() && ContainsIgnoreCase(*te, "chunked")) {
    framing_ = Framing::kChunked;
    r.chunked = true;
  } else if (cl.has_value()) {
    size_t len;
    if (!absl::SimpleAtoi(*cl, &len)) {
      return absl::DataLossError(absl::StrCat("bad Content-Length: ", *cl));
    }
    framing_ = Framing::kLength;
    remaining_ = len;
  }
  return r;
}

absl::StatusOr<HttpResponse> HttpConnection::ReadHead(absl::Duration timeout) {
  return ReadHeadUntil(absl::Now() + timeout, /*no_body=*/false);
}

absl::StatusOr<Chunk> HttpConnection::ReadChunkUntil(absl::Time deadline) {
  if (framing_ != Framing::kChunked) {
    return absl::FailedPreconditionError("response is not chunked");
  }
  auto size_line = ReadLineUntil(deadline);
  if (!size_line.ok()) return size_line.status();
  absl::string_view hex = *size_line;
  size_t semi = hex.find(';');
  if (semi != absl::string_view::npos) hex = hex.substr(0, semi);
  hex = absl::StripAsciiWhitespace(hex);
  uint64_t size = 0;
  if (hex.empty() || hex.size() > 15) {
    return absl::DataLossError(
        absl::StrCat("bad chunk size line: '", absl::CEscape(*size_line), "'"));
  }
  for (char c : hex) {
    int v;
    if (c >= '0' && c <= '9') {
      v = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      v = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      v = c - 'A' + 10;
    } else {
      return absl::DataLossError(
          absl::StrCat("bad chunk size line: '", absl::CEscape(*size_line), "'"));
    }
    size = size * 16 + v;
  }
  Chunk chunk;
  if (size == 0) {
    chunk.arrival_us = last_recv_us_;
    while (true) {  // Trailers, then the empty line.
      auto trailer = ReadLineUntil(deadline);
      if (!trailer.ok()) return trailer.status();
      if (trailer->empty()) break;
    }
    framing_ = Framing::kNone;
    return chunk;
  }
  auto data = ReadExactlyUntil(size, deadline);
  if (!data.ok()) return data.status();
  chunk.arrival_us = last_recv_us_;
  chunk.data = std::move(*data);
  auto crlf = ReadLineUntil(deadline);
  if (!crlf.ok()) return crlf.status();
  if (!crlf->empty()) {
    return absl::DataLossError("chunk data not followed by CRLF");
  }
  return chunk;
}

absl::StatusOr<Chunk> HttpConnection::ReadChunk(absl::Duration timeout) {
  return ReadChunkUntil(absl::Now() + timeout);
}

absl::Status HttpConnection::ReadBodyUntil(HttpResponse* r, absl::Time deadline) {
  switch (framing_) {
    case Framing::kNone:
      return absl::OkStatus();
    case Framing::kLength: {
      auto body = ReadExactlyUntil(remaining_, deadline);
      if (!body.ok()) return body.status();
      r->body += *body;
      framing_ = Framing::kNone;
      return absl::OkStatus();
    }
    case Framing::kChunked:
      while (true) {
        auto chunk = ReadChunkUntil(deadline);
        if (!chunk.ok()) return chunk.status();
        if (chunk->data.empty()) {
          r->saw_last_chunk = true;
          return absl::OkStatus();
        }
        r->body += chunk->data;
        r->chunks.push_back(std::move(*chunk));
      }
    case Framing::kClose:
      while (true) {
        absl::Status st = Fill(deadline);
        if (absl::IsUnavailable(st)) break;
        if (!st.ok()) return st;
      }
      r->body += std::string(buffered());
      pos_ = buf_.size();
      framing_ = Framing::kNone;
      return absl::OkStatus();
  }
  return absl::OkStatus();
}

absl::Status HttpConnection::ReadBody(HttpResponse* head, absl::Duration timeout) {
  return ReadBodyUntil(head, absl::Now() + timeout);
}

absl::StatusOr<HttpResponse> HttpConnection::ReadResponse(absl::Duration timeout, bool no_body) {
  absl::Time deadline = absl::Now() + timeout;
  auto r = ReadHeadUntil(deadline, no_body);
  if (!r.ok()) return r.status();
  absl::Status st = ReadBodyUntil(&*r, deadline);
  if (!st.ok()) return st;
  return r;
}

absl::Status HttpConnection::ExpectClosed(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (!buffered().empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("expected the connection to close, got bytes: '",
                       absl::CEscape(buffered().substr(0, 200)), "'"));
    }
    absl::Status st = Fill(deadline);
    if (absl::IsUnavailable(st)) return absl::OkStatus();
    if (absl::IsDeadlineExceeded(st)) {
      return absl::DeadlineExceededError(
          absl::StrCat("connection still open after ", absl::FormatDuration(timeout)));
    }
    if (!st.ok()) return st;
  }
}

void HttpConnection::Close() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

void HttpConnection::CloseWithReset() {
  if (fd_ < 0) return;
  linger lg{1, 0};
  setsockopt(fd_, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  Close();
}

void HttpConnection::ShutdownWrite() {
  if (fd_ >= 0) shutdown(fd_, SHUT_WR);
}

absl::StatusOr<HttpResponse> Exchange(int port, absl::string_view request, absl::Duration timeout) {
  auto conn = HttpConnection::Connect(port);
  if (!conn.ok()) return conn.status();
  absl::Status st = (*conn)->Send(request);
  if (!st.ok()) return st;
  return (*conn)->ReadResponse(timeout);
}

std::string BuildRequest(absl::string_view method, absl::string_view target,
                         const std::vector<std::pair<std::string, std::string>>& headers,
                         absl::string_view body, absl::string_view host) {
  bool has_host = false;
  bool has_framing = false;
  for (const auto& [n, v] : headers) {
    if (absl::EqualsIgnoreCase(n, "Host")) has_host = true;
    if (absl::EqualsIgnoreCase(n, "Content-Length") ||
        absl::EqualsIgnoreCase(n, "Transfer-Encoding")) {
      has_framing = true;
    }
  }
  std::string out = absl::StrCat(method, " ", target, " HTTP/1.1\r\n");
  if (!has_host && !host.empty()) absl::StrAppend(&out, "Host: ", host, "\r\n");
  for (const auto& [n, v] : headers) absl::StrAppend(&out, n, ": ", v, "\r\n");
  if (!body.empty() && !has_framing) {
    absl::StrAppend(&out, "Content-Length: ", body.size(), "\r\n");
  }
  absl::StrAppend(&out, "\r\n", body);
  return out;
}

std::optional<int64_t> FindJsonInt(absl::string_view json, absl::string_view key) {
  std::string quoted = absl::StrCat("\"", key, "\"");
  size_t at = json.find(quoted);
  if (at == absl::string_view::npos) return std::nullopt;
  absl::string_view rest = json.substr(at + quoted.size());
  rest = absl::StripLeadingAsciiWhitespace(rest);
  if (!absl::ConsumePrefix(&rest, ":")) return std::nullopt;
  rest = absl::StripLeadingAsciiWhitespace(rest);
  size_t end = 0;
  while (end < rest.size() && (absl::ascii_isdigit(rest[end]) || (end == 0 && rest[end] == '-'))) {
    ++end;
  }
  int64_t v;
  if (!absl::SimpleAtoi(rest.substr(0, end), &v)) return std::nullopt;
  return v;
}

absl::StatusOr<SimStats> FetchSimStats(int sim_port) {
  auto r = Exchange(sim_port,
                    "GET /sim/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    "Connection: close\r\n\r\n",
                    absl::Seconds(5));
  if (!r.ok()) return r.status();
  if (r->status != 200) {
    return absl::InternalError(absl::StrCat("/sim/stats answered ", r->status, ": ", r->body));
  }
  SimStats s;
  struct Field {
    const char* key;
    int64_t* out;
  } fields[] = {{"opened", &s.opened},
                {"closed", &s.closed},
                {"active", &s.active},
                {"requests", &s.requests},
                {"aborted_streams", &s.aborted_streams},
                {"last_abort_us", &s.last_abort_us}};
  for (const Field& f : fields) {
    std::optional<int64_t> v = FindJsonInt(r->body, f.key);
    if (!v.has_value()) {
      return absl::InternalError(absl::StrCat("/sim/stats lacks \"", f.key, "\": ", r->body));
    }
    *f.out = *v;
  }
  return s;
}

absl::Status ResetSim(int sim_port) {
  auto r = Exchange(sim_port,
                    "POST /sim/reset HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    "Content-Length: 0\r\nConnection: close\r\n\r\n",
                    absl::Seconds(5));
  if (!r.ok()) return r.status();
  if (r->status != 200) {
    return absl::InternalError(absl::StrCat("/sim/reset answered ", r->status, ": ", r->body));
  }
  return absl::OkStatus();
}

std::optional<std::string> SanitizerReport(absl::string_view stderr_text) {
  constexpr absl::string_view kMarkers[] = {"WARNING: ThreadSanitizer:", "ERROR: AddressSanitizer:",
                                            "ERROR: LeakSanitizer:", "runtime error:"};
  size_t first = absl::string_view::npos;
  for (absl::string_view marker : kMarkers) {
    first = std::min(first, stderr_text.find(marker));
  }
  if (first == absl::string_view::npos) return std::nullopt;
  size_t line_start = stderr_text.rfind('\n', first);
  line_start = line_start == absl::string_view::npos ? 0 : line_start + 1;
  return std::string(stderr_text.substr(line_start, 8000));
}

int UnusedPort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

}  // namespace sluice::integration
