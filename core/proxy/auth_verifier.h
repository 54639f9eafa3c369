#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "policy/policy.h"

namespace sluice::core {

// Helper threads for password checks too slow for an event loop (bcrypt
// takes tens of milliseconds; one on the loop would stall every connection
// of that worker). The threads run as SCHED_IDLE, on the CPU time the
// workers leave, so a flood of wrong passwords slows logins, not traffic.
// The queue is bounded: when it is full Submit refuses and the request gets
// 503.
class AuthVerifier {
 public:
  // `done` runs on a verifier thread with the answer; it must hand the
  // result to its worker (Worker::Post) and touch nothing else.
  struct Job {
    std::shared_ptr<const policy::Policy> policy;
    std::string user;
    std::string password;
    std::function<void(bool valid)> done;
  };

  AuthVerifier(int threads, size_t max_queue);
  // Joins the threads; queued jobs are answered as invalid.
  ~AuthVerifier();
  AuthVerifier(const AuthVerifier&) = delete;
  AuthVerifier& operator=(const AuthVerifier&) = delete;

  // Thread-safe. False when the queue is full (the job is not run).
  bool Submit(Job job);

 private:
  void Loop();

  const size_t max_queue_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace sluice::core
