// The authenticated handshake (docs/protocol.md): the relay side of the preamble, plugged into the
// relay's workers through relay/handshake.h.
//
//   auto factory = std::make_shared<auth::AuthHandshakeFactory>(policy_cache, auth::AuthOptions{
//       .relay_ids = {"relay-1"}, .audit = &audit});
//   cfg.routes.push_back({.listen = addr, .handshake = factory});
//
// Per session, on the worker thread: parse HELLO -> relay id -> clock skew (past and future) ->
// principal, key and Ed25519 signature (one wire code for all three: not_authenticated) -> replay
// cache (per-principal share) -> with etcd, the nonce claimed for every relay of this relay id (off
// the loop, policy::NonceClaims) -> policy on the name -> per-principal session limit -> resolve
// the name off the loop (AresResolver thread, back through HandshakeContext::post) -> policy on each
// resolved address, the first allowed one is the upstream -> OK once connected. Every deny is one
// DENY frame with a stable reason, one audit record (session_deny) and one decision metric.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "metrics/catalog.h"
#include "policy/cache.h"
#include "policy/nonce_claims.h"
#include "protocol/preamble.h"
#include "relay/auth/replay_cache.h"
#include "relay/auth/resolver.h"
#include "relay/auth/session_limits.h"
#include "relay/handshake.h"

namespace sshring::metrics {
class AuditLog;
}

namespace sshring::relay::auth {

struct AuthOptions {
  // The ids this relay answers to (the client signs one of them). At least one.
  std::vector<std::string> relay_ids;
  std::chrono::milliseconds max_skew{30000};  // |relay clock - client timestamp| allowed
  // A timestamp ahead of the relay's clock by more than this is refused (stale) outright: its nonce
  // would be kept for max_skew + that much.
  std::chrono::milliseconds max_future_skew{5000};
  size_t replay_capacity = 1u << 20;        // live nonces remembered (bounded memory)
  size_t replay_per_principal = 0;          // live nonces of one principal; 0: replay_capacity / 16
  uint32_t max_handshakes_per_source = 64;  // connections in handshake per client IP
  std::shared_ptr<Resolver> resolver;       // null: an AresResolver with default options
  // Fleet-wide max_sessions (etcd); null: each relay counts only its own sessions.
  std::shared_ptr<policy::SessionLedger> session_ledger;
  // Preamble nonces claimed across the relays that share a relay id (etcd), after the local replay
  // cache; null: the local cache only. `require_nonce_claims`: refuse (overloaded) when the claim
  // cannot be answered, instead of deciding on the local cache.
  std::shared_ptr<policy::NonceClaims> nonce_claims;
  bool require_nonce_claims = false;
  metrics::RelayMetrics metrics;       // optional (null members are skipped)
  metrics::AuditLog* audit = nullptr;  // optional; must outlive the factory
  bool log_denials = true;             // one log line per DENY
  // `audit` set and unwritable (AuditLog::writable): refuse new sessions (DENY overloaded) rather than
  // admit sessions that would go unrecorded.
  bool refuse_when_audit_unwritable = true;
  // Wall clock in Unix milliseconds (tests move it); default std::chrono::system_clock.
  std::function<uint64_t()> clock_ms;
  // Monotonic milliseconds for the replay cache's deadlines (tests move it); default steady_clock.
  std::function<uint64_t()> mono_ms;
};

// Internal per-session state, shared with callbacks that may outlive the Handshake.
struct SessionState;

class AuthHandshakeFactory : public HandshakeFactory,
                             public std::enable_shared_from_this<AuthHandshakeFactory> {
 public:
  // `cache` must outlive the factory. Throws common::UsageError on bad options.
  AuthHandshakeFactory(const policy::PolicyCache& cache, AuthOptions opts);
  ~AuthHandshakeFactory() override;

  std::unique_ptr<Handshake> create(uint64_t session_id, const common::SockAddr& client,
                                    const common::SockAddr& listen, HandshakeContext& ctx,
                                    HandshakeResume resume) override;

  // Hand-over: rebuilds an established session's handshake from handover_state().
  std::unique_ptr<Handshake> adopt(uint64_t session_id, const common::SockAddr& client,
                                   const common::SockAddr& listen, std::string_view state) override;
  // Hand-over: the replay cache (its keys, forgotten timestamps and live nonces), so a HELLO used
  // with the old process is refused by the new one.
  [[nodiscard]] std::vector<std::string> handover_replay() const override;
  bool adopt_replay(const std::vector<std::string>& parts) override;
  // A start without hand-over: the previous process's replay cache is gone, so a HELLO it accepted
  // within the skew window would pass here once more. Refuses (stale) every HELLO timestamped at or
  // before this factory's clock now; call before the first HELLO.
  void refuse_hellos_from_before_start() override { replay_.forget_through(now_ms()); }
  // Sets the audit log after construction, before any session runs (`relay --takeover` opens the log
  // only once the old relay wrote its last record).
  void set_audit(metrics::AuditLog* audit) { opts_.audit = audit; }

  // Attaches metrics after construction (the relay registers them once its workers exist). Safe
  // while sessions run.
  void set_metrics(const metrics::RelayMetrics& m);

  [[nodiscard]] const SessionLimits& limits() const { return limits_; }
  [[nodiscard]] const ReplayCache& replay_cache() const { return replay_; }
  [[nodiscard]] uint64_t now_ms() const;
  [[nodiscard]] uint64_t mono_ms() const;
  // Counts by reason (index = Reason value; 0 = allowed) for tests and logs.
  [[nodiscard]] uint64_t decisions(uint16_t reason) const;
  // True if `a` is an address of this host (its network namespace), re-read at most once a second.
  [[nodiscard]] bool is_local(const policy::IpAddr& a) const;

 private:
  friend class AuthHandshake;
  friend struct SessionState;
  void count_decision(uint16_t reason, std::string_view name);

  const policy::PolicyCache& cache_;
  AuthOptions opts_;
  std::shared_ptr<Resolver> resolver_;
  ReplayCache replay_;
  SessionLimits limits_;
  std::array<std::atomic<uint64_t>, protocol::kMaxReason + 1> decisions_{};
  std::atomic<prometheus::Histogram*> handshake_seconds_{nullptr};
  std::atomic<prometheus::Histogram*> connect_seconds_{nullptr};  // decision to upstream connected
  std::atomic<prometheus::Family<prometheus::Counter>*> decisions_family_{nullptr};
  mutable std::mutex local_mu_;
  mutable std::vector<policy::IpAddr> local_;  // under local_mu_, sorted
  mutable uint64_t local_read_ms_ = 0;         // mono_ms() of the last listing (0: never)
};

}  // namespace sshring::relay::auth
