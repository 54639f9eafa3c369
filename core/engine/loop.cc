#include "core/engine/loop.h"

#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

#include "core/engine/stream.h"
#include "core/observe/log.h"

namespace sluice::core {
namespace {

int64_t ClockNs(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

}  // namespace

Loop::Loop(const Options& options) : Loop(options, NewUringBackend()) {}

Loop::Loop(const Options& options, std::unique_ptr<Backend> backend)
    : options_(options), backend_(std::move(backend)), buffer_trim_timer_([this] {
        if (buffers_.Trim()) Timers(kBufferTrimNs)->Arm(&buffer_trim_timer_, now_ns_);
      }) {
  wake_op_.loop = this;
  wake_fd_ = eventfd(0, EFD_CLOEXEC);
  timer_lists_.push_back(std::make_unique<TimerList>(-1));
  deadline_timers_ = timer_lists_.back().get();
  UpdateClock();
}

Loop::~Loop() {
  for (BufferAccount* a : accounts_) delete a;
  for (auto& op : accept_ops_) {
    if (op->fd >= 0) ::close(op->fd);
  }
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void Loop::AddListener(int fd, int tag, Acceptor* acceptor) {
  auto op = std::make_unique<AcceptOp>();
  op->loop = this;
  op->acceptor = acceptor;
  op->fd = fd;
  op->tag = tag;
  accept_ops_.push_back(std::move(op));
}

absl::Status Loop::Init() {
  if (options_.cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(options_.cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
  }
  if (absl::Status s = backend_->Init(options_.ring_entries); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<BufferProvider>> provider =
      backend_->NewBufferProvider(options_.recv_buffers);
  if (!provider.ok()) return provider.status();
  if (absl::Status s =
          buffers_.Init(*std::move(provider), options_.recv_buffers, options_.recv_buffer_size);
      !s.ok()) {
    return s;
  }
  UpdateClock();
  for (auto& op : accept_ops_) ArmAccept(op.get());
  ArmWake();
  return absl::OkStatus();
}

void Loop::Post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    posted_.push_back(std::move(fn));
  }
  uint64_t one = 1;
  ssize_t ignored = ::write(wake_fd_, &one, sizeof(one));
  (void)ignored;
}

TimerList* Loop::Timers(int64_t duration_ns) {
  for (auto& list : timer_lists_) {
    if (list->duration_ns() == duration_ns) return list.get();
  }
  timer_lists_.push_back(std::make_unique<TimerList>(duration_ns));
  return timer_lists_.back().get();
}

void Loop::RemoveStarved(Stream* s) {
  starved_.erase(std::remove(starved_.begin(), starved_.end(), s), starved_.end());
}

void Loop::RemovePaused(Stream* s) {
  paused_.erase(std::remove(paused_.begin(), paused_.end(), s), paused_.end());
}

BufferAccount* Loop::NewAccount() {
  auto* a = new BufferAccount;
  accounts_.insert(a);
  return a;
}

void Loop::ReleaseAccount(BufferAccount* a) {
  if (a == nullptr) return;
  accounts_.erase(a);
  std::vector<Stream*> upstreams = a->upstreams;
  for (Stream* s : upstreams) s->SetAccount(nullptr, false);
  // Buffers it lent may still be held (a slice in a queue being torn
  // down): the last one back frees it.
  if (a->held == 0) {
    delete a;
  } else {
    a->orphaned = true;
  }
}

void Loop::RelievePressure() {
  const uint32_t count = buffers_.count();
  if (buffers_.TakePressure()) {
    // The biggest holders first, each holding at least 1/64 of the ring,
    // until the paused ones hold half of what is lent or eight are paused.
    std::vector<BufferAccount*> holders;
    for (BufferAccount* a : accounts_) {
      if (!a->upstreams.empty() && a->held >= std::max<uint32_t>(1, count / 64)) {
        holders.push_back(a);
      }
    }
    std::sort(holders.begin(), holders.end(),
              [](const BufferAccount* x, const BufferAccount* y) { return x->held > y->held; });
    uint32_t paused_held = 0;
    for (size_t i = 0; i < holders.size() && i < 8 && paused_held < buffers_.in_use() / 2; ++i) {
      for (Stream* s : holders[i]->upstreams) {
        if (!s->paused_for_pressure()) ++pressure_pauses_;
        s->PauseForPressure();
      }
      paused_held += holders[i]->held;
    }
  } else if (!paused_.empty() && buffers_.in_use() <= count / 2) {
    // ResumeAfterPressure takes each off paused_.
    const std::vector<Stream*> paused = paused_;
    for (Stream* s : paused) s->ResumeAfterPressure();
  }
}

void Loop::CancelFlush(Flushable* f) {
  for (Flushable*& p : flush_) {
    if (p == f) p = nullptr;
  }
}

void Loop::ArmAccept(AcceptOp* op) {
  backend_->Accept(op->fd, op);
  op->armed = true;
}

void Loop::ArmWake() { backend_->Read(wake_fd_, &wake_buf_, sizeof(wake_buf_), &wake_op_); }

void Loop::OnAccept(AcceptOp* op, int res, uint32_t flags) {
  if (!(flags & kIoMore)) op->armed = false;
  if (res >= 0) {
    op->acceptor->OnAccepted(op->tag, res);
  } else if (res != -ECANCELED) {
    op->acceptor->OnAcceptError(op->tag, res);
  }
  // A closed listener (CloseListeners) is not re-armed.
  if (!op->armed && op->fd >= 0) ArmAccept(op);
}

// Closing the fd alone would not stop a multishot accept: the request holds
// the file, and on a socket shared with a restarted process it would go on
// taking connections until the ring is torn down, where they would be
// lost. So each accept is cancelled, and Run goes on until every cancelled
// accept has ended: a connection accepted before the cancel reaches its
// acceptor first.
void Loop::CloseListeners() {
  for (auto& op : accept_ops_) {
    if (op->fd < 0) continue;
    if (op->armed) backend_->Cancel(op.get());
    ::close(op->fd);
    op->fd = -1;
  }
}

void Loop::OnWake() {
  std::vector<std::function<void()>> posted;
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    posted.swap(posted_);
  }
  for (auto& fn : posted) fn();
  ArmWake();
}

void Loop::UpdateClock() {
  now_ns_ = ClockNs(CLOCK_MONOTONIC);
  now_unix_ns_ = ClockNs(CLOCK_REALTIME);
}

int64_t Loop::NextTimeout() const {
  int64_t next = -1;
  for (const auto& list : timer_lists_) {
    int64_t d = list->next_deadline();
    if (d >= 0 && (next < 0 || d < next)) next = d;
  }
  if (next < 0) return -1;
  return std::max<int64_t>(0, next - now_ns_);
}

void Loop::RunDeferred() {
  while (!deferred_.empty()) {
    std::vector<std::function<void()>> batch;
    batch.swap(deferred_);
    for (auto& fn : batch) fn();
  }
}

void Loop::RetryStarved() {
  // Receives parked on -ENOBUFS re-arm once buffers came back, or while the
  // ring is believed to hold some (a receive that met the ring empty just
  // before this turn's completions refilled it must not wait for the next
  // buffer to be handed over, which may never come on an idle worker).
  if (!starved_.empty() && (buffers_.recycled() != recycled_seen_ || buffers_.published() > 0)) {
    std::vector<Stream*> starved;
    starved.swap(starved_);
    for (Stream* s : starved) s->RetryAfterBuffers();
  }
  recycled_seen_ = buffers_.recycled();
}

void Loop::RunFlushes() {
  // Flushing may queue more (a TLS session's records go to its Stream),
  // so the list can grow while it runs.
  for (size_t i = 0; i < flush_.size(); ++i) {
    if (Flushable* f = flush_[i]) f->Flush();
  }
  flush_.clear();
}

void Loop::Run(const std::function<bool()>& keep_going) {
  do {
    Turn(-1);
  } while (keep_going() || AcceptsClosing());
}

void Loop::Turn(int64_t max_wait_ns) {
  int64_t timeout = NextTimeout();
  if (max_wait_ns >= 0 && (timeout < 0 || timeout > max_wait_ns)) timeout = max_wait_ns;
  int ret = backend_->Wait(timeout, options_.busy_poll_ns);
  if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EBUSY) {
    LOG_ERROR("waiting for events: %s", strerror(-ret));
  }
  UpdateClock();
  backend_->Dispatch();
  RunDeferred();
  for (auto& list : timer_lists_) list->Expire(now_ns_);
  RunDeferred();
  RetryStarved();
  RelievePressure();
  // Gives the pages of buffers unused for a while back, and stops once
  // nothing is left to trim (an idle loop sleeps).
  if (!buffer_trim_timer_.armed() && buffers_.wants_trim()) {
    Timers(kBufferTrimNs)->Arm(&buffer_trim_timer_, now_ns_);
  }
  RunFlushes();
}

bool Loop::AcceptsClosing() const {
  for (const auto& op : accept_ops_) {
    if (op->fd < 0 && op->armed) return true;
  }
  return false;
}

}  // namespace sluice::core
