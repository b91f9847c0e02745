// Everything authenticated mode needs for the life of a relay process, in one object: the policy
// cache and its reloader (inotify on the policy file and the grant store), the optional audit log,
// and the shared AuthHandshakeFactory (one per process, so the replay cache and the session counters
// survive route reloads). `sshring relay --policy FILE` creates one.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "policy/cache.h"
#include "relay/auth/auth_handshake.h"

namespace sshring::metrics {
class AuditLog;
struct PolicyMetrics;
}  // namespace sshring::metrics

namespace sshring::relay::auth {

struct AuthServiceOptions {
  std::string policy_path;
  std::vector<std::string> relay_ids;                // empty: this host's name
  std::string audit_path;                            // a log of its own (empty: use `audit`, if any)
  metrics::AuditLog* audit = nullptr;                // shared log (must outlive the service)
  bool watch = true;                                 // reload on policy/grant file changes
  metrics::PolicyMetrics* policy_metrics = nullptr;  // reload and grant metrics (must outlive the service)
  AuthOptions auth;                                  // limits; relay_ids and audit are filled in from above
  std::shared_ptr<policy::SnapshotSource> source;    // policy and grants from a store (etcd) instead
  std::optional<std::string> cache_dir;              // with a source: last good snapshot (default dir)
};

class AuthService {
 public:
  // Loads the policy (throws policy::PolicyError / common::UsageError with the file and line) and
  // starts the reloader thread.
  explicit AuthService(AuthServiceOptions opts);
  ~AuthService();
  AuthService(const AuthService&) = delete;
  AuthService& operator=(const AuthService&) = delete;

  [[nodiscard]] std::shared_ptr<AuthHandshakeFactory> factory() const { return factory_; }
  [[nodiscard]] const std::vector<std::string>& relay_ids() const { return ids_; }
  // Reloads policy and grants now (SIGHUP). Keeps the last good policy on error; never throws.
  bool reload(std::string* error = nullptr);

 private:
  policy::PolicyCache cache_;
  std::unique_ptr<policy::Reloader> reloader_;
  std::unique_ptr<metrics::AuditLog> audit_;
  std::vector<std::string> ids_;
  std::shared_ptr<AuthHandshakeFactory> factory_;
};

// The default relay id: the host name (what clients usually put in --relay).
std::string default_relay_id();

}  // namespace sshring::relay::auth
