#include "bench/tls_client.h"

#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace sluice::bench {

bool ParseAddress(const std::string& host, int port, sockaddr_in* out) {
  if (port <= 0 || port > 65535) return false;
  *out = sockaddr_in{};
  out->sin_family = AF_INET;
  out->sin_port = htons(static_cast<uint16_t>(port));
  return inet_pton(AF_INET, host.c_str(), &out->sin_addr) == 1;
}

uint64_t RaiseFdLimit() {
  rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
    getrlimit(RLIMIT_NOFILE, &limit);
  }
  return limit.rlim_cur;
}

SSL_CTX* NewClientContext(const std::vector<std::string>& alpn, const std::string& ca_file) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_method());
  if (ctx == nullptr) {
    fprintf(stderr, "SSL_CTX_new failed\n");
    exit(1);
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  // No resumption: a load client that resumed would measure the cheap path.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  std::string wire;
  for (const std::string& p : alpn) {
    wire.push_back(static_cast<char>(p.size()));
    wire += p;
  }
  if (!wire.empty() && SSL_CTX_set_alpn_protos(ctx, reinterpret_cast<const uint8_t*>(wire.data()),
                                               wire.size()) != 0) {
    fprintf(stderr, "SSL_CTX_set_alpn_protos failed\n");
    exit(1);
  }
  if (ca_file.empty()) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  } else {
    if (SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr) != 1) {
      fprintf(stderr, "cannot load CA file %s\n", ca_file.c_str());
      exit(1);
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  }
  return ctx;
}

int StartConnect(const sockaddr_in& addr) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0 &&
      errno != EINPROGRESS) {
    int err = errno;
    close(fd);
    return -err;
  }
  return fd;
}

int ConnectResult(int fd) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
  return err;
}

TlsSocket::TlsSocket(SSL_CTX* ctx, int fd, const std::string& sni) : fd_(fd), ssl_(SSL_new(ctx)) {
  SSL_set_fd(ssl_, fd_);
  SSL_set_connect_state(ssl_);
  if (!sni.empty()) SSL_set_tlsext_host_name(ssl_, sni.c_str());
}

TlsSocket::~TlsSocket() {
  if (ssl_ != nullptr) SSL_free(ssl_);
  if (fd_ >= 0) close(fd_);
}

void TlsSocket::CloseNow() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

TlsSocket::Result TlsSocket::Classify(int ret) {
  int err = SSL_get_error(ssl_, ret);
  switch (err) {
    case SSL_ERROR_WANT_READ:
      return Result::kWantRead;
    case SSL_ERROR_WANT_WRITE:
      return Result::kWantWrite;
    case SSL_ERROR_ZERO_RETURN:
      return Result::kClosed;
    case SSL_ERROR_SYSCALL:
      if (errno == 0 || errno == ECONNRESET) {
        last_error_ = errno == 0 ? "EOF" : strerror(errno);
        ERR_clear_error();
        return Result::kClosed;
      }
      last_error_ = strerror(errno);
      ERR_clear_error();
      return Result::kError;
    default: {
      char text[256];
      ERR_error_string_n(ERR_get_error(), text, sizeof(text));
      last_error_ = text;
      ERR_clear_error();
      return Result::kError;
    }
  }
}

TlsSocket::Result TlsSocket::Handshake() {
  errno = 0;
  int ret = SSL_do_handshake(ssl_);
  if (ret == 1) return Result::kDone;
  return Classify(ret);
}

std::string_view TlsSocket::Alpn() const {
  const uint8_t* data = nullptr;
  unsigned len = 0;
  SSL_get0_alpn_selected(ssl_, &data, &len);
  return {reinterpret_cast<const char*>(data), len};
}

TlsSocket::Result TlsSocket::Read(char* buf, size_t len, size_t* n) {
  errno = 0;
  int ret = SSL_read(ssl_, buf, static_cast<int>(std::min<size_t>(len, 1 << 30)));
  if (ret > 0) {
    *n = static_cast<size_t>(ret);
    return Result::kDone;
  }
  *n = 0;
  return Classify(ret);
}

TlsSocket::Result TlsSocket::Write(std::string_view data) {
  out_.append(data);
  return Flush();
}

TlsSocket::Result TlsSocket::Flush() {
  while (!out_.empty()) {
    errno = 0;
    int ret =
        SSL_write(ssl_, out_.data(), static_cast<int>(std::min<size_t>(out_.size(), 1 << 20)));
    if (ret <= 0) {
      Result r = Classify(ret);
      return r == Result::kWantRead ? Result::kWantWrite : r;
    }
    out_.erase(0, static_cast<size_t>(ret));
  }
  return Result::kDone;
}

}  // namespace sluice::bench
