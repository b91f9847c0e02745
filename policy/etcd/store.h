// sshring's keys in etcd, the grant store on them, and publishing the policy.
//
// Layout under a prefix (default /sshring; docs/etcd.md):
//   PREFIX/grants/<id>                  one grant, its JSON exactly as the grant code serializes it;
//                                       a value under any other key than its own id's is skipped
//   PREFIX/policy/current               {"digest","size","chunks","author","pushed_at","push_id"}
//   PREFIX/policy/blob/<sha256>/<nnnn>  the policy text in chunks of at most 1 MiB
//   PREFIX/leases/<unix>                the lease id that garbage-collects grants of one hour bucket
//   PREFIX/sessions/counts/<principal>/<relay instance>   live sessions (policy/etcd/session_ledger.h)
//
// Policy push: the chunks are written first under the text's digest (invisible to readers until
// referenced), then one Txn replaces policy/current if its mod_revision is still the base the pusher
// started from; readers fetch the chunks at the revision of the `current` they read, so a reader
// sees the old or the new policy whole. Blobs of older digests are deleted after the switch. The
// policy may be as large as the parser allows (8 MiB) although etcd takes 1.5 MiB per request.
//
// Grants (whole signed objects, signed_grant_to_json): add is a Txn "create only if absent"; update
// (a signed decision, the expire bookkeeping) rewrites a grant only if its mod_revision is unchanged
// (re-applying the change on a concurrent write, a bounded number of times), so concurrent `grant`
// commands lose nothing. Each grant is attached to the lease of its hour bucket (grant_horizon +
// retention, rounded up), so etcd removes it after the retention period with one lease per hour
// rather than per grant; prune deletes the same grants at once. Ended grants stay visible until then.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "policy/etcd/client.h"
#include "policy/grant_store.h"

namespace sshring::policy::etcd {

class Keys {
 public:
  explicit Keys(std::string prefix) : p_(std::move(prefix)) {}
  [[nodiscard]] const std::string& prefix() const noexcept { return p_; }
  [[nodiscard]] std::string all() const { return p_ + "/"; }
  [[nodiscard]] std::string grants() const { return p_ + "/grants/"; }
  [[nodiscard]] std::string grant(std::string_view id) const { return grants() + std::string(id); }
  [[nodiscard]] std::string policy_current() const { return p_ + "/policy/current"; }
  [[nodiscard]] std::string policy_blobs() const { return p_ + "/policy/blob/"; }
  [[nodiscard]] std::string policy_blob(std::string_view digest_hex) const {
    return policy_blobs() + std::string(digest_hex) + "/";
  }
  [[nodiscard]] std::string lease(int64_t bucket_end) const {
    return p_ + "/leases/" + std::to_string(bucket_end);
  }
  // Live session counts per principal and relay process (policy/etcd/session_ledger.h).
  [[nodiscard]] std::string session_counts() const { return p_ + "/sessions/counts/"; }
  // What snapshot consumers watch: grants, leases and policy, in key order; not sessions/, which
  // relays rewrite whenever a session starts or ends (agents need none of it).
  [[nodiscard]] std::string snapshot_range_end() const { return prefix_end(p_ + "/policy/"); }

 private:
  std::string p_;
};

inline constexpr size_t kPolicyChunkBytes = 1u << 20;
inline constexpr int64_t kLeaseBucketSeconds = 3600;

class EtcdGrantStore final : public GrantStore {
 public:
  EtcdGrantStore(std::shared_ptr<Client> client, std::string prefix);
  [[nodiscard]] std::vector<SignedGrant> load() const override;
  void add(const SignedGrant& g) override;
  std::optional<SignedGrant> update(std::string_view id,
                                    const std::function<void(SignedGrant&)>& change) override;
  size_t prune(UnixSeconds now, int64_t retention_seconds) override;
  [[nodiscard]] std::string location() const override;
  [[nodiscard]] int64_t base_revision() const noexcept override { return base_revision_; }
  // The etcd revision of this store's last write; 0 before any.
  [[nodiscard]] int64_t last_revision() const noexcept { return last_revision_; }
  // Values skipped by load() because their key is not keys.grant(their id) (grant_key_matches).
  [[nodiscard]] uint64_t misplaced() const noexcept { return misplaced_; }

 private:
  int64_t bucket_lease(UnixSeconds expires, UnixSeconds now);
  std::shared_ptr<Client> client_;
  Keys keys_;
  int64_t last_revision_ = 0;
  mutable int64_t base_revision_ = 0;  // set by load(), and by update() before each change
  mutable uint64_t misplaced_ = 0;
};

struct PolicyMeta {
  std::string digest;  // "sha256:<hex>"
  size_t size = 0;
  size_t chunks = 0;
  std::string author;
  std::string pushed_at;  // RFC 3339
  std::string push_id;    // random: tells a pusher its own write after a retried Txn
  int64_t revision = 0;   // mod_revision of policy/current (what --expect-revision names)
};

struct PublishedPolicy {
  PolicyMeta meta;
  std::string text;
};

// The live policy, or nullopt if none was pushed. `revision` 0 = now. Throws EtcdError, or
// common::UsageError if the stored policy is inconsistent (digest mismatch: names the keys).
std::optional<PublishedPolicy> read_policy(Client& c, const Keys& k, int64_t revision = 0);
// Just the meta (cheap; for `policy show` and the pusher's base).
std::optional<PolicyMeta> read_policy_meta(Client& c, const Keys& k);

struct PushResult {
  bool pushed = false;
  int64_t revision = 0;            // the new mod_revision of policy/current (when pushed)
  std::optional<PolicyMeta> live;  // when refused: what is live now
};

// Publishes `text` if policy/current's mod_revision is still `base_revision` (0: no policy yet).
// The caller has validated the text. Throws EtcdError.
PushResult push_policy(Client& c, const Keys& k, const std::string& text, const std::string& author,
                       UnixSeconds now, int64_t base_revision);

std::string sha256_hex(std::string_view data);

// A grant value read from etcd belongs under exactly keys.grant(<the id it carries>). False (and
// *why set) when `value` names another id: a copy planted under another key (a "shadow" that a
// revoke, which rewrites PREFIX/grants/<id>, would never reach). A value with no readable id is
// not judged here: it cannot parse as a grant, and the grant reader skips it as unreadable.
[[nodiscard]] bool grant_key_matches(const Keys& k, std::string_view key, std::string_view value,
                                     std::string* why);

}  // namespace sshring::policy::etcd
