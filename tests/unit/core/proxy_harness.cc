#include "tests/unit/core/proxy_harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "core/engine/backend.h"
#include "core/upstream/backend_set.h"
#include "core/upstream/upstream_pool.h"
#include "gtest/gtest.h"
#include "http/serialize.h"

namespace sluice::core::proxy_test {

void Peer::Pump() {
  if (fd < 0 || !reading || closed()) return;
  char buf[65536];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      in.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n == 0) {
      eof = true;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      error = errno;
    }
    return;
  }
}

size_t Peer::WriteSome(std::string_view bytes) {
  size_t done = 0;
  while (fd >= 0 && done < bytes.size()) {
    ssize_t n = ::send(fd, bytes.data() + done, bytes.size() - done, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

std::string Peer::Take() {
  std::string out;
  out.swap(in);
  return out;
}

void Peer::Close() {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

namespace {

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

std::string_view Strip(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// A number made of digits of `base` only, the whole of `s`.
bool ParseNumber(std::string_view s, int base, uint64_t* out) {
  if (s.empty() || s.size() > 16) return false;
  std::string text(s);
  char* end = nullptr;
  *out = std::strtoull(text.c_str(), &end, base);
  return end == text.c_str() + text.size() && text.front() != '-' && text.front() != '+';
}

// The head of a message and where its body starts, or npos.
size_t HeadEnd(std::string_view bytes) {
  size_t end = bytes.find("\r\n\r\n");
  return end == std::string_view::npos ? end : end + 4;
}

// The end of a chunked body starting at `pos` (after its last-chunk and
// empty trailer section), or npos; appends the payload to `body`.
size_t ChunkedEnd(std::string_view bytes, size_t pos, std::string* body) {
  for (;;) {
    size_t line_end = bytes.find("\r\n", pos);
    if (line_end == std::string_view::npos) return line_end;
    std::string_view size_text = bytes.substr(pos, line_end - pos);
    size_text = size_text.substr(0, size_text.find(';'));
    uint64_t size = 0;
    if (!ParseNumber(size_text, 16, &size)) return std::string_view::npos;
    pos = line_end + 2;
    if (size == 0) {
      size_t trailer_end = bytes.find("\r\n", pos);
      // Trailers are not used here: the empty line follows at once.
      return trailer_end == pos ? pos + 2 : std::string_view::npos;
    }
    if (bytes.size() < pos + size + 2) return std::string_view::npos;
    if (body) body->append(bytes.substr(pos, size));
    pos += size + 2;
  }
}

}  // namespace

std::string HeaderValue(std::string_view message, std::string_view name) {
  const size_t head_end = HeadEnd(message);
  std::string_view head =
      message.substr(0, head_end == std::string_view::npos ? message.size() : head_end);
  size_t pos = head.find("\r\n");
  while (pos != std::string_view::npos && pos + 2 < head.size()) {
    pos += 2;
    size_t end = head.find("\r\n", pos);
    if (end == std::string_view::npos) break;
    std::string_view line = head.substr(pos, end - pos);
    size_t colon = line.find(':');
    if (colon != std::string_view::npos && http::EqualsIgnoreCase(line.substr(0, colon), name)) {
      return std::string(Strip(line.substr(colon + 1)));
    }
    pos = end;
  }
  return "(absent)";
}

size_t MessageLength(std::string_view bytes) {
  const size_t head_end = HeadEnd(bytes);
  if (head_end == std::string_view::npos) return 0;
  std::string_view head = bytes.substr(0, head_end);
  const bool response = StartsWith(head, "HTTP/");
  if (response) {
    const int status = StatusOf(head);
    if (status < 200 || status == 204 || status == 304) return head_end;
  }
  if (http::EqualsIgnoreCase(HeaderValue(head, "transfer-encoding"), "chunked")) {
    size_t end = ChunkedEnd(bytes, head_end, nullptr);
    return end == std::string_view::npos ? 0 : end;
  }
  uint64_t length = 0;
  std::string cl = HeaderValue(head, "content-length");
  if (cl != "(absent)" && !ParseNumber(cl, 10, &length)) return 0;
  return bytes.size() >= head_end + length ? head_end + length : 0;
}

std::string MessageBody(std::string_view message) {
  const size_t head_end = HeadEnd(message);
  if (head_end == std::string_view::npos) return "";
  if (http::EqualsIgnoreCase(HeaderValue(message, "transfer-encoding"), "chunked")) {
    std::string body;
    ChunkedEnd(message, head_end, &body);
    return body;
  }
  return std::string(message.substr(head_end));
}

int StatusOf(std::string_view response) {
  uint64_t status = 0;
  if (!StartsWith(response, "HTTP/1.") || response.size() < 12) return 0;
  if (!ParseNumber(response.substr(9, 3), 10, &status)) return 0;
  return static_cast<int>(status);
}

std::string Chunk(std::string_view data) {
  char hdr[http::kMaxChunkHeader];
  std::string out(hdr, http::FormatChunkHeader(data.size(), hdr));
  out.append(data);
  out.append("\r\n");
  return out;
}

ProxyHarness::ProxyHarness(Engine engine) : engine_(engine) {
  // Small buffers, so a few kilobytes already span several receives, and
  // enough of them that ring pressure never pauses a stream by itself.
  loop_options_.recv_buffers = 256;
  loop_options_.recv_buffer_size = 4096;
  loop_options_.ring_entries = 256;

  upstream_listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(upstream_listener_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      ::listen(upstream_listener_, 64) == 0) {
    socklen_t len = sizeof(a);
    ::getsockname(upstream_listener_, reinterpret_cast<sockaddr*>(&a), &len);
    upstream_port_ = ntohs(a.sin_port);
  }
  BackendConfig backend;
  backend.name = "127.0.0.1:" + std::to_string(upstream_port_);
  memcpy(&backend.addr.storage, &a, sizeof(a));
  backend.addr.len = sizeof(a);
  backend.host_header = "ollama.test";
  config_.backends.push_back(std::move(backend));
  policy_options_.auth = "none";
  policy_options_.rate_generation = "off";
  policy_options_.rate_api = "off";
  config_.policy_slot = &slot_;
  config_.rate_table = &rates_;
  config_.conn_table = &conns_;
  config_.obs = &obs_;
}

ProxyHarness::~ProxyHarness() {
  Stop();
  if (upstream_listener_ >= 0) ::close(upstream_listener_);
}

absl::Status ProxyHarness::Start() {
  if (upstream_port_ == 0) return absl::InternalError("no loopback listener for the upstream");
  absl::StatusOr<std::shared_ptr<const policy::Policy>> p =
      policy::Policy::Build(policy_options_, 1);
  if (!p.ok()) return p.status();
  slot_.Set(*p);
  config_.recv_buffers = loop_options_.recv_buffers;
  config_.recv_buffer_size = loop_options_.recv_buffer_size;
  loop_ = std::make_unique<Loop>(loop_options_,
                                 engine_ == Engine::kPoll ? NewPollBackend() : NewUringBackend());
  if (absl::Status s = loop_->Init(); !s.ok()) {
    loop_.reset();
    return s;
  }
  shard_ = std::make_unique<Shard>(0, config_, loop_.get());
  return absl::OkStatus();
}

void ProxyHarness::Turn(int64_t max_wait_ns) {
  loop_->Turn(max_wait_ns);
  for (auto& p : peers_) p->Pump();
}

bool ProxyHarness::RunUntil(const std::function<bool()>& done, int max_turns) {
  for (auto& p : peers_) p->Pump();
  for (int i = 0; i < max_turns; ++i) {
    if (done()) return true;
    Turn();
  }
  return done();
}

UpstreamPool& ProxyHarness::pool() { return *shard_->backends().pools().front(); }

Peer* ProxyHarness::Adopt(int fd) {
  peers_.push_back(std::make_unique<Peer>(fd));
  return peers_.back().get();
}

Peer* ProxyHarness::Connect(ListenerKind kind) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return nullptr;
  // The proxy's end as an accept hands it over (blocking, close-on-exec);
  // the test's end is used with MSG_DONTWAIT.
  auto* conn =
      new ClientConnection(shard_.get(), sv[0], *policy::IpAddress::Parse("127.0.0.1"), kind);
  conn->Start();
  return Adopt(sv[1]);
}

bool ProxyHarness::Send(Peer* peer, std::string_view bytes, int max_turns) {
  size_t done = peer->WriteSome(bytes);
  for (int i = 0; i < max_turns && done < bytes.size(); ++i) {
    Turn();
    done += peer->WriteSome(bytes.substr(done));
  }
  return done == bytes.size();
}

std::string ProxyHarness::ReadMessage(Peer* peer, int max_turns) {
  if (!RunUntil([&] { return MessageLength(peer->in) > 0; }, max_turns)) return "";
  const size_t n = MessageLength(peer->in);
  std::string message = peer->in.substr(0, n);
  peer->in.erase(0, n);
  return message;
}

bool ProxyHarness::UpstreamPending() {
  if (upstream_listener_ < 0) return false;
  pollfd p{upstream_listener_, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

Peer* ProxyHarness::AcceptUpstream(int max_turns) {
  if (!RunUntil([&] { return UpstreamPending(); }, max_turns)) return nullptr;
  int fd = ::accept4(upstream_listener_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) return nullptr;
  ++upstream_accepted_;
  return Adopt(fd);
}

void ProxyHarness::CloseUpstreamListener() {
  if (upstream_listener_ >= 0) ::close(upstream_listener_);
  upstream_listener_ = -1;
}

void ProxyHarness::Stop() {
  if (!shard_) {
    loop_.reset();
    return;
  }
  // Every peer goes away: client connections see their client close and
  // links (idle or in use) see the upstream close.
  for (auto& p : peers_) p->Close();
  auto settled = [this] { return shard_->connections().empty() && pool().open_count() == 0; };
  RunUntil(settled, 1000);
  EXPECT_TRUE(settled()) << shard_->connections().size() << " client connection(s) and "
                         << pool().open_count() << " upstream link(s) left open";
  // Whatever is left closes by force, so the loop ends with nothing in flight.
  std::vector<ClientConnection*> left(shard_->connections().begin(), shard_->connections().end());
  for (ClientConnection* c : left) c->Close();
  pool().CloseIdle();
  RunUntil(settled, 1000);
  peers_.clear();
  shard_.reset();
  loop_.reset();
}

}  // namespace sluice::core::proxy_test
