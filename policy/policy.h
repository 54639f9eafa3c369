#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "policy/basic_auth_cache.h"
#include "policy/htpasswd.h"
#include "policy/ip_set.h"
#include "policy/keys.h"
#include "policy/limiter.h"
#include "policy/path.h"

namespace sluice::policy {

struct RouteRefs;

// --auth: which credentials a request must carry.
enum class AuthMode { kKey, kBasic, kKeyOrBasic, kNone };

// What a route rule does with a request that reaches it.
enum class RouteAction {
  kAllow,  // go on to auth and limits
  kDeny,   // 403 "... not permitted via API"
  kAdmin,  // only from --admin_cidrs (and the route's own ACL)
};

// What a rate or concurrency limit counts by.
enum class LimitBy {
  kIp,          // the client address (after --trusted_proxies)
  kCredential,  // the key name or Basic user; the address when anonymous
};

// A rate-limit zone (nginx limit_req_zone + limit_req in one). `id` is
// derived from the name, so a reload that keeps the name keeps the state.
struct Zone {
  std::string name;
  uint32_t id = 0;
  RateSpec rate;
  LimitBy by = LimitBy::kIp;
};

// An upstream other than Ollama (a web UI, another API), named by an
// `upstream` line of the rules file. The policy only carries it: what the
// addresses mean and how they are reached is the proxy's, which parses
// them (PolicyOptions::parse_upstream) into a type of its own.
class UpstreamTarget {
 public:
  virtual ~UpstreamTarget() = default;
};

struct NamedUpstream {
  std::string name;
  std::shared_ptr<const UpstreamTarget> target;
  std::string source;  // "FILE:LINE"
};

// Parses the addresses of an `upstream` line (all the words after its
// name); an error names what is wrong without the file and line.
using UpstreamParser =
    std::function<absl::StatusOr<std::shared_ptr<const UpstreamTarget>>(absl::string_view spec)>;

// One route rule. The first rule whose host list and pattern match the
// request decides (rules from --rules_file come before the built-in
// defaults).
struct Route {
  std::string pattern;  // as PathMatches takes it: lowercase, normalised
  // host= names, lowercase ("*.example.com": any name below it); empty:
  // any host.
  std::vector<std::string> hosts;
  // Index into Policy::upstreams(), or -1: Ollama (--upstream).
  int upstream = -1;
  // auth= of the route; none given: --auth.
  std::optional<AuthMode> auth;
  RouteAction action = RouteAction::kAllow;
  IpSet allow_ip;  // when not empty, only these addresses
  IpSet deny_ip;   // these addresses get 403
  // Index into Policy::zones(), -1 for no rate limit, or kZoneByPath: the
  // zone the built-in routes give the request's path (gen for the
  // generation routes, api for the rest), decided per request so that one
  // rule such as "/v1/*" keeps each path's own limit.
  int zone = kZoneByPath;
  static constexpr int kZoneByPath = -2;
  // limit_conn style caps on concurrent requests of this route group. 0:
  // the --max_streams_per_* caps on generation paths, none elsewhere. Held
  // from admission to the end of the response.
  uint32_t max_per_ip = 0;
  uint32_t max_per_credential = 0;
  // The route group for logs and limits ("generation", "api", ...); empty:
  // "generation" or "api" by the request's path.
  std::string group;
  std::string source;  // "FILE:LINE" or "default", for log lines
};

// The policy flags, as core/server/flags.cc reads them. Files are named here and read by
// Policy::Build.
struct PolicyOptions {
  std::string auth;  // "" (the default: derived from the files) or a mode
  std::string keys_file;
  std::string htpasswd_file;
  std::string rules_file;
  std::string allow_cidrs;      // --allow: only these (plus deny all else)
  std::string deny_cidrs;       // --deny
  std::string trusted_proxies;  // X-Forwarded-For is read only from these
  std::string admin_cidrs = "127.0.0.1/32,::1/128";
  std::string cors_origins;  // "https://a.example,https://b.example" or "*"
  std::string rate_generation = "10r/m burst=5 nodelay";  // or "off"
  std::string rate_api = "60r/m burst=20 nodelay";        // or "off"
  std::string rate_by = "ip";                             // or "credential"
  // Login attempts per client address (limit_req syntax), or "off": see
  // Policy::Authenticate.
  std::string auth_attempts = "6r/m burst=10";
  uint32_t max_streams_per_ip = 0;
  uint32_t max_streams_per_key = 0;
  // The model policy of clients without settings of their own (flags).
  ModelSettings model_defaults;
  // Parses `upstream` lines of the rules file; null: they are an error.
  UpstreamParser parse_upstream;
};

// One request as the policy sees it. Views into the request head; valid for
// the duration of the call that takes it.
struct RequestFacts {
  absl::string_view method;
  absl::string_view target;         // origin form, "/api/chat?x=1"
  absl::string_view scheme;         // "http" or "https"
  absl::string_view host;           // the request's Host / :authority
  IpAddress peer;                   // the TCP peer
  absl::string_view authorization;  // Authorization, or empty
  absl::string_view x_api_key;      // x-api-key, or empty
  // More than one Authorization or more than one x-api-key field: which
  // one names the client cannot be told, so the request is refused (400).
  bool repeated_credentials = false;
  absl::string_view forwarded_for;       // X-Forwarded-For, or empty
  absl::string_view origin;              // Origin, or empty
  absl::string_view ac_request_method;   // Access-Control-Request-Method
  absl::string_view ac_request_headers;  // Access-Control-Request-Headers
};

// A response header the policy adds (HTTP/1.1 capitals; HTTP/2 lowercases).
using HeaderField = std::pair<std::string, std::string>;

// The state of one request's admission, filled in stage by stage. Owned by
// the request; it outlives reloads (it keeps what Release needs).
struct Admission {
  // Set by Screen.
  NormalizedPath path;
  IpAddress client;
  std::string client_text;       // client.ToString(), for logs and headers
  const Route* route = nullptr;  // points into the Policy the caller holds
  // The route's limits as they apply to this path (see Route).
  int zone = -1;
  std::string group;
  uint32_t max_per_ip = 0;
  uint32_t max_per_credential = 0;
  // CORS: the allowed Origin to echo on the response, or empty.
  std::string cors_origin;
  bool cors_wildcard = false;  // --cors_origins=*: answer "*", no credentials
  // Set by Authenticate: "key:NAME", "user:NAME", or empty (--auth=none).
  std::string principal;
  std::string user_name;  // the bare key or user name, for logs
  uint32_t weight = 1;    // the key's share of generation slots (keys file)
  // What the client may ask of the models: its key's policy, or the
  // defaults (points into the Policy the caller holds).
  const ModelPolicy* model_policy = nullptr;
  // Basic credentials waiting for an off-loop verification.
  std::string basic_user;
  std::string basic_password;
  // A login attempt was counted before the password check it waits for
  // (see Authenticate); FinishBasic gives it back if the password is right.
  bool login_charged = false;
  // Concurrency slots held: (zone id, key), released by Policy::Release.
  std::vector<std::pair<uint32_t, std::string>> held;

  // The answer when a stage refused the request (status != 0): a JSON
  // error body with `error`, or no body for a CORS preflight (204).
  int status = 0;
  std::string error;
  std::vector<HeaderField> headers;

  // Response headers to add to a proxied response (CORS).
  std::vector<HeaderField> ResponseHeaders() const;
};

// How the authentication stage ended.
enum class AuthStep {
  kDone,        // principal set (or auth off)
  kRefused,     // status 401 set
  kNeedVerify,  // basic_user/basic_password set: run VerifyBasic off the loop
};

// How the limit stage ended.
struct LimitStep {
  enum Kind { kAdmit, kDelay, kRefuse } kind = kAdmit;
  int64_t delay_ns = 0;  // kDelay: wait this long, then the request goes on
};

// An immutable policy snapshot: keys, users, IP and route rules, zones and
// CORS origins. Built on start-up and on SIGHUP, then swapped atomically;
// each request keeps the snapshot it started with (shared_ptr). All methods
// are const and thread-safe; per-request state lives in Admission, per-core
// state in the caller's BasicAuthCache, shared limit state in the tables.
class Policy {
 public:
  // Reads the files and checks the flags. Errors name the flag
  // ("--auth: ...") or the file and line ("keys.txt:3: ..."). `generation`
  // tags Basic-auth cache entries so a reload invalidates them.
  static absl::StatusOr<std::shared_ptr<const Policy>> Build(const PolicyOptions& options,
                                                             uint64_t generation);

  // Stage 1, before credentials: normalises the path (400), resolves the
  // client address, answers a CORS preflight (204) or refuses a foreign
  // Origin (403), then the global IP rules (403) and the route rule (403 for
  // deny, for admin-only from elsewhere, and for the route's ACL). Returns
  // false when `a->status` holds the answer.
  bool Screen(const RequestFacts& req, Admission* a) const;

  // Stage 2: API key or Basic credentials per --auth. Keys and cheap
  // htpasswd schemes are checked here; an expensive one (bcrypt) is looked
  // up in `cache` and otherwise left for VerifyBasic. Call after Screen.
  //
  // Credentials that cannot be told apart are refused with 400 before any
  // check: two Authorization (or two x-api-key) fields, or an
  // Authorization and an x-api-key that do not name the same key.
  //
  // Failed logins are limited per client address in `attempts` under
  // --auth_attempts (nginx's limit_req, on failures only): a wrong key, a
  // malformed header, a refused password count; a request without
  // credentials does not. Credentials known good are never refused by the
  // limit: a valid API key, Basic credentials the cache holds as valid
  // (even for a locked-out address: a guess equal to a user's current
  // password is a correct credential, and guessing is bounded by the limit
  // on uncached checks anyway), and a password checked right now and
  // correct. An uncached password check is counted before it runs, so
  // guesses in flight at once (HTTP/2 streams, parallel connections) are
  // bounded too, and the count is given back when the password is right
  // (FinishBasic). Past the limit every credential not known good gets 429
  // with Retry-After, the password unchecked (no bcrypt run); below it a
  // wrong credential gets 401. `attempts` may be null (no limit).
  AuthStep Authenticate(const RequestFacts& req, Admission* a, BasicAuthCache* cache,
                        int64_t now_ns, RateTable* attempts = nullptr) const;
  // The slow check for kNeedVerify (bcrypt: tens of ms). Thread-safe; runs
  // on a helper thread, never on an event loop.
  bool VerifyBasic(absl::string_view user, absl::string_view password) const;
  // Completes kNeedVerify with VerifyBasic's answer: records it in `cache`
  // and sets the principal or the 401. A right password gives back the
  // login attempt Authenticate counted for it in `attempts` (the same table
  // Authenticate was given). Returns whether the user may go on.
  bool FinishBasic(bool valid, Admission* a, BasicAuthCache* cache, int64_t now_ns,
                   RateTable* attempts = nullptr) const;
  // For kNeedVerify when the check will not run (the helper queue is
  // full): gives back the login attempt counted for it.
  void ForgoVerify(Admission* a, RateTable* attempts, int64_t now_ns) const;

  // Stage 3: the route's rate zone and concurrency caps. kRefuse sets 429
  // with Retry-After. Slots taken are recorded in `a->held`.
  LimitStep Limit(Admission* a, RateTable* rates, ConcurrencyTable* conns, int64_t now_ns) const;
  // Gives back the concurrency slots the request holds (at its end). Does
  // not need the snapshot the request was admitted with.
  static void Release(Admission* a, ConcurrencyTable* conns);

  // The client a request comes from: the TCP peer, or the address a
  // trusted proxy put in X-Forwarded-For (as Screen resolves it).
  IpAddress ResolveClient(const IpAddress& peer, absl::string_view forwarded_for) const {
    return ClientAddressFromXff(peer, forwarded_for, trusted_proxies_);
  }

  AuthMode auth_mode() const { return auth_; }
  // The credentials a request's route asks for (its auth=, else --auth).
  AuthMode AuthFor(const Admission& a) const {
    return a.route != nullptr && a.route->auth ? *a.route->auth : auth_;
  }
  // The route a request goes by, as Screen finds it, without the rest of
  // Screen: null when the target is not a valid path.
  const Route* FindRoute(absl::string_view host, absl::string_view target) const;
  // Whether some route sends requests to a named upstream.
  bool has_upstream_routes() const { return has_upstream_routes_; }
  const std::vector<NamedUpstream>& upstreams() const { return upstreams_; }
  uint64_t generation() const { return generation_; }
  const std::vector<Route>& routes() const { return routes_; }
  const std::vector<Zone>& zones() const { return zones_; }
  size_t key_count() const { return keys_ ? keys_->size() : 0; }
  // Whether some client's model policy lists the models it may use.
  bool restricts_models() const { return restricts_models_; }
  // The model policy of clients without one of their own.
  const ModelPolicy& default_model_policy() const { return default_model_policy_; }
  size_t user_count() const { return users_ ? users_->size() : 0; }
  // Htpasswd::cost_warning() of the users file, or empty: logged at load.
  absl::string_view users_warning() const {
    return users_ ? absl::string_view(users_->cost_warning()) : absl::string_view();
  }
  // One line describing the policy, for the start-up log.
  std::string Summary() const;

 private:
  Policy() = default;
  // The steps of Build; each returns the error Build returns.
  absl::Status SetAuth(const PolicyOptions& o);
  absl::Status SetAddressSets(const PolicyOptions& o, IpSet* allow, IpSet* deny);
  absl::Status SetCorsOrigins(absl::string_view origins);
  absl::Status SetRateZones(const PolicyOptions& o);
  void AddGlobalIpRules(IpSet allow, IpSet deny);
  void AddDefaultRoutes(const PolicyOptions& o);
  absl::Status AddRulesFile(const std::string& path, const UpstreamParser& parse_upstream);
  // Lines of the rules file (the error without its FILE:LINE).
  absl::Status AddIpRuleLine(const std::vector<absl::string_view>& words);
  absl::Status AddZoneLine(const std::vector<absl::string_view>& words);
  absl::Status AddUpstreamLine(const std::vector<absl::string_view>& words,
                               const UpstreamParser& parse, std::string source);
  // The first route for `host` (MatchHost's form) and the normalised
  // `match` path.
  const Route& MatchRoute(absl::string_view host, absl::string_view match) const;
  // The file's routes, their zone names resolved.
  absl::Status AddPendingRoutes(std::vector<std::pair<Route, RouteRefs>>* pending);
  absl::Status AddZone(const std::string& name, absl::string_view spec, LimitBy by);
  void Refuse(Admission* a, int status, std::string error) const;
  void RefuseAuth(Admission* a, AuthMode mode) const;
  // Counts one login attempt of a->client; false (a->status holds the 429)
  // past --auth_attempts, nothing counted.
  bool ChargeLogin(Admission* a, RateTable* attempts, int64_t now_ns) const;
  // Gives back the attempt counted by ChargeLogin for a->login_charged.
  void RefundLogin(Admission* a, RateTable* attempts, int64_t now_ns) const;

  struct IpRule {
    bool allow;
    IpSet set;
  };

  uint64_t generation_ = 0;
  AuthMode auth_ = AuthMode::kNone;
  std::optional<KeyStore> keys_;
  std::optional<Htpasswd> users_;
  ModelPolicy default_model_policy_;
  bool restricts_models_ = false;
  std::vector<IpRule> ip_rules_;  // first match wins; none: allowed
  IpSet trusted_proxies_;
  IpSet admin_;
  std::vector<std::string> cors_origins_;  // lowercase
  bool cors_any_ = false;
  std::vector<Zone> zones_;
  std::vector<Route> routes_;
  std::vector<NamedUpstream> upstreams_;
  bool has_upstream_routes_ = false;
  bool has_host_routes_ = false;
  LimitBy rate_by_ = LimitBy::kIp;
  int gen_zone_ = -1;
  int api_zone_ = -1;
  uint32_t gen_max_per_ip_ = 0;
  uint32_t gen_max_per_credential_ = 0;
  std::optional<RateSpec> auth_attempts_;  // --auth_attempts; none: off
};

// Whether `path` (a `match` path) is one of the generation routes: the
// ones whose responses stream tokens and whose default limits are strict.
bool IsGenerationPath(absl::string_view path);

}  // namespace sluice::policy
