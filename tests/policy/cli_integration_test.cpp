// `sshring policy` and `sshring grant` run as the built binary: exit codes, messages, JSON, the
// audit records of grant changes, and concurrent `grant add` processes.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <sstream>
#include <thread>

#include "policy/grant_store.h"
#include "tests/policy/test_util.h"
#include "tests/support/process.h"

namespace sshring::policy {
namespace {

using sshring::testing::TempDir;

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Runs sshring with args; stdout and stderr together in *out.
int cli(const std::vector<std::string>& args, std::string* out, const std::string& env = "USER=tester ") {
  std::string cmd = env + quote(sshring::testing::sshring_bin());
  for (const auto& a : args) cmd += " " + quote(a);
  return sshring::testing::sh(cmd + " 2>&1", out);
}

std::vector<nlohmann::json> audit_records(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::istringstream in(sshring::testing::read_file(path));
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  }
  return out;
}

class PolicyCli : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string text = sshring::testing::read_file(testing::example_policy_path());
    auto pos = text.find("/var/lib/sshring/grants");
    text.replace(pos, std::strlen("/var/lib/sshring/grants"), dir_.file("grants"));
    sshring::testing::write_file(policy_, text);
  }
  std::vector<std::string> with(std::vector<std::string> args) {
    args.insert(args.end(), {"--policy", policy_, "--audit-log", audit_});
    return args;
  }
  TempDir dir_;
  std::string policy_ = dir_.file("policy.yaml");
  std::string audit_ = dir_.file("audit/grant.audit.jsonl");
};

TEST_F(PolicyCli, CheckValidInvalidAndLints) {
  std::string out;
  EXPECT_EQ(cli({"policy", "check", testing::example_policy_path()}, &out), 0) << out;
  EXPECT_NE(out.find("valid: 3 principals, 4 roles, 2 host groups, 2 opt_out rules, 0 warnings"),
            std::string::npos)
      << out;

  const std::string bad = dir_.file("bad.yaml");
  sshring::testing::write_file(
      bad, "version: 1\nrelays: [10.0.0.0/28]\nhosts:\n  - name: prod\n    cidrs: [10.1.0.1/16]\n");
  EXPECT_EQ(cli({"policy", "check", bad}, &out), 1) << out;
  EXPECT_NE(
      out.find(bad +
               ":5:13: hosts[0].cidrs[0]: invalid CIDR '10.1.0.1/16': host bits set beyond /16; did you "
               "mean 10.1.0.0/16"),
      std::string::npos)
      << out;
  EXPECT_EQ(cli({"policy", "check", "--json", bad}, &out), 1);
  auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["valid"], false);
  EXPECT_EQ(j["error"]["line"], 5);
  EXPECT_EQ(j["error"]["key"], "hosts[0].cidrs[0]");

  const std::string lint = dir_.file("lint.yaml");
  sshring::testing::write_file(
      lint,
      "version: 1\nroles: [{name: r, targets: [{cidrs: [10.0.0.0/8]}]}]\n"
      "opt_out: [{id: any, who: {roles: [r]}, from: [0.0.0.0/0], to: {cidrs: [10.1.0.0/16]}, "
      "max_ttl: 2d, expires: 2099-01-01T00:00:00Z}]\n");
  EXPECT_EQ(cli({"policy", "check", lint}, &out), 0) << out;
  EXPECT_NE(out.find("warning: opt_out[any]: from 0.0.0.0/0 allows direct SSH from every source"),
            std::string::npos);
  EXPECT_NE(out.find("warning: opt_out[any]: max_ttl 2d is over the sane maximum of 24h"), std::string::npos);
  EXPECT_NE(out.find("warning: roles[r]: role is not used by any principal"), std::string::npos);
  EXPECT_EQ(cli({"policy", "check", "--strict", lint}, &out), 1);
  EXPECT_EQ(cli({"policy", "check"}, &out), 2);
  EXPECT_NE(out.find("give exactly one FILE"), std::string::npos);
  EXPECT_EQ(cli({"policy", "check", "--help"}, &out), 0);
  EXPECT_NE(out.find("--strict"), std::string::npos);
}

TEST_F(PolicyCli, ExplainSessionsAndFlows) {
  std::string out;
  ASSERT_EQ(cli({"policy", "explain", "--policy", policy_, "--principal", "alice", "--from", "10.2.3.4",
                 "--to", "db1.prod.example.com:2222", "--addr", "10.7.7.7", "--at", "2026-12-07T09:00:00Z",
                 "--key", testing::kAliceFingerprint},
                &out),
            0)
      << out;
  EXPECT_NE(
      out.find("session alice from 10.2.3.4 to db1.prod.example.com:2222 (10.7.7.7): allow (allowed) by "
               "role:sre/targets[1]"),
      std::string::npos)
      << out;
  ASSERT_EQ(cli({"policy", "explain", "--policy", policy_, "--principal", "alice", "--from", "10.2.3.4",
                 "--to", "10.1.2.3:22", "--at", "2026-12-06T09:00:00Z", "--json"},
                &out),
            0);
  auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["decision"], "deny");
  EXPECT_EQ(j["reason"], "outside_time_window");
  EXPECT_EQ(j["rule"], "role:sre/windows");
  ASSERT_EQ(cli({"policy", "explain", "--policy", policy_, "--flow", "10.2.3.4", "10.1.5.7:22", "--at",
                 "2027-01-15T00:00:00Z"},
                &out),
            0);
  EXPECT_NE(out.find("flow 10.2.3.4 -> 10.1.5.7:22: bypass_approved by opt_out rule ci-direct (expires "
                     "2027-06-30T00:00:00Z)"),
            std::string::npos)
      << out;
  ASSERT_EQ(
      cli({"policy", "explain", "--policy", policy_, "--flow", "10.0.0.3", "[fd01::1]:22", "--json"}, &out),
      0);
  EXPECT_EQ(nlohmann::json::parse(out)["tag"], "proxied");  // relay sources are proxied, whatever the target
  ASSERT_EQ(cli({"policy", "explain", "--policy", policy_, "--flow", "10.0.0.3", "10.1.0.9:22"}, &out), 0);
  EXPECT_NE(out.find("proxied (source is a relay)"), std::string::npos) << out;
  EXPECT_EQ(cli({"policy", "explain", "--policy", policy_, "--principal", "alice", "--from", "nope", "--to",
                 "x:22"},
                &out),
            2);
  EXPECT_NE(out.find("--from 'nope': expected an IP address"), std::string::npos) << out;
  EXPECT_EQ(
      cli({"policy", "explain", "--policy", dir_.file("missing.yaml"), "--flow", "1.2.3.4", "1.2.3.5:22"},
          &out),
      1);
}

TEST_F(PolicyCli, GrantAddListRevokeWithAuditRecords) {
  std::string out;
  ASSERT_EQ(cli(with({"grant", "add", "--who", "alice", "--from", "10.9.0.0/24", "--to", "10.1.2.3:22",
                      "--ttl", "1h", "--reason", "relay outage INC-42", "--approver", "bob", "--json"}),
                &out),
            0)
      << out;
  auto g = nlohmann::json::parse(out);
  const std::string id = g["id"];
  EXPECT_EQ(g["rule"], "break-glass");
  EXPECT_EQ(g["created_by"], "tester");

  // The stored grant changes classification for the agent, seen through explain.
  ASSERT_EQ(cli({"policy", "explain", "--policy", policy_, "--flow", "10.9.0.7", "10.1.2.3:22"}, &out), 0);
  EXPECT_NE(out.find("bypass_approved by grant " + id), std::string::npos) << out;

  // Refusals name every rule and why.
  EXPECT_EQ(cli(with({"grant", "add", "--who", "alice", "--from", "10.9.0.0/24", "--to", "10.1.2.3", "--ttl",
                      "3h", "--reason", "x", "--approver", "bob"}),
                &out),
            1);
  EXPECT_NE(out.find("refused: no opt_out rule allows alice from 10.9.0.0/24 to 10.1.2.3/32:22 for 3h"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("rule ci-direct: alice is not among its principals or roles"), std::string::npos) << out;
  EXPECT_NE(out.find("rule break-glass: ttl 3h exceeds its max_ttl 2h"), std::string::npos) << out;
  EXPECT_EQ(cli(with({"grant", "add", "--who", "alice", "--from", "10.9.0.0/24", "--to", "10.1.2.3:99999",
                      "--ttl", "1h"}),
                &out),
            2);
  EXPECT_NE(out.find("invalid ports '99999'"), std::string::npos) << out;
  EXPECT_EQ(cli(with({"grant", "add", "--who", "alice", "--from", "10.9.0.0/24", "--to", "10.1.2.3", "--ttl",
                      "soon"}),
                &out),
            2);

  ASSERT_EQ(cli(with({"grant", "list", "--json"}), &out), 0) << out;
  auto list = nlohmann::json::parse(out);
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0]["id"], id);
  EXPECT_EQ(list[0]["live"], true);
  EXPECT_GT(list[0]["time_left_seconds"].get<int>(), 3500);
  ASSERT_EQ(cli(with({"grant", "list"}), &out), 0);
  EXPECT_NE(out.find("relay outage INC-42"), std::string::npos) << out;
  EXPECT_TRUE(out.find(" 59m") != std::string::npos || out.find(" 1h ") != std::string::npos) << out;

  EXPECT_EQ(cli(with({"grant", "revoke", id}), &out), 2);  // --reason is required
  ASSERT_EQ(cli(with({"grant", "revoke", id, "--reason", "relay is back"}), &out), 0) << out;
  EXPECT_EQ(cli(with({"grant", "revoke", id, "--reason", "again"}), &out), 2);
  EXPECT_NE(out.find("was already revoked"), std::string::npos) << out;
  EXPECT_EQ(cli(with({"grant", "revoke", "g-ffffffffffff", "--reason", "x"}), &out), 1);
  ASSERT_EQ(cli({"policy", "explain", "--policy", policy_, "--flow", "10.9.0.7", "10.1.2.3:22"}, &out), 0);
  EXPECT_NE(out.find("bypass_expired by grant " + id), std::string::npos) << out;

  auto recs = audit_records(audit_);
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[0]["type"], "grant_add");
  EXPECT_EQ(recs[0]["grant_id"], id);
  EXPECT_EQ(recs[0]["who"], "alice");
  EXPECT_EQ(recs[0]["to"], "10.1.2.3/32");
  EXPECT_EQ(recs[0]["ports"], nlohmann::json::array({22}));
  EXPECT_EQ(recs[0]["approver"], "bob");
  EXPECT_EQ(recs[0]["actor"], "tester");
  EXPECT_EQ(recs[0]["component"], "grant");
  EXPECT_EQ(recs[1]["type"], "grant_revoke");
  EXPECT_EQ(recs[1]["reason"], "relay is back");
  EXPECT_EQ(recs[1]["seq"], 2);
}

TEST_F(PolicyCli, ExpiryIsAuditedOnce) {
  std::string out;
  ASSERT_EQ(cli(with({"grant", "add", "--who", "ci-bot", "--from", "10.2.3.4", "--to", "10.1.5.7", "--ttl",
                      "1s", "--reason", "smoke"}),
                &out),
            0)
      << out;
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  ASSERT_EQ(cli(with({"grant", "list"}), &out), 0) << out;
  EXPECT_NE(out.find("expired"), std::string::npos) << out;
  ASSERT_EQ(cli(with({"grant", "list"}), &out), 0);
  auto recs = audit_records(audit_);
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[1]["type"], "grant_expire");
  EXPECT_EQ(recs[1]["actor"], "system");
}

TEST_F(PolicyCli, ConcurrentGrantAddsLoseNothing) {
  const int kProcs = 6;
  std::vector<sshring::testing::Process> procs;
  for (int i = 0; i < kProcs; ++i) {
    procs.emplace_back(
        std::vector<std::string>{sshring::testing::sshring_bin(), "grant", "add", "--policy", policy_,
                                 "--audit-log", audit_, "--who", "ci-bot", "--from", "10.2.3.4", "--to",
                                 "10.1.5.7", "--ttl", "1h", "--reason", "parallel " + std::to_string(i)},
        sshring::testing::Process::Options{dir_.file("out" + std::to_string(i)), "", "", "", {}});
  }
  for (auto& p : procs) EXPECT_EQ(p.wait(std::chrono::seconds(30)), 0);
  auto grants = DirGrantStore(dir_.file("grants"), false).load();
  EXPECT_EQ(grants.size(), static_cast<size_t>(kProcs));
  auto recs = audit_records(audit_);
  EXPECT_EQ(recs.size(), static_cast<size_t>(kProcs));
  std::string out;
  ASSERT_EQ(cli({"audit", "verify", audit_}, &out), 0) << out;  // the chain survived concurrent writers
}

}  // namespace
}  // namespace sshring::policy
