#pragma once

#include <nghttp2/nghttp2.h>

#include <cstddef>
#include <vector>

namespace sluice::http {

// nghttp2's allocator for H2ServerCodec's sessions: one pool per thread, so
// that an idle HTTP/2 connection holds as little memory as nghttp2 allows.
//
// nghttp2 1.52 allocates two large blocks when it creates a server session
// and keeps both for the session's life (nghttp2_session_new: the outbound
// frame buffer, nghttp2_bufs_init3 with one kept chunk; nghttp2_map_init):
//   - the frame buffer, 16394 bytes (a frame header, the pad length and a
//     16 KiB payload), into which every frame is serialized;
//   - the stream table, 256 buckets of 16 bytes (4 KiB), zeroed.
// On an idle connection neither holds anything that will be read again:
// the codec copies each serialized frame out of the frame buffer before
// nghttp2 writes the next (and nghttp2 has none in progress when it wants
// to write nothing), and the table of a session without streams is all
// zeros (nghttp2 zeroes a bucket when it removes a stream). So these two
// come from page-aligned blocks of their own, and ReleaseIdle gives their
// pages back to the kernel (madvise MADV_DONTNEED): the next touch maps a
// zeroed page, exactly what the table must hold and as good as anything for
// the frame buffer. Measured (h2_session_memory_test.cc, IdleSessionMemory:
// a codec that served two requests, resident bytes): 6.4 KB per idle codec
// with the release, 14.7 KB without. What stays is nghttp2's session
// structure (2.9 KB), its two 1 KiB HPACK ring buffers, the dynamic table
// entries and the codec itself. Everything else nghttp2 allocates goes to
// malloc.
//
// The cost: two madvise calls when a connection turns idle, and a page
// fault or two on its next frame, about 20 us together on a VM; the codec
// limits how often a connection pays it (H2ServerCodec::ReleaseIdlePages).
// Blocks of closed sessions are kept, pages released, for the next session
// (at most kMaxFreeBlocks of each size per thread), so connections coming
// and going cost no mmap.
//
// Not thread-safe: a session must be created, used and deleted on one
// thread (as each worker does); pools are never destroyed (a pool outlives
// every session of its thread).
class H2SessionMemory {
 public:
  static constexpr size_t kMaxFreeBlocks = 256;

  // A page block given to nghttp2 while a session was created.
  struct Block {
    void* p = nullptr;
    size_t bytes = 0;  // as nghttp2 asked
  };

  // The nghttp2_mem of this thread's pool.
  static nghttp2_mem* ForThisThread();

  // While alive, allocations of at least a page that nghttp2 makes on this
  // thread (the frame buffer and the stream table of the session being
  // created) are page blocks, appended to `*blocks`.
  class CreationScope {
   public:
    explicit CreationScope(std::vector<Block>* blocks);
    ~CreationScope();
    CreationScope(const CreationScope&) = delete;
    CreationScope& operator=(const CreationScope&) = delete;

   private:
    std::vector<Block>* previous_;
  };

  // The session that owns `blocks` is idle: nghttp2 wants to write nothing
  // and has no stream. Releases the pages of each block still given to
  // nghttp2 (it may have freed one): the frame buffer always, a smaller
  // block (the stream table) only when it is all zeros.
  static void ReleaseIdle(const std::vector<Block>& blocks);

  // Page blocks given to nghttp2 and not freed, on this thread (tests).
  static size_t LiveBlocks();
};

}  // namespace sluice::http
