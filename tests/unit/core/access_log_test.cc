#include "core/observe/access_log.h"

#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"
#include "tests/integration/json_lite.h"

namespace sluice::core {
namespace {

using integration::JsonValue;

// 2026-11-25 21:41:52 UTC.
constexpr int64_t kT0 = 1795642912;
constexpr int64_t kSec = 1000000000;
constexpr int64_t kMs = 1000000;

// Sets TZ for one test and puts the previous value back: localtime_r reads
// the zone that the last tzset() loaded.
class AccessLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tz = getenv("TZ");
    if (tz != nullptr) saved_tz_ = tz;
    SetZone("UTC");
  }
  void TearDown() override {
    if (saved_tz_) {
      setenv("TZ", saved_tz_->c_str(), 1);
    } else {
      unsetenv("TZ");
    }
    tzset();
  }
  static void SetZone(const char* zone) {
    setenv("TZ", zone, 1);
    tzset();
  }
  static bool HaveZone(const std::string& zone) {
    return access(("/usr/share/zoneinfo/" + zone).c_str(), R_OK) == 0;
  }

  static AccessRecord Full() {
    AccessRecord r;
    r.start_unix_ns = kT0 * kSec + 123 * kMs + 456789;
    r.remote_addr = "192.168.1.20";
    r.user = "alice";
    r.method = "POST";
    r.target = "/api/generate?x=1";
    r.protocol = "HTTP/1.1";
    r.status = 200;
    r.body_bytes_sent = 5120;
    r.referer = "https://ui.example/chat";
    r.user_agent = "curl/8.5.0";
    r.request_time_ns = 12345678;            // 0.012
    r.upstream_time_ns = 11 * kMs + 600000;  // 0.0116 -> 0.012
    r.principal = "key:alice";
    r.route = "generation";
    r.model = "llama3";
    r.stream = true;
    r.ttft_ns = 250 * kMs + 1234;   // 0.250001
    r.gap_p50_ns = 21 * kMs + 499;  // 0.021000
    r.gap_max_ns = 1 * kSec + 500;  // 1.000001 (rounded up from 1.0000005)
    r.prompt_tokens = 26;
    r.completion_tokens = 298;
    r.cancelled = false;
    r.worker = 3;
    r.connection = 4711;
    return r;
  }

  static std::string Format(AccessLogFormat format, const AccessRecord& r) {
    AccessLogFormatter f(format);
    std::string out;
    f.Append(r, &out);
    return out;
  }

  std::optional<std::string> saved_tz_;
};

// ------------------------------------------------------------------ nginx

TEST_F(AccessLogTest, NginxLineIsTheBaselineFormat) {
  EXPECT_EQ(Format(AccessLogFormat::kNginx, Full()),
            "192.168.1.20 - alice [25/Nov/2026:21:41:52 +0000] \"POST /api/generate?x=1 "
            "HTTP/1.1\" 200 5120 \"https://ui.example/chat\" \"curl/8.5.0\" rt=0.012 "
            "urt=0.012\n");
}

// With several backends the line ends with the one that answered, as
// nginx's $upstream_addr would; the JSON line names it too.
TEST_F(AccessLogTest, SeveralBackendsNameTheBackend) {
  AccessRecord r = Full();
  r.backend = "gpu-1";
  const std::string nginx = Format(AccessLogFormat::kNginx, r);
  EXPECT_EQ(nginx.substr(nginx.size() - 28), "rt=0.012 urt=0.012 ua=gpu-1\n") << nginx;
  EXPECT_NE(Format(AccessLogFormat::kJson, r).find(",\"backend\":\"gpu-1\","), std::string::npos);
}

// A generation that took a slot of a backend with slots= logs its wait in
// sluice's queue: qw= last on the nginx line, queue_wait in JSON.
TEST_F(AccessLogTest, QueueWaitIsLoggedWhenTheRequestTookASlot) {
  AccessRecord r = Full();
  r.backend = "gpu-1";
  r.queue_wait_ns = 1'234'567'890;
  const std::string nginx = Format(AccessLogFormat::kNginx, r);
  EXPECT_TRUE(absl::EndsWith(nginx, " urt=0.012 ua=gpu-1 qw=1.235\n")) << nginx;
  EXPECT_NE(Format(AccessLogFormat::kJson, r).find(",\"queue_wait\":1.235,"), std::string::npos);
  r.queue_wait_ns = 0;  // a slot was free
  EXPECT_TRUE(absl::EndsWith(Format(AccessLogFormat::kNginx, r), " qw=0.000\n"));
  r.queue_wait_ns = -1;  // took none
  EXPECT_EQ(Format(AccessLogFormat::kNginx, r).find("qw="), std::string::npos);
}

TEST_F(AccessLogTest, NginxEmptyFieldsAreDashesAndNoUpstreamIsDash) {
  AccessRecord r;
  r.start_unix_ns = kT0 * kSec;
  r.remote_addr = "::1";
  r.method = "GET";
  r.target = "/api/tags";
  r.protocol = "HTTP/2.0";
  r.status = 401;
  r.request_time_ns = 0;
  r.upstream_time_ns = -1;
  EXPECT_EQ(Format(AccessLogFormat::kNginx, r),
            "::1 - - [25/Nov/2026:21:41:52 +0000] \"GET /api/tags HTTP/2.0\" 401 0 \"-\" \"-\" "
            "rt=0.000 urt=-\n");
  // A request that never got a request line keeps its fields in place.
  AccessRecord bare;
  bare.start_unix_ns = kT0 * kSec;
  bare.remote_addr = "10.0.0.1";
  bare.status = 400;
  EXPECT_EQ(Format(AccessLogFormat::kNginx, bare),
            "10.0.0.1 - - [25/Nov/2026:21:41:52 +0000] \"- - -\" 400 0 \"-\" \"-\" rt=0.000 "
            "urt=-\n");
}

TEST_F(AccessLogTest, NginxEscapesLikeEscapeDefault) {
  AccessRecord r = Full();
  r.user = "Mr \"X\"";
  r.target = "/a b\\c";
  r.referer = "say \"hi\"\n";
  r.user_agent = "Mozilla/5.0 (X11; \x7f\xff\x01)\t\xc3\xa9";
  r.upstream_time_ns = -1;
  EXPECT_EQ(Format(AccessLogFormat::kNginx, r),
            "192.168.1.20 - Mr\\x20\\x22X\\x22 [25/Nov/2026:21:41:52 +0000] \"POST "
            "/a\\x20b\\x5Cc HTTP/1.1\" 200 5120 \"say \\x22hi\\x22\\x0A\" \"Mozilla/5.0 (X11; "
            "\\x7F\\xFF\\x01)\\x09\\xC3\\xA9\" rt=0.012 urt=-\n");
}

TEST_F(AccessLogTest, NginxTimesHaveMillisecondsRounded) {
  AccessRecord r = Full();
  const std::vector<std::pair<int64_t, std::string>> cases = {
      {0, "0.000"},        {499999, "0.000"},         {500000, "0.001"},
      {12345678, "0.012"}, {1999600000, "2.000"},     {61 * kSec + 5 * kMs, "61.005"},
      {-3, "0.000"},       {3600 * kSec, "3600.000"},
  };
  for (const auto& [ns, want] : cases) {
    r.request_time_ns = ns;
    r.upstream_time_ns = ns < 0 ? 0 : ns;
    const std::string line = Format(AccessLogFormat::kNginx, r);
    EXPECT_NE(line.find(" rt=" + want + " "), std::string::npos) << ns << ": " << line;
  }
}

TEST_F(AccessLogTest, NginxLocalTimeInKolkata) {
  if (!HaveZone("Asia/Kolkata")) GTEST_SKIP() << "no /usr/share/zoneinfo/Asia/Kolkata";
  SetZone("Asia/Kolkata");
  EXPECT_EQ(Format(AccessLogFormat::kNginx, Full()).substr(0, 58),
            "192.168.1.20 - alice [26/Nov/2026:03:11:52 +0530] \"POST /a");
  EXPECT_NE(
      Format(AccessLogFormat::kJson, Full()).find("{\"time\":\"2026-11-26T03:11:52.123+05:30\","),
      std::string::npos);
}

TEST_F(AccessLogTest, NginxLocalTimeWestOfGreenwich) {
  if (!HaveZone("America/New_York")) GTEST_SKIP() << "no /usr/share/zoneinfo/America/New_York";
  SetZone("America/New_York");
  EXPECT_NE(Format(AccessLogFormat::kNginx, Full()).find("[25/Nov/2026:16:41:52 -0500]"),
            std::string::npos);
  EXPECT_NE(Format(AccessLogFormat::kJson, Full()).find("\"2026-11-25T16:41:52.123-05:00\""),
            std::string::npos);
}

// One formatter across seconds: the cached time changes with the second.
TEST_F(AccessLogTest, TimeCacheFollowsTheSecond) {
  AccessLogFormatter f(AccessLogFormat::kNginx);
  AccessRecord r = Full();
  std::string out;
  r.start_unix_ns = kT0 * kSec + 999 * kMs;
  f.Append(r, &out);
  r.start_unix_ns = kT0 * kSec + 1 * kMs;
  f.Append(r, &out);
  r.start_unix_ns = (kT0 + 1) * kSec;
  f.Append(r, &out);
  r.start_unix_ns = (kT0 + 86400) * kSec;
  f.Append(r, &out);
  std::vector<std::string> lines = absl::StrSplit(out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_NE(lines[0].find("[25/Nov/2026:21:41:52 +0000]"), std::string::npos);
  EXPECT_NE(lines[1].find("[25/Nov/2026:21:41:52 +0000]"), std::string::npos);
  EXPECT_NE(lines[2].find("[25/Nov/2026:21:41:53 +0000]"), std::string::npos);
  EXPECT_NE(lines[3].find("[26/Nov/2026:21:41:52 +0000]"), std::string::npos);
}

// The operators' one-liners (NGINX_BASELINE.md) read the fields by number.
TEST_F(AccessLogTest, NginxLineSplitsForAwk) {
  AccessLogFormatter f(AccessLogFormat::kNginx);
  std::string out;
  AccessRecord r = Full();
  r.user_agent = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36";
  r.referer = "";
  f.Append(r, &out);
  r = Full();
  r.remote_addr = "10.0.0.7";
  r.user = "bob smith";  // space escaped: $3 stays one field
  r.target = "/api/chat";
  r.status = 429;
  r.request_time_ns = 1500 * kMs;
  r.upstream_time_ns = -1;
  f.Append(r, &out);
  r.remote_addr = "10.0.0.7";
  r.user = "";
  r.method = "";
  r.target = "";
  r.protocol = "";
  r.status = 400;
  r.request_time_ns = 2 * kMs;
  f.Append(r, &out);

  struct Want {
    std::string addr, target;
    int status;
    uint64_t bytes;
    double rt;
  };
  const std::vector<Want> want = {{"192.168.1.20", "/api/generate?x=1", 200, 5120, 0.012},
                                  {"10.0.0.7", "/api/chat", 429, 5120, 1.5},
                                  {"10.0.0.7", "-", 400, 5120, 0.002}};
  std::vector<std::string> lines = absl::StrSplit(out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), want.size());
  std::map<std::string, int> per_ip;  // awk '{print $1}' | sort | uniq -c
  for (size_t i = 0; i < lines.size(); ++i) {
    // awk's default field splitting: runs of blanks.
    std::vector<std::string> fields = absl::StrSplit(lines[i], ' ', absl::SkipEmpty());
    ASSERT_GE(fields.size(), 12u) << lines[i];
    const auto field = [&](int n) { return fields[n - 1]; };  // $n
    EXPECT_EQ(field(1), want[i].addr);
    EXPECT_EQ(field(2), "-");
    EXPECT_EQ(field(4).front(), '[');
    EXPECT_EQ(field(5).back(), ']');
    EXPECT_EQ(field(6).front(), '"');
    EXPECT_EQ(field(7), want[i].target);
    EXPECT_EQ(field(8).back(), '"');
    EXPECT_EQ(field(9), std::to_string(want[i].status));
    EXPECT_EQ(field(10), std::to_string(want[i].bytes));
    ++per_ip[field(1)];
    // The rt= field, wherever the user agent's spaces put it.
    std::optional<double> rt;
    for (const std::string& f : fields) {
      if (f.rfind("rt=", 0) == 0) {
        char* end = nullptr;
        rt = strtod(f.c_str() + 3, &end);
        EXPECT_EQ(*end, '\0') << f;
      }
    }
    ASSERT_TRUE(rt.has_value()) << lines[i];
    EXPECT_DOUBLE_EQ(*rt, want[i].rt);
    EXPECT_EQ(fields[fields.size() - 2].substr(0, 3), "rt=");
    EXPECT_EQ(fields.back().substr(0, 4), "urt=");
  }
  EXPECT_EQ(per_ip["10.0.0.7"], 2);
  EXPECT_EQ(per_ip["192.168.1.20"], 1);
}

// ------------------------------------------------------------------- JSON

TEST_F(AccessLogTest, JsonLineIsExact) {
  EXPECT_EQ(Format(AccessLogFormat::kJson, Full()),
            "{\"time\":\"2026-11-25T21:41:52.123+00:00\",\"remote_addr\":\"192.168.1.20\","
            "\"user\":\"alice\",\"request_method\":\"POST\",\"uri\":\"/api/generate?x=1\","
            "\"protocol\":\"HTTP/1.1\",\"status\":200,\"body_bytes_sent\":5120,"
            "\"referer\":\"https://ui.example/chat\",\"user_agent\":\"curl/8.5.0\","
            "\"request_time\":0.012,\"upstream_response_time\":0.012,\"queue_wait\":null,"
            "\"backend\":null,"
            "\"route\":\"generation\","
            "\"key\":\"key:alice\",\"model\":\"llama3\",\"stream\":true,\"ttft\":0.250001,"
            "\"gap_p50\":0.021000,\"gap_max\":1.000001,\"prompt_tokens\":26,"
            "\"completion_tokens\":298,\"cancelled\":false,\"worker\":3,\"connection\":4711}\n");
}

TEST_F(AccessLogTest, JsonKeysInOrderAndUnknownsNull) {
  AccessRecord r;
  r.start_unix_ns = kT0 * kSec + 7 * kMs;
  r.remote_addr = "127.0.0.1";
  r.method = "GET";
  r.target = "/";
  r.protocol = "HTTP/1.0";
  r.status = 499;
  r.cancelled = true;
  const std::string line = Format(AccessLogFormat::kJson, r);
  ASSERT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1);
  std::optional<JsonValue> v = JsonValue::Parse(line.substr(0, line.size() - 1));
  ASSERT_TRUE(v.has_value()) << line;
  const std::vector<std::string> keys = {"time",
                                         "remote_addr",
                                         "user",
                                         "request_method",
                                         "uri",
                                         "protocol",
                                         "status",
                                         "body_bytes_sent",
                                         "referer",
                                         "user_agent",
                                         "request_time",
                                         "upstream_response_time",
                                         "queue_wait",
                                         "backend",
                                         "route",
                                         "key",
                                         "model",
                                         "stream",
                                         "ttft",
                                         "gap_p50",
                                         "gap_max",
                                         "prompt_tokens",
                                         "completion_tokens",
                                         "cancelled",
                                         "worker",
                                         "connection"};
  ASSERT_EQ(v->members().size(), keys.size());
  for (size_t i = 0; i < keys.size(); ++i) EXPECT_EQ(v->members()[i].first, keys[i]);
  EXPECT_EQ(v->GetString("time"), "2026-11-25T21:41:52.007+00:00");
  for (const char* null_key :
       {"user", "referer", "user_agent", "upstream_response_time", "queue_wait", "backend", "route",
        "key", "model", "ttft", "gap_p50", "gap_max", "prompt_tokens", "completion_tokens"}) {
    ASSERT_NE(v->Get(null_key), nullptr) << null_key;
    EXPECT_EQ(v->Get(null_key)->type(), JsonValue::Type::kNull) << null_key;
  }
  EXPECT_EQ(v->GetInt("status"), 499);
  EXPECT_TRUE(v->GetBool("cancelled"));
  EXPECT_FALSE(v->GetBool("stream"));
  EXPECT_EQ(v->GetInt("worker"), 0);
  EXPECT_NE(line.find("\"request_time\":0.000,"), std::string::npos);
  EXPECT_NE(line.find("\"prompt_tokens\":null,\"completion_tokens\":null,"), std::string::npos);
}

TEST_F(AccessLogTest, JsonEscapesAndReplacesInvalidUtf8) {
  AccessRecord r = Full();
  // Quote, backslash, controls, DEL, valid 2/3/4-byte UTF-8, then invalid:
  // a lone continuation byte, a truncated 3-byte sequence, an overlong '/',
  // a surrogate, a code point above U+10FFFF, 0xFF.
  const std::string ua =
      "a\"b\\c\n\r\t\x01\x1f\x7f"
      "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"
      "|\x80|\xe2\x82|\xc0\xaf|\xed\xa0\x80|\xf4\x90\x80\x80|\xff|";
  r.user_agent = ua;
  r.model = "qwen2.5:7b \"x\"";
  const std::string line = Format(AccessLogFormat::kJson, r);
  EXPECT_NE(line.find("\"user_agent\":\"a\\\"b\\\\c\\n\\r\\t\\u0001\\u001F\\u007F"
                      "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"
                      "|\\ufffd|\\ufffd|\\ufffd\\ufffd|\\ufffd\\ufffd\\ufffd|"
                      "\\ufffd\\ufffd\\ufffd\\ufffd|\\ufffd|\""),
            std::string::npos)
      << line;
  std::optional<JsonValue> v = JsonValue::Parse(line.substr(0, line.size() - 1));
  ASSERT_TRUE(v.has_value()) << line;
  EXPECT_EQ(v->GetString("model"), "qwen2.5:7b \"x\"");
  const std::string replacement = "\xef\xbf\xbd";
  EXPECT_EQ(v->GetString("user_agent"),
            "a\"b\\c\n\r\t\x01\x1f\x7f\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80|" + replacement + "|" +
                replacement + "|" + replacement + replacement + "|" + replacement + replacement +
                replacement + "|" + replacement + replacement + replacement + replacement + "|" +
                replacement + "|");
}

TEST_F(AccessLogTest, AppendAddsToTheBuffer) {
  AccessLogFormatter f(AccessLogFormat::kJson);
  EXPECT_EQ(f.format(), AccessLogFormat::kJson);
  std::string out = "previous\n";
  f.Append(Full(), &out);
  f.Append(Full(), &out);
  std::vector<std::string> lines = absl::StrSplit(out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0], "previous");
  EXPECT_EQ(lines[1], lines[2]);
}

}  // namespace
}  // namespace sluice::core
