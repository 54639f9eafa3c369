#pragma once

// Helpers shared by the fuzz targets: input splitting (so partial reads are
// exercised the way the engine sees them) and a check that aborts with a
// message, so libFuzzer records the input as a crash.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::fuzz {

// Aborts with `what` when `cond` is false. Used for the invariants each
// target checks; libFuzzer turns the abort into a crash report and file.
#define FUZZ_CHECK(cond, what)                                                                 \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      std::fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s (%s)\n", __FILE__, __LINE__, #cond, \
                   what);                                                                      \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)

// One piece of input in its own heap block of exactly its size, so that a
// read past its end is a heap-buffer-overflow under ASan (a piece cut out of
// the fuzzer's buffer would let an over-read go unnoticed).
class Piece {
 public:
  explicit Piece(std::string_view bytes)
      : data_(new char[bytes.size() == 0 ? 1 : bytes.size()]), size_(bytes.size()) {
    if (size_ > 0) std::memcpy(data_.get(), bytes.data(), size_);
  }
  std::string_view view() const { return {data_.get(), size_}; }
  size_t size() const { return size_; }

 private:
  std::unique_ptr<char[]> data_;
  size_t size_;
};

// Reads control bytes off the front of the input; 0 once it runs out, so
// every input is valid whatever its length.
class Control {
 public:
  Control(const uint8_t* data, size_t size)
      : data_(reinterpret_cast<const char*>(data)), size_(size) {}

  uint8_t Byte() {
    if (pos_ >= size_) return 0;
    return static_cast<uint8_t>(data_[pos_++]);
  }
  // What is left after the control bytes taken so far.
  std::string_view Rest() const {
    return pos_ >= size_ ? std::string_view() : std::string_view(data_ + pos_, size_ - pos_);
  }

 private:
  const char* data_;
  size_t size_;
  size_t pos_ = 0;
};

// Cuts `bytes` into 1 to 3 non-empty pieces (fewer when it is shorter) at
// positions picked by `count_byte` and the two cut bytes: a cut byte b
// lands at b * (size + 1) / 256, so every offset of an input under 256
// bytes is reachable and longer inputs are cut anywhere in proportion.
inline std::vector<Piece> Split(std::string_view bytes, uint8_t count_byte, uint8_t cut1,
                                uint8_t cut2) {
  const size_t pieces = 1 + count_byte % 3;
  std::vector<size_t> cuts = {0};
  const uint8_t cut_bytes[2] = {cut1, cut2};
  for (size_t i = 0; i + 1 < pieces; ++i) {
    cuts.push_back(static_cast<size_t>(cut_bytes[i]) * (bytes.size() + 1) / 256);
  }
  cuts.push_back(bytes.size());
  std::sort(cuts.begin(), cuts.end());
  std::vector<Piece> out;
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    if (cuts[i + 1] > cuts[i]) {
      out.emplace_back(bytes.substr(cuts[i], cuts[i + 1] - cuts[i]));
    }
  }
  return out;
}

// The input of the targets that feed a parser in pieces: a shape byte
// (its low bits pick the number of pieces; the target reads its other bits
// as it likes), two cut bytes, then the bytes, cut as Split cuts them and
// in one piece. Inputs over 64 KiB are refused (nothing more to learn, and
// it keeps runs fast).
struct SplitInput {
  uint8_t shape = 0;
  std::string_view bytes;
  std::vector<Piece> pieces;  // `bytes` as Split cuts them
  std::vector<Piece> whole;   // `bytes` in one piece (none when empty)
};
inline bool TakeSplitInput(const uint8_t* data, size_t size, SplitInput* in) {
  Control control(data, size);
  in->shape = control.Byte();
  const uint8_t cut1 = control.Byte();
  const uint8_t cut2 = control.Byte();
  in->bytes = control.Rest();
  if (in->bytes.size() > 64 * 1024) return false;
  in->pieces = Split(in->bytes, in->shape, cut1, cut2);
  if (!in->bytes.empty()) in->whole.emplace_back(in->bytes);
  return true;
}

// Aborts, printing both, when a parse fed in pieces and in one piece
// differ: the result must not depend on where the reads were cut.
inline void CheckSameParse(const std::string& pieces, const std::string& whole) {
  if (pieces != whole) {
    std::fprintf(stderr, "split trace:\n%s\nwhole trace:\n%s\n", pieces.c_str(), whole.c_str());
    FUZZ_CHECK(false, "the parse depends on where the input was split");
  }
}

// True when `part` lies inside `whole` (a view the codec documents as
// pointing into the buffer it was given).
inline bool Inside(std::string_view part, std::string_view whole) {
  return part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size();
}

// Why `head` (a request head sluice sends upstream) might be read
// differently by another parser, or "" when it cannot: every line ends in
// CRLF with no CR, LF or NUL inside a line, the request line is
// "METHOD SP TARGET SP HTTP/1.1" with a token method and a target without
// spaces or control bytes, each field line is "token: value" with no
// control byte but HTAB in the value, and the head ends at its first empty
// line, which is its last.
inline const char* HeadProblem(std::string_view head) {
  auto tchar = [](unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
  };
  auto ctl = [](unsigned char c) { return c < 0x20 || c == 0x7f; };
  size_t pos = 0;
  bool first = true;
  while (true) {
    const size_t eol = head.find("\r\n", pos);
    if (eol == std::string_view::npos) return "head does not end in CRLF CRLF";
    const std::string_view line = head.substr(pos, eol - pos);
    pos = eol + 2;
    for (char c : line) {
      if (c == '\r' || c == '\n' || c == '\0') return "CR, LF or NUL inside a line";
    }
    if (line.empty()) {
      if (first) return "empty request line";
      return pos == head.size() ? "" : "bytes after the empty line";
    }
    if (first) {
      first = false;
      const size_t sp1 = line.find(' ');
      const size_t sp2 = line.rfind(' ');
      if (sp1 == std::string_view::npos || sp1 == sp2) return "request line without two spaces";
      const std::string_view method = line.substr(0, sp1);
      const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
      if (method.empty()) return "empty method";
      for (unsigned char c : method) {
        if (!tchar(c)) return "method is not a token";
      }
      if (target.empty()) return "empty target";
      for (unsigned char c : target) {
        if (c == ' ' || ctl(c)) return "space or control byte in the target";
      }
      if (line.substr(sp2 + 1) != "HTTP/1.1") return "version is not HTTP/1.1";
      continue;
    }
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) return "field line without a name";
    for (unsigned char c : line.substr(0, colon)) {
      if (!tchar(c)) return "field name is not a token";
    }
    for (unsigned char c : line.substr(colon + 1)) {
      if (ctl(c) && c != '\t') return "control byte in a field value";
    }
  }
}

}  // namespace sluice::fuzz
