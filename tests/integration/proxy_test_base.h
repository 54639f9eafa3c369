// The gtest side of the harness: a fixture that starts ollama-sim and sluice
// in front of it, status assertion macros, and helpers to read the answers
// of the simulator's /sim/echo and of sluice's JSON errors.
#pragma once

#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"
#include "tests/integration/json_lite.h"

#define IT_CONCAT_INNER(a, b) a##b
#define IT_CONCAT(a, b) IT_CONCAT_INNER(a, b)

// ASSERT that an absl::Status is OK, printing it otherwise.
#define IT_ASSERT_OK(expr)                      \
  do {                                          \
    const ::absl::Status it_status_ = (expr);   \
    ASSERT_TRUE(it_status_.ok()) << it_status_; \
  } while (0)

// `lhs = *expr` for an absl::StatusOr, or a fatal failure with its status.
#define IT_ASSERT_OK_AND_ASSIGN(lhs, expr) \
  IT_ASSERT_OK_AND_ASSIGN_IMPL(IT_CONCAT(it_statusor_, __LINE__), lhs, expr)
#define IT_ASSERT_OK_AND_ASSIGN_IMPL(var, lhs, expr) \
  auto var = (expr);                                 \
  ASSERT_TRUE(var.ok()) << var.status();             \
  lhs = std::move(*var)

namespace sluice::integration {

// Starts ollama-sim and sluice per test; on failure, prints the tails of
// their stderr. Also fails a test after which sluice died unexpectedly.
class ProxyTest : public ::testing::Test {
 protected:
  void StartStack(const std::vector<std::string>& sim_args = {},
                  const std::vector<std::string>& sluice_args = {}) {
    auto sim = StartSim(sim_args);
    ASSERT_TRUE(sim.ok()) << sim.status();
    sim_ = std::move(*sim);
    auto sluice = StartSluice(sim_->port(), sluice_args);
    ASSERT_TRUE(sluice.ok()) << sluice.status();
    sluice_ = std::move(*sluice);
  }

  void TearDown() override {
    if (sluice_ != nullptr && !expect_sluice_exit_ &&
        sluice_->WaitExit(absl::ZeroDuration()).has_value()) {
      ExitInfo info = *sluice_->WaitExit(absl::ZeroDuration());
      ADD_FAILURE() << "sluice exited during the test (code " << info.code << ", signal "
                    << info.signal << ")";
    }
    // A sanitizer build reports in the child's stderr and, for TSan, keeps
    // running: stop both processes so that the reports are complete, then
    // fail the test for any of them.
    for (auto* child : {&sluice_, &sim_}) {
      if (*child == nullptr) continue;
      (*child)->Terminate();
      std::optional<std::string> report = SanitizerReport((*child)->Stderr());
      if (report.has_value()) {
        ADD_FAILURE() << (child == &sluice_ ? "sluice" : "ollama-sim")
                      << " reported a sanitizer error:\n"
                      << *report;
      }
    }
    if (HasFailure()) {
      if (sluice_ != nullptr) {
        std::cerr << "---- sluice stderr (tail) ----\n" << Tail(sluice_->Stderr()) << "\n";
      }
      if (sim_ != nullptr) {
        std::cerr << "---- ollama-sim stderr (tail) ----\n" << Tail(sim_->Stderr()) << "\n";
      }
    }
    sluice_.reset();
    sim_.reset();
  }

  static std::string Tail(const std::string& s) {
    constexpr size_t kMax = 4000;
    return s.size() > kMax ? s.substr(s.size() - kMax) : s;
  }

  int sim_port() const { return sim_->port(); }
  int proxy_port() const { return sluice_->port(); }
  std::string proxy_url() const { return absl::StrCat("http://127.0.0.1:", proxy_port()); }

  std::unique_ptr<ChildProcess> sim_;
  std::unique_ptr<ChildProcess> sluice_;
  bool expect_sluice_exit_ = false;
};

// The /sim/echo answer: what the upstream received.
struct EchoedRequest {
  std::string method;
  std::string target;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;

  // Every value of header `name` (case-insensitive), in received order.
  std::vector<std::string> All(absl::string_view name) const {
    std::vector<std::string> out;
    for (const auto& [n, v] : headers) {
      if (absl::EqualsIgnoreCase(n, name)) out.push_back(v);
    }
    return out;
  }
  std::optional<std::string> First(absl::string_view name) const {
    std::vector<std::string> all = All(name);
    if (all.empty()) return std::nullopt;
    return all.front();
  }
  std::string HeaderDump() const {
    std::string out;
    for (const auto& [n, v] : headers) absl::StrAppend(&out, n, ": ", v, "\n");
    return out;
  }
};

inline std::optional<EchoedRequest> ParseEcho(absl::string_view body) {
  std::optional<JsonValue> json = JsonValue::Parse(body);
  if (!json.has_value() || !json->is_object()) return std::nullopt;
  EchoedRequest echo;
  echo.method = json->GetString("method").value_or("");
  echo.target = json->GetString("target").value_or("");
  echo.body = json->GetString("body").value_or("");
  const JsonValue* headers = json->Get("headers");
  if (headers == nullptr || !headers->is_array()) return std::nullopt;
  for (const JsonValue& pair : headers->array()) {
    if (!pair.is_array() || pair.array().size() != 2) return std::nullopt;
    echo.headers.emplace_back(pair.array()[0].str(), pair.array()[1].str());
  }
  return echo;
}

// The "error" string of a sluice JSON error body, or nullopt when the body
// is not such an object.
inline std::optional<std::string> JsonError(absl::string_view body) {
  std::optional<JsonValue> json = JsonValue::Parse(body);
  if (!json.has_value()) return std::nullopt;
  return json->GetString("error");
}

}  // namespace sluice::integration
