// The model policy on a request's body (README "Model policy"): the body of
// a generation or an embedding is read the way Ollama reads it
// (policy::RequestBodyReader) and judged against the key's policy
// (policy::JudgeBody) before any of it goes up: refused (403 for a model
// the key may not use, 400 for a body Ollama would refuse or a value over
// its maximum with over_max=refuse), or forwarded with its fields
// rewritten in place (an alias, a keep_alive, num_ctx or num_predict
// lowered) and the Content-Length that goes with them.
//
// A body is held whole up to kBodyHoldBytes. A larger one (images) is
// judged on that start, which goes up rewritten, and its rest is read as it
// passes: a field there that would need a rewrite, or a refusal, or another
// model, ends the request with 400 before the body's last byte has gone up,
// so Ollama never runs a request whose values sluice did not check.

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/observe/log.h"
#include "core/proxy/relay.h"
#include "core/server/shard.h"
#include "http/serialize.h"

namespace sluice::core {
namespace {

// `held` (the body's first bytes, in order) with `edits` applied; the
// unchanged runs stay views of the same buffers.
std::vector<Slice> EditSlices(std::vector<Slice> held, const std::vector<policy::BodyEdit>& edits) {
  std::vector<Slice> out;
  out.reserve(held.size() + 2 * edits.size());
  uint64_t at = 0;      // body offset of the piece's first byte
  uint64_t cursor = 0;  // the first body byte neither out nor replaced
  size_t e = 0;
  for (const Slice& piece : held) {
    const uint64_t end = at + piece.size();
    cursor = std::max(cursor, at);
    for (; e < edits.size() && edits[e].begin < end && cursor <= end; ++e) {
      const policy::BodyEdit& edit = edits[e];
      if (edit.begin > cursor) out.push_back(piece.Sub(cursor - at, edit.begin - cursor));
      if (!edit.text.empty()) out.push_back(Slice::Copy(edit.text));
      cursor = edit.end;  // past `end` when the value goes on in the next piece
    }
    if (cursor < end) out.push_back(piece.Sub(cursor - at, end - cursor));
    at = end;
  }
  for (; e < edits.size(); ++e) {  // insertions at the very end
    if (!edits[e].text.empty()) out.push_back(Slice::Copy(edits[e].text));
  }
  return out;
}

int64_t EditDelta(const std::vector<policy::BodyEdit>& edits) {
  int64_t delta = 0;
  for (const policy::BodyEdit& e : edits) {
    delta += static_cast<int64_t>(e.text.size()) - static_cast<int64_t>(e.end - e.begin);
  }
  return delta;
}

}  // namespace

#define BODY_LOG(level, fmt, ...)                                                           \
  LOG_##level("*%llu client %s: " fmt, static_cast<unsigned long long>(client_.connection), \
              client_.addr.c_str(), ##__VA_ARGS__)

bool Relay::WantsBodyCheck() const {
  const policy::Admission& a = gate_.admission();
  if (named_ != nullptr || a.model_policy == nullptr || head_.method != "POST" ||
      !head_.has_body()) {
    return false;
  }
  if (policy::IsGenerationPath(a.path.match)) return !a.model_policy->Open();
  if (a.path.match == "/api/pull" || a.path.match == "/api/create") {
    const std::vector<std::string>& r = a.model_policy->registries;
    return !(r.size() == 1 && r[0] == "*");
  }
  return false;
}

policy::BodyApi Relay::BodyApiOf() const {
  return absl::StartsWith(gate_.admission().path.match, "/v1/") ? policy::BodyApi::kOpenAi
                                                                : policy::BodyApi::kNative;
}

policy::BodyRoute Relay::BodyRouteOf() const {
  const std::string& path = gate_.admission().path.match;
  if (path == "/api/pull") return policy::BodyRoute::kPull;
  if (path == "/api/create") return policy::BodyRoute::kCreate;
  return absl::StrContains(path, "embed") ? policy::BodyRoute::kEmbed
                                          : policy::BodyRoute::kGenerate;
}

bool Relay::JudgeHeld(ModelPeek* peek, std::string* model) {
  policy::RequestBodyReader& reader = *peek->reader;
  if (peek->end) reader.Finish();
  if (reader.failed()) {
    AnswerBody(400, "body", absl::StrCat("invalid request body: ", reader.error()));
    return false;
  }
  policy::BodyVerdict v =
      policy::JudgeBody(*gate_.admission().model_policy, BodyApiOf(), BodyRouteOf(), reader);
  if (v.status != 0) {
    AnswerBody(v.status, v.reason, v.error);
    return false;
  }
  *model = v.model;
  if (!v.edits.empty()) {
    for (size_t i = 0; i < std::size(shard_->metrics().body_rewrites); ++i) {
      if (v.rewrites & (1u << i)) ++shard_->metrics().body_rewrites[i];
    }
    BODY_LOG(DEBUG, "%s %s: body rewritten (%u)", head_.method.c_str(), head_.target.c_str(),
             v.rewrites);
    const int64_t delta = EditDelta(v.edits);
    peek->held = EditSlices(std::move(peek->held), v.edits);
    peek->bytes = static_cast<size_t>(static_cast<int64_t>(peek->bytes) + delta);
    if (!peek->end && head_.content_length.has_value()) {
      head_.content_length =
          static_cast<uint64_t>(static_cast<int64_t>(*head_.content_length) + delta);
    }
  }
  if (peek->end) {
    // The whole body is known: it goes up with its length.
    head_.chunked = false;
    head_.content_length = peek->bytes;
  } else {
    const uint64_t judged = reader.offset();
    tail_.emplace(BodyTail{std::move(reader), judged, v.model});
  }
  peek->reader.reset();
  return true;
}

bool Relay::CheckTail(const Slice& piece) {
  BodyTail& tail = *tail_;
  tail.reader.Feed(piece.view());
  std::string error;
  int status = 400;
  if (tail.reader.failed()) {
    error = absl::StrCat("invalid request body: ", tail.reader.error());
  } else {
    policy::BodyVerdict v =
        policy::JudgeBody(*gate_.admission().model_policy, BodyApiOf(), BodyRouteOf(), tail.reader);
    const bool late_edit = std::any_of(v.edits.begin(), v.edits.end(), [&](const auto& e) {
      return e.end > e.begin && e.end > tail.judged;
    });
    if (v.status != 0) {
      status = v.status;
      error = v.error;
    } else if (v.model != tail.model) {
      error = "\"model\" is given twice in the request body";
    } else if (late_edit) {
      error = absl::StrCat(
          "a field sluice checks (model, keep_alive, options, max_tokens) comes after the first ",
          kBodyHoldBytes >> 20, " MiB of a large request body: send it before the images");
    }
  }
  if (error.empty()) return true;
  tail_.reset();
  ++(status == 403 ? shard_->metrics().rejected_model : shard_->metrics().rejected_body);
  BODY_LOG(INFO, "%s %s: %d %s", head_.method.c_str(), head_.target.c_str(), status, error.c_str());
  EndWithError(status, error);
  return false;
}

void Relay::AnswerBody(int status, std::string_view reason, std::string_view error) {
  finished_ = true;
  MetricsShard& m = shard_->metrics();
  ++(reason == "model"      ? m.rejected_model
     : reason == "registry" ? m.rejected_registry
     : reason == "body"     ? m.rejected_body
     : reason == "images"   ? m.rejected_images
                            : m.rejected_over_max);
  BODY_LOG(INFO, "%s %s: %d %.*s", head_.method.c_str(), head_.target.c_str(), status,
           static_cast<int>(error.size()), error.data());
  std::string body;
  if (BodyApiOf() == policy::BodyApi::kOpenAi) {
    body = "{\"error\":{\"message\":\"";
    http::AppendJsonEscaped(error, &body);
    body +=
        absl::StrCat("\",\"type\":\"", status == 403 ? "permission_error" : "invalid_request_error",
                     "\",\"param\":null,\"code\":null}}\n");
  } else {
    body = http::JsonErrorBody(error);
  }
  record_.Answered(status, body.size());
  downstream_->SendJsonAnswer(status, std::move(body), {});
}

}  // namespace sluice::core
