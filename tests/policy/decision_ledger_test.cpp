// Revocations and denials outlive their removal from the store (policy/decision_ledger.h). The
// attack: whoever can write the store (every requester can, for their own grant) deletes the signed
// `revoke` from a stored grant, or writes back the copy from before it, and the grant is active again.
// Each test first shows the attack working on a reader without the ledger.
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>

#include "policy/cache.h"
#include "policy/decision_ledger.h"
#include "policy/grant_memo.h"
#include "policy/grant_store.h"
#include "tests/policy/grant_fixture.h"
#include "tests/policy/test_util.h"
#include "tests/support/process.h"

namespace sshring::policy {
namespace {

using testing::add_decision;
using testing::Person;
using testing::request_for;
using testing::signed_by;

struct People {
  Person alice = testing::person("alice"), carol = testing::person("carol"), dave = testing::person("dave");
  std::string yaml(const std::string& store = {}) const {
    auto pr = [](const Person& p, const char* role) {
      return "  - {name: " + p.name + ", roles: [" + role + "], keys: [\"" + p.key_line() + "\"]}\n";
    };
    return "version: 1\n" + (store.empty() ? std::string() : "grant_store: " + store + "\n") +
           "relays: [10.0.0.0/28]\nhosts: [{name: prod, cidrs: [10.1.0.0/16]}]\nprincipals:\n" +
           pr(alice, "sre") + pr(carol, "security") + pr(dave, "security") +
           "roles:\n  - {name: sre, targets: [{cidrs: [10.1.0.0/16]}]}\n"
           "  - {name: security, targets: [{cidrs: [10.1.0.0/16]}]}\n"
           "opt_out:\n"
           "  - {id: two, who: {roles: [sre]}, from: [10.9.0.0/16], to: {cidrs: [10.1.0.0/16]}, max_ttl: "
           "4h,\n"
           "     approvals: {count: 2, roles: [security]}, request_ttl: 1h, expires: 2099-01-01T00:00:00Z}\n";
  }
};

const People& people() {
  static const People p;
  return p;
}

UnixSeconds now_s() {
  return static_cast<UnixSeconds>(::time(nullptr));
}

// Requested a minute ago, approved by carol and dave since.
SignedGrant approved(UnixSeconds now, const char* id = "g-00000000beef") {
  const People& p = people();
  auto g = signed_by(p.alice, request_for("alice", "two", "10.9.0.0/24", "10.1.0.1/32", 3600, now - 60), id);
  add_decision(g, p.carol, DecisionKind::kApprove, now - 50);
  add_decision(g, p.dave, DecisionKind::kApprove, now - 40);
  return g;
}

GrantText text_of(const SignedGrant& g) {
  return std::make_shared<const std::string>(signed_grant_to_json(g).dump());
}

GrantStatus status_in(const GrantMemo::Result& r) {
  EXPECT_EQ(r.checked.size(), 1u);
  return r.checked.at(0)->status;
}

TEST(DecisionLedger, ARevocationDeletedFromTheStoreStillRevokes) {
  const UnixSeconds now = now_s();
  const std::string policy = people().yaml();
  const SignedGrant before = approved(now);
  SignedGrant revoked = before;
  add_decision(revoked, people().carol, DecisionKind::kRevoke, now - 10, "incident over");

  // Without the ledger, writing back the copy from before the revoke brings the grant back.
  GrantMemo plain;
  EXPECT_EQ(status_in(plain.build(policy, "t", {text_of(before)}, now, nullptr)), GrantStatus::kActive);
  EXPECT_EQ(status_in(plain.build(policy, "t", {text_of(revoked)}, now, nullptr)), GrantStatus::kRevoked);
  EXPECT_EQ(status_in(plain.build(policy, "t", {text_of(before)}, now, nullptr)), GrantStatus::kActive);

  GrantMemo memo;
  DecisionLedger ledger;
  EXPECT_EQ(status_in(memo.build(policy, "t", {text_of(before)}, now, nullptr, &ledger)),
            GrantStatus::kActive);
  auto r = memo.build(policy, "t", {text_of(revoked)}, now, nullptr, &ledger);
  EXPECT_EQ(status_in(r), GrantStatus::kRevoked);
  EXPECT_TRUE(r.restored.empty());  // the store still had it
  EXPECT_EQ(ledger.size(), 1u);
  r = memo.build(policy, "t", {text_of(before)}, now, nullptr, &ledger);
  EXPECT_EQ(status_in(r), GrantStatus::kRevoked);
  EXPECT_EQ(r.restored, std::vector<std::string>{before.id()});
  EXPECT_FALSE(r.checked[0]->terms.live(now));
  EXPECT_EQ(r.checked[0]->terms.revoked_by, "carol");

  // The same stripped text delivered again is a reused check, still revoked.
  const GrantText stripped = text_of(before);
  EXPECT_EQ(status_in(memo.build(policy, "t", {stripped}, now, nullptr, &ledger)), GrantStatus::kRevoked);
  r = memo.build(policy, "t", {stripped}, now, nullptr, &ledger);
  EXPECT_EQ(status_in(r), GrantStatus::kRevoked);
  EXPECT_EQ(r.reused, 1u);
}

TEST(DecisionLedger, ADenialDeletedFromTheStoreStillDenies) {
  const UnixSeconds now = now_s();
  const People& p = people();
  const std::string policy = p.yaml();
  auto req = signed_by(p.alice, request_for("alice", "two", "10.9.0.0/24", "10.1.0.1/32", 3600, now - 60),
                       "g-0000000dea1e");
  SignedGrant denied = req;
  add_decision(denied, p.carol, DecisionKind::kDeny, now - 50, "no");
  // The deny deleted, then approvals gathered as if it had never been.
  SignedGrant reopened = req;
  add_decision(reopened, p.carol, DecisionKind::kApprove, now - 40);
  add_decision(reopened, p.dave, DecisionKind::kApprove, now - 30);

  GrantMemo plain;
  EXPECT_EQ(status_in(plain.build(policy, "t", {text_of(denied)}, now, nullptr)), GrantStatus::kDenied);
  EXPECT_EQ(status_in(plain.build(policy, "t", {text_of(reopened)}, now, nullptr)), GrantStatus::kActive);

  GrantMemo memo;
  DecisionLedger ledger;
  EXPECT_EQ(status_in(memo.build(policy, "t", {text_of(denied)}, now, nullptr, &ledger)),
            GrantStatus::kDenied);
  auto r = memo.build(policy, "t", {text_of(reopened)}, now, nullptr, &ledger);
  EXPECT_EQ(status_in(r), GrantStatus::kDenied);
  EXPECT_FALSE(r.checked[0]->honoured());
}

TEST(DecisionLedger, ANewRequestUnderTheSameIdIsNotTouched) {
  const UnixSeconds now = now_s();
  const std::string policy = people().yaml();
  SignedGrant revoked = approved(now);
  add_decision(revoked, people().carol, DecisionKind::kRevoke, now - 10);
  DecisionLedger ledger;
  GrantMemo memo;
  memo.build(policy, "t", {text_of(revoked)}, now, nullptr, &ledger);
  ASSERT_EQ(ledger.size(), 1u);
  // Another request (other terms, so other approvals) that happens to carry the same id.
  const People& p = people();
  auto other = signed_by(p.alice, request_for("alice", "two", "10.9.1.0/24", "10.1.0.2/32", 1800, now - 30),
                         revoked.id());
  EXPECT_EQ(ledger.restore(other), 0u);
}

TEST(DecisionLedger, OnlyCountedDecisionsAreRemembered) {
  const UnixSeconds now = now_s();
  DecisionLedger ledger;
  SignedGrant g = approved(now);
  // A deny after activation does not count (a revoke is needed): nothing to remember.
  add_decision(g, people().carol, DecisionKind::kDeny, now - 5);
  GrantMemo memo;
  auto r = memo.build(people().yaml(), "t", {text_of(g)}, now, nullptr, &ledger);
  EXPECT_EQ(status_in(r), GrantStatus::kActive);
  EXPECT_EQ(ledger.size(), 0u);
}

TEST(DecisionLedger, SurvivesARestartInAFileOnlyItsOwnerCanWrite) {
  sshring::testing::TempDir dir;
  const std::string path = decision_ledger_path(dir.file("cache"));
  const UnixSeconds now = now_s();
  SignedGrant revoked = approved(now);
  add_decision(revoked, people().carol, DecisionKind::kRevoke, now - 10);
  {
    DecisionLedger ledger(path);
    std::string why;
    ASSERT_TRUE(ledger.load(&why)) << why;  // nothing yet: empty
    GrantMemo memo;
    memo.build(people().yaml(), "t", {text_of(revoked)}, now, nullptr, &ledger);
    ASSERT_TRUE(ledger.save(&why)) << why;
  }
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  DecisionLedger after(path);
  std::string why;
  ASSERT_TRUE(after.load(&why)) << why;
  SignedGrant stripped = approved(now);
  stripped.request = revoked.request;
  stripped.signature = revoked.signature;
  EXPECT_EQ(after.restore(stripped), 1u);
  GrantMemo memo;
  EXPECT_EQ(status_in(memo.build(people().yaml(), "t", {text_of(stripped)}, now, nullptr, &after)),
            GrantStatus::kRevoked);

  // Writable by others: whoever could write it could make the reader forget; it is not read.
  ASSERT_EQ(::chmod(path.c_str(), 0666), 0);
  DecisionLedger loose(path);
  EXPECT_FALSE(loose.load(&why));
  EXPECT_NE(why.find("writable by group or others"), std::string::npos) << why;
  EXPECT_EQ(loose.size(), 0u);
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  ASSERT_EQ(::chmod(dir.file("cache").c_str(), 0777), 0);
  EXPECT_FALSE(loose.load(&why));
  EXPECT_NE(why.find("directory"), std::string::npos) << why;
  // Nor written: it learns, and keeps what it learned in memory only.
  GrantMemo again;
  again.build(people().yaml(), "t", {text_of(revoked)}, now, nullptr, &loose);
  EXPECT_EQ(loose.size(), 1u);
  EXPECT_FALSE(loose.save(&why));
  EXPECT_NE(why.find("writable by group or others"), std::string::npos) << why;
}

// The same signed revoke in many armors (line breaks anywhere in it still verify), or more revokes:
// the ledger keeps one revoke per request, so no store writer can grow an entry past what a file
// load accepts and make a restarted reader drop the ledger.
TEST(DecisionLedger, CopiesOfARevokeInOtherArmorsKeepOneEntry) {
  sshring::testing::TempDir dir;
  const std::string path = decision_ledger_path(dir.file("cache"));
  const UnixSeconds now = now_s();
  const SignedGrant before = approved(now);
  SignedGrant revoked = before;
  add_decision(revoked, people().carol, DecisionKind::kRevoke, now - 10);
  const GrantDecision real = revoked.decisions.back();
  DecisionLedger ledger(path);
  GrantMemo memo;
  for (int round = 0; round < 3; ++round) {
    SignedGrant planted = before;
    const size_t body = real.signature.find('\n') + 1;  // after the armor's first line
    for (int i = 0; i < 60; ++i) {
      GrantDecision d = real;
      d.signature.insert(body + static_cast<size_t>(round * 60 + i) % 64 + 1, "\n");
      planted.decisions.push_back(d);
    }
    auto r = memo.build(people().yaml(), "t", {text_of(planted)}, now, nullptr, &ledger);
    ASSERT_EQ(status_in(r), GrantStatus::kRevoked) << r.checked[0]->detail;
  }
  std::string why;
  ASSERT_TRUE(ledger.save(&why)) << why;
  DecisionLedger after(path);
  ASSERT_TRUE(after.load(&why)) << why;
  ASSERT_EQ(after.size(), 1u);
  SignedGrant restored = before;
  EXPECT_EQ(after.restore(restored), 1u);
  EXPECT_EQ(restored.decisions.size(), before.decisions.size() + 1);
  // A stored copy that already has the decision, in any armor, gets nothing added.
  SignedGrant same = revoked;
  same.decisions.back().signature.insert(40, "\n");
  EXPECT_EQ(after.restore(same), 0u);
}

// A ledger file that does not parse is moved aside, not overwritten by the next save.
TEST(DecisionLedger, AnUnreadableFileIsKeptAside) {
  sshring::testing::TempDir dir;
  const std::string cache = dir.file("cache");
  ASSERT_EQ(::mkdir(cache.c_str(), 0700), 0);
  const std::string path = decision_ledger_path(cache);
  sshring::testing::write_file(path, "{not json");
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  DecisionLedger ledger(path);
  std::string why;
  EXPECT_FALSE(ledger.load(&why));
  EXPECT_NE(why.find("moved to"), std::string::npos) << why;
  EXPECT_EQ(sshring::testing::read_file(path + ".unreadable"), "{not json");
}

// A principal minting and withdrawing requests of their own fills the ledger past its cap: they
// lose their own oldest entries, nobody else's.
TEST(DecisionLedger, OverTheCapTheLargestRequesterLosesItsOldest) {
  DecisionLedger ledger({}, 100);
  auto revoked = [](const std::string& requester, int i) {
    CheckedGrant c;
    c.status = GrantStatus::kRevoked;
    char id[16];
    std::snprintf(id, sizeof id, "g-%012x", i);
    c.object.request =
        request_for(requester, "two", "10.9.0.0/24", "10.1.0.1/32", 3600, 1800000000, requester);
    c.object.request.id = id;
    c.object.decisions.push_back(
        GrantDecision{DecisionKind::kRevoke, requester, 1800000010, "", "", "", "sig"});
    c.decisions.push_back(CheckedApproval{DecisionKind::kRevoke, requester, "fp", 1800000010, "", true, {}});
    return c;
  };
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(ledger.remember(revoked("alice", i)));
  for (int i = 0; i < 300; ++i) ASSERT_TRUE(ledger.remember(revoked("mallory", 1000 + i)));
  EXPECT_LE(ledger.size(), 100u);
  for (int i = 0; i < 5; ++i) {
    SignedGrant g = revoked("alice", i).object;
    g.decisions.clear();
    EXPECT_EQ(ledger.restore(g), 1u) << "alice's revoke " << i << " was pushed out";
  }
  SignedGrant newest = revoked("mallory", 1299).object;
  newest.decisions.clear();
  EXPECT_EQ(ledger.restore(newest), 1u) << "the newest entry went first";
}

// Each approver's earliest deny is kept: which one counts depends on the policy of the day.
TEST(DecisionLedger, KeepsTheEarliestDenyOfEachSigner) {
  DecisionLedger ledger;
  CheckedGrant c;
  c.status = GrantStatus::kDenied;
  c.object.request = request_for("alice", "two", "10.9.0.0/24", "10.1.0.1/32", 3600, 1800000000);
  c.object.request.id = "g-0000000000dd";
  for (const auto& [who, at] :
       {std::pair{"carol", 1800000030}, {"dave", 1800000020}, {"carol", 1800000040}}) {
    c.object.decisions.push_back(GrantDecision{DecisionKind::kDeny, who, at, "", "", "", "sig"});
    c.decisions.push_back(CheckedApproval{DecisionKind::kDeny, who, "fp", at, "", true, {}});
  }
  ASSERT_TRUE(ledger.remember(c));
  SignedGrant g = c.object;
  g.decisions.clear();
  EXPECT_EQ(ledger.restore(g), 2u);
  std::set<std::pair<std::string, UnixSeconds>> kept;
  for (const auto& d : g.decisions) kept.emplace(d.signer, d.at);
  EXPECT_EQ(kept,
            (std::set<std::pair<std::string, UnixSeconds>>{{"carol", 1800000030}, {"dave", 1800000020}}));
}

TEST(DecisionLedger, ForgetsRequestsThatCanNoLongerTakeEffect) {
  const UnixSeconds now = now_s();
  DecisionLedger ledger;
  SignedGrant revoked = approved(now);
  add_decision(revoked, people().carol, DecisionKind::kRevoke, now - 10);
  GrantMemo memo;
  memo.build(people().yaml(), "t", {text_of(revoked)}, now, nullptr, &ledger);
  ASSERT_EQ(ledger.size(), 1u);
  ledger.prune(now + 3600);
  EXPECT_EQ(ledger.size(), 1u);
  ledger.prune(grant_horizon(revoked) + 1);
  EXPECT_EQ(ledger.size(), 0u);
}

struct Restores {
  int restored = 0;
  void reloaded(bool, int64_t) {}
  void grants(size_t, size_t) {}
  void source(bool, int64_t, int64_t, int64_t) {}
  void decision_restored() { ++restored; }
};

// The whole reader: a directory store, a requester who rewrites their own grant file, a restart.
TEST(DecisionLedger, TheReloaderKeepsARevocationTheStoreLostAcrossARestart) {
  sshring::testing::TempDir dir;
  const std::string store = dir.file("grants");
  const std::string policy_path = dir.file("policy.yaml");
  sshring::testing::write_file(policy_path, people().yaml(store));
  const UnixSeconds now = now_s();
  DirGrantStore gs(store);
  const SignedGrant before = approved(now);
  gs.add(before);
  const auto client = *IpAddr::parse("10.9.0.7");
  const auto dst = *IpAddr::parse("10.1.0.1");
  auto tag_with = [&](ReloaderOptions o) {
    PolicyCache cache;
    o.policy_path = policy_path;
    o.handle_sighup = false;
    o.watch = false;
    Reloader rl(cache, std::move(o));
    EXPECT_TRUE(rl.reload());
    return cache.current()->classify_flow(client, dst, 22, now).tag;
  };
  Restores seen;
  ReloaderOptions with;
  with.ledger_path = decision_ledger_path(dir.file("cache"));
  with.observer = observe(&seen);
  EXPECT_EQ(tag_with(with), FlowTag::kBypassApproved);

  ASSERT_TRUE(gs.update(before.id(), [&](SignedGrant& g) {
    add_decision(g, people().carol, DecisionKind::kRevoke, now - 5, "incident over");
  }));
  EXPECT_EQ(tag_with(with), FlowTag::kBypassExpired);
  // The requester writes back the grant as it was before the revoke.
  ASSERT_TRUE(gs.update(before.id(), [&](SignedGrant& g) { g = before; }));
  EXPECT_EQ(tag_with(ReloaderOptions{}), FlowTag::kBypassApproved);  // the attack, on a reader without it
  EXPECT_EQ(tag_with(with), FlowTag::kBypassExpired);                // a new process: from the file
  EXPECT_EQ(seen.restored, 1);
}

}  // namespace
}  // namespace sshring::policy
