#include "bpf/kernel_policy.h"

#include <bpf/bpf.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <set>

#include "bpf/loader.h"
#include "common/error.h"
#include "common/log.h"
#include "policy/snapshot.h"

namespace sshring::bpf {

using common::throw_errno;

namespace {

// The kernel computes expires * 1e9 in signed 64 bits: keep far-future expiries representable.
constexpr int64_t kMaxExpiry = 9'000'000'000;  // year 2255

void fill_addr(uint32_t out[4], const policy::IpAddr& a) {
  std::memset(out, 0, 16);
  std::memcpy(out, a.bytes.data(), a.is_v4() ? 4 : 16);
}

template <class K, class V>
std::map<std::vector<uint8_t>, V> read_map(int fd) {
  std::map<std::vector<uint8_t>, V> out;
  K key{}, next{};
  const void* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, &next) == 0) {
    V v{};
    if (bpf_map_lookup_elem(fd, &next, &v) == 0) {
      auto* b = reinterpret_cast<const uint8_t*>(&next);
      out.emplace(std::vector<uint8_t>(b, b + sizeof(K)), v);
    }
    key = next;
    prev = &key;
  }
  return out;
}

template <class K, class V>
void diff_into(int fd, const char* what, const std::map<std::vector<uint8_t>, V>& want, SyncResult& r) {
  auto have = read_map<K, V>(fd);
  // Add and update before deleting: a shorter prefix being replaced by a longer one never leaves a
  // moment where neither is in the trie.
  for (const auto& [k, v] : want) {
    auto it = have.find(k);
    if (it != have.end() && std::memcmp(&it->second, &v, sizeof(V)) == 0) continue;
    if (bpf_map_update_elem(fd, k.data(), &v, BPF_ANY) != 0) throw_errno(std::string("update ") + what);
    (it == have.end() ? r.added : r.changed)++;
  }
  for (const auto& [k, v] : have) {
    if (want.count(k)) continue;
    if (bpf_map_delete_elem(fd, k.data()) != 0 && errno != ENOENT)
      throw_errno(std::string("delete from ") + what);
    r.removed++;
  }
}

template <class K>
std::vector<uint8_t> bytes_of(const K& k) {
  auto* b = reinterpret_cast<const uint8_t*>(&k);
  return {b, b + sizeof(K)};
}

}  // namespace

sshring_lpm_key lpm_key(const policy::Cidr& c) {
  sshring_lpm_key k{};
  k.prefixlen = SSHRING_LPM_FAMILY_BITS + c.len;
  k.family = c.addr.is_v4() ? 4 : 6;
  fill_addr(k.addr, c.addr);
  return k;
}

sshring_lpm_key lpm_host_key(const policy::IpAddr& a) {
  return lpm_key(policy::Cidr::host(a));
}

KernelPolicy KernelPolicy::from_snapshot(const policy::Snapshot& snap) {
  KernelPolicy kp;
  kp.relays = snap.relay_cidrs();
  for (const auto& h : snap.protected_hosts()) kp.protected_dsts.push_back({h.cidr, h.ports.ranges()});
  for (const auto& e : snap.flow_entries()) {
    for (const auto& r : e.ports.ranges())
      kp.rules.push_back({e.from, e.to, r.lo, r.hi, std::min(e.expires, kMaxExpiry), e.id});
  }
  return kp;
}

MapSync::MapSync(const BpfObject& obj) : obj_(obj) {
  // Continue the numbering a previous agent left in the pinned map.
  int fd = obj_.map_fd("grant_names");
  uint32_t key = 0, next = 0;
  const void* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, &next) == 0) {
    char name[SSHRING_GRANT_ID_LEN] = {};
    if (bpf_map_lookup_elem(fd, &next, name) == 0) {
      std::string s(name, strnlen(name, sizeof(name)));
      numbers_[s] = next;
      names_[next] = s;
      next_ = std::max(next_, next + 1);
    }
    key = next;
    prev = &key;
  }
}

uint32_t MapSync::number_for(const std::string& id) {
  if (auto it = numbers_.find(id); it != numbers_.end()) return it->second;
  uint32_t n = next_++;
  char name[SSHRING_GRANT_ID_LEN] = {};
  std::memcpy(name, id.data(), std::min(id.size(), sizeof(name) - 1));
  if (bpf_map_update_elem(obj_.map_fd("grant_names"), &n, name, BPF_ANY) != 0)
    throw_errno("update grant_names");
  numbers_[id] = n;
  names_[n] = id;
  return n;
}

std::string MapSync::grant_name(uint32_t number) const {
  auto it = names_.find(number);
  return it == names_.end() ? "" : it->second;
}

SyncResult MapSync::apply(const KernelPolicy& kp) {
  SyncResult r;
  // Names of grants gone from the policy are kept (open flows may still carry their numbers) until
  // the map nears its limit; then only the ones the policy still uses survive.
  if (names_.size() + kp.rules.size() > SSHRING_MAX_PREFIXES - 256) {
    std::set<std::string> used;
    for (const auto& rule : kp.rules) used.insert(rule.id);
    for (auto it = names_.begin(); it != names_.end();) {
      if (used.count(it->second)) {
        ++it;
        continue;
      }
      uint32_t n = it->first;
      bpf_map_delete_elem(obj_.map_fd("grant_names"), &n);
      numbers_.erase(it->second);
      it = names_.erase(it);
    }
  }

  std::map<std::vector<uint8_t>, uint32_t> relays;
  for (const auto& c : kp.relays) relays[bytes_of(lpm_key(c))] = 1;

  // Protected destinations: each prefix carries the ports of every group containing it, since the
  // kernel sees only the longest match.
  std::map<std::vector<uint8_t>, sshring_protected> prot;
  for (const auto& d : kp.protected_dsts) {
    std::vector<policy::PortRange> ranges;
    for (const auto& o : kp.protected_dsts)
      if (o.dst.addr.family == d.dst.addr.family && o.dst.contains(d.dst))
        ranges.insert(ranges.end(), o.ports.begin(), o.ports.end());
    policy::PortSet merged(ranges);
    sshring_protected v{};
    for (const auto& pr : merged.ranges()) {
      if (v.count == SSHRING_MAX_PORT_RANGES) {
        r.truncated++;
        common::log_warn("agent: too many ssh port ranges for a protected prefix; extra ranges ignored",
                         {{"prefix", d.dst.to_string()}, {"limit", std::to_string(SSHRING_MAX_PORT_RANGES)}});
        break;
      }
      v.lo[v.count] = pr.lo;
      v.hi[v.count] = pr.hi;
      v.count++;
    }
    prot[bytes_of(lpm_key(d.dst))] = v;
  }

  // Grants: per distinct source prefix, every rule whose `from` contains it, latest expiry first.
  std::set<policy::Cidr> froms;
  for (const auto& rule : kp.rules) froms.insert(rule.from);
  std::map<std::vector<uint8_t>, sshring_rule_set> grants;
  for (const auto& p : froms) {
    std::vector<const KernelRule*> cands;
    for (const auto& rule : kp.rules)
      if (rule.from.addr.family == p.addr.family && rule.from.contains(p)) cands.push_back(&rule);
    std::stable_sort(cands.begin(), cands.end(), [](const KernelRule* a, const KernelRule* b) {
      if (a->expires != b->expires) return a->expires > b->expires;
      return a->id < b->id;
    });
    sshring_rule_set set{};
    for (const KernelRule* c : cands) {
      if (set.count == SSHRING_MAX_RULES) {
        r.truncated++;
        common::log_warn(
            "agent: too many grants cover one source prefix; the earliest-expiring are not loaded",
            {{"prefix", p.to_string()}, {"limit", std::to_string(SSHRING_MAX_RULES)}});
        break;
      }
      sshring_rule& k = set.rules[set.count++];
      fill_addr(k.dst, c->to.addr);
      k.dst_family = c->to.addr.is_v4() ? 4 : 6;
      k.dst_plen = c->to.len;
      k.port_lo = c->port_lo;
      k.port_hi = c->port_hi;
      k.id = number_for(c->id);
      k.expires_unix = c->expires;
    }
    grants[bytes_of(lpm_key(p))] = set;
  }

  sshring_port_bitmap bits{};
  for (const auto& d : kp.protected_dsts)
    for (const auto& pr : d.ports)
      for (uint32_t port = pr.lo; port <= pr.hi; port++)
        bits.bits[port >> 3] |= static_cast<uint8_t>(1u << (port & 7));
  uint32_t zero = 0;
  auto old = std::make_unique<sshring_port_bitmap>();
  if (bpf_map_lookup_elem(obj_.map_fd("watched_ports"), &zero, old.get()) != 0)
    throw_errno("read watched_ports");
  if (std::memcmp(old.get(), &bits, sizeof(bits)) != 0) {
    // Only a pre-filter: the protected_dsts trie still decides, so its order against the trie
    // updates below does not matter.
    if (bpf_map_update_elem(obj_.map_fd("watched_ports"), &zero, &bits, BPF_ANY) != 0)
      throw_errno("update watched_ports");
    r.changed++;
  }

  diff_into<sshring_lpm_key, uint32_t>(obj_.map_fd("relays"), "relays map", relays, r);
  diff_into<sshring_lpm_key, sshring_protected>(obj_.map_fd("protected_dsts"), "protected_dsts map", prot, r);
  diff_into<sshring_lpm_key, sshring_rule_set>(obj_.map_fd("grants"), "grants map", grants, r);
  return r;
}

}  // namespace sshring::bpf
