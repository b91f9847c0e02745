// The part of a policy Snapshot the kernel needs, and its synchronisation into the BPF maps.
//
// The kernel mirrors Snapshot::classify_flow with two longest-prefix lookups keyed by the source:
// `relays` (any hit: proxied) and `grants`, whose value for a source prefix P is a span of the
// `rules` array listing every entry whose `from` contains P (user space folds ancestors into
// descendants, so the longest match sees all candidates), sorted latest expiry first (ties:
// smallest id). The first entry that covers the destination and port is the one classify_flow
// picks; `now < expires` in kernel time decides approved vs expired, so a grant expires on time even
// when the agent is late.
//
// Folding (fold_policy) is pure: KernelPolicy in, the wanted content of every policy map out, with
// no I/O, so it is tested without root. MapSync::apply writes a fold into the maps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "bpf/sshring_structs.h"
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

  // `local`: this host's own addresses (policy::local_addresses()). Those no protected prefix covers, such as
  // the IPv6 link-local address every interface has or a secondary address, get the ports of the
  // prefixes that cover the others: a protected host is protected on every address it answers on,
  // not only on the ones the policy lists. A host none of whose addresses is listed gets nothing.
  static KernelPolicy from_snapshot(const policy::Snapshot& snap,
                                    const std::vector<policy::IpAddr>& local = {});
};

// Key/value conversions shared with tests.
sshring_lpm_key lpm_key(const policy::Cidr& c);
sshring_lpm_key lpm_host_key(const policy::IpAddr& a);

using MapKey = std::vector<uint8_t>;  // raw bytes of a map key

// One source prefix and its candidate rules (indices into KernelPolicy::rules), in kernel order.
struct FoldedSource {
  policy::Cidr from;
  std::vector<size_t> rules;
};

// The wanted content of the policy maps.
struct FoldedPolicy {
  std::map<MapKey, uint32_t> relays;
  std::map<MapKey, sshring_port_bitmap> protected_dsts;  // each prefix with its ancestors' ports
  sshring_port_bitmap watched{};                         // union of every protected port
  std::vector<FoldedSource> sources;
  size_t rules_wanted = 0;      // candidates over all sources before any cut
  size_t rules_not_loaded = 0;  // candidates cut to fit `rule_capacity` (fail closed, see below)
};

// Folds `kp` for the kernel. If the candidates of all sources exceed `rule_capacity`, the longest
// lists are cut from their end (earliest expiry) until they fit: a cut can turn a flow's answer
// from approved into expired or unapproved, never the other way, so what does not fit is refused.
FoldedPolicy fold_policy(const KernelPolicy& kp, size_t rule_capacity);

struct SyncResult {
  size_t added = 0;
  size_t removed = 0;
  size_t changed = 0;
  size_t truncated = 0;  // candidate rules that did not fit the rules map (not loaded)
  size_t rules_loaded = 0;
  size_t rule_capacity = 0;
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
  // Number of a grant id, assigning (and recording in grant_names) a new one if needed.
  uint32_t number_for(const std::string& id);

 private:
  void prune_names(const KernelPolicy& kp);
  std::map<MapKey, sshring_rule_span> write_rules(const KernelPolicy& kp, const FoldedPolicy& fp);

  const BpfObject& obj_;
  std::map<std::string, uint32_t> numbers_;
  std::map<uint32_t, std::string> names_;
  uint32_t next_ = 1;
  int active_half_ = -1;  // half of the rules array the spans point to
  std::vector<sshring_rule> active_rules_;
};

}  // namespace sshring::bpf
