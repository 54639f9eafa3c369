#include "core/proxy/hsts.h"

#include <vector>

#include "gtest/gtest.h"

namespace sluice::core {
namespace {

Config WithHsts(std::string value) {
  Config cfg;
  cfg.hsts = value;
  if (!value.empty()) cfg.hsts_fields = "Strict-Transport-Security: " + value + "\r\n";
  return cfg;
}

TEST(Hsts, OnEveryTlsResponseWhileSet) {
  const Config cfg = WithHsts("max-age=63072000; includeSubDomains");
  EXPECT_TRUE(SendsHsts(cfg, /*secure=*/true));
  EXPECT_EQ(HstsFields(cfg, true),
            "Strict-Transport-Security: max-age=63072000; includeSubDomains\r\n");
  std::vector<http::Header> headers{{"content-type", "application/json"}};
  AddHsts(cfg, true, headers);
  ASSERT_EQ(headers.size(), 2u);
  EXPECT_EQ(headers[1].name, "strict-transport-security");
  EXPECT_EQ(headers[1].value, "max-age=63072000; includeSubDomains");
}

TEST(Hsts, NeverOverPlainHttp) {
  const Config cfg = WithHsts("max-age=1");
  EXPECT_FALSE(SendsHsts(cfg, /*secure=*/false));
  EXPECT_EQ(HstsFields(cfg, false), "");
  std::vector<http::Header> headers;
  AddHsts(cfg, false, headers);
  EXPECT_TRUE(headers.empty());
}

TEST(Hsts, OffWhenEmpty) {
  const Config cfg = WithHsts("");
  EXPECT_FALSE(SendsHsts(cfg, true));
  EXPECT_EQ(HstsFields(cfg, true), "");
  std::vector<http::Header> headers;
  AddHsts(cfg, true, headers);
  EXPECT_TRUE(headers.empty());
}

}  // namespace
}  // namespace sluice::core
