#include "core/server/cli.h"

#include <netinet/in.h>

#include <string>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace sluice::core {
namespace {

std::string Error(const char* text) {
  absl::StatusOr<SocketAddress> a = ParseHostPort(text, /*numeric_only=*/true);
  EXPECT_FALSE(a.ok()) << text;
  return a.ok() ? "" : std::string(a.status().message());
}

TEST(ParseHostPortTest, NumericAddresses) {
  absl::StatusOr<SocketAddress> v4 = ParseHostPort("127.0.0.1:11434", true);
  ASSERT_TRUE(v4.ok()) << v4.status();
  EXPECT_EQ(v4->family(), AF_INET);
  EXPECT_EQ(ntohs(reinterpret_cast<const sockaddr_in*>(v4->get())->sin_port), 11434);
  absl::StatusOr<SocketAddress> v6 = ParseHostPort("[::1]:8080", true);
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(v6->family(), AF_INET6);
  absl::StatusOr<SocketAddress> any = ParseHostPort(":0", true);
  ASSERT_TRUE(any.ok()) << any.status();
  EXPECT_EQ(any->family(), AF_INET);
}

// A URL where host:port is expected: the message says what to write, for
// http:// (once taken silently) and https:// (once read as a bad IPv6
// address) alike, and a path is not dropped silently.
TEST(ParseHostPortTest, SchemeAndPathAreRefusedWithTheAddressToWrite) {
  EXPECT_EQ(Error("http://127.0.0.1:11434"),
            "expected host:port without a scheme, got 'http://127.0.0.1:11434' (write "
            "'127.0.0.1:11434')");
  EXPECT_EQ(Error("https://127.0.0.1:11434/"),
            "expected host:port without a scheme, got 'https://127.0.0.1:11434/' (write "
            "'127.0.0.1:11434')");
  EXPECT_EQ(Error("https://[::1]:443/v1"),
            "expected host:port without a scheme, got 'https://[::1]:443/v1' (write "
            "'[::1]:443')");
  EXPECT_EQ(Error("127.0.0.1:11434/api"),
            "expected host:port without a path, got '127.0.0.1:11434/api' (write "
            "'127.0.0.1:11434')");
  EXPECT_EQ(Error("127.0.0.1:11434/"),
            "expected host:port without a path, got '127.0.0.1:11434/' (write "
            "'127.0.0.1:11434')");
  EXPECT_TRUE(absl::StrContains(Error("::1:80"), "brackets"));
  EXPECT_TRUE(absl::StrContains(Error("127.0.0.1"), "host:port"));
}

}  // namespace
}  // namespace sluice::core
