// Latency bounds of the integration tests under a sanitizer build.
#pragma once

#include <cstdint>
#include <string_view>

#ifndef SLUICE_TEST_SANITIZE
#define SLUICE_TEST_SANITIZE ""
#endif

namespace sluice::integration {

// The factor by which a test multiplies a latency bound (relay delay,
// cancel delay): 1 in a plain build, 3 when sluice and ollama-sim are built
// with a sanitizer (SLUICE_SANITIZE), which makes every event-loop turn
// slower (TSan 5-15x of CPU time, ASan about 2x). The bounds stay far
// below what they guard against: 3 x 30 ms relay delay is still under the
// 100 ms between two tokens, so a batched stream still fails.
constexpr int64_t TimingSlack() { return std::string_view(SLUICE_TEST_SANITIZE).empty() ? 1 : 3; }

// The factor for a memory bound (RSS growth): 4 under ThreadSanitizer,
// whose shadow memory and allocator metadata take several times the
// memory they describe (1000 idle TLS connections grew sluice's RSS by
// 190 MB under TSan against 12 MB in a plain build); 1 otherwise (ASan's
// overhead fits the bounds as they are).
constexpr int64_t MemorySlack() {
  return std::string_view(SLUICE_TEST_SANITIZE) == "thread" ? 4 : 1;
}

// Whether growth of the peak RSS tells what sluice keeps when it frees and
// allocates large buffers in turn: not under AddressSanitizer, whose
// quarantine holds freed blocks (up to 256 MiB) before they are reused, so
// a loop over 4 MiB buffers grows the RSS by the quarantine, not by what
// is live.
constexpr bool FreedMemoryIsReused() { return std::string_view(SLUICE_TEST_SANITIZE) != "address"; }

}  // namespace sluice::integration
