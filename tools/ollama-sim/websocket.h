// WebSocket pieces of the simulator's echo endpoint (RFC 6455): the handshake
// key and a frame codec that only sees bytes, never a socket.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace sluice::sim {

inline constexpr uint8_t kWsContinuation = 0x0;
inline constexpr uint8_t kWsText = 0x1;
inline constexpr uint8_t kWsBinary = 0x2;
inline constexpr uint8_t kWsClose = 0x8;
inline constexpr uint8_t kWsPing = 0x9;
inline constexpr uint8_t kWsPong = 0xA;

// Returns the Sec-WebSocket-Accept value for a client's Sec-WebSocket-Key:
// base64(SHA-1(key + the RFC 6455 GUID)).
std::string WebSocketAcceptKey(absl::string_view client_key);

struct WsFrame {
  bool fin = true;
  uint8_t opcode = kWsText;
  std::string payload;  // Already unmasked.
};

// Reassembles frames from a byte stream that may split them anywhere (inside
// the header, the extended length or the payload).
class WsFrameParser {
 public:
  // Frames whose payload exceeds `max_payload` are a protocol error: the
  // parser would otherwise buffer without bound.
  explicit WsFrameParser(uint64_t max_payload) : max_payload_(max_payload) {}

  // Consumes all of `data`. Every frame completed by it is appended to
  // *frames. Returns false on a protocol error; the parser is then unusable
  // and the caller should close the connection.
  bool Feed(absl::string_view data, std::vector<WsFrame>* frames);

 private:
  uint64_t max_payload_;
  // Bytes of the frame being assembled. It holds at most one partial frame,
  // so its size is bounded by max_payload_ plus a 14-byte header.
  std::string pending_;
};

// Appends one unmasked (server-to-client) frame to *out.
void AppendWsFrame(bool fin, uint8_t opcode, absl::string_view payload, std::string* out);

}  // namespace sluice::sim
