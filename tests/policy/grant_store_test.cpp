// The embedded grant store: durability layout, update and prune, hostile files (symlinks, FIFOs,
// oversize, unsafe directories), concurrent writers in several processes, writers killed mid-write;
// and the opt_out checks behind `grant request`.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
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

// Stores do not judge grants, so these objects need no valid signatures.
SignedGrant make(std::string id, UnixSeconds created) {
  SignedGrant g;
  GrantRequest& r = g.request;
  r.id = std::move(id);
  r.who = "ci-bot";
  r.requester = "ci-bot";
  r.from = *Cidr::parse("10.2.3.0/24");
  r.to = *Cidr::parse("10.1.5.7");
  r.ports = *PortSet::parse("22,2222");
  r.rule = "ci-direct";
  r.reason = "deploy \"quoted\" reason";
  r.created = created;
  r.ttl_seconds = 3600;
  g.signature = "-----BEGIN SSH SIGNATURE-----\nnot checked here\n-----END SSH SIGNATURE-----\n";
  return g;
}

TEST(GrantStore, AddLoadUpdatePrune) {
  sshring::testing::TempDir dir;
  DirGrantStore store(dir.file("grants/nested"));
  EXPECT_TRUE(store.load().empty());
  SignedGrant a = make(new_grant_id(), 1000);
  SignedGrant b = make(new_grant_id(), 5000);
  store.add(a);
  store.add(b);
  EXPECT_THROW(store.add(a), common::UsageError);
  auto all = store.load();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_TRUE(all[0] == a || all[0] == b);

  auto r = store.update(b.id(), [](SignedGrant& g) {
    g.decisions.push_back(GrantDecision{DecisionKind::kRevoke, "alice", 6000, "done early", "u", "h", "sig"});
  });
  ASSERT_TRUE(r);
  ASSERT_EQ(r->decisions.size(), 1u);
  EXPECT_EQ(store.load()[all[0] == b ? 0 : 1].decisions.size(), 1u);
  // A change that throws writes nothing.
  EXPECT_THROW(store.update(b.id(),
                            [](SignedGrant& g) {
                              g.decisions.clear();
                              throw common::UsageError("refused");
                            }),
               common::UsageError);
  for (const auto& g : store.load()) {
    if (g.id() == b.id()) {
      EXPECT_EQ(g.decisions.size(), 1u);
    }
  }
  EXPECT_FALSE(store.update("g-000000000000", [](SignedGrant&) {}));
  EXPECT_FALSE(store.update("../../etc/passwd", [](SignedGrant&) {}));

  // Pruned only once nothing in them can matter: latest time + ttl + the longest request_ttl.
  EXPECT_EQ(store.prune(1000 + 3600 + kMaxRequestTtlSeconds + 100, 100), 0u);
  EXPECT_EQ(store.prune(1000 + 3600 + kMaxRequestTtlSeconds + 101, 100), 1u);
  ASSERT_EQ(store.load().size(), 1u);
  EXPECT_EQ(store.prune(6000 + 3600 + kMaxRequestTtlSeconds + 101, 100), 1u);
  EXPECT_TRUE(store.load().empty());
}

TEST(GrantStore, ReadersIgnoreTornForeignAndHostileFiles) {
  sshring::testing::TempDir dir;
  DirGrantStore store(dir.path());
  store.add(make("g-aaaaaaaaaaaa", 100));
  sshring::testing::write_file(dir.file(".tmp-bbbbbb"), "{\"id\": \"g-bbbb");   // died mid-write
  sshring::testing::write_file(dir.file("g-cccccccccccc.grant"), "{not json");  // corrupted by hand
  sshring::testing::write_file(dir.file("README"), "hello");
  sshring::testing::write_file(dir.file("secret"), signed_grant_to_json(make("g-eeeeeeeeeeee", 1)).dump());
  ASSERT_EQ(::symlink(dir.file("secret").c_str(), dir.file("g-eeeeeeeeeeee.grant").c_str()), 0);
  ASSERT_EQ(::mkfifo(dir.file("g-ffffffffffff.grant").c_str(), 0600), 0);  // would block a blocking open
  sshring::testing::write_file(dir.file("g-999999999999.grant"), std::string(kMaxGrantFileBytes + 1, ' '));
  // A valid grant under another grant's name is not that grant.
  sshring::testing::write_file(dir.file("g-888888888888.grant"),
                               signed_grant_to_json(make("g-777777777777", 1)).dump());
  auto all = store.load();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].id(), "g-aaaaaaaaaaaa");
  store.add(make("g-dddddddddddd", 100));  // the next writer clears the stale temp file
  EXPECT_FALSE(std::filesystem::exists(dir.file(".tmp-bbbbbb")));
  // Updating through a symlinked grant file finds nothing and writes nothing through it.
  EXPECT_FALSE(store.update("g-eeeeeeeeeeee", [](SignedGrant&) {}));
  EXPECT_THROW(store.add(make("g-eeeeeeeeeeee", 1)), common::UsageError);  // the name is taken
}

// A flood of files that are not grants (anyone who can write the store can make them) neither
// hides the real grants nor pushes the store over its grant limit.
TEST(GrantStore, FilesThatAreNotGrantsDoNotCountTowardTheLimit) {
  sshring::testing::TempDir dir;
  const std::string store = dir.file("grants");
  DirGrantStore gs(store);
  const SignedGrant g = make("g-00000000a11e", 1800000000);
  gs.add(g);
  for (size_t i = 0; i <= kMaxGrants; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "/j%07zu.grant", i);
    int fd = ::open((store + name).c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    ASSERT_GE(fd, 0) << name;
    ::close(fd);
  }
  auto loaded = gs.load();
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(loaded[0], g);
}

TEST(GrantStore, PlantedSymlinksAreNeverFollowed) {
  sshring::testing::TempDir dir;
  const std::string victim = dir.file("victim");
  sshring::testing::write_file(victim, "precious\n");
  const std::string store_dir = dir.file("grants");
  DirGrantStore store(store_dir);
  // The old predictable temp names and a symlink lock.
  for (const char* n : {".g-aaaaaaaaaaaa.tmp", ".tmp-XXXXXX", ".tmp-000000"})
    ASSERT_EQ(::symlink(victim.c_str(), (store_dir + "/" + n).c_str()), 0);
  store.add(make("g-aaaaaaaaaaaa", 100));
  EXPECT_EQ(sshring::testing::read_file(victim), "precious\n");
  ASSERT_EQ(::unlink((store_dir + "/.lock").c_str()), 0);
  ASSERT_EQ(::symlink(victim.c_str(), (store_dir + "/.lock").c_str()), 0);
  EXPECT_THROW(store.add(make("g-bbbbbbbbbbbb", 100)), common::SystemError);
  EXPECT_EQ(sshring::testing::read_file(victim), "precious\n");
  ::unlink((store_dir + "/.lock").c_str());
  ASSERT_EQ(::mkfifo((store_dir + "/.lock").c_str(), 0600), 0);  // a FIFO lock: refused, no hang
  EXPECT_THROW(store.add(make("g-bbbbbbbbbbbb", 100)), common::UsageError);
}

TEST(GrantStore, UnsafeDirectoriesAreRefused) {
  sshring::testing::TempDir dir;
  const std::string d = dir.file("grants");
  DirGrantStore ok(d);
  ASSERT_EQ(::chmod(d.c_str(), 0770), 0);  // group-writable by its owner group is fine
  EXPECT_NO_THROW(DirGrantStore(d, false).load());
  ASSERT_EQ(::chmod(d.c_str(), 0777), 0);
  EXPECT_THROW(DirGrantStore(d, false), common::UsageError);
  EXPECT_THROW(ok.load(), common::UsageError);
  ASSERT_EQ(::chmod(d.c_str(), 0750), 0);
  ASSERT_EQ(::symlink(d.c_str(), dir.file("link").c_str()), 0);
  EXPECT_THROW(DirGrantStore(dir.file("link"), false), common::UsageError);
  if (::geteuid() == 0) {
    ASSERT_EQ(::chown(d.c_str(), 12345, 12345), 0);
    EXPECT_THROW(DirGrantStore(d, false), common::UsageError);
  }
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
  for (const auto& g : all) ids.insert(g.id());
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
        SignedGrant g = make(new_grant_id(), 100);
        g.request.reason = std::string(1000, 'r');  // bigger writes widen the window
        store.add(g);
        store.update(g.id(), [](SignedGrant& s) { s.decisions.push_back(GrantDecision{}); });
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
      EXPECT_EQ(g.id().size(), 14u);
      EXPECT_TRUE(g.request.reason.size() == 1000 || g.request.reason == "deploy \"quoted\" reason");
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
  const UnixSeconds now = 1798761600;  // 2027-01-01
  auto req = [](std::string who, const char* from, const char* to, const char* ports, int64_t ttl,
                std::string reason = "deploy", std::string requester = "") {
    GrantRequest r;
    r.requester = requester.empty() ? who : requester;
    r.who = std::move(who);
    r.from = *Cidr::parse(from);
    r.to = *Cidr::parse(to);
    r.ports = *PortSet::parse(ports);
    r.ttl_seconds = ttl;
    r.reason = std::move(reason);
    return r;
  };
  std::string why;
  const OptOutRule* r =
      find_allowing_rule(p, req("ci-bot", "10.2.3.0/24", "10.1.5.7", "22", 8 * 3600), now, &why);
  ASSERT_NE(r, nullptr) << why;
  EXPECT_EQ(r->id, "ci-direct");
  r = find_allowing_rule(p, req("alice", "10.9.1.1", "10.1.2.3", "22", 3600, "outage"), now, &why);
  ASSERT_NE(r, nullptr) << why;
  EXPECT_EQ(r->id, "prod-direct");
  EXPECT_EQ(r->approvals_count, 2u);
  r = find_allowing_rule(p, req("alice", "10.8.1.1", "10.1.2.3", "22", 3600, "relay down"), now, &why);
  ASSERT_NE(r, nullptr) << why;
  EXPECT_TRUE(r->break_glass);

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
      {req("ci-bot", "10.2.3.4", "10.1.5.7", "22", 60), 1802649600,
       "rule ci-direct: the rule expired at 2027-02-15T00:00:00Z"},
      {req("ci-bot", "10.2.3.4", "10.1.5.7", "22", 7200), 1802649600 - 3600,
       "rule ci-direct: the grant would outlive the rule, which expires at 2027-02-15T00:00:00Z"},
      {req("mallory", "10.2.3.4", "10.1.5.7", "22", 60), now,
       "rule ci-direct: mallory is not among its principals or roles"},
      {req("ci-bot", "10.2.3.4", "10.1.5.7", "22", 60, "deploy", "alice"), now,
       "rule ci-direct: alice may not request for ci-bot"},
      {req("alice", "10.8.1.1", "10.1.2.3", "22", 7200, "outage"), now,
       "rule break-glass: ttl 2h exceeds its max_ttl 1h"},
  };
  for (const auto& c : cases) {
    why.clear();
    EXPECT_EQ(find_allowing_rule(p, c.r, c.now, &why), nullptr) << c.expected;
    EXPECT_NE(why.find(c.expected), std::string::npos) << "got: " << why << "\nexpected: " << c.expected;
  }
}

}  // namespace
}  // namespace sshring::policy
