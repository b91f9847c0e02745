// The policy model: what a parsed policy.yaml holds (docs/policy.md is the reference). Plain values;
// Snapshot (snapshot.h) compiles a Policy plus the grants into lookup structures.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "policy/cidr.h"
#include "policy/keys.h"
#include "policy/timezone.h"

namespace sshring::policy {

using UnixSeconds = int64_t;

inline constexpr std::string_view kDefaultPolicyPath = "/etc/sshring/policy.yaml";
inline constexpr std::string_view kDefaultGrantStore = "/var/lib/sshring/grants";
inline constexpr uint32_t kDefaultMaxSessions = 10;  // per principal, when no role sets max_sessions
inline constexpr uint16_t kDefaultSshPort = 22;

// Size limits: the policy file is operator input but may come from a repository many people edit.
inline constexpr size_t kMaxPolicyBytes = 8u << 20;
inline constexpr size_t kMaxPrincipals = 20000;
inline constexpr size_t kMaxRoles = 5000;
inline constexpr size_t kMaxOptOut = 5000;
inline constexpr size_t kMaxHosts = 5000;
inline constexpr size_t kMaxRelays = 1000;
inline constexpr size_t kMaxAuditKeys = 10000;  // one per writer of a large fleet
inline constexpr size_t kMaxListItems = 1000;   // cidrs, names, targets, roles of a principal, ...
inline constexpr size_t kMaxKeysPerPrincipal = 64;
inline constexpr size_t kMaxWindows = 32;
inline constexpr size_t kMaxNameLength = 128;
inline constexpr size_t kMaxTextLength = 1024;  // reasons, key lines

// A weekly time window in a zone. Hours may cross midnight ("22:00-06:00"): the part after midnight
// belongs to the day the window started (Fri 22:00-06:00 covers Sat 03:00).
struct Window {
  uint8_t days = 0x7f;      // bit d set = weekday d allowed (0 = Sunday ... 6 = Saturday)
  uint16_t start_min = 0;   // minutes after local midnight, [0, 1440)
  uint16_t end_min = 1440;  // (0, 1440]; end < start means across midnight
  std::string days_text = "Mon-Sun";
  std::string tz_name = "UTC";
  std::shared_ptr<const TimeZone> tz;  // resolved from tz_name

  [[nodiscard]] bool contains(UnixSeconds now) const noexcept;
  bool operator==(const Window& o) const {
    return days == o.days && start_min == o.start_min && end_min == o.end_min && tz_name == o.tz_name;
  }
};

// One allowed-target entry of a role. Every constraint given must hold: a target with names and
// cidrs needs both a matching name and a matching resolved address; one with only names accepts any
// address the name resolves to; one with only cidrs accepts any name (or none).
struct Target {
  std::vector<Cidr> cidrs;
  std::vector<std::string>
      names;  // globs: '*' matches a run of non-dot characters, '?' one; case-insensitive
  PortSet ports = PortSet::single(kDefaultSshPort);
  bool operator==(const Target&) const = default;
};

struct Role {
  std::string name;
  std::vector<Target> targets;
  std::optional<uint32_t> max_sessions;  // concurrent sessions per principal
  std::vector<Window> windows;           // empty = always; otherwise any window must contain now
  bool operator==(const Role&) const = default;
};

struct Principal {
  std::string name;
  std::vector<std::string> roles;
  std::vector<PublicKey> keys;
  bool operator==(const Principal&) const = default;
};

struct HostGroup {
  std::string name;
  std::vector<Cidr> cidrs;
  PortSet ssh_ports = PortSet::single(kDefaultSshPort);
  bool operator==(const HostGroup&) const = default;
};

// Who a rule lets act: principals by name or by role. Empty = any principal of the policy.
struct PrincipalSet {
  std::vector<std::string> roles;
  std::vector<std::string> principals;
  [[nodiscard]] bool empty() const noexcept { return roles.empty() && principals.empty(); }
  bool operator==(const PrincipalSet&) const = default;
};

inline constexpr int64_t kDefaultRequestTtlSeconds = 3600;
inline constexpr int64_t kMaxRequestTtlSeconds = int64_t{7} * 86400;
inline constexpr int64_t kDefaultReviewWithinSeconds = 86400;
inline constexpr int64_t kMaxBreakGlassTtlSeconds = int64_t{4} * 3600;
inline constexpr int64_t kStandingWarnSeconds = int64_t{90} * 86400;
inline constexpr uint32_t kMaxApprovals = 16;

// A rule under which direct (non-relayed) SSH is allowed, through grants only (least privilege),
// unless `standing` is set: then the rule itself approves matching flows while unexpired.
struct OptOutRule {
  std::string id;
  std::vector<std::string> who_principals;
  std::vector<std::string> who_roles;
  std::vector<Cidr> from;
  std::vector<Cidr> to_cidrs;
  PortSet to_ports = PortSet::single(kDefaultSshPort);
  int64_t max_ttl_seconds = 0;
  bool require_reason = true;
  bool require_approver = false;  // legacy spelling of approvals.count: 1 (parsed into approvals)
  bool require_grant = false;     // legacy: grants are always required unless `standing`
  UnixSeconds expires = 0;
  std::string description;
  uint32_t approvals_count = 0;  // distinct approvers needed, never the requester nor `who`
  PrincipalSet approvers;        // who may approve or deny (empty = any principal)
  PrincipalSet requesters;       // who may request for someone else in `who` (empty = nobody)
  PrincipalSet reviewers;        // break-glass: who may review (empty = any principal)
  int64_t request_ttl_seconds = kDefaultRequestTtlSeconds;  // a pending request expires after this
  bool standing = false;                                    // approves flows by itself while unexpired
  bool break_glass = false;  // self-approved grants with a short max_ttl, reviewed afterwards
  int64_t review_within_seconds = kDefaultReviewWithinSeconds;
  bool operator==(const OptOutRule&) const = default;
};

// A writer's audit signing key (docs/audit.md, "Signed checkpoints"): `sshring audit verify --policy`
// trusts it for that writer's checkpoints, as a --trusted-keys line would.
struct AuditKeyEntry {
  std::string writer;  // component@host, or "*" for any writer
  PublicKey key;       // ssh-ed25519 only
  bool operator==(const AuditKeyEntry&) const = default;
};

struct Policy {
  int version = 1;
  std::string source;  // file name the policy came from (for messages)
  std::string grant_store = std::string(kDefaultGrantStore);
  std::vector<Cidr> relays;
  std::vector<HostGroup> hosts;
  std::vector<Principal> principals;
  std::vector<Role> roles;
  std::vector<OptOutRule> opt_out;
  std::vector<AuditKeyEntry> audit_keys;

  [[nodiscard]] const Principal* find_principal(std::string_view name) const;
  [[nodiscard]] const Role* find_role(std::string_view name) const;
  [[nodiscard]] const OptOutRule* find_rule(std::string_view id) const;
  // True if `name` is a principal named in `set` or holding one of its roles; an empty set holds
  // every principal of the policy.
  [[nodiscard]] bool in_set(const PrincipalSet& set, std::string_view name) const;
  bool operator==(const Policy& o) const {
    return version == o.version && grant_store == o.grant_store && relays == o.relays && hosts == o.hosts &&
           principals == o.principals && roles == o.roles && opt_out == o.opt_out &&
           audit_keys == o.audit_keys;
  }
};

// Glob match used for target names ('*', '?', case-insensitive ASCII). Wildcards stay inside one DNS
// label: neither '*' nor '?' matches a dot ("*.example.com" matches "a.example.com", not
// "a.b.example.com"). No allocation.
bool glob_match(std::string_view pattern, std::string_view name) noexcept;

}  // namespace sshring::policy
