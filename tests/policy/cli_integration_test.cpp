// `sshring policy` and `sshring grant` run as the built binary: exit codes, messages, JSON, signed
// requests, approvals, denials, reviews and revocations (key files and a real ssh-agent), forged
// grant files as explain and list see them, revocation with a broken policy, the audit records of
// grant changes, and concurrent `grant add` processes.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <sys/stat.h>

#include <map>
#include <sstream>
#include <thread>

#include "common/clock.h"
#include "policy/decision_ledger.h"
#include "policy/grant.h"
#include "policy/grant_store.h"
#include "policy/parser.h"
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

// The example policy with its grant store in a temp dir and, for every principal, a second key
// fresh from ssh-keygen, whose private key file the tests sign with (--identity).
class PolicyCli : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string text = sshring::testing::read_file(testing::example_policy_path());
    auto pos = text.find("/var/lib/sshring/grants");
    text.replace(pos, std::strlen("/var/lib/sshring/grants"), dir_.file("grants"));
    Policy example = load_policy_file(testing::example_policy_path());
    for (const auto& p : example.principals) {
      const std::string key = dir_.file(p.name);
      ASSERT_EQ(sshring::testing::sh("ssh-keygen -q -t ed25519 -N '' -C " + p.name + "@test -f " + key), 0);
      std::string pub = sshring::testing::read_file(key + ".pub");
      pub.erase(pub.find_last_not_of("\n") + 1);
      auto at = text.find(p.keys[0].line);
      ASSERT_NE(at, std::string::npos) << p.keys[0].line;
      text.insert(at + p.keys[0].line.size(), "\", \"" + pub);  // a second key: the example's stays valid
    }
    sshring::testing::write_file(policy_, text);
  }
  std::vector<std::string> with(std::vector<std::string> args) {
    args.insert(args.end(), {"--policy", policy_, "--audit-log", audit_});
    return args;
  }
  // A grant command signed with NAME's key file.
  std::vector<std::string> as(const std::string& name, std::vector<std::string> args) {
    args.insert(args.end(), {"--identity", dir_.file(name)});
    return with(std::move(args));
  }
  std::string fingerprint(const std::string& name) {
    std::string out;
    sshring::testing::sh("ssh-keygen -lf " + dir_.file(name) + ".pub | cut -d' ' -f2", &out);
    return out.substr(0, out.find('\n'));
  }
  std::string explain_flow(const char* src, const char* dst) {
    std::string out;
    EXPECT_EQ(cli({"policy", "explain", "--policy", policy_, "--flow", src, dst}, &out), 0) << out;
    return out;
  }
  TempDir dir_;
  std::string policy_ = dir_.file("policy.yaml");
  std::string audit_ = dir_.file("audit/grant.audit.jsonl");
};

TEST_F(PolicyCli, CheckValidInvalidAndLints) {
  std::string out;
  EXPECT_EQ(cli({"policy", "check", testing::example_policy_path()}, &out), 0) << out;
  EXPECT_NE(out.find("valid: 5 principals, 5 roles, 2 host groups, 3 opt_out rules, 0 warnings"),
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
  // The same name answered with an address of the deciding relay (its own LAN address or VIP): the
  // relay refuses a names-only entry there, as for loopback, and explain says the same.
  ASSERT_EQ(cli({"policy", "explain", "--policy", policy_, "--principal", "alice", "--from", "10.2.3.4",
                 "--to", "db1.prod.example.com:2222", "--addr", "10.7.7.7", "--at", "2026-12-07T09:00:00Z",
                 "--relay-addr", "10.9.9.9", "--relay-addr", "10.7.7.7", "--json"},
                &out),
            0)
      << out;
  auto local = nlohmann::json::parse(out);
  EXPECT_EQ(local["decision"], "deny") << out;
  EXPECT_EQ(local["address_is_relay"], true) << out;
  ASSERT_EQ(cli({"policy", "explain", "--policy", policy_, "--principal", "alice", "--from", "10.2.3.4",
                 "--to", "db1.prod.example.com:2222", "--addr", "10.7.7.7", "--at", "2026-12-07T09:00:00Z",
                 "--relay-addr", "10.7.7.7"},
                &out),
            0);
  EXPECT_NE(out.find("note: 10.7.7.7 is an address of the relay"), std::string::npos) << out;
  EXPECT_NE(cli({"policy", "explain", "--policy", policy_, "--principal", "alice", "--from", "10.2.3.4",
                 "--to", "db1.prod.example.com:2222", "--addr", "10.7.7.7", "--relay-addr", "relay1"},
                &out),
            0);
  EXPECT_NE(out.find("--relay-addr 'relay1': expected an IP address"), std::string::npos) << out;
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
                     "2027-02-15T00:00:00Z)"),
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

// Two of security approve a request; the requester and a non-security principal are refused; the
// same approver counts once; the audit log names signer, key and OS user; a signed revoke ends it.
TEST_F(PolicyCli, GrantRequestApproveRevokeWithAuditRecords) {
  std::string out;
  ASSERT_EQ(cli(as("alice", {"grant", "request", "--from", "10.9.0.0/24", "--to", "10.1.2.3:22", "--ttl",
                             "1h", "--reason", "kernel patch INC-42", "--json"}),
                &out, "USER=mallory "),
            0)
      << out;
  auto g = nlohmann::json::parse(out);
  const std::string id = g["id"];
  EXPECT_EQ(g["status"], "pending");
  EXPECT_EQ(g["request"]["rule"], "prod-direct");
  EXPECT_EQ(g["request"]["requester"], "alice");
  EXPECT_EQ(g["request"]["os_user"], "mallory");  // recorded, not trusted
  EXPECT_NE(explain_flow("10.9.0.7", "10.1.2.3:22").find("bypass_unapproved"), std::string::npos);

  EXPECT_EQ(cli(as("alice", {"grant", "approve", id}), &out), 1);
  EXPECT_NE(out.find("refused: alice asked for this grant"), std::string::npos) << out;
  EXPECT_EQ(cli(as("bob", {"grant", "approve", id}), &out), 1);
  EXPECT_NE(out.find("bob is not an approver of rule prod-direct"), std::string::npos) << out;
  ASSERT_EQ(cli(as("carol", {"grant", "approve", id}), &out), 0) << out;
  EXPECT_NE(out.find(id + " pending"), std::string::npos) << out;
  EXPECT_EQ(cli(as("carol", {"grant", "approve", id}), &out), 1);
  EXPECT_NE(out.find("carol already signed this approve"), std::string::npos) << out;
  ASSERT_EQ(cli(as("dave", {"grant", "approve", id}), &out), 0) << out;
  EXPECT_NE(out.find(id + " active"), std::string::npos) << out;
  EXPECT_NE(explain_flow("10.9.0.7", "10.1.2.3:22").find("bypass_approved by grant " + id),
            std::string::npos);

  // Refusals name every rule and why; add refuses what needs approval.
  EXPECT_EQ(cli(as("alice", {"grant", "request", "--from", "10.9.0.0/24", "--to", "10.1.2.3", "--ttl", "5h",
                             "--reason", "x"}),
                &out),
            1);
  EXPECT_NE(out.find("refused: no opt_out rule allows alice from 10.9.0.0/24 to 10.1.2.3/32:22 for 5h"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("rule ci-direct: alice is not among its principals or roles"), std::string::npos) << out;
  EXPECT_NE(out.find("rule prod-direct: ttl 5h exceeds its max_ttl 4h"), std::string::npos) << out;
  EXPECT_EQ(cli(as("alice", {"grant", "add", "--from", "10.9.0.0/24", "--to", "10.1.2.3", "--ttl", "1h",
                             "--reason", "x"}),
                &out),
            1);
  EXPECT_NE(out.find("rule prod-direct needs 2 approval(s)"), std::string::npos) << out;
  EXPECT_EQ(
      cli(as("alice", {"grant", "request", "--from", "10.9.0.0/24", "--to", "10.1.2.3:99999", "--ttl", "1h"}),
          &out),
      2);
  EXPECT_NE(out.find("invalid ports '99999'"), std::string::npos) << out;
  EXPECT_EQ(
      cli(as("alice", {"grant", "request", "--from", "10.9.0.0/24", "--to", "10.1.2.3", "--ttl", "soon"}),
          &out),
      2);
  EXPECT_EQ(cli(as("alice", {"grant", "request", "--as", "bob", "--from", "10.9.0.0/24", "--to", "10.1.2.3",
                             "--ttl", "1h", "--reason", "x"}),
                &out),
            2);
  EXPECT_NE(out.find("does not list key"), std::string::npos) << out;

  ASSERT_EQ(cli(with({"grant", "list", "--json"}), &out), 0) << out;
  auto list = nlohmann::json::parse(out);
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0]["id"], id);
  EXPECT_EQ(list[0]["status"], "active");
  EXPECT_EQ(list[0]["requester"], "alice");
  EXPECT_EQ(list[0]["requester_fingerprint"], fingerprint("alice"));
  EXPECT_EQ(list[0]["live"], true);
  EXPECT_GT(list[0]["time_left_seconds"].get<int>(), 3500);
  std::vector<std::string> approvers;
  for (const auto& d : list[0]["decisions"])
    if (d["counted"].get<bool>())
      approvers.push_back(d["signer"].get<std::string>() + " " + d["key_fingerprint"].get<std::string>());
  EXPECT_EQ(approvers,
            (std::vector<std::string>{"carol " + fingerprint("carol"), "dave " + fingerprint("dave")}));
  ASSERT_EQ(cli(with({"grant", "list"}), &out), 0);
  EXPECT_NE(out.find("kernel patch INC-42"), std::string::npos) << out;
  EXPECT_NE(out.find("carol(SHA256:"), std::string::npos) << out;

  EXPECT_EQ(cli(as("alice", {"grant", "revoke", id}), &out), 2);  // --reason is required
  ASSERT_EQ(cli(as("alice", {"grant", "revoke", id, "--reason", "patched"}), &out), 0) << out;
  EXPECT_EQ(cli(as("alice", {"grant", "revoke", id, "--reason", "again"}), &out), 1);
  EXPECT_NE(out.find("already revoked"), std::string::npos) << out;
  EXPECT_EQ(cli(as("alice", {"grant", "revoke", "g-ffffffffffff", "--reason", "x"}), &out), 1);
  EXPECT_NE(explain_flow("10.9.0.7", "10.1.2.3:22").find("bypass_expired by grant " + id), std::string::npos);

  auto recs = audit_records(audit_);
  ASSERT_EQ(recs.size(), 4u);
  const char* types[] = {"grant_request", "grant_approve", "grant_approve", "grant_revoke"};
  const char* signers[] = {"alice", "carol", "dave", "alice"};
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(recs[i]["type"], types[i]);
    EXPECT_EQ(recs[i]["grant_id"], id);
    EXPECT_EQ(recs[i]["signer"], signers[i]);
    EXPECT_EQ(recs[i]["key_fingerprint"], fingerprint(signers[i]));
    EXPECT_EQ(recs[i]["component"], "grant");
    EXPECT_FALSE(recs[i]["host"].get<std::string>().empty());
    // The signer's recorded host survives beside the envelope's (it was once overwritten by it).
    EXPECT_EQ(recs[i].value("signer_host", ""), g["request"]["host"].get<std::string>());
    EXPECT_EQ(recs[i]["requester"], "alice");
    EXPECT_EQ(recs[i]["ttl_seconds"], 3600);
  }
  EXPECT_EQ(recs[0]["os_user"], "mallory");
  EXPECT_EQ(recs[0]["who"], "alice");
  EXPECT_EQ(recs[0]["to"], "10.1.2.3/32");
  EXPECT_EQ(recs[0]["ports"], nlohmann::json::array({22}));
  EXPECT_EQ(recs[0]["status"], "pending");
  EXPECT_EQ(recs[2]["status"], "active");
  EXPECT_EQ(recs[3]["reason"], "patched");
  EXPECT_EQ(recs[3]["seq"], 4);
}

// The attack the decision ledger stops, seen from the CLI: a store writer puts back the copy of a
// grant from before its revoke. `grant list` and `policy explain` read the store as it is, so they
// call it active, unless they are given (or find at the default place) the cache directory of a
// relay or agent on this host that verified the revoke: then they show what that process enforces.
TEST_F(PolicyCli, ARevokeRemovedFromTheStoreStillShowsWithThisHostsLedger) {
  std::string out;
  ASSERT_EQ(cli(as("alice", {"grant", "request", "--from", "10.9.0.0/24", "--to", "10.1.2.3:22", "--ttl",
                             "1h", "--reason", "INC-44", "--json"}),
                &out),
            0)
      << out;
  const std::string id = nlohmann::json::parse(out)["id"];
  ASSERT_EQ(cli(as("carol", {"grant", "approve", id}), &out), 0) << out;
  ASSERT_EQ(cli(as("dave", {"grant", "approve", id}), &out), 0) << out;
  const std::string file = dir_.file("grants") + "/" + id + ".grant";
  const std::string before_revoke = sshring::testing::read_file(file);
  ASSERT_FALSE(before_revoke.empty()) << file;
  ASSERT_EQ(cli(as("alice", {"grant", "revoke", id, "--reason", "done"}), &out), 0) << out;

  // A reader on this host (a relay or agent with --cache-dir) verified the revoke.
  const std::string cache = dir_.file("cache");
  ASSERT_EQ(::mkdir(cache.c_str(), 0700), 0);
  {
    const Policy pol = load_policy_file(policy_);
    DirGrantStore store(dir_.file("grants"), false);
    DecisionLedger ledger(decision_ledger_path(cache));
    std::string why;
    ASSERT_TRUE(ledger.load(&why)) << why;
    for (const auto& g : store.load()) ledger.remember(check_grant(pol, g, common::unix_now_s(), nullptr));
    ASSERT_TRUE(ledger.save(&why)) << why;
  }
  sshring::testing::write_file(file, before_revoke);  // the attack

  auto status = [&](const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"grant", "list", "--policy", policy_, "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::string o;
    EXPECT_EQ(cli(args, &o), 0) << o;
    const auto at = o.find('[');
    for (const auto& g : nlohmann::json::parse(o.substr(at == std::string::npos ? 0 : at)))
      if (g["id"] == id)
        return g["status"].get<std::string>() + (o.find("restored from") != std::string::npos ? "+told" : "");
    return std::string("missing");
  };
  EXPECT_EQ(status({}), "active") << "without the ledger the store's word is all there is";
  EXPECT_EQ(status({"--cache-dir", cache}), "revoked+told");
  EXPECT_NE(explain_flow("10.9.0.7", "10.1.2.3:22").find("bypass_approved by grant " + id),
            std::string::npos);
  EXPECT_EQ(cli({"policy", "explain", "--policy", policy_, "--cache-dir", cache, "--flow", "10.9.0.7",
                 "10.1.2.3:22"},
                &out),
            0);
  EXPECT_EQ(out.find("bypass_approved"), std::string::npos) << out;
  EXPECT_NE(out.find("restored from " + decision_ledger_path(cache)), std::string::npos) << out;
  // The grant commands decide on the same view: revoking it again is refused as already done.
  EXPECT_EQ(cli(as("alice", {"grant", "revoke", id, "--reason", "again", "--cache-dir", cache}), &out), 1)
      << out;
  EXPECT_NE(out.find("already revoked"), std::string::npos) << out;
  // A ledger this user may not trust is not applied, and says so.
  ASSERT_EQ(::chmod(cache.c_str(), 0777), 0);
  std::string o;
  EXPECT_EQ(cli({"grant", "list", "--policy", policy_, "--cache-dir", cache}, &o), 0) << o;
  EXPECT_NE(o.find("are not applied"), std::string::npos) << o;
  ASSERT_EQ(::chmod(cache.c_str(), 0700), 0);
}

// Runs sshring with args at a terminal (script(1) gives it a pty), typing `input`.
int cli_at_tty(const std::vector<std::string>& args, const std::string& input, std::string* out) {
  std::string cmd = "USER=tester " + quote(sshring::testing::sshring_bin());
  for (const auto& a : args) cmd += " " + quote(a);
  return sshring::testing::sh(
      "printf %s " + quote(input) + " | script -qec " + quote(cmd) + " /dev/null 2>&1", out);
}

// At a terminal an approver sees the terms and signs only on 'y'; anything else signs nothing.
// Without a terminal (scripts, these other tests) or with --yes it does not ask.
TEST_F(PolicyCli, ApproveAtATerminalAsksBeforeSigning) {
  std::string out;
  ASSERT_EQ(cli(as("alice", {"grant", "request", "--from", "10.9.0.0/24", "--to", "10.1.2.3:22", "--ttl",
                             "1h", "--reason", "kernel patch INC-43", "--json"}),
                &out),
            0)
      << out;
  const std::string id = nlohmann::json::parse(out)["id"];
  auto approvals = [&] {  // decisions signed on the request (only approvals here)
    std::string l;
    EXPECT_EQ(cli(with({"grant", "list", "--json"}), &l), 0) << l;
    for (const auto& g : nlohmann::json::parse(l))
      if (g["id"] == id) return g["decisions"].size();
    return size_t{99};
  };
  for (const char* no : {"n\n", "\n", "yes please\n", ""}) {
    EXPECT_EQ(cli_at_tty(as("carol", {"grant", "approve", id}), no, &out), 1) << out;
    EXPECT_NE(out.find("signing approve of " + id), std::string::npos) << out;
    EXPECT_NE(out.find("reason:    kernel patch INC-43"), std::string::npos) << out;
    EXPECT_NE(out.find("not signed (answer y, or pass --yes)"), std::string::npos) << out;
  }
  EXPECT_EQ(approvals(), 0u) << "a refused prompt signed something";
  EXPECT_EQ(audit_records(audit_).size(), 1u) << "only the request is recorded";
  ASSERT_EQ(cli_at_tty(as("carol", {"grant", "approve", id}), "y\n", &out), 0) << out;
  EXPECT_NE(out.find(id + " pending"), std::string::npos) << out;
  EXPECT_EQ(approvals(), 1u);
  ASSERT_EQ(cli_at_tty(as("dave", {"grant", "approve", id, "--yes"}), "", &out), 0) << out;
  EXPECT_EQ(out.find("sign this approval?"), std::string::npos) << "--yes asked: " << out;
  EXPECT_NE(out.find(id + " active"), std::string::npos) << out;
}

TEST_F(PolicyCli, DeniedRequestsCanNotBeApproved) {
  std::string out;
  ASSERT_EQ(cli(as("bob", {"grant", "request", "--from", "10.9.0.0/24", "--to", "10.1.2.3", "--ttl", "1h",
                           "--reason", "curious", "--json"}),
                &out),
            0)
      << out;
  const std::string id = nlohmann::json::parse(out)["id"];
  EXPECT_EQ(cli(as("carol", {"grant", "deny", id}), &out), 2);  // --reason is required
  ASSERT_EQ(cli(as("carol", {"grant", "deny", id, "--reason", "no ticket"}), &out), 0) << out;
  EXPECT_NE(out.find(id + " denied"), std::string::npos) << out;
  EXPECT_EQ(cli(as("dave", {"grant", "approve", id}), &out), 1);
  EXPECT_NE(out.find("it is denied (denied by carol: no ticket), not pending"), std::string::npos) << out;
  auto recs = audit_records(audit_);
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[1]["type"], "grant_deny");
  EXPECT_EQ(recs[1]["reason"], "no ticket");
}

TEST_F(PolicyCli, BreakGlassIsLiveAtOnceAndReviewedBySomeoneElse) {
  std::string out;
  // Without --break-glass the break_glass rule is never used by accident.
  EXPECT_EQ(cli(as("alice", {"grant", "add", "--from", "10.8.0.0/24", "--to", "10.1.2.3", "--ttl", "30m",
                             "--reason", "relay down INC-7"}),
                &out),
            1);
  ASSERT_EQ(cli(as("alice", {"grant", "add", "--break-glass", "--from", "10.8.0.0/24", "--to", "10.1.2.3",
                             "--ttl", "30m", "--reason", "relay down INC-7", "--json"}),
                &out),
            0)
      << out;
  const std::string id = nlohmann::json::parse(out)["id"];
  EXPECT_EQ(nlohmann::json::parse(out)["status"], "active");
  EXPECT_NE(explain_flow("10.8.0.9", "10.1.2.3:22").find("bypass_approved by grant " + id),
            std::string::npos);
  // Until someone reviews it, `audit report` lists it as awaiting review (due in review_within).
  auto report = [&] {
    std::string o;
    EXPECT_EQ(cli({"audit", "report", "--json", audit_}, &o), 0) << o;
    return nlohmann::json::parse(o)["break_glass"];
  };
  auto bg = report();
  ASSERT_EQ(bg.size(), 1u) << bg;
  EXPECT_EQ(bg[0]["grant_id"], id);
  EXPECT_EQ(bg[0]["review"], "awaiting");
  EXPECT_EQ(bg[0]["requester"], "alice");
  EXPECT_EQ(bg[0]["reason"], "relay down INC-7");
  EXPECT_EQ(audit_records(audit_)[0]["break_glass"], true);
  EXPECT_EQ(audit_records(audit_)[0]["review_due"].get<std::string>().size(), 20u);  // RFC 3339, UTC
  EXPECT_EQ(cli(as("alice", {"grant", "review", id, "--note", "fine"}), &out), 1);
  EXPECT_NE(out.find("someone else must decide"), std::string::npos) << out;
  EXPECT_EQ(cli(as("bob", {"grant", "review", id, "--note", "fine"}), &out), 1);  // not a reviewer
  ASSERT_EQ(cli(with({"grant", "list", "--json"}), &out), 0) << out;
  EXPECT_EQ(nlohmann::json::parse(out)[0]["reviewed"], false);
  ASSERT_EQ(cli(as("carol", {"grant", "review", id, "--note", "relay outage confirmed"}), &out), 0) << out;
  ASSERT_EQ(cli(with({"grant", "list", "--json"}), &out), 0) << out;
  auto l = nlohmann::json::parse(out);
  EXPECT_EQ(l[0]["break_glass"], true);
  EXPECT_EQ(l[0]["reviewed"], true);
  EXPECT_EQ(l[0]["review_overdue"], false);
  auto recs = audit_records(audit_);
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[1]["type"], "grant_review");
  EXPECT_EQ(recs[1]["signer"], "carol");
  EXPECT_EQ(recs[1]["note"], "relay outage confirmed");
  bg = report();
  ASSERT_EQ(bg.size(), 1u) << bg;
  EXPECT_EQ(bg[0]["review"], "reviewed");
  EXPECT_EQ(bg[0]["reviewed_by"], "carol");
}

// A grant file written by hand (or edited) is shown as rejected with its reason and never approves.
TEST_F(PolicyCli, ForgedGrantFilesAreRejectedByExplainAndList) {
  std::string out;
  ASSERT_EQ(cli(as("ci-bot", {"grant", "add", "--from", "10.2.3.4", "--to", "10.1.5.7", "--ttl", "1h",
                              "--reason", "deploy", "--json"}),
                &out),
            0)
      << out;
  auto g = nlohmann::json::parse(out);
  const std::string id = g["id"];
  g.erase("status");
  g.erase("detail");
  auto forged = g;
  forged["id"] = forged["request"]["id"] = "g-0000000f0a9e";
  forged["request"]["from"] = "0.0.0.0/0";
  forged["request"]["to"] = "10.1.0.0/16";
  sshring::testing::write_file(dir_.file("grants/g-0000000f0a9e.grant"), forged.dump());
  auto unsigned_one = forged;
  unsigned_one["id"] = unsigned_one["request"]["id"] = "g-0000000f0a9f";
  unsigned_one["signature"] = "";
  sshring::testing::write_file(dir_.file("grants/g-0000000f0a9f.grant"), unsigned_one.dump());

  out = explain_flow("192.0.2.7", "10.1.9.9:22");
  EXPECT_NE(out.find("bypass_unapproved"), std::string::npos) << out;
  EXPECT_NE(out.find("grant g-0000000f0a9e would cover it but is rejected (bad_signature)"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("grant g-0000000f0a9f would cover it but is rejected (unsigned)"), std::string::npos)
      << out;
  ASSERT_EQ(
      cli({"policy", "explain", "--policy", policy_, "--json", "--flow", "192.0.2.7", "10.1.9.9:22"}, &out),
      0);
  EXPECT_EQ(nlohmann::json::parse(out)["rejected_grants"].size(), 2u) << out;
  ASSERT_EQ(cli(with({"grant", "list", "--json"}), &out), 0) << out;
  std::map<std::string, std::string> status;
  for (const auto& e : nlohmann::json::parse(out))
    status[e["id"]] = e["status"].get<std::string>() + ":" + e.value("reject_reason", "");
  EXPECT_EQ(status, (std::map<std::string, std::string>{{id, "active:"},
                                                        {"g-0000000f0a9e", "rejected:bad_signature"},
                                                        {"g-0000000f0a9f", "rejected:unsigned"}}));
}

// A requester hides a request's scope from approvers with terminal control sequences in its text
// (F5): refused at request time, escaped in every text output, and approve shows the signed terms.
TEST_F(PolicyCli, ControlCharactersAreRefusedAndEscaped) {
  std::string out;
  const std::string disguise = "kernel patch INC-42\r\x1b[49C10.9.1.7/32         10.1.2.3/32:22\x1b[K";
  EXPECT_EQ(cli(as("alice", {"grant", "request", "--from", "10.9.0.0/24", "--to", "10.1.2.3:22", "--ttl",
                             "1h", "--reason", disguise}),
                &out),
            2)
      << out;
  EXPECT_NE(out.find("--reason: control characters and invalid UTF-8 are not allowed"), std::string::npos)
      << out;
  EXPECT_EQ(out.find('\x1b'), std::string::npos) << out;
  EXPECT_EQ(cli(as("alice", {"grant", "request", "--from", "10.9.0.0/24", "--to", "10.1.2.3:22", "--ttl",
                             "1h", "--reason", "fine"}),
                &out, "USER=\"$(printf 'al\\033ice')\" "),
            2)
      << out;
  EXPECT_NE(out.find("the login name"), std::string::npos) << out;

  ASSERT_EQ(cli(as("alice", {"grant", "request", "--from", "10.9.0.0/24", "--to", "10.1.2.3:22", "--ttl",
                             "1h", "--reason", "kernel patch INC-42", "--json"}),
                &out),
            0)
      << out;
  auto g = nlohmann::json::parse(out);
  const std::string id = g["id"];
  // The approver sees the canonical terms the signature is bound to.
  ASSERT_EQ(cli(as("carol", {"grant", "approve", id}), &out), 0) << out;
  for (const char* line :
       {"signing approve of ", "  who:       alice (requested by alice)", "  from:      10.9.0.0/24",
        "  to:        10.1.2.3/32", "  ports:     22", "  ttl:       1h", "  reason:    kernel patch INC-42"})
    EXPECT_NE(out.find(line), std::string::npos) << line << "\n" << out;
  // A note with a control character is refused before anything is signed.
  EXPECT_EQ(cli(as("dave", {"grant", "deny", id, "--reason", "no\x1b[2J"}), &out), 2) << out;

  // A stored grant (written straight into the store) carrying the disguise: listed escaped.
  g.erase("status");
  g.erase("detail");
  g["id"] = g["request"]["id"] = "g-0000000f0e5c";
  g["request"]["reason"] = disguise;
  sshring::testing::write_file(dir_.file("grants/g-0000000f0e5c.grant"), g.dump());
  ASSERT_EQ(cli(with({"grant", "list"}), &out), 0) << out;
  EXPECT_EQ(out.find('\x1b'), std::string::npos) << out;
  EXPECT_EQ(out.find('\r'), std::string::npos) << out;
  EXPECT_NE(out.find("kernel patch INC-42\\x0d\\x1b[49C10.9.1.7/32"), std::string::npos) << out;
}

// Revocation needs only the store: it works while the policy file is broken.
TEST_F(PolicyCli, RevokeWorksWhileThePolicyIsBroken) {
  std::string out;
  ASSERT_EQ(cli(as("ci-bot", {"grant", "add", "--from", "10.2.3.4", "--to", "10.1.5.7", "--ttl", "1h",
                              "--reason", "deploy", "--json"}),
                &out),
            0)
      << out;
  const std::string id = nlohmann::json::parse(out)["id"];
  const std::string good = sshring::testing::read_file(policy_);
  sshring::testing::write_file(policy_, good + "\nthis is: [not yaml\n");
  std::vector<std::string> revoke = {"grant",         "revoke",           id, "--reason", "leaked key",
                                     "--grant-store", dir_.file("grants")};
  EXPECT_EQ(cli(as("ci-bot", revoke), &out), 2);  // who signs must be named when the policy is unreadable
  EXPECT_NE(out.find("--as NAME"), std::string::npos) << out;
  revoke.insert(revoke.end(), {"--as", "ci-bot"});
  ASSERT_EQ(cli(as("ci-bot", revoke), &out), 0) << out;
  sshring::testing::write_file(policy_, good);
  ASSERT_EQ(cli(with({"grant", "list", "--json"}), &out), 0) << out;
  EXPECT_EQ(nlohmann::json::parse(out)[0]["status"], "revoked") << out;
}

// The same key source as `sshring connect`: a real ssh-agent holding the key.
TEST_F(PolicyCli, SignsWithSshAgent) {
  const std::string sock = dir_.file("agent.sock");
  sshring::testing::Process agent(
      {"ssh-agent", "-D", "-a", sock},
      sshring::testing::Process::Options{dir_.file("agent.out"), dir_.file("agent.err"), "", "", {}});
  ASSERT_TRUE(sshring::testing::wait_for_unix_socket(sock)) << "ssh-agent did not start";
  ASSERT_EQ(sshring::testing::sh("SSH_AUTH_SOCK=" + sock + " ssh-add -q " + dir_.file("ci-bot") + " 2>&1"),
            0);
  std::string out;
  ASSERT_EQ(cli(with({"grant", "add", "--from", "10.2.3.4", "--to", "10.1.5.7", "--ttl", "1h", "--reason",
                      "deploy", "--json"}),
                &out, "USER=tester SSH_AUTH_SOCK=" + sock + " "),
            0)
      << out;
  auto g = nlohmann::json::parse(out);
  EXPECT_EQ(g["status"], "active");
  EXPECT_EQ(g["request"]["requester"], "ci-bot");
  agent.stop();
}

TEST_F(PolicyCli, ExpiryIsAuditedOnce) {
  std::string out;
  ASSERT_EQ(cli(as("ci-bot", {"grant", "add", "--from", "10.2.3.4", "--to", "10.1.5.7", "--ttl", "1s",
                              "--reason", "smoke"}),
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
                                 "--audit-log", audit_, "--identity", dir_.file("ci-bot"), "--from",
                                 "10.2.3.4", "--to", "10.1.5.7", "--ttl", "1h", "--reason",
                                 "parallel " + std::to_string(i)},
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
