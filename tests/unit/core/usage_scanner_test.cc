#include "core/observe/usage_scanner.h"

#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "gtest/gtest.h"

namespace sluice::core {
namespace {

// A TokenUsage as one comparable, readable line.
std::string Describe(const TokenUsage& u) {
  std::string s = "prompt=";
  s += u.prompt_tokens ? std::to_string(*u.prompt_tokens) : "none";
  s += " completion=";
  s += u.completion_tokens ? std::to_string(*u.completion_tokens) : "none";
  s += " model=\"" + u.model + "\" events=" + std::to_string(u.token_events);
  s += " load=";
  s += u.load_duration_ns ? std::to_string(*u.load_duration_ns) : "none";
  return s;
}

struct Scan {
  TokenUsage usage;
  size_t returned = 0;  // sum of what Feed and Finish returned
};

Scan ScanPieces(BodyFormat format, const std::vector<std::string_view>& pieces) {
  ResponseScanner scanner(format);
  Scan scan;
  for (std::string_view piece : pieces) scan.returned += scanner.Feed(piece);
  scan.returned += scanner.Finish();
  scan.usage = scanner.usage();
  return scan;
}

Scan ScanWhole(BodyFormat format, std::string_view body) { return ScanPieces(format, {body}); }

// Scans `body` whole, split in two at every offset, and byte by byte; every
// way must give the same usage, and the returned event counts must add up
// to token_events. Returns the whole-body usage.
TokenUsage ScanAllWays(BodyFormat format, std::string_view body) {
  Scan whole = ScanWhole(format, body);
  EXPECT_EQ(whole.returned, whole.usage.token_events);
  std::string expected = Describe(whole.usage);
  for (size_t cut = 0; cut <= body.size(); ++cut) {
    Scan split = ScanPieces(format, {body.substr(0, cut), body.substr(cut)});
    if (Describe(split.usage) != expected || split.returned != split.usage.token_events) {
      ADD_FAILURE() << "split at " << cut << ": " << Describe(split.usage) << " returned "
                    << split.returned << ", whole: " << expected;
      break;
    }
  }
  std::vector<std::string_view> bytes;
  for (size_t i = 0; i < body.size(); ++i) bytes.push_back(body.substr(i, 1));
  Scan by_byte = ScanPieces(format, bytes);
  EXPECT_EQ(Describe(by_byte.usage), expected) << "byte by byte";
  EXPECT_EQ(by_byte.returned, by_byte.usage.token_events) << "byte by byte";
  return whole.usage;
}

struct RequestResult {
  std::string model;
  std::optional<bool> stream;
};

std::string Describe(const RequestResult& r) {
  return "model=\"" + r.model + "\" stream=" + (r.stream ? (*r.stream ? "true" : "false") : "none");
}

RequestResult ScanRequestPieces(const std::vector<std::string_view>& pieces) {
  RequestScanner scanner;
  for (std::string_view piece : pieces) scanner.Feed(piece);
  return {scanner.model(), scanner.stream()};
}

// As ScanAllWays, for a request body.
RequestResult ScanRequestAllWays(std::string_view body) {
  RequestResult whole = ScanRequestPieces({body});
  std::string expected = Describe(whole);
  for (size_t cut = 0; cut <= body.size(); ++cut) {
    RequestResult split = ScanRequestPieces({body.substr(0, cut), body.substr(cut)});
    if (Describe(split) != expected) {
      ADD_FAILURE() << "split at " << cut << ": " << Describe(split) << ", whole: " << expected;
      break;
    }
  }
  std::vector<std::string_view> bytes;
  for (size_t i = 0; i < body.size(); ++i) bytes.push_back(body.substr(i, 1));
  EXPECT_EQ(Describe(ScanRequestPieces(bytes)), expected) << "byte by byte";
  return whole;
}

// Realistic bodies, as Ollama 0.x sends them.

constexpr std::string_view kOllamaGenerate =
    R"({"model":"llama3.2","created_at":"2024-08-04T08:52:19.385406455-07:00","response":"The","done":false})"
    "\n"
    R"({"model":"llama3.2","created_at":"2024-08-04T08:52:19.385406455-07:00","response":" sky","done":false})"
    "\n"
    R"({"model":"llama3.2","created_at":"2024-08-04T08:52:19.385406455-07:00","response":" is\n\"blue\"","done":false})"
    "\n"
    R"({"model":"llama3.2","created_at":"2024-08-04T19:22:45.499127Z","response":"","done":true,"done_reason":"stop",)"
    R"("context":[1,2,3,128006,9125],"total_duration":10706818083,"load_duration":6338219291,)"
    R"("prompt_eval_count":26,"prompt_eval_duration":130079000,"eval_count":259,"eval_duration":4232710000})"
    "\n";

constexpr std::string_view kOllamaChat =
    R"({"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","message":{"role":"assistant","content":"Hel","images":null},"done":false})"
    "\n"
    R"({"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","message":{"role":"assistant","content":"lo!"},"done":false})"
    "\n"
    R"({"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","message":{"role":"assistant","content":""},"done_reason":"stop",)"
    R"("done":true,"total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,)"
    R"("prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000})"
    "\n";

constexpr std::string_view kOpenAiStreamWithUsage =
    "data: "
    R"({"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null})"
    "\n\n"
    "data: "
    R"({"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null})"
    "\n\n"
    "data: "
    R"({"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"content":" world"},"logprobs":null,"finish_reason":null}],"usage":null})"
    "\n\n"
    "data: "
    R"({"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null})"
    "\n\n"
    "data: "
    R"({"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}})"
    "\n\n"
    "data: [DONE]\n\n";

// Ollama's /v1/chat/completions without stream_options.include_usage.
constexpr std::string_view kOpenAiStreamWithoutUsage =
    "data: "
    R"({"id":"chatcmpl-544","object":"chat.completion.chunk","created":1722000000,"model":"llama3.2","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]})"
    "\n\n"
    "data: "
    R"({"id":"chatcmpl-544","object":"chat.completion.chunk","created":1722000000,"model":"llama3.2","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":" there"},"finish_reason":null}]})"
    "\n\n"
    "data: "
    R"({"id":"chatcmpl-544","object":"chat.completion.chunk","created":1722000000,"model":"llama3.2","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":"stop"}]})"
    "\n\n"
    "data: [DONE]\n\n";

constexpr std::string_view kOllamaGenerateJson =
    R"({"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","response":"The sky is blue because of Rayleigh scattering.",)"
    R"("done":true,"done_reason":"stop","context":[1,2,3],"total_duration":5043500667,"load_duration":5025959,)"
    R"("prompt_eval_count":26,"prompt_eval_duration":325953000,"eval_count":290,"eval_duration":4709213000})";

constexpr std::string_view kOpenAiChatCompletionJson = R"({
  "id": "chatcmpl-123",
  "object": "chat.completion",
  "created": 1677652288,
  "model": "gpt-4o-mini",
  "system_fingerprint": "fp_44709d6fcb",
  "choices": [{
    "index": 0,
    "message": {
      "role": "assistant",
      "content": "\n\nHello there, how may I assist you today?"
    },
    "logprobs": null,
    "finish_reason": "stop"
  }],
  "usage": {
    "prompt_tokens": 9,
    "completion_tokens": 12,
    "total_tokens": 21,
    "completion_tokens_details": {"reasoning_tokens": 0}
  }
}
)";

// --- FormatForContentType ---------------------------------------------------

TEST(FormatForContentTypeTest, KnownTypes) {
  EXPECT_EQ(FormatForContentType("application/x-ndjson"), BodyFormat::kNdjson);
  EXPECT_EQ(FormatForContentType("text/event-stream"), BodyFormat::kSse);
  EXPECT_EQ(FormatForContentType("application/json"), BodyFormat::kJson);
}

TEST(FormatForContentTypeTest, CaseInsensitiveAndParametersIgnored) {
  EXPECT_EQ(FormatForContentType("Application/JSON; charset=utf-8"), BodyFormat::kJson);
  EXPECT_EQ(FormatForContentType("application/json ; charset=utf-8"), BodyFormat::kJson);
  EXPECT_EQ(FormatForContentType("  text/Event-Stream;charset=UTF-8"), BodyFormat::kSse);
  EXPECT_EQ(FormatForContentType("APPLICATION/X-NDJSON"), BodyFormat::kNdjson);
  EXPECT_EQ(FormatForContentType("application/x-ndjson\t"), BodyFormat::kNdjson);
}

TEST(FormatForContentTypeTest, OthersAreNotScanned) {
  EXPECT_EQ(FormatForContentType(""), BodyFormat::kOther);
  EXPECT_EQ(FormatForContentType(";"), BodyFormat::kOther);
  EXPECT_EQ(FormatForContentType("text/plain; charset=utf-8"), BodyFormat::kOther);
  EXPECT_EQ(FormatForContentType("application/jsonl"), BodyFormat::kOther);
  EXPECT_EQ(FormatForContentType("application/json-seq"), BodyFormat::kOther);
  EXPECT_EQ(FormatForContentType("application/problem+json"), BodyFormat::kOther);
  EXPECT_EQ(FormatForContentType("text/event-stream-x"), BodyFormat::kOther);
  EXPECT_EQ(FormatForContentType("json"), BodyFormat::kOther);
}

// --- Ollama NDJSON streams --------------------------------------------------

TEST(ResponseScannerTest, OllamaGenerateStream) {
  TokenUsage u = ScanAllWays(BodyFormat::kNdjson, kOllamaGenerate);
  EXPECT_EQ(u.token_events, 3u);
  EXPECT_EQ(u.prompt_tokens, 26);
  EXPECT_EQ(u.completion_tokens, 259);
  EXPECT_EQ(u.model, "llama3.2");
  // How long the model took to load, for the router's estimates.
  EXPECT_EQ(u.load_duration_ns, 6338219291);
}

TEST(ResponseScannerTest, OllamaGenerateThinking) {
  std::string body =
      R"({"model":"qwen3","created_at":"t","response":"","thinking":"Let me","done":false})"
      "\n"
      R"({"model":"qwen3","created_at":"t","response":"","thinking":" think","done":false})"
      "\n"
      R"({"model":"qwen3","created_at":"t","response":"42","done":false})"
      "\n"
      R"({"model":"qwen3","created_at":"t","response":"","done":true,"prompt_eval_count":5,"eval_count":3})"
      "\n";
  TokenUsage u = ScanAllWays(BodyFormat::kNdjson, body);
  EXPECT_EQ(u.token_events, 3u);
  EXPECT_EQ(u.prompt_tokens, 5);
  EXPECT_EQ(u.completion_tokens, 3);
}

TEST(ResponseScannerTest, OllamaChatStream) {
  TokenUsage u = ScanAllWays(BodyFormat::kNdjson, kOllamaChat);
  EXPECT_EQ(u.token_events, 2u);
  EXPECT_EQ(u.prompt_tokens, 26);
  EXPECT_EQ(u.completion_tokens, 282);
  EXPECT_EQ(u.model, "llama3.2");
}

TEST(ResponseScannerTest, OllamaChatThinkingAndToolCalls) {
  std::string body =
      R"({"model":"m","message":{"role":"assistant","content":"","thinking":"hmm"},"done":false})"
      "\n"
      R"({"model":"m","message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":{"content":"x"}}}]},"done":false})"
      "\n"
      R"({"model":"m","message":{"role":"assistant","content":"ok"},"done":false})"
      "\n";
  TokenUsage u = ScanAllWays(BodyFormat::kNdjson, body);
  EXPECT_EQ(u.token_events, 2u);  // the tool call's nested "content" is not read
  EXPECT_FALSE(u.prompt_tokens.has_value());
  EXPECT_FALSE(u.completion_tokens.has_value());
}

TEST(ResponseScannerTest, NdjsonCrlfBlankLinesAndWhitespace) {
  std::string body =
      "\r\n"
      "\n"
      "  { \"model\" : \"m\" ,\t\"response\" : \"a\" }  \r\n"
      "   \n"
      "{\"response\":\"b\"}\r\n"
      "\r\n"
      "{\"done\":true, \"prompt_eval_count\" : 7 , \"eval_count\":\t8 }\r\n";
  TokenUsage u = ScanAllWays(BodyFormat::kNdjson, body);
  EXPECT_EQ(u.token_events, 2u);
  EXPECT_EQ(u.prompt_tokens, 7);
  EXPECT_EQ(u.completion_tokens, 8);
  EXPECT_EQ(u.model, "m");
}

TEST(ResponseScannerTest, NdjsonLastLineCompletedByFinish) {
  ResponseScanner scanner(BodyFormat::kNdjson);
  EXPECT_EQ(scanner.Feed("{\"response\":\"a\"}\n{\"response\":\"b\"}"), 1u);
  EXPECT_EQ(scanner.usage().token_events, 1u);
  EXPECT_EQ(scanner.Finish(), 1u);
  EXPECT_EQ(scanner.usage().token_events, 2u);
  // The body has ended: nothing more is read, Finish completes nothing.
  EXPECT_EQ(scanner.Finish(), 0u);
  EXPECT_EQ(scanner.Feed("\n{\"response\":\"c\"}\n"), 0u);
  EXPECT_EQ(scanner.usage().token_events, 2u);

  TokenUsage u =
      ScanAllWays(BodyFormat::kNdjson, "{\"response\":\"a\"}\n{\"done\":true,\"eval_count\":3}");
  EXPECT_EQ(u.token_events, 1u);
  EXPECT_EQ(u.completion_tokens, 3);
}

TEST(ResponseScannerTest, FeedReturnsEventsCompletedInItsBytes) {
  ResponseScanner scanner(BodyFormat::kNdjson);
  EXPECT_EQ(scanner.Feed("{\"response\":\"a\"}\n{\"response\":\"b\"}\n{\"respo"), 2u);
  EXPECT_EQ(scanner.Feed("nse\":\"c\"}"), 0u);  // completes at its newline
  EXPECT_EQ(scanner.Feed("\n"), 1u);
  EXPECT_EQ(scanner.Feed("{\"response\":\"\",\"done\":true}\n"), 0u);
  EXPECT_EQ(scanner.Feed(""), 0u);
  EXPECT_EQ(scanner.Finish(), 0u);
  EXPECT_EQ(scanner.usage().token_events, 3u);

  // Line by line, as Ollama flushes them: one event per token line.
  ResponseScanner lines(BodyFormat::kNdjson);
  std::vector<size_t> got;
  std::string_view body = kOllamaGenerate;
  while (!body.empty()) {
    size_t lf = body.find('\n');
    got.push_back(lines.Feed(body.substr(0, lf + 1)));
    body.remove_prefix(lf + 1);
  }
  EXPECT_EQ(got, (std::vector<size_t>{1, 1, 1, 0}));

  ResponseScanner sse(BodyFormat::kSse);
  EXPECT_EQ(sse.Feed("data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n"), 0u);
  EXPECT_EQ(sse.Feed("\n"), 1u);  // the blank line dispatches the event
}

// --- OpenAI SSE streams -----------------------------------------------------

TEST(ResponseScannerTest, OpenAiStreamWithUsage) {
  TokenUsage u = ScanAllWays(BodyFormat::kSse, kOpenAiStreamWithUsage);
  EXPECT_EQ(u.token_events, 2u);  // not the role-only, finish, usage or [DONE] chunks
  EXPECT_EQ(u.prompt_tokens, 9);
  EXPECT_EQ(u.completion_tokens, 12);
  EXPECT_EQ(u.model, "gpt-4o-mini");
}

TEST(ResponseScannerTest, OpenAiStreamWithoutUsage) {
  TokenUsage u = ScanAllWays(BodyFormat::kSse, kOpenAiStreamWithoutUsage);
  EXPECT_EQ(u.token_events, 2u);
  EXPECT_FALSE(u.prompt_tokens.has_value());
  EXPECT_FALSE(u.completion_tokens.has_value());
  EXPECT_EQ(u.model, "llama3.2");
}

TEST(ResponseScannerTest, OpenAiStreamCrlfAndCrLineEnds) {
  std::string lf(kOpenAiStreamWithUsage);
  std::string crlf;
  std::string cr;
  for (char c : lf) {
    crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
    cr += c == '\n' ? '\r' : c;
  }
  TokenUsage want = ScanWhole(BodyFormat::kSse, lf).usage;
  EXPECT_EQ(Describe(ScanAllWays(BodyFormat::kSse, crlf)), Describe(want));
  EXPECT_EQ(Describe(ScanAllWays(BodyFormat::kSse, cr)), Describe(want));
  // Mixed line ends in one stream.
  std::string mixed =
      "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\r"
      "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\r\n"
      "data: {\"choices\":[{\"delta\":{\"content\":\"c\"}}]}\r\n\n"
      "data: {\"choices\":[{\"delta\":{\"content\":\"d\"}}]}\r\n\r\n";
  EXPECT_EQ(ScanAllWays(BodyFormat::kSse, mixed).token_events, 4u);
  // An event whose data spans lines: a CRLF is one line end, not a line end
  // and a blank line (which would dispatch half an event).
  std::string multiline =
      "data: {\"model\":\"m\",\r\n"
      "data: \"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n"
      "\r\n"
      "data: {\"choices\":[{\"delta\":\r"
      "data: {\"content\":\"b\"}}]}\r"
      "\r"
      "data: {\"choices\":[{\"delta\":\n"
      "data: {\"content\":\"c\"}}]}\r\n"
      "\n";
  TokenUsage u = ScanAllWays(BodyFormat::kSse, multiline);
  EXPECT_EQ(u.token_events, 3u);
  EXPECT_EQ(u.model, "m");
}

TEST(ResponseScannerTest, SseFieldsCommentsAndMultilineData) {
  std::string body =
      ": keep-alive comment\n"
      "\n"  // an event without data: nothing
      "event: message\n"
      "id: 7\n"
      "retry: 1000\n"
      "data:{\"model\":\"m\",\n"  // no space after the colon
      "data:  \"choices\":[{\"delta\":\n"
      ": a comment inside the event\n"
      "data: {\"content\":\"x\"}}]}\n"
      "\n"
      "datax: {\"choices\":[{\"delta\":{\"content\":\"no\"}}]}\n"  // another field
      "Data: {\"choices\":[{\"delta\":{\"content\":\"no\"}}]}\n"   // names are case-sensitive
      "\n"
      "data\n"  // a "data" line without colon: empty value
      "data: {\"choices\":[{\"text\":\"y\"}]}\n"
      "\n";
  TokenUsage u = ScanAllWays(BodyFormat::kSse, body);
  EXPECT_EQ(u.token_events, 2u);
  EXPECT_EQ(u.model, "m");
}

TEST(ResponseScannerTest, SseEventWithoutBlankLineIsDiscarded) {
  TokenUsage u =
      ScanAllWays(BodyFormat::kSse, "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n");
  EXPECT_EQ(u.token_events, 0u);
  u = ScanAllWays(BodyFormat::kSse, "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}");
  EXPECT_EQ(u.token_events, 0u);
}

TEST(ResponseScannerTest, OpenAiCompletionsTextAndReasoning) {
  std::string body =
      "data: {\"model\":\"m\",\"choices\":[{\"text\":\"Once\",\"index\":0}]}\n\n"
      "data: "
      "{\"model\":\"m\",\"choices\":[{\"delta\":{\"reasoning\":\"hmm\",\"content\":\"\"}}]}\n\n"
      "data: {\"model\":\"m\",\"choices\":[{\"text\":\"\",\"finish_reason\":\"stop\"}]}\n\n"
      "data: [DONE]\n\n";
  TokenUsage u = ScanAllWays(BodyFormat::kSse, body);
  EXPECT_EQ(u.token_events, 2u);
}

TEST(ResponseScannerTest, KeysInAnyOrderAndSeveralChoices) {
  std::string body =
      // usage before choices, model last
      "data: {\"usage\":{\"completion_tokens\":4,\"prompt_tokens\":3},"
      "\"choices\":[{\"delta\":{\"content\":\"a\"},\"index\":0}],\"model\":\"m1\"}\n\n"
      // two non-empty choices: still one event
      "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}},{\"delta\":{\"content\":\"c\"}}]}\n\n"
      // only the second choice carries text
      "data: "
      "{\"choices\":[{\"delta\":{\"content\":\"\"}},{\"index\":1,\"delta\":{\"content\":\"d\"}}]}"
      "\n\n"
      // a non-object element before the choice
      "data: {\"choices\":[1,\"x\",null,[{\"delta\":{\"content\":\"no\"}}],{\"text\":\"e\"}]}\n\n"
      // the last usage wins
      "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":30,\"completion_tokens\":40}}\n\n"
      "data: {\"model\":\"m2\",\"choices\":[]}\n\n";
  TokenUsage u = ScanAllWays(BodyFormat::kSse, body);
  EXPECT_EQ(u.token_events, 4u);
  EXPECT_EQ(u.prompt_tokens, 30);
  EXPECT_EQ(u.completion_tokens, 40);
  EXPECT_EQ(u.model, "m1");
}

// --- Non-streamed answers ---------------------------------------------------

TEST(ResponseScannerTest, OllamaNonStreamedGenerate) {
  TokenUsage u = ScanAllWays(BodyFormat::kJson, kOllamaGenerateJson);
  EXPECT_EQ(u.token_events, 1u);
  EXPECT_EQ(u.prompt_tokens, 26);
  EXPECT_EQ(u.completion_tokens, 290);
  EXPECT_EQ(u.model, "llama3.2");
}

TEST(ResponseScannerTest, OllamaNonStreamedChat) {
  std::string body =
      R"({"model":"llama3.2","created_at":"2023-12-12T14:13:43.416799Z","message":{"role":"assistant",)"
      R"("content":"Hello! How are you today?"},"done":true,"total_duration":5191566416,)"
      R"("prompt_eval_count":26,"eval_count":298})";
  TokenUsage u = ScanAllWays(BodyFormat::kJson, body);
  EXPECT_EQ(u.token_events, 1u);
  EXPECT_EQ(u.prompt_tokens, 26);
  EXPECT_EQ(u.completion_tokens, 298);
}

TEST(ResponseScannerTest, OpenAiNonStreamedChatCompletion) {
  TokenUsage u = ScanAllWays(BodyFormat::kJson, kOpenAiChatCompletionJson);
  EXPECT_EQ(u.token_events, 1u);
  EXPECT_EQ(u.prompt_tokens, 9);
  EXPECT_EQ(u.completion_tokens, 12);
  EXPECT_EQ(u.model, "gpt-4o-mini");
}

TEST(ResponseScannerTest, JsonCompletesOnlyAtFinish) {
  ResponseScanner scanner(BodyFormat::kJson);
  EXPECT_EQ(scanner.Feed(kOllamaGenerateJson), 0u);
  EXPECT_EQ(scanner.usage().token_events, 0u);
  EXPECT_FALSE(scanner.usage().prompt_tokens.has_value());
  EXPECT_EQ(scanner.Feed("\r\n  "), 0u);
  EXPECT_EQ(scanner.Finish(), 1u);
  EXPECT_EQ(scanner.usage().prompt_tokens, 26);
}

TEST(ResponseScannerTest, JsonErrorAndEmptyBodies) {
  TokenUsage u = ScanAllWays(BodyFormat::kJson, R"({"error":"model 'x' not found"})");
  EXPECT_EQ(Describe(u), Describe(TokenUsage()));
  EXPECT_EQ(Describe(ScanAllWays(BodyFormat::kJson, "")), Describe(TokenUsage()));
  EXPECT_EQ(Describe(ScanAllWays(BodyFormat::kJson, "  \n")), Describe(TokenUsage()));
}

TEST(ResponseScannerTest, OtherFormatReadsNothing) {
  TokenUsage u = ScanAllWays(BodyFormat::kOther, kOllamaGenerate);
  EXPECT_EQ(Describe(u), Describe(TokenUsage()));
  ResponseScanner scanner(BodyFormat::kOther);
  EXPECT_EQ(scanner.format(), BodyFormat::kOther);
}

// --- Paths: only the listed ones count ---------------------------------------

TEST(ResponseScannerTest, NestedOrMistypedKeysAreIgnored) {
  std::string body =
      // "response" nested in another object
      "{\"options\":{\"response\":\"x\",\"prompt_eval_count\":1,\"model\":\"no\"}}\n"
      // counts nested in an array
      "{\"extra\":[{\"eval_count\":2}]}\n"
      // usage not at the top level
      "{\"data\":{\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}}\n"
      // content straight in a choice, message.text, delta as a string
      "{\"choices\":[{\"content\":\"x\",\"message\":{\"text\":\"x\"},\"delta\":\"x\"}]}\n"
      // message as a string, choices as an object, usage as an array
      "{\"message\":\"x\",\"choices\":{\"delta\":{\"content\":\"x\"}},\"usage\":[{\"prompt_"
      "tokens\":5}]}\n"
      // response as a number, an object, an array, null, true
      "{\"response\":5}\n{\"response\":{\"a\":\"x\"}}\n{\"response\":[\"x\"]}\n"
      "{\"response\":null}\n{\"response\":true}\n"
      // model not a string; keys differing in case
      "{\"model\":5,\"Response\":\"x\",\"Model\":\"no\"}\n"
      // choices[*].message.thinking is not listed
      "{\"choices\":[{\"message\":{\"thinking\":\"x\"}}]}\n"
      // message.content in the usage object
      "{\"usage\":{\"message\":{\"content\":\"x\"}}}\n";
  TokenUsage u = ScanAllWays(BodyFormat::kNdjson, body);
  EXPECT_EQ(Describe(u), Describe(TokenUsage()));
}

TEST(ResponseScannerTest, EscapedKeysAreDecoded) {
  TokenUsage u = ScanAllWays(BodyFormat::kNdjson,
                             "{\"resp\\u006fnse\":\"x\",\"m\\u006fdel\":\"m\"}\n"
                             "{\"eval\\u005fcount\":9}\n");
  EXPECT_EQ(u.token_events, 1u);
  EXPECT_EQ(u.completion_tokens, 9);
  EXPECT_EQ(u.model, "m");
}

TEST(ResponseScannerTest, TextEscapesCountAsNonEmpty) {
  TokenUsage u = ScanAllWays(BodyFormat::kNdjson,
                             "{\"response\":\"\\n\"}\n{\"response\":\"\\u0000\"}\n"
                             "{\"response\":\"\\ud83d\\ude00\"}\n{\"response\":\"\"}\n");
  EXPECT_EQ(u.token_events, 3u);
}

TEST(ResponseScannerTest, DuplicateKeysInOneObject) {
  // The last count wins; one event however many texts.
  TokenUsage u = ScanAllWays(BodyFormat::kJson,
                             "{\"eval_count\":1,\"response\":\"a\",\"eval_count\":2,"
                             "\"response\":\"b\",\"model\":\"first\",\"model\":\"second\"}");
  EXPECT_EQ(u.token_events, 1u);
  EXPECT_EQ(u.completion_tokens, 2);
  EXPECT_EQ(u.model, "first");
}

// --- Counts ------------------------------------------------------------------

TEST(ResponseScannerTest, CountsOnlyFromNonNegativeIntegers) {
  auto completion = [](std::string value) {
    return ScanAllWays(BodyFormat::kJson, "{\"eval_count\":" + value + "}").completion_tokens;
  };
  EXPECT_EQ(completion("0"), 0);
  EXPECT_EQ(completion("290"), 290);
  EXPECT_EQ(completion("9223372036854775807"), INT64_MAX);
  EXPECT_FALSE(completion("9223372036854775808").has_value());  // overflow
  EXPECT_FALSE(completion("99999999999999999999999999").has_value());
  EXPECT_FALSE(completion("-3").has_value());
  EXPECT_FALSE(completion("-0").has_value());
  EXPECT_FALSE(completion("1.5").has_value());
  EXPECT_FALSE(completion("2.0").has_value());
  EXPECT_FALSE(completion("1e3").has_value());
  EXPECT_FALSE(completion("1E+3").has_value());
  EXPECT_FALSE(completion("5e-1").has_value());
  EXPECT_FALSE(completion("\"26\"").has_value());
  EXPECT_FALSE(completion("null").has_value());
  EXPECT_FALSE(completion("[26]").has_value());
  // Not JSON numbers: the whole object is broken.
  EXPECT_FALSE(completion("01").has_value());
  EXPECT_FALSE(completion("+1").has_value());
  EXPECT_FALSE(completion("1.").has_value());
  EXPECT_FALSE(completion("1e").has_value());
  EXPECT_FALSE(completion("-").has_value());
  EXPECT_FALSE(completion("0x10").has_value());
}

TEST(ResponseScannerTest, NonIntegerCountKeepsEarlierValue) {
  std::string body =
      "{\"prompt_eval_count\":10,\"eval_count\":20}\n"
      "{\"prompt_eval_count\":1.5,\"eval_count\":-1}\n";
  TokenUsage u = ScanAllWays(BodyFormat::kNdjson, body);
  EXPECT_EQ(u.prompt_tokens, 10);
  EXPECT_EQ(u.completion_tokens, 20);
}

TEST(ResponseScannerTest, OllamaAndOpenAiCountsShareFields) {
  TokenUsage u = ScanAllWays(BodyFormat::kJson,
                             "{\"prompt_eval_count\":1,\"usage\":{\"completion_tokens\":2}}");
  EXPECT_EQ(u.prompt_tokens, 1);
  EXPECT_EQ(u.completion_tokens, 2);
}

// --- Model ---------------------------------------------------------------------

TEST(ResponseScannerTest, FirstModelWins) {
  TokenUsage u =
      ScanAllWays(BodyFormat::kNdjson, "{\"model\":\"a\"}\n{\"model\":\"b\",\"response\":\"x\"}\n");
  EXPECT_EQ(u.model, "a");
  // An empty first model is still the first.
  u = ScanAllWays(BodyFormat::kNdjson, "{\"model\":\"\"}\n{\"model\":\"b\"}\n");
  EXPECT_EQ(u.model, "");
  // A broken object's model is not taken.
  u = ScanAllWays(BodyFormat::kNdjson, "{\"model\":\"bad\",}\n{\"model\":\"good\"}\n");
  EXPECT_EQ(u.model, "good");
}

TEST(ResponseScannerTest, ModelEscapesDecoded) {
  TokenUsage u = ScanAllWays(BodyFormat::kJson,
                             R"({"model":"a\"b\\c\/d\ne\tf\u00e9\u4e2d\ud83d\ude00\b\f\r\u0041"})");
  EXPECT_EQ(u.model, "a\"b\\c/d\ne\tf\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80\b\f\rA");
}

TEST(ResponseScannerTest, ModelLoneSurrogatesBecomeReplacementCharacter) {
  constexpr std::string_view kFffd = "\xEF\xBF\xBD";
  auto model = [](std::string_view value) {
    return ScanAllWays(BodyFormat::kJson, "{\"model\":\"" + std::string(value) + "\"}").model;
  };
  EXPECT_EQ(model("\\ud83d"), std::string(kFffd));
  EXPECT_EQ(model("\\ud83dx"), std::string(kFffd) + "x");
  EXPECT_EQ(model("\\ud83d\\n"), std::string(kFffd) + "\n");
  EXPECT_EQ(model("\\ude00a"), std::string(kFffd) + "a");
  EXPECT_EQ(model("\\ud83d\\u0041"), std::string(kFffd) + "A");
  EXPECT_EQ(model("\\ud83d\\ud83d\\ude00"), std::string(kFffd) + "\xF0\x9F\x98\x80");
}

TEST(ResponseScannerTest, ModelRawUtf8Kept) {
  TokenUsage u = ScanAllWays(BodyFormat::kJson, "{\"model\":\"mod\xC3\xA8le-\xE4\xB8\xAD\"}");
  EXPECT_EQ(u.model, "mod\xC3\xA8le-\xE4\xB8\xAD");
}

TEST(ResponseScannerTest, ModelTruncatedAtMax) {
  std::string long_model(200, 'a');
  TokenUsage u = ScanAllWays(BodyFormat::kJson, "{\"model\":\"" + long_model + "\"}");
  EXPECT_EQ(u.model, std::string(kMaxModelBytes, 'a'));
  std::string exact(kMaxModelBytes, 'b');
  u = ScanAllWays(BodyFormat::kJson, "{\"model\":\"" + exact + "\"}");
  EXPECT_EQ(u.model, exact);
  // Escapes past the cut are still checked: a bad one breaks the object.
  u = ScanAllWays(BodyFormat::kJson, "{\"model\":\"" + long_model + "\\q\"}");
  EXPECT_EQ(u.model, "");
}

TEST(ResponseScannerTest, ModelCutAtCharacterBoundary) {
  // 127 bytes, then a 2-byte character that would straddle the limit.
  std::string prefix(kMaxModelBytes - 1, 'a');
  TokenUsage u = ScanAllWays(BodyFormat::kJson, "{\"model\":\"" + prefix + "\xC3\xA9zz\"}");
  EXPECT_EQ(u.model, prefix);
  u = ScanAllWays(BodyFormat::kJson, "{\"model\":\"" + prefix + "\\u00e9zz\"}");
  EXPECT_EQ(u.model, prefix);
  // 126 bytes, then a 4-byte emoji escaped as a surrogate pair.
  std::string shorter(kMaxModelBytes - 2, 'a');
  u = ScanAllWays(BodyFormat::kJson, "{\"model\":\"" + shorter + "\\ud83d\\ude00\"}");
  EXPECT_EQ(u.model, shorter);
  // A character that ends exactly at the limit is kept.
  std::string fits(kMaxModelBytes - 2, 'a');
  u = ScanAllWays(BodyFormat::kJson, "{\"model\":\"" + fits + "\xC3\xA9z\"}");
  EXPECT_EQ(u.model, fits + "\xC3\xA9");
}

// --- Malformed input --------------------------------------------------------------

TEST(ResponseScannerTest, NdjsonResynchronisesAtNextLine) {
  std::string body =
      "{\"response\":\"trunc\n"  // cut inside a string
      "{\"response\":\"ok1\"}\n"
      "{\"response\":\"a\\qb\"}\n"     // bad escape
      "{\"response\":\"a\\u12G4\"}\n"  // bad \u escape
      "{\"response\":\"ok2\"}\n"
      "{\"response\":\"x\"} trailing\n"
      "{\"response\":\"x\"}{\"response\":\"y\"}\n"
      "{\"response\" \"x\"}\n"  // missing colon
      "{\"response\";\"x\"}\n"  // not a colon
      "{\"response\"=\"x\"}\n"
      "{\"response\"::\"x\"}\n"
      "{\"response\":\"x\",}\n"  // trailing comma
      "{\"response\":\"x\"]\n"   // wrong closer
      "{\"a\":[1,2}\n"
      "{response:\"x\"}\n"  // unquoted key
      "{\"response\":'x'}\n"
      "{\"response\":\"x\"\n"  // unclosed object
      "{\"response\":tru}\n"
      "{\"eval_count\":12,\"response\":\"ok3\"}\n"
      "}\n"
      "]\n"
      "\"string\"\n"
      "42\n"
      "null\n"
      "[{\"response\":\"in an array\"}]\n"  // not an object: not an event
      "{\"response\":\"ok4\"}\n";
  TokenUsage u = ScanAllWays(BodyFormat::kNdjson, body);
  EXPECT_EQ(u.token_events, 4u);
  EXPECT_EQ(u.completion_tokens, 12);
}

TEST(ResponseScannerTest, BrokenObjectCountsNothing) {
  // Its counts and model are not taken either.
  TokenUsage u = ScanAllWays(BodyFormat::kNdjson,
                             "{\"model\":\"m\",\"response\":\"x\",\"eval_count\":5,oops}\n");
  EXPECT_EQ(Describe(u), Describe(TokenUsage()));
  u = ScanAllWays(BodyFormat::kJson, "{\"response\":\"x\",\"eval_count\":5");  // truncated
  EXPECT_EQ(Describe(u), Describe(TokenUsage()));
  u = ScanAllWays(BodyFormat::kJson, "{\"response\":\"x\"}{}");
  EXPECT_EQ(Describe(u), Describe(TokenUsage()));
  u = ScanAllWays(BodyFormat::kJson, "[{\"response\":\"x\"}]");
  EXPECT_EQ(Describe(u), Describe(TokenUsage()));
}

TEST(ResponseScannerTest, SseResynchronisesAtNextEvent) {
  std::string body =
      "data: {\"choices\":[{\"delta\":{\"content\":\"a\"\n"  // cut short
      "\n"
      "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n"
      "\n"
      "data: {\"choices\":[{\"delta\":{\"content\":\"\\x\"}}]}\n"  // bad escape
      "\n"
      "data: garbage {\n"
      "\n"
      "data: {\"choices\":[{\"delta\":{\"content\":\"c\"}}]}\n"
      "data: {\"choices\":[{\"delta\":{\"content\":\"c\"}}]}\n"  // two objects: invalid
      "\n"
      "data: {\"choices\":[{\"delta\":{\"content\":\"d\"}}]}\n"
      "\n"
      "data: [DONE]\n"
      "\n";
  TokenUsage u = ScanAllWays(BodyFormat::kSse, body);
  EXPECT_EQ(u.token_events, 2u);
}

TEST(ResponseScannerTest, DeepNesting) {
  std::string open(100, '[');
  std::string close(100, ']');
  // A 100-level array is skipped; the keys after it are read.
  std::string deep = "{\"x\":" + open + close + ",\"response\":\"a\",\"model\":\"m\"}";
  TokenUsage u = ScanAllWays(BodyFormat::kJson, deep);
  EXPECT_EQ(u.token_events, 1u);
  EXPECT_EQ(u.model, "m");

  // Strings with brackets inside the skipped part do not confuse it.
  std::string objects;
  for (int i = 0; i < 100; ++i) objects += "{\"k]\":\"}[\\\"\",\"v\":";
  objects += "1";
  for (int i = 0; i < 100; ++i) objects += "}";
  u = ScanAllWays(BodyFormat::kNdjson, "{\"a\":" + objects + ",\"response\":\"b\"}\n");
  EXPECT_EQ(u.token_events, 1u);

  // Only the listed paths count, not the same keys nested deeper.
  std::string nested = "{\"response\":\"x\"}";
  for (int i = 0; i < 20; ++i) nested = "{\"a\":" + nested + "}";
  u = ScanAllWays(BodyFormat::kNdjson, nested + "\n");
  EXPECT_EQ(u.token_events, 0u);

  // Unbalanced: a broken object, then the next line is read.
  u = ScanAllWays(BodyFormat::kNdjson, "{\"x\":" + open + close.substr(1) +
                                           ",\"response\":\"a\"}\n"
                                           "{\"response\":\"b\"}\n");
  EXPECT_EQ(u.token_events, 1u);

  // The same in an SSE event.
  u = ScanAllWays(BodyFormat::kSse, "data: " + deep + "\n\n");
  EXPECT_EQ(u.token_events, 1u);

  // 100 levels of objects that never close.
  std::string unclosed;
  for (int i = 0; i < 100; ++i) unclosed += "{\"response\":";
  u = ScanAllWays(BodyFormat::kJson, unclosed);
  EXPECT_EQ(Describe(u), Describe(TokenUsage()));
}

TEST(ResponseScannerTest, DepthLimitBoundary) {
  // Filler nested 1 to 40 levels below the root, across the 16 tracked
  // levels: whether it is tracked or skipped, the keys after it are read.
  for (int levels = 1; levels <= 40; ++levels) {
    SCOPED_TRACE(levels);
    std::string arrays = "1";
    std::string objects = "\"v\"";
    for (int i = 0; i < levels; ++i) {
      arrays = "[0," + arrays + ",{}]";
      objects = "{\"a\":[],\"b\":" + objects + "}";
    }
    TokenUsage u = ScanAllWays(BodyFormat::kJson, "{\"f\":" + arrays + ",\"g\":" + objects +
                                                      ",\"usage\":{\"prompt_tokens\":3},"
                                                      "\"response\":\"x\"}");
    EXPECT_EQ(u.prompt_tokens, 3);
    EXPECT_EQ(u.token_events, 1u);
    // Broken inside the filler, tracked or skipped: nothing.
    std::string broken = arrays;
    broken.insert(broken.size() / 2, "]");
    u = ScanAllWays(BodyFormat::kJson, "{\"f\":" + broken + ",\"response\":\"x\"}");
    EXPECT_EQ(u.token_events, 0u);
  }
}

TEST(ResponseScannerTest, HugeKeys) {
  std::string huge(10000, 'k');
  TokenUsage u = ScanAllWays(BodyFormat::kNdjson,
                             "{\"" + huge +
                                 "\":\"x\",\"response\":\"a\"}\n"
                                 "{\"response" +
                                 std::string(40, 'x') +
                                 "\":\"b\"}\n"
                                 "{\"" +
                                 std::string(32, 'r') +
                                 "\":\"b\"}\n"
                                 "{\"" +
                                 std::string(33, 'r') +
                                 "\":\"b\"}\n"
                                 "{\"" +
                                 huge + "\\u0041\\n\":\"x\"}\n");  // escapes past the limit
  EXPECT_EQ(u.token_events, 1u);
}

TEST(ResponseScannerTest, BinaryGarbageThenValidLines) {
  std::string garbage;
  for (int i = 0; i < 256; ++i) {
    if (i != '\n') garbage += static_cast<char>(i);
  }
  std::string body = garbage + "\n" + std::string(kOllamaGenerate) +
                     std::string("\xFF\xFE\0{\n", 5) +
                     "{\"response\":\"\xFF\xFE\"}\n";  // invalid UTF-8 in a string is skipped
  TokenUsage u = ScanAllWays(BodyFormat::kNdjson, body);
  EXPECT_EQ(u.token_events, 4u);
  EXPECT_EQ(u.prompt_tokens, 26);
  u = ScanAllWays(BodyFormat::kSse, garbage + "\n\n" + std::string(kOpenAiStreamWithUsage));
  EXPECT_EQ(u.token_events, 2u);
  EXPECT_EQ(u.completion_tokens, 12);
}

// Feeds `body` in random pieces.
Scan ScanRandomPieces(BodyFormat format, std::string_view body, std::mt19937& rng) {
  std::vector<std::string_view> pieces;
  size_t at = 0;
  while (at < body.size()) {
    size_t n = std::uniform_int_distribution<size_t>(1, 16)(rng);
    pieces.push_back(body.substr(at, n));
    at += n;
  }
  return ScanPieces(format, pieces);
}

TEST(ResponseScannerTest, RandomBytesNeverCrash) {
  std::mt19937 rng(20240804);
  // JSON-ish fragments make deeper states reachable than raw bytes would.
  const std::vector<std::string> kAtoms = {"{",
                                           "}",
                                           "[",
                                           "]",
                                           ":",
                                           ",",
                                           "\"",
                                           "\\",
                                           "\\u",
                                           "\\ud83d",
                                           "\\ude00",
                                           "\n",
                                           "\r",
                                           "\r\n",
                                           " ",
                                           "data:",
                                           "data: ",
                                           ": c",
                                           "\"response\":",
                                           "\"model\":",
                                           "\"choices\":",
                                           "\"delta\":",
                                           "\"content\":",
                                           "\"usage\":",
                                           "\"prompt_tokens\":",
                                           "\"eval_count\":",
                                           "\"x\"",
                                           "\"text\":",
                                           "12",
                                           "-",
                                           "0",
                                           ".5",
                                           "e9",
                                           "true",
                                           "null",
                                           "9999999999999999999999"};
  const BodyFormat kFormats[] = {BodyFormat::kNdjson, BodyFormat::kSse, BodyFormat::kJson};
  for (int iter = 0; iter < 2000; ++iter) {
    std::string body;
    size_t parts = std::uniform_int_distribution<size_t>(0, 60)(rng);
    for (size_t i = 0; i < parts; ++i) {
      if (rng() % 3 == 0) {
        size_t n = std::uniform_int_distribution<size_t>(1, 8)(rng);
        for (size_t j = 0; j < n; ++j) body += static_cast<char>(rng() & 0xFF);
      } else {
        body += kAtoms[rng() % kAtoms.size()];
      }
    }
    for (BodyFormat format : kFormats) {
      SCOPED_TRACE(testing::Message()
                   << "iteration " << iter << " format " << static_cast<int>(format));
      Scan whole = ScanWhole(format, body);
      Scan pieces = ScanRandomPieces(format, body, rng);
      ASSERT_EQ(Describe(pieces.usage), Describe(whole.usage));
      ASSERT_EQ(whole.returned, whole.usage.token_events);
      ASSERT_EQ(pieces.returned, pieces.usage.token_events);
      ASSERT_LE(whole.usage.model.size(), kMaxModelBytes);
      if (whole.usage.prompt_tokens) {
        ASSERT_GE(*whole.usage.prompt_tokens, 0);
      }
      if (whole.usage.completion_tokens) {
        ASSERT_GE(*whole.usage.completion_tokens, 0);
      }
      // At most one event per frame.
      size_t frames = 1;
      for (char c : body) frames += c == '\n' || c == '\r';
      if (format == BodyFormat::kJson) frames = 1;
      ASSERT_LE(whole.usage.token_events, frames);
    }
  }
}

TEST(ResponseScannerTest, MutatedStreamsNeverCrash) {
  std::mt19937 rng(7);
  const std::pair<BodyFormat, std::string_view> kBodies[] = {
      {BodyFormat::kNdjson, kOllamaGenerate},
      {BodyFormat::kNdjson, kOllamaChat},
      {BodyFormat::kSse, kOpenAiStreamWithUsage},
      {BodyFormat::kJson, kOpenAiChatCompletionJson},
  };
  for (int iter = 0; iter < 2000; ++iter) {
    const auto& [format, original] = kBodies[iter % 4];
    std::string body(original);
    size_t edits = std::uniform_int_distribution<size_t>(1, 4)(rng);
    for (size_t i = 0; i < edits; ++i) {
      size_t at = rng() % body.size();
      switch (rng() % 3) {
        case 0:
          body[at] = static_cast<char>(rng() & 0xFF);
          break;
        case 1:
          body.erase(at, 1 + rng() % 8);
          break;
        default:
          body.insert(at, 1, "{}[]\",:\\\n"[rng() % 9]);
          break;
      }
      if (body.empty()) body = "x";
    }
    SCOPED_TRACE(testing::Message() << "iteration " << iter);
    Scan whole = ScanWhole(format, body);
    Scan pieces = ScanRandomPieces(format, body, rng);
    ASSERT_EQ(Describe(pieces.usage), Describe(whole.usage));
    ASSERT_EQ(whole.returned, whole.usage.token_events);
    ASSERT_LE(whole.usage.model.size(), kMaxModelBytes);
    // Edits can break events, never add text-carrying ones beyond a few.
    ASSERT_LE(whole.usage.token_events, ScanWhole(format, original).usage.token_events + edits);
  }
}

// --- RequestScanner ------------------------------------------------------------

TEST(RequestScannerTest, ModelAndStream) {
  RequestResult r = ScanRequestAllWays(
      R"({"model":"llama3.2","prompt":"Why is the sky blue?","stream":false,"options":{"temperature":0}})");
  EXPECT_EQ(r.model, "llama3.2");
  EXPECT_EQ(r.stream, false);
  r = ScanRequestAllWays(
      R"({ "stream" : true , "messages":[{"role":"user","content":"hi"}], "model" : "gpt-4o" })");
  EXPECT_EQ(r.model, "gpt-4o");
  EXPECT_EQ(r.stream, true);
  r = ScanRequestAllWays(R"({"model":"m","prompt":"p"})");
  EXPECT_EQ(r.model, "m");
  EXPECT_FALSE(r.stream.has_value());
}

TEST(RequestScannerTest, StreamMustBeBoolean) {
  for (std::string value : {"null", "1", "0", "\"true\"", "{}", "[true]"}) {
    RequestResult r = ScanRequestAllWays("{\"stream\":" + value + ",\"model\":\"m\"}");
    EXPECT_FALSE(r.stream.has_value()) << value;
    EXPECT_EQ(r.model, "m") << value;
  }
}

TEST(RequestScannerTest, ModelMustBeString) {
  for (std::string value : {"null", "1", "true", "{\"model\":\"x\"}", "[\"x\"]"}) {
    RequestResult r = ScanRequestAllWays("{\"model\":" + value + ",\"stream\":true}");
    EXPECT_EQ(r.model, "") << value;
    EXPECT_EQ(r.stream, true) << value;
  }
}

TEST(RequestScannerTest, NestedModelAndStreamIgnored) {
  RequestResult r = ScanRequestAllWays(
      R"({"options":{"model":"no","stream":true},"messages":[{"role":"user","model":"no",)"
      R"("content":"{\"model\":\"no\"}"}],"tools":[[{"model":"no"}]],"model":"yes"})");
  EXPECT_EQ(r.model, "yes");
  EXPECT_FALSE(r.stream.has_value());
  r = ScanRequestAllWays(R"([{"model":"no","stream":true}])");  // not an object
  EXPECT_EQ(r.model, "");
  EXPECT_FALSE(r.stream.has_value());
}

TEST(RequestScannerTest, EscapedModel) {
  RequestResult r = ScanRequestAllWays(R"({"model":"my\/model:7b-\u00e9\"q\\\ud83d\ude00"})");
  EXPECT_EQ(r.model, "my/model:7b-\xC3\xA9\"q\\\xF0\x9F\x98\x80");
  r = ScanRequestAllWays(R"({"m\u006fdel":"x"})");
  EXPECT_EQ(r.model, "x");
}

TEST(RequestScannerTest, ModelTruncatedAtMax) {
  RequestResult r = ScanRequestAllWays("{\"model\":\"" + std::string(300, 'z') + "\"}");
  EXPECT_EQ(r.model, std::string(kMaxModelBytes, 'z'));
}

TEST(RequestScannerTest, ModelVisibleOnceComplete) {
  RequestScanner scanner;
  scanner.Feed("{\"model\":\"lla");
  EXPECT_EQ(scanner.model(), "");
  scanner.Feed("ma3\"");
  EXPECT_EQ(scanner.model(), "llama3");
  EXPECT_FALSE(scanner.stream().has_value());
  scanner.Feed(",\"stream\":fal");
  EXPECT_FALSE(scanner.stream().has_value());
  scanner.Feed("se");
  EXPECT_EQ(scanner.stream(), false);
  scanner.Feed("}");
  EXPECT_EQ(scanner.model(), "llama3");
}

TEST(RequestScannerTest, KeysFoldedLikeOllamasDecoder) {
  // Go's encoding/json matches field names case-insensitively, with
  // U+017F folding to 's': Ollama would read these as model and stream.
  RequestResult r = ScanRequestAllWays("{\"Model\":\"a\",\"STREAM\":true}");
  EXPECT_EQ(r.model, "a");
  EXPECT_EQ(r.stream, true);
  r = ScanRequestAllWays("{\"\xC5\xBFtream\":false,\"mODEL\":\"b\"}");
  EXPECT_EQ(r.model, "b");
  EXPECT_EQ(r.stream, false);
  r = ScanRequestAllWays("{\"models\":\"no\",\"modl\":\"no\",\"strea\":true,\"\":\"no\"}");
  EXPECT_EQ(r.model, "");
  EXPECT_FALSE(r.stream.has_value());
}

TEST(RequestScannerTest, LastDuplicateWinsLikeOllamasDecoder) {
  RequestResult r = ScanRequestAllWays(
      "{\"model\":\"a\",\"stream\":true,\"model\":\"b\",\"stream\":false,\"model\":null}");
  EXPECT_EQ(r.model, "b");
  EXPECT_EQ(r.stream, false);
}

TEST(RequestScannerTest, ModelAfterFiveMegabyteImage) {
  std::string image;
  image.reserve(5 << 20);
  const char kBase64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::mt19937 rng(1);
  while (image.size() < (5u << 20)) image += kBase64[rng() % 64];
  std::string body = "{\"prompt\":\"describe\",\"images\":[\"" + image +
                     "\"],\"model\":\"llava:13b\",\"stream\":true}";
  for (size_t piece : {body.size(), size_t{65536}, size_t{4093}, size_t{1}}) {
    RequestScanner scanner;
    for (size_t at = 0; at < body.size(); at += piece) {
      scanner.Feed(std::string_view(body).substr(at, piece));
    }
    EXPECT_EQ(scanner.model(), "llava:13b") << piece;
    EXPECT_EQ(scanner.stream(), true) << piece;
  }

  // Encoders that escape '/' as "\/" put a backslash every ~64 bytes.
  std::string escaped;
  escaped.reserve(image.size() * 2);
  for (char c : image) {
    if (c == '/') escaped += '\\';
    escaped += c;
  }
  body = "{\"messages\":[{\"role\":\"user\",\"content\":\"?\",\"images\":[\"" + escaped +
         "\"]}],\"model\":\"llava\"}";
  for (size_t piece : {body.size(), size_t{65536}, size_t{7}}) {
    RequestScanner scanner;
    for (size_t at = 0; at < body.size(); at += piece) {
      scanner.Feed(std::string_view(body).substr(at, piece));
    }
    EXPECT_EQ(scanner.model(), "llava") << piece;
    EXPECT_FALSE(scanner.stream().has_value()) << piece;
  }
}

TEST(RequestScannerTest, MalformedBodies) {
  // What was read before the break stays; nothing after it is read.
  RequestResult r =
      ScanRequestAllWays("{\"model\":\"a\",\"x\":\\,\"model\":\"b\",\"stream\":true}");
  EXPECT_EQ(r.model, "a");
  EXPECT_FALSE(r.stream.has_value());
  r = ScanRequestAllWays("{\"model\":\"a\\q\"}");  // bad escape inside the model
  EXPECT_EQ(r.model, "");
  r = ScanRequestAllWays("{\"model\":\"unterminated");
  EXPECT_EQ(r.model, "");
  r = ScanRequestAllWays("model=x&stream=true");
  EXPECT_EQ(Describe(r), Describe(RequestResult()));
  r = ScanRequestAllWays("");
  EXPECT_EQ(Describe(r), Describe(RequestResult()));
  std::string deep(100, '[');
  r = ScanRequestAllWays("{\"x\":" + deep + "\"model\"" + std::string(100, ']') +
                         ",\"model\":\"m\"}");
  EXPECT_EQ(r.model, "m");
  r = ScanRequestAllWays("{\"" + std::string(5000, 'k') + "\":1,\"model\":\"m\"}");
  EXPECT_EQ(r.model, "m");
}

TEST(RequestScannerTest, RandomBytesNeverCrash) {
  std::mt19937 rng(99);
  const std::vector<std::string> kAtoms = {
      "{",     "}",          "[",           "]",    ":",     ",",     "\"", "\\",
      "\\u00", "\"model\":", "\"stream\":", "true", "false", "\"m\"", " ",  "1"};
  for (int iter = 0; iter < 2000; ++iter) {
    std::string body;
    size_t parts = std::uniform_int_distribution<size_t>(0, 40)(rng);
    for (size_t i = 0; i < parts; ++i) {
      if (rng() % 3 == 0) {
        body += static_cast<char>(rng() & 0xFF);
      } else {
        body += kAtoms[rng() % kAtoms.size()];
      }
    }
    SCOPED_TRACE(testing::Message() << "iteration " << iter);
    RequestResult whole = ScanRequestPieces({body});
    std::vector<std::string_view> pieces;
    size_t at = 0;
    while (at < body.size()) {
      size_t n = 1 + rng() % 5;
      pieces.push_back(std::string_view(body).substr(at, n));
      at += n;
    }
    ASSERT_EQ(Describe(ScanRequestPieces(pieces)), Describe(whole));
    ASSERT_LE(whole.model.size(), kMaxModelBytes);
  }
}

}  // namespace
}  // namespace sluice::core
