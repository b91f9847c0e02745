// Signed revocations and denials a reader has verified, kept so that whoever can write the grant
// store cannot undo them. Each decision is signed on its own and bound to its request, but nothing
// signs the list of decisions as a whole: a writer who deletes a `revoke` from a stored grant, or
// writes back an older copy of it, would otherwise bring a revoked grant back to life (and deleting
// a `deny` would reopen a refused request for approval).
//
// A reader (relay, agent) remembers every revoke and deny that counted in a check (signature valid,
// signer allowed by the rule as the policy stood) and adds the remembered ones back to the stored
// grant before every later check, so the grant checks as if they were still there. The restored
// decisions are checked again like any other: a remembered decision never counts where the same
// decision in the file would not (another policy may no longer let its signer decide). It is kept
// with the request it was made on (the same request text, so a new request under the same id starts
// afresh) until nothing in that request can take effect any more (grant_horizon).
//
// With a path the ledger survives restarts (one JSON file, written atomically, mode 0600, in a
// directory that must be owned by the running user or root and not writable by others). A file that
// does not parse is moved aside (never overwritten); an entry that does not parse costs that entry. A reader
// that never saw a decision cannot restore it: the store's own access control and the audit log (every
// decision is an audit record before the store holds it) cover that.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>

#include "policy/grant.h"

namespace sshring::policy {

// The ledger's file in a reader's cache directory (empty directory: none, in memory only).
inline std::string decision_ledger_path(const std::string& dir) {
  return dir.empty() ? std::string() : dir + "/decisions.json";
}

class DecisionLedger {
 public:
  // Empty path: in memory only. `max_entries`: see kMaxEntries (tests lower it).
  explicit DecisionLedger(std::string path = {}, size_t max_entries = kMaxEntries);

  // Reads the file if there is one. A missing file is an empty ledger; an unreadable, malformed or
  // unsafe one (wrong owner, writable by others) is too, and the reason goes to *why (false).
  // `read_only`: a file that does not parse stays where it is (a one-shot command reading another
  // process's ledger must not move that process's file aside).
  bool load(std::string* why, bool read_only = false);
  // Writes the file if anything changed since the last write. False (and why) on failure; the ledger
  // stays in memory and the next save tries again.
  bool save(std::string* why);

  // Adds to `g` the remembered decisions its stored copy lacks. Returns how many.
  size_t restore(SignedGrant& g) const;
  // Remembers the counted revokes and denies of a check. True if any was new.
  bool remember(const CheckedGrant& c);
  // Changes whenever something is learned for `id` (0: nothing remembered), so a check made before
  // is known to be stale.
  [[nodiscard]] uint64_t version(std::string_view id) const noexcept;
  // Forgets requests that can no longer take effect at `now`.
  void prune(UnixSeconds now);

  [[nodiscard]] size_t size() const noexcept { return map_.size(); }
  [[nodiscard]] const std::string& path() const noexcept { return path_; }

  // More remembered requests than this and the requesters with the most entries lose their oldest
  // (a store holds at most kMaxGrants grants; this leaves room for ones pruned from the store but
  // not yet from here). An entry holds one revoke and at most one deny per approver: ~2 KiB on disk.
  static constexpr size_t kMaxEntries = size_t{150} * 1000;

 private:
  // Keyed by the grant id and the request's hash: one id may have been used for another request.
  static std::string key_of(const GrantRequest& r);
  void evict();
  std::string path_;
  size_t max_entries_;
  std::unordered_map<std::string, SignedGrant> map_;      // the request, its signature and the decisions
  std::unordered_map<std::string, uint64_t> versions_;    // by grant id
  std::unordered_map<std::string, uint64_t> learned_at_;  // by key: when last learned (version order)
  uint64_t next_version_ = 1;
  bool dirty_ = false;
};

}  // namespace sshring::policy
