#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/engine/slice.h"
#include "core/engine/stream.h"
#include "core/engine/timer.h"
#include "policy/ip_set.h"
#include "tls/tls_session.h"

namespace sluice::core {

class Shard;
class ClientConnection;

// On a drain (SIGTERM, restart), how long an idle connection may still send
// the request that is perhaps on its way before it is closed.
inline constexpr int64_t kDrainGraceNs = 1'000'000'000;

// What a listening socket serves.
enum class ListenerKind {
  kHttp,      // plain HTTP/1.1, and HTTP/2 with prior knowledge (h2c)
  kRedirect,  // plain HTTP/1.1 answering every request with 301 to https
  kTls,       // TLS, then HTTP/2 or HTTP/1.1 by ALPN
};

// The protocol side of a client connection (HTTP/1.1 or HTTP/2). It reads
// plaintext and writes plaintext through its ClientConnection, which owns it
// and destroys it when the socket is closed. Callbacks come from the worker
// loop; a session may call ClientConnection::Close from any of them but
// never deletes itself.
class ClientSession {
 public:
  virtual ~ClientSession() = default;
  virtual void Start() {}
  // Plaintext bytes from the client, in order.
  virtual void OnData(Slice data) = 0;
  // The client closed its side (0) or the read failed (-errno).
  virtual void OnReadEnd(int res) = 0;
  // Bytes left the send queue; see ClientConnection::drained().
  virtual void OnWriteProgress() = 0;
  // Sending failed; the connection writes nothing more.
  virtual void OnWriteError(int res) = 0;
  // The worker is draining (SIGTERM): finish what is in flight, then close.
  virtual void Drain() = 0;
  // Called once at the end of a loop turn after RequestFlush().
  virtual void Flush() {}
};

// One accepted client socket: the Stream, the transport layer under the
// protocol (nothing for plain HTTP), and the protocol session chosen by the
// listener kind, the h2c preface, or ALPN. Owned by itself: it deletes
// itself once its Stream is closed.
class ClientConnection final : public StreamHandler, public Flushable {
 public:
  // `tls` is the context for a kTls listener (null otherwise).
  ClientConnection(Shard* shard, int fd, policy::IpAddress peer, ListenerKind kind,
                   std::shared_ptr<const tls::TlsContext> tls = nullptr);
  ~ClientConnection() override;

  void Start();
  // Accepted past --max_connections: its requests are answered 503 with
  // Retry-After and the connection is closed after the first answer.
  void MarkOverLimit() { over_limit_ = true; }
  bool over_limit() const { return over_limit_; }
  // The worker is draining: sessions finish their requests, then close.
  void Drain();

  // Plaintext output, sent in order. Same ownership rules as Stream::Write*.
  // On TLS connections the pieces of one loop turn are sealed together at
  // its end (an HTTP/1.1 chunk's size line, payload and CRLF, or an HTTP/2
  // frame header and payload, share one record).
  void Write(Slice s);
  void WriteStatic(std::string_view s);
  void WriteCopy(std::string_view s);
  void WriteOwned(std::string s);

  // Backpressure of the send queue (see Stream), plaintext waiting for
  // encryption included.
  bool congested() const { return stream_.congested() || plain_bytes_ > kHighWatermark; }
  bool drained() const { return stream_.drained() && plain_bytes_ <= kLowWatermark; }
  bool write_idle() const {
    return stream_.write_idle() && plain_.empty() && (!tls_ || !tls_->HasOutput());
  }

  void StartReading() { stream_.StartReading(); }
  void StopReading() { stream_.StopReading(); }
  bool reading() const { return stream_.reading(); }
  // See Stream::PeekReadEnd.
  int PeekReadEnd() const { return stream_.PeekReadEnd(); }
  // See Stream::PeerHungUp.
  bool PeerHungUp() const { return stream_.PeerHungUp(); }

  // Aborts: cancels everything and closes the socket; the connection (and
  // its session) is destroyed once nothing is in flight.
  void Close() { stream_.Close(); }
  bool closing() const { return stream_.closing(); }
  // Ends the connection politely once everything queued is sent: TLS
  // close_notify, then FIN, then reads and drops what the client still
  // sends until it closes too (at most a couple of seconds). Closing with
  // unread input would make the kernel send RST, which can destroy a
  // response (a 413, a GOAWAY) the client has not read yet; nginx's
  // lingering_close exists for the same reason.
  void CloseGracefully();

  // Asks for ClientSession::Flush at the end of this loop turn.
  void RequestFlush();

  // What the connection is doing, as nginx's stub_status counts it:
  // reading a request head (or the TLS handshake), writing a response (a
  // request is in progress), or waiting (idle keepalive). Sessions set it;
  // the worker's gauges follow.
  enum class Phase { kReading, kWriting, kWaiting };
  void SetPhase(Phase phase);

  Shard* shard() const { return shard_; }
  // Charged for the ring buffers this connection and its upstream links
  // hold (see BufferAccount).
  BufferAccount* buffer_account() const { return account_; }
  // The process-unique connection number ("*N" in log lines).
  uint64_t number() const { return number_; }
  const std::string& client_addr() const { return client_addr_; }
  // The TCP peer, parsed once at accept (the policy's input).
  const policy::IpAddress& peer() const { return peer_; }
  ListenerKind kind() const { return kind_; }
  bool secure() const { return kind_ == ListenerKind::kTls; }
  // The TLS session of a kTls connection, else null.
  const tls::TlsSession* tls() const { return tls_.get(); }
  // "https" or "http", for X-Forwarded-Proto.
  std::string_view scheme() const { return secure() ? "https" : "http"; }

 private:
  // StreamHandler
  void OnData(Slice data) override;
  void OnReadEnd(int res) override;
  void OnWriteProgress() override;
  void OnWriteError(int res) override;
  void OnClosed() override;
  // Flushable
  void Flush() override;

  // Plaintext to the session, choosing it first when none is running.
  void Deliver(Slice data);
  void StartSession(std::unique_ptr<ClientSession> session);
  void OnCiphertext(Slice data);
  void SealPlaintext();
  void SendTlsOutput();
  // Sends what is queued (a TLS alert), then closes.
  void CloseAfterWrite();

  Shard* shard_;
  uint64_t number_;
  Phase phase_ = Phase::kReading;
  Stream stream_;
  BufferAccount* account_ = nullptr;
  policy::IpAddress peer_;
  std::string client_addr_;
  ListenerKind kind_;
  std::unique_ptr<ClientSession> session_;
  std::unique_ptr<tls::TlsSession> tls_;
  std::vector<Slice> plain_;  // plaintext written this turn (TLS only)
  size_t plain_bytes_ = 0;
  SliceWriter copies_{1024};  // small plaintext copies of this turn
  Timer handshake_timer_;
  Timer linger_timer_;
  // Closes a connection that has no session yet: a plain one that has not
  // sent enough to choose HTTP/1.1 or h2c, or any on a drain.
  Timer presession_timer_;
  std::vector<Slice> sniffed_;  // h2c preface detection on plain listeners
  size_t sniffed_bytes_ = 0;
  bool flush_pending_ = false;
  bool draining_ = false;
  bool close_when_written_ = false;
  bool lingering_ = false;
  bool over_limit_ = false;
};

}  // namespace sluice::core
