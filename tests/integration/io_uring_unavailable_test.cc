// Startup without io_uring: where io_uring_setup(2) is refused (a container's
// seccomp profile, kernel.io_uring_disabled, a kernel without
// CONFIG_IO_URING), sluice exits with a non-zero status and one stderr line
// that names io_uring, the error and what to change, instead of crashing or
// listening without workers.
//
// The real binary runs under tests/integration/block_io_uring.cc, which
// makes io_uring_setup fail with the chosen errno by a seccomp filter.
#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"

namespace sluice::integration {
namespace {

std::string BlockIoUringBinary() { return BLOCK_IO_URING_BIN; }

// kernel.io_uring_disabled, or "" where the kernel has no such sysctl.
std::string IoUringDisabledSysctl() {
  std::ifstream f("/proc/sys/kernel/io_uring_disabled");
  std::string value;
  if (f) std::getline(f, value);
  return value;
}

struct Refusal {
  const char* errno_name;  // Argument of block_io_uring.
  int errno_value;
  int threads;
};

void PrintTo(const Refusal& r, std::ostream* os) {
  *os << r.errno_name << " with " << r.threads << " worker(s)";
}

class SluiceIoUringUnavailable : public ::testing::TestWithParam<Refusal> {
 protected:
  void SetUp() override {
    // The helper itself must work here: a kernel without seccomp cannot
    // run this test, and a filter that does not bite would prove nothing.
    CommandResult probe =
        RunProgram(BlockIoUringBinary(), {GetParam().errno_name, "--probe"}, absl::Seconds(5));
    ASSERT_FALSE(probe.timed_out);
    if (probe.exit.exited && probe.exit.code == 125) {
      GTEST_SKIP() << "no seccomp here: " << probe.err;
    }
    ASSERT_TRUE(probe.exit.exited && probe.exit.code == 0)
        << "code " << probe.exit.code << " signal " << probe.exit.signal
        << " stderr: " << probe.err;
    ASSERT_EQ(absl::StripTrailingAsciiWhitespace(probe.out),
              absl::StrCat("io_uring_setup failed: errno ", GetParam().errno_value));
  }
};

TEST_P(SluiceIoUringUnavailable, ExitsNonZeroWithOneLineNamingIoUring) {
  const Refusal& refusal = GetParam();
  CommandResult res = RunProgram(BlockIoUringBinary(),
                                 {refusal.errno_name, SluiceBinary(), "--listen_http=127.0.0.1:0",
                                  "--listen_tls=", "--http_mode=serve", "--upstream=127.0.0.1:9",
                                  "--auth=none", absl::StrCat("--threads=", refusal.threads)},
                                 absl::Seconds(10));
  ASSERT_FALSE(res.timed_out) << "sluice kept running without io_uring; stdout: " << res.out
                              << "\nstderr: " << res.err;
  ASSERT_TRUE(res.exit.exited) << "killed by signal " << res.exit.signal << "; stderr: " << res.err;
  EXPECT_NE(res.exit.code, 0) << "stderr: " << res.err;
  EXPECT_NE(res.exit.code, 127) << "the helper could not exec sluice: " << res.err;
  EXPECT_FALSE(absl::StrContains(res.out, "listening on"))
      << "sluice announced a listener it cannot serve: " << res.out;

  std::vector<std::string> lines = absl::StrSplit(res.err, '\n', absl::SkipWhitespace());
  ASSERT_EQ(lines.size(), 1u) << "stderr:\n" << res.err;
  const std::string& line = lines[0];
  EXPECT_TRUE(absl::StrContains(line, "io_uring")) << line;
  EXPECT_TRUE(absl::StrContains(line, strerror(refusal.errno_value))) << line;
  if (refusal.errno_value == EPERM) {
    // What an operator can change: the sysctl, and a seccomp profile.
    EXPECT_TRUE(absl::StrContains(line, "io_uring_disabled")) << line;
    EXPECT_TRUE(absl::StrContains(line, "seccomp")) << line;
  } else {
    std::string sysctl = IoUringDisabledSysctl();
    if (sysctl.empty() || sysctl == "0") {
      EXPECT_TRUE(absl::StrContains(line, "CONFIG_IO_URING")) << line;
    } else {
      EXPECT_TRUE(absl::StrContains(line, "io_uring_disabled")) << line;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Errnos, SluiceIoUringUnavailable,
                         ::testing::Values(Refusal{"EPERM", EPERM, 1}, Refusal{"EPERM", EPERM, 2},
                                           Refusal{"ENOSYS", ENOSYS, 1}),
                         [](const ::testing::TestParamInfo<Refusal>& info) {
                           return absl::StrCat(info.param.errno_name, "_threads",
                                               info.param.threads);
                         });

}  // namespace
}  // namespace sluice::integration
