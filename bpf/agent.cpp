#include "bpf/agent.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <net/if.h>
#include <time.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <thread>

#include "bpf/kernel_policy.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/log.h"
#include "metrics/audit.h"
#include "metrics/catalog.h"
#include "metrics/server.h"
#include "policy/cache.h"
#include "policy/flow_tag.h"
#include "policy/snapshot.h"

namespace sshring::bpf {

using common::log_info;
using common::log_warn;

namespace {

using common::clock_ns;

std::string addr_string(const uint32_t a[4], uint8_t family) {
  char buf[INET6_ADDRSTRLEN] = {};
  ::inet_ntop(family == 4 ? AF_INET : AF_INET6, a, buf, sizeof(buf));
  return buf;
}

// Boot-time ns (what the kernel stamps) -> RFC 3339 with milliseconds, like the audit envelope.
std::string rfc3339_from_boot(uint64_t boot_ns) {
  int64_t unix_ns = static_cast<int64_t>(boot_ns) + clock_ns(CLOCK_REALTIME) - clock_ns(CLOCK_BOOTTIME);
  time_t secs = unix_ns / 1000000000;
  tm t{};
  ::gmtime_r(&secs, &t);
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", t.tm_year + 1900, t.tm_mon + 1,
                t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, static_cast<int>((unix_ns / 1000000) % 1000));
  return buf;
}

const char* end_name(uint8_t reason) {
  switch (reason) {
    case SSHRING_CLOSE_FIN:
      return "fin";
    case SSHRING_CLOSE_RST:
      return "rst";
    case SSHRING_CLOSE_LOCAL:
      return "local_close";
    default:
      return "evicted";
  }
}

std::string tag_name(uint8_t tag) {
  if (tag < 1 || tag > 4) return "unknown";
  return std::string(policy::flow_tag_name(static_cast<policy::FlowTag>(tag)));
}

class Agent {
 public:
  explicit Agent(const AgentOptions& opts) : opts_(opts) {}

  void run(const std::atomic<bool>& stop) {
    check_environment();
    if (opts_.ifaces.empty())
      throw common::UsageError("--iface is required (e.g. --iface eth0 or --iface eth0,eth1)");
    std::vector<int> ifindexes;
    for (const auto& name : opts_.ifaces) ifindexes.push_back(ifindex_of(name));

    if (!opts_.metrics_listen.empty()) {
      server_ = std::make_unique<metrics::Server>(opts_.metrics_listen, "agent");
      metrics::register_agent(*server_, &stats_);
      policy_metrics_ = metrics::register_policy(*server_);
      log_info("agent: metrics exporter listening",
               {{"addr", opts_.metrics_listen}, {"port", std::to_string(server_->port())}});
    }
    if (!opts_.audit_path.empty())
      audit_ = std::make_unique<metrics::AuditLog>(metrics::AuditOptions{
          .path = opts_.audit_path, .component = "agent", .syslog = opts_.audit_syslog});

    policy::ReloaderOptions ro;
    ro.policy_path = opts_.policy_path;
    ro.grant_store = opts_.grant_store;
    ro.observer = policy::observe(server_ ? &policy_metrics_ : nullptr);
    ro.source = opts_.source;  // etcd (set by the CLI): policy_path is then unused
    if (opts_.cache_dir) ro.cache_dir = *opts_.cache_dir;
    reloader_ = std::make_unique<policy::Reloader>(cache_, ro);
    reloader_->reload_or_throw();

    obj_ =
        std::make_unique<BpfObject>(BpfObject::Options{.pin_dir = opts_.pin_dir, .attach_tracepoint = true});
    log_info("agent: BPF programs loaded",
             {{"pin_dir", opts_.pin_dir}, {"maps", obj_->reused_pins() ? "reused" : "created"}});
    sync_ = std::make_unique<MapSync>(*obj_);
    sync_policy();
    obj_->set_enforce(opts_.enforce);
    stats_.enforce.set(opts_.enforce ? 1 : 0);

    for (size_t i = 0; i < ifindexes.size(); i++) {
      for (bool ingress : {true, false}) {
        TcHook hook(ifindexes[i], ingress, ingress ? obj_->ingress_fd() : obj_->egress_fd());
        hook.keep();  // stays attached after exit: counting continues across restarts
        if (hook.created_qdisc()) {
          uint32_t key = static_cast<uint32_t>(ifindexes[i]), one = 1;
          bpf_map_update_elem(obj_->map_fd("ifaces"), &key, &one, BPF_ANY);
        }
        log_info("agent: attached", {{"iface", opts_.ifaces[i]},
                                     {"hook", ingress ? "ingress" : "egress"},
                                     {"prog_id", std::to_string(hook.prog_id())},
                                     {"replaced_previous", hook.replaced() ? "true" : "false"}});
      }
    }
    reloader_->start();

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
      if (cache_.generation() != synced_generation_) sync_policy();
      if (std::chrono::steady_clock::now() >= next_tick) {
        next_tick += opts_.tick;
        tick();
      }
    }
    ring_buffer__consume(rb);
    if (audit_) audit_->flush();
    reloader_->stop();
    log_info("agent: stopped; programs stay attached and maps pinned", {{"pin_dir", opts_.pin_dir}});
  }

 private:
  void sync_policy() {
    auto snap = cache_.current();
    synced_generation_ = cache_.generation();
    if (!snap) return;
    obj_->sync_clock();
    auto r = sync_->apply(KernelPolicy::from_snapshot(*snap));
    log_info("agent: kernel maps synced with policy", {{"generation", std::to_string(snap->generation())},
                                                       {"added", std::to_string(r.added)},
                                                       {"removed", std::to_string(r.removed)},
                                                       {"changed", std::to_string(r.changed)}});
    if (audit_)
      audit_->append({{"type", "policy_reload"},
                      {"result", "success"},
                      {"version", std::to_string(snap->generation())}});
  }

  static int on_event(void* ctx, void* data, size_t size) {
    if (size < sizeof(sshring_event)) return 0;
    sshring_event ev;
    std::memcpy(&ev, data, sizeof(ev));
    static_cast<Agent*>(ctx)->handle(ev);
    return 0;
  }

  void handle(const sshring_event& ev) {
    nlohmann::json flow = {{"src", addr_string(ev.key.client, ev.key.family)},
                           {"dst", addr_string(ev.key.server, ev.key.family)},
                           {"sport", ev.key.client_port},
                           {"dport", ev.key.server_port},
                           {"proto", "tcp"}};
    std::string grant = sync_->grant_name(ev.grant);
    nlohmann::json rec = {{"type", ev.type == SSHRING_EV_CLOSE ? "flow_close" : "flow_open"},
                          {"flow", flow},
                          {"tag", tag_name(ev.tag)},
                          {"first_seen", rfc3339_from_boot(ev.first_ns)}};
    if (!grant.empty()) rec["grant_id"] = grant;
    if (ev.type == SSHRING_EV_DENY) rec["enforced"] = true;
    if (ev.type == SSHRING_EV_CLOSE) {
      rec["packets_in"] = ev.packets[0];
      rec["packets_out"] = ev.packets[1];
      rec["bytes_in"] = ev.bytes[0];
      rec["bytes_out"] = ev.bytes[1];
      rec["last_seen"] = rfc3339_from_boot(ev.last_ns);
      rec["end"] = end_name(ev.reason);
    }
    common::log_debug("agent: flow event", {{"record", rec.dump()}});
    if (audit_) audit_->append(std::move(rec));
  }

  // Clock offset, metrics from the kernel's counters, and the idle sweep.
  void tick() {
    obj_->sync_clock();
    auto st = obj_->stat_counters();
    stats_.ringbuf_drops.add(st[SSHRING_STAT_RINGBUF_FULL] - last_stats_[SSHRING_STAT_RINGBUF_FULL]);
    stats_.map_full.add(st[SSHRING_STAT_FLOW_MAP_FULL] - last_stats_[SSHRING_STAT_FLOW_MAP_FULL]);
    last_stats_ = st;
    auto tags = obj_->tag_counters();
    for (int t = 1; t < SSHRING_NUM_TAGS; t++) {
      stats_.flows_by_tag[t - 1].add(tags[t].flows - last_tags_[t].flows);
      stats_.bytes_by_tag[t - 1].add(tags[t].bytes - last_tags_[t].bytes);
    }
    last_tags_ = tags;
    sweep_idle();
  }

  void sweep_idle() {
    int fd = obj_->map_fd("flows");
    const uint64_t now = static_cast<uint64_t>(clock_ns(CLOCK_BOOTTIME));
    const uint64_t idle_ns = static_cast<uint64_t>(opts_.idle_timeout.count()) * 1000000000ull;
    sshring_flow_key key{}, next{};
    const void* prev = nullptr;
    std::vector<std::pair<sshring_flow_key, sshring_flow>> idle;
    int64_t tracked = 0;
    while (bpf_map_get_next_key(fd, prev, &next) == 0) {
      sshring_flow f{};
      if (bpf_map_lookup_elem(fd, &next, &f) == 0) {
        tracked++;
        if (now > f.last_ns && now - f.last_ns > idle_ns) idle.emplace_back(next, f);
      }
      key = next;
      prev = &key;
    }
    for (auto& [k, f] : idle) {
      // Delete first: if the kernel closed it meanwhile, it already reported the close.
      if (bpf_map_delete_elem(fd, &k) != 0) continue;
      sshring_event ev{};
      ev.type = SSHRING_EV_CLOSE;
      ev.tag = f.tag;
      ev.reason = SSHRING_CLOSE_IDLE;
      ev.grant = f.grant;
      ev.key = k;
      ev.first_ns = f.first_ns;
      ev.last_ns = f.last_ns;
      std::memcpy(ev.packets, f.packets, sizeof(ev.packets));
      std::memcpy(ev.bytes, f.bytes, sizeof(ev.bytes));
      handle(ev);
      stats_.flows_evicted.add();
      tracked--;
    }
    stats_.flows_tracked.set(tracked);
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
  uint64_t synced_generation_ = 0;
  std::vector<uint64_t> last_stats_;
  std::vector<sshring_tag_counters> last_tags_;
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
    if (ifmap) bpf_map_lookup_elem(ifmap.get(), &key, &created);
    int n = detach_tc(idx, created != 0);
    if (ifmap) bpf_map_delete_elem(ifmap.get(), &key);
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
