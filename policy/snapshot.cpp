#include "policy/snapshot.h"

#include <algorithm>
#include <climits>
#include <map>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace sshring::policy {

std::string_view reason_name(Reason r) noexcept {
  switch (r) {
    case Reason::kAllowed:
      return "allowed";
    case Reason::kUnknownPrincipal:
      return "unknown_principal";
    case Reason::kKeyNotListed:
      return "key_not_listed";
    case Reason::kTargetNotAllowed:
      return "target_not_allowed";
    case Reason::kPortNotAllowed:
      return "port_not_allowed";
    case Reason::kOutsideTimeWindow:
      return "outside_time_window";
    case Reason::kTooManySessions:
      return "too_many_sessions";
    case Reason::kNoPolicy:
      return "no_policy";
  }
  return "unknown";
}

namespace {

uint64_t fnv1a(std::string_view s) noexcept {
  uint64_t h = 1469598103934665603ull;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h | 1;  // never 0: 0 marks an empty slot
}

// Open-addressing index from a string to an element index: one probe array, no node allocations,
// so a lookup costs about one cache miss plus the comparison with the element itself.
class NameIndex {
 public:
  static constexpr uint32_t kNone = UINT32_MAX;
  void build(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
  }
  // Returns false if `key` is already present (the first one wins).
  template <class Eq>
  bool insert(std::string_view key, uint32_t idx, Eq&& eq) {
    const uint64_t h = fnv1a(key);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].hash == 0) {
        slots_[i] = Slot{h, idx};
        return true;
      }
      if (slots_[i].hash == h && eq(slots_[i].idx)) return false;
    }
  }
  template <class Eq>
  [[nodiscard]] uint32_t find(std::string_view key, Eq&& eq) const noexcept {
    if (slots_.empty()) return kNone;
    const uint64_t h = fnv1a(key);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].hash == 0) return kNone;
      if (slots_[i].hash == h && eq(slots_[i].idx)) return slots_[i].idx;
    }
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t idx = kNone;
  };
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

// A list of indices that keeps its first three inline: most trie slots hold one or two, and an
// inline list costs no extra cache miss on the lookup path.
struct IdxList {
  std::array<uint32_t, 3> head{};
  uint32_t n = 0;
  std::vector<uint32_t> rest;
  void push_back(uint32_t v) {
    if (n < head.size()) {
      head[n] = v;
    } else {
      rest.push_back(v);
    }
    ++n;
  }
  [[nodiscard]] bool empty() const noexcept { return n == 0; }
  [[nodiscard]] uint32_t back() const noexcept { return n <= head.size() ? head[n - 1] : rest.back(); }
  template <class F>
  void each(F&& f) const {
    for (uint32_t i = 0; i < n && i < head.size(); ++i) f(head[i]);
    for (uint32_t v : rest) f(v);
  }
};

// Port sets of up to three ranges inline (nearly all of them); larger ones point at the PortSet.
struct FastPorts {
  std::array<PortRange, 3> r{};
  uint8_t n = 0;
  const PortSet* full = nullptr;
  explicit FastPorts(const PortSet& ps) {
    if (ps.ranges().size() > r.size()) {
      full = &ps;
      return;
    }
    for (const auto& x : ps.ranges()) r[n++] = x;
  }
  [[nodiscard]] bool contains(uint16_t p) const noexcept {
    if (full) return full->contains(p);
    for (uint8_t i = 0; i < n; ++i) {
      if (p >= r[i].lo && p <= r[i].hi) return true;
    }
    return false;
  }
};

}  // namespace

struct Snapshot::Compiled {
  struct RoleC {
    const Role* role = nullptr;
    CidrTrie<IdxList> cidr_targets;   // prefix -> indices of targets listing it
    std::vector<uint32_t> name_only;  // targets without cidrs
    std::vector<FastPorts> ports;     // per target
    std::vector<uint8_t> has_names;   // per target
    std::vector<std::string> labels;  // "role:sre/targets[1]"
    std::string window_label;         // "role:sre/windows"
    std::string label;                // "role:sre"
  };
  struct PrincipalC {
    std::string name;  // a copy next to what authorize reads, for the index comparison
    const Principal* principal = nullptr;
    std::vector<uint32_t> roles;
    std::vector<std::string> fingerprints;
    std::string label;  // "principal:alice"
    uint32_t max_sessions = kDefaultMaxSessions;
  };
  std::vector<RoleC> roles;
  std::vector<PrincipalC> principals;
  NameIndex principal_index;
  std::vector<KeyOwner> keys;
  NameIndex key_index;  // fingerprint -> keys[]

  [[nodiscard]] const PrincipalC* principal(std::string_view name) const noexcept {
    uint32_t i = principal_index.find(name, [&](uint32_t j) { return principals[j].name == name; });
    return i == NameIndex::kNone ? nullptr : &principals[i];
  }
  CidrTrie<uint32_t> flow_src;              // from prefix -> 1 + index into flow_dst
  std::vector<CidrTrie<IdxList>> flow_dst;  // to prefix -> entry indices
  struct EntryC {
    UnixSeconds expires;
    FastPorts ports;
  };
  std::vector<EntryC> entries;  // parallel to Snapshot::entries_
};

namespace {

using Compiled = Snapshot::Compiled;

bool special_v4(const uint8_t* b) noexcept {
  return b[0] == 0 || b[0] == 127 ||      // "this network" (reaches the local host), loopback
         (b[0] == 169 && b[1] == 254) ||  // link-local, cloud metadata 169.254.169.254
         b[0] >= 224;                     // multicast, reserved, broadcast
}

// Addresses a name must not resolve to unless an entry's `cidrs` list them: the relay's own host,
// link-local and cloud metadata services, multicast. A names-only entry trusts DNS for the address;
// these are where a hostile or hijacked DNS answer would point it.
bool special_address(const IpAddr& a) noexcept {
  const auto& b = a.bytes;
  if (a.is_v4()) return special_v4(b.data());
  static constexpr std::array<uint8_t, 16> kEc2Metadata = {0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0,    0,
                                                           0,    0,    0,    0,    0, 0, 0x02, 0x54};
  bool low_zero = std::all_of(b.begin(), b.begin() + 10, [](uint8_t x) { return x == 0; });
  if (low_zero && b[10] == 0xff && b[11] == 0xff) return special_v4(b.data() + 12);  // IPv4-mapped
  if (low_zero && b[10] == 0 && b[11] == 0 && b[12] == 0 && b[13] == 0 && b[14] == 0 && b[15] <= 1)
    return true;                                     // :: and ::1
  return (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) ||  // fe80::/10 link-local
         b[0] == 0xff ||                             // multicast
         b == kEc2Metadata;
}

// Outcome ranking when nothing allows: the most specific explanation wins.
int rank(Reason r) {
  switch (r) {
    case Reason::kOutsideTimeWindow:
      return 3;
    case Reason::kPortNotAllowed:
      return 2;
    default:
      return 1;
  }
}

Decision decide(const Compiled& c, const Compiled::PrincipalC& p, std::string_view name, const IpAddr& addr,
                uint16_t port, UnixSeconds now, bool defer_addr, bool addr_local = false) {
  Decision best{false, Reason::kTargetNotAllowed, p.label};
  auto consider = [&](Reason r, std::string_view rule) {
    if (rank(r) > rank(best.reason)) best = Decision{false, r, rule};
  };
  const bool special = addr.valid() && (addr_local || special_address(addr));
  for (uint32_t ri : p.roles) {
    const auto& rc = c.roles[ri];
    const Role& role = *rc.role;
    int matched = -1;  // target index fully matching
    bool port_miss = false;
    auto check = [&](uint32_t ti) {
      if (matched >= 0) return;
      if (rc.has_names[ti]) {
        const Target& t = role.targets[ti];
        if (name.empty()) return;
        bool any = false;
        for (const auto& g : t.names) {
          if (glob_match(g, name)) {
            any = true;
            break;
          }
        }
        if (!any) return;
      }
      if (rc.ports[ti].contains(port)) {
        matched = static_cast<int>(ti);
      } else {
        port_miss = true;
      }
    };
    if (defer_addr && !addr.valid()) {
      for (uint32_t ti = 0; ti < role.targets.size(); ++ti) check(ti);
    } else {
      rc.cidr_targets.for_each_match(addr, [&](const IdxList& ts, const Cidr&) { ts.each(check); });
      for (uint32_t ti : rc.name_only)
        if (!(special && rc.has_names[ti])) check(ti);
    }
    if (matched < 0) {
      if (port_miss) consider(Reason::kPortNotAllowed, rc.label);
      continue;
    }
    bool in_window = role.windows.empty();
    for (const auto& w : role.windows) {
      if (w.contains(now)) {
        in_window = true;
        break;
      }
    }
    if (in_window) return Decision{true, Reason::kAllowed, rc.labels[static_cast<size_t>(matched)]};
    consider(Reason::kOutsideTimeWindow, rc.window_label);
  }
  return best;
}

// Each role's targets: labels for decisions, ports, and a CIDR trie to the targets that list addresses.
void compile_roles(const Policy& p, Compiled& c, std::unordered_map<std::string_view, uint32_t>& role_index) {
  c.roles.resize(p.roles.size());
  for (uint32_t i = 0; i < p.roles.size(); ++i) {
    const Role& r = p.roles[i];
    auto& rc = c.roles[i];
    rc.role = &r;
    role_index.emplace(r.name, i);
    rc.window_label = "role:" + r.name + "/windows";
    rc.label = "role:" + r.name;
    for (uint32_t t = 0; t < r.targets.size(); ++t) {
      rc.labels.push_back("role:" + r.name + "/targets[" + std::to_string(t) + "]");
      rc.ports.emplace_back(r.targets[t].ports);
      rc.has_names.push_back(!r.targets[t].names.empty());
      if (r.targets[t].cidrs.empty()) {
        rc.name_only.push_back(t);
      } else {
        for (const auto& cidr : r.targets[t].cidrs) {
          auto& v = rc.cidr_targets.insert(cidr);
          if (v.empty() || v.back() != t) v.push_back(t);
        }
      }
    }
    rc.cidr_targets.freeze();
  }
}

// Principals by name (with their roles' indexes and session cap) and keys by fingerprint.
void compile_principals(const Policy& p, Compiled& c,
                        const std::unordered_map<std::string_view, uint32_t>& role_index) {
  c.principals.resize(p.principals.size());
  c.principal_index.build(p.principals.size());
  size_t nkeys = 0;
  for (const auto& pr : p.principals) nkeys += pr.keys.size();
  c.key_index.build(nkeys);
  for (uint32_t i = 0; i < p.principals.size(); ++i) {
    const Principal& pr = p.principals[i];
    auto& pc = c.principals[i];
    pc.principal = &pr;
    pc.name = pr.name;
    pc.label = "principal:" + pr.name;
    std::optional<uint32_t> max;
    for (const auto& rn : pr.roles) {
      auto it = role_index.find(rn);
      if (it == role_index.end())
        throw common::UsageError("principal " + pr.name + " names unknown role " + rn);
      pc.roles.push_back(it->second);
      if (auto m = p.roles[it->second].max_sessions) max = std::max(max.value_or(0), *m);
    }
    pc.max_sessions = max.value_or(kDefaultMaxSessions);
    c.principal_index.insert(pr.name, i, [&](uint32_t j) { return c.principals[j].name == pr.name; });
    for (const auto& k : pr.keys) {
      pc.fingerprints.push_back(k.fingerprint);
      auto ki = static_cast<uint32_t>(c.keys.size());
      if (c.key_index.insert(k.fingerprint, ki,
                             [&](uint32_t j) { return c.keys[j].key->fingerprint == k.fingerprint; })) {
        c.keys.push_back(KeyOwner{&pr, &k});
      }
    }
  }
}

}  // namespace

// Flow entries (standing rules and grants) in a source trie whose values index destination tries.
void Snapshot::index_flows(Compiled& c) {
  const Policy& p = *policy_;
  for (const auto& r : p.opt_out) {
    if (!r.standing) continue;  // least privilege: other rules approve through grants only
    for (const auto& f : r.from) {
      for (const auto& t : r.to_cidrs)
        entries_.push_back(FlowEntry{f, t, r.to_ports, r.expires, r.id, false});
    }
  }
  for (const auto& g : grants_) {
    if (!p.find_rule(g.rule)) ++orphan_grants_;
    entries_.push_back(FlowEntry{g.from, g.to, g.ports, g.effective_expiry(), g.id, true});
  }
  for (uint32_t e = 0; e < entries_.size(); ++e) {
    const auto& fe = entries_[e];
    uint32_t& di = c.flow_src.insert(fe.from);
    if (di == 0) {  // 0 = fresh slot; store index + 1
      c.flow_dst.emplace_back();
      di = static_cast<uint32_t>(c.flow_dst.size());
    }
    c.flow_dst[di - 1].insert(fe.to).push_back(e);
    c.entries.push_back(Compiled::EntryC{fe.expires, FastPorts(fe.ports)});
  }
  c.flow_src.freeze();
  for (auto& t : c.flow_dst) t.freeze();
}

std::shared_ptr<const Snapshot> Snapshot::build(std::shared_ptr<const Policy> policy,
                                                std::vector<Grant> grants, uint64_t generation) {
  std::shared_ptr<Snapshot> s(new Snapshot());
  s->policy_ = std::move(policy);
  s->grants_ = std::move(grants);
  s->generation_ = generation;
  const Policy& p = *s->policy_;
  auto c = std::make_shared<Compiled>();
  std::unordered_map<std::string_view, uint32_t> role_index;
  compile_roles(p, *c, role_index);
  compile_principals(p, *c, role_index);
  for (const auto& r : p.relays) s->relays_.insert(r);
  for (uint32_t i = 0; i < p.hosts.size(); ++i) {
    for (const auto& cidr : p.hosts[i].cidrs) s->hosts_.insert(cidr).push_back(i);
  }
  s->index_flows(*c);
  s->relays_.freeze();
  s->hosts_.freeze();
  s->compiled_ = std::move(c);
  return s;
}

std::shared_ptr<const Snapshot> Snapshot::build_checked(std::shared_ptr<const Policy> policy,
                                                        const std::vector<SignedGrant>& stored,
                                                        UnixSeconds now, SignatureCache* cache,
                                                        uint64_t generation) {
  std::vector<const SignedGrant*> ptrs;
  ptrs.reserve(stored.size());
  for (const auto& g : stored) ptrs.push_back(&g);
  auto checked = check_grants(*policy, ptrs, now, cache);
  if (cache) cache->end_generation();
  std::vector<CheckedGrants::Ptr> shared;
  shared.reserve(checked.size());
  for (auto& c : checked) shared.push_back(std::make_shared<const CheckedGrant>(std::move(c)));
  return build_from_checked(std::move(policy), std::move(shared), generation);
}

namespace {

// One grant id, one grant: a store (or a cache) delivering several objects for an id must not widen
// access. Identical copies count once (the later ones are dropped); copies that differ in any way
// (another request, fewer or other decisions) are all refused as "duplicate_id", which is at least as
// restrictive as the most restrictive copy and cannot be steered by choosing which copy to add.
void dedupe_by_id(std::vector<CheckedGrants::Ptr>& checked) {
  std::map<std::string, std::vector<size_t>> by_id;
  for (size_t i = 0; i < checked.size(); ++i) by_id[checked[i]->object.request.id].push_back(i);
  std::vector<bool> drop(checked.size(), false);
  bool any = false;
  for (const auto& [id, idx] : by_id) {
    if (idx.size() < 2) continue;
    any = true;
    const std::string first = signed_grant_to_json(checked[idx[0]]->object).dump();
    bool same = true;
    for (size_t k = 1; k < idx.size() && same; ++k)
      same = signed_grant_to_json(checked[idx[k]]->object).dump() == first;
    for (size_t k = same ? 1 : 0; k < idx.size(); ++k) {
      if (same) {
        drop[idx[k]] = true;
        continue;
      }
      auto c = std::make_shared<CheckedGrant>(*checked[idx[k]]);
      c->status = GrantStatus::kRejected;
      c->reject_reason = "duplicate_id";
      c->detail = "the store holds " + std::to_string(idx.size()) + " different objects for grant " +
                  std::string(id) + "; none is honoured";
      checked[idx[k]] = std::move(c);
    }
  }
  if (!any) return;
  size_t out = 0;
  for (size_t i = 0; i < checked.size(); ++i)
    if (!drop[i]) checked[out++] = std::move(checked[i]);
  checked.resize(out);
}

}  // namespace

std::shared_ptr<const Snapshot> Snapshot::build_from_checked(std::shared_ptr<const Policy> policy,
                                                             std::vector<CheckedGrants::Ptr> checked,
                                                             uint64_t generation) {
  dedupe_by_id(checked);
  std::vector<Grant> honoured;
  for (const auto& c : checked)
    if (c->honoured()) honoured.push_back(c->terms);
  auto s = build(std::move(policy), std::move(honoured), generation);
  const_cast<Snapshot&>(*s).checked_ = CheckedGrants(std::move(checked));  // not yet shared with anyone
  return s;
}

size_t Snapshot::break_glass_live(UnixSeconds now) const noexcept {
  size_t n = 0;
  for (const auto& c : checked_) n += c.break_glass && c.honoured() && c.terms.live(now);
  return n;
}

size_t Snapshot::reviews_overdue(UnixSeconds now) const noexcept {
  size_t n = 0;
  for (const auto& c : checked_) n += c.review_overdue(now);
  return n;
}

Decision Snapshot::authorize(const AuthzRequest& req) const noexcept {
  const Compiled& c = *compiled_;
  const auto* found = c.principal(req.principal);
  if (!found) return Decision{false, Reason::kUnknownPrincipal, {}};
  const auto& pc = *found;
  if (!(req.skip_key_check && req.key_fingerprint.empty())) {
    bool listed = false;
    for (const auto& fp : pc.fingerprints) {
      if (fp == req.key_fingerprint) {
        listed = true;
        break;
      }
    }
    if (!listed) return Decision{false, Reason::kKeyNotListed, pc.label};
  }
  return decide(c, pc, req.target_name, req.target, req.port, req.now, false, req.target_local);
}

Decision Snapshot::name_allowed(std::string_view principal, std::string_view name, uint16_t port,
                                UnixSeconds now) const noexcept {
  const Compiled& c = *compiled_;
  const auto* pc = c.principal(principal);
  if (!pc) return Decision{false, Reason::kUnknownPrincipal, {}};
  return decide(c, *pc, name, IpAddr{}, port, now, true);
}

Decision Snapshot::address_allowed(std::string_view principal, std::string_view name, const IpAddr& addr,
                                   uint16_t port, UnixSeconds now) const noexcept {
  const Compiled& c = *compiled_;
  const auto* pc = c.principal(principal);
  if (!pc) return Decision{false, Reason::kUnknownPrincipal, {}};
  return decide(c, *pc, name, addr, port, now, false);
}

uint32_t Snapshot::max_sessions_for(std::string_view principal) const noexcept {
  const auto* pc = compiled_->principal(principal);
  return pc ? pc->max_sessions : 0;
}

const Principal* Snapshot::find_principal(std::string_view name) const noexcept {
  const auto* pc = compiled_->principal(name);
  return pc ? pc->principal : nullptr;
}

KeyOwner Snapshot::find_key(std::string_view fingerprint) const noexcept {
  const Compiled& c = *compiled_;
  uint32_t i =
      c.key_index.find(fingerprint, [&](uint32_t j) { return c.keys[j].key->fingerprint == fingerprint; });
  return i == NameIndex::kNone ? KeyOwner{} : c.keys[i];
}

FlowClass Snapshot::classify_flow(const IpAddr& source, const IpAddr& dest, uint16_t port,
                                  UnixSeconds now) const noexcept {
  if (relays_.contains(source)) return FlowClass{FlowTag::kProxied, {}, 0};
  const Compiled& c = *compiled_;
  const FlowEntry* best = nullptr;
  c.flow_src.for_each_match(source, [&](uint32_t di, const Cidr&) {
    c.flow_dst[di - 1].for_each_match(dest, [&](const IdxList& es, const Cidr&) {
      es.each([&](uint32_t e) {
        const auto& ce = c.entries[e];
        if (!ce.ports.contains(port)) return;
        if (!best || decides_before(ce.expires, entries_[e].id, best->expires, best->id)) best = &entries_[e];
      });
    });
  });
  if (!best) return FlowClass{FlowTag::kBypassUnapproved, {}, 0};
  return FlowClass{now < best->expires ? FlowTag::kBypassApproved : FlowTag::kBypassExpired, best->id,
                   best->expires};
}

bool Snapshot::protects(const IpAddr& dest, uint16_t port) const noexcept {
  bool hit = false;
  hosts_.for_each_match(dest, [&](const std::vector<uint32_t>& groups, const Cidr&) {
    for (uint32_t g : groups) hit = hit || policy_->hosts[g].ssh_ports.contains(port);
  });
  return hit;
}

std::vector<ProtectedHosts> Snapshot::protected_hosts() const {
  std::vector<ProtectedHosts> out;
  for (const auto& h : policy_->hosts) {
    for (const auto& c : h.cidrs) out.push_back(ProtectedHosts{h.name, c, h.ssh_ports});
  }
  return out;
}

std::vector<SourceRow> Snapshot::source_table(const IpAddr& dest, uint16_t port) const {
  CidrTrie<SourceRow> rows;
  for (const auto& e : entries_) {
    if (!e.to.contains(dest) || !e.ports.contains(port)) continue;
    SourceRow& r = rows.insert(e.from);
    if (r.id.empty() || decides_before(e.expires, e.id, r.max_expires, r.id)) {
      r = SourceRow{e.from, e.expires, e.id};
    }
  }
  std::vector<SourceRow> out;
  for (const auto& row : rows.values()) {
    SourceRow best = row;
    rows.for_each_match(row.from.addr, [&](const SourceRow& a, const Cidr& c) {
      if (c.len > row.from.len) return;  // only ancestors (and itself)
      if (decides_before(a.max_expires, a.id, best.max_expires, best.id)) {
        best.max_expires = a.max_expires;
        best.id = a.id;
      }
    });
    out.push_back(std::move(best));
  }
  return out;
}

size_t Snapshot::live_grants(UnixSeconds now, int64_t within) const noexcept {
  size_t n = 0;
  for (const auto& g : grants_) {
    if (!g.live(now)) continue;
    if (within >= 0 && g.effective_expiry() - now > within) continue;
    ++n;
  }
  return n;
}

}  // namespace sshring::policy
