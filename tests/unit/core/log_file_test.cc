#include "core/observe/log_file.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace sluice::core {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Each test in a directory of its own under TempDir, removed afterwards.
class LogFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "sluice_log_file_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr) << strerror(errno);
    dir_ = tmpl;
    path_ = dir_ + "/access.log";
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::unique_ptr<LogFile> MustOpen(size_t max_queued_bytes = 64 << 20) {
    auto f = LogFile::Open(path_, max_queued_bytes);
    EXPECT_TRUE(f.ok()) << f.status();
    return f.ok() ? std::move(*f) : nullptr;
  }

  std::string dir_;
  std::string path_;
};

TEST_F(LogFileTest, LinesArriveInOrder) {
  auto f = MustOpen();
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->path(), path_);
  std::string want;
  uint64_t lines = 0;
  for (int i = 0; i < 2000; ++i) {
    std::string buf = absl::StrCat("line ", i, "\n");
    uint64_t n = 1;
    if (i % 3 == 0) {
      absl::StrAppend(&buf, "extra ", i, "\n");
      n = 2;
    }
    want += buf;
    lines += n;
    EXPECT_TRUE(f->Submit(std::move(buf), n));
  }
  f->Sync();
  EXPECT_EQ(ReadFile(path_), want);
  EXPECT_EQ(f->written_lines(), lines);
  EXPECT_EQ(f->dropped_lines(), 0u);
}

TEST_F(LogFileTest, CreatesWith0644AndAppendsToAnExistingFile) {
  {
    std::ofstream out(path_);
    out << "old line\n";
  }
  chmod(path_.c_str(), 0600);
  auto f = MustOpen();
  ASSERT_NE(f, nullptr);
  f->Submit("new line\n", 1);
  f->Sync();
  EXPECT_EQ(ReadFile(path_), "old line\nnew line\n");
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);  // an existing file keeps its mode

  const std::string fresh = dir_ + "/fresh.log";
  const mode_t old_umask = umask(022);
  auto g = LogFile::Open(fresh);
  umask(old_umask);
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_EQ(stat(fresh.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
}

TEST_F(LogFileTest, SeveralSubmittersKeepTheirOwnOrder) {
  auto f = MustOpen();
  ASSERT_NE(f, nullptr);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) f->Submit(absl::StrCat(t, " ", i, "\n"), 1);
      if (t == 0) f->Sync();  // Sync from another thread while others submit
    });
  }
  for (auto& th : threads) th.join();
  f->Sync();
  EXPECT_EQ(f->written_lines(), uint64_t{kThreads * kPerThread});
  std::istringstream in(ReadFile(path_));
  std::vector<int> next(kThreads, 0);
  int t, i, count = 0;
  while (in >> t >> i) {
    ASSERT_GE(t, 0);
    ASSERT_LT(t, kThreads);
    EXPECT_EQ(i, next[t]) << "thread " << t;
    next[t] = i + 1;
    ++count;
  }
  EXPECT_EQ(count, kThreads * kPerThread);
}

// logrotate: rename, then SIGUSR1 -> Reopen.
TEST_F(LogFileTest, ReopenAfterRenameStartsANewFile) {
  auto f = MustOpen();
  ASSERT_NE(f, nullptr);
  f->Submit("a1\na2\n", 2);
  f->Sync();
  const std::string rotated = path_ + ".1";
  ASSERT_EQ(rename(path_.c_str(), rotated.c_str()), 0);
  f->Submit("b\n", 1);  // before Reopen: still the old (renamed) file
  f->Sync();
  f->Reopen();
  f->Submit("c1\n", 1);
  f->Submit("c2\n", 1);
  f->Sync();
  EXPECT_EQ(ReadFile(rotated), "a1\na2\nb\n");
  EXPECT_EQ(ReadFile(path_), "c1\nc2\n");

  // Twice in a row, with nothing written in between, is harmless.
  ASSERT_EQ(rename(path_.c_str(), (path_ + ".2").c_str()), 0);
  f->Reopen();
  f->Reopen();
  f->Submit("d\n", 1);
  f->Sync();
  EXPECT_EQ(ReadFile(path_), "d\n");
  EXPECT_EQ(ReadFile(path_ + ".2"), "c1\nc2\n");
  EXPECT_EQ(f->written_lines(), 6u);
}

// logrotate renames, then signals: what was handed over before Reopen()
// belongs to the old file even when the writer is still busy with an
// earlier buffer (a stalled disk: here a pipe nobody reads yet).
TEST_F(LogFileTest, ReopenWritesWhatCameBeforeItToTheOldFile) {
  ASSERT_EQ(mkfifo(path_.c_str(), 0600), 0) << strerror(errno);
  const int rfd = open(path_.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(rfd, 0) << strerror(errno);
  auto f = MustOpen();
  ASSERT_NE(f, nullptr);
  // Larger than the pipe (64 KiB by default, at most 1 MiB): the writer
  // blocks in write(2) until the reader below starts.
  const std::string big = std::string(2 << 20, 'x') + "\n";
  f->Submit(big, 1);
  f->Submit("before1\n", 1);
  f->Submit("before2\n", 1);
  const std::string rotated = path_ + ".1";
  ASSERT_EQ(rename(path_.c_str(), rotated.c_str()), 0);
  f->Reopen();
  f->Submit("after\n", 1);

  std::string got;
  std::thread reader([&] {
    char buf[65536];
    for (;;) {
      pollfd p{rfd, POLLIN, 0};
      poll(&p, 1, 1000);
      ssize_t n = read(rfd, buf, sizeof(buf));
      if (n > 0) {
        got.append(buf, static_cast<size_t>(n));
      } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        return;  // the writer closed the pipe (reopened the path)
      }
    }
  });
  f->Sync();
  reader.join();
  close(rfd);
  EXPECT_EQ(got.size(), big.size() + 16);
  EXPECT_EQ(got.substr(big.size()), "before1\nbefore2\n");
  EXPECT_EQ(ReadFile(path_), "after\n");
  EXPECT_EQ(f->written_lines(), 4u);
}

TEST_F(LogFileTest, FailedReopenKeepsTheOldFile) {
  auto f = MustOpen();
  ASSERT_NE(f, nullptr);
  const std::string rotated = path_ + ".1";
  ASSERT_EQ(rename(path_.c_str(), rotated.c_str()), 0);
  // A directory where the file was: open(2) fails with EISDIR, even as root.
  ASSERT_EQ(mkdir(path_.c_str(), 0755), 0);
  f->Reopen();
  f->Submit("kept\n", 1);
  f->Sync();
  EXPECT_EQ(ReadFile(rotated), "kept\n");
  EXPECT_EQ(f->written_lines(), 1u);
  EXPECT_EQ(f->dropped_lines(), 0u);
}

TEST_F(LogFileTest, BufferLargerThanTheBoundIsDropped) {
  auto f = MustOpen(/*max_queued_bytes=*/16);
  ASSERT_NE(f, nullptr);
  EXPECT_FALSE(f->Submit(std::string(17, 'x'), 3));
  EXPECT_TRUE(f->Submit("0123456789abcde\n", 1));  // exactly 16
  f->Sync();
  EXPECT_EQ(f->dropped_lines(), 3u);
  EXPECT_EQ(f->written_lines(), 1u);
  EXPECT_EQ(ReadFile(path_), "0123456789abcde\n");
}

// With a tiny bound and a flood of buffers, whatever is not written is
// counted: nothing is lost silently.
TEST_F(LogFileTest, QueueBoundDropsAndCountsUnderLoad) {
  auto f = MustOpen(/*max_queued_bytes=*/64);
  ASSERT_NE(f, nullptr);
  uint64_t submitted = 0, refused = 0;
  for (int i = 0; i < 20000; ++i) {
    if (!f->Submit(absl::StrCat("aaaaaaaaaaaaaaa ", i, "\nbbbbbbbbbbbbbbbb\n"), 2)) refused += 2;
    submitted += 2;
  }
  f->Sync();
  EXPECT_EQ(f->dropped_lines(), refused);
  EXPECT_EQ(f->dropped_lines() + f->written_lines(), submitted);
  const std::string text = ReadFile(path_);
  EXPECT_EQ(static_cast<uint64_t>(std::count(text.begin(), text.end(), '\n')), f->written_lines());
}

// A stalled reader (a FIFO nobody reads) blocks the writer thread; Submit
// must still return at once and drop past the bound.
TEST_F(LogFileTest, StalledDiskNeverBlocksSubmit) {
  ASSERT_EQ(mkfifo(path_.c_str(), 0600), 0) << strerror(errno);
  const int rfd = open(path_.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(rfd, 0) << strerror(errno);
  auto f = MustOpen(/*max_queued_bytes=*/4096);
  ASSERT_NE(f, nullptr);

  const std::string line = std::string(999, 'x') + "\n";
  uint64_t accepted = 0, refused = 0;
  // Fill the pipe (64 KiB by default, at most 1 MiB) and then the queue.
  for (int i = 0; i < 100000 && refused < 50; ++i) {
    if (f->Submit(line, 1)) {
      ++accepted;
    } else {
      ++refused;
    }
  }
  ASSERT_EQ(refused, 50u) << "the writer never stalled";
  EXPECT_EQ(f->dropped_lines(), refused);

  std::string got;
  std::thread reader([&] {
    char buf[65536];
    for (;;) {
      pollfd p{rfd, POLLIN, 0};
      poll(&p, 1, 1000);
      ssize_t n = read(rfd, buf, sizeof(buf));
      if (n > 0) {
        got.append(buf, static_cast<size_t>(n));
      } else if (n == 0) {
        return;  // the writer closed: everything has been read
      } else if (errno != EAGAIN && errno != EINTR) {
        return;
      }
    }
  });
  f->Sync();
  EXPECT_EQ(f->written_lines(), accepted);
  f.reset();  // closes the write end: the reader sees EOF
  reader.join();
  close(rfd);
  EXPECT_EQ(got.size(), accepted * line.size());
  EXPECT_EQ(static_cast<uint64_t>(std::count(got.begin(), got.end(), '\n')), accepted);
}

TEST_F(LogFileTest, WriteErrorsCountLinesAsDropped) {
  if (access("/dev/full", W_OK) != 0) GTEST_SKIP() << "no /dev/full";
  auto f = LogFile::Open("/dev/full");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE((*f)->Submit("a\nb\n", 2));  // queued fine, fails to write
  EXPECT_TRUE((*f)->Submit("c\n", 1));
  (*f)->Sync();
  EXPECT_EQ((*f)->dropped_lines(), 3u);
  EXPECT_EQ((*f)->written_lines(), 0u);
}

TEST_F(LogFileTest, DestructorWritesEverythingSubmitted) {
  std::string want;
  {
    auto f = MustOpen();
    ASSERT_NE(f, nullptr);
    for (int i = 0; i < 5000; ++i) {
      std::string l = absl::StrCat(i, "\n");
      want += l;
      f->Submit(std::move(l), 1);
    }
  }
  EXPECT_EQ(ReadFile(path_), want);
}

TEST_F(LogFileTest, OpenFailsClearlyOnADirectory) {
  auto f = LogFile::Open(dir_);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find(dir_), absl::string_view::npos) << f.status();
  EXPECT_NE(f.status().message().find(strerror(EISDIR)), absl::string_view::npos) << f.status();

  auto missing = LogFile::Open(dir_ + "/no/such/dir/access.log");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound) << missing.status();
}

}  // namespace
}  // namespace sluice::core
