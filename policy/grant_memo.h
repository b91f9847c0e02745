// What a reloader keeps of its previous build so that the next one, after one grant changed, parses
// and checks that grant only: a fleet's etcd holds tens of thousands of stored grants (expired and
// revoked ones stay for their retention period), and parsing and checking each of them again on
// every change made propagation grow with the store (1.2 s per change at 110,000 grants).
//
// A remembered check is reused only where checking again would give the same result:
//   - the same stored text: the same immutable string object the source delivered last time (a
//     source hands out shared texts and replaces the object when a grant changes), so recognising
//     it costs no hashing and no comparison, and nothing an attacker writes can be mistaken for it;
//     a text delivered as a new object is simply parsed and checked again;
//   - the same policy: the parsed Policy is reused while its text and origin are unchanged, and any
//     other policy forgets every check (signatures stay in the SignatureCache, so the full re-check
//     after a policy push verifies nothing again);
//   - no outcome of the check that depends on the time has come due since: a request or decision
//     dated in the future (rejected future_time: checked again every build), a pending request's
//     window (pending_until), an active grant's end (effective expiry); and the clock has not gone
//     back past the time of the check. Expired, revoked, denied and other rejected grants stay so.
// Texts that no longer appear are forgotten at the end of each build.
//
// With a DecisionLedger, every grant is checked with the revocations and denials the ledger
// remembers for it added back (policy/decision_ledger.h), and a check is redone when the ledger
// learns something new about that grant.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "policy/decision_ledger.h"
#include "policy/grant.h"
#include "policy/model.h"
#include "policy/snapshot.h"
#include "policy/snapshot_cache.h"

namespace sshring::policy {

class GrantMemo {
 public:
  struct Result {
    std::shared_ptr<const Policy> policy;
    std::vector<CheckedGrants::Ptr> checked;  // in the order of the texts (unreadable ones left out)
    std::vector<std::string> unreadable;      // why, once per text, the first build it appears in
    size_t reused = 0;                        // checks taken from the previous build
    size_t rechecked = 0;                     // grants checked in this one
    // Grants the store no longer shows a remembered revocation or denial in (each time one of them is
    // checked): someone removed a signed decision from the store.
    std::vector<std::string> restored;
  };

  // Parses `policy_text` (or reuses the last parse: same text and origin) and checks every grant
  // text at `now`. Throws what parse_policy throws for a bad policy (and then changes nothing).
  // `ledger` (may be null) restores remembered decisions before each check and learns from it.
  Result build(const std::string& policy_text, const std::string& policy_origin,
               const std::vector<GrantText>& grant_texts, UnixSeconds now, SignatureCache* signatures,
               DecisionLedger* ledger = nullptr);

  [[nodiscard]] size_t size() const noexcept { return entries_.size(); }

 private:
  struct Entry {
    GrantText text;                       // keeps the key's object (and so its address) alive
    std::optional<SignedGrant> parsed;    // nullopt: unreadable
    std::optional<SignedGrant> restored;  // parsed plus the ledger's decisions, when it had any
    uint64_t ledger_version = 0;          // the ledger's version of this grant at the check
    CheckedGrants::Ptr checked;           // null until checked against the current policy
    UnixSeconds checked_at = 0;
    UnixSeconds recheck_at = 0;  // the first second at which the check may come out differently
    uint64_t seen = 0;           // the build that last used it
  };
  std::shared_ptr<const Policy> policy_;
  std::string policy_text_;
  std::string policy_origin_;
  std::unordered_map<const std::string*, Entry> entries_;
  uint64_t builds_ = 0;
};

// The first second at which checking `c` again (same text, same policy) could give another result;
// a check done at `now`. INT64_MAX for outcomes that no longer depend on the time.
UnixSeconds recheck_time(const CheckedGrant& c, UnixSeconds now) noexcept;

}  // namespace sshring::policy
