#include "core/server/signals.h"

#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <mutex>
#include <string>
#include <utility>

#include "core/observe/log.h"

namespace sluice::core {

sigset_t BlockSignals() {
  // SIGPIPE is moot (sends use MSG_NOSIGNAL) but blocked too.
  sigset_t sigs;
  sigemptyset(&sigs);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2, SIGPIPE, SIGRTMIN}) {
    sigaddset(&sigs, s);
  }
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  return sigs;
}

// A worker that does not answer within a second (its loop has ended, or is
// stuck) is not waited for: its lines go to the new file.
void FlushAccessLogs(const std::vector<std::unique_ptr<Worker>>& workers) {
  struct Pending {
    std::mutex mu;
    std::condition_variable cv;
    size_t left = 0;
  };
  auto pending = std::make_shared<Pending>();
  pending->left = workers.size();
  for (const auto& w : workers) {
    Worker* worker = w.get();
    worker->Post([worker, pending] {
      worker->shard()->FlushAccessLog();
      std::lock_guard<std::mutex> lock(pending->mu);
      if (--pending->left == 0) pending->cv.notify_all();
    });
  }
  std::unique_lock<std::mutex> lock(pending->mu);
  if (!pending->cv.wait_for(lock, std::chrono::seconds(1), [&] { return pending->left == 0; })) {
    LOG_WARN(
        "SIGUSR1: %zu worker(s) did not hand over their access log lines within 1s; those "
        "go to the new file",
        pending->left);
  }
}

SignalLoop::SignalLoop(const sigset_t& sigs, Restarter* restarter, Reloader* reloader,
                       WorkerThreads* workers, LogFile* access_log, std::vector<int> listen_fds,
                       int64_t drain_timeout_ns)
    : sigs_(sigs),
      restarter_(restarter),
      reloader_(reloader),
      workers_(workers),
      access_log_(access_log),
      listen_fds_(std::move(listen_fds)),
      drain_timeout_ns_(drain_timeout_ns) {}

void SignalLoop::Run() {
  while (workers_->running() > 0) {
    // Shorter waits while a restart is in progress, to see it end sooner.
    timespec wait{0, restarter_->in_progress() ? 20 * 1000 * 1000 : 200 * 1000 * 1000};
    int sig = sigtimedwait(&sigs_, nullptr, &wait);
    CheckRestart();
    if (sig == SIGHUP) {
      reloader_->Reload();
    } else if (sig == SIGUSR1) {
      ReopenLogs();
    } else if (sig == SIGUSR2) {
      StartRestart();
    } else if (sig == SIGINT || sig == SIGTERM) {
      Stop(sig);
    }
  }
}

void SignalLoop::CheckRestart() {
  std::string why;
  switch (restarter_->Check(&why)) {
    case Restarter::State::kReady:
      LOG_INFO("restart: new process %d serves; this one hands over",
               static_cast<int>(restart_pid_));
      if (!stopping_) BeginDrain("restart");
      break;
    case Restarter::State::kFailed:
      LOG_ERROR("restart: new process %d failed (%s); this one keeps serving",
                static_cast<int>(restart_pid_), why.c_str());
      break;
    default:
      break;
  }
}

// logrotate renamed the files: write to new ones at the paths.
void SignalLoop::ReopenLogs() {
  ReopenErrorLog();
  if (access_log_ != nullptr) {
    FlushAccessLogs(workers_->workers());
    access_log_->Reopen();
  }
  LOG_INFO("SIGUSR1: reopened log files");
}

void SignalLoop::StartRestart() {
  if (stopping_ || restarter_->in_progress()) {
    LOG_WARN("SIGUSR2: ignored, %s", stopping_ ? "stopping" : "a restart is in progress");
  } else if (absl::Status st = restarter_->Start(listen_fds_); !st.ok()) {
    LOG_ERROR("SIGUSR2: restart failed: %s", std::string(st.message()).c_str());
  } else {
    restart_pid_ = restarter_->pid();
    LOG_INFO("SIGUSR2: started new process %d, handing over %zu listening socket(s)",
             static_cast<int>(restart_pid_), listen_fds_.size());
  }
}

void SignalLoop::Stop(int sig) {
  if (!stopping_) {
    BeginDrain(strsignal(sig));
  } else {
    LOG_WARN("second %s: exiting now", strsignal(sig));
    _exit(1);
  }
}

void SignalLoop::BeginDrain(const char* why) {
  LOG_INFO("%s: stop accepting, draining for up to %llds", why,
           static_cast<long long>(drain_timeout_ns_ / 1000000000));
  stopping_ = true;
  workers_->RequestStop();
}

}  // namespace sluice::core
