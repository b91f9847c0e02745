#include "policy/snapshot.h"

#include <algorithm>
#include <climits>
#include <map>

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
    case Reason::kOutsideWindow:
      return "outside_window";
    case Reason::kTooManySessions:
      return "too_many_sessions";
    case Reason::kNoPolicy:
      return "no_policy";
  }
  return "unknown";
}

struct Snapshot::Compiled {
  struct RoleC {
    const Role* role = nullptr;
    CidrTrie<std::vector<uint32_t>> cidr_targets;  // prefix -> indices of targets listing it
    std::vector<uint32_t> name_only;               // targets without cidrs
    std::vector<std::string> labels;               // "role:sre/targets[1]"
    std::string window_label;                      // "role:sre/windows"
    std::string label;                             // "role:sre"
  };
  struct PrincipalC {
    const Principal* principal = nullptr;
    std::vector<uint32_t> roles;
    std::string label;  // "principal:alice"
    uint32_t max_sessions = kDefaultMaxSessions;
  };
  std::vector<RoleC> roles;
  std::vector<PrincipalC> principals;
  std::unordered_map<std::string_view, uint32_t> principal_index;
  std::unordered_map<std::string_view, KeyOwner> keys;
  CidrTrie<uint32_t> flow_src;                            // from prefix -> index into flow_dst
  std::vector<CidrTrie<std::vector<uint32_t>>> flow_dst;  // to prefix -> entry indices
};

namespace {

using Compiled = Snapshot::Compiled;

// Outcome ranking when nothing allows: the most specific explanation wins.
int rank(Reason r) {
  switch (r) {
    case Reason::kOutsideWindow:
      return 3;
    case Reason::kPortNotAllowed:
      return 2;
    default:
      return 1;
  }
}

Decision decide(const Compiled& c, const Compiled::PrincipalC& p, std::string_view name, const IpAddr& addr,
                uint16_t port, UnixSeconds now, bool defer_addr) {
  Decision best{false, Reason::kTargetNotAllowed, p.label};
  auto consider = [&](Reason r, std::string_view rule) {
    if (rank(r) > rank(best.reason)) best = Decision{false, r, rule};
  };
  for (uint32_t ri : p.roles) {
    const auto& rc = c.roles[ri];
    const Role& role = *rc.role;
    int matched = -1;  // target index fully matching
    bool port_miss = false;
    auto check = [&](uint32_t ti) {
      if (matched >= 0) return;
      const Target& t = role.targets[ti];
      if (!t.names.empty()) {
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
      if (t.ports.contains(port)) {
        matched = static_cast<int>(ti);
      } else {
        port_miss = true;
      }
    };
    if (defer_addr && !addr.valid()) {
      for (uint32_t ti = 0; ti < role.targets.size(); ++ti) check(ti);
    } else {
      rc.cidr_targets.for_each_match(addr, [&](const std::vector<uint32_t>& ts, const Cidr&) {
        for (uint32_t ti : ts) check(ti);
      });
      for (uint32_t ti : rc.name_only) check(ti);
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
    consider(Reason::kOutsideWindow, rc.window_label);
  }
  return best;
}

}  // namespace

std::shared_ptr<const Snapshot> Snapshot::build(std::shared_ptr<const Policy> policy,
                                                std::vector<Grant> grants, uint64_t generation) {
  std::shared_ptr<Snapshot> s(new Snapshot());
  s->policy_ = std::move(policy);
  s->grants_ = std::move(grants);
  s->generation_ = generation;
  const Policy& p = *s->policy_;
  auto c = std::make_shared<Compiled>();

  std::unordered_map<std::string_view, uint32_t> role_index;
  c->roles.resize(p.roles.size());
  for (uint32_t i = 0; i < p.roles.size(); ++i) {
    const Role& r = p.roles[i];
    auto& rc = c->roles[i];
    rc.role = &r;
    role_index.emplace(r.name, i);
    rc.window_label = "role:" + r.name + "/windows";
    rc.label = "role:" + r.name;
    for (uint32_t t = 0; t < r.targets.size(); ++t) {
      rc.labels.push_back("role:" + r.name + "/targets[" + std::to_string(t) + "]");
      if (r.targets[t].cidrs.empty()) {
        rc.name_only.push_back(t);
      } else {
        for (const auto& cidr : r.targets[t].cidrs) {
          auto& v = rc.cidr_targets.insert(cidr);
          if (v.empty() || v.back() != t) v.push_back(t);
        }
      }
    }
  }
  c->principals.resize(p.principals.size());
  for (uint32_t i = 0; i < p.principals.size(); ++i) {
    const Principal& pr = p.principals[i];
    auto& pc = c->principals[i];
    pc.principal = &pr;
    pc.label = "principal:" + pr.name;
    std::optional<uint32_t> max;
    for (const auto& rn : pr.roles) {
      auto it = role_index.find(rn);
      if (it == role_index.end()) {
        throw common::UsageError("principal " + pr.name + " names unknown role " + rn);
      }
      pc.roles.push_back(it->second);
      if (auto m = p.roles[it->second].max_sessions) max = std::max(max.value_or(0), *m);
    }
    pc.max_sessions = max.value_or(kDefaultMaxSessions);
    c->principal_index.emplace(pr.name, i);
    for (const auto& k : pr.keys) c->keys.emplace(k.fingerprint, KeyOwner{&pr, &k});
  }

  for (const auto& r : p.relays) s->relays_.insert(r);
  for (uint32_t i = 0; i < p.hosts.size(); ++i) {
    for (const auto& cidr : p.hosts[i].cidrs) s->hosts_.insert(cidr).push_back(i);
  }

  for (const auto& r : p.opt_out) {
    if (r.require_grant) continue;
    for (const auto& f : r.from) {
      for (const auto& t : r.to_cidrs)
        s->entries_.push_back(FlowEntry{f, t, r.to_ports, r.expires, r.id, false});
    }
  }
  for (const auto& g : s->grants_) {
    if (!p.find_rule(g.rule)) ++s->orphan_grants_;
    s->entries_.push_back(FlowEntry{g.from, g.to, g.ports, g.effective_expiry(), g.id, true});
  }
  for (uint32_t e = 0; e < s->entries_.size(); ++e) {
    const auto& fe = s->entries_[e];
    uint32_t& di = c->flow_src.insert(fe.from);
    if (di == 0) {  // 0 = fresh slot; store index + 1
      c->flow_dst.emplace_back();
      di = static_cast<uint32_t>(c->flow_dst.size());
    }
    c->flow_dst[di - 1].insert(fe.to).push_back(e);
  }
  s->compiled_ = std::move(c);
  return s;
}

Decision Snapshot::authorize(const AuthzRequest& req) const noexcept {
  const Compiled& c = *compiled_;
  auto it = c.principal_index.find(req.principal);
  if (it == c.principal_index.end()) return Decision{false, Reason::kUnknownPrincipal, {}};
  const auto& pc = c.principals[it->second];
  if (!(req.skip_key_check && req.key_fingerprint.empty())) {
    bool listed = false;
    for (const auto& k : pc.principal->keys) {
      if (k.fingerprint == req.key_fingerprint) {
        listed = true;
        break;
      }
    }
    if (!listed) return Decision{false, Reason::kKeyNotListed, pc.label};
  }
  return decide(c, pc, req.target_name, req.target, req.port, req.now, false);
}

Decision Snapshot::name_allowed(std::string_view principal, std::string_view name, uint16_t port,
                                UnixSeconds now) const noexcept {
  const Compiled& c = *compiled_;
  auto it = c.principal_index.find(principal);
  if (it == c.principal_index.end()) return Decision{false, Reason::kUnknownPrincipal, {}};
  return decide(c, c.principals[it->second], name, IpAddr{}, port, now, true);
}

Decision Snapshot::address_allowed(std::string_view principal, std::string_view name, const IpAddr& addr,
                                   uint16_t port, UnixSeconds now) const noexcept {
  const Compiled& c = *compiled_;
  auto it = c.principal_index.find(principal);
  if (it == c.principal_index.end()) return Decision{false, Reason::kUnknownPrincipal, {}};
  return decide(c, c.principals[it->second], name, addr, port, now, false);
}

uint32_t Snapshot::max_sessions_for(std::string_view principal) const noexcept {
  auto it = compiled_->principal_index.find(principal);
  return it == compiled_->principal_index.end() ? 0 : compiled_->principals[it->second].max_sessions;
}

const Principal* Snapshot::find_principal(std::string_view name) const noexcept {
  auto it = compiled_->principal_index.find(name);
  return it == compiled_->principal_index.end() ? nullptr : compiled_->principals[it->second].principal;
}

KeyOwner Snapshot::find_key(std::string_view fingerprint) const noexcept {
  auto it = compiled_->keys.find(fingerprint);
  return it == compiled_->keys.end() ? KeyOwner{} : it->second;
}

FlowClass Snapshot::classify_flow(const IpAddr& source, const IpAddr& dest, uint16_t port,
                                  UnixSeconds now) const noexcept {
  if (relays_.contains(source)) return FlowClass{FlowTag::kProxied, {}, 0};
  const Compiled& c = *compiled_;
  const FlowEntry* best = nullptr;
  c.flow_src.for_each_match(source, [&](uint32_t di, const Cidr&) {
    c.flow_dst[di - 1].for_each_match(dest, [&](const std::vector<uint32_t>& es, const Cidr&) {
      for (uint32_t e : es) {
        const FlowEntry& fe = entries_[e];
        if (!fe.ports.contains(port)) continue;
        if (!best || fe.expires > best->expires || (fe.expires == best->expires && fe.id < best->id))
          best = &fe;
      }
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
    if (r.id.empty() || e.expires > r.max_expires || (e.expires == r.max_expires && e.id < r.id)) {
      r = SourceRow{e.from, e.expires, e.id};
    }
  }
  std::vector<SourceRow> out;
  for (const auto& row : rows.values()) {
    SourceRow best = row;
    rows.for_each_match(row.from.addr, [&](const SourceRow& a, const Cidr& c) {
      if (c.len > row.from.len) return;  // only ancestors (and itself)
      if (a.max_expires > best.max_expires || (a.max_expires == best.max_expires && a.id < best.id)) {
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
