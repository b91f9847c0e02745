// The pre-authentication budget (relay/admission.h) without sockets: the early-drop curve with a
// controlled random source, per-source caps on IPv4 /32 and IPv6 /64 networks, flag parsing.
#include <gtest/gtest.h>

#include <optional>

#include "common/error.h"
#include "relay/admission.h"

namespace relay = sshring::relay;
using sshring::common::SockAddr;

namespace {

SockAddr addr(const std::string& ip) {
  return *SockAddr::from_ip(ip, 40000);
}

// Admits until the first refusal; returns how many got in.
int fill(relay::Admission& a, const std::string& ip, int max, std::optional<relay::StartupRefusal>* why) {
  relay::Admission::SourceKey k;
  for (int i = 0; i < max; ++i) {
    *why = a.enter(addr(ip), k);
    if (*why) return i;
  }
  return max;
}

}  // namespace

TEST(Admission, PerSourceCapCountsIpv4Slash32AndIpv6Slash64) {
  relay::AdmissionConfig c;
  c.per_source = 3;
  relay::Admission a(c);
  std::optional<relay::StartupRefusal> why;
  EXPECT_EQ(fill(a, "127.0.0.2", 10, &why), 3);
  EXPECT_EQ(why, relay::StartupRefusal::kPerSource);
  EXPECT_EQ(fill(a, "127.0.0.3", 10, &why), 3);  // another /32 has its own share
  // Every address of one /64 shares one count; another /64 does not.
  relay::Admission::SourceKey k;
  EXPECT_FALSE(a.enter(addr("2001:db8:1:2::1"), k));
  EXPECT_FALSE(a.enter(addr("2001:db8:1:2:ffff::9"), k));
  EXPECT_FALSE(a.enter(addr("2001:db8:1:2:1:2:3:4"), k));
  EXPECT_EQ(a.enter(addr("2001:db8:1:2:dead::beef"), k), relay::StartupRefusal::kPerSource);
  EXPECT_FALSE(a.enter(addr("2001:db8:1:3::1"), k));
  EXPECT_EQ(a.from(addr("2001:db8:1:2::77")), 3u);
  // IPv4-mapped IPv6 (dual-stack listener) counts as its IPv4 address.
  EXPECT_EQ(a.enter(addr("::ffff:127.0.0.2"), k), relay::StartupRefusal::kPerSource);
  EXPECT_EQ(a.in_progress(), 10u);
}

TEST(Admission, LeaveGivesTheSlotBackToItsSource) {
  relay::AdmissionConfig c;
  c.per_source = 1;
  relay::Admission a(c);
  relay::Admission::SourceKey k1, k2;
  ASSERT_FALSE(a.enter(addr("10.0.0.1"), k1));
  EXPECT_EQ(a.enter(addr("10.0.0.1"), k2), relay::StartupRefusal::kPerSource);
  // A reload that widens the netblock must still release what was taken under the old key.
  c.v4_prefix = 24;
  a.configure(c);
  a.leave(k1);
  EXPECT_EQ(a.in_progress(), 0u);
  EXPECT_FALSE(a.enter(addr("10.0.0.200"), k2));
  EXPECT_EQ(a.enter(addr("10.0.0.1"), k1), relay::StartupRefusal::kPerSource);  // same /24 now
}

TEST(Admission, EarlyDropFollowsTheMaxStartupsCurve) {
  relay::AdmissionConfig c;
  relay::parse_max_startups("10:30:20", "--max-startups", c);
  c.per_source = 1000;
  uint32_t next = 0;
  relay::Admission a(c, [&] { return next; });
  relay::Admission::SourceKey k;
  next = 0;  // the most "unlucky" draw: refused whenever p > 0
  for (int i = 0; i < 10; ++i) ASSERT_FALSE(a.enter(addr("10.1.0.1"), k)) << i;  // below start: always in
  EXPECT_EQ(a.enter(addr("10.1.0.1"), k), relay::StartupRefusal::kEarlyDrop);
  // At start p = 30%: a draw just under 0.3 * 2^32 is refused, one just over is admitted.
  next = static_cast<uint32_t>(0.29 * 4294967296.0);
  EXPECT_EQ(a.enter(addr("10.1.0.1"), k), relay::StartupRefusal::kEarlyDrop);
  next = static_cast<uint32_t>(0.31 * 4294967296.0);
  EXPECT_FALSE(a.enter(addr("10.1.0.1"), k));  // now 11 in progress: p = 0.3 + 0.7 * 1/10 = 37%
  next = static_cast<uint32_t>(0.36 * 4294967296.0);
  EXPECT_EQ(a.enter(addr("10.1.0.1"), k), relay::StartupRefusal::kEarlyDrop);
  next = 0xffffffffu;  // the luckiest draw gets in until `full`
  while (a.in_progress() < 20) ASSERT_FALSE(a.enter(addr("10.1.0.1"), k));
  EXPECT_EQ(a.enter(addr("10.1.0.1"), k), relay::StartupRefusal::kFull);
}

TEST(Admission, ParsesAndRejectsFlags) {
  relay::AdmissionConfig c;
  relay::parse_max_startups("100", "--max-startups", c);
  EXPECT_EQ(c.start, 100u);
  EXPECT_EQ(c.full, 100u);
  relay::parse_netblock("24:48", "--per-source-netblock", c);
  EXPECT_EQ(c.v4_prefix, 24);
  EXPECT_EQ(c.v6_prefix, 48);
  for (const char* bad : {"", "10:30", "30:10:20", "1:101:5", "a:b:c", "0", "10:30:20:1"})
    EXPECT_THROW(relay::parse_max_startups(bad, "--max-startups", c), sshring::common::UsageError) << bad;
  for (const char* bad : {"33:64", "32:129", "x", "32:"})
    EXPECT_THROW(relay::parse_netblock(bad, "--per-source-netblock", c), sshring::common::UsageError) << bad;
  try {
    relay::parse_max_startups("10:x:20", "--max-startups", c);
  } catch (const sshring::common::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--max-startups '10:x:20'"), std::string::npos) << e.what();
  }
}

TEST(Admission, RefusalNamesAreTheMetricLabels) {
  EXPECT_STREQ(relay::startup_refusal_name(relay::StartupRefusal::kFull), "full");
  EXPECT_STREQ(relay::startup_refusal_name(relay::StartupRefusal::kEarlyDrop), "early_drop");
  EXPECT_STREQ(relay::startup_refusal_name(relay::StartupRefusal::kPerSource), "per_source");
  EXPECT_STREQ(relay::startup_refusal_name(relay::StartupRefusal::kFirstByteTimeout), "first_byte_timeout");
}
