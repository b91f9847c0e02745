// The embedded grant store: durability layout, revoke and sweep, concurrent writers in several
// processes, writers killed mid-write; and the opt_out checks behind `grant add`.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "common/error.h"
#include "policy/grant_store.h"
#include "policy/parser.h"
#include "tests/policy/test_util.h"
#include "tests/support/process.h"

namespace sshring::policy {
namespace {

Grant make(std::string id, UnixSeconds expires) {
  Grant g;
  g.id = std::move(id);
  g.who = "ci-bot";
  g.from = *Cidr::parse("10.2.3.0/24");
  g.to = *Cidr::parse("10.1.5.7");
  g.ports = *PortSet::parse("22,2222");
  g.rule = "ci-direct";
  g.reason = "deploy \"quoted\" reason";
  g.created = expires - 3600;
  g.expires = expires;
  return g;
}

TEST(GrantStore, AddLoadRevokeSweep) {
  sshring::testing::TempDir dir;
  DirGrantStore store(dir.file("grants/nested"));
  EXPECT_TRUE(store.load().empty());
  Grant a = make(new_grant_id(), 1000);
  Grant b = make(new_grant_id(), 5000);
  store.add(a);
  store.add(b);
  EXPECT_THROW(store.add(a), common::UsageError);
  auto all = store.load();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_TRUE(all[0] == a || all[0] == b);
  EXPECT_EQ(grant_from_json(grant_to_json(a)), a);

  auto r = store.revoke(b.id, "alice", "done early", 2000);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->effective_expiry(), 2000);
  EXPECT_THROW(store.revoke(b.id, "alice", "again", 2001), common::UsageError);
  EXPECT_FALSE(store.revoke("g-000000000000", "alice", "x", 1));
  EXPECT_FALSE(store.revoke("../../etc/passwd", "alice", "x", 1));

  // At 1500 only a has expired (b is revoked: its revoke record already exists).
  auto expired = store.sweep(1500, 100000);
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0].id, a.id);
  EXPECT_TRUE(store.sweep(1600, 100000).empty());  // recorded once
  // Past retention both are pruned.
  store.sweep(200000, 100000);
  EXPECT_TRUE(store.load().empty());
}

TEST(GrantStore, ReadersIgnoreTornAndForeignFiles) {
  sshring::testing::TempDir dir;
  DirGrantStore store(dir.path());
  store.add(make("g-aaaaaaaaaaaa", 100));
  sshring::testing::write_file(dir.file(".g-bbbbbbbbbbbb.tmp"), "{\"id\": \"g-bbbb");  // died mid-write
  sshring::testing::write_file(dir.file("g-cccccccccccc.grant"), "{not json");         // corrupted by hand
  sshring::testing::write_file(dir.file("README"), "hello");
  auto all = store.load();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].id, "g-aaaaaaaaaaaa");
  store.add(make("g-dddddddddddd", 100));  // the next writer clears the stale temp file
  EXPECT_FALSE(std::filesystem::exists(dir.file(".g-bbbbbbbbbbbb.tmp")));
}

TEST(GrantStore, ConcurrentWritersInSeveralProcessesLoseNothing) {
  sshring::testing::TempDir dir;
  const int kProcs = 6, kEach = 25;
  std::vector<pid_t> kids;
  for (int p = 0; p < kProcs; ++p) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      try {
        DirGrantStore store(dir.path());
        for (int i = 0; i < kEach; ++i) {
          char id[16];
          std::snprintf(id, sizeof id, "g-%02x%010x", p, i);
          store.add(make(id, 100 + i));
          if (store.load().size() < static_cast<size_t>(i + 1)) _exit(3);  // never see fewer than we wrote
        }
        _exit(0);
      } catch (...) {
        _exit(2);
      }
    }
    kids.push_back(pid);
  }
  for (pid_t pid : kids) {
    int st = 0;
    ASSERT_EQ(waitpid(pid, &st, 0), pid);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  }
  auto all = DirGrantStore(dir.path()).load();
  EXPECT_EQ(all.size(), static_cast<size_t>(kProcs * kEach));
  std::set<std::string> ids;
  for (const auto& g : all) ids.insert(g.id);
  EXPECT_EQ(ids.size(), all.size());
}

TEST(GrantStore, WriterKilledMidWriteLeavesAReadableStore) {
  sshring::testing::TempDir dir;
  DirGrantStore(dir.path()).add(make("g-000000000001", 100));
  for (int round = 0; round < 15; ++round) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      DirGrantStore store(dir.path());
      for (uint64_t i = 0;; ++i) {
        Grant g = make(new_grant_id(), 100);
        g.reason = std::string(4000, 'r');  // bigger writes widen the window
        store.add(g);
        store.revoke(g.id, "x", "y", 50);
      }
    }
    usleep(2000 + 3000 * static_cast<useconds_t>(round % 5));
    kill(pid, SIGKILL);
    int st = 0;
    waitpid(pid, &st, 0);
    DirGrantStore store(dir.path());
    auto all = store.load();  // never throws, never returns a torn grant
    ASSERT_GE(all.size(), 1u);
    for (const auto& g : all) {
      EXPECT_EQ(g.id.size(), 14u);
      EXPECT_TRUE(g.reason.empty() || g.reason.size() == 4000 || g.reason == "deploy \"quoted\" reason");
    }
    // Every file that is visible parses: count files vs grants.
    size_t files = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
      if (e.path().extension() == ".grant") ++files;
    }
    EXPECT_EQ(files, all.size());
  }
}

TEST(GrantRules, AllowsExactlyWhatARuleAllows) {
  Policy p = load_policy_file(testing::example_policy_path());
  const UnixSeconds now = 1800000000;  // 2027-01-15
  auto req = [](std::string who, const char* from, const char* to, const char* ports, int64_t ttl,
                std::string reason = "deploy", std::string approver = "") {
    GrantRequest r;
    r.who = std::move(who);
    r.from = *Cidr::parse(from);
    r.to = *Cidr::parse(to);
    r.ports = *PortSet::parse(ports);
    r.ttl_seconds = ttl;
    r.reason = std::move(reason);
    r.approver = std::move(approver);
    return r;
  };
  std::string why;
  const OptOutRule* r =
      find_allowing_rule(p, req("ci-bot", "10.2.3.0/24", "10.1.5.7", "22", 8 * 3600), now, &why);
  ASSERT_NE(r, nullptr) << why;
  EXPECT_EQ(r->id, "ci-direct");
  r = find_allowing_rule(p, req("alice", "10.9.1.1", "10.1.2.3", "22", 3600, "outage", "bob"), now, &why);
  ASSERT_NE(r, nullptr) << why;
  EXPECT_EQ(r->id, "break-glass");

  struct Case {
    GrantRequest r;
    UnixSeconds now;
    const char* expected;
  } cases[] = {
      {req("ci-bot", "10.2.3.0/24", "10.1.5.7", "22", 8 * 3600 + 1), now,
       "rule ci-direct: ttl 8h1s exceeds its max_ttl 8h"},
      {req("ci-bot", "10.2.0.0/15", "10.1.5.7", "22", 60), now,
       "rule ci-direct: from 10.2.0.0/15 is not within its sources"},
      {req("ci-bot", "10.2.3.4", "10.1.6.0/24", "22", 60), now,
       "rule ci-direct: to 10.1.6.0/24 is not within its targets"},
      {req("ci-bot", "10.2.3.4", "10.1.5.7", "22,2222", 60), now,
       "rule ci-direct: ports 22,2222 are not within its ports 22"},
      {req("ci-bot", "10.2.3.4", "10.1.5.7", "22", 60, ""), now, "rule ci-direct: it requires --reason"},
      {req("ci-bot", "10.2.3.4", "10.1.5.7", "22", 60), 1814313600,
       "rule ci-direct: the rule expired at 2027-06-30T00:00:00Z"},
      {req("ci-bot", "10.2.3.4", "10.1.5.7", "22", 7200), 1814313600 - 3600,
       "rule ci-direct: the grant would outlive the rule, which expires at 2027-06-30T00:00:00Z"},
      {req("mallory", "10.2.3.4", "10.1.5.7", "22", 60), now,
       "rule ci-direct: mallory is not among its principals or roles"},
      {req("alice", "10.9.1.1", "10.1.2.3", "22", 3600, "outage"), now,
       "rule break-glass: it requires --approver"},
      {req("alice", "10.9.1.1", "10.1.2.3", "22", 3600, "outage", "alice"), now,
       "rule break-glass: the approver must be someone other than alice"},
  };
  for (const auto& c : cases) {
    why.clear();
    EXPECT_EQ(find_allowing_rule(p, c.r, c.now, &why), nullptr) << c.expected;
    EXPECT_NE(why.find(c.expected), std::string::npos) << "got: " << why << "\nexpected: " << c.expected;
  }
}

}  // namespace
}  // namespace sshring::policy
