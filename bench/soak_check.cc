// The soak client's checks: the error record, a strict JSON validator and
// the body checks of each route (soak.cc lists what is checked).
#include <cctype>
#include <cstring>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/soak.h"

namespace sluice::bench::soak {

Stats g_stats;
std::atomic<bool> g_stopping{false};

namespace {

constexpr size_t kErrorsKept = 10;

// A minimal RFC 8259 validator: is `s` exactly one JSON value (surrounding
// whitespace allowed)? Enough to catch truncated, spliced or corrupted text.
class JsonCheck {
 public:
  static bool Valid(std::string_view s) {
    JsonCheck j(s);
    j.Ws();
    if (!j.Value(0)) return false;
    j.Ws();
    return j.p_ == s.size();
  }

 private:
  explicit JsonCheck(std::string_view s) : s_(s) {}
  bool More() const { return p_ < s_.size(); }
  char Peek() const { return More() ? s_[p_] : '\0'; }
  void Ws() {
    while (More() && (Peek() == ' ' || Peek() == '\t' || Peek() == '\n' || Peek() == '\r')) ++p_;
  }
  bool Lit(std::string_view w) {
    if (s_.substr(p_, w.size()) != w) return false;
    p_ += w.size();
    return true;
  }
  bool Value(int depth) {
    if (depth > 64) return false;
    switch (Peek()) {
      case '{':
        return Container(depth, '}', true);
      case '[':
        return Container(depth, ']', false);
      case '"':
        return String();
      case 't':
        return Lit("true");
      case 'f':
        return Lit("false");
      case 'n':
        return Lit("null");
      default:
        return Number();
    }
  }
  bool Container(int depth, char close, bool object) {
    ++p_;
    Ws();
    if (Peek() == close) {
      ++p_;
      return true;
    }
    while (true) {
      Ws();
      if (object) {
        if (!String()) return false;
        Ws();
        if (Peek() != ':') return false;
        ++p_;
        Ws();
      }
      if (!Value(depth + 1)) return false;
      Ws();
      if (Peek() == ',') {
        ++p_;
        continue;
      }
      if (Peek() != close) return false;
      ++p_;
      return true;
    }
  }
  bool String() {
    if (Peek() != '"') return false;
    ++p_;
    while (More()) {
      unsigned char c = static_cast<unsigned char>(s_[p_++]);
      if (c == '"') return true;
      if (c < 0x20) return false;
      if (c == '\\') {
        if (!More()) return false;
        char e = s_[p_++];
        if (e == 'u') {
          for (int i = 0; i < 4; ++i) {
            if (!More() || !isxdigit(static_cast<unsigned char>(s_[p_++]))) return false;
          }
        } else if (strchr("\"\\/bfnrt", e) == nullptr || e == '\0') {
          return false;
        }
      }
    }
    return false;
  }
  bool Digits() {
    size_t start = p_;
    while (More() && isdigit(static_cast<unsigned char>(Peek()))) ++p_;
    return p_ > start;
  }
  bool Number() {
    if (Peek() == '-') ++p_;
    if (Peek() == '0') {
      ++p_;
    } else if (!Digits()) {
      return false;
    }
    if (Peek() == '.') {
      ++p_;
      if (!Digits()) return false;
    }
    if (Peek() == 'e' || Peek() == 'E') {
      ++p_;
      if (Peek() == '+' || Peek() == '-') ++p_;
      if (!Digits()) return false;
    }
    return true;
  }

  std::string_view s_;
  size_t p_ = 0;
};

// The first 120 bytes of `s`, control characters shown as '.', quoted.
std::string Snippet(std::string_view s) {
  std::string out(s.substr(0, 120));
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20) c = '.';
  }
  return absl::StrCat("'", out, s.size() > 120 ? "...'" : "'");
}

// "stream":false: one JSON object, "done":true, the whole text.
std::string CheckChatBody(const Request& req, const std::string& body) {
  std::string text;
  for (int i = 1; i <= req.tokens; ++i) absl::StrAppend(&text, "tok", i, " ");
  if (!JsonCheck::Valid(body) || body.find(R"("done":true)") == std::string::npos ||
      body.find(absl::StrCat(R"("content":")", text, "\"")) == std::string::npos) {
    return absl::StrCat("chat stream:false (", req.tokens, " tokens) body ", Snippet(body));
  }
  return "";
}

// NDJSON: tokens + 1 lines, each a JSON object, token i carrying "tok<i> ",
// the last "done":true.
std::string CheckNdjsonBody(const Request& req, const std::string& body) {
  if (body.empty() || body.back() != '\n') return "NDJSON not ending in a newline";
  std::vector<std::string_view> lines;
  std::string_view rest(body);
  size_t nl;
  while ((nl = rest.find('\n')) != std::string_view::npos) {
    lines.push_back(rest.substr(0, nl));
    rest.remove_prefix(nl + 1);
  }
  if (static_cast<int>(lines.size()) != req.tokens + 1) {
    return absl::StrCat("NDJSON has ", lines.size(), " lines, want ", req.tokens + 1);
  }
  for (size_t i = 0; i < lines.size(); ++i) {
    if (!JsonCheck::Valid(lines[i]) || lines[i].front() != '{') {
      return absl::StrCat("NDJSON line ", i + 1, " is not a JSON object: ", Snippet(lines[i]));
    }
    const bool last = i + 1 == lines.size();
    std::string want =
        last ? R"("done":true)" : absl::StrCat(R"("response":"tok)", i + 1, R"( ","done":false)");
    if (lines[i].find(want) == std::string_view::npos) {
      return absl::StrCat("NDJSON line ", i + 1, " lacks ", want, ": ", Snippet(lines[i]));
    }
  }
  return "";
}

// SSE: tokens + 2 events, each "data: <JSON>", the tokens in order, then a
// finish_reason "stop" chunk and "data: [DONE]".
std::string CheckSseBody(const Request& req, const std::string& body) {
  if (body.size() < 2 || body.compare(body.size() - 2, 2, "\n\n") != 0) {
    return "SSE not ending in a blank line: " +
           Snippet(body.substr(body.size() > 60 ? body.size() - 60 : 0));
  }
  std::vector<std::string_view> events;
  std::string_view rest(body);
  size_t end;
  while ((end = rest.find("\n\n")) != std::string_view::npos) {
    events.push_back(rest.substr(0, end));
    rest.remove_prefix(end + 2);
  }
  if (static_cast<int>(events.size()) != req.tokens + 2) {
    return absl::StrCat("SSE has ", events.size(), " events, want ", req.tokens + 2);
  }
  if (events.back() != "data: [DONE]") return "SSE last event " + Snippet(events.back());
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    std::string_view e = events[i];
    if (e.rfind("data: ", 0) != 0 || !JsonCheck::Valid(e.substr(6))) {
      return absl::StrCat("SSE event ", i + 1, " is not data: JSON: ", Snippet(e));
    }
    std::string want = static_cast<int>(i) < req.tokens
                           ? absl::StrCat(R"("content":"tok)", i + 1, R"( ")")
                           : std::string(R"("finish_reason":"stop")");
    if (e.find(want) == std::string_view::npos) {
      return absl::StrCat("SSE event ", i + 1, " lacks ", want, ": ", Snippet(e));
    }
  }
  return "";
}

}  // namespace

std::string CheckBody(const Request& req, const std::string& body) {
  switch (req.route) {
    case Route::kTags:
      if (!JsonCheck::Valid(body) || body.rfind(R"({"models":[)", 0) != 0 ||
          body.find(R"("name":"sim:latest")") == std::string::npos) {
        return "tags body " + Snippet(body);
      }
      return "";
    case Route::kVersion:
      if (!JsonCheck::Valid(body) || body.find(R"("version":)") == std::string::npos) {
        return "version body " + Snippet(body);
      }
      return "";
    case Route::kChat:
      return CheckChatBody(req, body);
    case Route::kGenerate:
      return CheckNdjsonBody(req, body);
    default:  // SSE
      return CheckSseBody(req, body);
  }
}

void Fail(Err kind, std::string what) {
  g_stats.errors.fetch_add(1);
  g_stats.by_kind[static_cast<size_t>(kind)].fetch_add(1);
  std::lock_guard<std::mutex> lock(g_stats.mu);
  if (g_stats.first_errors.size() < kErrorsKept) {
    g_stats.first_errors.push_back(absl::StrCat(kErrNames[static_cast<size_t>(kind)], ": ", what));
  }
}

void Complete(const Request& req, int status, const std::string& body, const char* proto) {
  if (status != 200) {
    Fail(Err::kStatus, absl::StrCat(proto, " ", req.path(), ": status ", status, " body '",
                                    body.substr(0, 200), "'"));
    return;
  }
  std::string wrong = CheckBody(req, body);
  if (!wrong.empty()) {
    Fail(Err::kBody, absl::StrCat(proto, " ", req.path(), ": ", wrong));
    return;
  }
  g_stats.ok.fetch_add(1);
  if (req.cancel) g_stats.cancel_late.fetch_add(1);
}

}  // namespace sluice::bench::soak
