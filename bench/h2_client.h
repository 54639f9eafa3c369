// An HTTP/2 client connection for the load tools: an nghttp2 client session
// exchanging bytes (mem_recv / mem_send) with a TlsSocket whose handshake
// has completed with ALPN "h2". Single-threaded; the owner drives it from
// its event loop: OnReadable() when the socket is readable, Flush() after
// submitting and when the socket turns writable while WantsWrite().
#pragma once

#include <nghttp2/nghttp2.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "bench/tls_client.h"

namespace sluice::bench {

// Receives one stream's events. Must outlive the stream (until OnClose).
class H2StreamSink {
 public:
  virtual ~H2StreamSink() = default;
  // The response's :status.
  virtual void OnStatus(int status) = 0;
  // A piece of the response body; `read_time_us` is CLOCK_REALTIME right
  // after the SSL_read that returned the bytes. `data` is valid only
  // during the call.
  virtual void OnData(std::string_view data, int64_t read_time_us) = 0;
  // The stream is closed; `error_code` is the RST_STREAM/GOAWAY code, 0
  // for a normal end.
  virtual void OnClose(uint32_t error_code) = 0;
};

class H2ClientConn {
 public:
  using Header = std::pair<std::string, std::string>;

  // Takes a TlsSocket after its handshake. Sends the preface and a
  // SETTINGS frame (initial stream window 1 MiB) and raises the connection
  // window to 16 MiB, so flow control never holds a stream back.
  explicit H2ClientConn(std::unique_ptr<TlsSocket> tls);
  ~H2ClientConn();
  H2ClientConn(const H2ClientConn&) = delete;
  H2ClientConn& operator=(const H2ClientConn&) = delete;

  int fd() const { return tls_->fd(); }
  TlsSocket& tls() { return *tls_; }

  // Submits a request (`headers` include the pseudo-headers) with `body`
  // (empty: no body). nghttp2 queues it locally while the server's
  // SETTINGS_MAX_CONCURRENT_STREAMS is reached. Returns the stream id, or a
  // negative nghttp2 error. Call Flush() afterwards.
  int32_t Submit(const std::vector<Header>& headers, std::string body, H2StreamSink* sink);

  // Queues RST_STREAM(CANCEL) for `stream_id`; call Flush() afterwards.
  bool Cancel(int32_t stream_id);

  // Queues GOAWAY(NO_ERROR); call Flush() afterwards.
  void GoAway();

  // Reads everything the socket has, feeding it to the session. False when
  // the connection is finished (EOF, TLS or protocol error).
  bool OnReadable();

  // Serialises pending frames and writes them. False on a write error.
  bool Flush();

  // Bytes remain unwritten: wait for writability, then Flush().
  bool WantsWrite() const { return tls_->HasPending(); }

  // The server's first SETTINGS frame has arrived.
  bool settings_received() const { return settings_received_; }

  // Streams submitted and not yet closed.
  size_t open_streams() const { return live_.size(); }

  std::string LastError() const { return last_error_; }

 private:
  struct Stream;

  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                      size_t namelen, const uint8_t* value, size_t valuelen, uint8_t flags,
                      void* user_data);
  static int OnDataChunk(nghttp2_session*, uint8_t flags, int32_t stream_id, const uint8_t* data,
                         size_t len, void* user_data);
  static int OnStreamClose(nghttp2_session*, int32_t stream_id, uint32_t error_code,
                           void* user_data);
  static int OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* user_data);
  static ssize_t ReadBody(nghttp2_session*, int32_t stream_id, uint8_t* buf, size_t length,
                          uint32_t* data_flags, nghttp2_data_source* source, void* user_data);

  std::unique_ptr<TlsSocket> tls_;
  nghttp2_session* session_ = nullptr;
  int64_t read_time_us_ = 0;
  bool settings_received_ = false;
  absl::flat_hash_set<Stream*> live_;  // owned; freed on close or here
  bool closing_ = false;
  std::string last_error_;
  char buf_[32 * 1024];
};

}  // namespace sluice::bench
