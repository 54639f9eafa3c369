#include "core/server/restart.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

extern char** environ;

namespace sluice::core {
namespace {

constexpr char kListenFdsVar[] = "SLUICE_LISTEN_FDS";
constexpr char kReadyFdVar[] = "SLUICE_READY_FD";
// A new process that has not said it is ready by then is given up on.
constexpr int64_t kReadyTimeoutNs = 60'000'000'000;

int64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("killed by signal ", WTERMSIG(status));
  return "ended";
}

}  // namespace

absl::StatusOr<std::vector<int>> TakeInheritedListeners() {
  std::vector<int> fds;
  const char* value = getenv(kListenFdsVar);
  if (value == nullptr) return fds;
  const std::string text = value;
  unsetenv(kListenFdsVar);
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int fd;
    if (!absl::SimpleAtoi(part, &fd) || fd < 0 || fcntl(fd, F_GETFD) < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(kListenFdsVar, "=", text, ": not a list of open descriptors"));
    }
    // Not handed on again unless asked.
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    fds.push_back(fd);
  }
  return fds;
}

bool ListenerMatches(int fd, const SocketAddress& want) {
  int listening = 0;
  socklen_t optlen = sizeof(listening);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &optlen) != 0 || !listening) {
    return false;
  }
  sockaddr_storage have{};
  socklen_t len = sizeof(have);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&have), &len) != 0) return false;
  if (have.ss_family != want.family()) return false;
  if (have.ss_family == AF_INET) {
    const auto* h = reinterpret_cast<const sockaddr_in*>(&have);
    const auto* w = reinterpret_cast<const sockaddr_in*>(&want.storage);
    return h->sin_addr.s_addr == w->sin_addr.s_addr &&
           (w->sin_port == 0 || h->sin_port == w->sin_port);
  }
  if (have.ss_family == AF_INET6) {
    const auto* h = reinterpret_cast<const sockaddr_in6*>(&have);
    const auto* w = reinterpret_cast<const sockaddr_in6*>(&want.storage);
    return memcmp(&h->sin6_addr, &w->sin6_addr, sizeof(in6_addr)) == 0 &&
           (w->sin6_port == 0 || h->sin6_port == w->sin6_port);
  }
  return false;
}

void NotifyRestartReady() {
  const char* value = getenv(kReadyFdVar);
  if (value == nullptr) return;
  int fd;
  if (absl::SimpleAtoi(value, &fd) && fd >= 0) {
    const char ready = 'R';
    ssize_t ignored = ::write(fd, &ready, 1);
    (void)ignored;
    ::close(fd);
  }
  unsetenv(kReadyFdVar);
}

Restarter::Restarter(int argc, char** argv) {
  char path[4096];
  ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n > 0) {
    exe_.assign(path, static_cast<size_t>(n));
    // Replaced on disk since it started: the new file is at the same path.
    constexpr std::string_view kDeleted = " (deleted)";
    if (exe_.size() > kDeleted.size() &&
        exe_.compare(exe_.size() - kDeleted.size(), kDeleted.size(), kDeleted) == 0) {
      exe_.resize(exe_.size() - kDeleted.size());
    }
  } else if (argc > 0) {
    exe_ = argv[0];
  }
  for (int i = 0; i < argc; ++i) argv_.emplace_back(argv[i]);
}

Restarter::~Restarter() {
  if (ready_fd_ >= 0) ::close(ready_fd_);
}

absl::Status Restarter::Start(const std::vector<int>& listeners) {
  if (pid_ > 0) return absl::FailedPreconditionError("a restart is already in progress");
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe: ", strerror(errno)));
  }
  // Everything the child needs is built before fork: between fork and exec
  // only async-signal-safe calls are allowed (this process has threads).
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view entry(*e);
    if (entry.rfind(absl::StrCat(kListenFdsVar, "="), 0) == 0 ||
        entry.rfind(absl::StrCat(kReadyFdVar, "="), 0) == 0) {
      continue;
    }
    env_strings.emplace_back(entry);
  }
  env_strings.push_back(absl::StrCat(kListenFdsVar, "=", absl::StrJoin(listeners, ",")));
  env_strings.push_back(absl::StrCat(kReadyFdVar, "=", pipe_fds[1]));
  std::vector<char*> envp;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = argv_;
  std::vector<char*> argvp;
  for (std::string& s : args) argvp.push_back(s.data());
  argvp.push_back(nullptr);
  std::vector<int> inherit = listeners;
  inherit.push_back(pipe_fds[1]);

  pid_t pid = fork();
  if (pid < 0) {
    int err = errno;
    ::close(pipe_fds[0]);
    ::close(pipe_fds[1]);
    return absl::InternalError(absl::StrCat("fork: ", strerror(err)));
  }
  if (pid == 0) {
    for (int fd : inherit) fcntl(fd, F_SETFD, 0);
    // The new process blocks its signals itself; it starts with none
    // blocked, as a process started by hand would.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execve(exe_.c_str(), argvp.data(), envp.data());
    _exit(127);
  }
  ::close(pipe_fds[1]);
  pid_ = pid;
  ready_fd_ = pipe_fds[0];
  started_ns_ = MonotonicNs();
  return absl::OkStatus();
}

Restarter::State Restarter::Check(std::string* why) {
  if (pid_ <= 0) return State::kIdle;
  pollfd p{ready_fd_, POLLIN, 0};
  if (poll(&p, 1, 0) > 0) {
    char c = 0;
    ssize_t n = ::read(ready_fd_, &c, 1);
    if (n == 1 && c == 'R') {
      Reset();
      return State::kReady;
    }
    // EOF without the byte: the new process ended (or closed the pipe)
    // before it was ready.
    int status = 0;
    pid_t r = waitpid(pid_, &status, 0);
    *why = r == pid_ ? DescribeExit(status) : "closed the readiness pipe";
    Reset();
    return State::kFailed;
  }
  if (MonotonicNs() - started_ns_ > kReadyTimeoutNs) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    *why = "not ready within 60 s (killed)";
    Reset();
    return State::kFailed;
  }
  return State::kWaiting;
}

void Restarter::Reset() {
  if (ready_fd_ >= 0) ::close(ready_fd_);
  ready_fd_ = -1;
  pid_ = -1;
}

}  // namespace sluice::core
