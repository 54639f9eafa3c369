#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/engine/idle_list.h"
#include "core/engine/stream.h"
#include "core/engine/timer.h"
#include "core/server/config.h"
#include "core/upstream/idle_target.h"

namespace sluice::core {

class Shard;
class UpstreamPool;

// Receives the events of the upstream link it holds (see StreamHandler for
// the meaning of each).
class LinkUser {
 public:
  virtual ~LinkUser() = default;
  virtual void OnLinkConnected(int res) = 0;
  virtual void OnLinkData(Slice data) = 0;
  virtual void OnLinkReadEnd(int res) = 0;
  virtual void OnLinkWriteProgress() = 0;
  virtual void OnLinkWriteError(int res) = 0;
  // The account the link's received buffers are charged to while this user
  // holds it (the client connection's); null: none.
  virtual BufferAccount* buffer_account() const { return nullptr; }
};

// One HTTP/1.1 keepalive connection to the upstream. Owned by the pool; a
// user borrows it for exactly one request/response.
class UpstreamLink final : public StreamHandler {
 public:
  UpstreamLink(UpstreamPool* pool, Shard* shard, int fd);

  Stream& stream() { return stream_; }
  // True when it came from the idle list (it may have been closed by the
  // upstream meanwhile: the one case where a retry is safe).
  bool reused() const { return reused_; }
  bool connected() const { return connected_; }
  UpstreamPool* pool() const { return pool_; }

 private:
  friend class UpstreamPool;
  void OnData(Slice data) override;
  void OnReadEnd(int res) override;
  void OnWriteProgress() override;
  void OnWriteError(int res) override;
  void OnConnected(int res) override;
  void OnClosed() override;

  UpstreamPool* pool_;
  SocketAddress peer_;  // where it connects (read by the engine at submission)
  Stream stream_;
  LinkUser* user_ = nullptr;
  Timer idle_timer_;
  uint64_t generation_ = 0;  // of the backend's address it connected to
  bool reused_ = false;
  bool connected_ = false;
  bool idle_ = false;
};

// A worker's pool of keepalive links to one backend: idle ones are kept up
// to the recent peak of links in use at once (IdleTarget; a fixed number
// with --upstream_keepalive=N), most recently used first, so the freshest
// link is reused and surplus ones age out; each is watched by a receive so
// an upstream close removes it at once.
class UpstreamPool {
 public:
  // The links of this worker to `backend` (which outlives the pool).
  // `index`: the backend's place in --upstream (its metrics' slot).
  UpstreamPool(Shard* shard, const BackendConfig* backend, size_t index = 0);
  ~UpstreamPool();

  // A link for one request: an idle one, or (also when `fresh` is set) a new
  // connection whose OnLinkConnected follows. Null only if no socket could
  // be made; `*err` then holds -errno.
  UpstreamLink* Acquire(LinkUser* user, bool fresh, int* err);
  // Gives back a link after a complete response; kept if the pool has room.
  void Release(UpstreamLink* link);
  // Closes a link that must not be reused (errors, cancellation).
  void Discard(UpstreamLink* link);
  // Closes every idle link (drain).
  void CloseIdle();
  // A backend given by name whose address changed (or went) since the last
  // call: its idle links, to the old address, close, and the old address's
  // failures no longer count against it.
  void FollowAddress();

  size_t idle_count() const { return idle_.size(); }
  size_t open_count() const { return open_; }
  // Links lent to requests (or being closed) now.
  size_t in_use() const { return open_ - idle_.size(); }
  const BackendConfig& backend() const { return *backend_; }

  // Passive health, this worker's view, as a circuit: a request that failed
  // before any response byte (connect failure, reset, close), timed out,
  // or was answered 500, 502 or 504 counts against the backend; any other
  // response head clears the count. After --upstream_max_fails in a row the
  // circuit opens: the backend is left out for --upstream_fail_timeout.
  // Then it is half-open: one request goes (the probe; TakeProbe) while
  // the others still leave it out. The probe's success closes the circuit;
  // its failure opens it again. A probe that tells nothing (its client
  // left) for another --upstream_fail_timeout lets the next one go.
  void ReportFailure(int64_t now_ns);
  void ReportSuccess() {
    failures_ = 0;
    tripped_ = false;
    probe_until_ns_ = 0;
  }
  bool available(int64_t now_ns) const {
    return now_ns >= out_until_ns_ && (!tripped_ || now_ns >= probe_until_ns_);
  }
  // The request about to use this backend is its probe, if it is half-open.
  void TakeProbe(int64_t now_ns);
  size_t index() const { return index_; }
  int64_t out_until_ns() const { return out_until_ns_; }
  // How many idle links the pool keeps now.
  size_t idle_capacity() { return target_.Capacity(shard_now()); }

 private:
  friend class UpstreamLink;
  void Destroy(UpstreamLink* link);
  int64_t shard_now() const;

  Shard* shard_;
  const BackendConfig* backend_;
  size_t index_;
  IdleTarget target_;
  IdleList<UpstreamLink> idle_;
  size_t open_ = 0;
  int failures_ = 0;
  int64_t out_until_ns_ = 0;
  uint64_t address_generation_ = 0;  // AddressGeneration when last seen
  bool tripped_ = false;             // the circuit opened and no success since
  int64_t probe_until_ns_ = 0;       // a probe is out until then
};

}  // namespace sluice::core
