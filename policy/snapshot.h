// The immutable, compiled policy: built once from a Policy plus the grants, then shared read-only by
// every relay worker and the agent (see cache.h for publication). All query methods are const,
// thread-safe, never throw and never allocate; string_views they return point into the Snapshot and
// stay valid while the caller holds its shared_ptr.
//
// AUTHORIZE (relay sessions), checked in this order; the first failure decides:
//   1. principal exists                            else unknown_principal
//   2. key fingerprint is one of its keys          else key_not_listed   (skipped if fingerprint empty
//                                                                          and skip_key_check is set)
//   3. some target entry of one of its roles matches (name, address, port); an entry matches when
//      every constraint it has holds: names (glob on target_name; needs a non-empty name), cidrs
//      (longest-prefix trie on target address; needs an address), ports. Globs stay inside one DNS
//      label ('*' and '?' never match a dot). An entry with names but no cidrs does not match an
//      address on the relay's host, link-local (cloud metadata 169.254.169.254, fd00:ec2::254) or
//      multicast: only an entry whose cidrs list such an address allows it.
//      none matches name/address                   -> target_not_allowed
//      name/address match but not the port         -> port_not_allowed
//   4. the matching role's windows contain now (no windows = always)
//      every matching role is outside its windows  -> outside_time_window
//   allowed: Decision.rule names the role target, e.g. "role:sre/targets[1]".
//   Session limits are counted by the relay: max_sessions_for(principal) is the largest max_sessions
//   of the principal's roles (kDefaultMaxSessions if none sets it); over it, the relay reports
//   too_many_sessions.
//
// CLASSIFY_FLOW (direct SSH seen on a host), precedence proxied > approved > expired > unapproved:
//   1. source within any `relays` CIDR                               -> proxied (id empty)
//   2. let E = every flow entry (grant or static opt_out rule, see flow_entries()) with
//      from ∋ source, to ∋ dest, port ∈ ports. Let m = the entry of E with the latest expiry
//      (ties: smallest id).
//      E non-empty and now < m.expires                               -> bypass_approved(m.id)
//      E non-empty and now >= m.expires                              -> bypass_expired(m.id)
//   3. otherwise                                                     -> bypass_unapproved
//   "Any live entry covers the flow" is the same as "the latest expiry among covering entries is in
//   the future", which a kernel can mirror with one LPM lookup keyed by source if every stored prefix
//   carries the maximum expiry over itself and all shorter prefixes containing it: source_table()
//   computes exactly that table for a given (dest address, port).
//   Expiry is a unix second; an entry stops matching at its expiry second (live iff now < expires).
//   Revoked grants expire at their revocation time. Only `standing` opt_out rules approve by
//   themselves (while unexpired); their id is the rule id (grant ids start with "g-"). Every other
//   rule approves only through grants.
//   classify_flow does not check that the destination is protected: see protects().
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "policy/cidr.h"
#include "policy/flow_tag.h"
#include "policy/grant.h"
#include "policy/model.h"

namespace sshring::policy {

// Stable reason codes (values and names never change; metrics labels and audit records use names).
enum class Reason : uint8_t {
  kAllowed = 0,
  kUnknownPrincipal = 1,
  kKeyNotListed = 2,
  kTargetNotAllowed = 3,
  kPortNotAllowed = 4,
  kOutsideTimeWindow = 5,
  kTooManySessions = 6,  // decided by the relay from max_sessions_for()
  kNoPolicy = 7,         // no snapshot loaded yet
};
inline constexpr size_t kNumReasons = 8;
std::string_view reason_name(Reason r) noexcept;  // "allowed", "unknown_principal", ...

struct AuthzRequest {
  std::string_view principal;
  std::string_view key_fingerprint;  // "SHA256:..."
  IpAddr source;
  std::string_view target_name;  // may be empty (client asked for an address)
  IpAddr target;                 // resolved address; may be unset for a name-only pre-check
  uint16_t port = 22;
  UnixSeconds now = 0;
  bool skip_key_check = false;  // for `policy explain` without a key
  // `target` is an address of the deciding host itself (the relay's): like loopback, a name may lead
  // there only through an entry whose cidrs list it.
  bool target_local = false;
};

struct Decision {
  bool allowed = false;
  Reason reason = Reason::kNoPolicy;
  std::string_view rule;  // what decided: "role:sre/targets[1]", "principal:alice", "" if none
};

struct FlowClass {
  FlowTag tag = FlowTag::kBypassUnapproved;
  std::string_view id;      // grant id or opt_out rule id for approved/expired, else empty
  UnixSeconds expires = 0;  // of that entry
};

// What the eBPF agent loads into kernel maps.
// Which of two matching flow entries decides a flow: the later expiry, ties to the smaller id. Every
// place that picks one (classify_flow, source_table, the agent's kernel fold) uses this order, so
// the kernel and userspace agree on ties.
[[nodiscard]] inline bool decides_before(UnixSeconds a_expires, std::string_view a_id, UnixSeconds b_expires,
                                         std::string_view b_id) noexcept {
  return a_expires != b_expires ? a_expires > b_expires : a_id < b_id;
}

struct FlowEntry {
  Cidr from;
  Cidr to;
  PortSet ports;
  UnixSeconds expires = 0;  // effective (revocation counts)
  std::string id;           // "g-..." grant or opt_out rule id
  bool is_grant = false;
};
struct ProtectedHosts {
  std::string name;
  Cidr cidr;
  PortSet ports;
};
// One row of the flattened per-(dest, port) source table: see the CLASSIFY_FLOW comment above.
struct SourceRow {
  Cidr from;
  UnixSeconds max_expires = 0;  // latest expiry over every entry covering this prefix
  std::string id;               // the entry with that expiry
};

struct KeyOwner {
  const Principal* principal = nullptr;
  const PublicKey* key = nullptr;
};

// Every stored grant with its check, in store order. The checks are shared (a reloader's GrantMemo
// hands the same unchanged ones to each new snapshot instead of copying them); iterating yields
// `const CheckedGrant&`.
class CheckedGrants {
 public:
  using Ptr = std::shared_ptr<const CheckedGrant>;
  class iterator {
   public:
    using iterator_category = std::random_access_iterator_tag;
    using value_type = CheckedGrant;
    using difference_type = std::ptrdiff_t;
    using pointer = const CheckedGrant*;
    using reference = const CheckedGrant&;
    iterator() = default;
    explicit iterator(std::vector<Ptr>::const_iterator it) : it_(it) {}
    reference operator*() const noexcept { return **it_; }
    pointer operator->() const noexcept { return it_->get(); }
    iterator& operator++() noexcept {
      ++it_;
      return *this;
    }
    iterator operator++(int) noexcept { return iterator(it_++); }
    bool operator==(const iterator& o) const noexcept = default;

   private:
    std::vector<Ptr>::const_iterator it_;
  };
  CheckedGrants() = default;
  explicit CheckedGrants(std::vector<Ptr> v) : v_(std::move(v)) {}
  [[nodiscard]] iterator begin() const noexcept { return iterator(v_.begin()); }
  [[nodiscard]] iterator end() const noexcept { return iterator(v_.end()); }
  [[nodiscard]] size_t size() const noexcept { return v_.size(); }
  [[nodiscard]] bool empty() const noexcept { return v_.empty(); }
  const CheckedGrant& operator[](size_t i) const noexcept { return *v_[i]; }

 private:
  std::vector<Ptr> v_;
};

class Snapshot {
 public:
  // Compiles policy + grants. Grants whose opt_out rule no longer exists are kept (they were
  // approved when issued) but counted in orphan_grants(). Throws common::UsageError on inconsistent
  // input (a principal naming an unknown role): parse_policy already rejects those.
  static std::shared_ptr<const Snapshot> build(std::shared_ptr<const Policy> policy,
                                               std::vector<Grant> grants, uint64_t generation = 0);
  // What every reader of a grant store uses: checks each stored grant (check_grant: signatures
  // against the policy's keys, the grant against its rule as the policy stands, approvals) at `now`
  // and builds from the honoured ones only. The checked list, rejections and their reasons included,
  // stays available through checked_grants(). `cache` (may be null) remembers verified signatures.
  static std::shared_ptr<const Snapshot> build_checked(std::shared_ptr<const Policy> policy,
                                                       const std::vector<SignedGrant>& stored,
                                                       UnixSeconds now, SignatureCache* cache,
                                                       uint64_t generation = 0);

  // Builds from grants already checked against `policy` (a reloader's GrantMemo reuses the checks
  // of unchanged grants): the honoured ones decide, the whole list stays in checked_grants().
  static std::shared_ptr<const Snapshot> build_from_checked(std::shared_ptr<const Policy> policy,
                                                            std::vector<CheckedGrants::Ptr> checked,
                                                            uint64_t generation = 0);

  [[nodiscard]] Decision authorize(const AuthzRequest& req) const noexcept;
  // Pre-resolution check: could `name` on `port` be allowed for some address (entries with names
  // must match; entries with only cidrs pass, the address check follows after resolution)?
  [[nodiscard]] Decision name_allowed(std::string_view principal, std::string_view name, uint16_t port,
                                      UnixSeconds now) const noexcept;
  // Post-resolution check of the address alone (same as authorize without the key check).
  [[nodiscard]] Decision address_allowed(std::string_view principal, std::string_view name,
                                         const IpAddr& addr, uint16_t port, UnixSeconds now) const noexcept;
  [[nodiscard]] uint32_t max_sessions_for(std::string_view principal) const noexcept;

  [[nodiscard]] const Principal* find_principal(std::string_view name) const noexcept;
  // Looks a key up by "SHA256:..." fingerprint across all principals.
  [[nodiscard]] KeyOwner find_key(std::string_view fingerprint) const noexcept;

  [[nodiscard]] FlowClass classify_flow(const IpAddr& source, const IpAddr& dest, uint16_t port,
                                        UnixSeconds now) const noexcept;
  // True if dest is inside a hosts[] group and port is one of its ssh_ports.
  [[nodiscard]] bool protects(const IpAddr& dest, uint16_t port) const noexcept;
  [[nodiscard]] bool is_relay(const IpAddr& source) const noexcept { return relays_.contains(source); }

  // --- for the agent (kernel maps) ---
  [[nodiscard]] const std::vector<Cidr>& relay_cidrs() const noexcept { return policy_->relays; }
  [[nodiscard]] std::vector<ProtectedHosts> protected_hosts() const;
  // Every grant and every static opt_out rule that approves directly, live or expired.
  [[nodiscard]] const std::vector<FlowEntry>& flow_entries() const noexcept { return entries_; }
  // Flattened LPM table over source prefixes for flows to (dest, port): one row per distinct `from`
  // prefix of the covering entries, carrying the max expiry over itself and all its ancestors.
  // Longest-prefix lookup of a source in it, then `now < max_expires`, reproduces classify_flow for
  // non-relay sources.
  [[nodiscard]] std::vector<SourceRow> source_table(const IpAddr& dest, uint16_t port) const;

  [[nodiscard]] const Policy& policy() const noexcept { return *policy_; }
  [[nodiscard]] const std::vector<Grant>& grants() const noexcept { return grants_; }
  [[nodiscard]] size_t orphan_grants() const noexcept { return orphan_grants_; }
  // Every stored grant with its status (build_checked only; empty after build()).
  [[nodiscard]] const CheckedGrants& checked_grants() const noexcept { return checked_; }
  // Break-glass grants in force at `now`, and break-glass grants past review_within unreviewed.
  [[nodiscard]] size_t break_glass_live(UnixSeconds now) const noexcept;
  [[nodiscard]] size_t reviews_overdue(UnixSeconds now) const noexcept;
  [[nodiscard]] uint64_t generation() const noexcept { return generation_; }
  // Live grants at `now`, and live ones expiring within `within` seconds (for the gauges).
  [[nodiscard]] size_t live_grants(UnixSeconds now, int64_t within = -1) const noexcept;

  struct Compiled;  // implementation detail (snapshot.cpp)

 private:
  Snapshot() = default;
  void index_flows(Compiled& c);
  std::shared_ptr<const Policy> policy_;
  std::vector<Grant> grants_;
  CheckedGrants checked_;
  std::vector<FlowEntry> entries_;
  CidrTrie<char> relays_;
  CidrTrie<std::vector<uint32_t>> hosts_;  // -> host group indices
  std::shared_ptr<const Compiled> compiled_;
  size_t orphan_grants_ = 0;
  uint64_t generation_ = 0;
};

}  // namespace sshring::policy
