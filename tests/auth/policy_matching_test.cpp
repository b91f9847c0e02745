// What the relay's authorization relies on in policy matching, attacked: name globs that would
// span labels into an attacker's domain, names-only targets whose DNS answer points at the relay's
// host or a cloud metadata service, and `relays` prefixes so wide that `policy check` must flag them.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include <algorithm>

#include "policy/local_addresses.h"
#include "policy/model.h"
#include "policy/parser.h"
#include "policy/snapshot.h"
#include "protocol/keys.h"

namespace policy = sshring::policy;
namespace protocol = sshring::protocol;

namespace {

struct GlobCase {
  const char* pattern;
  const char* name;
  bool want;
};

TEST(PolicyMatching, GlobWildcardsStayInsideOneLabel) {
  const GlobCase cases[] = {
      {"prod-*", "prod-db", true},
      {"prod-*", "prod-x.attacker.com", false},
      {"prod-*", "PROD-DB", true},
      {"*.example.com", "a.example.com", true},
      {"*.example.com", "a.b.example.com", false},
      {"*.example.com", ".example.com", true},  // '*' may be empty
      {"*.*.example.com", "a.b.example.com", true},
      {"db?.corp", "db1.corp", true},
      {"db?corp", "db.corp", false},  // '?' does not match a dot either
      {"*", "localhost", true},
      {"*", "evil.com", false},
      {"web-*-eu.*.example.com", "web-1-eu.prod.example.com", true},
      {"web-*-eu.*.example.com", "web-1.x-eu.prod.example.com", false},
      {"a*", "a.b", false},
      {"a.*", "a.b.c", false},
  };
  for (const auto& c : cases)
    EXPECT_EQ(policy::glob_match(c.pattern, c.name), c.want) << c.pattern << " ~ " << c.name;
}

class NamesOnlyTargets : public ::testing::Test {
 protected:
  void SetUp() override {
    key_ = protocol::format_openssh_public_key(protocol::Ed25519PrivateKey::generate().public_key(), "k");
    std::string yaml =
        "version: 1\nroles:\n"
        "  - name: web\n    targets:\n"
        "      - names: [\"*.corp.test\"]\n"
        "  - name: meta\n    targets:\n"
        "      - names: [\"meta.cloud.test\"]\n        cidrs: [169.254.169.254/32]\n"
        "principals:\n"
        "  - {name: alice, roles: [web], keys: [\"" +
        key_ +
        "\"]}\n"
        "  - {name: ops, roles: [web, meta], keys: [\"" +
        key_ + "x\"]}\n";
    snap_ = policy::Snapshot::build(std::make_shared<policy::Policy>(policy::parse_policy(yaml)), {});
  }
  policy::Decision decide(const char* principal, const char* name, const char* addr, bool local = false) {
    policy::AuthzRequest r;
    r.target_local = local;
    r.principal = principal;
    r.target_name = name;
    r.target = *policy::IpAddr::parse(addr);
    r.port = 22;
    r.skip_key_check = true;
    return snap_->authorize(r);
  }
  std::string key_;
  std::shared_ptr<const policy::Snapshot> snap_;
};

TEST_F(NamesOnlyTargets, RefuseLoopbackLinkLocalMulticastAndMetadata) {
  EXPECT_TRUE(decide("alice", "db.corp.test", "10.20.30.40").allowed);
  EXPECT_TRUE(decide("alice", "db.corp.test", "2001:db8::5").allowed);
  for (const char* bad : {"127.0.0.1", "127.1.2.3", "0.0.0.0", "169.254.169.254", "169.254.1.1", "224.0.0.1",
                          "239.255.255.250", "255.255.255.255", "::1", "::", "fe80::1", "ff02::1",
                          "fd00:ec2::254", "::ffff:127.0.0.1", "::ffff:169.254.169.254"}) {
    policy::Decision d = decide("alice", "db.corp.test", bad);
    EXPECT_FALSE(d.allowed) << bad;
    EXPECT_EQ(d.reason, policy::Reason::kTargetNotAllowed) << bad;
  }
  // Addresses next to the refused ranges are ordinary.
  for (const char* ok : {"126.255.255.255", "169.253.0.1", "223.255.255.255", "fd00:ec2::253", "fec0::1"})
    EXPECT_TRUE(decide("alice", "db.corp.test", ok).allowed) << ok;
}

TEST_F(NamesOnlyTargets, AnEntryWhoseCidrsListTheAddressAllowsIt) {
  EXPECT_TRUE(decide("ops", "meta.cloud.test", "169.254.169.254").allowed);
  EXPECT_FALSE(decide("ops", "db.corp.test", "169.254.169.254").allowed);  // only via the cidr entry
  EXPECT_FALSE(decide("ops", "meta.cloud.test", "169.254.169.253").allowed);
}

// The relay's own host answers on more than loopback: its LAN address, a VIP. A name that resolves to
// one of them (the relay marks it target_local) is refused like loopback unless cidrs list it.
TEST_F(NamesOnlyTargets, RefuseTheRelaysOwnAddresses) {
  EXPECT_TRUE(decide("alice", "db.corp.test", "10.20.30.40").allowed);
  EXPECT_FALSE(decide("alice", "db.corp.test", "10.20.30.40", true).allowed);
  EXPECT_FALSE(decide("alice", "db.corp.test", "2001:db8::5", true).allowed);
  EXPECT_TRUE(decide("ops", "meta.cloud.test", "169.254.169.254", true).allowed);  // listed by cidrs
}

TEST(PolicyLocalAddresses, ListLoopbackAndNothingForeign) {
  auto local = policy::local_addresses();
  EXPECT_TRUE(std::binary_search(local.begin(), local.end(), *policy::IpAddr::parse("127.0.0.1")));
  EXPECT_FALSE(std::binary_search(local.begin(), local.end(), *policy::IpAddr::parse("192.0.2.1")));
}

TEST(PolicyLint, WideRelaysAreFlagged) {
  std::string key =
      protocol::format_openssh_public_key(protocol::Ed25519PrivateKey::generate().public_key(), "k");
  auto lints_for = [&](const std::string& relays) {
    std::string yaml = "version: 1\nrelays: " + relays +
                       "\nroles:\n  - name: r\n    targets: [{cidrs: [10.0.0.0/8]}]\n"
                       "principals:\n  - {name: a, roles: [r], keys: [\"" +
                       key + "\"]}\n";
    std::string all;
    for (const auto& l : policy::lint_policy(policy::parse_policy(yaml), 1798000000))
      all += l.where + ": " + l.message + "\n";
    return all;
  };
  std::string all =
      lints_for("[0.0.0.0/0, \"::/0\", 10.0.0.0/8, \"2001:db8::/32\", 10.1.2.0/24, \"fd00:1::/64\"]");
  EXPECT_NE(all.find("relays[0]: 0.0.0.0/0 makes every source a relay"), std::string::npos) << all;
  EXPECT_NE(all.find("relays[1]: ::/0 makes every source a relay"), std::string::npos) << all;
  EXPECT_NE(all.find("relays[2]: 10.0.0.0/8 is wider than /16"), std::string::npos) << all;
  EXPECT_NE(all.find("relays[3]: 2001:db8::/32 is wider than /48"), std::string::npos) << all;
  EXPECT_EQ(all.find("relays[4]"), std::string::npos) << all;
  EXPECT_EQ(all.find("relays[5]"), std::string::npos) << all;
  EXPECT_EQ(lints_for("[10.1.2.3/32]").find("relays["), std::string::npos);
}

}  // namespace
