// Integration-test harness: start the real `sluice` and `ollama-sim`
// binaries on loopback port 0, talk raw HTTP/1.1 to them, read the
// simulator's counters, and run shell commands (curl, node).
//
// Everything here blocks with an explicit deadline; nothing waits forever.
// Traffic stays on 127.0.0.1.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace sluice::integration {

// CLOCK_REALTIME in microseconds: the clock of the simulator's "sim_t_us"
// and "last_abort_us" fields.
int64_t RealtimeMicros();

// Case-insensitive substring test (the Debian abseil lacks
// absl::StrContainsIgnoreCase).
bool ContainsIgnoreCase(absl::string_view haystack, absl::string_view needle);

// How a child process ended.
struct ExitInfo {
  bool exited = false;  // Normal exit; `code` is valid.
  int code = -1;
  int signal = 0;  // Killed by this signal when !exited.
};

// A child process whose stdout and stderr go to temporary files (so it can
// never block on a full pipe). The destructor terminates it (SIGTERM, then
// SIGKILL after a grace period) and removes the files.
class ChildProcess {
 public:
  // Starts `path` with `args` (argv[1..]). `extra_env` entries
  // ("NAME=value") are added to the inherited environment.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Spawn(
      const std::string& path, const std::vector<std::string>& args,
      const std::vector<std::string>& extra_env = {});

  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess();

  // Waits until stdout holds a line with "listening on http://HOST:PORT"
  // or "listening on https://HOST:PORT" and records HOST and PORT (the
  // https one as tls_port()). Fails (with the child's stderr in the
  // message) when the deadline passes or the child exits first.
  absl::Status WaitListening(absl::Duration timeout);

  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  // The port of a "listening on https://HOST:PORT" line (sluice with
  // --listen_tls), or 0.
  int tls_port() const { return tls_port_; }
  const std::string& host() const { return host_; }
  // The whole stdout / stderr written so far.
  std::string Stdout() const;
  std::string Stderr() const;

  // Sends `sig`; false when the child is already reaped.
  bool Signal(int sig);
  // Waits up to `timeout` for the child to exit and reaps it. nullopt on
  // timeout (the child keeps running).
  std::optional<ExitInfo> WaitExit(absl::Duration timeout);
  // SIGTERM, waits up to `grace`, then SIGKILL and reaps. Idempotent.
  ExitInfo Terminate(absl::Duration grace = absl::Seconds(3));
  bool running() const { return !exit_.has_value(); }

 private:
  ChildProcess() = default;

  pid_t pid_ = -1;
  std::string stdout_path_;
  std::string stderr_path_;
  std::optional<ExitInfo> exit_;
  std::string host_;
  int port_ = 0;
  int tls_port_ = 0;
};

// Paths of the binaries under test (compile-time definitions from CMake).
std::string SluiceBinary();
std::string OllamaSimBinary();

// Starts ollama-sim on 127.0.0.1:0 with --threads=1 (unless `extra_args`
// sets --listen / --threads), and waits for its "listening" line (5 s).
absl::StatusOr<std::unique_ptr<ChildProcess>> StartSim(
    const std::vector<std::string>& extra_args = {});

// Starts sluice on 127.0.0.1:0 in front of 127.0.0.1:`upstream_port`, with
// --threads=1 (unless `extra_args` sets --listen_http / --upstream /
// --threads), and waits for its "listening" line (5 s).
absl::StatusOr<std::unique_ptr<ChildProcess>> StartSluice(
    int upstream_port, const std::vector<std::string>& extra_args = {});
// The same with another copy of the binary (a restart test upgrades it).
absl::StatusOr<std::unique_ptr<ChildProcess>> StartSluiceAt(
    const std::string& binary, int upstream_port, const std::vector<std::string>& extra_args = {});

// Runs a program to completion with stdout and stderr captured apart.
struct CommandResult {
  ExitInfo exit;
  bool timed_out = false;  // Killed because it ran past the timeout.
  std::string out;
  std::string err;
};
CommandResult RunProgram(const std::string& path, const std::vector<std::string>& args,
                         absl::Duration timeout, const std::vector<std::string>& extra_env = {});
// Runs `command` with /bin/sh -c.
CommandResult RunShell(const std::string& command, absl::Duration timeout,
                       const std::vector<std::string>& extra_env = {});

// Single-quotes `s` for /bin/sh.
std::string ShellQuote(absl::string_view s);

// One chunk of a chunked body, with the CLOCK_REALTIME µs of the recv()
// that completed its data.
struct Chunk {
  std::string data;
  int64_t arrival_us = 0;
};

// A record of a streamed body (an NDJSON line, an SSE event) with the
// arrival time of the chunk that completed it.
struct TimedRecord {
  std::string text;  // Without the separator.
  int64_t arrival_us = 0;
};
// Splits the concatenated `chunks` at `separator` ("\n" for NDJSON,
// "\n\n" for SSE). A trailing partial record is returned last with
// arrival_us of the final chunk.
std::vector<TimedRecord> SplitRecords(const std::vector<Chunk>& chunks,
                                      absl::string_view separator);

struct HttpResponse {
  std::string version;  // "HTTP/1.1"
  int status = 0;
  std::string reason;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;  // De-chunked.
  bool chunked = false;
  std::vector<Chunk> chunks;    // Chunked bodies: every non-empty chunk.
  bool saw_last_chunk = false;  // The terminating 0-length chunk arrived.
  int64_t head_arrival_us = 0;

  // The first header named `name` (case-insensitive), or nullopt.
  std::optional<std::string> Header(absl::string_view name) const;
};

// A blocking client socket to 127.0.0.1:port with its own read buffer.
// Every read takes a timeout; a timeout is kDeadlineExceeded.
class HttpConnection {
 public:
  static absl::StatusOr<std::unique_ptr<HttpConnection>> Connect(
      int port, absl::Duration timeout = absl::Seconds(5));
  // The same from the loopback address `source_ip` ("127.0.0.7"): sluice
  // steers each client address to one worker, so a test picks the worker
  // by the address.
  static absl::StatusOr<std::unique_ptr<HttpConnection>> ConnectFrom(
      int port, const std::string& source_ip, absl::Duration timeout = absl::Seconds(5));

  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;
  ~HttpConnection();

  // Writes all of `bytes` (MSG_NOSIGNAL).
  absl::Status Send(absl::string_view bytes);

  // Reads one complete response (status line, headers, body by
  // Content-Length / chunked / close framing). A 1xx answer is returned on
  // its own, without a body. `no_body` is for answers to HEAD.
  absl::StatusOr<HttpResponse> ReadResponse(absl::Duration timeout = absl::Seconds(10),
                                            bool no_body = false);

  // Step by step: the head only; then ReadChunk() for a chunked body, one
  // chunk per call (empty data = the last chunk; trailers are consumed).
  absl::StatusOr<HttpResponse> ReadHead(absl::Duration timeout);
  absl::StatusOr<Chunk> ReadChunk(absl::Duration timeout);
  // Reads the body announced by `head` into it (all framings).
  absl::Status ReadBody(HttpResponse* head, absl::Duration timeout);

  // Reads exactly `n` bytes / one CRLF-terminated line (CRLF stripped).
  absl::StatusOr<std::string> ReadExactly(size_t n, absl::Duration timeout);
  absl::StatusOr<std::string> ReadLine(absl::Duration timeout);

  // OK when the peer closes (EOF or reset) within `timeout` without sending
  // any further byte; otherwise an error describing what came instead.
  absl::Status ExpectClosed(absl::Duration timeout);

  // Closes normally (FIN), or with SO_LINGER {1, 0} so the kernel sends RST.
  void Close();
  void CloseWithReset();
  // shutdown(SHUT_WR): half-close.
  void ShutdownWrite();

  int fd() const { return fd_; }
  // Bytes received but not consumed yet.
  absl::string_view buffered() const { return absl::string_view(buf_).substr(pos_); }

 private:
  explicit HttpConnection(int fd) : fd_(fd) {}
  absl::StatusOr<HttpResponse> ReadHeadUntil(absl::Time deadline, bool no_body);
  absl::StatusOr<Chunk> ReadChunkUntil(absl::Time deadline);
  absl::Status ReadBodyUntil(HttpResponse* head, absl::Time deadline);
  absl::StatusOr<std::string> ReadExactlyUntil(size_t n, absl::Time deadline);
  absl::StatusOr<std::string> ReadLineUntil(absl::Time deadline);
  // One recv() into the buffer; kDeadlineExceeded at the deadline,
  // kUnavailable ("closed") at EOF / reset.
  absl::Status Fill(absl::Time deadline);
  void Compact();

  int fd_ = -1;
  std::string buf_;
  size_t pos_ = 0;
  bool eof_ = false;
  int64_t last_recv_us_ = 0;
  // Framing of the response whose head was read last.
  enum class Framing { kNone, kLength, kChunked, kClose } framing_ = Framing::kNone;
  size_t remaining_ = 0;
};

// Connects, sends `request`, reads one response.
absl::StatusOr<HttpResponse> Exchange(int port, absl::string_view request,
                                      absl::Duration timeout = absl::Seconds(10));

// Builds a request: "METHOD target HTTP/1.1", Host (unless `headers` has
// one, or `host` is empty), `headers` in order, Content-Length for a
// non-empty body unless a framing header is given, then the body.
std::string BuildRequest(absl::string_view method, absl::string_view target,
                         const std::vector<std::pair<std::string, std::string>>& headers = {},
                         absl::string_view body = "", absl::string_view host = "127.0.0.1");

// The simulator's /sim/stats counters.
struct SimStats {
  int64_t opened = -1;
  int64_t closed = -1;
  int64_t active = -1;
  int64_t requests = -1;
  int64_t aborted_streams = -1;
  int64_t last_abort_us = -1;
};
// GET /sim/stats and POST /sim/reset, straight to the simulator.
absl::StatusOr<SimStats> FetchSimStats(int sim_port);
absl::Status ResetSim(int sim_port);

// The integer after "key": in a flat JSON object; nullopt when absent.
std::optional<int64_t> FindJsonInt(absl::string_view json, absl::string_view key);

// The first sanitizer report (ASan, UBSan, TSan, LSan) in a child's
// stderr, from its first line on (at most 8000 characters), or nullopt.
std::optional<std::string> SanitizerReport(absl::string_view stderr_text);

// A free loopback port with nothing listening on it (bound, then closed).
int UnusedPort();

}  // namespace sluice::integration
