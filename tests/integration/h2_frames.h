// A raw HTTP/2 frame client for the attack and conformance tests: it writes
// exactly the frames a test builds (malformed ones included) and reads the
// server's frames back with deadlines. No nghttp2 session is involved on the
// sending side, so nothing "fixes" what the test means to send; responses'
// header blocks are decoded with nghttp2's HPACK inflater so that a test can
// read :status.
//
// Transports: a plain TCP socket to the h2c (prior knowledge) listener, or
// TLS with ALPN "h2" (BoringSSL). Every blocking call takes a deadline;
// nothing waits forever. Loopback only.
#pragma once

#include <cstddef>
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

namespace sluice::integration::h2 {

// Frame types (RFC 9113 6).
inline constexpr uint8_t kData = 0x0;
inline constexpr uint8_t kHeaders = 0x1;
inline constexpr uint8_t kPriority = 0x2;
inline constexpr uint8_t kRstStream = 0x3;
inline constexpr uint8_t kSettings = 0x4;
inline constexpr uint8_t kPushPromise = 0x5;
inline constexpr uint8_t kPing = 0x6;
inline constexpr uint8_t kGoaway = 0x7;
inline constexpr uint8_t kWindowUpdate = 0x8;
inline constexpr uint8_t kContinuation = 0x9;

// Flags.
inline constexpr uint8_t kFlagEndStream = 0x1;
inline constexpr uint8_t kFlagAck = 0x1;
inline constexpr uint8_t kFlagEndHeaders = 0x4;
inline constexpr uint8_t kFlagPadded = 0x8;
inline constexpr uint8_t kFlagPriority = 0x20;

// Error codes (RFC 9113 7).
inline constexpr uint32_t kNoError = 0x0;
inline constexpr uint32_t kProtocolError = 0x1;
inline constexpr uint32_t kInternalError = 0x2;
inline constexpr uint32_t kFlowControlError = 0x3;
inline constexpr uint32_t kStreamClosed = 0x5;
inline constexpr uint32_t kFrameSizeError = 0x6;
inline constexpr uint32_t kRefusedStream = 0x7;
inline constexpr uint32_t kCancel = 0x8;
inline constexpr uint32_t kCompressionError = 0x9;
inline constexpr uint32_t kEnhanceYourCalm = 0xb;

// SETTINGS identifiers.
inline constexpr uint16_t kSettingsHeaderTableSize = 0x1;
inline constexpr uint16_t kSettingsEnablePush = 0x2;
inline constexpr uint16_t kSettingsMaxConcurrentStreams = 0x3;
inline constexpr uint16_t kSettingsInitialWindowSize = 0x4;
inline constexpr uint16_t kSettingsMaxFrameSize = 0x5;
inline constexpr uint16_t kSettingsMaxHeaderListSize = 0x6;

// "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".
absl::string_view ClientMagic();

// A short name for an error code ("ENHANCE_YOUR_CALM"), or its number.
std::string ErrorName(uint32_t code);

using HeaderList = std::vector<std::pair<std::string, std::string>>;

// --- HPACK (RFC 7541), encoder side, no Huffman coding.

// An integer with an N-bit prefix; `first_byte` holds the pattern bits above
// the prefix (0x80 for an indexed field, 0x40 for incremental indexing...).
std::string HpackInt(uint64_t value, int prefix_bits, uint8_t first_byte);
// A string literal (H = 0).
std::string HpackString(absl::string_view s);
// Literal field without indexing, new name (6.2.2): the table is untouched.
std::string HpackLiteral(absl::string_view name, absl::string_view value);
// Literal with incremental indexing, new name (6.2.1): the field enters the
// dynamic table at index 62.
std::string HpackLiteralIndexed(absl::string_view name, absl::string_view value);
// Indexed field (6.1); index 62 is the newest dynamic-table entry.
std::string HpackIndexed(uint32_t index);
// Every field as HpackLiteral, in order.
std::string HpackBlock(const HeaderList& fields);

// The pseudo-header fields of a request plus `extra`, for HpackBlock:
// :method, :scheme http, :path, :authority 127.0.0.1.
HeaderList RequestFields(absl::string_view method, absl::string_view path,
                         const HeaderList& extra = {});

// --- Frame builders (the bytes on the wire).

std::string BuildFrame(uint8_t type, uint8_t flags, uint32_t stream_id, absl::string_view payload);
// A frame header announcing `length` payload bytes, whatever follows.
std::string FrameHeader(uint32_t length, uint8_t type, uint8_t flags, uint32_t stream_id);
std::string HeadersFrame(uint32_t stream_id, absl::string_view block, bool end_stream,
                         bool end_headers = true);
std::string ContinuationFrame(uint32_t stream_id, absl::string_view block, bool end_headers);
std::string DataFrame(uint32_t stream_id, absl::string_view data, bool end_stream);
std::string RstStreamFrame(uint32_t stream_id, uint32_t error_code);
std::string SettingsFrame(const std::vector<std::pair<uint16_t, uint32_t>>& settings = {});
std::string SettingsAckFrame();
std::string PingFrame(uint64_t opaque, bool ack = false);
std::string WindowUpdateFrame(uint32_t stream_id, uint32_t increment);
std::string GoawayFrame(uint32_t last_stream_id, uint32_t error_code);

// A frame as received. For HEADERS, the CONTINUATION frames that complete
// its block are folded in and the block is decoded into `headers`.
struct Frame {
  uint8_t type = 0;
  uint8_t flags = 0;
  uint32_t stream_id = 0;
  std::string payload;
  HeaderList headers;         // HEADERS: the decoded fields
  bool header_error = false;  // HEADERS: the block did not decode
  absl::Time arrival;         // when the frame's last byte was read

  // RST_STREAM and GOAWAY: the error code; otherwise nullopt.
  std::optional<uint32_t> ErrorCode() const;
  // GOAWAY: the last stream id.
  uint32_t LastStreamId() const;
  // HEADERS: the :status value as a number, or 0.
  int Status() const;
  // One line for failure messages ("GOAWAY last=5 ENHANCE_YOUR_CALM").
  std::string Describe() const;
};

// A summary of frames read until a condition or the end of the connection.
struct ReadOutcome {
  std::vector<Frame> frames;
  bool closed = false;      // EOF or reset from the peer
  bool timed_out = false;   // the deadline passed first
  std::string close_error;  // "EOF", "ECONNRESET"...

  // The first GOAWAY's error code, or nullopt.
  std::optional<uint32_t> GoawayCode() const;
  // The RST_STREAM error code for `stream_id`, or nullopt.
  std::optional<uint32_t> ResetCode(uint32_t stream_id) const;
  // The final (non-1xx) :status answered on `stream_id`, or 0.
  int StatusOf(uint32_t stream_id) const;
  size_t Count(uint8_t type) const;
  // Every frame, one per line (bounded), for failure messages.
  std::string Describe() const;
};

// One client connection. Not thread-safe.
class Connection {
 public:
  struct Options {
    // SO_RCVBUF for the socket (0: the kernel default). A small buffer
    // makes a client that does not read push back on the server quickly.
    int recv_buffer = 0;
    // TLS with ALPN "h2" instead of plain h2c. The certificate is not
    // verified (the tests own both ends).
    bool tls = false;
    absl::Duration connect_timeout = absl::Seconds(5);
    // The loopback address to connect from ("127.0.0.7"; empty: the
    // kernel's choice). sluice steers each client address to one worker.
    std::string source_address;
  };

  static absl::StatusOr<std::unique_ptr<Connection>> Connect(int port, const Options& options);
  static absl::StatusOr<std::unique_ptr<Connection>> Connect(int port) {
    return Connect(port, Options());
  }

  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();

  // The client preface: the magic, then a SETTINGS frame with `settings`.
  absl::Status SendPreface(const std::vector<std::pair<uint16_t, uint32_t>>& settings = {},
                           absl::Duration timeout = absl::Seconds(5));

  // SendPreface, then waits for the server's SETTINGS and acknowledges it
  // (other frames read meanwhile are kept for ReadFrame).
  absl::Status Establish(const std::vector<std::pair<uint16_t, uint32_t>>& settings = {},
                         absl::Duration timeout = absl::Seconds(5));

  // Writes all of `bytes` before the deadline. While the socket does not
  // take more, frames the server sends are read into the receive buffer
  // (unless set_read_while_sending(false)), so that neither side waits on
  // the other. kDeadlineExceeded when the server stopped taking bytes,
  // kUnavailable when it closed or reset the connection.
  absl::Status Send(absl::string_view bytes, absl::Duration timeout = absl::Seconds(5));
  void set_read_while_sending(bool on) { read_while_sending_ = on; }

  // The next frame. kDeadlineExceeded at the deadline, kUnavailable when
  // the connection ended (EOF or reset) before a whole frame.
  absl::StatusOr<Frame> ReadFrame(absl::Duration timeout);

  // Reads frames until `stop` returns true for one (it is included), the
  // connection ends, or the deadline passes.
  template <typename Pred>
  ReadOutcome ReadUntil(Pred stop, absl::Duration timeout) {
    ReadOutcome out;
    absl::Time deadline = absl::Now() + timeout;
    while (true) {
      absl::StatusOr<Frame> f = ReadFrame(deadline - absl::Now());
      if (!f.ok()) {
        if (absl::IsDeadlineExceeded(f.status())) {
          out.timed_out = true;
        } else {
          out.closed = true;
          out.close_error = std::string(f.status().message());
        }
        return out;
      }
      bool done = stop(*f);
      out.frames.push_back(std::move(*f));
      if (done) return out;
    }
  }
  // Until a GOAWAY, the end of the connection, or the deadline.
  ReadOutcome ReadUntilGoaway(absl::Duration timeout);
  // Until the end of the connection or the deadline.
  ReadOutcome ReadUntilClosed(absl::Duration timeout);
  // Until the stream ends (END_STREAM or RST_STREAM), a GOAWAY, the end of
  // the connection, or the deadline.
  ReadOutcome ReadUntilStreamEnd(uint32_t stream_id, absl::Duration timeout);

  // Frames already received, without waiting: whatever the receive buffer
  // holds (Send may have filled it).
  ReadOutcome Poll();

  // A GET on `stream_id` with END_STREAM, then its answer: OK with the
  // :status, or an error describing what came instead.
  absl::StatusOr<int> Get(uint32_t stream_id, absl::string_view path,
                          absl::Duration timeout = absl::Seconds(5));

  // Bytes received and not parsed yet.
  size_t buffered() const { return rx_.size() - rx_pos_; }
  bool peer_closed() const { return eof_; }
  int fd() const { return fd_; }
  // ALPN result for TLS ("h2"), empty for plain.
  const std::string& alpn() const { return alpn_; }
  // Closes at once (with RST when `reset`).
  void Close(bool reset = false);

 private:
  struct Tls;
  explicit Connection(int fd);
  absl::Status Handshake(absl::Time deadline);
  // One read into rx_ if readable before `deadline`. kDeadlineExceeded,
  // kUnavailable at EOF/reset; OK after some bytes arrived.
  absl::Status Fill(absl::Time deadline);
  // Reads what is readable now without blocking; false once closed.
  bool DrainReadable();
  // Parses one complete frame (with its CONTINUATIONs) out of rx_.
  std::optional<Frame> TakeFrame();
  void DecodeBlock(Frame* f, absl::string_view block);

  int fd_ = -1;
  std::unique_ptr<Tls> tls_;
  std::string alpn_;
  std::string rx_;
  size_t rx_pos_ = 0;
  std::vector<Frame> backlog_;  // read by Establish, returned first
  bool eof_ = false;
  std::string close_error_;
  bool read_while_sending_ = true;
  struct Inflater;
  std::unique_ptr<Inflater> inflater_;
};

}  // namespace sluice::integration::h2
