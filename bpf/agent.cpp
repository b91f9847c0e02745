#include "bpf/agent.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <net/if.h>
#include <time.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <thread>

#include "bpf/abi_check.h"
#include "bpf/kernel_policy.h"
#include "bpf/live_flows.h"
#include "bpf/pin_check.h"
#include "bridge/grant_records.h"
#include "common/error.h"
#include "common/log.h"
#include "metrics/audit.h"
#include "metrics/audit_metrics.h"
#include "metrics/audit_types.h"
#include "metrics/catalog.h"
#include "metrics/server.h"
#include "policy/cache.h"
#include "policy/flow_tag.h"
#include "policy/local_addresses.h"
#include "policy/snapshot.h"

namespace sshring::bpf {

using common::log_info;
using common::log_warn;

namespace {

const char* end_name(uint8_t reason) {
  switch (reason) {
    case SSHRING_CLOSE_FIN:
      return "fin";
    case SSHRING_CLOSE_RST:
      return "rst";
    case SSHRING_CLOSE_LOCAL:
      return "local_close";
    case SSHRING_CLOSE_REOPEN:
      return "reopened";
    default:
      return "evicted";
  }
}

std::string tag_name(uint8_t tag) {
  if (tag < 1 || tag > 4) return "unknown";
  return std::string(policy::flow_tag_name(static_cast<policy::FlowTag>(tag)));
}

// Rules array size when no --max-rules is given: room for the start-up policy to double.
size_t auto_max_rules(const policy::Snapshot* snap) {
  if (!snap) return SSHRING_DEFAULT_MAX_RULES;
  FoldedPolicy fp = fold_policy(KernelPolicy::from_snapshot(*snap), SIZE_MAX);
  return std::max<size_t>(SSHRING_DEFAULT_MAX_RULES, 2 * fp.rules_wanted);
}

class Agent {
 public:
  explicit Agent(const AgentOptions& opts) : opts_(opts) {}

  void run(const std::atomic<bool>& stop) {
    check_environment();
    if (opts_.ifaces.empty())
      throw common::UsageError("--iface is required (e.g. --iface eth0 or --iface eth0,eth1)");
    std::vector<int> ifindexes;
    std::string refused;
    for (const auto& name : opts_.ifaces) {
      const int idx = attachable_ifindex(name, &refused);
      if (idx >= 0) {
        ifindexes.push_back(idx);
        continue;
      }
      // Refusing to start would leave an older agent's programs attached everywhere with maps no
      // one syncs (revocations never arrive). Run on the rest, and take ours off this one.
      std::string removed;
      try {
        removed = std::to_string(detach_tc(ifindex_of(name), false));
      } catch (const std::exception& e) {  // serving the others matters more than this cleanup
        removed = std::string("failed: ") + e.what();
      }
      common::log_error("agent: not attaching to an interface it cannot see into; serving the others",
                        {{"iface", name}, {"filters_removed", removed}, {"error", refused}});
    }
    if (ifindexes.empty()) throw common::UsageError(refused);
    stats_.interfaces_unwatched.set(static_cast<int64_t>(opts_.ifaces.size() - ifindexes.size()));
    start_outputs();
    load();
    attach(ifindexes);
    // Seed after attaching (a connection set up meanwhile is in the dump), enforce after seeding.
    if (auto snap = cache_.current()) {
      refresh_local();
      size_t n = live_->seed(*snap, ::time(nullptr), local_);
      log_info("agent: seeded flow entries for open connections", {{"flows", std::to_string(n)}});
    }
    obj_->set_enforce(opts_.enforce);
    stats_.enforce.set(opts_.enforce ? 1 : 0);
    walk_live();
    reloader_->start();
    loop(stop);
    if (server_ && audit_) server_->stop();  // no scrape reads the audit log once it closes
    if (audit_) audit_->flush();
    reloader_->stop();
    log_info("agent: stopped; programs stay attached and maps pinned", {{"pin_dir", opts_.pin_dir}});
  }

 private:
  void start_outputs() {
    if (!opts_.metrics_listen.empty()) {
      server_ = std::make_unique<metrics::Server>(opts_.metrics_listen, "agent");
      metrics::register_agent(*server_, &stats_);
      policy_metrics_ = metrics::register_policy(*server_);
      log_info("agent: metrics exporter listening",
               {{"addr", opts_.metrics_listen}, {"port", std::to_string(server_->port())}});
    }
    if (!opts_.audit_path.empty())
      audit_ = std::make_unique<metrics::AuditLog>(
          metrics::AuditOptions{.path = opts_.audit_path,
                                .component = "agent",
                                .syslog = opts_.audit_syslog,
                                .syslog_socket = opts_.audit_syslog_socket,
                                .key_path = opts_.audit_key});
    if (audit_ && server_) metrics::register_audit(*server_, audit_.get());

    policy::ReloaderOptions ro;
    ro.policy_path = opts_.policy_path;
    ro.grant_store = opts_.grant_store;
    ro.observer = policy::observe(server_ ? &policy_metrics_ : nullptr);
    ro.source = opts_.source;  // etcd (set by the CLI): policy_path is then unused
    if (opts_.cache_dir) ro.cache_dir = *opts_.cache_dir;
    // Revocations and denials this process verified outlive their removal from the store; on disk
    // where a cache directory is in use (given, or the default one with a source).
    if (opts_.cache_dir || ro.source) ro.ledger_path = policy::decision_ledger_path(ro.cache_dir);
    // Counted by the observer; the audit record is written here.
    ro.on_grant_rejected = [this](const policy::CheckedGrant& c) {
      if (audit_) audit_->append(bridge::grant_reject_record(c));
    };
    reloader_ = std::make_unique<policy::Reloader>(cache_, ro);
    reloader_->reload_or_throw();
  }

  void load() {
    ensure_bpffs_dir(opts_.pin_dir);
    PinScope scope = pin_scope(opts_.pin_dir);
    stats_.pins_private.set(scope == PinScope::kPrivate ? 1 : 0);
    if (scope == PinScope::kPrivate)
      log_warn(
          "agent: PINS ARE PRIVATE: the bpffs under --pin-dir is mounted only in this agent's mount "
          "namespace (ip netns exec, or a container without the host's /sys/fs/bpf); maps and programs "
          "vanish when the agent exits, so a restart starts from zero. Mount a bpffs the host shares and "
          "point --pin-dir at it (docs/agent.md, In a network namespace)",
          {{"pin_dir", opts_.pin_dir}});
    size_t max_rules = opts_.max_rules ? opts_.max_rules : auto_max_rules(cache_.current().get());
    obj_ = std::make_unique<BpfObject>(
        BpfObject::Options{.pin_dir = opts_.pin_dir, .attach_tracepoint = true, .max_rules = max_rules});
    log_info("agent: BPF programs loaded", {{"pin_dir", opts_.pin_dir},
                                            {"maps", obj_->reused_pins() ? "reused" : "created"},
                                            {"rule_capacity", std::to_string(obj_->rule_capacity())}});
    sync_ = std::make_unique<MapSync>(*obj_);
    live_ = std::make_unique<LiveFlows>(*obj_, *sync_, stats_,
                                        [this](nlohmann::json rec) { report(std::move(rec)); });
    sync_policy();
  }

  void attach(const std::vector<int>& ifindexes) {
    for (size_t i = 0; i < ifindexes.size(); i++) {
      // By index: --iface may list interfaces that were skipped, so its positions do not match.
      char name[IF_NAMESIZE] = {};
      const std::string iface = ::if_indextoname(static_cast<unsigned>(ifindexes[i]), name)
                                    ? std::string(name)
                                    : "ifindex " + std::to_string(ifindexes[i]);
      for (bool ingress : {true, false}) {
        TcHook hook(ifindexes[i], ingress, ingress ? obj_->ingress_fd() : obj_->egress_fd());
        hook.keep();  // stays attached after exit: counting continues across restarts
        if (hook.created_qdisc()) {
          uint32_t key = static_cast<uint32_t>(ifindexes[i]), one = 1;
          if (bpf_map_update_elem(obj_->map_fd("ifaces"), &key, &one, BPF_ANY) != 0)
            common::throw_errno("record created qdisc in ifaces map");
        }
        log_info("agent: attached", {{"iface", iface},
                                     {"hook", ingress ? "ingress" : "egress"},
                                     {"prog_id", std::to_string(hook.prog_id())},
                                     {"replaced_previous", hook.replaced() ? "true" : "false"}});
      }
    }
  }

  void loop(const std::atomic<bool>& stop) {
    ring_buffer* rb = ring_buffer__new(obj_->events_fd(), &Agent::on_event, this, nullptr);
    if (!rb) common::throw_errno("ring_buffer__new");
    std::unique_ptr<ring_buffer, void (*)(ring_buffer*)> rb_owner(rb, ring_buffer__free);
    // The kernel's counters live in pinned maps and keep counting while no agent runs. Exporting them
    // from zero (not from their value at start) makes the metrics cumulative across agent restarts,
    // so flows seen while the agent was down are not lost from sshring_bypass_*_total.
    last_stats_.assign(obj_->stat_counters().size(), 0);
    last_tags_.assign(obj_->tag_counters().size(), sshring_tag_counters{});
    auto next_tick = std::chrono::steady_clock::now();
    log_info("agent: running", {{"ifaces", std::to_string(opts_.ifaces.size())},
                                {"enforce", opts_.enforce ? "true" : "false"}});
    while (!stop.load()) {
      int n = ring_buffer__poll(rb, 100);
      if (n < 0 && n != -EINTR) log_warn("agent: ring buffer poll failed", {{"error", std::strerror(-n)}});
      if (cache_.generation() != synced_generation_) {
        sync_policy();
        walk_live();  // revocations end live flows now, not at the next tick
      }
      if (std::chrono::steady_clock::now() >= next_tick) {
        next_tick += opts_.tick;
        tick();
      }
    }
    if (int n = ring_buffer__consume(rb); n < 0)
      log_warn("agent: ring buffer drain failed", {{"error", std::strerror(-n)}});
  }

  void sync_policy() {
    auto snap = cache_.current();
    synced_generation_ = cache_.generation();
    if (!snap) return;
    obj_->sync_clock();
    refresh_local();
    auto r = sync_->apply(KernelPolicy::from_snapshot(*snap, local_));
    stats_.policy_fits.set(r.truncated == 0 ? 1 : 0);
    stats_.rules_not_loaded.set(static_cast<int64_t>(r.truncated));
    if (r.truncated)
      common::log_error(
          "agent: POLICY DOES NOT FIT the kernel rules map; the earliest-expiring candidate rules of the "
          "longest source lists are not loaded, so flows only they approve are refused (enforce mode) "
          "or tagged unapproved/expired; restart the agent (it sizes the map from the policy) or raise "
          "--max-rules",
          {{"generation", std::to_string(snap->generation())},
           {"rules_not_loaded", std::to_string(r.truncated)},
           {"rule_capacity", std::to_string(r.rule_capacity)}});
    log_info("agent: kernel maps synced with policy", {{"generation", std::to_string(snap->generation())},
                                                       {"added", std::to_string(r.added)},
                                                       {"removed", std::to_string(r.removed)},
                                                       {"changed", std::to_string(r.changed)},
                                                       {"rules", std::to_string(r.rules_loaded)}});
    report(metrics::PolicyReload{.version = std::to_string(snap->generation())}.to_json());
  }

  // True if this namespace's addresses changed. A failed listing keeps the last one.
  bool refresh_local() {
    try {
      auto now = policy::local_addresses();
      if (now == local_) return false;
      local_ = std::move(now);
      return true;
    } catch (const std::exception& e) {
      log_warn("agent: cannot list local addresses; keeping the last list", {{"error", e.what()}});
      return false;
    }
  }

  void walk_live() {
    auto snap = cache_.current();
    if (snap) live_->walk(*snap, ::time(nullptr), opts_.enforce, opts_.idle_timeout);
  }

  void report(nlohmann::json rec) {
    common::log_debug("agent: audit record", {{"record", rec.dump()}});
    if (audit_) audit_->append(std::move(rec));
  }

  static int on_event(void* ctx, void* data, size_t size) {
    if (size < sizeof(sshring_event)) return 0;
    sshring_event ev;
    std::memcpy(&ev, data, sizeof(ev));
    static_cast<Agent*>(ctx)->handle(ev);
    return 0;
  }

  void handle(const sshring_event& ev) {
    metrics::FlowKey flow = LiveFlows::flow_key(ev.key);
    std::string grant = sync_->grant_name(ev.grant);
    nlohmann::json rec =
        ev.type == SSHRING_EV_CLOSE
            ? metrics::FlowClose{.flow = flow,
                                 .tag = tag_name(ev.tag),
                                 .grant_id = grant,
                                 .packets_in = ev.packets[0],
                                 .packets_out = ev.packets[1],
                                 .bytes_in = ev.bytes[0],
                                 .bytes_out = ev.bytes[1],
                                 .first_seen = LiveFlows::rfc3339_from_boot(ev.first_ns),
                                 .last_seen = LiveFlows::rfc3339_from_boot(ev.last_ns),
                                 .end = end_name(ev.reason)}
                  .to_json()
            : metrics::FlowOpen{.flow = flow,
                                .tag = tag_name(ev.tag),
                                .grant_id = grant,
                                .first_seen = LiveFlows::rfc3339_from_boot(ev.first_ns),
                                .enforced =
                                    ev.type == SSHRING_EV_DENY ? std::optional<bool>(true) : std::nullopt}
                  .to_json();
    report(std::move(rec));
  }

  // Clock offset, metrics from the kernel's counters, and the live-flow walk.
  void tick() {
    obj_->sync_clock();
    auto st = obj_->stat_counters();
    for (size_t i = 0; i < st.size() && i < metrics::kNumKernelStats; i++)
      stats_.kernel_events[i].add(st[i] - last_stats_[i]);
    stats_.ringbuf_drops.add(st[SSHRING_STAT_RINGBUF_FULL] - last_stats_[SSHRING_STAT_RINGBUF_FULL]);
    stats_.map_full.add(st[SSHRING_STAT_FLOW_MAP_FULL] - last_stats_[SSHRING_STAT_FLOW_MAP_FULL]);
    last_stats_ = st;
    auto tags = obj_->tag_counters();
    for (int t = 1; t < SSHRING_NUM_TAGS; t++) {
      stats_.flows_by_tag[t - 1].add(tags[t].flows - last_tags_[t].flows);
      stats_.bytes_by_tag[t - 1].add(tags[t].bytes - last_tags_[t].bytes);
    }
    last_tags_ = tags;
    // An address added since (DHCP, a new interface, a VIP) is protected within a tick.
    if (auto snap = cache_.current(); snap && refresh_local()) {
      log_info("agent: local addresses changed; protecting them", {});
      sync_policy();
    }
    walk_live();
  }

  AgentOptions opts_;
  metrics::AgentStats stats_;
  metrics::PolicyMetrics policy_metrics_;
  std::unique_ptr<metrics::Server> server_;
  std::unique_ptr<metrics::AuditLog> audit_;
  policy::PolicyCache cache_;
  std::unique_ptr<policy::Reloader> reloader_;
  std::unique_ptr<BpfObject> obj_;
  std::unique_ptr<MapSync> sync_;
  std::unique_ptr<LiveFlows> live_;
  uint64_t synced_generation_ = 0;
  std::vector<uint64_t> last_stats_;
  std::vector<sshring_tag_counters> last_tags_;
  std::vector<policy::IpAddr> local_;  // this namespace's addresses at the last policy sync
};

}  // namespace

void run_agent(const AgentOptions& opts, const std::atomic<bool>& stop) {
  Agent(opts).run(stop);
}

int detach_agent(const std::vector<std::string>& ifaces, const std::string& pin_dir) {
  check_environment();
  if (ifaces.empty()) throw common::UsageError("--detach needs --iface IFACE[,IFACE]");
  std::string ifaces_pin = pin_dir + "/maps/ifaces";
  common::UniqueFd ifmap(bpf_obj_get(ifaces_pin.c_str()));
  int removed = 0;
  for (const auto& name : ifaces) {
    int idx = ifindex_of(name);
    uint32_t key = static_cast<uint32_t>(idx), created = 0;
    if (ifmap && bpf_map_lookup_elem(ifmap.get(), &key, &created) != 0) created = 0;  // not ours
    int n = detach_tc(idx, created != 0);
    if (ifmap && bpf_map_delete_elem(ifmap.get(), &key) != 0 && errno != ENOENT)
      log_warn("agent: cannot clear the ifaces map entry",
               {{"iface", name}, {"error", std::strerror(errno)}});
    log_info("agent: detached", {{"iface", name},
                                 {"filters_removed", std::to_string(n)},
                                 {"qdisc_removed", created ? "true" : "false"}});
    removed += n;
  }
  // The pins go with the last interface (the ifaces map only lists those where we made the qdisc,
  // so also check that none of our filters remain anywhere we can see).
  bool any_left = false;
  if (ifmap) {
    uint32_t k = 0;
    any_left = bpf_map_get_next_key(ifmap.get(), nullptr, &k) == 0;
  }
  if (!any_left) {
    struct if_nameindex* all = ::if_nameindex();
    for (struct if_nameindex* i = all; all && i->if_index != 0; i++) {
      for (bool ingress : {true, false}) {
        try {
          auto slot = query_tc_slot(static_cast<int>(i->if_index), ingress);
          if (slot && (slot->prog_name == kIngressProgName || slot->prog_name == kEgressProgName))
            any_left = true;
        } catch (const std::exception&) {
          // An interface we cannot query holds nothing of ours that we could remove either.
        }
      }
    }
    if (all) if_freenameindex(all);
  }
  if (!any_left) {
    remove_pins(pin_dir);
    log_info("agent: no interface left; pins removed", {{"pin_dir", pin_dir}});
  }
  return removed;
}

}  // namespace sshring::bpf
