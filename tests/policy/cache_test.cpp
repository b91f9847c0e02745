// Publication and reload: readers see new snapshots between events, an invalid file keeps the last
// good snapshot and counts the failure, inotify (policy file and grant store) and SIGHUP reload.
#include <signal.h>

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "policy/cache.h"
#include "policy/grant_store.h"
#include "tests/policy/grant_fixture.h"
#include "tests/policy/test_util.h"
#include "tests/support/process.h"

namespace sshring::policy {
namespace {

using namespace std::chrono_literals;

// Grants are honoured only when signed by a key the policy lists: ci-bot signs them.
const testing::Person& ci_bot() {
  static const testing::Person p = testing::person("ci-bot");
  return p;
}

SignedGrant ci_grant(const std::string& id, UnixSeconds created, int64_t ttl) {
  return testing::signed_by(
      ci_bot(), testing::request_for("ci-bot", "ci-direct", "10.2.0.0/16", "10.1.5.0/24", ttl, created), id);
}

std::string policy_text(const std::string& store, const std::string& relay) {
  return "version: 1\ngrant_store: " + store + "\nrelays: [" + relay +
         "]\nroles: [{name: ci, targets: [{cidrs: [10.1.0.0/16]}]}]\n"
         "principals: [{name: ci-bot, roles: [ci], keys: [\"" +
         ci_bot().key_line() +
         "\"]}]\n"
         "opt_out:\n  - {id: ci-direct, who: {roles: [ci]}, from: [10.2.0.0/16], to: {cidrs: [10.1.5.0/24]}, "
         "max_ttl: 8h, expires: 2099-01-01T00:00:00Z}\n";
}

template <class F>
bool eventually(F&& f, std::chrono::milliseconds limit = 5s) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (f()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return f();
}

TEST(PolicyCache, ReadersRefreshOnlyWhenTheGenerationMoves) {
  PolicyCache cache;
  SnapshotReader reader(cache);
  EXPECT_EQ(reader.get(), nullptr);
  auto a = Snapshot::build(std::make_shared<Policy>(), {});
  cache.publish(a);
  EXPECT_TRUE(reader.refresh());
  EXPECT_EQ(reader.get(), a.get());
  EXPECT_FALSE(reader.refresh());
  auto held = reader.shared();
  cache.publish(Snapshot::build(std::make_shared<Policy>(), {}));
  EXPECT_TRUE(reader.refresh());
  EXPECT_NE(reader.get(), a.get());
  EXPECT_EQ(held.get(), a.get());  // an old snapshot stays valid while held
}

TEST(PolicyCache, ConcurrentReadersNeverSeeATornSnapshot) {
  PolicyCache cache;
  cache.publish(Snapshot::build(std::make_shared<Policy>(), {}));
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> refreshes{0};
  std::vector<std::thread> readers;
  for (int i = 0; i < 3; ++i) {
    readers.emplace_back([&] {
      SnapshotReader r(cache);
      auto src = *IpAddr::parse("10.0.0.1");
      while (!stop.load()) {
        if (r.refresh()) refreshes++;
        // Relay membership flips with each publish; either answer is fine, a crash is not.
        (void)r.get()->classify_flow(src, src, 22, 0);
      }
    });
  }
  uint64_t published = 0;
  auto end = std::chrono::steady_clock::now() + 3s;
  while ((published < 300 || refreshes.load() < 100) && std::chrono::steady_clock::now() < end) {
    auto p = std::make_shared<Policy>();
    if (published % 2) p->relays.push_back(*Cidr::parse("10.0.0.0/8"));
    cache.publish(Snapshot::build(p, {}));
    ++published;
    if (published % 50 == 0) std::this_thread::yield();
  }
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_GE(refreshes.load(), 100u);
  EXPECT_EQ(cache.generation(), published + 1);
}

TEST(Reloader, ReloadsOnFileChangeKeepsLastGoodAndWatchesGrants) {
  sshring::testing::TempDir dir;
  const std::string store = dir.file("grants");
  const std::string path = dir.file("policy.yaml");
  sshring::testing::write_file(path, policy_text(store, "10.0.0.0/28"));
  PolicyCache cache;
  ReloaderOptions o;
  o.policy_path = path;
  o.handle_sighup = false;
  o.debounce_ms = 20;
  Reloader rl(cache, o);
  rl.reload_or_throw();  // the store does not exist yet: no grants, a warning
  ASSERT_TRUE(cache.current());
  const auto src = *IpAddr::parse("10.0.0.20"), dst = *IpAddr::parse("10.1.5.7");
  EXPECT_EQ(cache.current()->classify_flow(src, dst, 22, 0).tag, FlowTag::kBypassUnapproved);
  rl.start();

  // Editors rename a new file over the old one.
  sshring::testing::write_file(path + ".new", policy_text(store, "10.0.0.0/24"));
  ASSERT_EQ(::rename((path + ".new").c_str(), path.c_str()), 0);
  ASSERT_TRUE(eventually([&] { return cache.current()->is_relay(src); }));
  // The reloader counts a reload after it publishes the snapshot: under load the count can trail it.
  EXPECT_TRUE(eventually([&] { return rl.reloads_ok() == 2u; })) << rl.reloads_ok();

  // A broken file: the last good snapshot stays, the failure is counted.
  const uint64_t gen = cache.generation();
  sshring::testing::write_file(path, "version: 1\nrelays: [10.0.0.0/99]\n");
  ASSERT_TRUE(eventually([&] { return rl.reloads_failed() == 1; }));
  EXPECT_EQ(cache.generation(), gen);
  EXPECT_TRUE(cache.current()->is_relay(src));

  // Fix it, then a grant lands in the store: both picked up without SIGHUP.
  sshring::testing::write_file(path, policy_text(store, "10.0.0.0/24"));
  ASSERT_TRUE(eventually([&] { return cache.generation() > gen; }));
  ASSERT_TRUE(eventually([&] { return rl.reloads_ok() == 3u; })) << rl.reloads_ok();
  const uint64_t before_store = rl.reloads_ok();
  DirGrantStore gs(store);
  // Creating the store reloads (the reloader watched its parent) and moves the watch onto it.
  ASSERT_TRUE(eventually([&] { return rl.reloads_ok() > before_store; }));
  const UnixSeconds t0 = ::time(nullptr);
  SignedGrant g = ci_grant("g-0123456789ab", t0, 3600);
  gs.add(g);
  const auto client = *IpAddr::parse("10.2.9.9");
  ASSERT_TRUE(
      eventually([&] { return cache.current()->classify_flow(client, dst, 22, t0 + 1).id == g.id(); }));
  EXPECT_EQ(cache.current()->classify_flow(client, dst, 22, t0 + 1).tag, FlowTag::kBypassApproved);
  // Expiry needs no reload: the same snapshot answers differently at the expiry second.
  EXPECT_EQ(cache.current()->classify_flow(client, dst, 22, t0 + 3599).tag, FlowTag::kBypassApproved);
  EXPECT_EQ(cache.current()->classify_flow(client, dst, 22, t0 + 3600).tag, FlowTag::kBypassExpired);
  rl.stop();
}

TEST(Reloader, SighupRequestsAReload) {
  sshring::testing::TempDir dir;
  const std::string path = dir.file("policy.yaml");
  sshring::testing::write_file(path, policy_text(dir.file("grants"), "10.0.0.0/28"));
  PolicyCache cache;
  ReloaderOptions o;
  o.policy_path = path;
  o.watch = false;  // only the signal can trigger it
  Reloader rl(cache, o);
  rl.reload_or_throw();
  rl.start();
  sshring::testing::write_file(path, policy_text(dir.file("grants"), "10.9.0.0/16"));
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(rl.reloads_ok(), 1u);
  ASSERT_EQ(::raise(SIGHUP), 0);
  ASSERT_TRUE(eventually([&] { return rl.reloads_ok() == 2; }));
  EXPECT_TRUE(cache.current()->is_relay(*IpAddr::parse("10.9.1.1")));
  rl.stop();
  std::string err;
  sshring::testing::write_file(path, "version: 7\n");
  EXPECT_FALSE(rl.reload(&err));
  EXPECT_NE(err.find("version: expected an integer from 1 to 1"), std::string::npos) << err;
}

// What a caller's metrics would record, through policy::observe (no metrics library involved).
// A grant store that cannot be read (here: made writable by others, which readers refuse; a flood
// of files does the same) must not hold back the policy: a rule removed from it takes effect.
TEST(Reloader, AnUnreadableGrantStoreDoesNotHoldBackThePolicy) {
  sshring::testing::TempDir dir;
  const std::string path = dir.file("policy.yaml");
  const std::string store = dir.file("grants");
  sshring::testing::write_file(path, policy_text(store, "10.0.0.0/28"));
  DirGrantStore gs(store);
  const UnixSeconds t0 = ::time(nullptr);
  gs.add(ci_grant("g-0000000000aa", t0 - 10, 3600));
  PolicyCache cache;
  ReloaderOptions o;
  o.policy_path = path;
  o.handle_sighup = false;
  o.watch = false;
  Reloader rl(cache, o);
  ASSERT_TRUE(rl.reload());
  const auto client = *IpAddr::parse("10.2.9.9");
  const auto dst = *IpAddr::parse("10.1.5.1");
  EXPECT_EQ(cache.current()->classify_flow(client, dst, 22, t0).tag, FlowTag::kBypassApproved);

  ASSERT_EQ(::chmod(store.c_str(), 0777), 0);
  // The policy changes (another relay range): it goes out with the grants last read.
  sshring::testing::write_file(path, policy_text(store, "10.0.0.0/24"));
  rl.reload();
  EXPECT_EQ(rl.reloads_failed(), 1u);
  EXPECT_NE(rl.last_error().find("grant store unreadable"), std::string::npos) << rl.last_error();
  EXPECT_TRUE(cache.current()->is_relay(*IpAddr::parse("10.0.0.200")));
  EXPECT_EQ(cache.current()->classify_flow(client, dst, 22, t0).tag, FlowTag::kBypassApproved);
  // The rule is removed: its grant stops matching although the store is still unreadable.
  std::string text = policy_text(store, "10.0.0.0/24");
  text = text.substr(0, text.find("opt_out:"));
  sshring::testing::write_file(path, text);
  rl.reload();
  EXPECT_EQ(rl.reloads_failed(), 2u);
  EXPECT_EQ(cache.current()->classify_flow(client, dst, 22, t0).tag, FlowTag::kBypassUnapproved);
  ASSERT_EQ(::chmod(store.c_str(), 0750), 0);
}

// A store flooded past its name limit cannot be listed, but a revoke written into a grant the reader
// already knew still counts: each known grant is read again by its own name.
TEST(Reloader, AFloodedStoreCannotHideARevoke) {
  sshring::testing::TempDir dir;
  const std::string path = dir.file("policy.yaml");
  const std::string store = dir.file("grants");
  sshring::testing::write_file(path, policy_text(store, "10.0.0.0/28"));
  DirGrantStore gs(store);
  const UnixSeconds t0 = ::time(nullptr);
  const SignedGrant g = ci_grant("g-0000000000ac", t0 - 10, 3600);
  gs.add(g);
  PolicyCache cache;
  ReloaderOptions o;
  o.policy_path = path;
  o.handle_sighup = false;
  o.watch = false;
  o.max_store_files = 20;
  Reloader rl(cache, o);
  ASSERT_TRUE(rl.reload());
  const auto client = *IpAddr::parse("10.2.9.9");
  const auto dst = *IpAddr::parse("10.1.5.1");
  ASSERT_EQ(cache.current()->classify_flow(client, dst, 22, t0).tag, FlowTag::kBypassApproved);
  for (int i = 0; i < 25; ++i)
    sshring::testing::write_file(store + "/junk" + std::to_string(i) + ".grant", "");
  ASSERT_TRUE(gs.update(g.id(), [&](SignedGrant& s) {
    testing::add_decision(s, ci_bot(), DecisionKind::kRevoke, t0 - 5, "done");
  }));
  rl.reload();
  EXPECT_NE(rl.last_error().find("holds more than 20"), std::string::npos) << rl.last_error();
  EXPECT_EQ(cache.current()->classify_flow(client, dst, 22, t0).tag, FlowTag::kBypassExpired)
      << "the revoke written into the flooded store was not seen";
}

// A grant dated a little ahead of this reader's clock is pending until it starts. Nothing in the
// store changes then, yet it must become active on its own.
TEST(Reloader, AGrantDatedAheadStartsWithoutAStoreChange) {
  sshring::testing::TempDir dir;
  const std::string path = dir.file("policy.yaml");
  const std::string store = dir.file("grants");
  sshring::testing::write_file(path, policy_text(store, "10.0.0.0/28"));
  DirGrantStore gs(store);
  const UnixSeconds start = ::time(nullptr) + 2;
  gs.add(ci_grant("g-0000000000ab", start, 3600));
  PolicyCache cache;
  ReloaderOptions o;
  o.policy_path = path;
  o.handle_sighup = false;
  o.watch = false;
  o.gauge_interval_ms = 100;
  Reloader rl(cache, o);
  ASSERT_TRUE(rl.reload());
  rl.start();
  const auto client = *IpAddr::parse("10.2.9.9");
  const auto dst = *IpAddr::parse("10.1.5.1");
  EXPECT_EQ(cache.current()->checked_grants()[0].status, GrantStatus::kPending);
  EXPECT_NE(cache.current()->classify_flow(client, dst, 22, start - 1).tag, FlowTag::kBypassApproved);
  EXPECT_TRUE(eventually(
      [&] {
        return cache.current()->classify_flow(client, dst, 22, ::time(nullptr)).tag ==
               FlowTag::kBypassApproved;
      },
      8s));
  rl.stop();
}

struct Recorder {
  int ok = 0, failed = 0;
  int64_t last_success = 0;
  size_t live = 0, expiring = 0;
  int sources = 0;
  size_t break_glass_live = 0, overdue = 0;
  std::vector<std::string> rejected;
  void reloaded(bool good, int64_t now) { good ? (++ok, last_success = now) : ++failed; }
  void grants(size_t l, size_t e) { live = l, expiring = e; }
  void source(bool, int64_t, int64_t, int64_t) { ++sources; }
  void break_glass(size_t l, size_t o) { break_glass_live = l, overdue = o; }
  void grant_rejected(const std::string& reason) { rejected.push_back(reason); }
};

TEST(Reloader, ReportsReloadsAndGrantsToItsObserver) {
  Recorder m;
  sshring::testing::TempDir dir;
  const std::string path = dir.file("policy.yaml");
  const std::string store = dir.file("grants");
  sshring::testing::write_file(path, policy_text(store, "10.0.0.0/28"));
  const auto now =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  DirGrantStore gs(store);
  for (int i = 0; i < 3; ++i)  // expired, expiring soon, later
    gs.add(ci_grant("g-00000000000" + std::to_string(i), now - 60, i == 0 ? 59 : (i == 1 ? 660 : 7260)));
  // Tampered after signing: the reload refuses it and reports it once, not on every reload.
  SignedGrant forged = ci_grant("g-00000000000f", now - 60, 3600);
  forged.request.to = *Cidr::parse("10.1.5.7/32");
  gs.add(forged);
  PolicyCache cache;
  ReloaderOptions o;
  o.policy_path = path;
  o.observer = observe(&m);
  o.handle_sighup = false;
  o.watch = false;
  Reloader rl(cache, o);
  ASSERT_TRUE(rl.reload());
  ASSERT_TRUE(rl.reload());
  EXPECT_EQ(m.rejected, std::vector<std::string>{"bad_signature"});
  EXPECT_EQ(m.break_glass_live, 0u);
  sshring::testing::write_file(path, "version: 1\nbogus: 1\n");
  EXPECT_FALSE(rl.reload());
  EXPECT_EQ(m.ok, 2);
  EXPECT_EQ(m.failed, 1);
  EXPECT_NEAR(static_cast<double>(m.last_success), static_cast<double>(now), 5);
  EXPECT_EQ(m.live, 2u);
  EXPECT_EQ(m.expiring, 1u);
  EXPECT_EQ(m.sources, 0);                          // no source, no source reports
  EXPECT_EQ(cache.current()->grants().size(), 3u);  // the failed reload kept the good snapshot
  EXPECT_EQ(cache.current()->checked_grants().size(), 4u);
}

}  // namespace
}  // namespace sshring::policy
