// HTTP/1.1 client side timeouts: a client that never finishes its head
// (--client_header_timeout, 408) and an idle keepalive connection
// (--keepalive_timeout) are closed on time.
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {
namespace {

class H1ToH1ClientTimeout : public ProxyTest {};

TEST_F(H1ToH1ClientTimeout, IncompleteHeadClosedAfterHeaderTimeout) {
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--client_header_timeout=1s"}));
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  absl::Time start = absl::Now();
  IT_ASSERT_OK(conn->Send("GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n"));
  // A 408 answer is optional; the close is not.
  auto r = conn->ReadResponse(absl::Seconds(4));
  if (r.ok()) {
    EXPECT_EQ(r->status, 408) << r->body;
    IT_ASSERT_OK(conn->ExpectClosed(absl::Seconds(1)));
  } else {
    EXPECT_TRUE(absl::IsUnavailable(r.status()))
        << "connection neither answered nor closed: " << r.status();
  }
  absl::Duration took = absl::Now() - start;
  EXPECT_GE(took, absl::Milliseconds(900));
  EXPECT_LT(took, absl::Seconds(3));
}

TEST_F(H1ToH1ClientTimeout, IdleKeepaliveClosedAfterKeepaliveTimeout) {
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--keepalive_timeout=1s"}));
  IT_ASSERT_OK_AND_ASSIGN(auto conn, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(conn->Send(BuildRequest("GET", "/api/version")));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r, conn->ReadResponse());
  ASSERT_EQ(r.status, 200);
  absl::Time start = absl::Now();
  IT_ASSERT_OK(conn->ExpectClosed(absl::Seconds(4)));
  absl::Duration took = absl::Now() - start;
  EXPECT_GE(took, absl::Milliseconds(900));
  EXPECT_LT(took, absl::Seconds(3));
}

// A long stream is not "idle": --keepalive_timeout must not cut a response
// in progress, nor --client_header_timeout.
TEST_F(H1ToH1ClientTimeout, StreamOutlivesClientTimeouts) {
  ASSERT_NO_FATAL_FAILURE(StartStack({}, {"--keepalive_timeout=1s", "--client_header_timeout=1s"}));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse r,
                          Exchange(proxy_port(),
                                   BuildRequest("POST", "/api/generate",
                                                {{"Content-Type", "application/json"},
                                                 {"X-Sim-Tokens", "10"},
                                                 {"X-Sim-Token-Delay-Ms", "250"}},
                                                R"({"model":"sim","prompt":"hi"})"),
                                   absl::Seconds(10)));
  ASSERT_EQ(r.status, 200);
  EXPECT_TRUE(r.saw_last_chunk);
  EXPECT_TRUE(absl::StrContains(r.body, "\"done\":true"));
}

}  // namespace
}  // namespace sluice::integration
