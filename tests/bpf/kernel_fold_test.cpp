// fold_policy without a kernel: what MapSync would write into the policy maps, from a KernelPolicy.
// Checked: ancestors' rules folded into each source prefix, kernel order (latest expiry first, ties:
// smallest id), protected ports inherited from containing prefixes, the watched-port union, the
// capacity cut (longest lists lose their earliest-expiring rules, so a cut only ever refuses), and
// 100,000 grants folding completely.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "bpf/kernel_policy.h"

namespace sshring::bpf {
namespace {

policy::Cidr cidr(const char* s) {
  auto c = policy::Cidr::parse(s);
  if (!c) throw std::invalid_argument(s);
  return *c;
}

const FoldedSource* source(const FoldedPolicy& fp, const char* from) {
  for (const auto& s : fp.sources)
    if (s.from == cidr(from)) return &s;
  return nullptr;
}

std::vector<std::string> ids(const KernelPolicy& kp, const FoldedSource& s) {
  std::vector<std::string> out;
  for (size_t i : s.rules) out.push_back(kp.rules[i].id);
  return out;
}

bool port_set(const sshring_port_bitmap& bm, uint16_t p) {
  return bm.bits[p >> 3] & (1u << (p & 7));
}

KernelPolicy sample() {
  KernelPolicy kp;
  kp.relays = {cidr("10.9.0.0/24")};
  kp.protected_dsts = {{cidr("10.0.0.0/16"), {{22, 22}}}, {cidr("10.0.1.0/24"), {{2200, 2201}}}};
  kp.rules = {
      {cidr("10.1.0.0/16"), cidr("10.0.0.0/16"), 22, 22, 500, "g-wide"},
      {cidr("10.1.2.0/24"), cidr("10.0.0.5/32"), 22, 22, 900, "g-mid"},
      {cidr("10.1.2.3/32"), cidr("10.0.0.5/32"), 22, 22, 100, "g-host"},
      {cidr("10.1.2.0/24"), cidr("10.0.0.6/32"), 22, 22, 900, "g-mid-a"},  // tie with g-mid: id order
      {cidr("10.2.0.0/16"), cidr("10.0.0.0/16"), 22, 22, 300, "g-other"},
  };
  return kp;
}

TEST(KernelFold, FoldsAncestorsInKernelOrder) {
  KernelPolicy kp = sample();
  FoldedPolicy fp = fold_policy(kp, 1000);
  ASSERT_EQ(fp.sources.size(), 4u);
  EXPECT_EQ(ids(kp, *source(fp, "10.1.0.0/16")), (std::vector<std::string>{"g-wide"}));
  EXPECT_EQ(ids(kp, *source(fp, "10.1.2.0/24")), (std::vector<std::string>{"g-mid", "g-mid-a", "g-wide"}));
  EXPECT_EQ(ids(kp, *source(fp, "10.1.2.3/32")),
            (std::vector<std::string>{"g-mid", "g-mid-a", "g-wide", "g-host"}));
  EXPECT_EQ(ids(kp, *source(fp, "10.2.0.0/16")), (std::vector<std::string>{"g-other"}));
  EXPECT_EQ(fp.rules_wanted, 1u + 3u + 4u + 1u);
  EXPECT_EQ(fp.rules_not_loaded, 0u);
  EXPECT_EQ(fp.relays.size(), 1u);
}

TEST(KernelFold, ProtectedPrefixesInheritPortsAndFeedTheWatchedUnion) {
  KernelPolicy kp = sample();
  FoldedPolicy fp = fold_policy(kp, 1000);
  auto key = [](const char* c) {
    auto k = lpm_key(cidr(c));
    auto* b = reinterpret_cast<const uint8_t*>(&k);
    return MapKey(b, b + sizeof(k));
  };
  ASSERT_EQ(fp.protected_dsts.size(), 2u);
  const auto& wide = fp.protected_dsts.at(key("10.0.0.0/16"));
  const auto& narrow = fp.protected_dsts.at(key("10.0.1.0/24"));
  EXPECT_TRUE(port_set(wide, 22));
  EXPECT_FALSE(port_set(wide, 2200));
  EXPECT_TRUE(port_set(narrow, 22)) << "inherited from the /16: the kernel sees only the longest match";
  EXPECT_TRUE(port_set(narrow, 2200));
  EXPECT_TRUE(port_set(narrow, 2201));
  EXPECT_FALSE(port_set(narrow, 2202));
  for (uint16_t p : {22, 2200, 2201}) EXPECT_TRUE(port_set(fp.watched, p)) << p;
  EXPECT_FALSE(port_set(fp.watched, 23));
}

TEST(KernelFold, NinePortRangesAllLoad) {
  KernelPolicy kp;
  std::vector<policy::PortRange> ranges;
  for (uint16_t i = 0; i < 9; i++)
    ranges.push_back({static_cast<uint16_t>(2200 + 2 * i), static_cast<uint16_t>(2200 + 2 * i)});
  kp.protected_dsts = {{cidr("10.0.0.0/24"), ranges}};
  FoldedPolicy fp = fold_policy(kp, 10);
  const auto& bm = fp.protected_dsts.begin()->second;
  for (uint16_t i = 0; i < 9; i++) {
    EXPECT_TRUE(port_set(bm, 2200 + 2 * i));
    EXPECT_FALSE(port_set(bm, 2201 + 2 * i));
  }
}

// Over capacity: every list is cut to the longest length L that fits, from its end. The first rule of
// each remaining list is unchanged, so no flow can become approved that was not.
TEST(KernelFold, CapacityCutDropsEarliestExpiringFromLongestLists) {
  KernelPolicy kp = sample();
  FoldedPolicy fp = fold_policy(kp, 6);  // wanted 9: L = 2 gives 1 + 2 + 2 + 1 = 6
  EXPECT_EQ(fp.rules_not_loaded, 3u);
  EXPECT_EQ(ids(kp, *source(fp, "10.1.2.3/32")), (std::vector<std::string>{"g-mid", "g-mid-a"}));
  EXPECT_EQ(ids(kp, *source(fp, "10.1.2.0/24")), (std::vector<std::string>{"g-mid", "g-mid-a"}));
  EXPECT_EQ(ids(kp, *source(fp, "10.1.0.0/16")), (std::vector<std::string>{"g-wide"}));
  FoldedPolicy none = fold_policy(kp, 0);
  EXPECT_EQ(none.rules_not_loaded, 9u);
  for (const auto& s : none.sources) EXPECT_TRUE(s.rules.empty());
}

TEST(KernelFold, HundredThousandGrantsFold) {
  KernelPolicy kp;
  kp.protected_dsts = {{cidr("10.0.0.0/16"), {{22, 22}}}};
  kp.rules.push_back({cidr("10.64.0.0/10"), cidr("10.0.0.0/16"), 22, 22, 5000, "g-umbrella"});
  for (int i = 0; i < 100000; i++) {
    policy::IpAddr a = policy::IpAddr::v4((10u << 24) | (64u << 16) | static_cast<uint32_t>(i));
    kp.rules.push_back(
        {policy::Cidr::host(a), cidr("10.0.0.1/32"), 22, 22, 1000 + i % 100, "g-" + std::to_string(i)});
  }
  FoldedPolicy fp = fold_policy(kp, 2 * SSHRING_DEFAULT_MAX_RULES * 2);
  EXPECT_EQ(fp.sources.size(), 100001u);
  EXPECT_EQ(fp.rules_wanted, 1u + 2u * 100000u) << "each host list: its grant and the umbrella";
  EXPECT_EQ(fp.rules_not_loaded, 0u);
}

}  // namespace
}  // namespace sshring::bpf
