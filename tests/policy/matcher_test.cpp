// Matcher tables: addresses, prefixes, ports, the trie, authorize and classify_flow, including
// v4/v6, /0, /32, /128, port ranges, overlapping prefixes and expiry one second before and after.
#include <gtest/gtest.h>

#include "policy/parser.h"
#include "policy/snapshot.h"
#include "tests/policy/test_util.h"

namespace sshring::policy {
namespace {

IpAddr ip(const char* s) {
  auto a = IpAddr::parse(s);
  EXPECT_TRUE(a) << s;
  return a.value_or(IpAddr{});
}
Cidr cidr(const char* s) {
  auto c = Cidr::parse(s);
  EXPECT_TRUE(c) << s;
  return c.value_or(Cidr{});
}

TEST(Cidr, ParseAndContain) {
  struct Case {
    const char* cidr;
    const char* addr;
    bool in;
  } cases[] = {
      {"10.0.0.0/8", "10.255.1.2", true},
      {"10.0.0.0/8", "11.0.0.0", false},
      {"0.0.0.0/0", "1.2.3.4", true},
      {"0.0.0.0/0", "::1", false},
      {"::/0", "fd00::1", true},
      {"::/0", "1.2.3.4", false},
      {"10.1.2.3/32", "10.1.2.3", true},
      {"10.1.2.3/32", "10.1.2.4", false},
      {"10.1.2.3", "10.1.2.3", true},
      {"fd00::1/128", "fd00::1", true},
      {"fd00::1/128", "fd00::2", false},
      {"fd00::/120", "fd00::ff", true},
      {"fd00::/120", "fd00::100", false},
      {"10.0.0.0/28", "10.0.0.15", true},
      {"10.0.0.0/28", "10.0.0.16", false},
      {"192.168.0.0/23", "192.168.1.200", true},
      {"10.0.0.0/8", "::ffff:10.1.2.3", true},  // v4-mapped addresses match v4 rules
  };
  for (const auto& c : cases) {
    EXPECT_EQ(cidr(c.cidr).contains(ip(c.addr)), c.in) << c.cidr << " " << c.addr;
  }
  EXPECT_FALSE(Cidr::parse("10.0.0.1/8"));
  EXPECT_FALSE(Cidr::parse("10.0.0.0/"));
  EXPECT_FALSE(Cidr::parse("10.0.0.0/-1"));
  EXPECT_FALSE(Cidr::parse("10.0.0/8"));
  EXPECT_FALSE(Cidr::parse("fd00::/129"));
  EXPECT_EQ(cidr("fd00:0:0::/120").to_string(), "fd00::/120");
  EXPECT_TRUE(cidr("10.0.0.0/8").contains(cidr("10.1.0.0/16")));
  EXPECT_FALSE(cidr("10.1.0.0/16").contains(cidr("10.0.0.0/8")));
  EXPECT_TRUE(cidr("10.1.0.0/16").overlaps(cidr("10.0.0.0/8")));
}

// IPv4-mapped IPv6 prefixes: the length is a v6 length (96..128), normalized to the v4 prefix.
TEST(Cidr, V4MappedPrefixes) {
  EXPECT_EQ(cidr("::ffff:10.7.3.0/120").to_string(), "10.7.3.0/24");
  EXPECT_EQ(cidr("::ffff:10.7.3.5/128").to_string(), "10.7.3.5/32");
  EXPECT_EQ(cidr("::ffff:10.0.0.0/104").to_string(), "10.0.0.0/8");
  EXPECT_EQ(cidr("::ffff:0.0.0.0/96").to_string(), "0.0.0.0/0");
  EXPECT_EQ(cidr("::ffff:10.7.3.4").to_string(), "10.7.3.4/32");
  std::string why;
  EXPECT_FALSE(Cidr::parse("::ffff:10.7.3.0/95", &why));
  EXPECT_EQ(why, "IPv4-mapped prefix shorter than /96");
  EXPECT_FALSE(Cidr::parse("::ffff:10.7.3.0/129", &why));
  EXPECT_EQ(why, "prefix length must be 0..128");
  EXPECT_FALSE(Cidr::parse("::ffff:10.7.3.1/120", &why));  // host bits, as for v4
  EXPECT_NE(why.find("did you mean 10.7.3.0/24"), std::string::npos) << why;
  EXPECT_FALSE(Cidr::parse("10.7.3.0/33"));  // a plain v4 length still stops at 32
}

TEST(PortSet, ParseMergeContain) {
  auto p = PortSet::parse("22,2200-2299,2300,80");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->to_string(), "22,80,2200-2300");
  EXPECT_TRUE(p->contains(uint16_t{2250}));
  EXPECT_TRUE(p->contains(uint16_t{2300}));
  EXPECT_FALSE(p->contains(uint16_t{2301}));
  EXPECT_FALSE(p->contains(uint16_t{23}));
  EXPECT_TRUE(p->contains(*PortSet::parse("2200-2210,22")));
  EXPECT_FALSE(p->contains(*PortSet::parse("2200-2310")));
  EXPECT_FALSE(PortSet::parse("0"));
  EXPECT_FALSE(PortSet::parse("65536"));
  EXPECT_FALSE(PortSet::parse("30-20"));
  EXPECT_FALSE(PortSet::parse("22,"));
  EXPECT_TRUE(PortSet::all().contains(uint16_t{65535}));
  EXPECT_EQ(PortSet::parse("1-3")->ports(), (std::vector<uint16_t>{1, 2, 3}));
}

TEST(CidrTrie, VisitsEveryContainingPrefixShortestFirst) {
  CidrTrie<int> t;
  t.insert(cidr("0.0.0.0/0")) = 0;
  t.insert(cidr("10.0.0.0/8")) = 8;
  t.insert(cidr("10.1.0.0/16")) = 16;
  t.insert(cidr("10.1.2.3/32")) = 32;
  t.insert(cidr("fd00::/8")) = 108;
  t.insert(cidr("fd00::1/128")) = 228;
  std::vector<int> seen;
  t.for_each_match(ip("10.1.2.3"), [&](int v, const Cidr&) { seen.push_back(v); });
  EXPECT_EQ(seen, (std::vector<int>{0, 8, 16, 32}));
  seen.clear();
  t.for_each_match(ip("10.2.0.1"), [&](int v, const Cidr&) { seen.push_back(v); });
  EXPECT_EQ(seen, (std::vector<int>{0, 8}));
  EXPECT_EQ(*t.longest_match(ip("fd00::1")), 228);
  EXPECT_EQ(*t.longest_match(ip("fd00::2")), 108);
  EXPECT_EQ(t.longest_match(ip("fe80::1")), nullptr);
  EXPECT_EQ(*t.longest_match(ip("192.168.1.1")), 0);
  EXPECT_EQ(t.size(), 6u);
  t.insert(cidr("10.0.0.0/8")) = 9;  // same prefix: same slot
  EXPECT_EQ(t.size(), 6u);
  // The frozen (path-compressed) trie answers the same.
  t.freeze();
  seen.clear();
  t.for_each_match(ip("10.1.2.3"), [&](int v, const Cidr&) { seen.push_back(v); });
  EXPECT_EQ(seen, (std::vector<int>{0, 9, 16, 32}));
  EXPECT_EQ(*t.longest_match(ip("fd00::2")), 108);
  EXPECT_EQ(t.longest_match(ip("fe80::1")), nullptr);
  EXPECT_THROW(t.insert(cidr("1.0.0.0/8")), std::logic_error);
  CidrTrie<int> empty;
  empty.freeze();
  EXPECT_EQ(empty.longest_match(ip("1.2.3.4")), nullptr);
  CidrTrie<int> deep;  // a lone /128 below a lone /0: one chain to collapse
  deep.insert(cidr("fd00::1/128")) = 1;
  deep.insert(cidr("::/0")) = 2;
  deep.freeze();
  EXPECT_EQ(*deep.longest_match(ip("fd00::1")), 1);
  EXPECT_EQ(*deep.longest_match(ip("fd00::3")), 2);
}

constexpr UnixSeconds kMon0900 = 1796634000;  // 2026-12-07T09:00:00Z, a Monday

std::shared_ptr<const Snapshot> example(std::vector<Grant> grants = {}) {
  auto p = std::make_shared<Policy>(load_policy_file(testing::example_policy_path()));
  return Snapshot::build(p, std::move(grants));
}

TEST(Authorize, Table) {
  auto s = example();
  const std::string alice_fp = testing::kAliceFingerprint;
  const std::string bob_fp = s->find_principal("bob")->keys[0].fingerprint;
  struct Case {
    const char* name;
    const char* principal;
    std::string fp;
    const char* target_name;
    const char* addr;
    uint16_t port;
    UnixSeconds now;
    Reason reason;
    const char* rule;
  } cases[] = {
      {"cidr target", "alice", alice_fp, "", "10.1.2.3", 22, kMon0900, Reason::kAllowed,
       "role:sre/targets[0]"},
      {"unknown principal", "eve", alice_fp, "", "10.1.2.3", 22, kMon0900, Reason::kUnknownPrincipal, ""},
      {"wrong key", "alice", bob_fp, "", "10.1.2.3", 22, kMon0900, Reason::kKeyNotListed, "principal:alice"},
      {"empty key", "alice", "", "", "10.1.2.3", 22, kMon0900, Reason::kKeyNotListed, "principal:alice"},
      {"outside cidr", "alice", alice_fp, "", "10.2.0.1", 22, kMon0900, Reason::kTargetNotAllowed,
       "principal:alice"},
      {"wrong port", "alice", alice_fp, "", "10.1.2.3", 2222, kMon0900, Reason::kPortNotAllowed, "role:sre"},
      {"name glob port 2222", "alice", alice_fp, "db1.prod.example.com", "10.7.7.7", 2222, kMon0900,
       Reason::kAllowed, "role:sre/targets[1]"},
      {"name glob case-insensitive", "alice", alice_fp, "DB1.Prod.Example.COM", "10.7.7.7", 22, kMon0900,
       Reason::kAllowed, "role:sre/targets[1]"},
      {"name not matching", "alice", alice_fp, "db1.staging.example.com", "10.7.7.7", 22, kMon0900,
       Reason::kTargetNotAllowed, "principal:alice"},
      {"bare glob suffix", "alice", alice_fp, "prod.example.com", "10.7.7.7", 22, kMon0900,
       Reason::kTargetNotAllowed, "principal:alice"},
      {"outside window (Sunday)", "alice", alice_fp, "", "10.1.2.3", 22, kMon0900 - 86400,
       Reason::kOutsideTimeWindow, "role:sre/windows"},
      {"window end exclusive", "alice", alice_fp, "", "10.1.2.3", 22, kMon0900 + 11 * 3600,
       Reason::kOutsideTimeWindow, "role:sre/windows"},
      {"window last second", "alice", alice_fp, "", "10.1.2.3", 22, kMon0900 + 11 * 3600 - 1,
       Reason::kAllowed, "role:sre/targets[0]"},
      // bob: dev (10.3/16, 22 + 2200-2209, always) and oncall (needs name AND address, nights in Berlin).
      {"dev range", "bob", bob_fp, "", "10.3.0.9", 2205, kMon0900, Reason::kAllowed, "role:dev/targets[0]"},
      {"dev range end", "bob", bob_fp, "", "10.3.0.9", 2210, kMon0900, Reason::kPortNotAllowed, "role:dev"},
      {"oncall in daytime", "bob", bob_fp, "db1.prod.example.com", "10.1.0.5", 22, kMon0900,
       Reason::kOutsideTimeWindow, "role:oncall/windows"},
      {"oncall at night", "bob", bob_fp, "db1.prod.example.com", "10.1.0.5", 22, kMon0900 + 12 * 3600,
       Reason::kAllowed, "role:oncall/targets[0]"},
      {"oncall needs the name too", "bob", bob_fp, "", "10.1.0.5", 22, kMon0900 + 12 * 3600,
       Reason::kTargetNotAllowed, "principal:bob"},
      {"oncall v6", "bob", bob_fp, "db1.prod.example.com", "fd01::5", 22, kMon0900 + 12 * 3600,
       Reason::kAllowed, "role:oncall/targets[0]"},
      {"oncall address outside", "bob", bob_fp, "db1.prod.example.com", "10.9.0.5", 22, kMon0900 + 12 * 3600,
       Reason::kTargetNotAllowed, "principal:bob"},
  };
  for (const auto& c : cases) {
    AuthzRequest r;
    r.principal = c.principal;
    r.key_fingerprint = c.fp;
    r.source = ip("10.2.3.4");
    r.target_name = c.target_name;
    r.target = ip(c.addr);
    r.port = c.port;
    r.now = c.now;
    Decision d = s->authorize(r);
    EXPECT_EQ(reason_name(d.reason), reason_name(c.reason)) << c.name;
    EXPECT_EQ(d.allowed, c.reason == Reason::kAllowed) << c.name;
    EXPECT_EQ(d.rule, c.rule) << c.name;
  }
}

TEST(Authorize, NameAndAddressChecksAndLimits) {
  auto s = example();
  EXPECT_TRUE(s->name_allowed("alice", "db1.prod.example.com", 2222, kMon0900).allowed);
  EXPECT_TRUE(
      s->name_allowed("alice", "anything", 22, kMon0900).allowed);  // cidr entry: address decides later
  EXPECT_EQ(s->name_allowed("alice", "anything", 2222, kMon0900).reason, Reason::kPortNotAllowed);
  EXPECT_EQ(s->name_allowed("eve", "x", 22, kMon0900).reason, Reason::kUnknownPrincipal);
  EXPECT_TRUE(s->address_allowed("alice", "", ip("10.1.9.9"), 22, kMon0900).allowed);
  EXPECT_FALSE(s->address_allowed("alice", "", ip("10.4.9.9"), 22, kMon0900).allowed);
  EXPECT_EQ(s->max_sessions_for("alice"), 20u);
  EXPECT_EQ(s->max_sessions_for("bob"), 5u);  // max over dev (5) and oncall (3)
  EXPECT_EQ(s->max_sessions_for("eve"), 0u);
  auto owner = s->find_key(testing::kAliceFingerprint);
  ASSERT_NE(owner.principal, nullptr);
  EXPECT_EQ(owner.principal->name, "alice");
  EXPECT_EQ(owner.key->line, testing::kAliceKey);
  EXPECT_EQ(s->find_key("SHA256:nope").principal, nullptr);
  EXPECT_EQ(reason_name(Reason::kTooManySessions), "too_many_sessions");
}

Grant grant(const char* id, const char* from, const char* to, const char* ports, UnixSeconds expires) {
  Grant g;
  g.id = id;
  g.who = "ci-bot";
  g.from = cidr(from);
  g.to = cidr(to);
  g.ports = *PortSet::parse(ports);
  g.rule = "ci-direct";
  g.created = expires - 3600;
  g.expires = expires;
  return g;
}

TEST(ClassifyFlow, Table) {
  const UnixSeconds t = 1800000000;  // 2027-01-15, ci-direct (until 2027-06-30) is live
  Grant revoked = grant("g-00000000000e", "10.5.0.0/16", "10.1.0.0/16", "22", t + 3600);
  revoked.revoked_at = t - 10;
  auto s = example({
      grant("g-000000000001", "10.4.0.0/16", "10.1.0.0/16", "22", t + 100),
      grant("g-000000000002", "10.4.1.0/24", "10.1.0.0/16", "22", t - 5),     // longer prefix, expired
      grant("g-000000000003", "10.6.0.7/32", "10.1.2.3/32", "2200-2209", t),  // expires exactly at t
      grant("g-000000000004", "0.0.0.0/0", "10.1.9.9/32", "22", t + 50),      // from anywhere
      grant("g-000000000005", "fd02::/64", "fd01::/48", "22", t + 10),
      grant("g-000000000006", "fd02::1/128", "fd01::5/128", "22", t - 1),
      grant("g-000000000007", "::/0", "fd01::9/128", "22", t + 1),
      revoked,
  });
  struct Case {
    const char* name;
    const char* src;
    const char* dst;
    uint16_t port;
    UnixSeconds now;
    FlowTag tag;
    const char* id;
  } cases[] = {
      {"relay source", "10.0.0.5", "10.1.5.7", 22, t, FlowTag::kProxied, ""},
      {"relay v6", "fd00::7", "fd01::5", 22, t, FlowTag::kProxied, ""},
      {"relay /28 edge", "10.0.0.16", "10.1.77.7", 22, t, FlowTag::kBypassUnapproved, ""},
      {"static rule", "10.2.3.4", "10.1.5.7", 22, t, FlowTag::kBypassApproved, "ci-direct"},
      {"static rule wrong port", "10.2.3.4", "10.1.5.7", 2222, t, FlowTag::kBypassUnapproved, ""},
      {"static rule after expiry", "10.2.3.4", "10.1.5.7", 22, 1814400000, FlowTag::kBypassExpired,
       "ci-direct"},
      {"require_grant rule approves nothing", "10.9.1.1", "10.1.0.1", 22, t, FlowTag::kBypassUnapproved, ""},
      {"live /16 beats expired /24", "10.4.1.9", "10.1.0.1", 22, t, FlowTag::kBypassApproved,
       "g-000000000001"},
      {"one second before expiry", "10.4.1.9", "10.1.0.1", 22, t + 99, FlowTag::kBypassApproved,
       "g-000000000001"},
      {"at expiry second", "10.4.1.9", "10.1.0.1", 22, t + 100, FlowTag::kBypassExpired, "g-000000000001"},
      {"only the expired /24", "10.4.1.9", "10.1.0.1", 22, t - 5, FlowTag::kBypassApproved, "g-000000000001"},
      {"/32 one second before", "10.6.0.7", "10.1.2.3", 2209, t - 1, FlowTag::kBypassApproved,
       "g-000000000003"},
      {"/32 at expiry", "10.6.0.7", "10.1.2.3", 2209, t, FlowTag::kBypassExpired, "g-000000000003"},
      {"/32 neighbour", "10.6.0.8", "10.1.2.3", 2209, t - 1, FlowTag::kBypassUnapproved, ""},
      {"/32 port outside range", "10.6.0.7", "10.1.2.3", 2210, t - 1, FlowTag::kBypassUnapproved, ""},
      {"from /0", "203.0.113.9", "10.1.9.9", 22, t, FlowTag::kBypassApproved, "g-000000000004"},
      {"from /0 other dest", "203.0.113.9", "10.1.9.8", 22, t, FlowTag::kBypassUnapproved, ""},
      {"v6 /64", "fd02::abcd", "fd01::77", 22, t, FlowTag::kBypassApproved, "g-000000000005"},
      {"v6 /128 expired but /64 live", "fd02::1", "fd01::5", 22, t, FlowTag::kBypassApproved,
       "g-000000000005"},
      {"v6 both expired: latest wins", "fd02::1", "fd01::5", 22, t + 10, FlowTag::kBypassExpired,
       "g-000000000005"},
      {"v6 ::/0 one second before", "2001:db8::1", "fd01::9", 22, t, FlowTag::kBypassApproved,
       "g-000000000007"},
      {"v6 ::/0 at expiry", "2001:db8::1", "fd01::9", 22, t + 1, FlowTag::kBypassExpired, "g-000000000007"},
      {"v4 source, v6 grant", "10.4.1.9", "fd01::9", 22, t, FlowTag::kBypassUnapproved, ""},
      {"revoked counts as expired", "10.5.1.1", "10.1.0.1", 22, t, FlowTag::kBypassExpired, "g-00000000000e"},
      {"revoked: one second before revocation", "10.5.1.1", "10.1.0.1", 22, t - 11, FlowTag::kBypassApproved,
       "g-00000000000e"},
  };
  for (const auto& c : cases) {
    auto fc = s->classify_flow(ip(c.src), ip(c.dst), c.port, c.now);
    EXPECT_EQ(flow_tag_name(fc.tag), flow_tag_name(c.tag)) << c.name;
    EXPECT_EQ(fc.id, c.id) << c.name;
  }
  EXPECT_TRUE(s->protects(ip("10.1.2.3"), 22));
  EXPECT_FALSE(s->protects(ip("10.1.2.3"), 2200));
  EXPECT_TRUE(s->protects(ip("10.3.2.3"), 2200));
  EXPECT_TRUE(s->protects(ip("fd01::1"), 22));
  EXPECT_FALSE(s->protects(ip("10.4.0.1"), 22));
  EXPECT_EQ(s->live_grants(t), 4u);      // 1, 4, 5, 7 (3 expires at t; 2 and 6 expired; one revoked)
  EXPECT_EQ(s->live_grants(t, 10), 2u);  // 5 and 7 expire within 10s
}

TEST(ClassifyFlow, AgentAccessors) {
  const UnixSeconds t = 1800000000;
  auto s = example({grant("g-000000000001", "10.4.0.0/16", "10.1.0.0/16", "22", t + 100),
                    grant("g-000000000002", "10.4.1.0/24", "10.1.0.0/16", "22", t - 5),
                    grant("g-000000000003", "10.4.1.128/25", "10.1.0.0/16", "2222", t + 500)});
  EXPECT_EQ(s->relay_cidrs().size(), 2u);
  auto hosts = s->protected_hosts();
  ASSERT_EQ(hosts.size(), 3u);
  EXPECT_EQ(hosts[0].name, "prod");
  EXPECT_EQ(hosts[2].ports.to_string(), "22,2200-2209");
  // ci-direct approves directly (one entry per from x to); break-glass needs grants: no entry.
  size_t rules = 0, grants = 0;
  for (const auto& e : s->flow_entries()) (e.is_grant ? grants : rules)++;
  EXPECT_EQ(rules, 1u);
  EXPECT_EQ(grants, 3u);
  auto table = s->source_table(ip("10.1.0.1"), 22);
  ASSERT_EQ(table.size(), 2u);  // the /25 grant is for port 2222
  for (const auto& row : table) {
    // The /24 row inherits the later expiry of its /16 ancestor.
    EXPECT_EQ(row.max_expires, t + 100) << row.from.to_string();
    EXPECT_EQ(row.id, "g-000000000001");
  }
}

}  // namespace
}  // namespace sshring::policy
