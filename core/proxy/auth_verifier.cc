#include "core/proxy/auth_verifier.h"

#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

namespace sluice::core {

AuthVerifier::AuthVerifier(int threads, size_t max_queue) : max_queue_(max_queue) {
  for (int i = 0; i < std::max(1, threads); ++i) {
    threads_.emplace_back([this] { Loop(); });
  }
}

AuthVerifier::~AuthVerifier() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) t.join();
  for (Job& job : queue_) job.done(false);
}

bool AuthVerifier::Submit(Job job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_ || queue_.size() >= max_queue_) return false;
    queue_.push_back(std::move(job));
  }
  cv_.notify_one();
  return true;
}

void AuthVerifier::Loop() {
  // SCHED_IDLE: a worker that wakes up preempts a password check at once
  // (with only a lower nice value it waited up to a scheduler slice, about
  // 2 ms: bench/RESULTS.md, policy cost). Checks run on the CPU time the
  // workers leave; under overload they wait, and the bounded queue answers
  // 503. Where SCHED_IDLE is refused, fall back to nice 19.
  sched_param param{};
  if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &param) != 0) {
    setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 19);
  }
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    const bool valid = job.policy->VerifyBasic(job.user, job.password);
    std::fill(job.password.begin(), job.password.end(), '\0');
    job.done(valid);
  }
}

}  // namespace sluice::core
