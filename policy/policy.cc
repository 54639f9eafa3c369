#include "policy/policy.h"

#include <cerrno>
#include <cmath>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "policy/route_rules.h"

namespace sluice::policy {
namespace {

// The routes whose responses stream tokens: strict default limits, and the
// caps on concurrent requests apply to them.
constexpr absl::string_view kGenerationPaths[] = {
    "/api/generate",        "/api/chat",       "/api/embed",     "/api/embeddings",
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
};
constexpr absl::string_view kDeniedPaths[] = {"/api/delete", "/api/push"};
constexpr absl::string_view kAdminPaths[] = {"/api/pull", "/api/create", "/api/copy", "/api/blobs"};

constexpr char kRealm[] = "sluice";

// AuthMode's names, as --auth and auth= spell them.
constexpr const char* kAuthModeNames[] = {"key", "basic", "key_or_basic", "none"};

// FNV-1a: a stable zone id from its name, so limit state survives a reload
// that keeps the zone.
constexpr uint32_t ZoneId(absl::string_view name) {
  uint32_t h = 2166136261u;
  for (unsigned char c : name) {
    h ^= c;
    h *= 16777619u;
  }
  return h;
}

// The rate table's zone of login attempts (a name no rules file can give a
// zone: those are words).
constexpr uint32_t kAuthAttemptZone = ZoneId("auth/attempts");

// Whole seconds for Retry-After, rounded up, at least 1.
std::string RetryAfterSeconds(int64_t ns) {
  return absl::StrCat(std::max<int64_t>(1, (ns + 999'999'999) / 1'000'000'000));
}

// The password is not kept once it was checked (or refused unchecked).
void ForgetPassword(Admission* a) {
  std::fill(a->basic_password.begin(), a->basic_password.end(), '\0');
  a->basic_password.clear();
}

absl::Status FlagError(absl::string_view flag, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", message));
}

absl::StatusOr<LimitBy> ParseLimitBy(absl::string_view s) {
  if (s == "ip") return LimitBy::kIp;
  if (s == "credential" || s == "key" || s == "user") return LimitBy::kCredential;
  return absl::InvalidArgumentError(absl::StrCat("\"", s, "\": use ip or credential"));
}

bool ValidHeaderList(absl::string_view s) {
  for (unsigned char c : s) {
    if (!(absl::ascii_isalnum(c) || c == '-' || c == '_' || c == ',' || c == ' ' || c == '.')) {
      return false;
    }
  }
  return true;
}

// A route of the built-in table.
Route DefaultRoute(absl::string_view pattern, RouteAction action, int zone, const char* group) {
  Route r;
  r.pattern = std::string(pattern);
  r.action = action;
  r.zone = zone;
  r.group = group;
  r.source = "default";
  return r;
}

}  // namespace

bool IsGenerationPath(absl::string_view path) {
  for (absl::string_view p : kGenerationPaths) {
    if (PathMatches(p, path)) return true;
  }
  return false;
}

std::vector<HeaderField> Admission::ResponseHeaders() const {
  std::vector<HeaderField> h;
  if (cors_wildcard && !cors_origin.empty()) {
    h.emplace_back("Access-Control-Allow-Origin", "*");
  } else if (!cors_origin.empty()) {
    h.emplace_back("Access-Control-Allow-Origin", cors_origin);
    h.emplace_back("Access-Control-Allow-Credentials", "true");
    h.emplace_back("Vary", "Origin");
  }
  return h;
}

absl::Status Policy::AddZone(const std::string& name, absl::string_view spec, LimitBy by) {
  absl::StatusOr<RateSpec> rate = ParseRateSpec(spec);
  if (!rate.ok()) return rate.status();
  for (Zone& z : zones_) {
    if (z.name == name) {
      z.rate = *rate;
      z.by = by;
      return absl::OkStatus();
    }
  }
  zones_.push_back(Zone{name, ZoneId(name), *rate, by});
  return absl::OkStatus();
}

absl::Status Policy::SetAuth(const PolicyOptions& o) {
  if (!o.keys_file.empty()) {
    absl::StatusOr<KeyStore> keys = KeyStore::Load(o.keys_file);
    if (!keys.ok()) return FlagError("keys_file", keys.status().message());
    keys_ = *std::move(keys);
  }
  default_model_policy_ = ModelPolicy{}.With(o.model_defaults);
  restricts_models_ = !default_model_policy_.models.empty();
  if (keys_) {
    keys_->ResolveModelPolicies(default_model_policy_);
    for (const KeyEntry& e : keys_->entries()) restricts_models_ |= !e.model_policy.models.empty();
  }
  if (!o.htpasswd_file.empty()) {
    absl::StatusOr<Htpasswd> users = Htpasswd::Load(o.htpasswd_file);
    if (!users.ok()) return FlagError("htpasswd", users.status().message());
    users_ = *std::move(users);
  }
  if (o.auth.empty()) {
    if (!keys_ && !users_) {
      return FlagError("auth",
                       "no --keys_file or --htpasswd given; sluice does not run "
                       "without authentication unless --auth=none is set");
    }
    auth_ = AuthMode::kKeyOrBasic;
  } else if (o.auth == "key") {
    if (!keys_) return FlagError("auth", "--auth=key needs --keys_file");
    auth_ = AuthMode::kKey;
  } else if (o.auth == "basic") {
    if (!users_) return FlagError("auth", "--auth=basic needs --htpasswd");
    auth_ = AuthMode::kBasic;
  } else if (o.auth == "key_or_basic") {
    if (!keys_ && !users_) {
      return FlagError("auth", "--auth=key_or_basic needs --keys_file or --htpasswd");
    }
    auth_ = AuthMode::kKeyOrBasic;
  } else if (o.auth == "none") {
    auth_ = AuthMode::kNone;
  } else {
    return FlagError("auth",
                     absl::StrCat("\"", o.auth, "\": use key, basic, key_or_basic or none"));
  }
  return absl::OkStatus();
}

absl::Status Policy::SetAddressSets(const PolicyOptions& o, IpSet* allow, IpSet* deny) {
  struct CidrFlag {
    const char* flag;
    const std::string* text;
    IpSet* out;
  };
  for (const CidrFlag& f :
       {CidrFlag{"allow", &o.allow_cidrs, allow}, CidrFlag{"deny", &o.deny_cidrs, deny},
        CidrFlag{"trusted_proxies", &o.trusted_proxies, &trusted_proxies_},
        CidrFlag{"admin_cidrs", &o.admin_cidrs, &admin_}}) {
    absl::StatusOr<IpSet> set = IpSet::Parse(*f.text);
    if (!set.ok()) return FlagError(f.flag, set.status().message());
    *f.out = *std::move(set);
  }
  return absl::OkStatus();
}

// CORS origins: exact "scheme://host[:port]" strings, or "*".
absl::Status Policy::SetCorsOrigins(absl::string_view origins) {
  for (absl::string_view origin :
       absl::StrSplit(origins, absl::ByAnyChar(", "), absl::SkipEmpty())) {
    if (origin == "*") {
      cors_any_ = true;
      continue;
    }
    if (!absl::StartsWith(origin, "http://") && !absl::StartsWith(origin, "https://")) {
      return FlagError("cors_origins",
                       absl::StrCat("\"", origin, "\": an origin is scheme://host[:port] or *"));
    }
    std::string lower = absl::AsciiStrToLower(origin);
    while (!lower.empty() && lower.back() == '/') lower.pop_back();
    cors_origins_.push_back(std::move(lower));
  }
  return absl::OkStatus();
}

// Rate zones from the flags; the rules file may redefine or add zones.
absl::Status Policy::SetRateZones(const PolicyOptions& o) {
  absl::StatusOr<LimitBy> by = ParseLimitBy(o.rate_by);
  if (!by.ok()) return FlagError("rate_by", by.status().message());
  rate_by_ = *by;
  if (o.rate_generation != "off") {
    absl::Status st = AddZone("gen", o.rate_generation, *by);
    if (!st.ok()) return FlagError("rate_generation", st.message());
  }
  if (o.rate_api != "off") {
    absl::Status st = AddZone("api", o.rate_api, *by);
    if (!st.ok()) return FlagError("rate_api", st.message());
  }
  if (o.auth_attempts != "off") {
    absl::StatusOr<RateSpec> spec = ParseRateSpec(o.auth_attempts);
    if (!spec.ok()) return FlagError("auth_attempts", spec.status().message());
    spec->delay = spec->burst;  // a refusal, never a delay
    auth_attempts_ = *spec;
  }
  return absl::OkStatus();
}

// Global IP rules after the file's: --deny, then --allow with an implicit
// "deny all" (nginx's `allow X; deny all;`).
void Policy::AddGlobalIpRules(IpSet allow, IpSet deny) {
  if (!deny.empty()) ip_rules_.push_back(IpRule{false, std::move(deny)});
  if (!allow.empty()) {
    ip_rules_.push_back(IpRule{true, std::move(allow)});
    absl::StatusOr<IpSet> all = IpSet::Parse("::/0");
    ip_rules_.push_back(IpRule{false, *std::move(all)});
  }
}

// Built-in routes after the file's (first match wins).
void Policy::AddDefaultRoutes(const PolicyOptions& o) {
  auto zone_index = [&](absl::string_view name) {
    for (size_t i = 0; i < zones_.size(); ++i) {
      if (zones_[i].name == name) return static_cast<int>(i);
    }
    return -1;
  };
  const int gen = zone_index("gen");
  const int api = zone_index("api");
  gen_zone_ = gen;
  api_zone_ = api;
  gen_max_per_ip_ = o.max_streams_per_ip;
  gen_max_per_credential_ = o.max_streams_per_key;
  for (absl::string_view path : kDeniedPaths) {
    routes_.push_back(DefaultRoute(path, RouteAction::kDeny, -1, "blocked"));
  }
  for (absl::string_view path : kAdminPaths) {
    routes_.push_back(DefaultRoute(path, RouteAction::kAdmin, api, "admin"));
  }
  for (absl::string_view path : kGenerationPaths) {
    routes_.push_back(DefaultRoute(path, RouteAction::kAllow, gen, "generation"));
  }
  routes_.push_back(DefaultRoute("/", RouteAction::kAllow, api, "api"));
}

absl::StatusOr<std::shared_ptr<const Policy>> Policy::Build(const PolicyOptions& o,
                                                            uint64_t generation) {
  std::shared_ptr<Policy> p(new Policy());
  p->generation_ = generation;
  if (absl::Status st = p->SetAuth(o); !st.ok()) return st;
  IpSet allow, deny;
  if (absl::Status st = p->SetAddressSets(o, &allow, &deny); !st.ok()) return st;
  if (absl::Status st = p->SetCorsOrigins(o.cors_origins); !st.ok()) return st;
  if (absl::Status st = p->SetRateZones(o); !st.ok()) return st;
  if (!o.rules_file.empty()) {
    absl::Status st = p->AddRulesFile(o.rules_file, o.parse_upstream);
    if (!st.ok()) return FlagError("rules_file", st.message());
  }
  p->AddGlobalIpRules(std::move(allow), std::move(deny));
  p->AddDefaultRoutes(o);
  return std::shared_ptr<const Policy>(std::move(p));
}

// The rules file, one rule per line ('#' starts a comment):
//   allow CIDR[,CIDR...]        global address rules, first match wins
//   deny CIDR[,CIDR...]|all
//   zone NAME [by=ip|credential] RATE [burst=N] [nodelay|delay=N]
//   upstream NAME ADDRESSES     another upstream than Ollama
//   route PATTERN allow|deny|admin [zone=NAME|off] [allow_ip=CIDRS]
//         [deny_ip=CIDRS] [max_per_ip=N] [max_per_key=N] [group=NAME]
//         [host=NAMES] [upstream=NAME] [auth=MODE]
// The helpers of one line return the reason of an error; AddRulesFile adds
// the file and line to it.
absl::Status Policy::AddRulesFile(const std::string& path, const UpstreamParser& parse_upstream) {
  absl::StatusOr<std::string> text = ReadPolicyFile(path);
  if (!text.ok()) return text.status();
  int line_no = 0;
  std::vector<std::pair<Route, RouteRefs>> pending;
  for (absl::string_view raw : absl::StrSplit(*text, '\n')) {
    ++line_no;
    absl::string_view line = raw;
    if (size_t hash = line.find('#'); hash != absl::string_view::npos) {
      line = line.substr(0, hash);
    }
    std::vector<absl::string_view> words =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (words.empty()) continue;
    const absl::string_view verb = words[0];
    const std::string source = absl::StrCat(path, ":", line_no);
    absl::Status st;
    if (verb == "allow" || verb == "deny") {
      st = AddIpRuleLine(words);
    } else if (verb == "zone") {
      st = AddZoneLine(words);
    } else if (verb == "upstream") {
      st = AddUpstreamLine(words, parse_upstream, source);
    } else if (verb == "route") {
      Route r;
      r.source = source;
      RouteRefs refs;
      st = ParseRouteLine(words, &r, &refs);
      if (st.ok()) pending.emplace_back(std::move(r), std::move(refs));
    } else {
      st = absl::InvalidArgumentError(
          absl::StrCat("\"", verb, "\": expected allow, deny, zone, upstream or route"));
    }
    if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat(source, ": ", st.message()));
  }
  return AddPendingRoutes(&pending);
}

absl::Status Policy::AddIpRuleLine(const std::vector<absl::string_view>& words) {
  const absl::string_view verb = words[0];
  if (words.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(verb, " takes one CIDR list"));
  }
  absl::StatusOr<IpSet> set = words[1] == "all" ? IpSet::Parse("::/0") : IpSet::Parse(words[1]);
  if (!set.ok()) return set.status();
  ip_rules_.push_back(IpRule{verb == "allow", *std::move(set)});
  return absl::OkStatus();
}

absl::Status Policy::AddZoneLine(const std::vector<absl::string_view>& words) {
  if (words.size() < 3) {
    return absl::InvalidArgumentError("zone NAME [by=ip|credential] RATE ...");
  }
  std::string name(words[1]);
  LimitBy zone_by = rate_by_;
  size_t i = 2;
  if (absl::StartsWith(words[i], "by=")) {
    absl::StatusOr<LimitBy> b = ParseLimitBy(words[i].substr(3));
    if (!b.ok()) return b.status();
    zone_by = *b;
    ++i;
  }
  std::vector<absl::string_view> rest(words.begin() + i, words.end());
  return AddZone(name, absl::StrJoin(rest, " "), zone_by);
}

absl::Status Policy::AddUpstreamLine(const std::vector<absl::string_view>& words,
                                     const UpstreamParser& parse, std::string source) {
  if (words.size() < 3) return absl::InvalidArgumentError("upstream NAME ADDRESS[,ADDRESS...]");
  const absl::string_view name = words[1];
  if (!ValidName(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", name, "\": a name is 1 to 64 letters, digits, '-', '_' or '.'"));
  }
  if (name == "ollama") {
    return absl::InvalidArgumentError(
        "the name \"ollama\" is taken: it means the --upstream backends");
  }
  for (const NamedUpstream& u : upstreams_) {
    if (u.name == name) {
      return absl::InvalidArgumentError(
          absl::StrCat("upstream \"", name, "\" is already defined at ", u.source));
    }
  }
  if (!parse) return absl::InvalidArgumentError("upstream lines are not read here");
  std::vector<absl::string_view> rest(words.begin() + 2, words.end());
  absl::StatusOr<std::shared_ptr<const UpstreamTarget>> target = parse(absl::StrJoin(rest, " "));
  if (!target.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("upstream ", name, ": ", target.status().message()));
  }
  upstreams_.push_back(NamedUpstream{std::string(name), *std::move(target), std::move(source)});
  return absl::OkStatus();
}

// Zones and upstreams may be defined after the routes that use them.
absl::Status Policy::AddPendingRoutes(std::vector<std::pair<Route, RouteRefs>>* pending) {
  for (auto& [r, refs] : *pending) {
    if (refs.zone == "off") {
      r.zone = -1;
    } else if (!refs.zone.empty()) {
      r.zone = -1;
      for (size_t i = 0; i < zones_.size(); ++i) {
        if (zones_[i].name == refs.zone) r.zone = static_cast<int>(i);
      }
      if (r.zone < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(r.source, ": zone \"", refs.zone, "\" is not defined"));
      }
    }
    if (!refs.upstream.empty() && refs.upstream != "ollama") {
      for (size_t i = 0; i < upstreams_.size(); ++i) {
        if (upstreams_[i].name == refs.upstream) r.upstream = static_cast<int>(i);
      }
      if (r.upstream < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(r.source, ": upstream \"", refs.upstream, "\" is not defined"));
      }
      has_upstream_routes_ = true;
    }
    if (r.auth) {
      const bool ok = (*r.auth != AuthMode::kKey || keys_) &&
                      (*r.auth != AuthMode::kBasic || users_) &&
                      (*r.auth != AuthMode::kKeyOrBasic || keys_ || users_);
      if (!ok) {
        return absl::InvalidArgumentError(
            absl::StrCat(r.source, ": auth=", kAuthModeNames[static_cast<int>(*r.auth)],
                         " needs the credentials file it checks (--keys_file or --htpasswd)"));
      }
    }
    has_host_routes_ = has_host_routes_ || !r.hosts.empty();
    routes_.push_back(std::move(r));
  }
  return absl::OkStatus();
}

void Policy::Refuse(Admission* a, int status, std::string error) const {
  a->status = status;
  a->error = std::move(error);
  // A browser may read the error only when the origin was allowed.
  for (HeaderField& h : a->ResponseHeaders()) a->headers.push_back(std::move(h));
}

bool Policy::Screen(const RequestFacts& req, Admission* a) const {
  absl::StatusOr<NormalizedPath> path = NormalizePath(req.target);
  if (!path.ok()) {
    Refuse(a, 400, "bad request path");
    return false;
  }
  a->path = *std::move(path);
  a->client = ClientAddressFromXff(req.peer, req.forwarded_for, trusted_proxies_);
  a->client_text = a->client.ToString();

  for (const IpRule& rule : ip_rules_) {
    if (rule.set.Contains(a->client)) {
      if (rule.allow) break;
      Refuse(a, 403, "access denied for this address");
      return false;
    }
  }

  if (!req.origin.empty()) {
    std::string origin = absl::AsciiStrToLower(req.origin);
    bool listed = cors_any_;
    for (const std::string& o : cors_origins_) listed = listed || o == origin;
    const bool same = origin == absl::AsciiStrToLower(absl::StrCat(req.scheme, "://", req.host));
    if (!listed && !same) {
      // Ollama refuses foreign origins too; a browser page elsewhere must
      // not drive the API with a user's cached Basic credentials.
      Refuse(a, 403, "origin not allowed");
      return false;
    }
    if (listed) a->cors_origin = std::string(req.origin);
    // "*" lets any page call with its own key, never with the browser's
    // stored credentials (no Allow-Credentials for a wildcard).
    a->cors_wildcard = cors_any_;
    if (req.method == "OPTIONS" && !req.ac_request_method.empty()) {
      a->status = 204;
      a->headers = a->ResponseHeaders();
      a->headers.emplace_back("Access-Control-Allow-Methods",
                              "GET, POST, PUT, DELETE, HEAD, OPTIONS");
      a->headers.emplace_back(
          "Access-Control-Allow-Headers",
          !req.ac_request_headers.empty() && ValidHeaderList(req.ac_request_headers)
              ? std::string(req.ac_request_headers)
              : std::string("authorization, content-type, x-api-key"));
      a->headers.emplace_back("Access-Control-Max-Age", "86400");
      return false;
    }
  }

  const absl::string_view match =
      a->path.match == "*" ? absl::string_view("/") : absl::string_view(a->path.match);
  const Route& r = MatchRoute(has_host_routes_ ? MatchHost(req.host) : std::string(), match);
  a->route = &r;
  if (r.upstream >= 0) {
    // Another application: none of Ollama's default limits (its own
    // apply); the route's own ones do.
    a->zone = r.zone == Route::kZoneByPath ? -1 : r.zone;
    a->group = !r.group.empty() ? r.group : upstreams_[r.upstream].name;
    a->max_per_ip = r.max_per_ip;
    a->max_per_credential = r.max_per_credential;
  } else {
    const bool generation = IsGenerationPath(match);
    a->zone = r.zone == Route::kZoneByPath ? (generation ? gen_zone_ : api_zone_) : r.zone;
    a->group = !r.group.empty() ? r.group : generation ? "generation" : "api";
    a->max_per_ip = r.max_per_ip ? r.max_per_ip : generation ? gen_max_per_ip_ : 0;
    a->max_per_credential = r.max_per_credential ? r.max_per_credential
                            : generation         ? gen_max_per_credential_
                                                 : 0;
  }
  if (r.action == RouteAction::kDeny) {
    std::string shown = r.pattern;
    if (!shown.empty() && shown.back() == '*') shown.pop_back();
    Refuse(a, 403, absl::StrCat(shown, " is not permitted via API"));
    return false;
  }
  if (r.deny_ip.Contains(a->client) || (!r.allow_ip.empty() && !r.allow_ip.Contains(a->client))) {
    Refuse(a, 403, "access denied for this address");
    return false;
  }
  if (r.action == RouteAction::kAdmin && !admin_.Contains(a->client)) {
    std::string shown = r.pattern;
    if (!shown.empty() && shown.back() == '*') shown.pop_back();
    Refuse(a, 403, absl::StrCat(shown, " is only permitted from admin addresses"));
    return false;
  }
  return true;
}

const Route& Policy::MatchRoute(absl::string_view host, absl::string_view match) const {
  for (const Route& r : routes_) {
    if (!r.hosts.empty() && !HostMatches(r.hosts, host)) continue;
    if (PathMatches(r.pattern, match)) return r;
  }
  return routes_.back();  // the last default route matches every path
}

const Route* Policy::FindRoute(absl::string_view host, absl::string_view target) const {
  absl::StatusOr<NormalizedPath> path = NormalizePath(target);
  if (!path.ok()) return nullptr;
  const absl::string_view match =
      path->match == "*" ? absl::string_view("/") : absl::string_view(path->match);
  return &MatchRoute(has_host_routes_ ? MatchHost(host) : std::string(), match);
}

void Policy::RefuseAuth(Admission* a, AuthMode mode) const {
  Refuse(a, 401, "Unauthorized");
  // Challenge with Basic only where a user could answer it: a browser
  // prompts for a password on a Basic challenge.
  if (mode == AuthMode::kKey || !users_) {
    a->headers.emplace_back("WWW-Authenticate", absl::StrCat("Bearer realm=\"", kRealm, "\""));
  } else {
    a->headers.emplace_back("WWW-Authenticate",
                            absl::StrCat("Basic realm=\"", kRealm, "\", charset=\"UTF-8\""));
  }
}

bool Policy::ChargeLogin(Admission* a, RateTable* attempts, int64_t now_ns) const {
  if (attempts == nullptr || !auth_attempts_) return true;
  const RateTable::RateResult r = attempts->Check(kAuthAttemptZone, a->client.AsBytes(),
                                                  *auth_attempts_, now_ns, SteeringHash(a->client));
  if (r.allowed) return true;
  Refuse(a, 429, "too many failed logins, retry later");
  a->headers.emplace_back("Retry-After", RetryAfterSeconds(r.retry_after_ns));
  return false;
}

void Policy::RefundLogin(Admission* a, RateTable* attempts, int64_t now_ns) const {
  if (!a->login_charged) return;
  a->login_charged = false;
  if (attempts == nullptr || !auth_attempts_) return;
  attempts->Refund(kAuthAttemptZone, a->client.AsBytes(), *auth_attempts_, now_ns,
                   SteeringHash(a->client));
}

AuthStep Policy::Authenticate(const RequestFacts& req, Admission* a, BasicAuthCache* cache,
                              int64_t now_ns, RateTable* attempts) const {
  a->model_policy = &default_model_policy_;  // a key's own replaces it below
  const AuthMode mode = AuthFor(*a);
  if (mode == AuthMode::kNone) return AuthStep::kDone;
  absl::string_view auth = req.authorization;
  if (req.repeated_credentials ||
      (!auth.empty() && !req.x_api_key.empty() &&
       PresentedKey(auth, "") != std::optional<absl::string_view>(req.x_api_key))) {
    // Picking one would be a guess, and another hop (or Ollama behind a
    // second proxy) may pick the other: the two would see two clients.
    Refuse(a, 400, "ambiguous credentials: send one Authorization or one x-api-key");
    return AuthStep::kRefused;
  }
  const bool basic = absl::StartsWithIgnoreCase(auth, "basic ");
  // A refusal of credentials that were sent counts as a failed login (a
  // request without any does not: a browser's first request has none);
  // past the limit it is the 429.
  const bool presented = !auth.empty() || !req.x_api_key.empty();
  auto refuse = [&] {
    if (!presented || ChargeLogin(a, attempts, now_ns)) RefuseAuth(a, mode);
    return AuthStep::kRefused;
  };
  if (mode != AuthMode::kBasic && !basic) {
    // Keys are 256-bit random values: a lookup answers no guess, so a key
    // is always looked up, a valid one passes whatever the address's
    // failures, and a wrong or revoked one is a plain 401 that does not
    // count either (one client with a stale key must not lock out the
    // users behind its address).
    std::optional<absl::string_view> key = PresentedKey(auth, req.x_api_key);
    const KeyEntry* entry = key && keys_ ? keys_->Find(*key) : nullptr;
    if (entry == nullptr) {
      RefuseAuth(a, mode);
      return AuthStep::kRefused;
    }
    a->user_name = entry->name;
    a->weight = entry->weight;
    a->model_policy = &entry->model_policy;
    a->principal = absl::StrCat("key:", entry->name);
    return AuthStep::kDone;
  }
  if (mode == AuthMode::kKey || !basic || !users_) return refuse();
  std::string decoded;
  absl::string_view b64 = absl::StripLeadingAsciiWhitespace(auth.substr(6));
  if (!absl::Base64Unescape(b64, &decoded)) return refuse();
  size_t colon = decoded.find(':');
  if (colon == std::string::npos || colon == 0) return refuse();
  a->basic_user = decoded.substr(0, colon);
  a->basic_password = decoded.substr(colon + 1);
  switch (cache->Lookup(a->basic_user, a->basic_password, generation_, now_ns)) {
    case CacheResult::kValid:
      // Known good: answered even while the address is locked out. The
      // cache holds what any client verified lately, so a guess equal to
      // some user's current password is answered; that guess is a correct
      // credential, and finding one still takes uncached checks, which the
      // limit bounds.
      return FinishBasic(true, a, nullptr, now_ns) ? AuthStep::kDone : AuthStep::kRefused;
    case CacheResult::kInvalid:
      ForgetPassword(a);
      return refuse();
    case CacheResult::kMiss:
      break;
  }
  // A password check is counted before it runs, so that guesses in flight
  // at once (HTTP/2 streams, parallel connections) are bounded too: past
  // the limit the guess gets 429 unanswered, and costs no bcrypt run. A
  // right password gives the attempt back (FinishBasic).
  if (!ChargeLogin(a, attempts, now_ns)) {
    ForgetPassword(a);
    return AuthStep::kRefused;
  }
  a->login_charged = attempts != nullptr && auth_attempts_.has_value();
  if (users_->Expensive(a->basic_user)) return AuthStep::kNeedVerify;
  const bool ok = users_->Verify(a->basic_user, a->basic_password);
  return FinishBasic(ok, a, cache, now_ns, attempts) ? AuthStep::kDone : AuthStep::kRefused;
}

bool Policy::VerifyBasic(absl::string_view user, absl::string_view password) const {
  return users_ && users_->Verify(user, password);
}

bool Policy::FinishBasic(bool valid, Admission* a, BasicAuthCache* cache, int64_t now_ns,
                         RateTable* attempts) const {
  if (cache != nullptr) {
    cache->Insert(a->basic_user, a->basic_password, valid, generation_, now_ns);
  }
  ForgetPassword(a);
  if (!valid) {
    a->login_charged = false;  // a failed check keeps its count
    RefuseAuth(a, AuthFor(*a));
    return false;
  }
  RefundLogin(a, attempts, now_ns);
  a->user_name = a->basic_user;
  a->principal = absl::StrCat("user:", a->basic_user);
  return true;
}

void Policy::ForgoVerify(Admission* a, RateTable* attempts, int64_t now_ns) const {
  ForgetPassword(a);
  RefundLogin(a, attempts, now_ns);
}

LimitStep Policy::Limit(Admission* a, RateTable* rates, ConcurrencyTable* conns,
                        int64_t now_ns) const {
  LimitStep step;
  const absl::string_view ip_key = a->client.AsBytes();
  // Caps first: a request they refuse is not charged to the rate zone.
  auto take = [&](uint32_t limit, absl::string_view kind, absl::string_view key) {
    if (limit == 0) return true;
    const uint32_t id = ZoneId(absl::StrCat("conn/", kind, "/", a->group));
    if (!conns->Acquire(id, key, limit)) return false;
    a->held.emplace_back(id, std::string(key));
    return true;
  };
  if (!take(a->max_per_ip, "ip", ip_key) ||
      (!a->principal.empty() && !take(a->max_per_credential, "cred", a->principal))) {
    Release(a, conns);
    Refuse(a, 429, "too many concurrent requests");
    a->headers.emplace_back("Retry-After", "1");
    step.kind = LimitStep::kRefuse;
    return step;
  }
  if (a->zone >= 0) {
    const Zone& z = zones_[a->zone];
    const bool by_credential = z.by == LimitBy::kCredential && !a->principal.empty();
    // An address's state goes to the stripes of the worker its connections
    // are steered to.
    RateTable::RateResult res =
        by_credential ? rates->Check(z.id, a->principal, z.rate, now_ns)
                      : rates->Check(z.id, ip_key, z.rate, now_ns, SteeringHash(a->client));
    if (!res.allowed) {
      Release(a, conns);
      Refuse(a, 429, "rate limit exceeded");
      a->headers.emplace_back("Retry-After", RetryAfterSeconds(res.retry_after_ns));
      step.kind = LimitStep::kRefuse;
      return step;
    }
    if (res.delay_ns > 0) {
      step.kind = LimitStep::kDelay;
      step.delay_ns = res.delay_ns;
    }
  }
  return step;
}

void Policy::Release(Admission* a, ConcurrencyTable* conns) {
  for (const auto& [id, key] : a->held) conns->Release(id, key);
  a->held.clear();
}

std::string Policy::Summary() const {
  std::string s =
      absl::StrCat("auth=", kAuthModeNames[static_cast<int>(auth_)], " keys=", key_count(),
                   " users=", user_count(), " routes=", routes_.size());
  if (!upstreams_.empty()) absl::StrAppend(&s, " upstreams=", upstreams_.size());
  s += " zones=";
  for (size_t i = 0; i < zones_.size(); ++i) {
    absl::StrAppend(&s, i ? "," : "", zones_[i].name, "(", zones_[i].rate.rate_per_s * 60,
                    "r/m burst=", zones_[i].rate.burst, ")");
  }
  if (zones_.empty()) s += "none";
  return s;
}

}  // namespace sluice::policy
