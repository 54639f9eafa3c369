// A proxy shard driven turn by turn on the test's thread, with the test
// playing both the client and the upstream (Ollama) over plain
// non-blocking sockets: a client is one end of a socketpair whose other end
// becomes a ClientConnection (as Worker::OnAccepted makes one), and the
// upstream is a loopback listening socket the test accepts from. The loop
// runs on the poll backend (or on io_uring, to hold the two to the same
// behaviour) and is stepped with Loop::Turn; nothing runs on another
// thread, so every step is deterministic and bounded in turns.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "core/engine/loop.h"
#include "core/observe/observability.h"
#include "core/proxy/client_connection.h"
#include "core/server/config.h"
#include "core/server/shard.h"
#include "core/server/snapshot_slot.h"
#include "gtest/gtest.h"
#include "policy/limiter.h"
#include "policy/policy.h"

namespace sluice::core {
class UpstreamPool;
}  // namespace sluice::core

namespace sluice::core::proxy_test {

// The backend the shard's loop runs on: every proxy test runs on both, so
// the poll backend is checked against io_uring.
enum class Engine { kPoll, kUring };
inline std::string EngineName(Engine e) { return e == Engine::kPoll ? "poll" : "uring"; }
#define SLUICE_ON_EVERY_ENGINE(Suite)                                                \
  INSTANTIATE_TEST_SUITE_P(                                                          \
      Engines, Suite,                                                                \
      ::testing::Values(::sluice::core::proxy_test::Engine::kPoll,                   \
                        ::sluice::core::proxy_test::Engine::kUring),                 \
      [](const ::testing::TestParamInfo<::sluice::core::proxy_test::Engine>& info) { \
        return ::sluice::core::proxy_test::EngineName(info.param);                   \
      })

// Concatenates strings and integers (std::string_view throughout, which
// this abseil build does not take for absl::string_view).
inline void AppendPart(std::string* out, std::string_view s) { out->append(s); }
template <typename T>
requires std::is_integral_v<T>
void AppendPart(std::string* out, T v) { out->append(std::to_string(v)); }
template <typename... T>
std::string Cat(const T&... parts) {
  std::string out;
  (AppendPart(&out, parts), ...);
  return out;
}

// One end of a socket held by the test: what it received so far, and
// whether the other side closed.
struct Peer {
  explicit Peer(int fd) : fd(fd) {}
  ~Peer() { Close(); }
  Peer(const Peer&) = delete;
  Peer& operator=(const Peer&) = delete;

  // Reads what is readable now, unless `reading` is off.
  void Pump();
  // Writes as much of `bytes` as the socket takes now; the count written.
  size_t WriteSome(std::string_view bytes);
  // Returns what was received so far and forgets it.
  std::string Take();
  void Close();
  bool closed() const { return eof || error != 0; }

  int fd;
  std::string in;
  bool eof = false;
  int error = 0;        // errno of a failed read (ECONNRESET)
  bool reading = true;  // off: a peer that does not read (backpressure)
};

// The length of the first complete HTTP/1.1 message at the start of
// `bytes` (a head with a Content-Length body, a chunked body, or no body),
// or 0 when it is not complete yet. A response without framing fields has
// no body here (the tests never rely on a body delimited by close), nor
// has a 1xx, 204 or 304.
size_t MessageLength(std::string_view bytes);
// The body of one complete message (de-chunked).
std::string MessageBody(std::string_view message);
// The value of the first field `name` (case-insensitive) of a message's
// head, or "(absent)".
std::string HeaderValue(std::string_view message, std::string_view name);
// The status code of a response, or 0.
int StatusOf(std::string_view response);
// One chunk as the proxy frames it: "<hex size>\r\n<data>\r\n".
std::string Chunk(std::string_view data);

class ProxyHarness {
 public:
  explicit ProxyHarness(Engine engine = Engine::kPoll);
  ~ProxyHarness();
  ProxyHarness(const ProxyHarness&) = delete;
  ProxyHarness& operator=(const ProxyHarness&) = delete;

  // Adjust before Start.
  Config& config() { return config_; }
  Loop::Options& loop_options() { return loop_options_; }
  // The access policy: no authentication and no rate limits unless a test
  // sets them.
  policy::PolicyOptions& policy_options() { return policy_options_; }

  // Builds the loop and the shard; an error where the engine cannot run
  // here (io_uring refused in a sandbox).
  absl::Status Start();

  Loop* loop() { return loop_.get(); }
  Shard* shard() { return shard_.get(); }
  // The shard's pool of links to the one backend, the test's listener.
  UpstreamPool& pool();

  // One loop turn waiting at most `max_wait_ns` for an event, then every
  // peer reads what reached it.
  void Turn(int64_t max_wait_ns = 1'000'000);
  // Turns until `done` holds (asked before each turn); false if it did not
  // within `max_turns`.
  bool RunUntil(const std::function<bool()>& done, int max_turns = 500);

  // A new client connection on a listener of `kind`: the test holds the
  // returned end.
  Peer* Connect(ListenerKind kind = ListenerKind::kHttp);
  // Writes all of `bytes` to `peer`, turning the loop while the socket is
  // full; false if it did not take them within `max_turns`.
  bool Send(Peer* peer, std::string_view bytes, int max_turns = 500);
  // Turns until `peer` holds one complete HTTP/1.1 message and takes it;
  // empty if none came within `max_turns`.
  std::string ReadMessage(Peer* peer, int max_turns = 500);

  // The upstream: accepts the next connection the proxy made to it (null
  // if none came within `max_turns`); whether one waits in the backlog.
  Peer* AcceptUpstream(int max_turns = 500);
  bool UpstreamPending();
  // From now on connections to the upstream are refused.
  void CloseUpstreamListener();
  int upstream_port() const { return upstream_port_; }
  // How many connections the test accepted from the proxy so far.
  int upstream_accepted() const { return upstream_accepted_; }

  // Closes every peer, lets the proxy close its side, and checks that no
  // client connection or upstream link is left; then frees the shard and
  // the loop. Run by the destructor if not before.
  void Stop();

 private:
  Peer* Adopt(int fd);

  Engine engine_;
  Loop::Options loop_options_;
  policy::PolicyOptions policy_options_;
  PolicySlot slot_;
  policy::RateTable rates_{4096};
  policy::ConcurrencyTable conns_{4096};
  Observability obs_;
  Config config_;
  int upstream_listener_ = -1;
  int upstream_port_ = 0;
  int upstream_accepted_ = 0;
  std::unique_ptr<Loop> loop_;
  std::unique_ptr<Shard> shard_;
  std::vector<std::unique_ptr<Peer>> peers_;
};

}  // namespace sluice::core::proxy_test

// Starts `harness`, or skips the test where the engine cannot run.
#define SLUICE_START_PROXY(harness)                       \
  do {                                                    \
    absl::Status start_status = (harness).Start();        \
    if (!start_status.ok()) GTEST_SKIP() << start_status; \
  } while (0)
