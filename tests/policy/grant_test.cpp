// Signed grants attacked and exercised: SSHSIG interop with stock ssh-keygen, forged grant files
// (unsigned, unknown key, outside the rule, missing rule, tampered), two-of-security approvals,
// pending expiry, denial, rule deletion, break-glass review, requesting for others, the verification
// cache, and the reloader that relay and agent use.
#include <unistd.h>

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/grant_reject.h"
#include "policy/cache.h"
#include "policy/grant.h"
#include "policy/grant_store.h"
#include "policy/snapshot.h"
#include "tests/policy/grant_fixture.h"
#include "tests/support/process.h"

namespace sshring::policy {
namespace {

using testing::add_decision;
using testing::Person;
using testing::request_for;
using testing::signed_by;

constexpr UnixSeconds kT = 1800000000;

struct World {
  Person alice = testing::person("alice"), bob = testing::person("bob"), carol = testing::person("carol"),
         dave = testing::person("dave"), ci = testing::person("ci-bot"),
         deployer = testing::person("deployer"),
         mallory = testing::person("mallory");  // not in the policy
  std::string yaml(bool with_ci_rule = true, const char* ci_max_ttl = "8h") const {
    auto pr = [](const Person& p, const char* role) {
      return "  - {name: " + p.name + ", roles: [" + role + "], keys: [\"" + p.key_line() + "\"]}\n";
    };
    std::string y =
        "version: 1\nrelays: [10.0.0.0/28]\nhosts: [{name: prod, cidrs: [10.1.0.0/16]}]\nprincipals:\n";
    y += pr(alice, "sre") + pr(bob, "sre") + pr(carol, "security") + pr(dave, "security") + pr(ci, "ci") +
         pr(deployer, "ci-admin");
    y += "roles:\n";
    for (const char* r : {"sre", "security", "ci", "ci-admin"})
      y += std::string("  - {name: ") + r + ", targets: [{cidrs: [10.1.0.0/16]}]}\n";
    y +=
        "opt_out:\n"
        "  - {id: two-of-security, who: {roles: [sre]}, from: [10.9.0.0/16], to: {cidrs: [10.1.0.0/16]},\n"
        "     max_ttl: 4h, approvals: {count: 2, roles: [security]}, request_ttl: 1h,\n"
        "     expires: 2099-01-01T00:00:00Z}\n"
        "  - {id: glass, who: {roles: [sre]}, from: [10.8.0.0/16], to: {cidrs: [10.1.0.0/16]}, max_ttl: 1h,\n"
        "     break_glass: true, reviewers: {roles: [security]}, expires: 2099-01-01T00:00:00Z}\n"
        "  - {id: standing, who: {principals: [ci-bot]}, from: [10.7.0.0/16], to: {cidrs: [10.1.7.0/24]},\n"
        "     max_ttl: 1h, standing: true, expires: 2099-01-01T00:00:00Z}\n";
    if (with_ci_rule)
      y += std::string(
               "  - {id: ci, who: {principals: [ci-bot]}, from: [10.2.0.0/16], to: {cidrs: [10.1.5.0/24]},\n"
               "     max_ttl: ") +
           ci_max_ttl + ", requesters: {roles: [ci-admin]}, expires: 2099-01-01T00:00:00Z}\n";
    return y;
  }
  std::shared_ptr<const Policy> policy(bool with_ci_rule = true, const char* ci_max_ttl = "8h") const {
    return std::make_shared<const Policy>(parse_policy(yaml(with_ci_rule, ci_max_ttl), "grant-test.yaml"));
  }
};

IpAddr ip(const char* s) {
  return *IpAddr::parse(s);
}

// ---- SSHSIG ----

TEST(Sshsig, SignVerifyAndRefuseWhatIsWrong) {
  Person a = testing::person("alice");
  std::string sig = sshsig_sign(a.signer(), kGrantNamespace, "hello");
  std::string why;
  auto k = sshsig_verify(sig, kGrantNamespace, "hello", &why);
  ASSERT_TRUE(k) << why;
  EXPECT_EQ(k->fingerprint, a.pub.fingerprint);
  EXPECT_FALSE(sshsig_verify(sig, kGrantNamespace, "hellO", &why));
  EXPECT_EQ(why, "signature does not verify");
  EXPECT_FALSE(sshsig_verify(sig, "file", "hello", &why));
  EXPECT_NE(why.find("namespace"), std::string::npos);
  EXPECT_FALSE(sshsig_verify(sig.substr(0, sig.size() / 2), kGrantNamespace, "hello", &why));
  EXPECT_FALSE(sshsig_verify("", kGrantNamespace, "hello", &why));
  EXPECT_FALSE(sshsig_verify(std::string(5000, 'A'), kGrantNamespace, "hello", &why));
  // One flipped base64 character in the body: either unparsable or a bad signature, never accepted.
  for (size_t i = 40; i < sig.size() - 40; i += 7) {
    std::string t = sig;
    if (t[i] == '\n') continue;
    t[i] = t[i] == 'A' ? 'B' : 'A';
    EXPECT_FALSE(sshsig_verify(t, kGrantNamespace, "hello", &why)) << i;
  }
}

// The format is OpenSSH's: stock ssh-keygen verifies our signatures with an allowed_signers file built
// from the policy, and we verify what ssh-keygen -Y sign writes.
TEST(Sshsig, InteroperatesWithSshKeygen) {
  if (sshring::testing::sh("command -v ssh-keygen >/dev/null") != 0) GTEST_SKIP() << "no ssh-keygen";
  World w;
  auto pol = w.policy();
  sshring::testing::TempDir dir;
  SignedGrant g =
      signed_by(w.alice, request_for("alice", "two-of-security", "10.9.1.0/24", "10.1.2.3/32", 3600, kT),
                "g-00000000a11c");
  std::string signers;
  for (const auto& p : pol->principals)
    for (const auto& k : p.keys)
      signers += p.name + " namespaces=\"" + std::string(kGrantNamespace) + "\" " + k.line + "\n";
  sshring::testing::write_file(dir.file("allowed_signers"), signers);
  sshring::testing::write_file(dir.file("request"), canonical_request(g.request));
  sshring::testing::write_file(dir.file("request.sig"), g.signature);
  auto verify = [&](const char* who, const std::string& msg) {
    return sshring::testing::sh("ssh-keygen -Y verify -f " + dir.file("allowed_signers") + " -I " + who +
                                " -n " + std::string(kGrantNamespace) + " -s " + dir.file("request.sig") +
                                " < " + msg + " >/dev/null 2>&1");
  };
  EXPECT_EQ(verify("alice", dir.file("request")), 0);
  EXPECT_NE(verify("bob", dir.file("request")), 0);
  sshring::testing::write_file(dir.file("tampered"), canonical_request(g.request) + "x");
  EXPECT_NE(verify("alice", dir.file("tampered")), 0);

  sshring::testing::write_file(dir.file("key"), w.bob.key->to_openssh("bob@test"), 0600);
  ASSERT_EQ(::unlink(dir.file("request.sig").c_str()), 0);  // ssh-keygen writes request.sig itself
  ASSERT_EQ(
      sshring::testing::sh("ssh-keygen -Y sign -q -f " + dir.file("key") + " -n " +
                           std::string(kGrantNamespace) + " " + dir.file("request") + " >/dev/null 2>&1"),
      0);
  std::string why;
  auto k = sshsig_verify(sshring::testing::read_file(dir.file("request.sig")), kGrantNamespace,
                         canonical_request(g.request), &why);
  ASSERT_TRUE(k) << why;
  EXPECT_EQ(k->fingerprint, w.bob.pub.fingerprint);
}

TEST(GrantObject, JsonRoundTripAndStrictFields) {
  World w;
  SignedGrant g =
      signed_by(w.alice, request_for("alice", "two-of-security", "10.9.1.0/24", "10.1.2.3/32", 3600, kT),
                "g-00000000a11c");
  g.request.reason = "line one\nline \\two\x01";
  sign_request(g, w.alice.signer());
  add_decision(g, w.carol, DecisionKind::kApprove, kT + 5);
  EXPECT_EQ(signed_grant_from_json(signed_grant_to_json(g)), g);
  EXPECT_NE(canonical_request(g.request).find("reason line one\\nline \\\\two\\x01\n"), std::string::npos);
  auto j = signed_grant_to_json(g);
  j["request"]["id"] = "../../etc/passwd";
  EXPECT_THROW(signed_grant_from_json(j), common::UsageError);
  j = signed_grant_to_json(g);
  j["format"] = "v0";
  EXPECT_THROW(signed_grant_from_json(j), common::UsageError);
  j = signed_grant_to_json(g);
  j["decisions"] = nlohmann::json::array();
  for (int i = 0; i < 65; ++i) j["decisions"].push_back(signed_grant_to_json(g)["decisions"][0]);
  EXPECT_THROW(signed_grant_from_json(j), common::UsageError);
}

// ---- forged grant files ----

TEST(GrantCheck, ForgedGrantsAreRejectedAndNeverHonoured) {
  World w;
  auto pol = w.policy();
  auto good =
      signed_by(w.ci, request_for("ci-bot", "ci", "10.2.1.0/24", "10.1.5.7/32", 3600, kT), "g-000000000001");
  struct Case {
    const char* name;
    SignedGrant g;
    const char* reason;
  };
  std::vector<Case> cases;
  {
    auto g = signed_by(w.ci, request_for("ci-bot", "ci", "10.2.2.0/24", "10.1.5.7/32", 3600, kT),
                       "g-000000000002");
    g.signature.clear();
    cases.push_back({"unsigned", g, "unsigned"});
  }
  cases.push_back({"key not in the policy",
                   signed_by(w.mallory, request_for("ci-bot", "ci", "10.2.3.0/24", "10.1.5.7/32", 3600, kT),
                             "g-000000000003"),
                   "unknown_key"});
  cases.push_back(
      {"right key, outside the rule",
       signed_by(w.ci, request_for("ci-bot", "ci", "0.0.0.0/0", "10.1.5.7/32", 3600, kT), "g-000000000004"),
       "outside_rule"});
  cases.push_back({"right key, ttl over max_ttl",
                   signed_by(w.ci, request_for("ci-bot", "ci", "10.2.4.0/24", "10.1.5.7/32", 9 * 3600, kT),
                             "g-000000000005"),
                   "outside_rule"});
  cases.push_back(
      {"missing rule",
       signed_by(w.ci, request_for("ci-bot", "everything", "10.2.5.0/24", "10.1.5.7/32", 3600, kT),
                 "g-000000000006"),
       "missing_rule"});
  {
    auto g = signed_by(w.ci, request_for("ci-bot", "ci", "10.2.6.0/24", "10.1.5.7/32", 3600, kT),
                       "g-000000000007");
    g.request.to = *Cidr::parse("10.1.0.0/16");  // widened after signing
    cases.push_back({"tampered after signing", g, "bad_signature"});
  }
  {
    auto g = signed_by(w.ci, request_for("ci-bot", "ci", "10.2.7.0/24", "10.1.5.7/32", 3600, kT),
                       "g-000000000008");
    g.request.created += 3600;  // stretched after signing
    cases.push_back({"time shifted after signing", g, "bad_signature"});
  }
  cases.push_back(
      {"bob's key claiming to be alice",
       signed_by(w.bob, request_for("alice", "two-of-security", "10.9.0.0/24", "10.1.5.7/32", 60, kT),
                 "g-000000000009"),
       "signer_mismatch"});
  cases.push_back({"someone else requesting for ci-bot",
                   signed_by(w.bob, request_for("ci-bot", "ci", "10.2.8.0/24", "10.1.5.7/32", 60, kT, "bob"),
                             "g-00000000000a"),
                   "outside_rule"});
  {
    auto g = signed_by(w.alice, request_for("alice", "two-of-security", "10.9.2.0/24", "10.1.5.7/32", 60, kT),
                       "g-00000000000b");
    add_decision(g, w.carol, DecisionKind::kApprove, kT + 1);
    add_decision(g, w.dave, DecisionKind::kApprove, kT + 2);
    g.decisions[1].signer = "carol";  // dave's approval relabelled as a second one by carol
    cases.push_back({"relabelled approval", g, "bad_decision"});
  }
  {
    auto g = signed_by(w.alice, request_for("alice", "two-of-security", "10.9.3.0/24", "10.1.5.7/32", 60, kT),
                       "g-00000000000c");
    add_decision(g, w.carol, DecisionKind::kApprove, kT + 1);
    GrantDecision forged{DecisionKind::kApprove, "dave", kT + 2, "", "", "", {}};
    sign_decision(g.request, forged, w.mallory.signer());
    g.decisions.push_back(forged);
    cases.push_back({"approval signed by a stranger's key", g, "bad_decision"});
  }
  {
    // An approval copied from another grant does not verify here: it is bound to its request.
    auto other =
        signed_by(w.alice, request_for("alice", "two-of-security", "10.9.4.0/24", "10.1.5.7/32", 60, kT),
                  "g-00000000000d");
    add_decision(other, w.carol, DecisionKind::kApprove, kT + 1);
    add_decision(other, w.dave, DecisionKind::kApprove, kT + 1);
    auto g = signed_by(w.alice, request_for("alice", "two-of-security", "10.9.5.0/24", "10.1.5.7/32", 60, kT),
                       "g-00000000000e");
    g.decisions = other.decisions;
    cases.push_back({"approvals replayed from another grant", g, "bad_decision"});
  }
  std::vector<SignedGrant> stored = {good};
  for (const auto& c : cases) stored.push_back(c.g);
  auto snap = Snapshot::build_checked(pol, stored, kT + 10, nullptr);
  ASSERT_EQ(snap->checked_grants().size(), stored.size());
  EXPECT_EQ(snap->checked_grants()[0].status, GrantStatus::kActive) << snap->checked_grants()[0].detail;
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& c = snap->checked_grants()[i + 1];
    EXPECT_EQ(c.status, GrantStatus::kRejected) << cases[i].name << ": " << c.detail;
    EXPECT_EQ(c.reject_reason, cases[i].reason) << cases[i].name << ": " << c.detail;
    EXPECT_FALSE(c.honoured()) << cases[i].name;
    EXPECT_TRUE(common::is_grant_reject_reason(c.reject_reason)) << c.reject_reason;  // a metrics label
  }
  // Only the good grant reaches the flow entries (what the agent loads into its kernel maps).
  ASSERT_EQ(snap->flow_entries().size(), 2u);  // the standing rule and the good grant
  EXPECT_EQ(snap->flow_entries()[1].id, "g-000000000001");
  EXPECT_EQ(snap->classify_flow(ip("10.2.1.9"), ip("10.1.5.7"), 22, kT + 10).tag, FlowTag::kBypassApproved);
  for (const char* src :
       {"10.2.2.9", "10.2.3.9", "203.0.113.7", "10.2.4.9", "10.2.5.9", "10.2.6.9", "10.9.0.9"})
    EXPECT_EQ(snap->classify_flow(ip(src), ip("10.1.5.7"), 22, kT + 10).tag, FlowTag::kBypassUnapproved)
        << src;
}

// ---- approvals ----

TEST(GrantCheck, TwoOfSecurityApprovals) {
  World w;
  auto pol = w.policy();
  auto g = signed_by(w.alice, request_for("alice", "two-of-security", "10.9.1.0/24", "10.1.2.3/32", 7200, kT),
                     "g-0000000000a1");
  auto status = [&](UnixSeconds now) { return check_grant(*pol, g, now, nullptr); };
  EXPECT_EQ(status(kT + 1).status, GrantStatus::kPending);
  const OptOutRule& rule = *pol->find_rule("two-of-security");
  EXPECT_NE(decider_refusal(*pol, rule, g.request, "alice", DecisionKind::kApprove), "");  // the requester
  EXPECT_NE(decider_refusal(*pol, rule, g.request, "bob", DecisionKind::kApprove), "");    // not security
  EXPECT_EQ(decider_refusal(*pol, rule, g.request, "carol", DecisionKind::kApprove), "");
  // Signed anyway by the wrong people, their approvals do not count.
  add_decision(g, w.alice, DecisionKind::kApprove, kT + 10);
  add_decision(g, w.bob, DecisionKind::kApprove, kT + 11);
  add_decision(g, w.carol, DecisionKind::kApprove, kT + 12);
  auto c = status(kT + 20);
  EXPECT_EQ(c.status, GrantStatus::kPending) << c.detail;
  EXPECT_FALSE(c.decisions[0].counted);
  EXPECT_FALSE(c.decisions[1].counted);
  EXPECT_TRUE(c.decisions[2].counted);
  add_decision(g, w.carol, DecisionKind::kApprove, kT + 13);  // the same approver twice counts once
  c = status(kT + 20);
  EXPECT_EQ(c.status, GrantStatus::kPending) << c.detail;
  EXPECT_FALSE(c.decisions[3].counted);
  auto snap = Snapshot::build_checked(pol, {g}, kT + 20, nullptr);
  EXPECT_EQ(snap->classify_flow(ip("10.9.1.5"), ip("10.1.2.3"), 22, kT + 20).tag, FlowTag::kBypassUnapproved);
  add_decision(g, w.dave, DecisionKind::kApprove, kT + 30);  // second distinct security approver
  c = status(kT + 40);
  ASSERT_EQ(c.status, GrantStatus::kActive) << c.detail;
  EXPECT_EQ(c.terms.created, kT + 30);  // lives from activation for its TTL
  EXPECT_EQ(c.terms.expires, kT + 30 + 7200);
  snap = Snapshot::build_checked(pol, {g}, kT + 40, nullptr);
  auto fc = snap->classify_flow(ip("10.9.1.5"), ip("10.1.2.3"), 22, kT + 40);
  EXPECT_EQ(fc.tag, FlowTag::kBypassApproved);
  EXPECT_EQ(fc.id, "g-0000000000a1");
  EXPECT_EQ(status(kT + 30 + 7200).status, GrantStatus::kExpired);
}

TEST(GrantCheck, PendingExpiresAfterRequestTtlAndLateApprovalsDoNotCount) {
  World w;
  auto pol = w.policy();
  auto g = signed_by(w.alice, request_for("alice", "two-of-security", "10.9.1.0/24", "10.1.2.3/32", 600, kT),
                     "g-0000000000a2");
  add_decision(g, w.carol, DecisionKind::kApprove, kT + 100);
  EXPECT_EQ(check_grant(*pol, g, kT + 3599, nullptr).status, GrantStatus::kPending);
  EXPECT_EQ(check_grant(*pol, g, kT + 3600, nullptr).status, GrantStatus::kExpired);
  add_decision(g, w.dave, DecisionKind::kApprove, kT + 3600);  // one second too late
  auto c = check_grant(*pol, g, kT + 3700, nullptr);
  EXPECT_EQ(c.status, GrantStatus::kExpired) << c.detail;
  EXPECT_FALSE(c.honoured());
  EXPECT_EQ(c.decisions[1].not_counted_why, "after the request expired");
}

TEST(GrantCheck, DeniedCanNotBeApprovedAfterwards) {
  World w;
  auto pol = w.policy();
  auto g = signed_by(w.alice, request_for("alice", "two-of-security", "10.9.1.0/24", "10.1.2.3/32", 600, kT),
                     "g-0000000000a3");
  add_decision(g, w.carol, DecisionKind::kDeny, kT + 10, "not during the freeze");
  add_decision(g, w.carol, DecisionKind::kApprove, kT + 20);
  add_decision(g, w.dave, DecisionKind::kApprove, kT + 21);
  auto c = check_grant(*pol, g, kT + 30, nullptr);
  EXPECT_EQ(c.status, GrantStatus::kDenied) << c.detail;
  EXPECT_EQ(c.detail, "denied by carol: not during the freeze");
  EXPECT_FALSE(c.honoured());
  EXPECT_EQ(c.decisions[1].not_counted_why, "the request was denied");
  // A denial by someone who may not decide is not a denial.
  auto h = signed_by(w.alice, request_for("alice", "two-of-security", "10.9.1.0/24", "10.1.2.3/32", 600, kT),
                     "g-0000000000a4");
  add_decision(h, w.bob, DecisionKind::kDeny, kT + 10, "spite");
  EXPECT_EQ(check_grant(*pol, h, kT + 30, nullptr).status, GrantStatus::kPending);
}

TEST(GrantCheck, DeletingOrNarrowingTheRuleRejectsActiveGrants) {
  World w;
  auto g = signed_by(w.ci, request_for("ci-bot", "ci", "10.2.1.0/24", "10.1.5.7/32", 4 * 3600, kT),
                     "g-0000000000b1");
  auto before = Snapshot::build_checked(w.policy(), {g}, kT + 5, nullptr);
  EXPECT_EQ(before->checked_grants()[0].status, GrantStatus::kActive);
  EXPECT_EQ(before->classify_flow(ip("10.2.1.1"), ip("10.1.5.7"), 22, kT + 5).tag, FlowTag::kBypassApproved);
  auto deleted = Snapshot::build_checked(w.policy(false), {g}, kT + 5, nullptr);
  EXPECT_EQ(deleted->checked_grants()[0].status, GrantStatus::kRejected);
  EXPECT_EQ(deleted->checked_grants()[0].reject_reason, "missing_rule");
  EXPECT_EQ(deleted->classify_flow(ip("10.2.1.1"), ip("10.1.5.7"), 22, kT + 5).tag,
            FlowTag::kBypassUnapproved);
  auto narrowed = Snapshot::build_checked(w.policy(true, "1h"), {g}, kT + 5, nullptr);
  EXPECT_EQ(narrowed->checked_grants()[0].reject_reason, "outside_rule");
  EXPECT_EQ(narrowed->classify_flow(ip("10.2.1.1"), ip("10.1.5.7"), 22, kT + 5).tag,
            FlowTag::kBypassUnapproved);
}

// From 512 grants on, the checks run on several threads: every verdict lands at its grant's index,
// forgeries among thousands are still rejected, and the verification cache is shared safely.
TEST(GrantCheck, ManyGrantsCheckedInParallelKeepOrderAndVerdicts) {
  World w;
  auto pol = w.policy();
  std::vector<SignedGrant> gs;
  for (int i = 0; i < 1500; ++i) {
    char id[16];
    std::snprintf(id, sizeof id, "g-%012x", i + 1);
    const std::string from = "10.2." + std::to_string(i / 250) + "." + std::to_string(i % 250) + "/32";
    auto g = signed_by(w.ci, request_for("ci-bot", "ci", from.c_str(), "10.1.5.7/32", 3600, kT), id);
    if (i % 7 == 3) g.request.to = *Cidr::parse("10.1.0.0/16");  // widened after signing
    gs.push_back(std::move(g));
  }
  SignatureCache cache;
  for (int round = 0; round < 2; ++round) {  // cold, then every verdict from the cache
    auto snap = Snapshot::build_checked(pol, gs, kT + 5, &cache);
    const auto& checked = snap->checked_grants();
    ASSERT_EQ(checked.size(), gs.size());
    size_t rejected = 0;
    for (size_t i = 0; i < gs.size(); ++i) {
      ASSERT_EQ(checked[i].object.request.id, gs[i].request.id) << i;
      const bool forged = i % 7 == 3;
      EXPECT_EQ(checked[i].status, forged ? GrantStatus::kRejected : GrantStatus::kActive) << i;
      if (forged) {
        EXPECT_EQ(checked[i].reject_reason, "bad_signature") << i;
      }
      rejected += forged;
    }
    EXPECT_EQ(snap->live_grants(kT + 5), gs.size() - rejected);
    EXPECT_EQ(snap->classify_flow(ip("10.2.0.4"), ip("10.1.5.7"), 22, kT + 5).tag, FlowTag::kBypassApproved);
    EXPECT_EQ(snap->classify_flow(ip("10.2.0.3"), ip("10.1.5.7"), 22, kT + 5).tag,
              FlowTag::kBypassUnapproved);
  }
  EXPECT_EQ(cache.misses(), gs.size());
  EXPECT_EQ(cache.hits(), gs.size());
}

TEST(GrantCheck, RequestingForOthersNeedsTheRule) {
  World w;
  auto pol = w.policy();
  auto g =
      signed_by(w.deployer, request_for("ci-bot", "ci", "10.2.1.0/24", "10.1.5.7/32", 3600, kT, "deployer"),
                "g-0000000000c1");
  auto c = check_grant(*pol, g, kT + 1, nullptr);
  EXPECT_EQ(c.status, GrantStatus::kActive) << c.detail;
  EXPECT_EQ(c.requester_fingerprint, w.deployer.pub.fingerprint);
}

TEST(GrantCheck, BreakGlassIsLiveAtOnceAndNeedsAReviewBySomeoneElse) {
  World w;
  auto pol = w.policy();
  auto g = signed_by(w.alice, request_for("alice", "glass", "10.8.1.0/24", "10.1.2.3/32", 3600, kT),
                     "g-0000000000d1");
  auto c = check_grant(*pol, g, kT + 1, nullptr);
  ASSERT_EQ(c.status, GrantStatus::kActive) << c.detail;
  EXPECT_TRUE(c.break_glass);
  EXPECT_EQ(c.review_due, kT + 86400);
  EXPECT_FALSE(c.review_overdue(kT + 86400));
  EXPECT_TRUE(c.review_overdue(kT + 86401));
  auto snap = Snapshot::build_checked(pol, {g}, kT + 1, nullptr);
  EXPECT_EQ(snap->break_glass_live(kT + 1), 1u);
  EXPECT_EQ(snap->reviews_overdue(kT + 1), 0u);
  EXPECT_EQ(snap->reviews_overdue(kT + 90000), 1u);
  add_decision(g, w.alice, DecisionKind::kReview, kT + 5000, "all fine");  // self-review does not count
  c = check_grant(*pol, g, kT + 90000, nullptr);
  EXPECT_FALSE(c.reviewed);
  EXPECT_TRUE(c.review_overdue(kT + 90000));
  add_decision(g, w.carol, DecisionKind::kReview, kT + 95000, "relay was down, INC-9 confirms");
  c = check_grant(*pol, g, kT + 96000, nullptr);
  EXPECT_TRUE(c.reviewed);
  EXPECT_FALSE(c.review_overdue(kT + 96000));
  EXPECT_EQ(Snapshot::build_checked(pol, {g}, kT + 96000, nullptr)->reviews_overdue(kT + 96000), 0u);
  // Over the rule's short max_ttl: rejected even though self-approved.
  auto long_one = signed_by(w.alice, request_for("alice", "glass", "10.8.1.0/24", "10.1.2.3/32", 7200, kT),
                            "g-0000000000d2");
  EXPECT_EQ(check_grant(*pol, long_one, kT + 1, nullptr).reject_reason, "outside_rule");
}

TEST(GrantCheck, SignedRevocationEndsTheGrant) {
  World w;
  auto pol = w.policy();
  auto g =
      signed_by(w.ci, request_for("ci-bot", "ci", "10.2.1.0/24", "10.1.5.7/32", 3600, kT), "g-0000000000e1");
  add_decision(g, w.carol, DecisionKind::kRevoke, kT + 100, "done");
  auto c = check_grant(*pol, g, kT + 200, nullptr);
  EXPECT_EQ(c.status, GrantStatus::kRevoked) << c.detail;
  auto snap = Snapshot::build_checked(pol, {g}, kT + 200, nullptr);
  auto fc = snap->classify_flow(ip("10.2.1.1"), ip("10.1.5.7"), 22, kT + 200);
  EXPECT_EQ(fc.tag, FlowTag::kBypassExpired);
  EXPECT_EQ(fc.id, "g-0000000000e1");
  EXPECT_EQ(snap->classify_flow(ip("10.2.1.1"), ip("10.1.5.7"), 22, kT + 99).tag, FlowTag::kBypassApproved);
}

// Two objects for one id (a planted copy without the revocation) must not widen access: identical
// copies count once, differing ones are all refused.
TEST(GrantCheck, DuplicateIdsNeverWidenAccess) {
  World w;
  auto pol = w.policy();
  auto g =
      signed_by(w.ci, request_for("ci-bot", "ci", "10.2.1.0/24", "10.1.5.7/32", 3600, kT), "g-0000000000e2");
  auto revoked = g;
  add_decision(revoked, w.carol, DecisionKind::kRevoke, kT + 100, "done");
  for (const auto& stored : {std::vector<SignedGrant>{revoked, g}, std::vector<SignedGrant>{g, revoked}}) {
    auto snap = Snapshot::build_checked(pol, stored, kT + 200, nullptr);
    EXPECT_EQ(snap->classify_flow(ip("10.2.1.1"), ip("10.1.5.7"), 22, kT + 200).tag,
              FlowTag::kBypassUnapproved);
    EXPECT_TRUE(snap->grants().empty());
    ASSERT_EQ(snap->checked_grants().size(), 2u);
    for (const auto& c : snap->checked_grants()) EXPECT_EQ(c.reject_reason, "duplicate_id");
  }
  auto same = Snapshot::build_checked(pol, {g, g}, kT + 200, nullptr);
  EXPECT_EQ(same->classify_flow(ip("10.2.1.1"), ip("10.1.5.7"), 22, kT + 200).tag, FlowTag::kBypassApproved);
  EXPECT_EQ(same->grants().size(), 1u);
  EXPECT_EQ(same->checked_grants().size(), 1u);
}

// A requester signs `created` up to the clock skew ahead (a forged, future-dated request under a
// rule that needs no approval): it is pending until then, so it never lives past max_ttl from the
// moment it can first be used.
TEST(GrantCheck, FutureDatedRequestIsPendingUntilItStarts) {
  World w;
  auto pol = w.policy();
  auto g = signed_by(w.ci, request_for("ci-bot", "ci", "10.2.1.0/24", "10.1.5.7/32", 8 * 3600, kT + 290),
                     "g-0000000000e3");
  auto early = check_grant(*pol, g, kT, nullptr);
  EXPECT_EQ(early.status, GrantStatus::kPending) << early.detail;
  EXPECT_FALSE(early.honoured());
  EXPECT_EQ(early.pending_until, kT + 290);
  auto snap = Snapshot::build_checked(pol, {g}, kT, nullptr);
  EXPECT_EQ(snap->classify_flow(ip("10.2.1.1"), ip("10.1.5.7"), 22, kT).tag, FlowTag::kBypassUnapproved);
  auto started = check_grant(*pol, g, kT + 290, nullptr);
  EXPECT_EQ(started.status, GrantStatus::kActive) << started.detail;
  EXPECT_EQ(started.terms.effective_expiry() - (kT + 290), 8 * 3600);  // max_ttl from first use

  // The same for the approval that completes a request, dated ahead.
  auto a = signed_by(w.alice, request_for("alice", "two-of-security", "10.9.1.0/24", "10.1.2.3/32", 3600, kT),
                     "g-0000000000e4");
  add_decision(a, w.carol, DecisionKind::kApprove, kT + 10);
  add_decision(a, w.dave, DecisionKind::kApprove, kT + 250);
  auto c = check_grant(*pol, a, kT + 20, nullptr);
  EXPECT_EQ(c.status, GrantStatus::kPending) << c.detail;
  EXPECT_EQ(c.pending_until, kT + 250);
  EXPECT_EQ(check_grant(*pol, a, kT + 250, nullptr).status, GrantStatus::kActive);
}

// A correctly signed grant whose text carries terminal control sequences (forged straight into the
// store, bypassing the CLI's check) is rejected by every reader, and escaped wherever it is shown.
TEST(GrantCheck, ControlCharactersInGrantTextAreRejected) {
  World w;
  auto pol = w.policy();
  auto r = request_for("ci-bot", "ci", "10.2.1.0/24", "10.1.5.7/32", 3600, kT);
  r.reason = "deploy\r\x1b[49C10.2.1.7/32";
  auto g = signed_by(w.ci, r, "g-0000000000e5");
  auto c = check_grant(*pol, g, kT + 5, nullptr);
  EXPECT_EQ(c.status, GrantStatus::kRejected);
  EXPECT_EQ(c.reject_reason, "outside_rule") << c.detail;
  EXPECT_NE(c.detail.find("reason"), std::string::npos) << c.detail;
  auto h =
      signed_by(w.ci, request_for("ci-bot", "ci", "10.2.1.0/24", "10.1.5.7/32", 3600, kT), "g-0000000000e6");
  h.request.host =
      "host\x9b"
      "31m";  // a lone byte: invalid UTF-8 (a C1 CSI on 8-bit terminals)
  sign_request(h, w.ci.signer());
  EXPECT_EQ(check_grant(*pol, h, kT + 5, nullptr).reject_reason, "outside_rule");
  auto d = signed_by(w.alice, request_for("alice", "two-of-security", "10.9.1.0/24", "10.1.2.3/32", 3600, kT),
                     "g-0000000000e7");
  add_decision(d, w.carol, DecisionKind::kApprove, kT + 10, "ok\x1b]0;title\x07");
  EXPECT_EQ(check_grant(*pol, d, kT + 20, nullptr).reject_reason, "bad_decision");
  auto snap = Snapshot::build_checked(pol, {g}, kT + 5, nullptr);
  EXPECT_EQ(snap->classify_flow(ip("10.2.1.1"), ip("10.1.5.7"), 22, kT + 5).tag, FlowTag::kBypassUnapproved);
  // Rejections decided before the text check quote no raw control character in their detail.
  auto m = signed_by(w.ci, request_for("ci-bot", "ci", "10.2.1.0/24", "10.1.5.7/32", 3600, kT, "x\x1b[2J"),
                     "g-0000000000e8");
  auto mc = check_grant(*pol, m, kT + 5, nullptr);
  EXPECT_EQ(mc.reject_reason, "signer_mismatch");
  EXPECT_EQ(mc.detail.find('\x1b'), std::string::npos) << mc.detail;
  auto n = signed_by(w.alice, request_for("alice", "two-of-security", "10.9.1.0/24", "10.1.2.3/32", 3600, kT),
                     "g-0000000000e9");
  add_decision(n, w.carol, DecisionKind::kApprove, kT + 10);
  n.decisions[0].signer = "carol\x1b[2J";  // no longer the signer's name (and the signature breaks)
  auto nc = check_grant(*pol, n, kT + 20, nullptr);
  EXPECT_EQ(nc.reject_reason, "bad_decision");
  EXPECT_EQ(nc.detail.find('\x1b'), std::string::npos) << nc.detail;

  EXPECT_EQ(printable_escape("ok caf\xc3\xa9 \\ \x1b[2J\r\n\x7f\xff"),
            "ok caf\xc3\xa9 \\\\ \\x1b[2J\\x0d\\x0a\\x7f\\xff");
  EXPECT_EQ(printable_escape("a\xe2\x80\xae"
                             "b\xe2\x81\xa6"),
            "a\\u{202e}b\\u{2066}");
  EXPECT_EQ(printable_escape("\xe2\x82\xac"), "\xe2\x82\xac");  // the euro sign stays
}

TEST(GrantCheck, OnlyStandingRulesApproveWithoutGrants) {
  World w;
  auto snap = Snapshot::build_checked(w.policy(), {}, kT, nullptr);
  auto fc = snap->classify_flow(ip("10.7.1.1"), ip("10.1.7.7"), 22, kT);
  EXPECT_EQ(fc.tag, FlowTag::kBypassApproved);
  EXPECT_EQ(fc.id, "standing");
  EXPECT_EQ(snap->classify_flow(ip("10.2.1.1"), ip("10.1.5.7"), 22, kT).tag, FlowTag::kBypassUnapproved);
  EXPECT_EQ(snap->classify_flow(ip("10.9.1.1"), ip("10.1.5.7"), 22, kT).tag, FlowTag::kBypassUnapproved);
  EXPECT_EQ(snap->classify_flow(ip("10.8.1.1"), ip("10.1.5.7"), 22, kT).tag, FlowTag::kBypassUnapproved);
}

TEST(GrantCheck, SignatureCacheVerifiesAnUnchangedGrantOnce) {
  World w;
  auto pol = w.policy();
  std::vector<SignedGrant> gs;
  for (int i = 0; i < 20; ++i) {
    char id[16];
    std::snprintf(id, sizeof id, "g-%012x", i);
    auto g = signed_by(w.alice,
                       request_for("alice", "two-of-security", "10.9.1.0/24", "10.1.2.3/32", 600, kT), id);
    add_decision(g, w.carol, DecisionKind::kApprove, kT + 1);
    add_decision(g, w.dave, DecisionKind::kApprove, kT + 2);
    gs.push_back(std::move(g));
  }
  SignatureCache cache;
  auto a = Snapshot::build_checked(pol, gs, kT + 5, &cache);
  EXPECT_EQ(cache.misses(), 60u);
  EXPECT_EQ(cache.hits(), 0u);
  auto b = Snapshot::build_checked(pol, gs, kT + 6, &cache);
  EXPECT_EQ(cache.misses(), 60u);
  EXPECT_EQ(cache.hits(), 60u);
  for (const auto& c : b->checked_grants()) EXPECT_EQ(c.status, GrantStatus::kActive) << c.detail;
  // A cached "valid" never leaks to a changed grant: tampering shows at once.
  gs[0].request.reason = "changed";
  auto d = Snapshot::build_checked(pol, gs, kT + 7, &cache);
  EXPECT_EQ(d->checked_grants()[0].reject_reason, "bad_signature");
  EXPECT_EQ(cache.misses(), 61u);
}

// The reloader behind relay and agent: forged files in the store are not honoured, each is reported
// once (the caller counts sshring_grants_rejected_total and writes grant_reject), not again on reload.
TEST(GrantCheck, ReloaderReportsEachRejectedGrantOnce) {
  World w;
  sshring::testing::TempDir dir;
  std::string store_dir = dir.file("grants");
  sshring::testing::write_file(dir.file("policy.yaml"), "grant_store: " + store_dir + "\n" + w.yaml());
  DirGrantStore store(store_dir);
  const UnixSeconds now = ::time(nullptr);
  store.add(signed_by(w.ci, request_for("ci-bot", "ci", "10.2.1.0/24", "10.1.5.7/32", 3600, now),
                      "g-000000000f01"));
  store.add(signed_by(w.mallory, request_for("ci-bot", "ci", "10.2.2.0/24", "10.1.5.7/32", 3600, now),
                      "g-000000000f02"));
  auto unsigned_one =
      signed_by(w.ci, request_for("ci-bot", "ci", "0.0.0.0/0", "10.1.0.0/16", 3600, now), "g-000000000f03");
  unsigned_one.signature.clear();
  store.add(unsigned_one);
  PolicyCache cache;
  ReloaderOptions o;
  o.policy_path = dir.file("policy.yaml");
  o.watch = false;
  o.handle_sighup = false;
  std::map<std::string, int> reported;
  o.on_grant_rejected = [&](const CheckedGrant& c) { ++reported[c.object.id() + ":" + c.reject_reason]; };
  Reloader r(cache, o);
  r.reload_or_throw();
  r.reload_or_throw();
  EXPECT_EQ(reported,
            (std::map<std::string, int>{{"g-000000000f02:unknown_key", 1}, {"g-000000000f03:unsigned", 1}}));
  auto snap = cache.current();
  EXPECT_EQ(snap->classify_flow(ip("10.2.1.1"), ip("10.1.5.7"), 22, now + 1).tag, FlowTag::kBypassApproved);
  EXPECT_EQ(snap->classify_flow(ip("10.2.2.1"), ip("10.1.5.7"), 22, now + 1).tag, FlowTag::kBypassUnapproved);
  EXPECT_EQ(snap->classify_flow(ip("192.0.2.1"), ip("10.1.9.9"), 22, now + 1).tag,
            FlowTag::kBypassUnapproved);
}

}  // namespace
}  // namespace sshring::policy
