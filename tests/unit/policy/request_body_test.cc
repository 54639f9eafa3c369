// The request body reader: fields found where they are, read as Go's
// encoding/json reads them (key folding, escapes, the last duplicate),
// images and prompt bytes counted, invalid JSON refused with its place, and
// every result the same however the body is split into pieces.
#include "policy/request_body.h"

#include <limits>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace sluice::policy {
namespace {

// A summary of everything the reader reports, for comparing two reads.
std::string Summary(const RequestBodyReader& r) {
  std::string s =
      absl::StrCat("err=", r.error(), " complete=", r.complete(), " root=", r.root_begin(), "-",
                   r.root_end(), " empty=", r.root_empty(), " images=", r.images(), "/",
                   r.image_bytes(), " prompt=", r.prompt_bytes());
  for (size_t i = 0; i < static_cast<size_t>(BodyField::kCount); ++i) {
    const BodyValue& v = r.Get(static_cast<BodyField>(i));
    if (!v.present()) continue;
    absl::StrAppend(&s, " [", i, " n=", v.count, " exact=", v.exact_key,
                    " kind=", static_cast<int>(v.kind), " key=", v.key_begin, " ", v.value_begin,
                    "-", v.value_end, " text=", v.text, v.text_cut ? "(cut)" : "", "]");
  }
  return s;
}

// Reads `body` whole, then split at every position, then byte by byte:
// every read must agree. Returns the whole read's reader state summary and
// leaves the whole read in *out.
void ReadAllWays(const std::string& body, BodyApi api, RequestBodyReader* out) {
  out->Feed(body);
  out->Finish();
  const std::string want = Summary(*out);
  for (size_t cut = 0; cut <= body.size(); ++cut) {
    RequestBodyReader r(api);
    r.Feed(std::string_view(body).substr(0, cut));
    r.Feed(std::string_view(body).substr(cut));
    r.Finish();
    ASSERT_EQ(Summary(r), want) << "split at " << cut << " of " << body;
  }
  RequestBodyReader bytes(api);
  for (char c : body) bytes.Feed(std::string_view(&c, 1));
  bytes.Finish();
  ASSERT_EQ(Summary(bytes), want) << "byte by byte: " << body;
}

struct Read {
  explicit Read(const std::string& body, BodyApi api = BodyApi::kNative) : r(api) {
    ReadAllWays(body, api, &r);
  }
  const BodyValue& operator[](BodyField f) const { return r.Get(f); }
  RequestBodyReader r;
};

std::string Span(const std::string& body, const BodyValue& v) {
  return body.substr(v.value_begin, v.value_end - v.value_begin);
}

TEST(RequestBodyTest, FieldsAndWhereTheyAre) {
  const std::string body =
      R"( {"model":"llama3.1:8b","stream":false,"keep_alive":-1,)"
      R"("options":{"temperature":0.5,"num_ctx":8192,"num_predict":1e3},"prompt":"hi"} )";
  Read r(body);
  ASSERT_TRUE(r.r.error().empty()) << r.r.error();
  EXPECT_TRUE(r.r.complete());
  EXPECT_EQ(r.r.root_begin(), 1u);
  EXPECT_EQ(r.r.root_end(), body.size() - 2);
  EXPECT_FALSE(r.r.root_empty());
  const BodyValue& model = r[BodyField::kModel];
  EXPECT_EQ(model.count, 1u);
  EXPECT_TRUE(model.exact_key);
  EXPECT_EQ(model.kind, BodyValueKind::kString);
  EXPECT_EQ(model.text, "llama3.1:8b");
  EXPECT_EQ(Span(body, model), "\"llama3.1:8b\"");
  EXPECT_EQ(body.substr(model.key_begin, 7), "\"model\"");
  EXPECT_EQ(r[BodyField::kStream].kind, BodyValueKind::kFalse);
  EXPECT_EQ(Span(body, r[BodyField::kStream]), "false");
  EXPECT_EQ(r[BodyField::kKeepAlive].kind, BodyValueKind::kNumber);
  EXPECT_EQ(r[BodyField::kKeepAlive].text, "-1");
  EXPECT_EQ(Span(body, r[BodyField::kOptions]).front(), '{');
  EXPECT_EQ(Span(body, r[BodyField::kOptions]).back(), '}');
  EXPECT_EQ(r.r.options_begin(), r[BodyField::kOptions].value_begin);
  EXPECT_FALSE(r.r.options_empty());
  EXPECT_EQ(r[BodyField::kNumCtx].text, "8192");
  EXPECT_EQ(Span(body, r[BodyField::kNumCtx]), "8192");
  EXPECT_EQ(r[BodyField::kNumPredict].text, "1e3");
  EXPECT_EQ(r.r.prompt_bytes(), 2u);
  // Not of this API.
  EXPECT_FALSE(r[BodyField::kMaxTokens].present());
}

TEST(RequestBodyTest, KeysAsGoMatchesThem) {
  for (const char* body :
       {R"({"MODEL":"x"})", R"({"Model":"x"})", R"({"mod\u0065l":"x"})", R"({"mOdEl":"x"})"}) {
    Read r(body);
    EXPECT_EQ(r[BodyField::kModel].text, "x") << body;
    EXPECT_FALSE(r[BodyField::kModel].exact_key) << body;
  }
  // U+017F (long s) is 's', U+212A (Kelvin sign) is 'k' for Go.
  EXPECT_TRUE(Read("{\"\xC5\xBFtream\":true}")[BodyField::kStream].present());
  EXPECT_TRUE(Read("{\"\xE2\x84\xAA"
                   "eep_alive\":1}")[BodyField::kKeepAlive]
                  .present());
  EXPECT_TRUE(Read(R"({"\u212aeep_alive":1})")[BodyField::kKeepAlive].present());
  for (const char* body :
       {R"({"modell":"x"})", R"({"model ":"x"})", R"({"m":"x"})", "{\"mod\xC3\xA9l\":\"x\"}"}) {
    EXPECT_FALSE(Read(body)[BodyField::kModel].present()) << body;
  }
  // Options is a map: its keys match exactly (escapes decoded).
  EXPECT_FALSE(Read(R"({"options":{"NUM_CTX":1}})")[BodyField::kNumCtx].present());
  EXPECT_TRUE(Read(R"({"options":{"num\u005fctx":1}})")[BodyField::kNumCtx].present());
  // Only the top level names fields.
  EXPECT_FALSE(Read(R"({"x":{"model":"y"}})")[BodyField::kModel].present());
  EXPECT_FALSE(Read(R"({"x":[{"keep_alive":1}]})")[BodyField::kKeepAlive].present());
}

TEST(RequestBodyTest, TheLastDuplicateWins) {
  const std::string body = R"({"model":"a","x":1,"Model":"b"})";
  Read r(body);
  EXPECT_EQ(r[BodyField::kModel].count, 2u);
  EXPECT_EQ(r[BodyField::kModel].text, "b");
  EXPECT_EQ(Span(body, r[BodyField::kModel]), "\"b\"");
  EXPECT_EQ(body.substr(r[BodyField::kModel].key_begin, 7), "\"Model\"");
  const std::string twice = R"({"options":{"num_ctx":1},"options":{"num_ctx":2,"x":0}})";
  Read o(twice);
  EXPECT_EQ(o[BodyField::kOptions].count, 2u);
  EXPECT_EQ(o[BodyField::kNumCtx].count, 2u);
  EXPECT_EQ(o[BodyField::kNumCtx].text, "2");
  EXPECT_EQ(twice[o.r.options_begin()], '{');
  EXPECT_EQ(o.r.options_begin(), o[BodyField::kOptions].value_begin);
  Read empty(R"({"options":{}})");
  EXPECT_TRUE(empty.r.options_empty());
  EXPECT_TRUE(Read("{}").r.root_empty());
}

TEST(RequestBodyTest, StringsDecoded) {
  Read r(R"({"model":"a\"b\\c\/d\u00e9\ud83d\ude00\n"})");
  EXPECT_EQ(r[BodyField::kModel].text, "a\"b\\c/d\xC3\xA9\xF0\x9F\x98\x80\n");
  // A lone surrogate is U+FFFD, as Go decodes it.
  EXPECT_EQ(Read(R"({"model":"\ud83dx"})")[BodyField::kModel].text, "\xEF\xBF\xBDx");
  EXPECT_EQ(Read(R"({"model":"\ude00"})")[BodyField::kModel].text, "\xEF\xBF\xBD");
  const std::string big(kMaxFieldText + 10, 'm');
  Read cut(absl::StrCat(R"({"model":")", big, R"("})"));
  EXPECT_TRUE(cut[BodyField::kModel].text_cut);
  EXPECT_EQ(cut[BodyField::kModel].text.size(), kMaxFieldText);
}

TEST(RequestBodyTest, OpenAiFields) {
  const std::string body =
      R"({"model":"gpt","max_tokens":5,"max_completion_tokens":6,"stream":true,)"
      R"("stream_options":{"include_usage":true},"keep_alive":-1,"options":{"num_ctx":1}})";
  Read r(body, BodyApi::kOpenAi);
  EXPECT_EQ(r[BodyField::kMaxTokens].text, "5");
  EXPECT_EQ(r[BodyField::kMaxCompletion].text, "6");
  EXPECT_EQ(r[BodyField::kIncludeUsage].kind, BodyValueKind::kTrue);
  EXPECT_EQ(r[BodyField::kStreamOptions].kind, BodyValueKind::kObject);
  EXPECT_FALSE(r[BodyField::kKeepAlive].present());
  EXPECT_FALSE(r[BodyField::kOptions].present());
  EXPECT_FALSE(r[BodyField::kNumCtx].present());
}

TEST(RequestBodyTest, ImagesAndPromptBytes) {
  Read native(R"({"prompt":"abc","system":"de","images":["AAAA","BB"],)"
              R"("messages":[{"role":"user","content":"hello","images":["CCC"]}]})");
  EXPECT_EQ(native.r.images(), 3u);
  EXPECT_EQ(native.r.image_bytes(), 9u);
  EXPECT_EQ(native.r.prompt_bytes(), 10u);
  Read openai(R"({"messages":[{"role":"user","content":[{"type":"text","text":"hi"},)"
              R"({"type":"image_url","image_url":{"url":"data:x"}},)"
              R"({"type":"image_url","image_url":"data:yy"}]}],"input":["ab","c"]})",
              BodyApi::kOpenAi);
  EXPECT_EQ(openai.r.images(), 2u);
  EXPECT_EQ(openai.r.image_bytes(), 13u);
  EXPECT_EQ(openai.r.prompt_bytes(), 5u);
}

TEST(RequestBodyTest, InvalidBodies) {
  const std::pair<const char*, const char*> cases[] = {
      {"", "the body is empty"},
      {"  ", "the body is empty"},
      {"[1]", "the body is not a JSON object at byte 0"},
      {"null", "the body is not a JSON object at byte 0"},
      {R"({"a":1} {"b":2})", "more after the JSON object at byte 8"},
      {R"({"a":1}x)", "more after the JSON object at byte 7"},
      {R"({"a":"b)", "the body ends inside a string"},
      {R"({"a":1)", "the body ends before its JSON object closes"},
      {"{\"a\":\"b\x01\"}", "a raw control character in a string at byte 7"},
      {R"({"a":"\x"})", "an invalid escape in a string at byte 7"},
      {R"({"a":"\u12g4"})", "an invalid \\u escape in a string at byte 10"},
      {R"({"a":01})", "a number with a leading zero at byte 6"},
      {R"({"a":+1})", "expected a value at byte 5"},
      {R"({"a":1.})", "a number with no digit after '.' at byte 7"},
      {R"({"a":.5})", "expected a value at byte 5"},
      {R"({"a":NaN})", "expected a value at byte 5"},
      {R"({"a":1e})", "a number with no digit in its exponent at byte 7"},
      {R"({"a":-})", "a number without digits at byte 6"},
      {R"({"a":tru})", "invalid literal at byte 8"},
      {R"({"a" 1})", "expected ':' at byte 5"},
      {R"({a:1})", "expected a key at byte 1"},
      {R"({"a":1,})", "expected a key at byte 7"},
      {R"({"a":[1,]})", "expected a value at byte 8"},
      {R"({"a":[1}})", "expected ',' or ']' at byte 7"},
  };
  for (const auto& [body, error] : cases) {
    RequestBodyReader r(BodyApi::kNative);
    r.Feed(body);
    EXPECT_FALSE(r.Finish()) << body;
    EXPECT_TRUE(absl::StartsWith(r.error(), error)) << body << ": " << r.error();
    // The same error whatever the pieces.
    RequestBodyReader bytes(BodyApi::kNative);
    for (const char* p = body; *p != '\0'; ++p) bytes.Feed(std::string_view(p, 1));
    bytes.Finish();
    EXPECT_EQ(bytes.error(), r.error()) << body;
  }
  std::string deep(kMaxBodyDepth, '[');
  deep.insert(0, "{\"a\":");
  RequestBodyReader r(BodyApi::kNative);
  EXPECT_FALSE(r.Feed(deep));
  EXPECT_TRUE(absl::StartsWith(r.error(), "JSON nested deeper than 512 levels")) << r.error();
  // 511 levels inside the root are fine.
  std::string ok = absl::StrCat("{\"a\":", std::string(kMaxBodyDepth - 1, '['),
                                std::string(kMaxBodyDepth - 1, ']'), "}");
  RequestBodyReader fine(BodyApi::kNative);
  fine.Feed(ok);
  EXPECT_TRUE(fine.Finish()) << fine.error();
}

TEST(RequestBodyTest, NumbersAndLiterals) {
  for (const char* n : {"0", "-0", "12", "-1.5", "1e9", "1E+2", "2.5e-3", "0.0"}) {
    Read r(absl::StrCat(R"({"keep_alive":)", n, "}"));
    ASSERT_TRUE(r.r.error().empty()) << n << ": " << r.r.error();
    EXPECT_EQ(r[BodyField::kKeepAlive].text, n);
    EXPECT_EQ(r[BodyField::kKeepAlive].kind, BodyValueKind::kNumber);
  }
  EXPECT_EQ(Read(R"({"stream":null})")[BodyField::kStream].kind, BodyValueKind::kNull);
  EXPECT_EQ(Read(R"({"stream":true})")[BodyField::kStream].kind, BodyValueKind::kTrue);
  EXPECT_EQ(Read(R"({"model":["a"]})")[BodyField::kModel].kind, BodyValueKind::kArray);
}

TEST(RequestBodyTest, GoDurations) {
  const std::pair<const char*, int64_t> good[] = {
      {"300ms", 300'000'000},
      {"-1.5h", -5'400'000'000'000},
      {"2h45m", 9'900'000'000'000},
      {"1h30m10s", 5'410'000'000'000},
      {"0", 0},
      {"-0", 0},
      {"+5s", 5'000'000'000},
      {"1.5us", 1'500},
      {"2\xC2\xB5s", 2'000},
      {"3\xCE\xBCs", 3'000},
      {".5s", 500'000'000},
      {"1ns", 1},
  };
  for (const auto& [text, want] : good) {
    int64_t ns = -7;
    EXPECT_TRUE(ParseGoDuration(text, &ns)) << text;
    EXPECT_EQ(ns, want) << text;
  }
  for (const char* bad : {"", "5", "1d", "s", "1.s.", "9999999999h", "-", "1 h", "1hh", "."}) {
    int64_t ns = 0;
    EXPECT_FALSE(ParseGoDuration(bad, &ns)) << bad;
  }
}

TEST(RequestBodyTest, KeepAliveAsOllamaReadsIt) {
  auto keep = [](const std::string& value) {
    Read r(absl::StrCat(R"({"keep_alive":)", value, "}"));
    return ReadKeepAlive(r[BodyField::kKeepAlive]);
  };
  EXPECT_EQ(keep("300").kind, KeepAlive::Kind::kFor);
  EXPECT_EQ(keep("300").ns, 300'000'000'000);
  EXPECT_EQ(keep("1.9").ns, 1'000'000'000);  // whole seconds
  EXPECT_EQ(keep("0").ns, 0);
  EXPECT_EQ(keep("-1").kind, KeepAlive::Kind::kForever);
  EXPECT_EQ(keep("\"-1m\"").kind, KeepAlive::Kind::kForever);
  EXPECT_EQ(keep("\"30m\"").ns, 1'800'000'000'000);
  EXPECT_EQ(keep("null").kind, KeepAlive::Kind::kDefault);
  EXPECT_EQ(keep("1e300").kind, KeepAlive::Kind::kFor);
  EXPECT_EQ(keep("1e300").ns, std::numeric_limits<int64_t>::max());
  for (const char* bad : {"true", "{}", "[]", "\"5 minutes\"", "\"-1\"", "\"\""}) {
    EXPECT_EQ(keep(bad).kind, KeepAlive::Kind::kInvalid) << bad;
  }
  EXPECT_EQ(ReadKeepAlive(BodyValue{}).kind, KeepAlive::Kind::kDefault);
}

}  // namespace
}  // namespace sluice::policy
