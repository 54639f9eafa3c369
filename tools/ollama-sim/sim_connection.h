// One accepted connection of the simulator: the HTTP/1.1 parser and input
// side (sim_connection.cc) and the response side, which plays a plan out with
// its timing, framing and injected faults (sim_response.cc). Internal to the
// simulator; the Worker in sim_server.h drives it.
#pragma once

#include <llhttp.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "sim_handlers.h"
#include "sim_models.h"
#include "websocket.h"

namespace sluice::sim {

// Limits that keep one misbehaving client from exhausting memory. A request
// may hold up to kMaxHeaderBytes + kMaxBodyBytes, and at most kMaxQueued
// parsed requests wait behind an active response before reading pauses.
inline constexpr size_t kMaxHeaderBytes = 256 * 1024;
inline constexpr size_t kMaxBodyBytes = 64 * 1024 * 1024;
inline constexpr size_t kMaxQueued = 64;
// Output above this is left to drain before more tokens are generated or
// more input is read (WebSocket echo), bounding the per-connection buffer.
inline constexpr size_t kOutHighWater = 4 * 1024 * 1024;

class Worker;

// One accepted TCP connection. It is driven only by its Worker: OnEvents()
// for epoll readiness and OnTimer() for its deadline. It never deletes
// itself; after Close() it reports dead() and the worker destroys it once the
// current call has returned.
class Connection {
 public:
  Connection(Worker* worker, int fd, uint64_t id);
  ~Connection();

  void OnEvents(uint32_t events);
  void OnTimer();

  bool dead() const { return dead_; }
  uint64_t id() const { return id_; }
  uint64_t timer_seq() const { return timer_seq_; }
  uint64_t NextTimerSeq() { return ++timer_seq_; }
  // Closes without counting anything but the close (worker shutdown).
  void Close();
  // SO_LINGER {1, 0}: the next Close() sends RST instead of FIN and drops
  // whatever output the kernel still holds (X-Sim-Reset-After).
  void SetLingerZero();

 private:
  enum class State { kHttp, kWebSocket, kHung, kRawEcho };

  // A response in progress: a delayed or streamed generation, or a hang.
  struct Active {
    PlanKind kind;
    StreamSpec spec;
    int64_t start_ns;
    // Items are due from here: start_ns, or in model mode when the model
    // is loaded and a slot was free.
    int64_t gen_start_ns = 0;
    int next_item = 0;
    bool keep_alive = true;
    bool chunked = true;
    bool http10 = false;
    bool headers_sent = false;
    // Model mode: the queue place or slot, and whether it is still queued.
    std::unique_ptr<ModelLease> lease = nullptr;
    bool waiting = false;
  };

  // llhttp callbacks; parser->data is the Connection.
  static int OnMessageBegin(llhttp_t* parser);
  static int OnUrl(llhttp_t* parser, const char* at, size_t length);
  static int OnHeaderField(llhttp_t* parser, const char* at, size_t length);
  static int OnHeaderValue(llhttp_t* parser, const char* at, size_t length);
  static int OnHeaderValueComplete(llhttp_t* parser);
  static int OnHeadersComplete(llhttp_t* parser);
  static int OnBody(llhttp_t* parser, const char* at, size_t length);
  static int OnMessageComplete(llhttp_t* parser);
  static const llhttp_settings_t& Settings();

  // Reads until EAGAIN (or the read is paused), feeding the bytes on.
  void DoRead(bool drain);
  void OnBytes(const char* data, size_t length);
  void OnWebSocketBytes(const char* data, size_t length);
  // The peer sent FIN: finish what can be finished, then close.
  void OnPeerEof();
  // The peer reset or the socket failed.
  void OnPeerGone();
  void CountAbortIfActive();
  void MaybeResumeReading();
  bool ShouldPauseReading() const;

  void ProcessQueue();
  void Dispatch(HttpRequest request);
  // A streamed or delayed generation: scheduled on its model in model mode
  // (503 past --max_queue), then played out by RunActive.
  void StartGeneration(ResponsePlan plan, bool keep_alive, bool http10);
  // Model mode: true once the queued generation may run; otherwise polls
  // again on a timer.
  bool WaitForModel(int64_t now);
  // Advances the active response as far as time and buffer space allow.
  void RunActive();
  void FinishActive();

  void AppendSimpleResponse(const ResponsePlan& plan, bool keep_alive, bool http10);
  void AppendStreamHeaders();
  void AppendChunk(absl::string_view payload);
  size_t OutPending() const { return out_.size() - out_offset_; }
  // Sends buffered output; closes when it is all sent and close_when_flushed_.
  void Flush();

  Worker* worker_;
  int fd_;
  uint64_t id_;
  bool dead_ = false;
  bool count_close_ = true;
  State state_ = State::kHttp;
  uint64_t timer_seq_ = 0;

  llhttp_t parser_;
  bool parser_stopped_ = false;  // After a parse error or an Upgrade.
  HttpRequest current_;
  std::string header_field_;
  std::string header_value_;
  size_t header_bytes_ = 0;
  int callback_error_status_ = 0;  // 413/431 raised from a callback.
  std::deque<HttpRequest> queue_;
  std::string after_upgrade_;  // Bytes that followed an Upgrade request.

  std::optional<Active> active_;
  std::vector<std::string> payloads_;  // Scratch for BuildStreamItem.

  std::string out_;
  size_t out_offset_ = 0;
  bool close_when_flushed_ = false;
  bool drop_next_request_ = false;
  bool waiting_for_drain_ = false;
  bool read_paused_ = false;
  bool peer_eof_ = false;

  std::unique_ptr<WsFrameParser> ws_parser_;
  std::vector<WsFrame> ws_frames_;
  bool ws_closing_ = false;
};

}  // namespace sluice::sim
