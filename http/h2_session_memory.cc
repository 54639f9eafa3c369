#include "http/h2_session_memory.h"

#include <nghttp2/nghttp2.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/container/flat_hash_map.h"

namespace sluice::http {

namespace {

constexpr size_t kPage = 4096;
// The frame buffer is the only block whose content may be dropped whatever
// it is; smaller blocks (the stream table) only when they are all zeros.
constexpr size_t kFrameBufferMin = 16384;

size_t RoundToPages(size_t n) { return (n + kPage - 1) / kPage * kPage; }

bool PageAligned(const void* p) { return (reinterpret_cast<uintptr_t>(p) & (kPage - 1)) == 0; }

bool AllZero(const void* p, size_t n) {
  const auto* b = static_cast<const unsigned char*>(p);
  return n == 0 || (b[0] == 0 && std::memcmp(b, b + 1, n - 1) == 0);
}

struct Pool {
  struct Live {
    size_t mapped;      // whole pages
    const void* owner;  // the Block vector of the session's codec
  };
  absl::flat_hash_map<void*, Live> live;
  // Released blocks kept for reuse, by mapped size.
  absl::flat_hash_map<size_t, std::vector<void*>> free;
  std::vector<H2SessionMemory::Block>* collecting = nullptr;
  nghttp2_mem mem;

  void* NewBlock(size_t bytes) {
    const size_t mapped = RoundToPages(bytes);
    void* p = nullptr;
    auto it = free.find(mapped);
    if (it != free.end() && !it->second.empty()) {
      // Released when freed: its pages read as zeros.
      p = it->second.back();
      it->second.pop_back();
    } else {
      p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) return nullptr;  // nghttp2 reports NOMEM
    }
    live.emplace(p, Live{mapped, collecting});
    collecting->push_back({p, bytes});
    return p;
  }

  // Returns a live block, or false when `p` is not one.
  bool FreeBlock(void* p) {
    if (!PageAligned(p)) return false;
    auto it = live.find(p);
    if (it == live.end()) return false;
    const size_t mapped = it->second.mapped;
    live.erase(it);
    std::vector<void*>& list = free[mapped];
    if (list.size() < H2SessionMemory::kMaxFreeBlocks) {
      madvise(p, mapped, MADV_DONTNEED);
      list.push_back(p);
    } else {
      munmap(p, mapped);
    }
    return true;
  }

  // The mapped size of live block `p` (0: not one), when given by `owner`
  // (any owner when null).
  size_t MappedSize(void* p, const void* owner = nullptr) const {
    if (!PageAligned(p)) return 0;
    auto it = live.find(p);
    if (it == live.end()) return 0;
    if (owner != nullptr && it->second.owner != owner) return 0;
    return it->second.mapped;
  }
};

Pool& ThisThreadPool();

void* Malloc(size_t size, void*) {
  Pool& pool = ThisThreadPool();
  if (pool.collecting != nullptr && size >= kPage) return pool.NewBlock(size);
  return std::malloc(size);
}

void Free(void* ptr, void*) {
  if (ptr == nullptr) return;
  if (!ThisThreadPool().FreeBlock(ptr)) std::free(ptr);
}

void* Calloc(size_t nmemb, size_t size, void*) {
  Pool& pool = ThisThreadPool();
  if (pool.collecting != nullptr && size != 0 && nmemb <= SIZE_MAX / size &&
      nmemb * size >= kPage) {
    return pool.NewBlock(nmemb * size);  // fresh or released pages: zeros
  }
  return std::calloc(nmemb, size);
}

void* Realloc(void* ptr, size_t size, void*) {
  Pool& pool = ThisThreadPool();
  if (ptr == nullptr) return Malloc(size, nullptr);
  const size_t mapped = pool.MappedSize(ptr);
  if (mapped == 0) return std::realloc(ptr, size);
  if (size <= mapped && size != 0) return ptr;
  // nghttp2 does not grow these blocks today; if it ever does, the block
  // moves to malloc and is no longer released when idle.
  void* q = size == 0 ? nullptr : std::malloc(size);
  if (q != nullptr) std::memcpy(q, ptr, mapped);
  if (q != nullptr || size == 0) pool.FreeBlock(ptr);
  return q;
}

Pool& ThisThreadPool() {
  // Never destroyed: sessions of this thread may be deleted during its
  // exit, after thread_local objects are gone.
  thread_local Pool* pool = [] {
    Pool* p = new Pool;
    p->mem = nghttp2_mem{nullptr, &Malloc, &Free, &Calloc, &Realloc};
    return p;
  }();
  return *pool;
}

}  // namespace

nghttp2_mem* H2SessionMemory::ForThisThread() { return &ThisThreadPool().mem; }

H2SessionMemory::CreationScope::CreationScope(std::vector<Block>* blocks)
    : previous_(ThisThreadPool().collecting) {
  ThisThreadPool().collecting = blocks;
}

H2SessionMemory::CreationScope::~CreationScope() { ThisThreadPool().collecting = previous_; }

void H2SessionMemory::ReleaseIdle(const std::vector<Block>& blocks) {
  Pool& pool = ThisThreadPool();
  for (const Block& b : blocks) {
    // Freed by nghttp2 (and perhaps reused by another session): skip.
    const size_t mapped = pool.MappedSize(b.p, &blocks);
    if (mapped == 0) continue;
    if (b.bytes < kFrameBufferMin && !AllZero(b.p, b.bytes)) continue;
    madvise(b.p, mapped, MADV_DONTNEED);
  }
}

size_t H2SessionMemory::LiveBlocks() { return ThisThreadPool().live.size(); }

}  // namespace sluice::http
