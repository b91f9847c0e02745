// The --etcd flags every command that reads policy or grants shares (relay, agent, grant, policy),
// and what they open: an etcd client, the grant store, the consumers' snapshot source. One helper so
// each command adds its etcd support with a call instead of a copy.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "common/flags.h"
#include "policy/cache.h"
#include "policy/grant_store.h"
#include "policy/model.h"

namespace sshring::policy::etcd {
class Client;
class EtcdSessionLedger;
class EtcdNonceClaims;
}  // namespace sshring::policy::etcd

namespace sshring::cli {

// --etcd, --etcd-prefix, --etcd-cacert, --etcd-cert, --etcd-key, --etcd-user, --etcd-password-file.
void add_etcd_flags(common::Flags& f);
// --cache-dir (relay and agent: where the last good snapshot is kept).
void add_cache_flag(common::Flags& f);
[[nodiscard]] bool etcd_requested(const common::Flags& f);

struct EtcdTarget {
  std::shared_ptr<policy::etcd::Client> client;
  std::string prefix;
};
// From --etcd/--etcd-prefix and the TLS/auth flags. Throws common::UsageError on bad flags.
EtcdTarget etcd_from_flags(const common::Flags& f);
// From a policy's `grant_store: etcd://HOST:PORT/PREFIX`, with the TLS/auth flags.
EtcdTarget etcd_from_uri(const common::Flags& f, const std::string& uri);

// Relay and agent: the snapshot source the flags name (--etcd, or a --policy file whose grant_store is
// etcd://), or null for the file + directory store. `policy_flag` is the policy file flag's name.
std::shared_ptr<policy::SnapshotSource> snapshot_source(const common::Flags& f,
                                                        const std::string& policy_flag = "policy");
// Relay on etcd (the one snapshot_source reads): fleet-wide session counts (max_sessions across
// relays) and, with a `claim_window`, preamble nonces claimed across the relays sharing a relay id;
// neither started yet. Both null for the file + directory store.
struct FleetRelay {
  std::shared_ptr<policy::etcd::EtcdSessionLedger> ledger;
  std::shared_ptr<policy::etcd::EtcdNonceClaims> claims;
};
FleetRelay fleet_relay(const common::Flags& f, const std::string& relay_id,
                       std::optional<std::chrono::milliseconds> claim_window);
// --cache-dir when given or with --etcd (then possibly the default), else nullopt.
std::optional<std::string> cache_dir(const common::Flags& f);

// grant and policy explain: the policy (from --etcd, else the --policy file) and its grant store
// (etcd, or the directory: --grant-store, else the policy's). A missing directory store is null
// unless `create_dir` is set.
struct PolicyAndStore {
  policy::Policy policy;
  std::unique_ptr<policy::GrantStore> store;
  bool etcd = false;
};
PolicyAndStore open_policy_and_store(const common::Flags& f, bool create_dir);
// The grant store alone when the policy does not load (revocation needs only the store): etcd with
// --etcd, else --grant-store or the default directory (created if missing).
std::unique_ptr<policy::GrantStore> open_grant_store_without_policy(const common::Flags& f);
// GrantStore::base_revision for an audit record: nullopt for a store without revisions.
std::optional<uint64_t> base_revision(const policy::GrantStore& s);

// For the `grant` commands and `policy explain`: `--cache-dir DIR`, a relay's or agent's cache
// directory on this host, whose remembered revocations and denials (policy/decision_ledger.h) are
// applied to what the store holds. Default: the packaged cache directory, when its ledger exists.
void add_ledger_flag(common::Flags& f);
// `store` as this host's relay or agent sees it: each grant read gets back the signed revokes and
// denies the ledger remembers and the store lost (named on stderr, once per grant), and a grant
// changed through update() is written with them (the store is repaired). Read only: the ledger
// file is never written here. No ledger (none given, none at the default place): `store` as is.
std::unique_ptr<policy::GrantStore> with_ledger(std::unique_ptr<policy::GrantStore> store,
                                                const common::Flags& f);

}  // namespace sshring::cli
