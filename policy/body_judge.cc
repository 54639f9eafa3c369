// JudgeBody (model_policy.h): a key's model policy applied to one request
// body, as edits to the body or a refusal.

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "policy/model_policy.h"

namespace sluice::policy {
namespace {

// A number as written in the body; false when it is not one.
bool NumberValue(const BodyValue& v, double* out) {
  if (v.kind != BodyValueKind::kNumber) return false;
  *out = std::strtod(v.text.c_str(), nullptr);
  return true;
}

bool IntegerSyntax(const BodyValue& v) {
  return v.kind == BodyValueKind::kNumber && v.text.find_first_of(".eE") == std::string::npos;
}

// keep_alive as written back: seconds when whole, else milliseconds (Go
// durations, which Ollama reads).
std::string KeepAliveText(int64_t ns) {
  if (ns % 1'000'000'000 == 0) return absl::StrCat("\"", ns / 1'000'000'000, "s\"");
  return absl::StrCat("\"", ns / 1'000'000, "ms\"");
}

std::string DurationWords(int64_t ns) {
  if (ns % 1'000'000'000 == 0) return absl::StrCat(ns / 1'000'000'000, " s");
  return absl::StrCat(ns / 1'000'000, " ms");
}

class Judge {
 public:
  Judge(const ModelPolicy& p, BodyApi api, BodyRoute route, const RequestBodyReader& body)
      : p_(p), api_(api), route_(route), body_(body) {}

  BodyVerdict Run() {
    if (route_ == BodyRoute::kPull || route_ == BodyRoute::kCreate) {
      Registry();
      return std::move(v_);
    }
    if (Model() && Images() && KeepAlive() && NumCtx() && Predict()) {
      std::sort(v_.edits.begin(), v_.edits.end(),
                [](const BodyEdit& a, const BodyEdit& b) { return a.begin < b.begin; });
    } else {
      v_.edits.clear();
      v_.rewrites = 0;
    }
    return std::move(v_);
  }

 private:
  bool Refuse(int status, std::string reason, std::string error) {
    v_.status = status;
    v_.reason = std::move(reason);
    v_.error = std::move(error);
    return false;
  }
  void Replace(const BodyValue& v, std::string text, BodyRewrite kind) {
    v_.edits.push_back(BodyEdit{v.value_begin, v.value_end, std::move(text)});
    v_.rewrites |= kind;
  }
  void Insert(uint64_t at, std::string text, BodyRewrite kind) {
    v_.edits.push_back(BodyEdit{at, at, std::move(text)});
    v_.rewrites |= kind;
  }

  // /api/pull from an allowed registry only, never "insecure"; /api/create
  // "from" a model of an allowed registry (a blob or a local model is
  // not fetched).
  bool Registry() {
    const BodyValue* name = nullptr;
    if (route_ == BodyRoute::kPull) {
      if (body_.Get(BodyField::kInsecure).kind == BodyValueKind::kTrue) {
        return Refuse(403, "registry", "\"insecure\" pulls are not allowed");
      }
      // Ollama pulls "model", or "name" when model is empty.
      const BodyValue& m = body_.Get(BodyField::kModel);
      name =
          m.kind == BodyValueKind::kString && !m.text.empty() ? &m : &body_.Get(BodyField::kName);
    } else {
      name = &body_.Get(BodyField::kFrom);
    }
    if (!name->present() || name->kind != BodyValueKind::kString) return true;
    if (name->text_cut) return Refuse(400, "body", "the model name is too long");
    const std::string registry = ModelRegistry(name->text);
    for (const std::string& r : p_.registries) {
      if (r == "*" || r == registry) return true;
    }
    return Refuse(403, "registry",
                  absl::StrCat("models from '", registry, "' are not allowed (allowed: ",
                               absl::StrJoin(p_.registries, ", "), ")"));
  }

  bool Model() {
    const BodyValue& m = body_.Get(BodyField::kModel);
    if (!m.present() || m.kind == BodyValueKind::kNull) return true;  // Ollama answers
    if (m.kind != BodyValueKind::kString) {
      return Refuse(400, "body", "\"model\" must be a string");
    }
    if (m.text_cut) return Refuse(400, "body", "\"model\" is too long");
    v_.model = m.text;
    const std::string asked = CanonicalModelName(m.text);
    std::string used = asked;
    for (const auto& [from, to] : p_.aliases) {
      if (from != asked) continue;
      Replace(m, absl::StrCat("\"", to, "\""), kRewriteAlias);
      v_.model = to;
      used = CanonicalModelName(to);
      break;
    }
    if (!ModelAllowed(p_, asked) && !ModelAllowed(p_, used)) {
      return Refuse(403, "model", absl::StrCat("model '", m.text, "' is not allowed for this key"));
    }
    return true;
  }

  // Images sent (base64 strings), counted and measured as they are read.
  bool Images() {
    if (p_.max_images != kNoLimit && body_.images() > p_.max_images) {
      return Refuse(400, "images",
                    absl::StrCat("the request has ", body_.images(), " images; this key may send ",
                                 p_.max_images, " at most"));
    }
    if (p_.max_image_bytes != kNoLimit &&
        body_.image_bytes() > static_cast<uint64_t>(p_.max_image_bytes)) {
      return Refuse(400, "images",
                    absl::StrCat("the request's images have ", body_.image_bytes(),
                                 " bytes; this key may send ", p_.max_image_bytes, " at most"));
    }
    return true;
  }

  bool KeepAlive() {
    if (api_ != BodyApi::kNative) return true;
    const BodyValue& k = body_.Get(BodyField::kKeepAlive);
    if (!k.present()) return true;
    const policy::KeepAlive ka = ReadKeepAlive(k);
    const int64_t max = p_.max_keep_alive_ns;
    switch (ka.kind) {
      case KeepAlive::Kind::kDefault:
        return true;
      case KeepAlive::Kind::kInvalid:
        return Refuse(400, "body",
                      "\"keep_alive\" must be a duration such as \"5m\" or a number of seconds");
      case KeepAlive::Kind::kForever:
        if (p_.keep_alive_forever) return true;
        if (p_.refuse_over || max == kNoLimit) {
          return Refuse(400, "keep_alive",
                        "a negative \"keep_alive\" (keep the model loaded forever) is not allowed "
                        "for this key");
        }
        break;
      case KeepAlive::Kind::kFor:
        if (max == kNoLimit || ka.ns <= max) return true;
        if (p_.refuse_over) {
          return Refuse(
              400, "keep_alive",
              absl::StrCat("\"keep_alive\" is over this key's maximum of ", DurationWords(max)));
        }
        break;
    }
    Replace(k, KeepAliveText(max), kRewriteKeepAlive);
    return true;
  }

  bool NumCtx() {
    if (api_ != BodyApi::kNative || p_.max_num_ctx == kNoLimit) return true;
    const BodyValue& n = body_.Get(BodyField::kNumCtx);
    if (!n.present() || n.kind == BodyValueKind::kNull) return true;
    double value = 0;
    if (!NumberValue(n, &value)) return Refuse(400, "body", "\"options.num_ctx\" must be a number");
    if (!(value > static_cast<double>(p_.max_num_ctx))) return true;
    if (p_.refuse_over) {
      return Refuse(
          400, "num_ctx",
          absl::StrCat("\"options.num_ctx\" is over this key's maximum of ", p_.max_num_ctx));
    }
    Replace(n, absl::StrCat(p_.max_num_ctx), kRewriteNumCtx);
    return true;
  }

  // num_predict (native) or max_tokens (OpenAI): at most the maximum, and
  // set to it when absent or unlimited (negative).
  bool Predict() {
    if (route_ != BodyRoute::kGenerate || p_.max_num_predict == kNoLimit) return true;
    const int64_t max = p_.max_num_predict;
    if (api_ == BodyApi::kOpenAi) {
      const BodyValue& mc = body_.Get(BodyField::kMaxCompletion);
      if (mc.present() && !Limit(mc, "max_completion_tokens", max, true)) return false;
      const BodyValue& mt = body_.Get(BodyField::kMaxTokens);
      if (mt.present()) return Limit(mt, "max_tokens", max, true);
      if (mc.present() && mc.kind == BodyValueKind::kNumber) return true;
      Insert(body_.root_begin() + 1,
             absl::StrCat("\"max_tokens\":", max, body_.root_empty() ? "" : ","),
             kRewriteNumPredict);
      return true;
    }
    const BodyValue& o = body_.Get(BodyField::kOptions);
    const BodyValue& n = body_.Get(BodyField::kNumPredict);
    if (o.present() && o.kind != BodyValueKind::kObject && o.kind != BodyValueKind::kNull) {
      return Refuse(400, "body", "\"options\" must be an object");
    }
    const std::string field = absl::StrCat("\"num_predict\":", max);
    if (o.present() && o.kind == BodyValueKind::kNull) {
      // The last "options" is null: Go drops the map there.
      Replace(o, absl::StrCat("{", field, "}"), kRewriteNumPredict);
      return true;
    }
    if (n.present()) return Limit(n, "options.num_predict", max, false);
    if (o.present()) {
      Insert(body_.options_begin() + 1, absl::StrCat(field, body_.options_empty() ? "" : ","),
             kRewriteNumPredict);
    } else {
      Insert(body_.root_begin() + 1,
             absl::StrCat("\"options\":{", field, "}", body_.root_empty() ? "" : ","),
             kRewriteNumPredict);
    }
    return true;
  }

  // A token limit present in the body: a number at most `max` (negative:
  // unlimited, so over it). `integer`: Go reads it into an int.
  bool Limit(const BodyValue& v, const char* name, int64_t max, bool integer) {
    if (v.kind == BodyValueKind::kNull) {
      Replace(v, absl::StrCat(max), kRewriteNumPredict);
      return true;
    }
    double value = 0;
    if (!NumberValue(v, &value) || (integer && !IntegerSyntax(v))) {
      return Refuse(400, "body", absl::StrCat("\"", name, "\" must be a whole number"));
    }
    if (value >= 0 && value <= static_cast<double>(max)) return true;
    if (p_.refuse_over) {
      return Refuse(400, "num_predict",
                    absl::StrCat("\"", name, "\" is over this key's maximum of ", max,
                                 value < 0 ? " (a negative value is unlimited)" : ""));
    }
    Replace(v, absl::StrCat(max), kRewriteNumPredict);
    return true;
  }

  const ModelPolicy& p_;
  BodyApi api_;
  BodyRoute route_;
  const RequestBodyReader& body_;
  BodyVerdict v_;
};

}  // namespace

std::string ModelRegistry(absl::string_view name) {
  // As Ollama's ParseName: the model after the last '/', the namespace
  // before it, and all that comes before those the host, a scheme
  // ("https://") dropped.
  const size_t model = name.rfind('/');
  if (model == absl::string_view::npos || model == 0) return "registry.ollama.ai";
  const size_t ns = name.rfind('/', model - 1);
  if (ns == absl::string_view::npos) return "registry.ollama.ai";
  absl::string_view host = name.substr(0, ns);
  if (const size_t scheme = host.find("://"); scheme != absl::string_view::npos) {
    host = host.substr(scheme + 3);
  }
  return absl::AsciiStrToLower(host);
}

BodyVerdict JudgeBody(const ModelPolicy& p, BodyApi api, BodyRoute route,
                      const RequestBodyReader& body) {
  return Judge(p, api, route, body).Run();
}

}  // namespace sluice::policy
