#include "cli/store_flags.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include "common/error.h"
#include "policy/decision_ledger.h"
#include "policy/etcd/client.h"
#include "policy/etcd/nonce_claims.h"
#include "policy/etcd/session_ledger.h"
#include "policy/etcd/source.h"
#include "policy/etcd/store.h"
#include "policy/parser.h"
#include "policy/snapshot_cache.h"
#include "policy/store_uri.h"

namespace sshring::cli {
namespace {

using common::UsageError;

void tls_and_auth(const common::Flags& f, policy::etcd::ClientOptions* o) {
  if (auto ca = f.get("etcd-cacert")) {
    o->tls = true;
    o->ca_file = *ca;
  }
  o->cert_file = f.get_or("etcd-cert", "");
  o->key_file = f.get_or("etcd-key", "");
  o->user = f.get_or("etcd-user", "");
  if (!o->user.empty()) {
    if (auto file = f.get("etcd-password-file")) {
      std::ifstream in(*file);
      if (!in) throw UsageError("--etcd-password-file " + *file + ": cannot read it");
      std::getline(in, o->password);
    } else if (const char* p = std::getenv("SSHRING_ETCD_PASSWORD")) {
      o->password = p;
    } else {
      throw UsageError("--etcd-user " + o->user +
                       " needs a password: --etcd-password-file FILE or SSHRING_ETCD_PASSWORD "
                       "(or drop --etcd-user and authenticate with the client certificate's CN)");
    }
  }
}

std::string prefix_flag(const common::Flags& f) {
  std::string p = f.get_or("etcd-prefix", policy::kDefaultEtcdPrefix);
  std::string why;
  if (!policy::valid_etcd_prefix(p, &why)) throw UsageError("--etcd-prefix: " + why);
  return p;
}

}  // namespace

void add_etcd_flags(common::Flags& f) {
  f.value(
       "etcd", "ENDPOINTS",
       "read policy and grants from etcd instead of --policy FILE (e.g. https://10.0.0.1:2379,10.0.0.2:2379)")
      .value("etcd-prefix", "PREFIX", "key prefix of this fleet in etcd",
             std::string(policy::kDefaultEtcdPrefix))
      .value("etcd-cacert", "FILE",
             "CA certificate (PEM) that signed etcd's server certificates; turns on TLS")
      .value("etcd-cert", "FILE",
             "client certificate (PEM) for etcd; its CN is the etcd user without --etcd-user")
      .value("etcd-key", "FILE", "private key (PEM) of --etcd-cert")
      .value("etcd-user", "NAME",
             "etcd user for password auth (password: --etcd-password-file or $SSHRING_ETCD_PASSWORD)")
      .value("etcd-password-file", "FILE", "file whose first line is the --etcd-user password");
}

void add_cache_flag(common::Flags& f) {
  f.value("cache-dir", "DIR",
          "where the last good snapshot (with etcd: used while etcd is away) and the revocations and "
          "denials this process verified (they stay in force if removed from the store) are kept; "
          "given, or with etcd, the revocations survive restarts, else they are kept in memory",
          std::string(policy::kDefaultCacheDir));
}

bool etcd_requested(const common::Flags& f) {
  return f.has("etcd");
}

EtcdTarget etcd_from_flags(const common::Flags& f) {
  policy::etcd::ClientOptions o;
  policy::etcd::parse_endpoints(f.require("etcd"), &o);
  tls_and_auth(f, &o);
  return {std::make_shared<policy::etcd::Client>(std::move(o)), prefix_flag(f)};
}

EtcdTarget etcd_from_uri(const common::Flags& f, const std::string& uri) {
  std::string why;
  auto u = policy::parse_etcd_uri(uri, &why);
  if (!u) throw UsageError("grant_store " + uri + ": " + why);
  policy::etcd::ClientOptions o;
  o.endpoints = u->endpoints;
  tls_and_auth(f, &o);
  return {std::make_shared<policy::etcd::Client>(std::move(o)), u->prefix};
}

namespace {

// The etcd that --etcd, or the --policy file's `grant_store: etcd://...`, names; nullopt for files.
std::optional<EtcdTarget> consumer_etcd(const common::Flags& f, const std::string& policy_flag,
                                        std::string* policy_file) {
  if (etcd_requested(f)) {
    if (f.has("grant-store")) throw UsageError("--etcd replaces --grant-store: grants are in etcd too");
    return etcd_from_flags(f);
  }
  std::string path = f.get_or(policy_flag, policy::kDefaultPolicyPath);
  auto p = policy::load_policy_file(path);
  if (!policy::is_etcd_uri(p.grant_store) || f.has("grant-store")) return std::nullopt;
  *policy_file = path;
  return etcd_from_uri(f, p.grant_store);
}

}  // namespace

std::shared_ptr<policy::SnapshotSource> snapshot_source(const common::Flags& f,
                                                        const std::string& policy_flag) {
  std::string local_policy;  // set when only the grants are in etcd
  auto t = consumer_etcd(f, policy_flag, &local_policy);
  if (!t) return nullptr;
  return std::make_shared<policy::etcd::EtcdSource>(t->client, t->prefix, local_policy);
}

FleetRelay fleet_relay(const common::Flags& f, const std::string& relay_id,
                       std::optional<std::chrono::milliseconds> claim_window) {
  std::string local_policy;
  auto t = consumer_etcd(f, "policy", &local_policy);
  if (!t) return {};
  FleetRelay out;
  out.ledger = std::make_shared<policy::etcd::EtcdSessionLedger>(
      t->client, t->prefix, policy::etcd::LedgerOptions{.relay_id = relay_id});
  if (claim_window) {
    // A claim sits in a handshake (10 s timeout): its own client gives up within about 2 s.
    policy::etcd::ClientOptions o = t->client->options();
    o.timeout = std::chrono::milliseconds(1000);
    o.single_pass = true;
    out.claims = std::make_shared<policy::etcd::EtcdNonceClaims>(
        std::make_shared<policy::etcd::Client>(std::move(o)), t->prefix,
        policy::etcd::NonceClaimOptions{.window = *claim_window});
  }
  return out;
}

// Only when given, or with etcd (which uses the default): a process on a directory store keeps
// nothing on disk unless told where.
std::optional<std::string> cache_dir(const common::Flags& f) {
  if (!f.has("cache-dir") && !etcd_requested(f)) return std::nullopt;
  return f.get("cache-dir");
}

PolicyAndStore open_policy_and_store(const common::Flags& f, bool create_dir) {
  PolicyAndStore out;
  if (etcd_requested(f)) {
    auto t = etcd_from_flags(f);
    policy::etcd::Keys keys(t.prefix);
    auto live = policy::etcd::read_policy(*t.client, keys);
    if (!live) {
      throw UsageError(t.client->describe() + ": no policy under " + keys.policy_current() +
                       "; publish one with: sshring policy push FILE --etcd ...");
    }
    out.policy = policy::parse_policy(
        live->text, "etcd:" + keys.policy_current() + "@" + std::to_string(live->meta.revision));
    out.store = std::make_unique<policy::etcd::EtcdGrantStore>(t.client, t.prefix);
    out.etcd = true;
    return out;
  }
  out.policy = policy::load_policy_file(f.get_or("policy", policy::kDefaultPolicyPath));
  std::string store = f.get_or("grant-store", out.policy.grant_store);
  if (policy::is_etcd_uri(store)) {
    auto t = etcd_from_uri(f, store);
    out.store = std::make_unique<policy::etcd::EtcdGrantStore>(t.client, t.prefix);
    out.etcd = true;
  } else if (create_dir || ::access(store.c_str(), F_OK) == 0) {
    out.store = std::make_unique<policy::DirGrantStore>(store, create_dir);
  }
  return out;
}

std::unique_ptr<policy::GrantStore> open_grant_store_without_policy(const common::Flags& f) {
  if (etcd_requested(f)) {
    auto t = etcd_from_flags(f);
    return std::make_unique<policy::etcd::EtcdGrantStore>(t.client, t.prefix);
  }
  std::string store = f.get_or("grant-store", std::string(policy::kDefaultGrantStore));
  if (policy::is_etcd_uri(store)) {
    auto t = etcd_from_uri(f, store);
    return std::make_unique<policy::etcd::EtcdGrantStore>(t.client, t.prefix);
  }
  return std::make_unique<policy::DirGrantStore>(store, true);
}

std::optional<uint64_t> base_revision(const policy::GrantStore& s) {
  const int64_t r = s.base_revision();
  if (r <= 0) return std::nullopt;
  return static_cast<uint64_t>(r);
}

void add_ledger_flag(common::Flags& f) {
  f.value("cache-dir", "DIR",
          "cache directory of a relay or agent on this host: the revocations and denials it verified "
          "count here too, also where someone removed them from the store (read only; default: " +
              std::string(policy::kDefaultCacheDir) + " when it holds them)");
}

namespace {

class LedgerView final : public policy::GrantStore {
 public:
  LedgerView(std::unique_ptr<policy::GrantStore> inner, std::unique_ptr<policy::DecisionLedger> ledger)
      : inner_(std::move(inner)), ledger_(std::move(ledger)) {}

  [[nodiscard]] std::vector<policy::SignedGrant> load() const override {
    auto all = inner_->load();
    for (auto& g : all) restore(g);
    return all;
  }
  void add(const policy::SignedGrant& g) override { inner_->add(g); }
  std::optional<policy::SignedGrant> update(
      std::string_view id, const std::function<void(policy::SignedGrant&)>& change) override {
    return inner_->update(id, [&](policy::SignedGrant& g) {
      restore(g);
      change(g);
    });
  }
  size_t prune(policy::UnixSeconds now, int64_t retention_seconds) override {
    return inner_->prune(now, retention_seconds);
  }
  [[nodiscard]] std::string location() const override { return inner_->location(); }
  [[nodiscard]] int64_t base_revision() const noexcept override { return inner_->base_revision(); }

 private:
  void restore(policy::SignedGrant& g) const {
    const size_t n = ledger_->restore(g);
    if (n == 0 || !told_.insert(g.request.id).second) return;
    std::cerr << "sshring: grant " << policy::printable_escape(g.request.id) << ": " << n
              << " signed revoke/deny missing from " << inner_->location() << " restored from "
              << ledger_->path()
              << " (this host verified it and someone removed it from the store; readers that never saw it "
                 "follow the store: put it back from the audit log's grant records)\n";
  }

  std::unique_ptr<policy::GrantStore> inner_;
  std::unique_ptr<policy::DecisionLedger> ledger_;
  mutable std::set<std::string> told_;
};

}  // namespace

std::unique_ptr<policy::GrantStore> with_ledger(std::unique_ptr<policy::GrantStore> store,
                                                const common::Flags& f) {
  if (!store) return store;
  const bool given = f.has("cache-dir");
  const std::string path =
      policy::decision_ledger_path(given ? *f.get("cache-dir") : std::string(policy::kDefaultCacheDir));
  if (::access(path.c_str(), F_OK) != 0) {
    if (given)
      std::cerr << "sshring: warning: no remembered revocations at " << path
                << " (--cache-dir of a relay or agent on this host); reading the store as it is\n";
    return store;
  }
  auto ledger = std::make_unique<policy::DecisionLedger>(path);
  std::string why;
  if (!ledger->load(&why, true)) {  // read only: never moves the owner's file aside
    std::cerr << "sshring: warning: " << (ledger->size() ? "some of " : "")
              << "the remembered revocations in " << path << " are not applied: " << why
              << " (run as the service's user or root; the directory must be writable by that user only)\n";
  }
  if (ledger->size() == 0) return store;
  return std::make_unique<LedgerView>(std::move(store), std::move(ledger));
}

}  // namespace sshring::cli
