// Fuzzes the parsers of sluice's flag values and policy files, none of
// which may ever exit or abort on bad text.
//
// Input: byte 0 picks the parser (b % 7), the rest is the value:
//   0  core::ParseHostPort(text, /*numeric_only=*/true)   (no DNS)
//   1  core::AbslParseFlag(text, ByteSize*) --client_max_body_size 2
//   policy::ParseRateSpec                              --rate_*, zone lines 3
//   policy::IpSet::Parse                               --allow, --deny, ... 4
//   policy::ParseCidr, IpAddress::Parse, ClientAddressFromXff 5  the rules file
//   (--rules_file) through policy::Policy::Build, then
//      Screen on a few requests
//   6  the other text flags of Policy::Build, one a line (allow, deny,
//      trusted_proxies, admin_cidrs, cors_origins, rate_generation,
//      rate_api, rate_by, auth_attempts)
//
// Policy::Build reads the rules file by path, and its parser has no entry
// point that takes text; the text goes into a memfd (anonymous memory, no
// file on disk) named as /proc/self/fd/N.
//
// Checks what the headers document: ByteSize and CIDR values survive their
// own unparse (AbslUnparseFlag, ToString); a CIDR holds its base; rate
// specs stay in their documented bounds; errors carry the documented codes.

#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "core/server/cli.h"
#include "fuzz_util.h"
#include "policy/ip_set.h"
#include "policy/limiter.h"
#include "policy/policy.h"

namespace sluice::fuzz {
namespace {

void HostPort(absl::string_view text) {
  absl::StatusOr<core::SocketAddress> a = core::ParseHostPort(text, /*numeric_only=*/true);
  if (!a.ok()) {
    FUZZ_CHECK(a.status().code() == absl::StatusCode::kInvalidArgument, "odd error code");
    return;
  }
  FUZZ_CHECK(a->family() == AF_INET || a->family() == AF_INET6, "odd address family");
  FUZZ_CHECK(a->len > 0 && a->len <= sizeof(a->storage), "odd address length");
}

void Bytes(absl::string_view text) {
  core::ByteSize size;
  std::string error;
  if (!core::AbslParseFlag(text, &size, &error)) {
    FUZZ_CHECK(!error.empty(), "failure without a message");
    return;
  }
  const std::string back = core::AbslUnparseFlag(size);
  core::ByteSize again;
  FUZZ_CHECK(core::AbslParseFlag(back, &again, &error), "unparsed size refused");
  FUZZ_CHECK(again.bytes == size.bytes, "size changed through unparse");
}

void Rate(absl::string_view text) {
  absl::StatusOr<policy::RateSpec> r = policy::ParseRateSpec(text);
  if (!r.ok()) {
    FUZZ_CHECK(r.status().code() == absl::StatusCode::kInvalidArgument, "odd error code");
    return;
  }
  FUZZ_CHECK(r->rate_per_s > 0 && r->rate_per_s <= 1e9, "rate out of bounds");
  FUZZ_CHECK(r->burst <= 1000000, "burst out of bounds");
  FUZZ_CHECK(r->delay <= r->burst, "delay above burst");
}

void Set(absl::string_view text) {
  absl::StatusOr<policy::IpSet> set = policy::IpSet::Parse(text);
  if (!set.ok()) {
    FUZZ_CHECK(set.status().code() == absl::StatusCode::kInvalidArgument, "odd error code");
    return;
  }
  FUZZ_CHECK(set->size() == set->cidrs().size() && set->empty() == (set->size() == 0),
             "size disagrees");
  for (const policy::Cidr& c : set->cidrs()) {
    FUZZ_CHECK(set->Contains(c.base), "a set does not hold a block's base");
  }
  absl::StatusOr<policy::IpSet> again = policy::IpSet::Parse(set->ToString());
  FUZZ_CHECK(again.ok(), "ToString's text refused");
  FUZZ_CHECK(again->cidrs() == set->cidrs(), "blocks changed through ToString");
}

void Cidr(absl::string_view text) {
  if (absl::StatusOr<policy::Cidr> c = policy::ParseCidr(text); c.ok()) {
    FUZZ_CHECK(c->prefix_len >= 0 && c->prefix_len <= 128, "prefix out of range");
    FUZZ_CHECK(c->Contains(c->base), "a block does not hold its base");
    absl::StatusOr<policy::Cidr> again = policy::ParseCidr(c->ToString());
    FUZZ_CHECK(again.ok(), "ToString's text refused");
    FUZZ_CHECK(*again == *c, "block changed through ToString");
  } else {
    FUZZ_CHECK(c.status().code() == absl::StatusCode::kInvalidArgument, "odd error code");
  }
  if (std::optional<policy::IpAddress> a = policy::IpAddress::Parse(text)) {
    std::optional<policy::IpAddress> again = policy::IpAddress::Parse(a->ToString());
    FUZZ_CHECK(again.has_value() && *again == *a, "address changed through ToString");
    (void)policy::SteeringSlot(policy::SteeringHash(*a), 3);
  }
  // The text as an X-Forwarded-For header from a trusted proxy.
  static const policy::IpSet trusted = *policy::IpSet::Parse("10.0.0.0/8, fd00::/8");
  const policy::IpAddress peer = *policy::IpAddress::Parse("10.1.2.3");
  const policy::IpAddress client = policy::ClientAddressFromXff(peer, text, trusted);
  (void)client.ToString();
}

// The rules file goes into this memfd; Build reads it by path.
class RulesFile {
 public:
  RulesFile() : fd_(memfd_create("fuzz-rules", MFD_CLOEXEC)) {
    FUZZ_CHECK(fd_ >= 0, "memfd_create failed");
    path_ = absl::StrCat("/proc/self/fd/", fd_);
  }
  const std::string& Write(absl::string_view text) {
    FUZZ_CHECK(ftruncate(fd_, 0) == 0, "ftruncate failed");
    FUZZ_CHECK(pwrite(fd_, text.data(), text.size(), 0) == static_cast<ssize_t>(text.size()),
               "pwrite failed");
    return path_;
  }

 private:
  int fd_;
  std::string path_;
};

void Screen(const policy::Policy& p) {
  for (const policy::Route& r : p.routes()) {
    FUZZ_CHECK(!r.pattern.empty() && r.pattern[0] == '/', "route pattern not a path");
    FUZZ_CHECK(r.zone == policy::Route::kZoneByPath ||
                   (r.zone >= -1 && r.zone < static_cast<int>(p.zones().size())),
               "route zone out of range");
  }
  static const char* const kTargets[] = {"/api/chat", "/API/%64elete/", "/api/pull?x", "/v1/models",
                                         "*",         "/a/../../b"};
  static const char* const kPeers[] = {"127.0.0.1", "203.0.113.9", "fd00::1"};
  for (const char* target : kTargets) {
    for (const char* peer : kPeers) {
      policy::RequestFacts req;
      req.method = "GET";
      req.target = target;
      req.scheme = "http";
      req.host = "localhost";
      req.peer = *policy::IpAddress::Parse(peer);
      policy::Admission a;
      const bool go_on = p.Screen(req, &a);
      FUZZ_CHECK(go_on == (a.status == 0), "Screen's verdict and status disagree");
      if (go_on) FUZZ_CHECK(a.route != nullptr, "admitted without a route");
    }
  }
  (void)p.Summary();
}

// Options that build are screened; those that do not are refused with
// InvalidArgument (a flag or file line named), nothing else.
void BuildAndScreen(const policy::PolicyOptions& o) {
  absl::StatusOr<std::shared_ptr<const policy::Policy>> p = policy::Policy::Build(o, 1);
  if (!p.ok()) {
    FUZZ_CHECK(p.status().code() == absl::StatusCode::kInvalidArgument, "odd error code");
    return;
  }
  Screen(**p);
}

void Rules(absl::string_view text) {
  static RulesFile* file = new RulesFile();
  policy::PolicyOptions o;
  o.auth = "none";
  o.rules_file = file->Write(text);
  BuildAndScreen(o);
}

void Options(absl::string_view text) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  lines.resize(9);
  policy::PolicyOptions o;
  o.auth = "none";
  o.allow_cidrs = lines[0];
  o.deny_cidrs = lines[1];
  o.trusted_proxies = lines[2];
  o.admin_cidrs = lines[3];
  o.cors_origins = lines[4];
  if (!lines[5].empty()) o.rate_generation = lines[5];
  if (!lines[6].empty()) o.rate_api = lines[6];
  if (!lines[7].empty()) o.rate_by = lines[7];
  if (!lines[8].empty()) o.auth_attempts = lines[8];
  BuildAndScreen(o);
}

}  // namespace
}  // namespace sluice::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::fuzz;
  if (size == 0 || size > 16 * 1024) return -1;
  const Piece piece(std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1));
  const absl::string_view text(piece.view().data(), piece.size());
  switch (data[0] % 7) {
    case 0:
      HostPort(text);
      break;
    case 1:
      Bytes(text);
      break;
    case 2:
      Rate(text);
      break;
    case 3:
      Set(text);
      break;
    case 4:
      Cidr(text);
      break;
    case 5:
      Rules(text);
      break;
    case 6:
      Options(text);
      break;
  }
  return 0;
}
