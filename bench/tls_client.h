// Client-side helpers shared by the TLS load tools in bench/ (h2_relay_delay,
// cancel_latency, tls_handshakes, idle_conns): BoringSSL client contexts,
// non-blocking connects, a TLS connection over a socket with an outbound
// buffer. Clocks and percentiles are in bench/stats.h.
//
// These are load generators, not part of sluice: the TLS object reads and
// writes the socket itself (SSL_set_fd), which is the simplest thing for a
// client; the proxy's own TLS runs over buffers (tls/).
#pragma once

#include <netinet/in.h>
#include <openssl/ssl.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::bench {

// Parses an IPv4 `host` and `port` into `out`; false if either is invalid.
bool ParseAddress(const std::string& host, int port, sockaddr_in* out);

// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft
// limit.
uint64_t RaiseFdLimit();

// A client SSL_CTX: TLS 1.2 and 1.3, the given ALPN list (e.g. {"h2"}), no
// client session cache (every handshake is a full one), no certificate
// verification unless `ca_file` is non-empty (then the chain must verify
// against it). Dies with a message on failure. The caller owns the result
// (SSL_CTX_free).
SSL_CTX* NewClientContext(const std::vector<std::string>& alpn, const std::string& ca_file);

// Starts a non-blocking TCP connect to `addr` with TCP_NODELAY. Returns the
// socket (connected or in progress) or -errno.
int StartConnect(const sockaddr_in& addr);

// For a socket whose connect was in progress and is now writable: 0 when
// connected, else the errno of the failure.
int ConnectResult(int fd);

// One TLS client connection over a non-blocking socket. Owns the socket and
// the SSL object; the destructor closes both (without close_notify).
class TlsSocket {
 public:
  enum class Result { kDone, kWantRead, kWantWrite, kClosed, kError };

  // Takes ownership of `fd`. `sni` may be empty.
  TlsSocket(SSL_CTX* ctx, int fd, const std::string& sni);
  ~TlsSocket();
  TlsSocket(const TlsSocket&) = delete;
  TlsSocket& operator=(const TlsSocket&) = delete;

  int fd() const { return fd_; }
  SSL* ssl() const { return ssl_; }

  // Advances the handshake. kDone once it is complete.
  Result Handshake();

  // The ALPN protocol the server chose ("" if none); valid after kDone.
  std::string_view Alpn() const;

  // Reads decrypted bytes into `buf`; *n is the count when kDone. kWantRead
  // means nothing more is available now; kClosed is a clean or abrupt EOF.
  Result Read(char* buf, size_t len, size_t* n);

  // Queues `data` behind anything already pending and writes as much as the
  // socket takes. kWantWrite: bytes remain (wait for EPOLLOUT/POLLOUT and
  // call Flush); kDone: nothing pending.
  Result Write(std::string_view data);
  Result Flush();
  bool HasPending() const { return !out_.empty(); }

  // Closes the socket now (no close_notify), as a client that goes away does.
  void CloseNow();

  // The last error as text (SSL error queue or errno), for diagnostics.
  std::string LastError() const { return last_error_; }

 private:
  Result Classify(int ret);

  int fd_;
  SSL* ssl_;
  std::string out_;
  std::string last_error_;
};

}  // namespace sluice::bench
