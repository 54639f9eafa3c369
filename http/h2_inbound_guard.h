#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace sluice::http {

// The client's frame headers as they arrive, and what the server must
// remember about the client's stream ids to answer RFC 9113 where nghttp2
// stays silent. nghttp2 1.52, with closed streams not retained and RFC 7540
// priorities off (H2ServerCodec's settings), forgets a stream the moment it
// closes and skips PRIORITY frames unread, so it ignores
//   - DATA and HEADERS on a closed stream (5.1: STREAM_CLOSED),
//   - HEADERS opening a stream below one already opened (5.1.1:
//     PROTOCOL_ERROR),
//   - a PRIORITY frame on stream 0 (6.3) or one making a stream depend on
//     itself (5.3.1), and a trailer HEADERS doing the same.
// H2ServerCodec asks this class where each frame starts and answers those
// cases itself before nghttp2 reads the frame; everything else stays
// nghttp2's.
//
// Pure bookkeeping, no nghttp2. Memory: a few words, plus at most
// kRecentResets stream ids (1 KiB) once the server reset a stream, plus at
// most kSkippedRanges id ranges once a client skipped ids (clients number
// their streams 1, 3, 5, ..., so most connections hold neither).
class H2InboundGuard {
 public:
  // RFC 9113 5.1 lets a server that sent RST_STREAM ignore the frames its
  // client had in flight only for a while; this bounds "a while" by count:
  // streams reset longer ago than the last 256 resets are treated as
  // plainly closed. At the default 128 concurrent streams, every stream of a
  // full connection can be reset at once and still have its late frames
  // ignored.
  static constexpr size_t kRecentResets = 256;
  static constexpr size_t kSkippedRanges = 16;

  // One frame of the client, reported once the bytes it is judged by have
  // been scanned: its 9-byte header, and for PRIORITY and for HEADERS with
  // the PRIORITY flag the stream dependency that follows.
  struct Frame {
    uint32_t length = 0;
    uint8_t type = 0;
    uint8_t flags = 0;
    int32_t stream_id = 0;
    // The dependency field was read (PRIORITY of length 5, HEADERS with the
    // PRIORITY flag long enough to hold it).
    bool has_dependency = false;
    int32_t dependency = 0;  // without the exclusive bit
    // A HEADERS or PUSH_PROMISE without END_HEADERS came before: only a
    // CONTINUATION is valid here (nghttp2 checks that).
    bool in_header_block = false;
  };

  // Scans up to `n` bytes of the connection's input (the 24-byte client
  // preface first, then frames; the caller checks neither). Returns how many
  // bytes it consumed: all `n`, or fewer when a frame became complete
  // enough to judge with the last byte consumed, then `*frame` holds it and
  // true goes to `*ready`. Frames may be split across calls at any byte.
  size_t Scan(const uint8_t* p, size_t n, Frame* frame, bool* ready);

  // --- Stream ids of the client.

  // The highest stream id a client HEADERS used so far (0: none).
  int32_t highest_stream_id() const { return highest_; }
  // A HEADERS with an odd id above highest_stream_id() is about to be read:
  // that id becomes the highest; ids jumped over are remembered (a bounded
  // number of ranges) as never used.
  void NoteNewStream(int32_t stream_id);
  // `stream_id` is at most highest_stream_id() and lies in a range the
  // client jumped over (as far as remembered): never opened.
  bool WasSkipped(int32_t stream_id) const;

  // The server sent (or queued) RST_STREAM for `stream_id`: frames the
  // client had in flight on it must be ignored for a while (5.1).
  void NoteReset(int32_t stream_id);
  bool RecentlyReset(int32_t stream_id) const;

 private:
  // Input position: bytes of the preface still to skip, the frame header
  // being assembled, the dependency prefix being read, payload to skip.
  size_t preface_left_ = 24;
  uint8_t header_[9] = {};
  size_t header_len_ = 0;
  uint8_t prefix_[5] = {};
  size_t prefix_need_ = 0;  // 0: not reading a prefix
  size_t prefix_len_ = 0;
  size_t dependency_at_ = 0;  // offset of the dependency in the prefix
  uint32_t payload_left_ = 0;
  bool in_header_block_ = false;
  Frame pending_;  // the frame whose prefix is being read

  int32_t highest_ = 0;
  std::vector<std::pair<int32_t, int32_t>> skipped_;  // [first, last], FIFO
  std::vector<int32_t> resets_;                       // ring once full
  size_t resets_next_ = 0;
};

}  // namespace sluice::http
