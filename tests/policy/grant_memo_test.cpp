// The reloader's memo of grant checks (GrantMemo), attacked and held to one rule: what it returns is
// what checking every grant again would return. A differential test walks the clock through every
// time-dependent outcome (future-dated requests, pending windows, expiry, a clock stepped back) while
// grants are added, replaced by forged copies and removed; targeted tests check that an unchanged grant
// is not checked again, that a policy change re-checks everything without verifying a signature
// twice, and that an unreadable text is reported once.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "policy/grant_memo.h"
#include "policy/parser.h"
#include "tests/policy/grant_fixture.h"

namespace sshring::policy {
namespace {

using testing::add_decision;
using testing::Person;
using testing::request_for;
using testing::signed_by;

constexpr UnixSeconds kT = 1800000000;

struct People {
  Person alice = testing::person("alice"), carol = testing::person("carol"), dave = testing::person("dave"),
         mallory = testing::person("mallory");  // not in the policy
  std::string yaml(const char* max_ttl = "4h") const {
    auto pr = [](const Person& p, const char* role) {
      return "  - {name: " + p.name + ", roles: [" + role + "], keys: [\"" + p.key_line() + "\"]}\n";
    };
    return "version: 1\nrelays: [10.0.0.0/28]\nhosts: [{name: prod, cidrs: [10.1.0.0/16]}]\nprincipals:\n" +
           pr(alice, "sre") + pr(carol, "security") + pr(dave, "security") +
           "roles:\n  - {name: sre, targets: [{cidrs: [10.1.0.0/16]}]}\n"
           "  - {name: security, targets: [{cidrs: [10.1.0.0/16]}]}\n"
           "opt_out:\n"
           "  - {id: two, who: {roles: [sre]}, from: [10.9.0.0/16], to: {cidrs: [10.1.0.0/16]}, max_ttl: " +
           max_ttl +
           ",\n     approvals: {count: 2, roles: [security]}, request_ttl: 1h, expires: "
           "2099-01-01T00:00:00Z}\n"
           "  - {id: direct, who: {roles: [sre]}, from: [10.8.0.0/16], to: {cidrs: [10.1.0.0/16]}, "
           "max_ttl: " +
           max_ttl + ", expires: 2099-01-01T00:00:00Z}\n";
  }
};

const People& people() {
  static const People p;
  return p;
}

GrantText text_of(const SignedGrant& g) {
  return std::make_shared<const std::string>(signed_grant_to_json(g).dump());
}

// A grant of one of several shapes whose check depends on the time in a different way.
SignedGrant shape(int kind, int i, UnixSeconds created) {
  const People& p = people();
  char id[16];
  std::snprintf(id, sizeof id, "g-%012x", i);
  switch (kind % 6) {
    case 0:  // direct, active for an hour from `created`
      return signed_by(p.alice, request_for("alice", "direct", "10.8.0.0/24", "10.1.0.1/32", 3600, created),
                       id);
    case 1: {  // two approvals: pending until 1 h after `created`, unless approved
      return signed_by(p.alice, request_for("alice", "two", "10.9.0.0/24", "10.1.0.2/32", 1800, created), id);
    }
    case 2: {  // approved by both, 10 and 20 minutes in
      auto g =
          signed_by(p.alice, request_for("alice", "two", "10.9.1.0/24", "10.1.0.3/32", 1800, created), id);
      add_decision(g, p.carol, DecisionKind::kApprove, created + 600);
      add_decision(g, p.dave, DecisionKind::kApprove, created + 1200);
      return g;
    }
    case 3: {  // revoked 15 minutes in
      auto g =
          signed_by(p.alice, request_for("alice", "direct", "10.8.1.0/24", "10.1.0.4/32", 3600, created), id);
      add_decision(g, p.alice, DecisionKind::kRevoke, created + 900);
      return g;
    }
    case 4:  // signed by a key the policy does not list
      return signed_by(p.mallory, request_for("alice", "direct", "10.8.2.0/24", "10.1.0.5/32", 600, created),
                       id);
    default: {  // approval dated 30 minutes after the request: future_time until then
      auto g =
          signed_by(p.alice, request_for("alice", "two", "10.9.2.0/24", "10.1.0.6/32", 1800, created), id);
      add_decision(g, p.carol, DecisionKind::kApprove, created + 1800);
      add_decision(g, p.dave, DecisionKind::kApprove, created + 1900);
      return g;
    }
  }
}

// What the memo must agree with: every text parsed and checked afresh.
std::vector<CheckedGrant> fresh(const Policy& policy, const std::vector<GrantText>& texts, UnixSeconds now) {
  std::vector<SignedGrant> parsed;
  for (const auto& t : texts) {
    try {
      parsed.push_back(signed_grant_from_json(nlohmann::json::parse(*t)));
    } catch (const std::exception&) {
    }
  }
  std::vector<const SignedGrant*> ptrs;
  for (const auto& g : parsed) ptrs.push_back(&g);
  return check_grants(policy, ptrs, now, nullptr);
}

std::string describe(const CheckedGrant& c) {
  return c.object.id() + " " + std::string(status_name(c.status)) + " " + c.reject_reason +
         " honoured=" + std::to_string(c.honoured()) +
         " expires=" + std::to_string(c.terms.effective_expiry()) + " (" + c.detail + ")";
}

TEST(GrantMemo, AgreesWithCheckingEverythingAgainAsTimePassesAndGrantsChange) {
  const std::string yaml = people().yaml();
  const Policy policy = parse_policy(yaml, "memo-test.yaml");
  std::mt19937 rng(7);
  std::vector<GrantText> texts;
  for (int i = 0; i < 60; ++i) texts.push_back(text_of(shape(i, i, kT + (i % 7) * 300 - 1200)));
  GrantMemo memo;
  SignatureCache sigs;
  // Forward through every outcome's due time (minute steps over 3 h), with one clock step back.
  UnixSeconds now = kT - 600;
  size_t reused = 0, builds = 0;
  for (int step = 0; step < 200; ++step) {
    now += step == 120 ? -2400 : 60;
    switch (rng() % 4) {
      case 0:  // a new grant
        texts.push_back(text_of(shape(static_cast<int>(rng()), 1000 + step, now - 300)));
        break;
      case 1: {  // a stored grant replaced by a forged copy: same content but a widened source
        auto& t = texts[rng() % texts.size()];
        auto j = nlohmann::json::parse(*t);
        j["request"]["from"] = "10.0.0.0/8";
        t = std::make_shared<const std::string>(j.dump());
        break;
      }
      case 2:  // one removed
        texts.erase(texts.begin() + static_cast<std::ptrdiff_t>(rng() % texts.size()));
        break;
      default:  // nothing changed, only time
        break;
    }
    auto r = memo.build(yaml, "memo-test.yaml", texts, now, &sigs);
    auto want = fresh(policy, texts, now);
    ASSERT_EQ(r.checked.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_EQ(describe(*r.checked[i]), describe(want[i])) << "step " << step << " now " << now;
      ASSERT_EQ(r.checked[i]->terms.from.to_string(), want[i].terms.from.to_string());
    }
    reused += r.reused;
    ++builds;
  }
  EXPECT_GT(reused, builds * 30);  // and it did reuse: most grants are unchanged in most steps
}

TEST(GrantMemo, ChecksOnlyWhatChangedAndNeverVerifiesASignatureTwice) {
  std::vector<GrantText> texts;
  for (int i = 0; i < 20; ++i) texts.push_back(text_of(shape(i % 2 ? 0 : 2, i, kT - 3000)));
  GrantMemo memo;
  SignatureCache sigs;
  auto r = memo.build(people().yaml(), "p", texts, kT, &sigs);
  EXPECT_EQ(r.rechecked, 20u);
  EXPECT_EQ(r.reused, 0u);
  const size_t verified = sigs.misses();

  texts.push_back(text_of(shape(0, 99, kT - 3000)));
  r = memo.build(people().yaml(), "p", texts, kT + 1, &sigs);
  EXPECT_EQ(r.rechecked, 1u);
  EXPECT_EQ(r.reused, 20u);
  EXPECT_EQ(sigs.misses(), verified + 1);

  // The same content in a new object is not trusted on sight: it is checked again (the signature
  // itself comes from the cache).
  texts[3] = std::make_shared<const std::string>(*texts[3]);
  r = memo.build(people().yaml(), "p", texts, kT + 2, &sigs);
  EXPECT_EQ(r.rechecked, 1u);
  EXPECT_EQ(sigs.misses(), verified + 1);

  // Another policy (a shorter max_ttl): every grant checked again, against it, verifying nothing again.
  r = memo.build(people().yaml("20m"), "p", texts, kT + 3, &sigs);
  EXPECT_EQ(r.rechecked, texts.size());
  EXPECT_EQ(sigs.misses(), verified + 1);
  for (const auto& c : r.checked) {
    EXPECT_EQ(c->status, GrantStatus::kRejected) << describe(*c);
    EXPECT_EQ(c->reject_reason, "outside_rule");
  }
  // Same text under another origin (a re-push) is another policy too.
  r = memo.build(people().yaml("20m"), "p2", texts, kT + 4, &sigs);
  EXPECT_EQ(r.rechecked, texts.size());
}

TEST(GrantMemo, ReportsAnUnreadableTextOnceAndForgetsWhatIsGone) {
  std::vector<GrantText> texts = {text_of(shape(0, 1, kT - 60)),
                                  std::make_shared<const std::string>("{nope")};
  GrantMemo memo;
  auto r = memo.build(people().yaml(), "p", texts, kT, nullptr);
  EXPECT_EQ(r.checked.size(), 1u);
  EXPECT_EQ(r.unreadable.size(), 1u);
  r = memo.build(people().yaml(), "p", texts, kT + 1, nullptr);
  EXPECT_TRUE(r.unreadable.empty());
  EXPECT_EQ(memo.size(), 2u);
  texts.pop_back();
  r = memo.build(people().yaml(), "p", texts, kT + 2, nullptr);
  EXPECT_EQ(memo.size(), 1u);
}

TEST(GrantMemo, ABadPolicyChangesNothing) {
  std::vector<GrantText> texts = {text_of(shape(0, 1, kT - 60))};
  GrantMemo memo;
  auto r = memo.build(people().yaml(), "p", texts, kT, nullptr);
  EXPECT_THROW(memo.build("version: 1\nroles: [", "p", texts, kT + 1, nullptr), std::exception);
  r = memo.build(people().yaml(), "p", texts, kT + 2, nullptr);
  EXPECT_EQ(r.reused, 1u);
  EXPECT_EQ(r.checked[0]->status, GrantStatus::kActive);
}

}  // namespace
}  // namespace sshring::policy
