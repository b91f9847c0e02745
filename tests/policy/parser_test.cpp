// Parser: every error path with its message (file:line:column: key: expectation), the example policy,
// its YAML round trip, and the lints of `policy check`.
#include <gtest/gtest.h>

#include "common/civil_time.h"
#include "policy/parser.h"
#include "tests/policy/test_util.h"
#include "tests/support/process.h"

namespace sshring::policy {
namespace {

using testing::kAliceKey;
using testing::kBobKey;

// A small valid policy; error cases replace one line.
std::string base() {
  return std::string(
             "version: 1\n"
             "relays: [10.0.0.0/28]\n"
             "hosts:\n"
             "  - name: prod\n"
             "    cidrs: [10.1.0.0/16]\n"
             "roles:\n"
             "  - name: sre\n"
             "    targets:\n"
             "      - {cidrs: [10.1.0.0/16], ports: [22]}\n"
             "principals:\n"
             "  - name: alice\n"
             "    roles: [sre]\n"
             "    keys: [\"") +
         kAliceKey +
         "\"]\n"
         "opt_out:\n"
         "  - id: ci-direct\n"
         "    who: {roles: [sre]}\n"
         "    from: [10.2.0.0/16]\n"
         "    to: {cidrs: [10.1.5.0/24]}\n"
         "    max_ttl: 8h\n"
         "    expires: 2027-06-30T00:00:00Z\n";
}

std::string replace(std::string s, const std::string& from, const std::string& to) {
  auto pos = s.find(from);
  EXPECT_NE(pos, std::string::npos) << from;
  if (pos != std::string::npos) s.replace(pos, from.size(), to);
  return s;
}

TEST(PolicyParser, BaseIsValid) {
  Policy p = parse_policy(base(), "t.yaml");
  EXPECT_EQ(p.principals.size(), 1u);
  EXPECT_EQ(p.opt_out[0].to_ports, PortSet::single(22));
  EXPECT_TRUE(p.opt_out[0].require_reason);
  EXPECT_FALSE(p.opt_out[0].require_approver);
  EXPECT_EQ(p.hosts[0].ssh_ports, PortSet::single(22));
  EXPECT_EQ(p.grant_store, "/var/lib/sshring/grants");
}

struct ErrorCase {
  const char* name;
  std::string text;
  std::string expected;  // substring of what()
};

std::vector<ErrorCase> error_cases() {
  const std::string b = base();
  std::string many_relays = "version: 1\nrelays: [";
  for (int i = 0; i < 1001; ++i)
    many_relays += (i ? ", " : "") + std::string("10.0.0.") + std::to_string(i % 250) + "/32";
  many_relays += "]\n";
  std::string deep = "version: 1\nrelays: " + std::string(100, '[') + std::string(100, ']') + "\n";
  std::string deep_block = "version: 1\nrelays:\n";
  for (int i = 0; i < 20; ++i) deep_block += "- ";
  deep_block += "x\n";
  std::string deep_indent = "version: 1\nrelays:\n" + std::string(300, ' ') + "- x\n";
  return {
      {"empty", "", "t.yaml:1:1: empty policy; expected a mapping starting with 'version: 1'"},
      {"not_a_map", "- a\n", "t.yaml:1:1: expected a mapping with keys version"},
      {"missing_version", "relays: []\n", "t.yaml:1:1: missing required key 'version'"},
      {"bad_version", replace(b, "version: 1", "version: 2"),
       "t.yaml:1:10: version: expected an integer from 1 to 1, got '2'"},
      {"unknown_top_key", b + "principles: []\n",
       "t.yaml:21:1: principles: unknown key 'principles'; expected one of"},
      {"duplicate_key", b + "version: 1\n", "t.yaml:21:1: version: duplicate key 'version'"},
      {"yaml_syntax", "version: 1\nrelays: [10.0.0.0/8\n", "t.yaml:3:1: YAML syntax error"},
      {"relative_store", replace(b, "version: 1\n", "version: 1\ngrant_store: grants\n"),
       "t.yaml:2:14: grant_store: expected an absolute directory path, got 'grants'"},
      {"etcd_store_no_port", replace(b, "version: 1\n", "version: 1\ngrant_store: etcd://10.0.0.1/sshring\n"),
       "t.yaml:2:14: grant_store: endpoint '10.0.0.1' is not HOST:PORT"},
      {"etcd_store_bad_prefix",
       replace(b, "version: 1\n", "version: 1\ngrant_store: etcd://10.0.0.1:2379/a/\n"),
       "t.yaml:2:14: grant_store: prefix '/a/' must not end with '/'"},
      {"relays_not_list", replace(b, "relays: [10.0.0.0/28]", "relays: 10.0.0.0/28"),
       "t.yaml:2:9: relays: expected a list, got '10.0.0.0/28'"},
      {"bad_cidr", replace(b, "relays: [10.0.0.0/28]", "relays: [10.0.0.300/28]"),
       "t.yaml:2:10: relays[0]: invalid CIDR '10.0.0.300/28': not an IPv4 or IPv6 address"},
      {"host_bits", replace(b, "relays: [10.0.0.0/28]", "relays: [10.0.0.1/8]"),
       "relays[0]: invalid CIDR '10.0.0.1/8': host bits set beyond /8; did you mean 10.0.0.0/8"},
      {"prefix_too_long", replace(b, "relays: [10.0.0.0/28]", "relays: [10.0.0.0/33]"),
       "relays[0]: invalid CIDR '10.0.0.0/33': prefix length must be 0..32"},
      {"v6_prefix_too_long", replace(b, "relays: [10.0.0.0/28]", "relays: [\"fd00::/129\"]"),
       "prefix length must be 0..128"},
      {"duplicate_host", replace(b, "hosts:\n", "hosts:\n  - {name: prod, cidrs: [10.9.0.0/16]}\n"),
       "t.yaml:5:11: hosts[1].name: duplicate host group name 'prod'"},
      {"host_missing_cidrs", replace(b, "    cidrs: [10.1.0.0/16]\nroles", "roles"),
       "t.yaml:4:5: hosts[0]: missing required key 'cidrs'"},
      {"bad_port",
       replace(b, "    cidrs: [10.1.0.0/16]\nroles",
               "    cidrs: [10.1.0.0/16]\n    ssh_ports: [70000]\nroles"),
       "t.yaml:6:17: hosts[0].ssh_ports[0]: invalid port '70000'; expected 1-65535 or a range like "
       "\"2200-2299\""},
      {"port_zero", replace(b, "ports: [22]", "ports: [0]"),
       "roles[0].targets[0].ports[0]: invalid port '0'"},
      {"bad_range", replace(b, "ports: [22]", "ports: [\"30-20\"]"), "invalid port '30-20'"},
      {"empty_ports", replace(b, "ports: [22]", "ports: []"),
       "roles[0].targets[0].ports: list must not be empty"},
      {"duplicate_role", replace(b, "roles:\n", "roles:\n  - {name: sre, targets: []}\n"),
       "t.yaml:8:11: roles[1].name: duplicate role name 'sre'"},
      {"role_unknown_key", replace(b, "  - name: sre\n", "  - name: sre\n    max_session: 3\n"),
       "t.yaml:8:5: roles[0].max_session: unknown key 'max_session'; expected one of name, targets, "
       "max_sessions, "
       "windows"},
      {"target_needs_something", replace(b, "{cidrs: [10.1.0.0/16], ports: [22]}", "{ports: [22]}"),
       "roles[0].targets[0]: a target needs cidrs, names or both"},
      {"bad_glob", replace(b, "{cidrs: [10.1.0.0/16], ports: [22]}", "{names: [\"db!.example.com\"]}"),
       "roles[0].targets[0].names[0]: invalid host name glob 'db!.example.com'"},
      {"bad_days", replace(b, "  - name: sre\n", "  - name: sre\n    windows: [{days: Mon-Fryday}]\n"),
       "roles[0].windows[0].days: unknown day 'Fryday'; use Mon Tue Wed Thu Fri Sat Sun"},
      {"bad_hours", replace(b, "  - name: sre\n", "  - name: sre\n    windows: [{hours: \"8-20\"}]\n"),
       "roles[0].windows[0].hours: invalid hours '8-20'; expected HH:MM-HH:MM"},
      {"bad_hour_value",
       replace(b, "  - name: sre\n", "  - name: sre\n    windows: [{hours: \"08:00-25:00\"}]\n"),
       "invalid time '25:00' in hours '08:00-25:00'"},
      {"empty_window",
       replace(b, "  - name: sre\n", "  - name: sre\n    windows: [{hours: \"08:00-08:00\"}]\n"),
       "roles[0].windows[0].hours: empty window '08:00-08:00': start equals end"},
      {"bad_tz", replace(b, "  - name: sre\n", "  - name: sre\n    windows: [{tz: Mars/Olympus}]\n"),
       "roles[0].windows[0].tz: time zone 'Mars/Olympus': no such zone in the time zone database"},
      {"bad_offset", replace(b, "  - name: sre\n", "  - name: sre\n    windows: [{tz: \"+15:00\"}]\n"),
       "offset out of range"},
      {"max_sessions_zero", replace(b, "  - name: sre\n", "  - name: sre\n    max_sessions: 0\n"),
       "roles[0].max_sessions: expected an integer from 1 to 100000, got '0'"},
      {"unknown_role", replace(b, "roles: [sre]", "roles: [sre, dba]"),
       "t.yaml:12:18: principals[0].roles[1]: unknown role 'dba'; define it under roles:"},
      {"duplicate_role_ref", replace(b, "roles: [sre]", "roles: [sre, sre]"),
       "principals[0].roles[1]: duplicate name 'sre'"},
      {"duplicate_principal", replace(b, "principals:\n", "principals:\n  - name: alice\n"),
       "t.yaml:12:11: principals[1].name: duplicate principal name 'alice'"},
      {"bad_name", replace(b, "  - name: alice\n", "  - name: al ice\n"),
       "principals[0].name: invalid name 'al ice'; use letters, digits"},
      {"rsa_key", replace(b, kAliceKey, "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ alice"),
       "t.yaml:13:12: principals[0].keys[0]: key type ssh-rsa is not supported; only ssh-ed25519 keys are "
       "accepted"},
      {"key_options", replace(b, kAliceKey, "from=\\\"10.0.0.1\\\" ssh-ed25519 AAAA"),
       "principals[0].keys[0]: expected an authorized_keys line starting with ssh-ed25519 (options like "
       "from=... "
       "are not supported)"},
      {"bad_base64", replace(b, kAliceKey, "ssh-ed25519 AAAA$$$$ x"),
       "principals[0].keys[0]: ssh-ed25519 key data is not valid base64"},
      {"truncated_key", replace(b, kAliceKey, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF3oFxm2 x"),
       "ssh-ed25519 key data must hold exactly one 32-byte public key"},
      {"duplicate_key",
       replace(b, std::string("keys: [\"") + kAliceKey + "\"]",
               std::string("keys: [\"") + kAliceKey + "\", \"" + kAliceKey + "\"]"),
       "principals[0].keys[1]: duplicate key SHA256:"},
      {"opt_out_missing_expires", replace(b, "    expires: 2027-06-30T00:00:00Z\n", ""),
       "t.yaml:15:5: opt_out[0]: missing required key 'expires'"},
      {"bad_ttl", replace(b, "max_ttl: 8h", "max_ttl: 8x"),
       "t.yaml:19:14: opt_out[0].max_ttl: invalid duration '8x'; expected e.g. 30m, 8h, 1d"},
      {"bad_expires", replace(b, "2027-06-30T00:00:00Z", "2027-13-30T00:00:00Z"),
       "opt_out[0].expires: invalid time '2027-13-30T00:00:00Z'; expected RFC 3339"},
      {"expires_without_zone", replace(b, "2027-06-30T00:00:00Z", "2027-06-30T00:00:00"), "invalid time"},
      {"empty_who", replace(b, "who: {roles: [sre]}", "who: {roles: []}"),
       "opt_out[0].who: who needs at least one role or principal"},
      {"who_unknown_role", replace(b, "who: {roles: [sre]}", "who: {roles: [ops]}"),
       "opt_out[0].who.roles[0]: unknown role 'ops'"},
      {"who_unknown_key", replace(b, "who: {roles: [sre]}", "who: {groups: [sre]}"),
       "opt_out[0].who.groups: unknown key 'groups'; expected one of roles, principals"},
      {"duplicate_rule",
       b + "  - {id: ci-direct, who: {roles: [sre]}, from: [10.2.0.0/16], to: {cidrs: [10.1.5.0/24]}, "
           "max_ttl: 1h, expires: 2027-01-01T00:00:00Z}\n",
       "t.yaml:21:10: opt_out[1].id: duplicate opt_out id 'ci-direct'"},
      {"reserved_id", replace(b, "id: ci-direct", "id: g-123"),
       "ids starting with 'g-' are reserved for grants"},
      {"bad_bool", replace(b, "    max_ttl: 8h\n", "    max_ttl: 8h\n    require_reason: yes\n"),
       "opt_out[0].require_reason: expected true or false, got 'yes'"},
      {"to_missing_cidrs", replace(b, "to: {cidrs: [10.1.5.0/24]}", "to: {ports: [22]}"),
       "opt_out[0].to: missing required key 'cidrs'"},
      {"from_empty", replace(b, "from: [10.2.0.0/16]", "from: []"),
       "opt_out[0].from: list must not be empty"},
      {"too_many_items", many_relays, "t.yaml:2:9: relays: list has 1001 items; at most 1000 are allowed"},
      {"too_deep", deep, "t.yaml:2:41: nesting too deep"},
      {"too_deep_block", deep_block, "t.yaml:3:33: nesting too deep"},
      {"too_deep_indent", deep_indent, "t.yaml:3:301: nesting too deep"},
      {"invalid_utf8", replace(b, "alice@laptop", "alic\x9b@laptop"),
       "principals[0].keys[0]: value contains control characters or invalid UTF-8; use printable text"},
      {"key_not_string", replace(b, "relays: [10.0.0.0/28]", "? [a]\n: b"), "keys must be plain strings"},
      {"audit_key_not_a_list", b + "audit_keys: {writer: x}\n", "t.yaml:21:13: audit_keys: expected a list"},
      {"audit_key_missing_key", b + "audit_keys:\n  - writer: relay@h1\n",
       "audit_keys[0]: missing required key 'key'"},
      {"audit_key_bad_writer", b + "audit_keys:\n  - {writer: \"relay h1\", key: \"" + kAliceKey + "\"}\n",
       "audit_keys[0].writer: invalid writer 'relay h1'; use component@host"},
      {"audit_key_not_ed25519", b + "audit_keys:\n  - {writer: \"*\", key: \"ssh-rsa AAAAB3NzaC1yc2E=\"}\n",
       "audit_keys[0].key: "},
      {"audit_key_duplicate",
       b + "audit_keys:\n  - {writer: \"*\", key: \"" + kAliceKey + "\"}\n  - {writer: \"*\", key: \"" +
           kAliceKey + "\"}\n",
       "audit_keys[1]: duplicate audit key SHA256:"},
      {"audit_key_unknown_field",
       b + "audit_keys:\n  - {writer: \"*\", key: \"" + kAliceKey + "\", why: x}\n",
       "audit_keys[0].why: unknown key 'why'; expected one of writer, key"},
  };
}

TEST(PolicyParser, EveryErrorPathNamesFileLineKeyAndExpectation) {
  for (const auto& c : error_cases()) {
    SCOPED_TRACE(c.name);
    try {
      parse_policy(c.text, "t.yaml");
      ADD_FAILURE() << c.name << ": parsed without error";
    } catch (const PolicyError& e) {
      EXPECT_NE(std::string(e.what()).find(c.expected), std::string::npos)
          << c.name << "\n  got:      " << e.what() << "\n  expected: " << c.expected;
      EXPECT_EQ(e.file(), "t.yaml");
    }
  }
}

// audit_keys: one entry per writer (or '*'), the same key may serve two writers; the YAML writer
// keeps them.
TEST(PolicyParser, AuditKeysParseAndRoundTrip) {
  const std::string text = base() + "audit_keys:\n  - writer: relay@bastion1.example.com\n    key: \"" +
                           kAliceKey + "\"\n  - {writer: \"*\", key: \"" + kBobKey +
                           "\"}\n  - {writer: agent@db1, key: \"" + kAliceKey + "\"}\n";
  Policy p = parse_policy(text, "t.yaml");
  ASSERT_EQ(p.audit_keys.size(), 3u);
  EXPECT_EQ(p.audit_keys[0].writer, "relay@bastion1.example.com");
  EXPECT_EQ(p.audit_keys[1].writer, "*");
  EXPECT_EQ(p.audit_keys[0].key.fingerprint, p.audit_keys[2].key.fingerprint);
  EXPECT_NE(p.audit_keys[0].key.fingerprint, p.audit_keys[1].key.fingerprint);
  EXPECT_EQ(parse_policy(to_yaml(p), "again.yaml"), p);
  EXPECT_TRUE(parse_policy(base(), "t.yaml").audit_keys.empty());
}

TEST(PolicyParser, FileTooLarge) {
  std::string big = "version: 1\n# " + std::string(kMaxPolicyBytes, 'x') + "\n";
  try {
    parse_policy(big, "big.yaml");
    FAIL();
  } catch (const PolicyError& e) {
    EXPECT_NE(std::string(e.what()).find("big.yaml:1:1: file is"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("are allowed"), std::string::npos);
  }
}

TEST(PolicyParser, ErrorAccessors) {
  try {
    parse_policy(replace(base(), "max_ttl: 8h", "max_ttl: 8x"), "t.yaml");
    FAIL();
  } catch (const PolicyError& e) {
    EXPECT_EQ(e.line(), 19);
    EXPECT_EQ(e.column(), 14);
    EXPECT_EQ(e.key(), "opt_out[0].max_ttl");
    EXPECT_EQ(e.message(), "invalid duration '8x'; expected e.g. 30m, 8h, 1d");
  }
}

TEST(PolicyParser, MissingFileIsASystemError) {
  EXPECT_THROW(load_policy_file("/nonexistent/policy.yaml"), common::SystemError);
}

TEST(PolicyParser, ExamplePolicyParsesAndRoundTrips) {
  Policy p = load_policy_file(testing::example_policy_path());
  ASSERT_EQ(p.principals.size(), 5u);
  ASSERT_EQ(p.roles.size(), 5u);
  ASSERT_EQ(p.opt_out.size(), 3u);
  EXPECT_EQ(p.relays.size(), 2u);
  EXPECT_EQ(p.relays[1].to_string(), "fd00::/120");
  const Role* sre = p.find_role("sre");
  ASSERT_NE(sre, nullptr);
  EXPECT_EQ(sre->max_sessions, 20u);
  ASSERT_EQ(sre->targets.size(), 2u);
  EXPECT_EQ(sre->targets[1].names[0], "*.prod.example.com");
  EXPECT_EQ(sre->targets[1].ports.to_string(), "22,2222");
  EXPECT_EQ(sre->windows[0].days, 0b0111110);  // Mon..Fri
  EXPECT_EQ(sre->windows[0].start_min, 8 * 60);
  EXPECT_EQ(sre->windows[0].end_min, 20 * 60);
  const Role* oncall = p.find_role("oncall");
  ASSERT_NE(oncall, nullptr);
  EXPECT_EQ(oncall->windows[1].end_min, 1440);
  EXPECT_EQ(p.find_principal("alice")->keys[0].fingerprint, testing::kAliceFingerprint);
  EXPECT_EQ(p.opt_out[0].max_ttl_seconds, 8 * 3600);
  EXPECT_EQ(common::format_rfc3339(p.opt_out[0].expires), "2027-02-15T00:00:00Z");
  EXPECT_TRUE(p.opt_out[0].standing);
  EXPECT_EQ(p.opt_out[1].approvals_count, 2u);
  EXPECT_EQ(p.opt_out[1].approvers.roles, std::vector<std::string>{"security"});
  EXPECT_EQ(p.opt_out[1].request_ttl_seconds, 3600);
  EXPECT_TRUE(p.opt_out[2].break_glass);
  EXPECT_EQ(p.opt_out[2].review_within_seconds, 86400);
  EXPECT_EQ(p.opt_out[2].reviewers.roles, std::vector<std::string>{"security"});
  EXPECT_EQ(p.hosts[1].ssh_ports.to_string(), "22,2200-2209");

  std::string emitted = to_yaml(p);
  Policy again = parse_policy(emitted, "roundtrip.yaml");
  EXPECT_EQ(again, p) << emitted;
  EXPECT_EQ(to_yaml(again), emitted);               // a fixed point
  EXPECT_TRUE(lint_policy(p, 1798761600).empty());  // 2027-01-01: nothing suspicious
}

TEST(PolicyParser, LongFlatLinesAreFine) {
  std::string y = "version: 1\nrelays: [";
  for (int i = 0; i < 200; ++i) y += (i ? ", " : "") + std::string("10.0.") + std::to_string(i) + ".0/24";
  y += "]\nroles: [{name: r, targets: [";
  for (int i = 0; i < 50; ++i)
    y += (i ? ", " : "") + std::string("{cidrs: [10.9.") + std::to_string(i) + ".0/24], ports: [22]}";
  y += "]}]\n";
  Policy p = parse_policy(y);
  EXPECT_EQ(p.relays.size(), 200u);
  EXPECT_EQ(p.roles[0].targets.size(), 50u);
}

TEST(PolicyParser, DaysAndHoursForms) {
  auto with = [](const std::string& w) {
    return replace(base(), "  - name: sre\n", "  - name: sre\n    windows: [" + w + "]\n");
  };
  EXPECT_EQ(parse_policy(with("{days: \"Mon,Wed,Fri\"}")).roles[0].windows[0].days, 0b0101010);
  EXPECT_EQ(parse_policy(with("{days: Fri-Mon}")).roles[0].windows[0].days, 0b1100011);  // Fri Sat Sun Mon
  EXPECT_EQ(parse_policy(with("{days: daily}")).roles[0].windows[0].days, 0x7f);
  auto w = parse_policy(with("{hours: \"22:00-06:00\", tz: \"+05:30\"}")).roles[0].windows[0];
  EXPECT_EQ(w.start_min, 22 * 60);
  EXPECT_EQ(w.end_min, 6 * 60);
  EXPECT_EQ(w.tz->offset_at(0), 5 * 3600 + 30 * 60);
  auto to_midnight = parse_policy(with("{hours: \"22:00-00:00\"}")).roles[0].windows[0];
  EXPECT_EQ(to_midnight.end_min, 1440);
}

TEST(PolicyLint, FlagsWhatTheIssueLists) {
  std::string y =
      std::string(
          "version: 1\n"
          "roles:\n"
          "  - name: sre\n"
          "    targets:\n"
          "      - {cidrs: [10.1.0.0/16], ports: [22, 2222]}\n"
          "      - {cidrs: [10.1.5.0/24], ports: [22]}\n"
          "  - name: unused\n"
          "    targets: [{cidrs: [10.9.0.0/16]}]\n"
          "principals:\n"
          "  - {name: alice, roles: [sre], keys: [\"") +
      kAliceKey + "\"]}\n  - {name: mallory, roles: [sre], keys: [\"" + kAliceKey +
      "\"]}\n"
      "opt_out:\n"
      "  - {id: wide, who: {roles: [sre]}, from: [0.0.0.0/0], to: {cidrs: [10.1.0.0/16]}, max_ttl: 3d, "
      "expires: 2027-01-01T00:00:00Z}\n"
      "  - {id: narrow, who: {principals: [ghost]}, from: [10.2.0.0/16], to: {cidrs: [10.1.5.0/24]}, "
      "max_ttl: 1h, expires: 2020-01-01T00:00:00Z}\n"
      "  - {id: v6, who: {roles: [sre]}, from: [\"::/0\"], to: {cidrs: [\"fd01::/64\"]}, max_ttl: 1h, "
      "expires: 2027-01-01T00:00:00Z}\n";
  Policy p = parse_policy(y, "lint.yaml");
  auto lints = lint_policy(p, 1798000000);
  std::string all;
  for (const auto& l : lints) all += l.where + ": " + l.message + "\n";
  auto has = [&](const std::string& s) { return all.find(s) != std::string::npos; };
  EXPECT_TRUE(has("roles[unused]: role is not used by any principal")) << all;
  EXPECT_TRUE(has("roles[sre].targets[1]: shadowed by targets[0]")) << all;
  EXPECT_TRUE(has("is also listed for principal alice")) << all;
  EXPECT_TRUE(has("opt_out[wide]: from 0.0.0.0/0 allows direct SSH from every source")) << all;
  EXPECT_TRUE(has("opt_out[v6]: from ::/0 allows direct SSH from every source")) << all;
  EXPECT_TRUE(has("opt_out[wide]: max_ttl 3d is over the sane maximum of 24h")) << all;
  EXPECT_TRUE(has("opt_out[narrow]: rule expired at 2020-01-01T00:00:00Z")) << all;
  EXPECT_TRUE(has("opt_out[narrow]: who.principals names 'ghost', which is not a principal")) << all;
  EXPECT_TRUE(has("opt_out[narrow]: flows it covers are all covered by opt_out[wide] (shadowed)")) << all;
  EXPECT_FALSE(has("opt_out[v6]: flows")) << all;
}

TEST(PolicyLint, OverlapWithoutContainment) {
  std::string y =
      "version: 1\nroles: [{name: r, targets: [{cidrs: [10.0.0.0/8]}]}]\nprincipals: [{name: p, roles: "
      "[r]}]\n"
      "opt_out:\n"
      "  - {id: a, who: {roles: [r]}, from: [10.2.0.0/16], to: {cidrs: [10.1.0.0/16]}, max_ttl: 1h, expires: "
      "2027-01-01T00:00:00Z}\n"
      "  - {id: b, who: {roles: [r]}, from: [10.2.3.0/24, 10.7.0.0/16], to: {cidrs: [10.1.0.0/16]}, max_ttl: "
      "1h, "
      "expires: 2027-01-01T00:00:00Z}\n";
  auto lints = lint_policy(parse_policy(y), 1798000000);
  std::string all;
  for (const auto& l : lints) all += l.where + ": " + l.message + "\n";
  EXPECT_NE(all.find("opt_out[a]: overlaps opt_out[b]"), std::string::npos) << all;
}

// The grant-workflow fields: defaults, limits and contradictions, and the standing lint.
TEST(PolicyParser, GrantRuleFields) {
  auto rule = [](const std::string& extra) {
    return "version: 1\nroles: [{name: r, targets: [{cidrs: [10.0.0.0/8]}]}, {name: sec, targets: [{cidrs: "
           "[10.0.0.0/8]}]}]\nprincipals: [{name: p, roles: [r]}]\nopt_out:\n  - {id: a, who: {roles: [r]}, "
           "from: [10.2.0.0/16], to: {cidrs: [10.1.0.0/16]}, max_ttl: 1h, expires: 2027-03-01T00:00:00Z" +
           extra + "}\n";
  };
  Policy d = parse_policy(rule(""), "t.yaml");
  EXPECT_EQ(d.opt_out[0].approvals_count, 0u);
  EXPECT_FALSE(d.opt_out[0].standing);
  EXPECT_EQ(d.opt_out[0].request_ttl_seconds, 3600);
  EXPECT_EQ(d.opt_out[0].review_within_seconds, 86400);
  Policy a = parse_policy(rule(", approvals: {count: 2, roles: [sec], principals: [p]}, request_ttl: 30m"),
                          "t.yaml");
  EXPECT_EQ(a.opt_out[0].approvals_count, 2u);
  EXPECT_EQ(a.opt_out[0].approvers.principals, std::vector<std::string>{"p"});
  EXPECT_EQ(a.opt_out[0].request_ttl_seconds, 1800);
  EXPECT_EQ(parse_policy(rule(", require_approver: true"), "t.yaml").opt_out[0].approvals_count, 1u);
  EXPECT_EQ(parse_policy(to_yaml(a), "again.yaml"), a);
  struct Bad {
    std::string extra;
    const char* error;
  } bad[] = {
      {", approvals: {count: 17}", "approvals.count: expected an integer from 0 to 16"},
      {", approvals: {roles: [nope]}", "approvals.roles[0]: unknown role 'nope'"},
      {", approvals: {quorum: 2}", "unknown key 'quorum'"},
      {", request_ttl: 8d", "request_ttl: invalid duration '8d'"},
      {", standing: true, require_grant: true", "a standing rule cannot also set require_grant: true"},
      {", break_glass: true, approvals: {count: 1}", "break_glass grants are self-approved"},
      {", break_glass: true, standing: true", "a break_glass rule cannot be standing"},
  };
  for (const auto& b : bad) {
    try {
      parse_policy(rule(b.extra), "t.yaml");
      ADD_FAILURE() << "accepted: " << b.extra;
    } catch (const PolicyError& e) {
      EXPECT_NE(std::string(e.what()).find(b.error), std::string::npos) << e.what();
    }
  }
  std::string glass = rule(", break_glass: true");
  glass.replace(glass.find("max_ttl: 1h"), 11, "max_ttl: 5h");
  EXPECT_THROW(parse_policy(glass, "t.yaml"), PolicyError);
  // A standing exception is flagged when it lasts more than 90 days from now.
  Policy st = parse_policy(rule(", standing: true"), "t.yaml");
  auto has_standing_lint = [&](UnixSeconds now) {
    for (const auto& l : lint_policy(st, now))
      if (l.message.find("standing exception") != std::string::npos) return true;
    return false;
  };
  EXPECT_TRUE(has_standing_lint(1798761600 - 90 * 86400));  // 2026-10-03: 149 days left
  EXPECT_FALSE(has_standing_lint(1798761600));              // 2027-01-01: 59 days left
}

}  // namespace
}  // namespace sshring::policy
