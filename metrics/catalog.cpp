// Every sshring metric family is created here; names and labels are the contract for dashboards.
#include "metrics/catalog.h"

#include "common/grant_reject.h"

#include <iterator>
#include <mutex>

namespace sshring::metrics {

namespace {

prometheus::Histogram::BucketBoundaries buckets(const double* b, size_t n) {
  return {b, b + n};
}

// Pre-authentication connections in progress and refused (relay/admission.h), every reason exported.
std::array<prometheus::MetricFamily, 2> startup_families(
    const std::vector<const RelayWorkerStats*>& workers) {
  auto active = gauge_family("sshring_relay_startups_active",
                             "Accepted connections whose preamble is not verified yet.");
  auto refused = counter_family("sshring_relay_startups_refused_total",
                                "Pre-authentication connections refused, by reason.");
  double sum_active = 0;
  std::array<double, kNumStartupRefusals> by_reason{};
  for (const auto* w : workers) {
    sum_active += static_cast<double>(w->startups_active.value());
    for (size_t i = 0; i < kNumStartupRefusals; ++i)
      by_reason[i] += static_cast<double>(w->startups_refused[i].value());
  }
  add_sample(active, {}, sum_active);
  for (size_t i = 0; i < kNumStartupRefusals; ++i)
    add_sample(refused, {{"reason", kStartupRefusals[i]}}, by_reason[i]);
  return {std::move(active), std::move(refused)};
}

}  // namespace

RelayMetrics register_relay(Server& server, const std::vector<const RelayWorkerStats*>& workers) {
  auto& reg = server.registry();
  RelayMetrics m;
  m.handshake_seconds = &prometheus::BuildHistogram()
                             .Name("sshring_relay_handshake_duration_seconds")
                             .Help("Time from accept to a verified preamble and policy decision.")
                             .Register(reg)
                             .Add({}, buckets(kHandshakeBuckets, std::size(kHandshakeBuckets)));
  m.connect_seconds = &prometheus::BuildHistogram()
                           .Name("sshring_relay_upstream_connect_duration_seconds")
                           .Help("Time to resolve and connect to the upstream SSH server.")
                           .Register(reg)
                           .Add({}, buckets(kConnectBuckets, std::size(kConnectBuckets)));
  m.decisions = &prometheus::BuildCounter()
                     .Name("sshring_policy_decisions_total")
                     .Help("Policy decisions on sessions, by result (allow|deny) and reason.")
                     .Register(reg);
  m.max_sessions = &prometheus::BuildGauge()
                        .Name("sshring_relay_sessions_max")
                        .Help("Configured limit on concurrent sessions (all workers).")
                        .Register(reg)
                        .Add({});
  m.handovers = &prometheus::BuildCounter()
                     .Name("sshring_relay_handovers_total")
                     .Help(
                         "Live hand-overs to a new relay process on this relay's control socket, by "
                         "result: done, refused, failed (this relay served on).")
                     .Register(reg);
  for (const char* r : {"done", "refused", "failed"}) m.handovers->Add({{"result", r}});

  server.add_collector([workers] {
    auto active = gauge_family("sshring_relay_sessions_active", "Sessions currently relayed.");
    auto total = counter_family("sshring_relay_sessions_total", "Sessions ended, by outcome.");
    auto bytes = counter_family("sshring_relay_bytes_total", "Bytes relayed, by direction.");
    auto accept_errors =
        counter_family("sshring_relay_accept_errors_total", "Failed accepts (EMFILE, ENFILE, ENOBUFS, ...).");
    auto pipes = gauge_family("sshring_relay_pipes_in_use", "Splice pipe pairs currently held by sessions.");

    double sum_active = 0, c2u = 0, u2c = 0, errs = 0, sum_pipes = 0;
    std::array<double, kNumSessionOutcomes> outcomes{};
    for (const auto* w : workers) {
      sum_active += static_cast<double>(w->sessions_active.value());
      for (size_t i = 0; i < kNumSessionOutcomes; ++i)
        outcomes[i] += static_cast<double>(w->sessions_total[i].value());
      c2u += static_cast<double>(w->bytes_client_to_upstream.value());
      u2c += static_cast<double>(w->bytes_upstream_to_client.value());
      errs += static_cast<double>(w->accept_errors.value());
      sum_pipes += static_cast<double>(w->pipes_in_use.value());
    }
    add_sample(active, {}, sum_active);
    // Every outcome is exported, zero included, so rate() and dashboards see the series from the start.
    for (size_t i = 0; i < kNumSessionOutcomes; ++i)
      add_sample(total, {{"outcome", kSessionOutcomes[i]}}, outcomes[i]);
    add_sample(bytes, {{"direction", "client_to_upstream"}}, c2u);
    add_sample(bytes, {{"direction", "upstream_to_client"}}, u2c);
    add_sample(accept_errors, {}, errs);
    add_sample(pipes, {}, sum_pipes);
    auto startups = startup_families(workers);
    return std::vector<prometheus::MetricFamily>{
        std::move(active), std::move(total),       std::move(bytes),      std::move(accept_errors),
        std::move(pipes),  std::move(startups[0]), std::move(startups[1])};
  });
  return m;
}

PolicyMetrics register_policy(Server& server) {
  auto& reg = server.registry();
  PolicyMetrics m;
  m.reloads = &prometheus::BuildCounter()
                   .Name("sshring_policy_reloads_total")
                   .Help("Policy and grant store reloads, by result (success|failure).")
                   .Register(reg);
  // Both series exist from start-up so `increase(...{result="failure"}[..])` alerts work immediately.
  m.reloads->Add({{"result", "success"}});
  m.reloads->Add({{"result", "failure"}});
  m.last_success = &prometheus::BuildGauge()
                        .Name("sshring_policy_last_reload_success_timestamp_seconds")
                        .Help("Unix time of the last successful policy load.")
                        .Register(reg)
                        .Add({});
  m.grants_active = &prometheus::BuildGauge()
                         .Name("sshring_grants_active")
                         .Help("Opt-out grants currently in force.")
                         .Register(reg)
                         .Add({});
  m.grants_expiring = &prometheus::BuildGauge()
                           .Name("sshring_grants_expiring_within_hour")
                           .Help("Grants in force that expire within the next hour.")
                           .Register(reg)
                           .Add({});
  m.grants_rejected = &prometheus::BuildCounter()
                           .Name("sshring_grants_rejected_total")
                           .Help(
                               "Stored grants refused at a reload (bad signature, unknown key, missing or "
                               "narrowed rule, ...), by reason; each grant counts once.")
                           .Register(reg);
  for (auto reason : common::kGrantRejectReasons) m.grants_rejected->Add({{"reason", std::string(reason)}});
  m.cache_write_failures =
      &prometheus::BuildCounter()
           .Name("sshring_policy_cache_write_failures_total")
           .Help(
               "Snapshots from the policy source that could not be written to the disk "
               "cache (--cache-dir); a restart during an etcd outage would start from an "
               "older one.")
           .Register(reg)
           .Add({});
  m.decisions_restored =
      &prometheus::BuildCounter()
           .Name("sshring_grant_decisions_restored_total")
           .Help(
               "Checks of a stored grant that lacked a signed revocation or denial this process had "
               "verified before: someone removed it from the grant store. It is applied anyway.")
           .Register(reg)
           .Add({});
  m.break_glass_live = &prometheus::BuildGauge()
                            .Name("sshring_grants_break_glass_active")
                            .Help("Break-glass grants currently in force.")
                            .Register(reg)
                            .Add({});
  m.reviews_overdue =
      &prometheus::BuildGauge()
           .Name("sshring_grants_review_overdue")
           .Help("Break-glass grants past their rule's review_within without a signed review.")
           .Register(reg)
           .Add({});
  m.source_up = &prometheus::BuildGauge()
                     .Name("sshring_policy_source_up")
                     .Help(
                         "1 while the policy source (etcd) is connected and the snapshot is current, "
                         "0 while deciding on the last good (cached) snapshot.")
                     .Register(reg);
  m.source_revision = &prometheus::BuildGauge()
                           .Name("sshring_policy_source_revision")
                           .Help("Store revision (etcd) the live snapshot is current to.")
                           .Register(reg);
  m.source_last_sync = &prometheus::BuildGauge()
                            .Name("sshring_policy_source_last_sync_timestamp_seconds")
                            .Help("Unix time the policy source last confirmed the snapshot is current.")
                            .Register(reg);
  m.source_staleness = &prometheus::BuildGauge()
                            .Name("sshring_policy_source_staleness_seconds")
                            .Help("Seconds since the policy source last confirmed the snapshot is current.")
                            .Register(reg);
  m.misplaced_grants = &prometheus::BuildCounter()
                            .Name("sshring_policy_source_misplaced_grants_total")
                            .Help(
                                "Grant values the policy source (etcd) skipped, each time seen, because "
                                "they are stored under another key than their grant's id.")
                            .Register(reg);
  return m;
}

void PolicyMetrics::reloaded(bool ok, int64_t now) {
  if (reloads) reloads->Add({{"result", ok ? "success" : "failure"}}).Increment();
  if (ok && last_success) last_success->Set(static_cast<double>(now));
}

void PolicyMetrics::grants(size_t live, size_t expiring_within_hour) {
  if (grants_active) grants_active->Set(static_cast<double>(live));
  if (grants_expiring) grants_expiring->Set(static_cast<double>(expiring_within_hour));
}

void PolicyMetrics::source(bool up, int64_t revision, int64_t last_sync, int64_t now) {
  if (!source_up) return;
  source_up->Add({}).Set(up ? 1 : 0);
  source_revision->Add({}).Set(static_cast<double>(revision));
  source_last_sync->Add({}).Set(static_cast<double>(last_sync));
  // Never synced (started from the cache): as stale as the Unix epoch, so the alert fires.
  source_staleness->Add({}).Set(static_cast<double>(last_sync > 0 ? now - last_sync : now));
  misplaced_grants->Add({});
}

void PolicyMetrics::source_misplaced(uint64_t total) {
  if (!misplaced_grants) return;
  // The counter follows the source's running total; reports come from more than one thread.
  static std::mutex mu;
  std::lock_guard lock(mu);
  auto& c = misplaced_grants->Add({});
  const double now = static_cast<double>(total);
  if (now > c.Value()) c.Increment(now - c.Value());
}

void PolicyMetrics::break_glass(size_t live, size_t reviews_overdue_now) {
  if (break_glass_live) break_glass_live->Set(static_cast<double>(live));
  if (reviews_overdue) reviews_overdue->Set(static_cast<double>(reviews_overdue_now));
}

void PolicyMetrics::grant_rejected(const std::string& reason) {
  if (grants_rejected) grants_rejected->Add({{"reason", reason}}).Increment();
}

void PolicyMetrics::cache_write_failed() {
  if (cache_write_failures) cache_write_failures->Increment();
}

void PolicyMetrics::decision_restored() {
  if (decisions_restored) decisions_restored->Increment();
}

// The kernel's degraded-path counters, live-flow enforcement, policy fit and pin health.
static void append_agent_enforcement(const AgentStats& s, std::vector<prometheus::MetricFamily>& out) {
  auto events = counter_family("sshring_agent_kernel_events_total",
                               "Degraded or enforced paths counted by the BPF programs, by event.");
  for (size_t i = 0; i < kNumKernelStats; ++i)
    add_sample(events, {{"event", kKernelStatNames[i]}}, static_cast<double>(s.kernel_events[i].value()));
  out.push_back(std::move(events));
  auto counter = [&](const char* name, const char* help, const LocalCounter& c) {
    auto f = counter_family(name, help);
    add_sample(f, {}, static_cast<double>(c.value()));
    out.push_back(std::move(f));
  };
  auto gauge = [&](const char* name, const char* help, const LocalGauge& g) {
    auto f = gauge_family(name, help);
    add_sample(f, {}, static_cast<double>(g.value()));
    out.push_back(std::move(f));
  };
  counter("sshring_agent_flows_seeded_total", "Flow entries made at start for connections already open.",
          s.flows_seeded);
  counter("sshring_agent_flows_retagged_total",
          "Live flows re-tagged because their grant expired or was revoked.", s.flows_retagged);
  counter("sshring_agent_flows_cut_total", "Live flows ended by enforce mode (SOCK_DESTROY).", s.flows_cut);
  counter("sshring_agent_flow_cut_errors_total", "Flows enforce mode refuses whose socket it could not end.",
          s.flow_cut_errors);
  counter("sshring_agent_refused_flows_without_socket_total",
          "Flows enforce mode refuses that have no local socket to end (a SYN that never became a "
          "connection, a forwarded flow).",
          s.flows_without_socket);
  gauge("sshring_agent_policy_fits", "1 when the whole policy fits the kernel maps, 0 when rules were cut.",
        s.policy_fits);
  gauge("sshring_agent_policy_rules_not_loaded", "Candidate rules left out of the kernel maps (fail closed).",
        s.rules_not_loaded);
  gauge("sshring_agent_pins_private",
        "1 when the pin dir is on a bpffs private to the agent's mount namespace (pins die with it).",
        s.pins_private);
  gauge("sshring_agent_interfaces_unwatched",
        "--iface interfaces the agent did not attach to (not Ethernet: their traffic passes unseen).",
        s.interfaces_unwatched);
}

void register_fleet(Server& server, std::function<std::optional<FleetStats>()> read) {
  server.add_collector([read = std::move(read)] {
    std::vector<prometheus::MetricFamily> out;
    const auto st = read();
    if (!st) return out;
    auto up =
        gauge_family("sshring_relay_fleet_sessions_up",
                     "1 when this relay's session counts are in etcd and the other relays' are watched; 0 "
                     "while it decides on the last counts it saw.");
    add_sample(up, {}, st->up ? 1 : 0);
    auto others = gauge_family("sshring_relay_fleet_sessions_others",
                               "Live sessions the other relays of the fleet report.");
    add_sample(others, {}, static_cast<double>(st->others));
    auto relays = gauge_family("sshring_relay_fleet_relays_others",
                               "Other relay processes that report session counts.");
    add_sample(relays, {}, static_cast<double>(st->relays));
    auto errors =
        counter_family("sshring_relay_fleet_sessions_errors_total",
                       "Failed etcd calls of the fleet session counts (writes, lease keep-alives, lists, "
                       "watches) and values that are not counts.");
    add_sample(errors, {}, static_cast<double>(st->errors));
    out.push_back(std::move(up));
    out.push_back(std::move(others));
    out.push_back(std::move(relays));
    out.push_back(std::move(errors));
    if (st->claims) {
      auto claims = counter_family(
          "sshring_relay_replay_claims_total",
          "Preamble nonces claimed in etcd for every relay with this relay id, by answer: fresh, replayed "
          "(refused), unavailable (etcd unreachable: decided on the local replay cache, or refused with "
          "--shared-replay require), failed (etcd refused or too many claims waiting: refused).");
      add_sample(claims, {{"result", "fresh"}}, static_cast<double>(st->fresh));
      add_sample(claims, {{"result", "replayed"}}, static_cast<double>(st->replayed));
      add_sample(claims, {{"result", "unavailable"}}, static_cast<double>(st->unavailable));
      add_sample(claims, {{"result", "failed"}}, static_cast<double>(st->failed));
      out.push_back(std::move(claims));
    }
    return out;
  });
}

void register_agent(Server& server, const AgentStats* stats) {
  server.add_collector([stats] {
    auto flows = counter_family("sshring_bypass_flows_total", "Direct SSH flows seen by the agent, by tag.");
    auto bytes =
        counter_family("sshring_bypass_bytes_total", "Bytes of direct SSH flows (both directions), by tag.");
    for (size_t i = 0; i < kNumFlowTags; ++i) {
      add_sample(flows, {{"tag", kFlowTagNames[i]}}, static_cast<double>(stats->flows_by_tag[i].value()));
      add_sample(bytes, {{"tag", kFlowTagNames[i]}}, static_cast<double>(stats->bytes_by_tag[i].value()));
    }
    auto drops = counter_family("sshring_agent_ringbuf_drops_total",
                                "Flow events the BPF programs could not reserve in the ring buffer.");
    add_sample(drops, {}, static_cast<double>(stats->ringbuf_drops.value()));
    auto full =
        counter_family("sshring_agent_map_full_total", "Flow inserts refused because the flow map was full.");
    add_sample(full, {}, static_cast<double>(stats->map_full.value()));
    auto evicted = counter_family("sshring_agent_flows_evicted_total",
                                  "Flows removed by the agent's idle sweep, not by a close.");
    add_sample(evicted, {}, static_cast<double>(stats->flows_evicted.value()));
    auto tracked = gauge_family("sshring_agent_flows_tracked", "Flows currently in the BPF flow map.");
    add_sample(tracked, {}, static_cast<double>(stats->flows_tracked.value()));
    auto enforce =
        gauge_family("sshring_agent_enforce_mode", "1 when unapproved SYNs are dropped, 0 when only tagged.");
    add_sample(enforce, {}, static_cast<double>(stats->enforce.value()));
    std::vector<prometheus::MetricFamily> out{std::move(flows),  std::move(bytes),   std::move(drops),
                                              std::move(full),   std::move(evicted), std::move(tracked),
                                              std::move(enforce)};
    append_agent_enforcement(*stats, out);
    return out;
  });
}

}  // namespace sshring::metrics
