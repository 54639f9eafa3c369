#include "websocket.h"

#include <openssl/base64.h>
#include <openssl/sha.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace sluice::sim {
namespace {

// RFC 6455 section 1.3.
constexpr absl::string_view kWsGuid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

}  // namespace

std::string WebSocketAcceptKey(absl::string_view client_key) {
  std::string input = absl::StrCat(client_key, kWsGuid);
  uint8_t digest[SHA_DIGEST_LENGTH];
  SHA1(reinterpret_cast<const uint8_t*>(input.data()), input.size(), digest);
  // 20 bytes encode to 28 base64 characters plus the NUL EVP_EncodeBlock adds.
  uint8_t encoded[32];
  size_t n = EVP_EncodeBlock(encoded, digest, sizeof(digest));
  return std::string(reinterpret_cast<const char*>(encoded), n);
}

bool WsFrameParser::Feed(absl::string_view data, std::vector<WsFrame>* frames) {
  pending_.append(data.data(), data.size());
  size_t pos = 0;
  while (true) {
    const auto* p = reinterpret_cast<const uint8_t*>(pending_.data()) + pos;
    size_t avail = pending_.size() - pos;
    if (avail < 2) break;
    bool fin = (p[0] & 0x80) != 0;
    uint8_t opcode = p[0] & 0x0F;
    if ((p[0] & 0x70) != 0) return false;  // No extension was negotiated.
    bool masked = (p[1] & 0x80) != 0;
    uint64_t len = p[1] & 0x7F;
    size_t header = 2;
    if (len == 126) {
      if (avail < 4) break;
      len = (uint64_t{p[2]} << 8) | p[3];
      header = 4;
    } else if (len == 127) {
      if (avail < 10) break;
      len = 0;
      for (int i = 0; i < 8; ++i) len = (len << 8) | p[2 + i];
      header = 10;
    }
    if (len > max_payload_) return false;
    size_t mask_at = header;
    if (masked) header += 4;
    if (avail < header + len) break;
    WsFrame frame;
    frame.fin = fin;
    frame.opcode = opcode;
    frame.payload.assign(reinterpret_cast<const char*>(p + header), len);
    if (masked) {
      const uint8_t* key = p + mask_at;
      for (size_t i = 0; i < len; ++i) frame.payload[i] ^= key[i & 3];
    }
    frames->push_back(std::move(frame));
    pos += header + len;
  }
  pending_.erase(0, pos);
  return true;
}

void AppendWsFrame(bool fin, uint8_t opcode, absl::string_view payload, std::string* out) {
  char header[10];
  size_t n = 0;
  header[n++] = static_cast<char>((fin ? 0x80 : 0x00) | (opcode & 0x0F));
  uint64_t len = payload.size();
  if (len < 126) {
    header[n++] = static_cast<char>(len);
  } else if (len <= 0xFFFF) {
    header[n++] = 126;
    header[n++] = static_cast<char>(len >> 8);
    header[n++] = static_cast<char>(len);
  } else {
    header[n++] = 127;
    for (int i = 7; i >= 0; --i) header[n++] = static_cast<char>(len >> (8 * i));
  }
  out->append(header, n);
  out->append(payload.data(), payload.size());
}

}  // namespace sluice::sim
