// Grants: time-bound exceptions under an opt_out rule, as signed objects (docs/policy.md, "Grants").
//
// A stored grant (SignedGrant) is a request signed by its requester plus signed decisions
// (approve, deny, review, revoke). Nothing in it is trusted as written: every reader runs
// check_grant() against the policy as it stands now, which verifies each SSHSIG signature against the
// policy's keys, re-checks the request against its rule (who, from, to, ports, TTL, requester) and
// counts approvals as the rule demands. The result (CheckedGrant) says pending, active, expired,
// revoked, denied or rejected (with a reason code), and carries the effective terms (Grant) that a
// Snapshot matches flows on. Only grants that were activated and not rejected or denied become terms.
//
// Times: a grant lives from its activation (the request's time when the rule needs no approval, else
// the time of the approval that reached the count) for its TTL, clamped to the rule's expiry, and
// stops at its earliest valid revocation. A request not activated within the rule's request_ttl
// expires unapproved.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <array>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "policy/model.h"
#include "policy/sshsig.h"

namespace sshring::policy {

// Effective terms of an honoured grant: what the Snapshot matches flows on.
struct Grant {
  std::string id;  // "g-" + 12 lowercase hex digits (random)
  std::string who;
  Cidr from;
  Cidr to;
  PortSet ports = PortSet::single(kDefaultSshPort);
  std::string rule;  // id of the opt_out rule it was issued under
  std::string reason;
  std::string created_by;   // OS user who ran the request (recorded, never trusted)
  UnixSeconds created = 0;  // activation
  UnixSeconds expires = 0;
  std::optional<UnixSeconds> revoked_at;
  std::string revoked_by;
  std::string revoke_reason;

  // Live iff now < effective_expiry(): it stops matching at its expiry second, or when revoked.
  [[nodiscard]] UnixSeconds effective_expiry() const noexcept {
    return revoked_at && *revoked_at < expires ? *revoked_at : expires;
  }
  [[nodiscard]] bool live(UnixSeconds now) const noexcept { return now < effective_expiry(); }
  bool operator==(const Grant&) const = default;
};

// What the requester signs (canonical_request()).
struct GrantRequest {
  std::string id;
  std::string who;
  Cidr from;
  Cidr to;
  PortSet ports = PortSet::single(kDefaultSshPort);
  std::string rule;  // empty before a rule is chosen (find_allowing_rule)
  int64_t ttl_seconds = 0;
  std::string reason;
  UnixSeconds created = 0;
  std::string requester;  // the signing principal: `who`, or one the rule's requesters allow
  std::string os_user;    // recorded, never trusted
  std::string host;
  bool operator==(const GrantRequest&) const = default;
};

enum class DecisionKind : uint8_t { kApprove, kDeny, kReview, kRevoke };
std::string_view decision_name(DecisionKind k) noexcept;  // "approve", "deny", "review", "revoke"

struct GrantDecision {
  DecisionKind kind = DecisionKind::kApprove;
  std::string signer;  // principal
  UnixSeconds at = 0;
  std::string note;  // deny reason, review note, revoke reason
  std::string os_user;
  std::string host;
  std::string signature;  // SSHSIG over canonical_decision()
  bool operator==(const GrantDecision&) const = default;
};

// The stored object.
struct SignedGrant {
  GrantRequest request;
  std::string signature;  // requester's SSHSIG over canonical_request(request)
  std::vector<GrantDecision> decisions;
  bool expire_recorded = false;  // a grant_expire audit record was written (bookkeeping, unsigned)
  [[nodiscard]] const std::string& id() const noexcept { return request.id; }
  bool operator==(const SignedGrant&) const = default;
};

inline constexpr size_t kMaxDecisions = 64;
[[nodiscard]] bool valid_grant_id(std::string_view id) noexcept;  // "g-" + 12 lowercase hex digits
inline constexpr int64_t kClockSkewSeconds = 300;  // signed times this far ahead of now are refused

// Canonical byte strings that get signed (documented in docs/policy.md).
std::string canonical_request(const GrantRequest& r);
std::string canonical_decision(const GrantRequest& r, const GrantDecision& d);

nlohmann::json signed_grant_to_json(const SignedGrant& g);
// Throws common::UsageError naming the field on malformed input (the input is untrusted).
SignedGrant signed_grant_from_json(const nlohmann::json& j);

// Signs a request (sets requester's signature) or a decision, in namespace kGrantNamespace.
void sign_request(SignedGrant& g, const SshsigSigner& signer);
void sign_decision(const GrantRequest& r, GrantDecision& d, const SshsigSigner& signer);

enum class GrantStatus : uint8_t { kPending, kActive, kExpired, kRevoked, kDenied, kRejected };
std::string_view status_name(GrantStatus s) noexcept;

// Remembers signature verifications by (signature, message) so an unchanged grant is verified once
// across reloads. Thread-safe. Holds at most `capacity` entries (oldest generation dropped first).
class SignatureCache {
 public:
  explicit SignatureCache(size_t capacity = size_t{4} * 100000) : capacity_(capacity) {}
  // The verified signer's fingerprint, or nullopt (why in *why) if the signature is bad.
  std::optional<std::string> verify(std::string_view armored, std::string_view message, std::string* why);
  // Drops entries not used since the previous call (call once per snapshot build).
  void end_generation();
  [[nodiscard]] size_t hits() const;
  [[nodiscard]] size_t misses() const;
  [[nodiscard]] size_t size() const;

 private:
  struct Entry {
    std::optional<std::string> fingerprint;
    std::string why;
    uint64_t used = 0;
  };
  mutable std::mutex mu_;
  std::unordered_map<std::string, Entry> map_;
  size_t capacity_;
  uint64_t gen_ = 1;
  size_t hits_ = 0;
  size_t misses_ = 0;
};

struct CheckedApproval {
  DecisionKind kind = DecisionKind::kApprove;
  std::string signer;
  std::string fingerprint;
  UnixSeconds at = 0;
  std::string note;
  bool counted = false;
  std::string not_counted_why;  // e.g. "bob is not an approver of rule ops"
};

struct CheckedGrant {
  SignedGrant object;
  GrantStatus status = GrantStatus::kRejected;
  std::string reject_reason;  // stable code (metrics label) when rejected: see docs/policy.md
  std::string detail;         // one line for people: why rejected, pending, expired, ...
  std::string requester_fingerprint;
  std::vector<CheckedApproval> decisions;
  bool activated = false;
  Grant terms;  // valid when activated
  bool break_glass = false;
  bool reviewed = false;
  UnixSeconds review_due = 0;     // break-glass: activation + review_within
  UnixSeconds pending_until = 0;  // pending: created + request_ttl
  // Honoured by the snapshot: activated, not rejected or denied (expired and revoked ones stay, so
  // flows that used them classify as bypass_expired).
  [[nodiscard]] bool honoured() const noexcept {
    return activated && status != GrantStatus::kRejected && status != GrantStatus::kDenied;
  }
  [[nodiscard]] bool review_overdue(UnixSeconds now) const noexcept {
    return break_glass && activated && !reviewed && status != GrantStatus::kRejected && now > review_due;
  }
};

// Verifies and evaluates stored grants against one policy (indexes its principals and keys once).
class GrantChecker {
 public:
  // `policy` and `cache` (may be null) must outlive the checker.
  GrantChecker(const Policy& policy, SignatureCache* cache);
  // Never throws.
  [[nodiscard]] CheckedGrant check(const SignedGrant& g, UnixSeconds now) const;
  [[nodiscard]] const Principal* principal(std::string_view name) const noexcept;
  // The principal owning the key with this "SHA256:..." fingerprint, or null.
  [[nodiscard]] const Principal* key_owner(std::string_view fingerprint) const noexcept;
  [[nodiscard]] bool in_set(const PrincipalSet& set, std::string_view name) const noexcept;

 private:
  bool verify(std::string_view sig, std::string_view msg, std::string* fp, std::string* why) const;
  // The decisions in time order, each counted or told why not: when the grant became active (enough
  // approvals inside the request window), the first deny, the first revoke.
  struct Tally {
    std::optional<UnixSeconds> activation;
    const CheckedApproval* deny = nullptr;
    const CheckedApproval* revoke = nullptr;
    size_t approvers = 0;  // distinct approvers counted
  };
  Tally tally(const OptOutRule& rule, CheckedGrant& c) const;
  void evaluate(const OptOutRule& rule, CheckedGrant& c, UnixSeconds now) const;
  const Policy& policy_;
  SignatureCache* cache_;
  std::unordered_map<std::string_view, const Principal*> principals_;
  std::unordered_map<std::string_view, const Principal*> keys_;
  std::unordered_map<std::string_view, const OptOutRule*> rules_;
};

// One-off check (builds a GrantChecker).
CheckedGrant check_grant(const Policy& policy, const SignedGrant& g, UnixSeconds now, SignatureCache* cache);

// Checks every stored grant against `policy` at `now` (GrantChecker::check, on every core once there
// are enough grants), in order. `cache` (may be null) remembers verified signatures.
std::vector<CheckedGrant> check_grants(const Policy& policy, const std::vector<const SignedGrant*>& stored,
                                       UnixSeconds now, SignatureCache* cache);

// Which opt_out rule allows `req` (who, from, to, ports, TTL, reason, requester) at `now`. On refusal
// returns nullptr and fills *refusal with one line per rule considered ("rule ci-direct: ttl 12h
// exceeds max_ttl 8h"), or why none applies.
const OptOutRule* find_allowing_rule(const Policy& policy, const GrantRequest& req, UnixSeconds now,
                                     std::string* refusal);
// The request's free-text fields by name: every one must be printable_utf8 (policy/parser.h), at
// request time (the CLI) and in every reader (check: outside_rule), so no stored grant can carry
// terminal control sequences to an approver's screen.
std::array<std::pair<const char*, std::string_view>, 6> request_texts(const GrantRequest& r) noexcept;
// Empty if `req` fits `rule` (ignoring the rule's expiry), else why not.
std::string rule_refusal(const Policy& policy, const OptOutRule& rule, const GrantRequest& req);
// Whether `principal` may approve (kApprove/kDeny) or review (kReview) requests under `rule` for `req`.
// Empty if yes, else why not.
std::string decider_refusal(const Policy& policy, const OptOutRule& rule, const GrantRequest& req,
                            std::string_view principal, DecisionKind kind);

}  // namespace sshring::policy
