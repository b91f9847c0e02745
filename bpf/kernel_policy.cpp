#include "bpf/kernel_policy.h"

#include <bpf/bpf.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <set>

#include "bpf/loader.h"
#include "bpf/map_iter.h"
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

template <class K>
MapKey bytes_of(const K& k) {
  auto* b = reinterpret_cast<const uint8_t*>(&k);
  return {b, b + sizeof(K)};
}

template <class K, class V>
std::map<MapKey, V> read_map(int fd) {
  std::map<MapKey, V> out;
  for_each_entry<K, V>(fd, [&](const K& k, const V& v) {
    out.emplace(bytes_of(k), v);
    return true;
  });
  return out;
}

template <class K, class V>
void diff_into(int fd, const char* what, const std::map<MapKey, V>& want, SyncResult& r) {
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

void set_ports(sshring_port_bitmap& bm, const std::vector<policy::PortRange>& ranges) {
  for (const auto& pr : ranges)
    for (uint32_t port = pr.lo; port <= pr.hi; port++)
      bm.bits[port >> 3] |= static_cast<uint8_t>(1u << (port & 7));
}

// Each protected prefix carries the ports of every prefix containing it: the kernel sees only the
// longest match.
void fold_protected(const KernelPolicy& kp, FoldedPolicy& fp) {
  for (const auto& d : kp.protected_dsts) {
    sshring_port_bitmap bm{};
    for (const auto& o : kp.protected_dsts)
      if (o.dst.addr.family == d.dst.addr.family && o.dst.contains(d.dst)) set_ports(bm, o.ports);
    fp.protected_dsts[bytes_of(lpm_key(d.dst))] = bm;
    set_ports(fp.watched, d.ports);
  }
}

// Per distinct source prefix, every rule whose `from` contains it, latest expiry first (ties:
// smallest id). Ancestors are found through a trie of the `from` prefixes: O(rules x address bits).
void fold_sources(const KernelPolicy& kp, FoldedPolicy& fp) {
  policy::CidrTrie<std::vector<size_t>> by_from;
  for (size_t i = 0; i < kp.rules.size(); i++) by_from.insert(kp.rules[i].from).push_back(i);
  by_from.freeze();
  auto later_first = [&](size_t a, size_t b) {
    const KernelRule& x = kp.rules[a];
    const KernelRule& y = kp.rules[b];
    return policy::decides_before(x.expires, x.id, y.expires, y.id);
  };
  for (const policy::Cidr& p : by_from.prefixes()) {
    FoldedSource src{p, {}};
    by_from.for_each_match(p.addr, [&](const std::vector<size_t>& idx, const policy::Cidr& q) {
      if (q.len <= p.len) src.rules.insert(src.rules.end(), idx.begin(), idx.end());
    });
    std::stable_sort(src.rules.begin(), src.rules.end(), later_first);
    fp.rules_wanted += src.rules.size();
    fp.sources.push_back(std::move(src));
  }
}

// Water-filling: the largest per-source length L with sum(min(len, L)) <= capacity.
void cut_to_capacity(FoldedPolicy& fp, size_t capacity) {
  if (fp.rules_wanted <= capacity) return;
  auto total_at = [&](size_t l) {
    size_t t = 0;
    for (const auto& s : fp.sources) t += std::min(s.rules.size(), l);
    return t;
  };
  size_t lo = 0, hi = 0;
  for (const auto& s : fp.sources) hi = std::max(hi, s.rules.size());
  while (lo < hi) {
    size_t mid = (lo + hi + 1) / 2;
    if (total_at(mid) <= capacity)
      lo = mid;
    else
      hi = mid - 1;
  }
  size_t loaded = 0;
  for (auto& s : fp.sources) {
    if (s.rules.size() > lo) s.rules.resize(lo);
    loaded += s.rules.size();
  }
  fp.rules_not_loaded = fp.rules_wanted - loaded;
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

KernelPolicy KernelPolicy::from_snapshot(const policy::Snapshot& snap,
                                         const std::vector<policy::IpAddr>& local) {
  KernelPolicy kp;
  kp.relays = snap.relay_cidrs();
  const auto hosts = snap.protected_hosts();
  for (const auto& h : hosts) kp.protected_dsts.push_back({h.cidr, h.ports.ranges()});
  // sshd listening on 0.0.0.0 / :: answers on every local address; the unlisted ones would be a
  // door no tag or drop covers.
  std::vector<policy::PortRange> ports;
  std::vector<const policy::IpAddr*> unlisted;
  for (const auto& a : local) {
    bool listed = false;
    for (const auto& h : hosts) {
      if (!h.cidr.contains(a)) continue;
      listed = true;
      for (const auto& r : h.ports.ranges()) ports.push_back(r);
    }
    if (!listed) unlisted.push_back(&a);
  }
  if (!ports.empty())
    for (const auto* a : unlisted) kp.protected_dsts.push_back({policy::Cidr::host(*a), ports});
  for (const auto& e : snap.flow_entries()) {
    for (const auto& r : e.ports.ranges())
      kp.rules.push_back({e.from, e.to, r.lo, r.hi, std::min(e.expires, kMaxExpiry), e.id});
  }
  return kp;
}

FoldedPolicy fold_policy(const KernelPolicy& kp, size_t rule_capacity) {
  FoldedPolicy fp;
  for (const auto& c : kp.relays) fp.relays[bytes_of(lpm_key(c))] = 1;
  fold_protected(kp, fp);
  fold_sources(kp, fp);
  cut_to_capacity(fp, rule_capacity);
  return fp;
}

MapSync::MapSync(const BpfObject& obj) : obj_(obj) {
  // Continue the numbering a previous agent left in the pinned map.
  using Name = std::array<char, SSHRING_GRANT_ID_LEN>;
  for_each_entry<uint32_t, Name>(obj_.map_fd("grant_names"), [&](uint32_t n, const Name& name) {
    std::string s(name.data(), strnlen(name.data(), name.size()));
    numbers_[s] = n;
    names_[n] = s;
    next_ = std::max(next_, n + 1);
    return true;
  });
}

uint32_t MapSync::number_for(const std::string& id) {
  if (auto it = numbers_.find(id); it != numbers_.end()) return it->second;
  uint32_t n = next_++;
  char name[SSHRING_GRANT_ID_LEN] = {};
  std::memcpy(name, id.data(), std::min(id.size(), sizeof(name) - 1));
  if (bpf_map_update_elem(obj_.map_fd("grant_names"), &n, name, BPF_ANY) != 0)
    throw_errno("update grant_names (" + std::to_string(names_.size()) + " names, limit " +
                std::to_string(SSHRING_MAX_GRANT_NAMES) + ")");
  numbers_[id] = n;
  names_[n] = id;
  return n;
}

std::string MapSync::grant_name(uint32_t number) const {
  auto it = names_.find(number);
  return it == names_.end() ? "" : it->second;
}

// Names of grants gone from the policy are kept (open flows may still carry their numbers) until
// the map nears its limit; then only the ones the policy still uses survive.
void MapSync::prune_names(const KernelPolicy& kp) {
  if (names_.size() + kp.rules.size() <= SSHRING_MAX_GRANT_NAMES - 256) return;
  std::set<std::string> used;
  for (const auto& rule : kp.rules) used.insert(rule.id);
  for (auto it = names_.begin(); it != names_.end();) {
    if (used.count(it->second)) {
      ++it;
      continue;
    }
    uint32_t n = it->first;
    if (bpf_map_delete_elem(obj_.map_fd("grant_names"), &n) != 0 && errno != ENOENT)
      throw_errno("delete from grant_names");
    numbers_.erase(it->second);
    it = names_.erase(it);
  }
}

// Writes the folded rules into the half of the rules array no span points to (or leaves them where
// they are if unchanged) and returns the spans the grants trie must hold.
std::map<MapKey, sshring_rule_span> MapSync::write_rules(const KernelPolicy& kp, const FoldedPolicy& fp) {
  std::vector<sshring_rule> flat;
  std::vector<std::pair<MapKey, sshring_rule_span>> spans;
  for (const auto& s : fp.sources) {
    spans.push_back({bytes_of(lpm_key(s.from)),
                     {static_cast<uint32_t>(flat.size()), static_cast<uint32_t>(s.rules.size())}});
    for (size_t i : s.rules) {
      const KernelRule& c = kp.rules[i];
      sshring_rule& k = flat.emplace_back();
      fill_addr(k.dst, c.to.addr);
      k.dst_family = c.to.addr.is_v4() ? 4 : 6;
      k.dst_plen = c.to.len;
      k.port_lo = c.port_lo;
      k.port_hi = c.port_hi;
      k.id = number_for(c.id);
      k.expires_unix = c.expires;
    }
  }
  const size_t half = obj_.rule_capacity();
  // (memcmp of two empty vectors would pass it null pointers: undefined even for 0 bytes.)
  bool same = active_half_ >= 0 && flat.size() == active_rules_.size() &&
              (flat.empty() ||
               std::memcmp(flat.data(), active_rules_.data(), flat.size() * sizeof(sshring_rule)) == 0);
  if (!same) {
    active_half_ = active_half_ == 0 ? 1 : 0;
    int fd = obj_.map_fd("rules");
    for (uint32_t i = 0; i < flat.size(); i++) {
      uint32_t idx = static_cast<uint32_t>(active_half_ * half) + i;
      if (bpf_map_update_elem(fd, &idx, &flat[i], BPF_ANY) != 0) throw_errno("update rules map");
    }
    active_rules_ = std::move(flat);
  }
  std::map<MapKey, sshring_rule_span> out;
  for (auto& [k, span] : spans) {
    span.first += static_cast<uint32_t>(active_half_ * half);
    out[k] = span;
  }
  return out;
}

SyncResult MapSync::apply(const KernelPolicy& kp) {
  SyncResult r;
  r.rule_capacity = obj_.rule_capacity();
  prune_names(kp);
  FoldedPolicy fp = fold_policy(kp, r.rule_capacity);
  r.truncated = fp.rules_not_loaded;
  r.rules_loaded = fp.rules_wanted - fp.rules_not_loaded;
  auto spans = write_rules(kp, fp);

  uint32_t zero = 0;
  auto old = std::make_unique<sshring_port_bitmap>();
  if (bpf_map_lookup_elem(obj_.map_fd("watched_ports"), &zero, old.get()) != 0)
    throw_errno("read watched_ports");
  if (std::memcmp(old.get(), &fp.watched, sizeof(fp.watched)) != 0) {
    // Only a pre-filter: the protected_dsts trie still decides, so its order against the trie
    // updates below does not matter.
    if (bpf_map_update_elem(obj_.map_fd("watched_ports"), &zero, &fp.watched, BPF_ANY) != 0)
      throw_errno("update watched_ports");
    r.changed++;
  }
  diff_into<sshring_lpm_key, uint32_t>(obj_.map_fd("relays"), "relays map", fp.relays, r);
  diff_into<sshring_lpm_key, sshring_port_bitmap>(obj_.map_fd("protected_dsts"), "protected_dsts map",
                                                  fp.protected_dsts, r);
  diff_into<sshring_lpm_key, sshring_rule_span>(obj_.map_fd("grants"), "grants map", spans, r);
  return r;
}

}  // namespace sshring::bpf
