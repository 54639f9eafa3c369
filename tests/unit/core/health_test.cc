#include "core/upstream/health.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sluice::core {
namespace {

TEST(ModelNamesTest, ReadsTheNamesOfTagsAndPsAnswers) {
  absl::StatusOr<std::vector<std::string>> names =
      ModelNames(R"({"models":[{"name":"llama3:8b","size":1,"details":{"family":"llama"}},)"
                 R"({"model":"x","name":"qwen2:0.5b","expires_at":"2026-12-07T13:00:00Z"}]})");
  ASSERT_TRUE(names.ok()) << names.status();
  EXPECT_EQ(*names, (std::vector<std::string>{"llama3:8b", "qwen2:0.5b"}));
  names = ModelNames(R"({"models":[]})");
  ASSERT_TRUE(names.ok());
  EXPECT_TRUE(names->empty());
}

TEST(ModelNamesTest, RefusesWhatIsNotAModelList) {
  EXPECT_FALSE(ModelNames("").ok());
  EXPECT_FALSE(ModelNames("<html>").ok());
  EXPECT_FALSE(ModelNames(R"({"error":"busy"})").ok());
  EXPECT_FALSE(ModelNames(R"({"models":[{"size":1}]})").ok());
  EXPECT_FALSE(ModelNames(R"({"models":[{"name":1}]})").ok());
  EXPECT_FALSE(ModelNames(R"({"models":[{"name":"a"})").ok()) << "cut short";
}

// A backend that accepts and never answers fails the check at the timeout
// instead of holding the prober.
TEST(ProbeGetTest, SilentBackendTimesOut) {
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(listen(lfd, 4), 0);
  socklen_t len = sizeof(a);
  getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
  BackendConfig b;
  b.name = b.host_header = "127.0.0.1";
  memcpy(&b.addr.storage, &a, sizeof(a));
  b.addr.len = sizeof(a);
  absl::StatusOr<ProbeAnswer> r = ProbeGet(b, "/api/ps", 100'000'000);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  close(lfd);
  r = ProbeGet(b, "/api/ps", 100'000'000);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << "refused: " << r.status();
}

}  // namespace
}  // namespace sluice::core
