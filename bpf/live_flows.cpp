#include "bpf/live_flows.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <time.h>

#include <cstring>

#include "bpf/kernel_policy.h"
#include "bpf/loader.h"
#include "bpf/map_iter.h"
#include "bpf/sock_diag.h"
#include "common/civil_time.h"
#include "common/clock.h"
#include "common/log.h"
#include "metrics/audit_types.h"
#include "metrics/catalog.h"
#include "policy/flow_tag.h"
#include "policy/snapshot.h"

namespace sshring::bpf {

namespace {

using common::clock_ns;

policy::IpAddr ip_of(const uint32_t a[4], uint8_t family) {
  policy::IpAddr ip;
  ip.family = family;
  std::memcpy(ip.bytes.data(), a, family == 4 ? 4 : 16);
  return ip;
}

std::string addr_string(const uint32_t a[4], uint8_t family) {
  char buf[INET6_ADDRSTRLEN] = {};
  ::inet_ntop(family == 4 ? AF_INET : AF_INET6, a, buf, sizeof(buf));
  return buf;
}

bool tag_allowed(uint8_t tag) {
  return tag == SSHRING_TAG_PROXIED || tag == SSHRING_TAG_APPROVED;
}

std::string tag_name(uint8_t tag) {
  if (tag < 1 || tag > 4) return "unknown";
  return std::string(policy::flow_tag_name(static_cast<policy::FlowTag>(tag)));
}

std::vector<uint8_t> key_bytes(const sshring_flow_key& k) {
  auto* b = reinterpret_cast<const uint8_t*>(&k);
  return {b, b + sizeof(k)};
}

policy::FlowClass classify(const policy::Snapshot& snap, const sshring_flow_key& k, int64_t now) {
  return snap.classify_flow(ip_of(k.client, k.family), ip_of(k.server, k.family), k.server_port, now);
}

}  // namespace

metrics::FlowKey LiveFlows::flow_key(const sshring_flow_key& k) {
  return {addr_string(k.client, k.family), addr_string(k.server, k.family), k.client_port, k.server_port,
          "tcp"};
}

nlohmann::json LiveFlows::flow_json(const sshring_flow_key& k) {
  const metrics::FlowKey f = flow_key(k);
  return {{"src", f.src}, {"dst", f.dst}, {"sport", f.sport}, {"dport", f.dport}, {"proto", f.proto}};
}

std::string LiveFlows::rfc3339_from_boot(uint64_t boot_ns) {
  const int64_t unix_ns = static_cast<int64_t>(boot_ns) + common::realtime_minus_boottime_ns();
  return common::format_rfc3339_ms(common::floor_div(unix_ns, 1'000'000));
}

nlohmann::json LiveFlows::close_record(const sshring_flow_key& k, const sshring_flow& f, const char* end,
                                       const std::string& grant) {
  return metrics::FlowClose{.flow = flow_key(k),
                            .tag = tag_name(f.tag),
                            .grant_id = grant,
                            .packets_in = f.packets[0],
                            .packets_out = f.packets[1],
                            .bytes_in = f.bytes[0],
                            .bytes_out = f.bytes[1],
                            .first_seen = rfc3339_from_boot(f.first_ns),
                            .last_seen = rfc3339_from_boot(f.last_ns),
                            .end = end}
      .to_json();
}

size_t LiveFlows::seed(const policy::Snapshot& snap, int64_t now_unix,
                       const std::vector<policy::IpAddr>& local) {
  // What the kernel protects, unlisted local addresses included: a connection to one of those that
  // got no entry would be dropped as untracked in enforce mode.
  const KernelPolicy kp = KernelPolicy::from_snapshot(snap, local);
  auto protects = [&](const policy::IpAddr& a, uint16_t port) {
    for (const auto& d : kp.protected_dsts) {
      if (!d.dst.contains(a)) continue;
      for (const auto& r : d.ports)
        if (port >= r.lo && port <= r.hi) return true;
    }
    return false;
  };
  std::vector<TcpSocket> socks;
  if (int rc = dump_tcp(live_tcp_states(), &socks); rc < 0) {
    common::log_warn("agent: cannot list open TCP connections (inet_diag); none seeded",
                     {{"error", std::strerror(-rc)}});
    return 0;
  }
  const int fd = obj_.map_fd("flows");
  const uint64_t boot = static_cast<uint64_t>(clock_ns(CLOCK_BOOTTIME));
  size_t made = 0;
  for (const TcpSocket& s : socks) {
    if (!protects(ip_of(s.key.server, s.key.family), s.key.server_port)) continue;
    auto cls = classify(snap, s.key, now_unix);
    sshring_flow f{};
    f.tag = static_cast<uint8_t>(cls.tag);
    f.grant = cls.id.empty() ? 0 : sync_.number_for(std::string(cls.id));
    f.expires_unix = cls.tag == policy::FlowTag::kBypassApproved ? cls.expires : 0;
    f.first_ns = f.last_ns = boot;
    f.origin = SSHRING_ORIGIN_SEEDED;
    // NOEXIST: an entry the kernel (or a previous agent) made is better than ours.
    if (bpf_map_update_elem(fd, &s.key, &f, BPF_NOEXIST) != 0) continue;
    made++;
    stats_.flows_seeded.add();
    report_(metrics::FlowOpen{.flow = flow_key(s.key),
                              .tag = tag_name(f.tag),
                              .grant_id = std::string(cls.id),
                              .first_seen = rfc3339_from_boot(boot),
                              .seeded = true}
                .to_json());
  }
  return made;
}

// Only downgrades: a flow the kernel let in whose cover is gone. (An unapproved flow that a later
// grant would cover keeps the tag it was opened with.)
bool LiveFlows::retag(const policy::Snapshot& snap, int64_t now, const sshring_flow_key& k, sshring_flow& f) {
  if (!tag_allowed(f.tag)) return false;
  auto cls = classify(snap, k, now);
  if (tag_allowed(static_cast<uint8_t>(cls.tag))) return false;
  f.tag = static_cast<uint8_t>(cls.tag);
  // The grant that admitted the flow is the one whose end re-tags it; the policy's best cover now
  // may be another ended grant (ties break by id). Only a flow that had none takes that one's name.
  if (f.grant == 0 && !cls.id.empty()) f.grant = sync_.number_for(std::string(cls.id));
  f.expires_unix = 0;
  // BPF_EXIST: if the kernel closed it meanwhile, nothing to re-tag. Concurrent counter adds of the
  // kernel between our read and this write are lost (a few packets, once per flow).
  if (bpf_map_update_elem(obj_.map_fd("flows"), &k, &f, BPF_EXIST) != 0) return false;
  stats_.flows_retagged.add();
  common::log_info(
      "agent: live flow re-tagged",
      {{"flow", flow_json(k).dump()}, {"tag", tag_name(f.tag)}, {"grant", sync_.grant_name(f.grant)}});
  return true;
}

void LiveFlows::cut(const sshring_flow_key& k, const sshring_flow& f, ConnectionDump* dump) {
  if (!cut_tried_.insert(key_bytes(k)).second) return;  // tried already: the kernel drops its packets
  int rc = destroy_tcp(k, dump);
  std::string grant = sync_.grant_name(f.grant);
  // No local socket (a SYN that never became a connection, a flow this host forwards): nothing to
  // end, and one spoofed packet can make one, so it is counted apart and not logged; the kernel
  // drops the flow's packets either way.
  if (rc == -ENOENT) {
    stats_.flows_without_socket.add();
    return;
  }
  if (rc != 0) {
    stats_.flow_cut_errors.add();
    common::log_warn("agent: cannot end a flow enforce mode refuses; its packets are dropped",
                     {{"flow", flow_json(k).dump()}, {"error", std::strerror(-rc)}});
    return;
  }
  stats_.flows_cut.add();
  report_(metrics::FlowCut{.flow = flow_key(k),
                           .tag = tag_name(f.tag),
                           .reason = f.tag == SSHRING_TAG_EXPIRED ? "grant_expired" : "unapproved",
                           .grant_id = grant,
                           .first_seen = rfc3339_from_boot(f.first_ns),
                           .packets_in = f.packets[0],
                           .packets_out = f.packets[1],
                           .bytes_in = f.bytes[0],
                           .bytes_out = f.bytes[1],
                           .enforced = true}
              .to_json());
}

// The kernel marks an entry at a FIN pair or an inbound RST and leaves it to the socket's TCP_CLOSE
// (bpf/sshring.bpf.c). Without a local socket (a flow this host forwards to a container or VM) no
// TCP_CLOSE comes: after a FIN pair such an entry ends here once it is quiet and no connection has
// its tuple (quiet first, so a forwarded flow's last ACK passes). An RST alone proves nothing here:
// nobody on this host judged whether it was in the window, and a spoofed one would freeze a
// forwarded session in enforce mode. Such an entry is left to the idle eviction.
bool LiveFlows::end_closing(const sshring_flow_key& k, const sshring_flow& f, uint64_t boot,
                            ConnectionDump* dump) {
  if ((f.fin & SSHRING_FIN_BOTH) != SSHRING_FIN_BOTH) return false;
  if (boot < f.last_ns + kClosingQuietNs) return false;
  if (tcp_exists(k, dump) != 0) return false;  // alive (an ignored RST), or unknown: keep it
  if (bpf_map_delete_elem(obj_.map_fd("flows"), &k) != 0) return false;
  report_(close_record(k, f, (f.fin & SSHRING_RST_C2S) ? "rst" : "fin", sync_.grant_name(f.grant)));
  return true;
}

// The mark stays in the entry (clearing it would mean writing the entry back and losing the kernel's
// concurrent counter adds), so the set keeps this run from repeating the record; an agent restart
// reports such a flow once more.
void LiveFlows::report_lost_open(const sshring_flow_key& k, const sshring_flow& f) {
  if (!f.open_lost || !late_opened_.insert(key_bytes(k)).second) return;
  report_(metrics::FlowOpen{.flow = flow_key(k),
                            .tag = tag_name(f.tag),
                            .grant_id = sync_.grant_name(f.grant),
                            .first_seen = rfc3339_from_boot(f.first_ns),
                            .late = true}
              .to_json());
}

bool LiveFlows::evict_idle(const sshring_flow_key& k, const sshring_flow& f, bool enforce,
                           ConnectionDump* dump) {
  // Alive, or not known to be gone (a diag error): keep it. Evicting a live approved flow would cut
  // it at its next packet; keeping an approved one costs only its entry, and its grant's end is
  // still checked by the kernel per packet and by the walk.
  if (enforce && tag_allowed(f.tag) && tcp_exists(k, dump) != 0) return false;
  // Delete first: if the kernel closed it meanwhile, it already reported the close.
  if (bpf_map_delete_elem(obj_.map_fd("flows"), &k) != 0) return false;
  report_(close_record(k, f, "evicted", sync_.grant_name(f.grant)));
  stats_.flows_evicted.add();
  return true;
}

void LiveFlows::walk(const policy::Snapshot& snap, int64_t now_unix, bool enforce,
                     std::chrono::seconds idle) {
  const uint64_t boot = static_cast<uint64_t>(clock_ns(CLOCK_BOOTTIME));
  const uint64_t idle_ns = static_cast<uint64_t>(idle.count()) * 1000000000ull;
  std::vector<std::pair<sshring_flow_key, sshring_flow>> all;
  for_each_entry<sshring_flow_key, sshring_flow>(obj_.map_fd("flows"), [&](const auto& k, const auto& f) {
    all.emplace_back(k, f);
    return true;
  });
  int64_t tracked = 0;
  std::set<std::vector<uint8_t>> present;
  ConnectionDump dump;  // listed at most once per walk, on the first flow an exact lookup misses
  for (auto& [k, f] : all) {
    if (present.count(key_bytes(k))) continue;  // seen twice: the walk restarted after a kernel delete
    report_lost_open(k, f);  // first: a flow that ends in this walk still gets its open record
    if (end_closing(k, f, boot, &dump)) continue;
    if (boot > f.last_ns && boot - f.last_ns > idle_ns && evict_idle(k, f, enforce, &dump)) continue;
    tracked++;
    present.insert(key_bytes(k));
    retag(snap, now_unix, k, f);
    if (enforce && !tag_allowed(f.tag)) cut(k, f, &dump);
  }
  std::erase_if(cut_tried_, [&](const auto& kb) { return !present.count(kb); });
  std::erase_if(late_opened_, [&](const auto& kb) { return !present.count(kb); });
  stats_.flows_tracked.set(tracked);
}

}  // namespace sshring::bpf
