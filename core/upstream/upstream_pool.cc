#include "core/upstream/upstream_pool.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>

#include "core/server/shard.h"
#include "core/upstream/resolver.h"

namespace sluice::core {

UpstreamLink::UpstreamLink(UpstreamPool* pool, Shard* shard, int fd)
    : pool_(pool),
      stream_(shard->loop(), fd, this),
      idle_timer_([this] { pool_->Discard(this); }) {}

void UpstreamLink::OnData(Slice data) {
  if (user_) {
    user_->OnLinkData(std::move(data));
  } else {
    // An idle HTTP/1.1 link must stay silent; bytes here mean it is unusable.
    pool_->Discard(this);
  }
}

void UpstreamLink::OnReadEnd(int res) {
  if (user_) {
    user_->OnLinkReadEnd(res);
  } else {
    pool_->Discard(this);  // the upstream closed an idle link
  }
}

void UpstreamLink::OnWriteProgress() {
  if (user_) user_->OnLinkWriteProgress();
}

void UpstreamLink::OnWriteError(int res) {
  if (user_) {
    user_->OnLinkWriteError(res);
  } else {
    pool_->Discard(this);
  }
}

void UpstreamLink::OnConnected(int res) {
  if (res == 0) {
    connected_ = true;
    stream_.StartReading();
  }
  if (user_) user_->OnLinkConnected(res);
}

void UpstreamLink::OnClosed() { pool_->Destroy(this); }

UpstreamPool::UpstreamPool(Shard* shard, const BackendConfig* backend, size_t index)
    : shard_(shard),
      backend_(backend),
      index_(index),
      target_(shard->config().upstream_keepalive, shard->config().upstream_max_idle,
              shard->config().upstream_idle_timeout_ns),
      idle_(0) {}

int64_t UpstreamPool::shard_now() const { return shard_->now_ns(); }

UpstreamPool::~UpstreamPool() = default;

UpstreamLink* UpstreamPool::Acquire(LinkUser* user, bool fresh, int* err) {
  FollowAddress();
  UpstreamLink* link = fresh ? nullptr : idle_.TakeNewest();
  if (link != nullptr) {
    link->idle_ = false;
    link->idle_timer_.Disarm();
    link->user_ = user;
    link->stream_.SetAccount(user->buffer_account(), /*upstream=*/true);
    link->reused_ = true;
    ++shard_->metrics().upstream_reused;
    target_.NoteInUse(open_ - idle_.size(), shard_->now_ns());
    return link;
  }
  const Config& cfg = shard_->config();
  SocketAddress addr;
  if (!CurrentAddress(*backend_, &addr)) {
    *err = -EHOSTUNREACH;  // a name that has not resolved yet
    return nullptr;
  }
  int fd = ::socket(addr.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = -errno;
    return nullptr;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  link = new UpstreamLink(this, shard_, fd);
  link->generation_ = address_generation_;
  ++open_;
  link->user_ = user;
  link->stream_.SetAccount(user->buffer_account(), /*upstream=*/true);
  ++shard_->metrics().upstream_connects;
  target_.NoteInUse(open_ - idle_.size(), shard_->now_ns());
  // The engine reads the address when it submits the connect: it lives in
  // the link.
  link->peer_ = addr;
  link->stream_.Connect(link->peer_.get(), link->peer_.len, cfg.connect_timeout_ns);
  return link;
}

void UpstreamPool::Release(UpstreamLink* link) {
  link->user_ = nullptr;
  link->stream_.SetAccount(nullptr, false);
  const Config& cfg = shard_->config();
  idle_.set_capacity(target_.Capacity(shard_->now_ns()));
  // A link to an address the backend no longer has is not kept.
  if (shard_->draining() || link->stream_.closing() || link->generation_ != address_generation_ ||
      AddressGeneration(*backend_) != address_generation_ || !idle_.Offer(link)) {
    Discard(link);
    return;
  }
  link->idle_ = true;
  link->stream_.StartReading();
  link->idle_timer_.Disarm();
  shard_->Timers(cfg.upstream_idle_timeout_ns)->Arm(&link->idle_timer_, shard_->now_ns());
}

void UpstreamPool::ReportFailure(int64_t now_ns) {
  if (BackendStats* stats = shard_->metrics().backend(index_)) ++stats->failures;
  const Config& cfg = shard_->config();
  if (cfg.upstream_max_fails == 0) return;
  if (tripped_ || ++failures_ >= cfg.upstream_max_fails) {
    tripped_ = true;
    probe_until_ns_ = 0;
    out_until_ns_ = now_ns + cfg.upstream_fail_timeout_ns;
  }
}

void UpstreamPool::TakeProbe(int64_t now_ns) {
  if (tripped_ && now_ns >= out_until_ns_ && now_ns >= probe_until_ns_) {
    probe_until_ns_ = now_ns + shard_->config().upstream_fail_timeout_ns;
  }
}

void UpstreamPool::Discard(UpstreamLink* link) {
  link->user_ = nullptr;
  link->stream_.SetAccount(nullptr, false);
  link->idle_timer_.Disarm();
  if (link->idle_) {
    idle_.Remove(link);
    link->idle_ = false;
  }
  link->stream_.Close();
}

void UpstreamPool::FollowAddress() {
  const uint64_t generation = AddressGeneration(*backend_);
  if (generation == address_generation_) return;
  address_generation_ = generation;
  CloseIdle();
  failures_ = 0;
  tripped_ = false;
  out_until_ns_ = 0;
  probe_until_ns_ = 0;
}

void UpstreamPool::CloseIdle() {
  for (UpstreamLink* link : idle_.TakeAll()) {
    link->idle_ = false;
    Discard(link);
  }
}

void UpstreamPool::Destroy(UpstreamLink* link) {
  if (link->idle_) idle_.Remove(link);
  --open_;
  delete link;
}

}  // namespace sluice::core
