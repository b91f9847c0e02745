// What the agent does with flows already in the kernel's flow map, against the current snapshot:
//
//   seed()  at start: connections that exist before the agent (inet_diag dump) get flow entries,
//           classified like a SYN would be, so enforce mode's "no entry -> drop" spares approved ones.
//   walk()  every tick and after every policy sync: each entry is classified again against the
//           current snapshot and clock; a proxied or approved flow whose grant expired or was revoked
//           (or whose relay left the policy) becomes bypass_expired / bypass_unapproved. In enforce
//           mode every flow whose tag does not allow it is ended with SOCK_DESTROY (the local socket
//           aborts and resets the peer) and reported as a `flow_cut`. Idle entries are evicted
//           (in enforce mode only once their socket is gone: an evicted live flow would be cut).
//           Entries the kernel marked closing (FIN pair, inbound RST) with no local socket are
//           closed (the socket's TCP_CLOSE ends the others in the kernel).
//
// The kernel also turns an approved flow expired on its first packet after expiry (bpf/sshring.bpf.c),
// so tags are right to the packet; user space is needed for revocations, for idle flows, and to end
// the sockets.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include "bpf/sock_diag.h"
#include "bpf/sshring_structs.h"
#include "metrics/audit_types.h"
#include "policy/cidr.h"

namespace sshring::policy {
class Snapshot;
}
namespace sshring::metrics {
struct AgentStats;
}

namespace sshring::bpf {

class BpfObject;
class MapSync;

class LiveFlows {
 public:
  using Report = std::function<void(nlohmann::json record)>;  // one audit record
  LiveFlows(const BpfObject& obj, MapSync& sync, metrics::AgentStats& stats, Report report)
      : obj_(obj), sync_(sync), stats_(stats), report_(std::move(report)) {}

  // Returns how many entries were made.
  // `local`: this host's addresses, protected as the kernel protects them (KernelPolicy::from_snapshot).
  size_t seed(const policy::Snapshot& snap, int64_t now_unix, const std::vector<policy::IpAddr>& local = {});
  void walk(const policy::Snapshot& snap, int64_t now_unix, bool enforce, std::chrono::seconds idle);

  // The `flow` of an audit record, typed and as JSON.
  static metrics::FlowKey flow_key(const sshring_flow_key& k);
  static nlohmann::json flow_json(const sshring_flow_key& k);
  // Boot-time ns (what the kernel stamps) -> RFC 3339 with milliseconds, like the audit envelope.
  static std::string rfc3339_from_boot(uint64_t boot_ns);
  // A close record for an entry the agent removed itself (idle eviction).
  static nlohmann::json close_record(const sshring_flow_key& k, const sshring_flow& f, const char* end,
                                     const std::string& grant);

 private:
  bool retag(const policy::Snapshot& snap, int64_t now, const sshring_flow_key& k, sshring_flow& f);
  // `dump`: the walk's shared list of device-bound connections (bpf/sock_diag.h).
  void cut(const sshring_flow_key& k, const sshring_flow& f, ConnectionDump* dump);
  // Entries the kernel marked closing (FIN pair, inbound RST) whose connection is gone.
  bool end_closing(const sshring_flow_key& k, const sshring_flow& f, uint64_t boot, ConnectionDump* dump);
  // A flow whose open event the kernel could not queue: its flow_open, once per agent run.
  void report_lost_open(const sshring_flow_key& k, const sshring_flow& f);
  bool evict_idle(const sshring_flow_key& k, const sshring_flow& f, bool enforce, ConnectionDump* dump);

  static constexpr uint64_t kClosingQuietNs = 2'000'000'000;  // a closing entry left alone this long
  const BpfObject& obj_;
  MapSync& sync_;
  metrics::AgentStats& stats_;
  Report report_;
  std::set<std::vector<uint8_t>> cut_tried_;    // keys a destroy was already attempted for
  std::set<std::vector<uint8_t>> late_opened_;  // keys whose lost open this run reported
};

}  // namespace sshring::bpf
