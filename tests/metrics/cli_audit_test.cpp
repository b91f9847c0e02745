// `sshring audit verify|report` end to end on a crafted log.
#include <gtest/gtest.h>

#include <filesystem>

#include "tests/metrics/crafted_log.h"

namespace sshring::metrics {
namespace {

using sshring::testing::TempDir;

TEST(AuditCliTest, VerifyAndReport) {
  TempDir dir;
  craft(dir);
  std::string out;
  ASSERT_EQ(sshring::testing::run(
                {sshring::testing::sshring_bin(), "audit", "verify", dir.file("agent.audit.jsonl")}, &out),
            0)
      << out;
  EXPECT_NE(out.find("OK"), std::string::npos) << out;
  ASSERT_EQ(sshring::testing::run({sshring::testing::sshring_bin(), "audit", "report", "--json", "--since",
                                   "1h", "--dir", dir.path()},
                                  &out),
            0)
      << out;
  auto pos = out.find('{');
  ASSERT_NE(pos, std::string::npos) << out;
  auto j = nlohmann::json::parse(out.substr(pos));
  EXPECT_EQ(j["flows_by_tag"][0]["flows"], 3);
  EXPECT_EQ(j["grants"][0]["approver"], "bob");

  // Break the chain: verify exits 1 and names file:line.
  auto content = sshring::testing::read_file(dir.file("agent.audit.jsonl"));
  auto p = content.find("10.0.0.66");
  content[p + 8] = '7';
  sshring::testing::write_file(dir.file("agent.audit.jsonl"), content);
  EXPECT_EQ(
      sshring::testing::run({sshring::testing::sshring_bin(), "audit", "verify", "--dir", dir.path()}, &out),
      1)
      << out;
  EXPECT_NE(out.find("agent.audit.jsonl:1:"), std::string::npos) << out;
}

// What `sshring grant` writes is what `sshring audit` reads: add and revoke a grant under the example
// policy, then verify the chain and find the grant, its reason and status in the report.
TEST(AuditCliTest, GrantCommandRecordsVerifyAndReport) {
  TempDir dir;
  std::string policy =
      sshring::testing::read_file(std::string(SSHRING_SOURCE_DIR) + "/deploy/examples/policy.yaml");
  auto pos = policy.find("grant_store: /var/lib/sshring/grants");
  ASSERT_NE(pos, std::string::npos) << "example policy has no grant_store line to redirect";
  policy.replace(pos, std::string("grant_store: /var/lib/sshring/grants").size(),
                 "grant_store: " + dir.file("grants"));
  // The example's opt-out rules end in 2027; keep the test independent of today's date.
  for (size_t p; (p = policy.find("expires: 2027-")) != std::string::npos;)
    policy.replace(p, 14, "expires: 2099-");
  // Grants are signed: ci-bot's key in the policy becomes one whose private half this test holds.
  const std::string key = dir.file("ci-bot");
  ASSERT_EQ(sshring::testing::sh("ssh-keygen -q -t ed25519 -N '' -C ci-runner -f " + key), 0);
  std::string pub = sshring::testing::read_file(key + ".pub");
  pub.erase(pub.find_last_not_of('\n') + 1);
  const std::string example_key =
      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDbGuMWnp8lY9YGO88UD2iSYja7HzYOGXSnDg2phPduU ci-runner";
  pos = policy.find(example_key);
  ASSERT_NE(pos, std::string::npos) << "ci-bot's key in the example policy changed";
  policy.replace(pos, example_key.size(), pub);
  sshring::testing::write_file(dir.file("policy.yaml"), policy);
  const std::string bin = sshring::testing::sshring_bin();
  const std::string log = dir.file("grant.audit.jsonl");
  std::string out;
  int rc = sshring::testing::run(
      {bin, "grant", "add", "--policy", dir.file("policy.yaml"), "--identity", key, "--from", "10.2.0.5",
       "--to", "10.1.5.7", "--ttl", "1h", "--reason", "deploy INC-7", "--audit-log", log},
      &out);
  ASSERT_EQ(rc, 0) << out;
  auto id_start = out.find("g-");
  ASSERT_NE(id_start, std::string::npos) << out;
  std::string id = out.substr(id_start, out.find(' ', id_start) - id_start);
  ASSERT_EQ(sshring::testing::run({bin, "grant", "revoke", id, "--reason", "done", "--policy",
                                   dir.file("policy.yaml"), "--identity", key, "--audit-log", log},
                                  &out),
            0)
      << out;

  ASSERT_EQ(sshring::testing::run({bin, "audit", "verify", log}, &out), 0) << out;
  EXPECT_NE(out.find("2 records"), std::string::npos) << out;
  ASSERT_EQ(sshring::testing::run({bin, "audit", "report", "--json", log}, &out), 0) << out;
  auto j = nlohmann::json::parse(out.substr(out.find('{')));
  ASSERT_EQ(j["grants"].size(), 1u) << j.dump(2);
  EXPECT_EQ(j["grants"][0]["grant_id"], id);
  EXPECT_EQ(j["grants"][0]["status"], "revoked");
  EXPECT_EQ(j["grants"][0]["reason"], "deploy INC-7");
  EXPECT_EQ(j["grants"][0]["who"], "ci-bot");
}

// The example policy with its grant store in `dir` (false: the example has no grant_store line).
bool example_policy(const TempDir& dir) {
  std::string policy =
      sshring::testing::read_file(std::string(SSHRING_SOURCE_DIR) + "/deploy/examples/policy.yaml");
  auto pos = policy.find("grant_store: /var/lib/sshring/grants");
  if (pos == std::string::npos) return false;
  policy.replace(pos, std::string("grant_store: /var/lib/sshring/grants").size(),
                 "grant_store: " + dir.file("grants"));
  for (size_t p; (p = policy.find("expires: 2027-")) != std::string::npos;)
    policy.replace(p, 14, "expires: 2099-");
  // Grants are signed: ci-bot's key in the policy becomes one whose private half dir/ci-bot holds.
  const std::string key = dir.file("ci-bot");
  if (sshring::testing::sh("ssh-keygen -q -t ed25519 -N '' -C ci-runner -f " + key) != 0) return false;
  std::string pub = sshring::testing::read_file(key + ".pub");
  pub.erase(pub.find_last_not_of('\n') + 1);
  const std::string example_key =
      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDbGuMWnp8lY9YGO88UD2iSYja7HzYOGXSnDg2phPduU ci-runner";
  pos = policy.find(example_key);
  if (pos == std::string::npos) return false;
  policy.replace(pos, example_key.size(), pub);
  sshring::testing::write_file(dir.file("policy.yaml"), policy);
  return true;
}

std::vector<std::string> grant_add(const TempDir& dir, const std::string& log, const std::string& key = "") {
  std::vector<std::string> argv = {sshring::testing::sshring_bin(),
                                   "grant",
                                   "add",
                                   "--policy",
                                   dir.file("policy.yaml"),
                                   "--identity",
                                   dir.file("ci-bot"),
                                   "--from",
                                   "10.2.0.5",
                                   "--to",
                                   "10.1.5.7",
                                   "--ttl",
                                   "1h",
                                   "--reason",
                                   "deploy INC-7",
                                   "--audit-log",
                                   log};
  if (!key.empty()) argv.insert(argv.end(), {"--audit-key", key});
  return argv;
}

// No record, no grant: with the audit log on a full device the command fails and stores nothing.
TEST(AuditCliTest, GrantAddWithTheAuditLogOnAFullDeviceExitsOneAndStoresNothing) {
  TempDir dir;
  ASSERT_TRUE(example_policy(dir)) << "example policy has no grant_store line or ci-bot key to redirect";
  if (!sshring::testing::make_full_device(dir.file("grant.audit.jsonl")))
    GTEST_SKIP() << "cannot make a full device";
  std::string cmd;
  for (const auto& a : grant_add(dir, dir.file("grant.audit.jsonl"))) cmd += "'" + a + "' ";
  std::string out;
  EXPECT_EQ(sshring::testing::sh(cmd + "2>&1", &out), 1) << out;
  EXPECT_NE(out.find("not added"), std::string::npos) << out;
  EXPECT_NE(out.find("No space left on device"), std::string::npos) << out;
  size_t grants = 0;
  if (std::filesystem::exists(dir.file("grants"))) {
    for (const auto& e : std::filesystem::recursive_directory_iterator(dir.file("grants")))
      grants += e.is_regular_file() && e.path().extension() == ".json";
  }
  EXPECT_EQ(grants, 0u);
  ASSERT_EQ(sshring::testing::run({sshring::testing::sshring_bin(), "grant", "list", "--json", "--policy",
                                   dir.file("policy.yaml"), "--audit-log", dir.file("other.audit.jsonl")},
                                  &out),
            0)
      << out;
  auto j = nlohmann::json::parse(out.substr(out.find('[')));
  EXPECT_TRUE(j.empty()) << out;
}

// Signed grant log end to end: the key is created on first use, its public half goes into a
// trusted-keys file, verify checks the checkpoints; a cut tail and a forged key fail with exit 1.
TEST(AuditCliTest, SignedCheckpointsVerifyAndACutTailFails) {
  TempDir dir;
  ASSERT_TRUE(example_policy(dir)) << "example policy has no grant_store line or ci-bot key to redirect";
  const std::string bin = sshring::testing::sshring_bin();
  const std::string log = dir.file("grant.audit.jsonl"), key = dir.file("grant.key");
  std::string out;
  for (int i = 0; i < 2; ++i) ASSERT_EQ(sshring::testing::run(grant_add(dir, log, key), &out), 0) << out;
  ASSERT_EQ(sshring::testing::run({bin, "audit", "key", "--audit-key", key, "--writer", "*"}, &out), 0)
      << out;
  sshring::testing::write_file(dir.file("trusted"), out);
  ASSERT_EQ(sshring::testing::run({bin, "audit", "verify", "--trusted-keys", dir.file("trusted"), log}, &out),
            0)
      << out;
  EXPECT_NE(out.find("2 signed checkpoints"), std::string::npos) << out;

  // Another key is not trusted: exit 1 at the first checkpoint.
  ASSERT_EQ(sshring::testing::run(
                {bin, "audit", "key", "--audit-key", dir.file("other.key"), "--writer", "*"}, &out),
            0);
  sshring::testing::write_file(dir.file("untrusted"), out);
  EXPECT_EQ(
      sshring::testing::run({bin, "audit", "verify", "--trusted-keys", dir.file("untrusted"), log}, &out), 1)
      << out;
  EXPECT_NE(out.find("signature does not verify"), std::string::npos) << out;

  // Cut the final checkpoint off while no writer runs.
  auto content = sshring::testing::read_file(log);
  std::filesystem::resize_file(log, content.rfind('\n', content.size() - 2) + 1);
  EXPECT_EQ(sshring::testing::run({bin, "audit", "verify", "--trusted-keys", dir.file("trusted"), log}, &out),
            1)
      << out;
  EXPECT_NE(out.find("without a final checkpoint"), std::string::npos) << out;
}

// The policy's audit_keys are trusted like --trusted-keys lines: the right key for any writer ('*')
// verifies; the same key listed only for another writer, or another key, does not; a policy without
// audit_keys is a usage error rather than a silent chain-only check.
TEST(AuditCliTest, PolicyAuditKeysAreTrustedForTheirWriterOnly) {
  TempDir dir;
  ASSERT_TRUE(example_policy(dir)) << "example policy has no grant_store line or ci-bot key to redirect";
  const std::string bin = sshring::testing::sshring_bin();
  const std::string log = dir.file("grant.audit.jsonl"), key = dir.file("grant.key");
  std::string out;
  for (int i = 0; i < 2; ++i) ASSERT_EQ(sshring::testing::run(grant_add(dir, log, key), &out), 0) << out;
  ASSERT_EQ(sshring::testing::run({bin, "audit", "key", "--audit-key", key, "--pub"}, &out), 0) << out;
  const std::string pub = out.substr(0, out.find('\n'));
  ASSERT_EQ(pub.rfind("ssh-ed25519 ", 0), 0u) << pub;
  ASSERT_EQ(sshring::testing::run({bin, "audit", "key", "--audit-key", dir.file("other.key"), "--pub"}, &out),
            0);
  const std::string other = out.substr(0, out.find('\n'));
  auto policy_with = [&](const std::string& name, const std::string& writer, const std::string& k) {
    sshring::testing::write_file(
        dir.file(name), "version: 1\naudit_keys:\n  - writer: \"" + writer + "\"\n    key: \"" + k + "\"\n");
    return dir.file(name);
  };

  EXPECT_EQ(sshring::testing::run(
                {bin, "audit", "verify", "--policy", policy_with("any.yaml", "*", pub), log}, &out),
            0)
      << out;
  EXPECT_NE(out.find("2 signed checkpoints"), std::string::npos) << out;
  EXPECT_EQ(sshring::testing::run({bin, "audit", "verify", "--policy",
                                   policy_with("elsewhere.yaml", "relay@elsewhere", pub), log},
                                  &out),
            1)
      << out;
  EXPECT_EQ(sshring::testing::run(
                {bin, "audit", "verify", "--policy", policy_with("other.yaml", "*", other), log}, &out),
            1)
      << out;
  EXPECT_NE(out.find("signature does not verify"), std::string::npos) << out;

  sshring::testing::write_file(dir.file("none.yaml"), "version: 1\n");
  EXPECT_EQ(sshring::testing::sh(
                bin + " audit verify --policy " + dir.file("none.yaml") + " " + log + " 2>&1", &out),
            2)
      << out;
  EXPECT_NE(out.find("lists no audit_keys"), std::string::npos) << out;
}

}  // namespace
}  // namespace sshring::metrics
