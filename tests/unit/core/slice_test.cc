#include "core/engine/slice.h"

#include <string>

#include "gtest/gtest.h"

namespace sluice::core {
namespace {

struct CountingOwner : SliceOwner {
  int released = 0;
  CountingOwner() {
    release = [](SliceOwner* o) { ++static_cast<CountingOwner*>(o)->released; };
  }
};

TEST(SliceTest, ReleasesOwnerAfterLastView) {
  CountingOwner owner;
  const char bytes[] = "hello world";
  {
    Slice a(&owner, bytes, 11);
    Slice b = a.Sub(6, 5);
    EXPECT_EQ(b.view(), "world");
    Slice c = std::move(a);
    EXPECT_TRUE(a.empty());
    EXPECT_EQ(owner.refs, 2u);
    c = Slice();
    EXPECT_EQ(owner.released, 0);
  }
  EXPECT_EQ(owner.released, 1);
  EXPECT_EQ(owner.refs, 0u);
}

TEST(SliceTest, CopyOwnsItsBytes) {
  std::string src = "payload";
  Slice s = Slice::Copy(src);
  src[0] = 'X';
  EXPECT_EQ(s.view(), "payload");
  Slice sub = s.SubOf(s.view().substr(3));
  s = Slice();
  EXPECT_EQ(sub.view(), "load");
  EXPECT_TRUE(Slice::Copy("").empty());
}

TEST(SliceTest, FromStringAndStatic) {
  std::string big(1000, 'x');
  const char* p = big.data();
  Slice s = Slice::FromString(std::move(big));
  EXPECT_EQ(s.size(), 1000u);
  EXPECT_EQ(s.data(), p);  // moved, not copied
  Slice t = s.Sub(10, 5);
  s = Slice();
  EXPECT_EQ(t.view(), "xxxxx");
  Slice st = Slice::Static("abc");
  Slice st2 = st;
  EXPECT_EQ(st2.view(), "abc");
}

TEST(SliceWriterTest, TakesCommittedBytesAcrossBlocks) {
  SliceWriter w(8);
  std::string out;
  std::vector<Slice> held;
  for (char c = 'a'; c <= 'z'; ++c) {
    size_t len = 0;
    char* p = w.Reserve(&len);
    ASSERT_GT(len, 0u);
    *p = c;
    w.Commit(1);
    if (c % 3 == 0) held.push_back(w.Take());
  }
  held.push_back(w.Take());
  for (const Slice& s : held) out += s.view();
  EXPECT_EQ(out, "abcdefghijklmnopqrstuvwxyz");
  EXPECT_TRUE(w.Take().empty());
  w.Trim();
  size_t len = 0;
  w.Reserve(&len);
  EXPECT_EQ(len, 8u);
}

TEST(SliceTest, ExtendMergesOnlyContiguousViewsOfOneOwner) {
  CountingOwner owner, other;
  const char bytes[] = "abcdefgh";
  Slice a(&owner, bytes, 3);
  EXPECT_TRUE(a.Extend(Slice(&owner, bytes + 3, 2)));
  EXPECT_EQ(a.view(), "abcde");
  EXPECT_EQ(owner.refs, 1u);                            // the merged view holds one reference
  EXPECT_FALSE(a.Extend(Slice(&owner, bytes + 6, 2)));  // a gap
  EXPECT_FALSE(a.Extend(Slice(&other, bytes + 5, 2)));  // another owner
  EXPECT_FALSE(Slice::Static("ab").Extend(Slice::Static("c")));  // no owner
  EXPECT_EQ(a.view(), "abcde");
}

TEST(SliceWriterTest, AppendCopiesIntoSharedBlocksThatLiveWhileTheirViewsDo) {
  SliceWriter w(16);
  Slice a = w.Append("0123456789");
  Slice b = w.Append("abcde");
  EXPECT_EQ(a.view(), "0123456789");
  EXPECT_EQ(b.view(), "abcde");
  EXPECT_EQ(a.data() + a.size(), b.data());  // same block, back to back
  EXPECT_TRUE(a.Extend(b));
  EXPECT_EQ(a.view(), "0123456789abcde");
  Slice c = w.Append("XYZ");  // does not fit: a new block
  EXPECT_EQ(c.view(), "XYZ");
  EXPECT_FALSE(a.Extend(c));
  w.Trim();
  EXPECT_EQ(a.view(), "0123456789abcde");  // the views keep their blocks
  EXPECT_EQ(c.view(), "XYZ");
  EXPECT_TRUE(w.Append("").empty());
}

}  // namespace
}  // namespace sluice::core
