// The part of a policy Snapshot the kernel needs, and its synchronisation into the BPF maps.
//
// The kernel mirrors Snapshot::classify_flow with two longest-prefix lookups keyed by the source:
// `relays` (any hit: proxied) and `grants`, whose value for a source prefix P lists every entry
// whose `from` contains P (user space folds ancestors into descendants, so the longest match sees
// all candidates), sorted latest expiry first (ties: smallest id). The first entry that covers the
// destination and port is the one classify_flow picks; `now < expires` in kernel time decides
// approved vs expired, so a grant expires on time even when the agent is late.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "bpf/sshring_maps.h"
#include "policy/cidr.h"

namespace sshring::policy {
class Snapshot;
}

namespace sshring::bpf {

class BpfObject;

struct KernelRule {
  policy::Cidr from;
  policy::Cidr to;
  uint16_t port_lo = 0;
  uint16_t port_hi = 0;
  int64_t expires = 0;  // unix seconds; live while now < expires
  std::string id;       // grant id ("g-...") or opt_out rule id
};

struct KernelProtected {
  policy::Cidr dst;
  std::vector<policy::PortRange> ports;
};

struct KernelPolicy {
  std::vector<policy::Cidr> relays;
  std::vector<KernelProtected> protected_dsts;
  std::vector<KernelRule> rules;  // one per (entry, port range)

  static KernelPolicy from_snapshot(const policy::Snapshot& snap);
};

// Key/value conversions shared with tests.
sshring_lpm_key lpm_key(const policy::Cidr& c);
sshring_lpm_key lpm_host_key(const policy::IpAddr& a);

struct SyncResult {
  size_t added = 0;
  size_t removed = 0;
  size_t changed = 0;
  size_t truncated = 0;  // prefixes whose candidate list or port ranges did not fit (warned)
};

// Keeps the policy maps of one BpfObject equal to a KernelPolicy: full diff on every apply(), so
// new, changed, revoked and removed entries all converge. Grant numbers (kernel) <-> ids (user)
// live in the pinned grant_names map, so a restarted agent names old flows correctly.
class MapSync {
 public:
  explicit MapSync(const BpfObject& obj);
  SyncResult apply(const KernelPolicy& kp);
  // "" for 0 or an unknown number.
  [[nodiscard]] std::string grant_name(uint32_t number) const;

 private:
  uint32_t number_for(const std::string& id);

  const BpfObject& obj_;
  std::map<std::string, uint32_t> numbers_;
  std::map<uint32_t, std::string> names_;
  uint32_t next_ = 1;
};

}  // namespace sshring::bpf
