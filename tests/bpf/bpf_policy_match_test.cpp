// The kernel's decision must equal Snapshot::classify_flow: a real policy (relays, host groups,
// static opt-out rules, grants live/expired/revoked, nested prefixes, IPv4 and IPv6) is synced into
// the maps through KernelPolicy::from_snapshot, then every flow of a grid of sources x destinations
// x ports x times is sent as a SYN through the TC program and compared with the user-space answer.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <gtest/gtest.h>
#include <time.h>
#include <unistd.h>

#include <optional>
#include <string>
#include <vector>

#include "bpf/kernel_policy.h"
#include "bpf/loader.h"
#include "bpf/map_iter.h"
#include "policy/parser.h"
#include "policy/snapshot.h"
#include "tests/bpf/packet.h"

namespace sshring::bpf {
namespace {

using policy::Cidr;
using policy::IpAddr;

constexpr int64_t kT0 = 1'900'000'000;  // a fixed "now" (2030): the kernel clock is pinned to it

int64_t boot_ns() {
  timespec ts{};
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

policy::Grant grant(const char* id, const char* from, const char* to, const char* ports, int64_t expires,
                    std::optional<int64_t> revoked = {}) {
  policy::Grant g;
  g.id = id;
  g.who = "alice";
  g.from = *Cidr::parse(from);
  g.to = *Cidr::parse(to);
  g.ports = *policy::PortSet::parse(ports);
  g.rule = "ops-direct";
  g.created = kT0 - 7200;
  g.expires = expires;
  g.revoked_at = revoked;
  return g;
}

constexpr const char* kPolicy = R"(version: 1
relays: [10.77.9.0/28, "fd77:9::/120"]
hosts:
  - name: web
    cidrs: [10.77.0.0/24, "fd77::/64"]
    ssh_ports: [22]
  - name: build
    cidrs: [10.77.0.128/25]
    ssh_ports: [22, "2200-2201"]
opt_out:
  - id: ops-direct
    who: {roles: [], principals: [alice]}
    from: [10.77.0.0/16, "fd77::/16"]
    to: {cidrs: [10.77.0.0/24, "fd77::/64"], ports: [22, 2200]}
    max_ttl: 8h
    require_grant: true
    expires: 2031-01-01T00:00:00Z
  - id: ci-static
    who: {roles: [], principals: [alice]}
    from: [10.77.3.0/24]
    to: {cidrs: [10.77.0.128/25], ports: ["2200-2201"]}
    max_ttl: 1h
    standing: true
    expires: 2030-03-17T17:46:50Z
)";

TEST(PolicyMatch, KernelDecisionEqualsClassifyFlow) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to load BPF programs";
  if (::access("/sys/kernel/btf/vmlinux", R_OK) != 0) GTEST_SKIP() << "kernel has no BTF";
  std::optional<BpfObject> obj;
  try {
    obj.emplace(BpfObject::Options{.pin_dir = "", .attach_tracepoint = false});
  } catch (const std::exception& e) {
    FAIL() << "cannot load the BPF object (verifier or loader error): " << e.what();
  }
  auto pol = std::make_shared<const policy::Policy>(policy::parse_policy(kPolicy, "match-test.yaml"));
  std::vector<policy::Grant> grants = {
      grant("g-000000000001", "10.77.1.0/24", "10.77.0.10/32", "22", kT0 + 3600),
      grant("g-000000000002", "10.77.1.128/25", "10.77.0.0/24", "22", kT0 + 60),
      grant("g-000000000003", "10.77.2.0/24", "10.77.0.0/24", "22", kT0 - 60),
      grant("g-000000000004", "10.77.2.7/32", "10.77.0.10/32", "22", kT0 + 5),
      grant("g-000000000005", "10.77.4.0/24", "10.77.0.0/24", "22", kT0 + 3600, kT0 - 1),  // revoked
      grant("g-000000000006", "fd77:1::/64", "fd77::10/128", "22", kT0 + 30),
      grant("g-000000000007", "10.77.0.0/16", "10.77.0.200/32", "2200-2201", kT0 + 1),
      grant("g-000000000008", "10.77.1.0/24", "10.77.0.10/32", "22", kT0 + 3600),  // tie with 1
  };
  auto snap = policy::Snapshot::build(pol, grants);
  MapSync sync(*obj);
  auto r = sync.apply(KernelPolicy::from_snapshot(*snap));
  ASSERT_EQ(r.truncated, 0u);

  const char* sources[] = {"10.77.9.3", "10.77.9.20", "10.77.1.5", "10.77.1.200", "10.77.2.7",
                           "10.77.2.8", "10.77.3.9",  "10.77.4.4", "10.77.5.5",   "192.0.2.1",
                           "fd77:9::1", "fd77:1::1",  "fd77:2::1", "2001:db8::1"};
  const char* dests[] = {"10.77.0.10", "10.77.0.11", "10.77.0.200", "10.77.1.1", "fd77::10", "fd77::11"};
  const uint16_t ports[] = {22, 2200, 2201, 2222};
  const int64_t offsets[] = {-3600, -1, 0, 1, 4, 5, 6, 29, 30, 59, 61, 3599, 3601};

  uint16_t sport = 10000;
  int compared = 0, tagged = 0;
  std::array<int, 5> by_tag{};
  for (int64_t off : offsets) {
    const int64_t now = kT0 + off;
    // Half a second into `now`, so "now < expires" has one answer for the whole second.
    obj->set_clock_offset(now * 1000000000 + 500000000 - boot_ns());
    for (const char* src : sources) {
      for (const char* dst : dests) {
        bool v6 = std::string(src).find(':') != std::string::npos;
        if (v6 != (std::string(dst).find(':') != std::string::npos)) continue;
        for (uint16_t port : ports) {
          SCOPED_TRACE(std::string(src) + " -> " + dst + ":" + std::to_string(port) + " at T0" +
                       (off >= 0 ? "+" : "") + std::to_string(off));
          testing::PacketSpec spec{.src = src, .dst = dst, .sport = sport++, .dport = port};
          auto pkt = testing::build_packet(spec);
          ASSERT_EQ(testing::run_prog(obj->ingress_fd(), pkt).retval, -1);
          sshring_flow_key k{};
          k.family = v6 ? 6 : 4;
          inet_pton(v6 ? AF_INET6 : AF_INET, src, k.client);
          inet_pton(v6 ? AF_INET6 : AF_INET, dst, k.server);
          k.client_port = spec.sport;
          k.server_port = port;
          sshring_flow f{};
          bool have = bpf_map_lookup_elem(obj->map_fd("flows"), &k, &f) == 0;
          auto s = *IpAddr::parse(src);
          auto d = *IpAddr::parse(dst);
          compared++;
          if (!snap->protects(d, port)) {
            EXPECT_FALSE(have) << "unprotected destination must not be tracked";
            continue;
          }
          ASSERT_TRUE(have);
          auto want = snap->classify_flow(s, d, port, now);
          EXPECT_EQ(f.tag, static_cast<int>(want.tag));
          EXPECT_EQ(sync.grant_name(f.grant), std::string(want.id));
          by_tag[f.tag]++;
          tagged++;
          if (sport == 0) sport = 10000;
        }
      }
    }
  }
  // The table exercises every tag.
  for (int t = 1; t <= 4; t++) EXPECT_GT(by_tag[t], 0) << "tag " << t;
  RecordProperty("compared", compared);
  RecordProperty("tagged", tagged);
}

// The same equality past every former kernel limit: a protected prefix with nine port ranges, one
// source prefix with seventeen candidate rules (nested grants plus a static rule), and 20,000 grants
// from distinct sources, all loaded (the rules array is sized for them) and decided as classify_flow.
constexpr const char* kScalePolicy = R"(version: 1
relays: [10.78.9.0/28]
hosts:
  - name: many-ports
    cidrs: [10.78.0.0/24]
    ssh_ports: [22, 2200, 2202, 2204, 2206, 2208, 2210, 2212, 2214]
opt_out:
  - id: ops-direct
    who: {roles: [], principals: [alice]}
    from: [10.78.0.0/15]
    to: {cidrs: [10.78.0.0/24], ports: [22, "2200-2214"]}
    max_ttl: 8h
    require_grant: true
    expires: 2031-01-01T00:00:00Z
  - id: static-wide
    who: {roles: [], principals: [alice]}
    from: [10.78.1.0/24]
    to: {cidrs: [10.78.0.0/24], ports: [2214]}
    max_ttl: 1h
    standing: true
    expires: 2030-03-17T17:46:50Z
)";

TEST(PolicyMatch, KernelDecisionEqualsClassifyFlowPastFormerLimits) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to load BPF programs";
  if (::access("/sys/kernel/btf/vmlinux", R_OK) != 0) GTEST_SKIP() << "kernel has no BTF";
  auto pol = std::make_shared<const policy::Policy>(policy::parse_policy(kScalePolicy, "scale-test.yaml"));
  std::vector<policy::Grant> grants;
  char id[32], from[32], to[32];
  // Seventeen grants covering 10.78.1.5 (from /16 .. /32), each to its own destination/port mix.
  const char* froms[] = {"10.78.0.0/16", "10.78.1.0/24", "10.78.1.0/25", "10.78.1.4/30", "10.78.1.5/32"};
  for (int i = 0; i < 16; i++) {
    std::snprintf(id, sizeof(id), "g-1%011d", i);
    std::snprintf(to, sizeof(to), "10.78.0.%d/%d", i % 2 ? 10 : 0, i % 2 ? 32 : 28 + i % 4);
    const char* ports[] = {"22", "2200-2204", "2206", "2208-2214", "22"};
    grants.push_back(grant(id, froms[i % 5], to, ports[i % 5], kT0 + (i - 8) * 7 + (i % 3)));
  }
  for (int i = 0; i < 20000; i++) {
    std::snprintf(id, sizeof(id), "g-2%011d", i);
    std::snprintf(from, sizeof(from), "10.79.%d.%d/32", i / 250, i % 250);
    grants.push_back(grant(id, from, "10.78.0.10/32", i % 7 == 0 ? "2202" : "22", kT0 + (i % 41) - 20));
  }
  auto snap = policy::Snapshot::build(pol, grants);
  ASSERT_EQ(snap->flow_entries().size(), 16u + 20000u + 1u)
      << "every grant and the static rule are live entries";
  const FoldedPolicy folded = fold_policy(KernelPolicy::from_snapshot(*snap), SIZE_MAX);
  const size_t wanted = folded.rules_wanted;
  size_t most = 0;
  for (const auto& src : folded.sources) most = std::max(most, src.rules.size());
  ASSERT_GE(most, 17u) << "one source prefix has seventeen candidates";
  std::optional<BpfObject> obj;
  obj.emplace(BpfObject::Options{.pin_dir = "", .attach_tracepoint = false, .max_rules = 2 * wanted});
  MapSync sync(*obj);
  auto r = sync.apply(KernelPolicy::from_snapshot(*snap));
  ASSERT_EQ(r.truncated, 0u) << "everything fits";
  ASSERT_GE(r.rules_loaded, 20000u);

  std::vector<std::string> sources = {"10.78.1.5", "10.78.1.6", "10.78.1.200",  "10.78.2.1",
                                      "10.78.9.3", "10.79.0.0", "10.79.79.249", "10.80.0.1"};
  for (int i = 0; i < 20000; i += 397)
    sources.push_back("10.79." + std::to_string(i / 250) + "." + std::to_string(i % 250));
  const char* dests[] = {"10.78.0.10", "10.78.0.3", "10.78.0.11"};
  const uint16_t ports[] = {22, 2200, 2201, 2202, 2206, 2210, 2214, 2215};
  const int64_t offsets[] = {-60, -21, -3, 0, 1, 7, 20, 21, 30, 3601};
  uint16_t sport = 10000;
  int compared = 0, seventeen = 0;
  std::array<int, 5> by_tag{};
  for (int64_t off : offsets) {
    const int64_t now = kT0 + off;
    obj->set_clock_offset(now * 1000000000 + 500000000 - boot_ns());
    for (const auto& src : sources) {
      for (const char* dst : dests) {
        for (uint16_t port : ports) {
          SCOPED_TRACE(src + " -> " + dst + ":" + std::to_string(port) + " at T0" + std::to_string(off));
          testing::PacketSpec spec{.src = src, .dst = dst, .sport = sport++, .dport = port};
          ASSERT_EQ(testing::run_prog(obj->ingress_fd(), testing::build_packet(spec)).retval, -1);
          sshring_flow_key k{};
          k.family = 4;
          inet_pton(AF_INET, src.c_str(), k.client);
          inet_pton(AF_INET, dst, k.server);
          k.client_port = spec.sport;
          k.server_port = port;
          sshring_flow f{};
          bool have = bpf_map_lookup_elem(obj->map_fd("flows"), &k, &f) == 0;
          auto d = *IpAddr::parse(dst);
          compared++;
          if (!snap->protects(d, port)) {
            EXPECT_FALSE(have);
            continue;
          }
          ASSERT_TRUE(have);
          auto want = snap->classify_flow(*IpAddr::parse(src), d, port, now);
          EXPECT_EQ(f.tag, static_cast<int>(want.tag));
          EXPECT_EQ(sync.grant_name(f.grant), std::string(want.id));
          by_tag[f.tag]++;
          if (src == "10.78.1.5") seventeen++;
          if (sport < 10000) sport = 10000;
        }
      }
    }
    // The flow map is an LRU of 65,536: clear it between times so no comparison reads an eviction.
    std::vector<sshring_flow_key> keys;
    for_each_entry<sshring_flow_key, sshring_flow>(obj->map_fd("flows"), [&](const auto& key, const auto&) {
      keys.push_back(key);
      return true;
    });
    for (const auto& key : keys) bpf_map_delete_elem(obj->map_fd("flows"), &key);
  }
  for (int t = 1; t <= 4; t++) EXPECT_GT(by_tag[t], 0) << "tag " << t;
  EXPECT_GT(seventeen, 0);
  RecordProperty("compared", compared);
  RecordProperty("rules_loaded", static_cast<int>(r.rules_loaded));
}

}  // namespace
}  // namespace sshring::bpf
