// Property tests: the tries against brute-force linear matchers on thousands of random rules and
// queries (v4 and v6), and the agent's flattened source table against classify_flow.
#include <gtest/gtest.h>

#include <random>

#include "policy/snapshot.h"

namespace sshring::policy {
namespace {

struct Gen {
  std::mt19937_64 rng;
  explicit Gen(uint64_t seed) : rng(seed) {}
  uint64_t u(uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); }

  // Addresses from a small space so that random prefixes and queries actually meet.
  IpAddr addr(bool v6) {
    IpAddr a;
    a.family = v6 ? 6 : 4;
    if (v6) {
      a.bytes[0] = 0xfd;
      a.bytes[1] = static_cast<uint8_t>(u(2));
      for (int i = 13; i < 16; ++i) a.bytes[i] = static_cast<uint8_t>(u(4) * 17);
    } else {
      a.bytes[0] = 10;
      a.bytes[1] = static_cast<uint8_t>(u(3));
      a.bytes[2] = static_cast<uint8_t>(u(4));
      a.bytes[3] = static_cast<uint8_t>(u(8) * 31);
    }
    return a;
  }
  Cidr prefix(bool v6) {
    IpAddr a = addr(v6);
    unsigned bits = a.bits();
    unsigned len = u(20) == 0 ? 0 : static_cast<unsigned>(bits - u(v6 ? 20 : 24));
    Cidr c{a, static_cast<uint8_t>(len)};
    for (unsigned j = len; j < bits; ++j)
      c.addr.bytes[j >> 3] &= static_cast<uint8_t>(~(1u << (7 - (j & 7))));
    return c;
  }
  PortSet ports() {
    std::vector<PortRange> r;
    for (uint64_t i = 0, n = 1 + u(3); i < n; ++i) {
      uint16_t lo = static_cast<uint16_t>(20 + u(10));
      r.push_back({lo, static_cast<uint16_t>(lo + u(3))});
    }
    return PortSet(std::move(r));
  }
};

TEST(PolicyProperty, ClassifyFlowMatchesBruteForce) {
  Gen g(7);
  const UnixSeconds now = 1800000000;
  std::vector<Grant> grants;
  for (int i = 0; i < 3000; ++i) {
    bool v6 = g.u(3) == 0;
    Grant gr;
    char id[16];
    std::snprintf(id, sizeof id, "g-%012x", i);
    gr.id = id;
    gr.who = "p";
    gr.from = g.prefix(v6);
    gr.to = g.prefix(v6);
    gr.ports = g.ports();
    gr.expires = now - 50 + static_cast<int64_t>(g.u(100));
    if (g.u(10) == 0) gr.revoked_at = now - static_cast<int64_t>(g.u(60));
    grants.push_back(gr);
  }
  auto policy = std::make_shared<Policy>();
  policy->relays = {*Cidr::parse("10.2.3.0/24"), *Cidr::parse("fd01::/120")};
  auto s = Snapshot::build(policy, grants);
  size_t counts[5] = {};
  for (int q = 0; q < 20000; ++q) {
    bool v6 = g.u(3) == 0;
    IpAddr src = g.addr(v6), dst = g.addr(v6);
    uint16_t port = static_cast<uint16_t>(20 + g.u(14));
    UnixSeconds t = now - 60 + static_cast<int64_t>(g.u(120));
    // Brute force: linear scan with the documented precedence.
    FlowTag want = FlowTag::kBypassUnapproved;
    std::string want_id;
    const Grant* best = nullptr;
    bool relay = false;
    for (const auto& r : policy->relays) relay = relay || r.contains(src);
    if (relay) {
      want = FlowTag::kProxied;
    } else {
      for (const auto& gr : grants) {
        if (!gr.from.contains(src) || !gr.to.contains(dst) || !gr.ports.contains(port)) continue;
        if (!best || gr.effective_expiry() > best->effective_expiry() ||
            (gr.effective_expiry() == best->effective_expiry() && gr.id < best->id)) {
          best = &gr;
        }
      }
      if (best) {
        want = t < best->effective_expiry() ? FlowTag::kBypassApproved : FlowTag::kBypassExpired;
        want_id = best->id;
      }
    }
    auto got = s->classify_flow(src, dst, port, t);
    ASSERT_EQ(flow_tag_name(got.tag), flow_tag_name(want))
        << src.to_string() << " -> " << dst.to_string() << ":" << port;
    ASSERT_EQ(got.id, want_id);
    counts[static_cast<int>(want)]++;
  }
  // The generator must exercise every outcome, or the property says little.
  for (FlowTag t : kAllFlowTags) EXPECT_GT(counts[static_cast<int>(t)], 200u) << flow_tag_name(t);
}

TEST(PolicyProperty, SourceTableReproducesClassify) {
  Gen g(11);
  const UnixSeconds now = 1800000000;
  std::vector<Grant> grants;
  for (int i = 0; i < 1500; ++i) {
    Grant gr;
    char id[16];
    std::snprintf(id, sizeof id, "g-%012x", i);
    gr.id = id;
    gr.from = g.prefix(false);
    gr.to = g.prefix(false);
    gr.ports = g.ports();
    gr.expires = now - 50 + static_cast<int64_t>(g.u(100));
    grants.push_back(gr);
  }
  auto s = Snapshot::build(std::make_shared<Policy>(), grants);
  for (int d = 0; d < 40; ++d) {
    IpAddr dst = g.addr(false);
    uint16_t port = static_cast<uint16_t>(20 + g.u(14));
    auto table = s->source_table(dst, port);
    CidrTrie<SourceRow> lpm;
    for (const auto& row : table) lpm.insert(row.from) = row;
    if (d % 2) lpm.freeze();  // both forms must agree with classify_flow
    for (int q = 0; q < 300; ++q) {
      IpAddr src = g.addr(false);
      UnixSeconds t = now - 60 + static_cast<int64_t>(g.u(120));
      auto want = s->classify_flow(src, dst, port, t);
      const SourceRow* row = lpm.longest_match(src);  // what a kernel LPM map returns
      FlowTag got = !row ? FlowTag::kBypassUnapproved
                         : (t < row->max_expires ? FlowTag::kBypassApproved : FlowTag::kBypassExpired);
      ASSERT_EQ(flow_tag_name(got), flow_tag_name(want.tag));
      if (row) {
        ASSERT_EQ(row->id, want.id);
      }
    }
  }
}

TEST(PolicyProperty, AuthorizeMatchesBruteForce) {
  Gen g(3);
  auto policy = std::make_shared<Policy>();
  const int kRoles = 40;
  for (int r = 0; r < kRoles; ++r) {
    Role role;
    role.name = "r" + std::to_string(r);
    for (int t = 0, n = 1 + static_cast<int>(g.u(60)); t < n; ++t) {
      Target tg;
      for (int c = 0, m = 1 + static_cast<int>(g.u(3)); c < m; ++c) tg.cidrs.push_back(g.prefix(g.u(3) == 0));
      if (g.u(4) == 0) tg.names = {g.u(2) ? "*.a.example" : "h?.b.example"};
      tg.ports = g.ports();
      role.targets.push_back(tg);
    }
    policy->roles.push_back(role);
  }
  for (int p = 0; p < 200; ++p) {
    Principal pr;
    pr.name = "p" + std::to_string(p);
    for (int k = 0, n = static_cast<int>(g.u(4)); k < n; ++k) {
      std::string rn = "r" + std::to_string(g.u(kRoles));
      if (std::find(pr.roles.begin(), pr.roles.end(), rn) == pr.roles.end()) pr.roles.push_back(rn);
    }
    policy->principals.push_back(pr);
  }
  auto s = Snapshot::build(policy, {});
  const char* names[] = {"", "x.a.example", "h1.b.example", "hh.b.example"};
  size_t allowed = 0;
  for (int q = 0; q < 20000; ++q) {
    const Principal& pr = policy->principals[g.u(policy->principals.size())];
    IpAddr addr = g.addr(g.u(3) == 0);
    uint16_t port = static_cast<uint16_t>(20 + g.u(14));
    std::string_view name = names[g.u(4)];
    bool want = false;
    bool port_miss = false;
    for (const auto& rn : pr.roles) {
      for (const auto& t : policy->find_role(rn)->targets) {
        bool addr_ok = false;
        for (const auto& c : t.cidrs) addr_ok = addr_ok || c.contains(addr);
        bool name_ok = t.names.empty() || (!name.empty() && glob_match(t.names[0], name));
        if (addr_ok && name_ok) (t.ports.contains(port) ? want : port_miss) = true;
      }
    }
    Decision d = s->address_allowed(pr.name, name, addr, port, 0);
    ASSERT_EQ(d.allowed, want) << pr.name << " " << addr.to_string() << ":" << port << " " << name;
    if (!want) {
      ASSERT_EQ(d.reason, port_miss ? Reason::kPortNotAllowed : Reason::kTargetNotAllowed);
    }
    allowed += want;
  }
  EXPECT_GT(allowed, 500u);
  EXPECT_LT(allowed, 19500u);
}

TEST(PolicyProperty, GlobMatchesReference) {
  // Reference: naive recursive matcher; wildcards never match a dot.
  std::function<bool(std::string_view, std::string_view)> ref = [&](std::string_view p, std::string_view s) {
    if (p.empty()) return s.empty();
    if (p[0] == '*') return ref(p.substr(1), s) || (!s.empty() && s[0] != '.' && ref(p, s.substr(1)));
    if (s.empty()) return false;
    return ((p[0] == '?' && s[0] != '.') || std::tolower(p[0]) == std::tolower(s[0])) &&
           ref(p.substr(1), s.substr(1));
  };
  Gen g(5);
  const char alphabet[] = "ab.*?";
  for (int i = 0; i < 20000; ++i) {
    std::string p, s;
    for (uint64_t j = 0, n = g.u(7); j < n; ++j) p += alphabet[g.u(5)];
    for (uint64_t j = 0, n = g.u(8); j < n; ++j) s += "abAB."[g.u(5)];
    ASSERT_EQ(glob_match(p, s), ref(p, s)) << p << " " << s;
  }
}

}  // namespace
}  // namespace sshring::policy
