#include "core/observe/usage_scanner.h"

#include <cstring>

namespace sluice::core {
namespace {

const char* Find(const char* p, const char* end, char c) {
  const void* hit = std::memchr(p, c, static_cast<size_t>(end - p));
  return hit != nullptr ? static_cast<const char*>(hit) : end;
}

// The first '\r' or '\n' in [p, end), or end. Two memchr passes beat a
// per-byte loop on long data lines.
const char* FindLineEnd(const char* p, const char* end) {
  const char* lf = Find(p, end, '\n');
  return Find(p, lf, '\r');
}

}  // namespace

BodyFormat FormatForContentType(std::string_view content_type) {
  size_t semi = content_type.find(';');
  std::string_view type = content_type.substr(0, semi);
  while (!type.empty() && (type.front() == ' ' || type.front() == '\t')) type.remove_prefix(1);
  while (!type.empty() && (type.back() == ' ' || type.back() == '\t')) type.remove_suffix(1);
  auto is = [type](std::string_view name) {
    if (type.size() != name.size()) return false;
    for (size_t i = 0; i < name.size(); ++i) {
      char c = type[i];
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      if (c != name[i]) return false;
    }
    return true;
  };
  if (is("application/x-ndjson")) return BodyFormat::kNdjson;
  if (is("text/event-stream")) return BodyFormat::kSse;
  if (is("application/json")) return BodyFormat::kJson;
  return BodyFormat::kOther;
}

// ---------------------------------------------------------------------------
// ResponseScanner

ResponseScanner::ResponseScanner(BodyFormat format) : format_(format) {
  json_.Reset(JsonTokenizer::Mode::kResponse);
}

size_t ResponseScanner::EndFrame() {
  size_t events = 0;
  if (json_.Complete()) {
    if (json_.text_) {
      ++usage_.token_events;
      events = 1;
    }
    if (json_.prompt_tokens_) usage_.prompt_tokens = json_.prompt_tokens_;
    if (json_.completion_tokens_) usage_.completion_tokens = json_.completion_tokens_;
    if (json_.load_duration_) usage_.load_duration_ns = json_.load_duration_;
    if (json_.model_done_ && !model_seen_) {
      usage_.model.assign(json_.model_, json_.model_len_);
      model_seen_ = true;
    }
  }
  json_.Reset(JsonTokenizer::Mode::kResponse);
  return events;
}

size_t ResponseScanner::Feed(std::string_view bytes) {
  if (finished_ || bytes.empty()) return 0;
  const char* p = bytes.data();
  const char* end = p + bytes.size();
  switch (format_) {
    case BodyFormat::kNdjson:
      return FeedNdjson(p, end);
    case BodyFormat::kSse:
      return FeedSse(p, end);
    case BodyFormat::kJson:
      json_.Run(&p, end);
      return 0;
    case BodyFormat::kOther:
      return 0;
  }
  return 0;
}

size_t ResponseScanner::Finish() {
  if (finished_) return 0;
  finished_ = true;
  switch (format_) {
    case BodyFormat::kNdjson:
    case BodyFormat::kJson:
      return EndFrame();
    case BodyFormat::kSse:
      // An event without its blank line is discarded (WHATWG HTML,
      // "Server-sent events", end of stream).
    case BodyFormat::kOther:
      return 0;
  }
  return 0;
}

size_t ResponseScanner::FeedNdjson(const char* p, const char* end) {
  size_t events = 0;
  while (p < end) {
    const char* lf = Find(p, end, '\n');
    json_.Run(&p, lf);  // "\r" of a CRLF is JSON whitespace
    if (lf == end) break;
    events += EndFrame();
    p = lf + 1;
  }
  return events;
}

void ResponseScanner::BeginSseDataLine() {
  // Data lines of one event are joined with '\n' (JSON whitespace).
  if (sse_event_has_data_) {
    const char lf = '\n';
    const char* p = &lf;
    json_.Run(&p, p + 1);
  }
  sse_event_has_data_ = true;
}

size_t ResponseScanner::EndSseLine() {
  size_t events = 0;
  switch (sse_state_) {
    case SseState::kLineStart:  // a blank line dispatches the event
      if (sse_event_has_data_) {
        sse_event_has_data_ = false;
        events = EndFrame();
      }
      break;
    case SseState::kField:  // a line without ':' names a field, value ""
      if (sse_field_matched_ == 4) BeginSseDataLine();
      break;
    default:
      break;
  }
  sse_state_ = SseState::kLineStart;
  return events;
}

size_t ResponseScanner::FeedSse(const char* p, const char* end) {
  size_t events = 0;
  while (p < end) {
    char c = *p;
    if (sse_after_cr_) {
      sse_after_cr_ = false;
      if (c == '\n') {
        ++p;
        continue;
      }
    }
    if (c == '\r' || c == '\n') {
      ++p;
      sse_after_cr_ = c == '\r';
      events += EndSseLine();
      continue;
    }
    switch (sse_state_) {
      case SseState::kLineStart:
        if (c == ':') {
          sse_state_ = SseState::kIgnore;  // a comment
          ++p;
        } else {
          sse_state_ = SseState::kField;
          sse_field_matched_ = 0;
        }
        break;
      case SseState::kField:
        ++p;
        if (c == ':') {
          if (sse_field_matched_ == 4) {
            BeginSseDataLine();
            sse_state_ = SseState::kDataStart;
          } else {
            sse_state_ = SseState::kIgnore;
          }
        } else if (sse_field_matched_ < 4 && c == "data"[sse_field_matched_]) {
          ++sse_field_matched_;
        } else {
          sse_field_matched_ = 5;
        }
        break;
      case SseState::kDataStart:
        if (c == ' ') ++p;
        sse_state_ = SseState::kData;
        break;
      case SseState::kData: {
        const char* eol = FindLineEnd(p, end);
        json_.Run(&p, eol);
        break;
      }
      case SseState::kIgnore:
        p = FindLineEnd(p, end);
        break;
    }
  }
  return events;
}

// ---------------------------------------------------------------------------
// RequestScanner

RequestScanner::RequestScanner() { json_.Reset(ResponseScanner::JsonTokenizer::Mode::kRequest); }

void RequestScanner::Feed(std::string_view bytes) {
  using Yield = ResponseScanner::JsonTokenizer::Yield;
  const char* p = bytes.data();
  const char* end = p + bytes.size();
  while (p < end) {
    switch (json_.Run(&p, end)) {
      case Yield::kModel:
        model_.assign(json_.model_, json_.model_len_);
        model_cut_ = json_.model_cut_;
        break;
      case Yield::kStream:
        stream_ = json_.stream_;
        break;
      case Yield::kNone:
        break;
    }
  }
}

}  // namespace sluice::core