#include "core/proxy/admission.h"

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/engine/loop.h"
#include "core/observe/observability.h"
#include "core/proxy/request_record.h"
#include "core/server/config.h"
#include "core/server/shard.h"
#include "core/server/snapshot_slot.h"
#include "gtest/gtest.h"
#include "policy/limiter.h"

namespace sluice::core {
namespace {

// The client side as the gate sees it: what it was asked to do.
struct FakeDownstream final : Downstream {
  void SendResponseHead(const http::ResponseHead&) override {}
  void SendResponseBody(Slice) override {}
  void SendResponseEnd() override {}
  void SendError(int, std::string_view) override {}
  void SendPolicyAnswer(int status, std::string_view error,
                        const std::vector<http::Header>& headers) override {
    answers.push_back({status, std::string(error), headers});
  }
  void SendJsonAnswer(int status, std::string json,
                      const std::vector<http::Header>& headers) override {
    answers.push_back({status, std::move(json), headers});
  }
  bool over_limit() const override { return over; }
  void CloseAfterResponse() override { close_after = true; }
  void AbortResponse() override {}
  void SendTunnelData(Slice) override {}
  void EndTunnel() override {}
  bool congested() const override { return false; }
  void PauseReading() override { ++pauses; }
  void ResumeReading() override { ++resumes; }

  struct Answer {
    int status;
    std::string error;
    std::vector<http::Header> headers;
  };
  std::vector<Answer> answers;
  bool over = false;
  bool close_after = false;
  int pauses = 0;
  int resumes = 0;
};

std::string HeaderValue(const std::vector<http::Header>& headers, std::string_view name) {
  for (const http::Header& h : headers) {
    if (h.name == name) return h.value;
  }
  return "(absent)";
}

// A shard on a loop that never runs (no io_uring is set up): the gate's
// decisions that need no wait are made in Start, on the test's thread.
class AdmissionGateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    loop_ = std::make_unique<Loop>(Loop::Options{});
    config_.policy_slot = &slot_;
    config_.rate_table = &rates_;
    config_.conn_table = &conns_;
    config_.obs = &obs_;
  }
  void UsePolicy(policy::PolicyOptions o) {
    absl::StatusOr<std::shared_ptr<const policy::Policy>> p = policy::Policy::Build(o, 1);
    ASSERT_TRUE(p.ok()) << p.status();
    slot_.Set(*p);
    shard_ = std::make_unique<Shard>(0, config_, loop_.get());
  }
  static policy::PolicyOptions NoAuth() {
    policy::PolicyOptions o;
    o.auth = "none";
    return o;
  }
  // Runs a gate over `head` from `peer`; the verdict, if it came.
  std::optional<AdmissionGate::Verdict> Run(http::RequestHead head, std::string peer,
                                            bool internal = false) {
    head_ = std::move(head);
    client_.peer = *policy::IpAddress::Parse(peer);
    client_.addr = peer + ":40000";
    client_.scheme = "http";
    client_.connection = 1;
    gate_ = std::make_unique<AdmissionGate>(shard_.get(), &down_, &head_, &client_);
    std::optional<AdmissionGate::Verdict> verdict;
    // As an exchange takes the verdict: an answer goes to the client.
    auto done = [this, &verdict](const AdmissionGate::Verdict& v) {
      verdict = v;
      verdict->error = {};  // a view into the gate; checked in the answer
      if (v.admitted) return;
      RequestRecord record(true, 1, 0, 0, 0);
      AnswerVerdict(v, &record, &down_);
      EXPECT_EQ(record.status(), v.status);
    };
    if (internal) {
      gate_->StartInternal(obs_.status_allow, done);
    } else {
      gate_->Start(done);
    }
    return verdict;
  }
  static http::RequestHead Get(std::string target) {
    http::RequestHead h;
    h.method = "GET";
    h.target = std::move(target);
    h.host = "proxy.example";
    return h;
  }

  PolicySlot slot_;
  policy::RateTable rates_{4096};
  policy::ConcurrencyTable conns_{4096};
  Observability obs_;
  Config config_;
  std::unique_ptr<Loop> loop_;
  std::unique_ptr<Shard> shard_;
  FakeDownstream down_;
  http::RequestHead head_;
  ClientInfo client_;
  std::unique_ptr<AdmissionGate> gate_;
};

TEST_F(AdmissionGateTest, AdmitsWhatThePolicyLets) {
  UsePolicy(NoAuth());
  std::optional<AdmissionGate::Verdict> v = Run(Get("/api/tags"), "192.0.2.10");
  ASSERT_TRUE(v.has_value());
  EXPECT_TRUE(v->admitted);
  EXPECT_TRUE(gate_->open());
  EXPECT_EQ(gate_->admission().group, "api");
  EXPECT_EQ(gate_->admission().client_text, "192.0.2.10");
  EXPECT_TRUE(down_.answers.empty());
  EXPECT_EQ(down_.pauses, 0);
  gate_->Close();
}

TEST_F(AdmissionGateTest, RefusalsAreAnsweredAndCounted) {
  policy::PolicyOptions o = NoAuth();
  o.deny_cidrs = "198.51.100.0/24";
  UsePolicy(o);
  std::optional<AdmissionGate::Verdict> v = Run(Get("/api/tags"), "198.51.100.1");
  ASSERT_TRUE(v.has_value());
  EXPECT_FALSE(v->admitted);
  EXPECT_EQ(v->status, 403);
  EXPECT_FALSE(gate_->open());
  ASSERT_EQ(down_.answers.size(), 1u);
  EXPECT_EQ(down_.answers[0].status, 403);
  EXPECT_FALSE(down_.answers[0].error.empty());
  EXPECT_EQ(shard_->metrics().rejected_denied, 1u);
}

TEST_F(AdmissionGateTest, ConnectionPastTheCapGets503AndCloses) {
  UsePolicy(NoAuth());
  down_.over = true;
  std::optional<AdmissionGate::Verdict> v = Run(Get("/api/tags"), "192.0.2.10");
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(v->status, 503);
  EXPECT_TRUE(down_.close_after);
  ASSERT_EQ(down_.answers.size(), 1u);
  EXPECT_EQ(down_.answers[0].error, "server at its connection limit, retry later");
  EXPECT_EQ(HeaderValue(down_.answers[0].headers, "Retry-After"), "1");
  EXPECT_EQ(shard_->metrics().rejected_overload, 1u);
  EXPECT_EQ(shard_->metrics().rejected_busy, 0u);
}

TEST_F(AdmissionGateTest, RateLimitWithoutNodelayHoldsTheRequest) {
  policy::PolicyOptions o = NoAuth();
  o.rate_api = "1r/s burst=5";
  UsePolicy(o);
  ASSERT_TRUE(Run(Get("/api/tags"), "192.0.2.10").value().admitted);
  gate_->Close();
  // The next one waits its turn: no verdict yet, reading paused, its body
  // held.
  std::optional<AdmissionGate::Verdict> v = Run(Get("/api/tags"), "192.0.2.10");
  EXPECT_FALSE(v.has_value());
  EXPECT_FALSE(gate_->open());
  EXPECT_EQ(down_.pauses, 1);
  gate_->Hold(Slice::FromString("body"));
  gate_->HoldEnd();
  EXPECT_TRUE(gate_->end_held());
  EXPECT_EQ(gate_->TakeHeld().size(), 1u);
  // The client goes before its turn: nothing is ever answered.
  gate_->Cancel();
  EXPECT_TRUE(down_.answers.empty());
  gate_->ResumeReading();
  EXPECT_EQ(down_.resumes, 1);
  gate_->ResumeReading();  // once
  EXPECT_EQ(down_.resumes, 1);
}

TEST_F(AdmissionGateTest, InternalEndpointsTakeTheAllowListAndGetOrHead) {
  UsePolicy(NoAuth());
  obs_.status_allow = *policy::IpSet::Parse("127.0.0.1/32");
  down_.over = true;  // the connection cap does not apply to them

  std::optional<AdmissionGate::Verdict> v = Run(Get("/status"), "127.0.0.1", true);
  ASSERT_TRUE(v.has_value());
  EXPECT_TRUE(v->admitted);
  EXPECT_EQ(gate_->admission().group, "internal");
  EXPECT_EQ(gate_->admission().client_text, "127.0.0.1");

  v = Run(Get("/status"), "192.0.2.10", true);
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(v->status, 403);
  EXPECT_EQ(down_.answers.back().error, "access denied for this address");
  EXPECT_EQ(shard_->metrics().rejected_denied, 1u);

  http::RequestHead post = Get("/metrics");
  post.method = "POST";
  v = Run(std::move(post), "127.0.0.1", true);
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(v->status, 405);
  EXPECT_EQ(HeaderValue(down_.answers.back().headers, "Allow"), "GET, HEAD");
  EXPECT_FALSE(down_.close_after);
}

TEST(CountRefusalTest, EachAnswerHasItsCounter) {
  MetricsShard m;
  CountRefusal(401, "unauthorized", &m);
  CountRefusal(403, "denied", &m);
  CountRefusal(429, "too many concurrent requests", &m);
  CountRefusal(429, "rate limit exceeded", &m);
  CountRefusal(503, "authentication busy, retry later", &m);
  CountRefusal(503, "server at its connection limit, retry later", &m);
  CountRefusal(204, "", &m);  // a preflight is no refusal
  EXPECT_EQ(m.rejected_auth, 1u);
  EXPECT_EQ(m.rejected_denied, 1u);
  EXPECT_EQ(m.rejected_concurrency, 1u);
  EXPECT_EQ(m.rejected_rate, 1u);
  EXPECT_EQ(m.rejected_busy, 1u);
  EXPECT_EQ(m.rejected_overload, 1u);
}

}  // namespace
}  // namespace sluice::core
