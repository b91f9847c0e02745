// Every sshring metric family is named here (docs/metrics.md lists the same set; a test compares).
// Data-path parts own plain stats structs of LocalCounter/LocalGauge (one per worker or per CPU
// reader) and register them; collectors sum them at scrape time. Control-plane metrics
// (histograms, reloads, grants) use prometheus-cpp families from Server::registry().
#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "metrics/server.h"

namespace sshring::metrics {

// Session outcomes (label `outcome` of sshring_relay_sessions_total); mirrors relay::EndReason.
inline constexpr const char* kSessionOutcomes[] = {
    "closed", "client_reset",      "upstream_reset", "idle_timeout", "drained",
    "denied", "handshake_timeout", "connect_failed", "overloaded"};
inline constexpr size_t kNumSessionOutcomes = std::size(kSessionOutcomes);

// Refused pre-authentication connections (label `reason` of sshring_relay_startups_refused_total);
// mirrors relay::StartupRefusal (a static_assert there checks the count).
inline constexpr const char* kStartupRefusals[] = {"full", "early_drop", "per_source", "first_byte_timeout"};
inline constexpr size_t kNumStartupRefusals = std::size(kStartupRefusals);

// Label `tag` of the bypass families, index = policy::FlowTag - 1 (metrics depends on no other part, so
// the names are repeated here; a test checks they match policy::flow_tag_name).
inline constexpr const char* kFlowTagNames[] = {"proxied", "bypass_approved", "bypass_expired",
                                                "bypass_unapproved"};
inline constexpr size_t kNumFlowTags = std::size(kFlowTagNames);

// Histogram buckets (seconds). Handshake: preamble read + signature check, sub-ms to the 10 s timeout.
// Connect: loopback to cross-region upstreams, up to the connect timeout.
inline constexpr double kHandshakeBuckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                               0.1,    0.25,  0.5,    1,     2.5,  5,     10};
inline constexpr double kConnectBuckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                             0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};

// One per relay worker; written only by that worker's thread.
struct RelayWorkerStats {
  LocalGauge sessions_active;
  std::array<LocalCounter, kNumSessionOutcomes> sessions_total;  // by outcome index
  LocalCounter bytes_client_to_upstream;  // sshring_relay_bytes_total{direction="client_to_upstream"}
  LocalCounter bytes_upstream_to_client;  // sshring_relay_bytes_total{direction="upstream_to_client"}
  LocalCounter accept_errors;             // sshring_relay_accept_errors_total (EMFILE, ENFILE, ...)
  LocalGauge pipes_in_use;                // sshring_relay_pipes_in_use
  LocalGauge startups_active;             // sshring_relay_startups_active
  std::array<LocalCounter, kNumStartupRefusals> startups_refused;  // by refusal index
};

// Relay-wide control-plane metrics (prometheus-cpp families, safe from any thread).
struct RelayMetrics {
  prometheus::Histogram* handshake_seconds = nullptr;  // sshring_relay_handshake_duration_seconds
  prometheus::Histogram* connect_seconds = nullptr;    // sshring_relay_upstream_connect_duration_seconds
  prometheus::Family<prometheus::Counter>* decisions =
      nullptr;                                // sshring_policy_decisions_total{result,reason}
  prometheus::Gauge* max_sessions = nullptr;  // sshring_relay_sessions_max
  // sshring_relay_handovers_total{result}: done, refused, failed (series exist from the start).
  prometheus::Family<prometheus::Counter>* handovers = nullptr;
};

// Registers relay metrics. `workers` must outlive the server (the collector reads them).
RelayMetrics register_relay(Server& server, const std::vector<const RelayWorkerStats*>& workers);

// Policy reloads and grants, exported by every process that holds a snapshot (relay and agent).
// The member functions are what the policy reloader reports (policy::ReloadObserver, wired by
// policy::observe(&metrics) in the process that owns both); metrics does not depend on policy.
struct PolicyMetrics {
  prometheus::Family<prometheus::Counter>* reloads = nullptr;  // sshring_policy_reloads_total{result}
  prometheus::Gauge* last_success = nullptr;     // sshring_policy_last_reload_success_timestamp_seconds
  prometheus::Gauge* grants_active = nullptr;    // sshring_grants_active
  prometheus::Gauge* grants_expiring = nullptr;  // sshring_grants_expiring_within_hour
  prometheus::Family<prometheus::Counter>* grants_rejected =
      nullptr;                                          // sshring_grants_rejected_total{reason}
  prometheus::Gauge* break_glass_live = nullptr;        // sshring_grants_break_glass_active
  prometheus::Gauge* reviews_overdue = nullptr;         // sshring_grants_review_overdue
  prometheus::Counter* cache_write_failures = nullptr;  // sshring_policy_cache_write_failures_total
  prometheus::Counter* decisions_restored = nullptr;    // sshring_grant_decisions_restored_total
  // Only with a policy source (etcd): series appear on the first source() report.
  // sshring_policy_source_up, _revision, _last_sync_timestamp_seconds, _staleness_seconds:
  prometheus::Family<prometheus::Gauge>* source_up = nullptr;
  prometheus::Family<prometheus::Gauge>* source_revision = nullptr;
  prometheus::Family<prometheus::Gauge>* source_last_sync = nullptr;
  prometheus::Family<prometheus::Gauge>* source_staleness = nullptr;
  prometheus::Family<prometheus::Counter>* misplaced_grants = nullptr;  // ..._misplaced_grants_total

  void reloaded(bool ok, int64_t now);
  void grants(size_t live, size_t expiring_within_hour);
  void source(bool up, int64_t revision, int64_t last_sync, int64_t now);
  void source_misplaced(uint64_t total);
  void break_glass(size_t live, size_t reviews_overdue_now);
  void grant_rejected(const std::string& reason);
  void cache_write_failed();
  void decision_restored();
};
PolicyMetrics register_policy(Server& server);

// A relay on etcd: fleet-wide session counts and cross-relay nonce claims, read at scrape time.
struct FleetStats {
  bool up = false;      // sshring_relay_fleet_sessions_up
  uint64_t others = 0;  // sshring_relay_fleet_sessions_others
  uint64_t relays = 0;  // sshring_relay_fleet_relays_others
  uint64_t errors = 0;  // sshring_relay_fleet_sessions_errors_total
  bool claims = false;  // nonce claims on (--shared-replay auto|require): the family below is served
  uint64_t fresh = 0, replayed = 0, unavailable = 0, failed = 0;  // sshring_relay_replay_claims_total{result}
};
// `read` runs on the exposer thread; nullopt (the relay's parts are gone) serves nothing.
void register_fleet(Server& server, std::function<std::optional<FleetStats>()> read);

// Label `event` of sshring_agent_kernel_events_total: the kernel's stat counters, index = the BPF
// `enum sshring_stat` (bpf/sshring_consts.h; bpf/abi_check.h asserts the two lists agree).
inline constexpr const char* kKernelStatNames[] = {
    "truncated",   "fragment",     "v6_unparsed",    "ringbuf_full", "flow_map_full",   "untracked",
    "dropped_syn", "closed_local", "dropped_packet", "expired_live", "reclassified_syn"};
inline constexpr size_t kNumKernelStats = std::size(kKernelStatNames);

// One per agent; the BPF per-CPU tag counters are read at scrape time through `read_tag_counters`.
struct AgentStats {
  std::array<LocalCounter, 4> flows_by_tag;  // sshring_bypass_flows_total{tag}, index = FlowTag - 1
  std::array<LocalCounter, 4> bytes_by_tag;  // sshring_bypass_bytes_total{tag}
  LocalCounter ringbuf_drops;                // sshring_agent_ringbuf_drops_total
  LocalCounter map_full;                     // sshring_agent_map_full_total
  LocalCounter flows_evicted;                // sshring_agent_flows_evicted_total
  LocalGauge flows_tracked;                  // sshring_agent_flows_tracked
  LocalGauge enforce;                        // sshring_agent_enforce_mode (0/1)
  std::array<LocalCounter, kNumKernelStats> kernel_events;  // sshring_agent_kernel_events_total{event}
  LocalCounter flows_seeded;                                // sshring_agent_flows_seeded_total
  LocalCounter flows_retagged;                              // sshring_agent_flows_retagged_total
  LocalCounter flows_cut;                                   // sshring_agent_flows_cut_total
  LocalCounter flow_cut_errors;                             // sshring_agent_flow_cut_errors_total
  LocalCounter flows_without_socket;  // sshring_agent_refused_flows_without_socket_total
  LocalGauge policy_fits;             // sshring_agent_policy_fits (0/1)
  LocalGauge rules_not_loaded;        // sshring_agent_policy_rules_not_loaded
  LocalGauge pins_private;            // sshring_agent_pins_private (0/1)
  LocalGauge interfaces_unwatched;    // sshring_agent_interfaces_unwatched
};
void register_agent(Server& server, const AgentStats* stats);

}  // namespace sshring::metrics
