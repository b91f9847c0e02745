// The fleet control plane against real etcd (3.4, Debian): clusters started here on loopback with
// TLS, client-certificate auth and the roles of deploy/etcd/roles.sh. `sshring policy push` and
// `sshring grant` run as the built binary with the writer roles' certificates; the consumer is the
// relay's and agent's policy cache (PolicyCache + Reloader + EtcdSource) with the read-only relay
// certificate, plus a real `sshring relay --etcd` process for the CLI wiring and its metrics.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "client/client.h"
#include "common/error.h"
#include "common/unique_fd.h"
#include "policy/cache.h"
#include "policy/etcd/client.h"
#include "policy/etcd/session_ledger.h"
#include "policy/etcd/source.h"
#include "policy/etcd/store.h"
#include "protocol/keys.h"
#include "protocol/preamble.h"
#include "tests/policy/etcd_cluster.h"
#include "tests/support/process.h"
#include "tests/support/sshd.h"

namespace sshring::policy {
namespace {

using namespace std::chrono_literals;
using sshring::testing::EtcdCluster;
using sshring::testing::TempDir;
using Clock = std::chrono::steady_clock;

// This process forks etcd members and CLI processes while its own gRPC clients run. With gRPC's
// default epoll poller, a client here then stopped seeing its new connections after an etcd restart
// (TLS handshakes never read); the `poll` poller does not have that problem. Processes that do not
// fork (relay, agent) keep the default: RelayProcessReadsPolicyFromEtcd restarts etcd under a real
// relay and checks that it resyncs.
const bool kPollStrategy = [] { return ::setenv("GRPC_POLL_STRATEGY", "poll", 0) == 0; }();

constexpr auto kPropagationDeadline = 30s;  // generous: shared, loaded machines (the target is 1 s p99)

// Grants are signed: ci-bot's key (made once per test process) is the one the policy lists for it,
// and `grant add|revoke` sign with it (--identity).
const std::string& ci_key() {
  static TempDir dir;
  static const std::string key = [] {
    std::string k = dir.file("ci-bot");
    if (sshring::testing::sh("ssh-keygen -q -t ed25519 -N '' -C ci-bot -f " + k) != 0)
      throw std::runtime_error("ssh-keygen failed for " + k);
    return k;
  }();
  return key;
}

std::string ci_pub() {
  std::string pub = sshring::testing::read_file(ci_key() + ".pub");
  pub.erase(pub.find_last_not_of('\n') + 1);
  return pub;
}

std::string policy_text(const std::string& extra_principal = "") {
  std::string p =
      "version: 1\nrelays: [10.0.0.0/28]\nhosts: [{name: web, cidrs: [10.1.0.0/16]}]\n"
      "roles: [{name: ci, targets: [{cidrs: [10.1.0.0/16]}]}]\n"
      "principals:\n  - {name: ci-bot, roles: [ci], keys: [\"" +
      ci_pub() + "\"]}\n";
  if (!extra_principal.empty()) p += "  - {name: " + extra_principal + ", roles: [ci]}\n";
  p += "opt_out:\n  - {id: ci-direct, who: {roles: [ci]}, from: [10.2.0.0/16], to: {cidrs: [10.1.5.0/24]}, "
       "max_ttl: 8h, require_grant: true, expires: 2099-01-01T00:00:00Z}\n";
  return p;
}

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

int cli(const std::vector<std::string>& args, std::string* out) {
  std::string cmd = "USER=tester " + quote(sshring::testing::sshring_bin());
  for (const auto& a : args) cmd += " " + quote(a);
  return sshring::testing::sh(cmd + " 2>&1", out);
}

std::vector<std::string> operator+(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout = kPropagationDeadline) {
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return pred();
}

UnixSeconds unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::shared_ptr<etcd::Client> client_for(const EtcdCluster& c, const std::string& user,
                                         int only_member = -1) {
  etcd::ClientOptions o;
  etcd::parse_endpoints(only_member < 0 ? c.endpoints() : c.endpoint(only_member), &o);
  o.ca_file = c.ca();
  o.cert_file = c.cert(user);
  o.key_file = c.key(user);
  o.timeout = 5s;
  return std::make_shared<etcd::Client>(o);
}

struct SourceReport {
  std::atomic<bool> up{false};
  std::atomic<int64_t> revision{0};
  void reloaded(bool, int64_t) {}
  void grants(size_t, size_t) {}
  void source(bool u, int64_t rev, int64_t, int64_t) {
    up = u;
    revision = rev;
  }
};

// A relay's or agent's policy cache on etcd (what `--etcd` builds in those processes).
struct Consumer {
  Consumer(std::shared_ptr<etcd::Client> client, const std::string& cache_dir) {
    source = std::make_shared<etcd::EtcdSource>(std::move(client), "/sshring");
    ReloaderOptions o;
    o.source = source;
    o.cache_dir = cache_dir;
    o.handle_sighup = false;
    o.gauge_interval_ms = 200;
    o.observer = observe(&report);
    reloader = std::make_unique<Reloader>(cache, o);
  }
  ~Consumer() {
    if (reloader) reloader->stop();
  }
  void start() {
    reloader->reload_or_throw();
    reloader->start();
  }
  FlowTag flow(const char* src, const char* dst) {
    return cache.current()->classify_flow(*IpAddr::parse(src), *IpAddr::parse(dst), 22, unix_now()).tag;
  }
  bool allows(const char* principal) {
    AuthzRequest r;
    r.principal = principal;
    r.source = *IpAddr::parse("192.0.2.1");
    r.target = *IpAddr::parse("10.1.2.3");
    r.now = unix_now();
    r.skip_key_check = true;
    return cache.current()->authorize(r).allowed;
  }
  size_t grants() { return cache.current()->grants().size(); }
  SourceReport report;
  PolicyCache cache;
  std::shared_ptr<etcd::EtcdSource> source;
  std::unique_ptr<Reloader> reloader;
};

class EtcdFleet : public ::testing::Test {
 protected:
  std::string push(const EtcdCluster& c, const std::string& text, int* rc,
                   const std::vector<std::string>& extra = {}) {
    const std::string file = dir_.file("policy-" + std::to_string(pushes_++) + ".yaml");
    sshring::testing::write_file(file, text);
    std::string out;
    *rc =
        cli(std::vector<std::string>{"policy", "push", file, "--audit-log", dir_.file("policy.audit.jsonl")} +
                c.flags("sshring-policy") + extra,
            &out);
    return out;
  }
  void push_ok(const EtcdCluster& c, const std::string& text) {
    int rc;
    std::string out = push(c, text, &rc);
    ASSERT_EQ(rc, 0) << out;
  }
  // `grant add` as the grant writer; returns the grant id.
  std::string grant_add(const EtcdCluster& c, const std::string& to, std::string* out_text = nullptr) {
    std::string out;
    int rc = cli(std::vector<std::string>{"grant", "add", "--identity", ci_key(), "--who", "ci-bot", "--from",
                                          "10.2.0.0/16", "--to", to, "--ttl", "1h", "--reason", "test",
                                          "--audit-log", dir_.file("grant.audit.jsonl")} +
                     c.flags("sshring-grant"),
                 &out);
    if (out_text) *out_text = out;
    if (rc != 0) return "";
    return out.substr(out.find("g-"), 14);
  }
  std::vector<nlohmann::json> audit(const std::string& name) {
    std::vector<nlohmann::json> out;
    std::istringstream in(sshring::testing::read_file(dir_.file(name)));
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) out.push_back(nlohmann::json::parse(line));
    return out;
  }
  // A `sshring relay` process on etcd as the relay user, relay id "fleet", with its metrics port.
  struct Relay {
    uint16_t port = sshring::testing::free_port(), metrics = sshring::testing::free_port();
    std::string log;
    sshring::testing::Process proc;
  };
  void start_relay(const EtcdCluster& c, Relay& r, const std::string& name,
                   const std::vector<std::string>& extra) {
    namespace t = sshring::testing;
    r.log = dir_.file(name + ".log");
    r.proc = t::Process(
        std::vector<std::string>{t::sshring_bin(), "relay", "--listen", "127.0.0.1:" + std::to_string(r.port),
                                 "--metrics", "127.0.0.1:" + std::to_string(r.metrics), "--relay-id", "fleet",
                                 "--control-socket", "none", "--cache-dir", dir_.file(name + "-cache")} +
            extra + c.flags("sshring-relay"),
        t::Process::Options{.stderr_path = r.log});
    ASSERT_TRUE(t::wait_for_port("127.0.0.1", r.port, 30s)) << t::read_file(r.log);
    ASSERT_TRUE(t::wait_for_port("127.0.0.1", r.metrics, 30s)) << t::read_file(r.log);
  }
  static std::string scrape(const Relay& r) {
    std::string m;
    sshring::testing::sh("curl -s http://127.0.0.1:" + std::to_string(r.metrics) + "/metrics", &m);
    return m;
  }
  TempDir dir_;
  int pushes_ = 0;
};

// Push, grant, see it in the consumer and in `policy explain`, revoke; then lose the leader and keep
// granting through the surviving members; the relay process reports its source in /metrics.
TEST_F(EtcdFleet, PushGrantRevokeAndLeaderLossOnThreeMembers) {
  EtcdCluster etcd(3);
  push_ok(etcd, policy_text());
  auto recs = audit("policy.audit.jsonl");
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0]["type"], "policy_push");
  EXPECT_GT(recs[0]["etcd_revision"].get<int64_t>(), 0);
  EXPECT_EQ(recs[0]["digest"].get<std::string>().substr(0, 7), "sha256:");

  Consumer relay(client_for(etcd, "sshring-relay"), dir_.file("cache-relay"));
  relay.start();
  EXPECT_FALSE(relay.allows("alice"));
  EXPECT_TRUE(relay.allows("ci-bot"));
  EXPECT_EQ(relay.flow("10.2.3.4", "10.1.5.7"), FlowTag::kBypassUnapproved);

  // A new policy version reaches the consumer without a restart.
  push_ok(etcd, policy_text("alice"));
  ASSERT_TRUE(eventually([&] { return relay.allows("alice"); }));

  auto t0 = Clock::now();
  std::string out;
  std::string id = grant_add(etcd, "10.1.5.0/24", &out);
  ASSERT_FALSE(id.empty()) << out;
  ASSERT_TRUE(eventually([&] { return relay.flow("10.2.3.4", "10.1.5.7") == FlowTag::kBypassApproved; }));
  std::printf("grant add (process) to visible in the consumer: %.0f ms\n",
              std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  auto grec = audit("grant.audit.jsonl");
  ASSERT_FALSE(grec.empty());
  EXPECT_EQ(grec.back()["type"], "grant_request");
  EXPECT_EQ(grec.back()["grant_id"], id);
  // The record is durable before the write, so it names the revision the grant was checked against
  // (the store as the command read it), not the write's own.
  auto added = client_for(etcd, "sshring-agent")->get(etcd::Keys("/sshring").grant(id));
  ASSERT_EQ(added.kvs.size(), 1u);
  const int64_t added_at = added.kvs[0].mod_revision;
  ASSERT_TRUE(grec.back().contains("etcd_base_revision")) << grec.back().dump();
  EXPECT_GE(grec.back()["etcd_base_revision"].get<int64_t>(), recs[0]["etcd_revision"].get<int64_t>());
  EXPECT_LT(grec.back()["etcd_base_revision"].get<int64_t>(), added_at);

  ASSERT_EQ(cli(std::vector<std::string>{"policy", "explain", "--flow", "10.2.3.4", "10.1.5.7:22"} +
                    etcd.flags("sshring-relay"),
                &out),
            0)
      << out;
  EXPECT_NE(out.find("bypass_approved by grant " + id), std::string::npos) << out;

  // Another write first, so the store's latest revision is past the version the revoke changes.
  ASSERT_FALSE(grant_add(etcd, "10.1.5.128/25", &out).empty()) << out;
  ASSERT_EQ(cli(std::vector<std::string>{"grant", "revoke", id, "--identity", ci_key(), "--reason", "done",
                                         "--audit-log", dir_.file("grant.audit.jsonl")} +
                    etcd.flags("sshring-grant"),
                &out),
            0)
      << out;
  ASSERT_TRUE(eventually([&] { return relay.flow("10.2.3.4", "10.1.5.7") == FlowTag::kBypassExpired; }));
  EXPECT_EQ(audit("grant.audit.jsonl").back()["type"], "grant_revoke");
  // The revoke was written only over the version it names (compare-and-swap on mod_revision).
  EXPECT_EQ(audit("grant.audit.jsonl").back().value("etcd_base_revision", int64_t{0}), added_at);

  // Lose the leader mid-run: grants keep being added through the survivors, the consumer keeps
  // deciding (no restart) and sees every one.
  int leader = etcd.leader();
  ASSERT_GE(leader, 0);
  etcd.kill(leader);
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    std::string o;
    std::string g = grant_add(etcd, "10.1.5." + std::to_string(10 + i) + "/32", &o);
    ASSERT_FALSE(g.empty()) << o;
    ids.push_back(g);
    EXPECT_EQ(relay.flow("10.2.3.4", "10.1.5.7"), FlowTag::kBypassExpired);  // still deciding
  }
  ASSERT_TRUE(eventually([&] { return relay.flow("10.2.3.4", "10.1.5.12") == FlowTag::kBypassApproved; }));
  EXPECT_EQ(relay.flow("10.2.3.4", "10.1.5.10"), FlowTag::kBypassApproved);
  EXPECT_EQ(relay.flow("10.2.3.4", "10.1.5.11"), FlowTag::kBypassApproved);
  ASSERT_TRUE(eventually([&] { return relay.report.up.load(); }));
}

// etcd goes away: consumers keep deciding on their snapshot, a restarted consumer starts from the
// disk cache, a consumer without a cache refuses to start; etcd comes back: everyone resyncs.
TEST_F(EtcdFleet, OutageKeepsTheCachedSnapshotAndResyncs) {
  EtcdCluster etcd(1);
  push_ok(etcd, policy_text());
  ASSERT_FALSE(grant_add(etcd, "10.1.5.0/25").empty());
  const std::string cache = dir_.file("cache");
  auto a = std::make_unique<Consumer>(client_for(etcd, "sshring-agent"), cache);
  a->start();
  ASSERT_EQ(a->flow("10.2.3.4", "10.1.5.7"), FlowTag::kBypassApproved);
  ASSERT_TRUE(eventually([&] { return a->report.up.load(); }));
  a->reloader->flush_cache();  // written on its own thread: a few ms behind the snapshot

  etcd.stop_all();
  ASSERT_TRUE(eventually([&] { return !a->report.up.load(); }));
  EXPECT_EQ(a->flow("10.2.3.4", "10.1.5.7"), FlowTag::kBypassApproved);  // still deciding, same snapshot
  EXPECT_TRUE(a->allows("ci-bot"));

  // A consumer restarted during the outage starts from the cache.
  Consumer b(client_for(etcd, "sshring-agent"), cache);
  b.start();
  EXPECT_TRUE(b.reloader->serving_cache());
  EXPECT_EQ(b.flow("10.2.3.4", "10.1.5.7"), FlowTag::kBypassApproved);
  EXPECT_FALSE(b.report.up.load());

  // Without a cache there is no policy to decide on: refuse to start (fail closed).
  Consumer c(client_for(etcd, "sshring-agent"), dir_.file("empty-cache"));
  try {
    c.reloader->reload_or_throw();
    FAIL() << "started without etcd and without a cache";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("no usable cached snapshot"), std::string::npos) << e.what();
  }

  // A forged cache (a grant added to the file) is refused on load.
  {
    std::string path = cached_snapshot_path(cache, b.source->id());
    auto j = nlohmann::json::parse(sshring::testing::read_file(path));
    auto forged = j;
    forged["grants"].push_back(j["grants"][0]);
    TempDir other;
    sshring::testing::write_file(cached_snapshot_path(other.path(), b.source->id()), forged.dump());
    Consumer d(client_for(etcd, "sshring-agent"), other.path());
    EXPECT_THROW(d.reloader->reload_or_throw(), std::exception);
  }

  etcd.start_all();
  ASSERT_TRUE(etcd.wait_healthy());
  ASSERT_FALSE(grant_add(etcd, "10.1.5.200/32").empty());
  auto status = [](Consumer& x) {
    auto st = x.source->status();
    return "up=" + std::to_string(st.up) + " rev=" + std::to_string(st.revision) +
           " last_sync=" + std::to_string(st.last_sync);
  };
  ASSERT_TRUE(eventually([&] { return a->flow("10.2.3.4", "10.1.5.200") == FlowTag::kBypassApproved; }, 60s))
      << status(*a);
  ASSERT_TRUE(eventually([&] { return b.flow("10.2.3.4", "10.1.5.200") == FlowTag::kBypassApproved; }, 60s))
      << status(b);
  EXPECT_FALSE(b.reloader->serving_cache());
  ASSERT_TRUE(eventually([&] { return b.report.up.load(); }));
}

// A watcher that was away while etcd compacted past its revision lists again and loses nothing.
TEST_F(EtcdFleet, CompactionPastAWatcherReListsAndLosesNothing) {
  EtcdCluster etcd(3);
  push_ok(etcd, policy_text());
  std::string first = grant_add(etcd, "10.1.5.1/32");
  ASSERT_FALSE(first.empty());
  // The consumer talks to member 0 only, so it can be cut off while the others go on.
  Consumer a(client_for(etcd, "sshring-relay", 0), dir_.file("cache"));
  a.start();
  ASSERT_EQ(a.flow("10.2.3.4", "10.1.5.1"), FlowTag::kBypassApproved);
  etcd.kill(0);
  std::vector<std::string> added;
  for (int i = 2; i < 6; ++i) added.push_back(grant_add(etcd, "10.1.5." + std::to_string(i) + "/32"));
  std::string out;
  ASSERT_EQ(cli(std::vector<std::string>{"grant", "revoke", first, "--identity", ci_key(), "--reason", "r",
                                         "--audit-log", dir_.file("grant.audit.jsonl")} +
                    etcd.flags("sshring-grant"),
                &out),
            0)
      << out;
  auto root = client_for(etcd, "root");
  int64_t rev = root->get("/sshring/").revision;
  root->compact(rev);
  EXPECT_EQ(a.flow("10.2.3.4", "10.1.5.2"), FlowTag::kBypassUnapproved);  // cut off: not seen yet
  etcd.start(0);
  ASSERT_TRUE(eventually([&] { return a.flow("10.2.3.4", "10.1.5.5") == FlowTag::kBypassApproved; }, 60s));
  EXPECT_GE(a.source->relists(), 1u);
  for (int i = 2; i < 6; ++i)
    EXPECT_EQ(a.flow("10.2.3.4", ("10.1.5." + std::to_string(i)).c_str()), FlowTag::kBypassApproved) << i;
  EXPECT_EQ(a.flow("10.2.3.4", "10.1.5.1"), FlowTag::kBypassExpired);  // the revocation was not lost
  EXPECT_EQ(a.grants(), 5u);
}

// 24 concurrent `grant add` lose nothing; two pushes from one base: one wins, the other says why.
TEST_F(EtcdFleet, ConcurrentGrantAddsAndRacingPushes) {
  EtcdCluster etcd(1);
  push_ok(etcd, policy_text());
  Consumer a(client_for(etcd, "sshring-relay"), dir_.file("cache"));
  a.start();
  constexpr int kN = 24;
  std::vector<std::thread> threads;
  std::vector<std::string> ids(kN), outs(kN);
  for (int i = 0; i < kN; ++i) {
    threads.emplace_back([&, i] {
      // Each process its own audit log: the lock that serializes one log is not what is tested here.
      std::string out;
      int rc =
          cli(std::vector<std::string>{"grant", "add", "--identity", ci_key(), "--who", "ci-bot", "--from",
                                       "10.2.0.0/16", "--to", "10.1.5." + std::to_string(100 + i) + "/32",
                                       "--ttl", "1h", "--reason", "load", "--audit-log",
                                       dir_.file("g" + std::to_string(i) + ".audit.jsonl")} +
                  etcd.flags("sshring-grant"),
              &out);
      outs[i] = out;
      if (rc == 0) ids[i] = out.substr(out.find("g-"), 14);
    });
  }
  for (auto& t : threads) t.join();
  std::set<std::string> unique;
  for (int i = 0; i < kN; ++i) {
    EXPECT_FALSE(ids[i].empty()) << outs[i];
    unique.insert(ids[i]);
  }
  EXPECT_EQ(unique.size(), static_cast<size_t>(kN));
  auto root = client_for(etcd, "root");
  EXPECT_EQ(root->list("/sshring/grants/").kvs.size(), static_cast<size_t>(kN));
  ASSERT_TRUE(eventually([&] { return a.grants() == static_cast<size_t>(kN); }));
  // Bounded by (max TTL + retention) / 1 h, not by the number of grants.
  EXPECT_LE(root->list("/sshring/leases/").kvs.size(), 2u);

  // Two admins start from the same live revision.
  std::string shown;
  ASSERT_EQ(cli(std::vector<std::string>{"policy", "show", "--json"} + etcd.flags("sshring-relay"), &shown),
            0)
      << shown;
  int64_t base = nlohmann::json::parse(shown.substr(shown.find('{')))["revision"].get<int64_t>();
  int rc1, rc2;
  std::string o1 = push(etcd, policy_text("alice"), &rc1, {"--expect-revision", std::to_string(base)});
  std::string o2 = push(etcd, policy_text("bob"), &rc2, {"--expect-revision", std::to_string(base)});
  EXPECT_EQ(rc1, 0) << o1;
  EXPECT_EQ(rc2, 1) << o2;
  EXPECT_NE(o2.find("refused"), std::string::npos) << o2;
  EXPECT_NE(o2.find("not revision " + std::to_string(base)), std::string::npos) << o2;
  EXPECT_NE(o2.find("pushed by tester"), std::string::npos) << o2;
  ASSERT_TRUE(eventually([&] { return a.allows("alice"); }));
  EXPECT_FALSE(a.allows("bob"));
  // `policy diff` shows bob's change against the live (alice) policy.
  std::string d;
  EXPECT_EQ(cli(std::vector<std::string>{"policy", "diff", dir_.file("policy-2.yaml")} +
                    etcd.flags("sshring-relay"),
                &d),
            1)
      << d;
  EXPECT_NE(d.find("+  - {name: bob"), std::string::npos) << d;
  EXPECT_NE(d.find("-  - {name: alice"), std::string::npos) << d;
}

// The grant writer's etcd credential is not enough to mint an exception: grants written straight
// into etcd (the genuine one widened after signing; one with its signature removed) reach the
// readers, which reject them and keep honouring only the genuine grant.
TEST_F(EtcdFleet, ForgedGrantsWrittenStraightIntoEtcdAreRejected) {
  EtcdCluster etcd(1);
  push_ok(etcd, policy_text());
  Consumer relay(client_for(etcd, "sshring-relay"), dir_.file("cache-relay"));
  relay.start();
  std::string out;
  const std::string id = grant_add(etcd, "10.1.5.0/24", &out);
  ASSERT_FALSE(id.empty()) << out;
  ASSERT_TRUE(eventually([&] { return relay.flow("10.2.3.4", "10.1.5.7") == FlowTag::kBypassApproved; }));

  auto writer = client_for(etcd, "sshring-grant");
  auto got = writer->get("/sshring/grants/" + id);
  ASSERT_EQ(got.kvs.size(), 1u);
  const auto genuine = nlohmann::json::parse(got.kvs[0].value);
  const std::map<std::string, std::string> forged{{"g-f0f0f0f0f0f1", "bad_signature"},
                                                  {"g-f0f0f0f0f0f2", "unsigned"}};
  for (const auto& [fid, reason] : forged) {
    auto j = genuine;
    j["id"] = fid;
    j["request"]["id"] = fid;
    j["request"]["to"] = "10.1.0.0/16";  // every host instead of one subnet
    j["request"]["ttl_seconds"] = 30 * 24 * 3600;
    if (reason == "unsigned") j["signature"] = "";
    writer->put("/sshring/grants/" + fid, j.dump());
  }
  auto rejected = [&] {
    std::map<std::string, std::string> r;
    // The snapshot is held for the loop: a range-for over current()->checked_grants() would free the
    // temporary shared_ptr before iterating (TSan caught a reload freeing it meanwhile).
    const auto snap = relay.cache.current();
    for (const auto& c : snap->checked_grants())
      if (c.status == GrantStatus::kRejected) r[c.object.request.id] = c.reject_reason;
    return r;
  };
  ASSERT_TRUE(eventually([&] { return rejected() == forged; })) << rejected().size();
  EXPECT_EQ(relay.flow("10.2.3.4", "10.1.9.9"), FlowTag::kBypassUnapproved);
  EXPECT_EQ(relay.flow("10.2.3.4", "10.1.5.7"), FlowTag::kBypassApproved);  // the genuine one still
  EXPECT_EQ(relay.grants(), 1u);
  // `policy explain` (another reader, its own snapshot from etcd) refuses them too.
  ASSERT_EQ(cli(std::vector<std::string>{"policy", "explain", "--flow", "10.2.3.4", "10.1.9.9:22"} +
                    etcd.flags("sshring-relay"),
                &out),
            0)
      << out;
  EXPECT_EQ(out.find("bypass_approved"), std::string::npos) << out;
  EXPECT_NE(out.find("bypass_unapproved"), std::string::npos) << out;
  EXPECT_NE(out.find("is rejected"), std::string::npos) << out;

  // The genuine grant overwritten in place with a widened copy: the consumer checked (and remembers)
  // the genuine text, but the new value is checked afresh, refused, and the grant no longer counts.
  auto widened = genuine;
  widened["request"]["to"] = "10.1.0.0/16";
  writer->put("/sshring/grants/" + id, widened.dump());
  ASSERT_TRUE(eventually([&] { return rejected().count(id) == 1; })) << rejected().size();
  EXPECT_EQ(rejected().at(id), "bad_signature");
  EXPECT_EQ(relay.flow("10.2.3.4", "10.1.9.9"), FlowTag::kBypassUnapproved);
  EXPECT_EQ(relay.flow("10.2.3.4", "10.1.5.7"), FlowTag::kBypassUnapproved);  // fails closed
  EXPECT_EQ(relay.grants(), 0u);
}

// A store writer copies a live signed grant to another key (a "shadow" no revoke of the id reaches).
// Every reader skips a value whose key is not PREFIX/grants/<its id>: the watching consumer, the
// store the CLI loads, `grant list` and `policy explain`; the revoke then ends the grant everywhere.
TEST_F(EtcdFleet, ShadowCopyUnderAnotherKeyIsSkippedAndTheRevokeHolds) {
  EtcdCluster etcd(1);
  push_ok(etcd, policy_text());
  Consumer relay(client_for(etcd, "sshring-relay"), dir_.file("cache-relay"));
  relay.start();
  std::string out;
  const std::string id = grant_add(etcd, "10.1.5.0/24", &out);
  ASSERT_FALSE(id.empty()) << out;
  ASSERT_TRUE(eventually([&] { return relay.flow("10.2.3.4", "10.1.5.7") == FlowTag::kBypassApproved; }));

  auto writer = client_for(etcd, "sshring-grant");
  auto got = writer->get("/sshring/grants/" + id);
  ASSERT_EQ(got.kvs.size(), 1u);
  // One shadow written before the consumer lists again (a fresh consumer), one while it watches; one
  // under a well-formed id of another grant.
  writer->put("/sshring/grants/zz-shadow-" + id, got.kvs[0].value);
  const int64_t planted = writer->put("/sshring/grants/g-0123456789ab", got.kvs[0].value);
  ASSERT_TRUE(eventually([&] { return relay.source->status().revision >= planted; }));
  Consumer fresh(client_for(etcd, "sshring-relay"), dir_.file("cache-fresh"));
  fresh.start();
  EXPECT_EQ(fresh.grants(), 1u);
  EXPECT_EQ(fresh.source->misplaced(), 2u);
  EXPECT_TRUE(eventually([&] { return relay.source->misplaced() >= 2; })) << relay.source->misplaced();

  ASSERT_EQ(cli(std::vector<std::string>{"grant", "revoke", id, "--identity", ci_key(), "--reason",
                                         "compromised", "--audit-log", dir_.file("grant.audit.jsonl")} +
                    etcd.flags("sshring-grant"),
                &out),
            0)
      << out;
  ASSERT_TRUE(eventually([&] { return relay.flow("10.2.3.4", "10.1.5.7") == FlowTag::kBypassExpired; }));
  ASSERT_TRUE(eventually([&] { return fresh.flow("10.2.3.4", "10.1.5.7") == FlowTag::kBypassExpired; }));
  EXPECT_EQ(relay.grants(), 1u);

  etcd::EtcdGrantStore store(writer, "/sshring");
  auto loaded = store.load();
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(loaded[0].id(), id);
  EXPECT_EQ(store.misplaced(), 2u);
  // A rewrite of the key that holds another id's grant is refused, not applied to the copy.
  EXPECT_THROW(store.update("g-0123456789ab", [](SignedGrant&) {}), common::UsageError);

  ASSERT_EQ(cli(std::vector<std::string>{"grant", "list", "--json"} + etcd.flags("sshring-grant"), &out), 0)
      << out;
  const std::string row = "\"id\": \"" + id + "\"";
  size_t listed = 0;
  for (size_t at = out.find(row); at != std::string::npos; at = out.find(row, at + 1)) ++listed;
  EXPECT_EQ(listed, 1u) << out;
  EXPECT_EQ(out.find("\"active\""), std::string::npos) << out;
  ASSERT_EQ(cli(std::vector<std::string>{"policy", "explain", "--flow", "10.2.3.4", "10.1.5.7:22"} +
                    etcd.flags("sshring-relay"),
                &out),
            0)
      << out;
  EXPECT_EQ(out.find("bypass_approved"), std::string::npos) << out;
}

// Least privilege: what each credential may do is what etcd enforces.
TEST_F(EtcdFleet, ReadOnlyCredentialsCannotWrite) {
  EtcdCluster etcd(1);
  push_ok(etcd, policy_text());
  std::string out;
  EXPECT_EQ(cli(std::vector<std::string>{"grant", "add", "--identity", ci_key(), "--who", "ci-bot", "--from",
                                         "10.2.0.0/16", "--to", "10.1.5.0/24", "--ttl", "1h", "--reason", "x",
                                         "--audit-log", dir_.file("a.audit.jsonl")} +
                    etcd.flags("sshring-agent"),
                &out),
            1)
      << out;
  EXPECT_NE(out.find("permission denied"), std::string::npos) << out;
  for (const char* user : {"sshring-agent", "sshring-relay"}) {
    auto c = client_for(etcd, user);
    try {
      c->put("/sshring/grants/g-000000000001", "{}");
      ADD_FAILURE() << user << " wrote a grant";
    } catch (const etcd::EtcdError& e) {
      EXPECT_TRUE(e.permission_denied()) << user << ": " << e.what();
    }
    EXPECT_FALSE(c->list("/sshring/policy/").kvs.empty()) << user << " must read the policy";
  }
  client_for(etcd, "sshring-relay")->put("/sshring/sessions/relay-1", "0");  // the relay's own keys
  int rc;
  out = push(etcd, policy_text("mallory"), &rc);  // as the policy writer: allowed
  EXPECT_EQ(rc, 0) << out;
  const std::string file = dir_.file("evil.yaml");
  sshring::testing::write_file(file, policy_text("eve"));
  EXPECT_EQ(cli(std::vector<std::string>{"policy", "push", file, "--audit-log", dir_.file("p.audit.jsonl")} +
                    etcd.flags("sshring-grant"),
                &out),
            1)
      << out;
  EXPECT_NE(out.find("permission denied"), std::string::npos) << out;
  // Invalid policies are not pushed at all.
  sshring::testing::write_file(file, "version: 1\nrelays: [10.0.0.0/99]\n");
  EXPECT_EQ(cli(std::vector<std::string>{"policy", "push", file} + etcd.flags("sshring-policy"), &out), 1)
      << out;
  EXPECT_NE(out.find("not pushed"), std::string::npos) << out;
}

// What a relay answered to `bytes` sent on a fresh connection (written at once, then half-closed).
struct Answer {
  protocol::ReplyDecode reply;
  std::string after;  // bytes after the reply (the target's, once relayed)
};
Answer send_to(uint16_t port, const std::string& bytes) {
  Answer a;
  common::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) return a;
  (void)!::send(fd.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
  ::shutdown(fd.get(), SHUT_WR);
  std::string raw;
  const auto deadline = Clock::now() + 20s;
  while (Clock::now() < deadline && raw.find("SSH-2.0") == std::string::npos) {
    pollfd p{fd.get(), POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    char buf[4096];
    ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n <= 0) break;
    raw.append(buf, static_cast<size_t>(n));
  }
  a.reply = protocol::decode_reply({reinterpret_cast<const uint8_t*>(raw.data()), raw.size()});
  if (a.reply.status == protocol::DecodeStatus::kOk) a.after = raw.substr(a.reply.consumed);
  return a;
}
bool relayed(const Answer& a) {
  return a.reply.status == protocol::DecodeStatus::kOk && a.reply.reply.type == protocol::FrameType::kOk &&
         a.after.find("SSH-2.0") != std::string::npos;
}
int denied_with(const Answer& a) {
  if (a.reply.status != protocol::DecodeStatus::kOk || a.reply.reply.type != protocol::FrameType::kDeny)
    return -1;
  return a.reply.reply.reason;
}

// A preamble is signed for a relay id, not for one relay: captured on the way to relay A, it is
// valid at every relay answering to that id until its timestamp is stale. The attack: replay it to
// relay B. With the nonce claimed in etcd B refuses it (`replayed`); a relay with
// --shared-replay off, which only has its own cache, lets it through (what the claim prevents).
// etcd away: auto decides on the local cache (counted), require refuses.
TEST_F(EtcdFleet, PreambleReplayedToAnotherRelayIsRefused) {
  namespace t = sshring::testing;
  EtcdCluster etcd(1);
  t::Sshd sshd;
  push_ok(etcd, "version: 1\nroles: [{name: ops, targets: [{cidrs: [127.0.0.1/32], ports: [" +
                    std::to_string(sshd.port()) +
                    "]}]}]\nprincipals:\n  - {name: alice, roles: [ops], keys: [\"" + sshd.user_pubkey() +
                    "\"]}\n");
  auto key =
      std::make_shared<protocol::Ed25519PrivateKey>(protocol::Ed25519PrivateKey::load_file(sshd.user_key()));
  auto hello = [&] {
    client::Signer signer{key->public_key(), [key](std::string_view d) { return key->sign(d); }};
    return protocol::encode_hello(
        client::make_hello(signer, "fleet", "alice", "127.0.0.1", sshd.port(), client::unix_ms_now()));
  };
  const int kReplayed = static_cast<int>(protocol::Reason::kReplayed);
  const int kOverloaded = static_cast<int>(protocol::Reason::kOverloaded);

  Relay a, b, local_only, strict;
  start_relay(etcd, a, "relay-a", {"--shared-replay", "auto"});
  start_relay(etcd, b, "relay-b", {"--shared-replay", "auto"});
  start_relay(etcd, local_only, "relay-local", {"--shared-replay", "off"});
  start_relay(etcd, strict, "relay-strict", {"--shared-replay", "require"});

  const std::string captured = hello();
  EXPECT_TRUE(relayed(send_to(a.port, captured))) << t::read_file(a.log);
  EXPECT_EQ(denied_with(send_to(b.port, captured)), kReplayed) << t::read_file(b.log);
  EXPECT_EQ(denied_with(send_to(a.port, captured)), kReplayed);  // A's own cache
  EXPECT_TRUE(relayed(send_to(local_only.port, captured)))
      << "without the shared claim the replay gets through: " << t::read_file(local_only.log);
  // Fresh preambles pass everywhere (a claim is per nonce, not per principal).
  EXPECT_TRUE(relayed(send_to(b.port, hello()))) << t::read_file(b.log);
  EXPECT_TRUE(relayed(send_to(strict.port, hello()))) << t::read_file(strict.log);
  std::string m = scrape(b);
  EXPECT_NE(m.find("sshring_relay_replay_claims_total{result=\"replayed\"} 1"), std::string::npos) << m;
  EXPECT_NE(m.find("sshring_relay_replay_claims_total{result=\"fresh\"} 1"), std::string::npos) << m;
  std::string keys;
  etcd.etcdctl("get --prefix --keys-only /sshring/sessions/nonces/fleet/", &keys);
  EXPECT_EQ(std::count(keys.begin(), keys.end(), '/') / 5, 3) << keys;  // three fresh nonces claimed

  etcd.stop_all();
  EXPECT_TRUE(relayed(send_to(a.port, hello()))) << t::read_file(a.log);
  EXPECT_NE(scrape(a).find("sshring_relay_replay_claims_total{result=\"unavailable\"} 1"), std::string::npos)
      << scrape(a);
  EXPECT_EQ(denied_with(send_to(strict.port, hello())), kOverloaded) << t::read_file(strict.log);
  // The local cache still holds while etcd is away.
  EXPECT_EQ(denied_with(send_to(b.port, captured)), kReplayed);
}

// Fleet-wide max_sessions: two relay processes on one etcd (same relay id, as behind one load
// balancer) count a principal's sessions together. Three through A fill the limit, a fourth through B
// is refused, also while etcd is away; A killed (no clean shutdown) stops counting when its lease
// expires, and B admits again; B stopped cleanly takes its counts out of etcd at once.
TEST_F(EtcdFleet, MaxSessionsHoldAcrossRelays) {
  namespace t = sshring::testing;
  EtcdCluster etcd(1);
  t::Sshd sshd;
  push_ok(etcd,
          "version: 1\nroles: [{name: ops, max_sessions: 3, targets: [{cidrs: [127.0.0.1/32], ports: [" +
              std::to_string(sshd.port()) + "]}]}]\nprincipals:\n  - {name: alice, roles: [ops], keys: [\"" +
              sshd.user_pubkey() + "\"]}\n");
  auto connect_cmd = [&](const Relay& r) {
    return t::sshring_bin() + " connect --relay 127.0.0.1:" + std::to_string(r.port) +
           " --relay-id fleet --principal alice --identity " + sshd.user_key() + " 127.0.0.1 " +
           std::to_string(sshd.port());
  };
  // One session that stays open (its stdin is a sleep); true once sshd's banner came back.
  std::vector<t::Process> held;
  auto hold = [&](const Relay& r, int i) {
    const std::string out = dir_.file("s" + std::to_string(i));
    held.emplace_back(
        std::vector<std::string>{"sh", "-c",
                                 "sleep 120 | " + connect_cmd(r) + " > " + out + " 2> " + out + ".err"},
        t::Process::Options{});
    return eventually([&] { return t::read_file(out).rfind("SSH-2.0", 0) == 0; });
  };
  // A session that only reads the banner: exit code 0 and "SSH-2.0", or the refusal in *out.
  int onces = 0;
  auto once = [&](const Relay& r, std::string* out) {
    const std::string f = dir_.file("once" + std::to_string(onces++));
    const int rc = t::sh(connect_cmd(r) + " < /dev/null > " + f + " 2>&1");
    *out = t::read_file(f);
    return rc == 0 && out->rfind("SSH-2.0", 0) == 0;
  };
  auto counts = [&] {
    std::string out;
    etcd.etcdctl("get --prefix /sshring/sessions/counts/", &out);
    return out;
  };

  Relay a, b;
  start_relay(etcd, a, "relay-a", {"--drain-timeout", "1s"});
  start_relay(etcd, b, "relay-b", {"--drain-timeout", "1s"});
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(hold(a, i)) << "session " << i << t::read_file(a.log);
  // A's count is in etcd under its lease; B sees it.
  EXPECT_TRUE(eventually([&] { return counts().find("\"count\":3") != std::string::npos; })) << counts();
  ASSERT_TRUE(eventually([&] {
    return scrape(b).find("sshring_relay_fleet_sessions_others 3") != std::string::npos;
  })) << scrape(b)
      << t::read_file(b.log);
  EXPECT_NE(scrape(b).find("sshring_relay_fleet_sessions_up 1"), std::string::npos) << scrape(b);
  EXPECT_NE(scrape(b).find("sshring_relay_fleet_relays_others 1"), std::string::npos) << scrape(b);

  std::string out;
  EXPECT_FALSE(once(b, &out)) << "a 4th session through relay B was admitted";
  EXPECT_NE(out.find("too_many_sessions"), std::string::npos) << out;
  EXPECT_FALSE(once(a, &out)) << "a 4th session through relay A was admitted";
  EXPECT_NE(out.find("too_many_sessions"), std::string::npos) << out;

  // etcd away: B says so and keeps deciding on the counts it last saw (never fewer), so the 4th is
  // still refused; etcd back: both resync by themselves.
  etcd.stop_all();
  EXPECT_TRUE(eventually([&] {
    return scrape(b).find("sshring_relay_fleet_sessions_up 0") != std::string::npos;
  })) << scrape(b);
  EXPECT_FALSE(once(b, &out)) << "a 4th session through relay B was admitted while etcd was away";
  EXPECT_NE(out.find("too_many_sessions"), std::string::npos) << out;
  etcd.start_all();
  ASSERT_TRUE(etcd.wait_healthy());
  EXPECT_TRUE(eventually(
      [&] { return scrape(b).find("sshring_relay_fleet_sessions_up 1") != std::string::npos; }, 60s))
      << scrape(b) << t::read_file(b.log);

  // A dies without revoking: its sessions count until the lease (10 s) expires, then B admits again.
  a.proc.signal(SIGKILL);
  a.proc.wait(10s);
  ASSERT_TRUE(eventually([&] {
    return scrape(b).find("sshring_relay_fleet_sessions_others 0") != std::string::npos;
  })) << scrape(b);
  EXPECT_TRUE(once(b, &out)) << out << t::read_file(b.log);

  // B holds one and stops cleanly: its count is gone from etcd once it exited, not a lease later.
  ASSERT_TRUE(hold(b, 9)) << t::read_file(b.log);
  EXPECT_TRUE(eventually([&] { return counts().find("\"count\":1") != std::string::npos; })) << counts();
  b.proc.signal(SIGTERM);  // drains for 1 s, then closes the held session
  EXPECT_EQ(b.proc.wait(30s), 0) << t::read_file(b.log);
  EXPECT_EQ(counts().find("/sshring/sessions/counts/"), std::string::npos) << counts();
  for (auto& h : held) ::kill(-h.pid(), SIGKILL);  // each client's shell, sleep and connect
}

// The relay process on etcd: starts from etcd, exports its source metrics.
// A member that hangs (SIGSTOP: connections stay open, nothing answers) under a relay's session
// count watch: the relay's progress requests go unanswered, it cancels the watch and lists again
// through another member, so it keeps hearing the other relays' counts. Without that it would keep
// the hung member's last counts for as long as the member hangs.
TEST_F(EtcdFleet, SessionCountsKeepFlowingWhenAMemberHangs) {
  EtcdCluster etcd(3);
  auto b_client = client_for(etcd, "sshring-relay");
  etcd::EtcdSessionLedger a(client_for(etcd, "sshring-relay"), "/sshring", {.relay_id = "r1"});
  etcd::EtcdSessionLedger b(b_client, "/sshring", {.relay_id = "r1"});
  a.start();
  b.start();
  a.publish("alice", 2);
  ASSERT_TRUE(eventually([&] { return b.others("alice") == 2; }, 30s));
  // Hang the member B talks to (and so watches on); A's writes move to another member by themselves.
  int hung = -1;
  for (int i = 0; i < etcd.size(); ++i)
    if (etcd.endpoint(i).ends_with("//" + b_client->current_endpoint())) hung = i;
  ASSERT_GE(hung, 0) << b_client->current_endpoint();
  ASSERT_EQ(::kill(etcd.pid(hung), SIGSTOP), 0);
  struct Cont {
    pid_t pid;
    ~Cont() { ::kill(pid, SIGCONT); }
  } cont{etcd.pid(hung)};
  a.publish("alice", 3);
  EXPECT_TRUE(eventually([&] { return b.others("alice") == 3; }, 60s))
      << "others=" << b.others("alice") << " up=" << b.status().up << " errors=" << b.status().errors;
  EXPECT_GT(b.status().errors, 0u);  // the silent watch was noticed, not just lucky
}

TEST_F(EtcdFleet, RelayProcessReadsPolicyFromEtcd) {
  EtcdCluster etcd(1);
  push_ok(etcd, policy_text());
  uint16_t mport = sshring::testing::free_port();
  sshring::testing::Process::Options o;
  o.stderr_path = dir_.file("relay.log");
  sshring::testing::Process relay(
      std::vector<std::string>{sshring::testing::sshring_bin(), "relay", "--listen", "127.0.0.1:0",
                               "--metrics", "127.0.0.1:" + std::to_string(mport), "--cache-dir",
                               dir_.file("cache"), "--relay-id", "r1"} +
          etcd.flags("sshring-relay"),
      o);
  ASSERT_TRUE(sshring::testing::wait_for_port("127.0.0.1", mport, 30s))
      << sshring::testing::read_file(dir_.file("relay.log"));
  std::string m;
  ASSERT_TRUE(eventually([&] {
    sshring::testing::sh("curl -s http://127.0.0.1:" + std::to_string(mport) + "/metrics", &m);
    return m.find("sshring_policy_source_up 1") != std::string::npos;
  })) << m
      << sshring::testing::read_file(dir_.file("relay.log"));
  EXPECT_NE(m.find("sshring_policy_source_revision"), std::string::npos);
  EXPECT_NE(m.find("sshring_policy_source_staleness_seconds"), std::string::npos);
  auto scrape = [&] {
    sshring::testing::sh("curl -s http://127.0.0.1:" + std::to_string(mport) + "/metrics", &m);
    return m;
  };
  // etcd away: the relay keeps serving and says so; etcd back: it resyncs by itself.
  etcd.stop_all();
  ASSERT_TRUE(
      eventually([&] { return scrape().find("sshring_policy_source_up 0") != std::string::npos; }, 60s))
      << m;
  EXPECT_TRUE(relay.running());
  etcd.start_all();
  ASSERT_TRUE(etcd.wait_healthy());
  ASSERT_FALSE(grant_add(etcd, "10.1.5.0/24").empty());
  ASSERT_TRUE(
      eventually([&] { return scrape().find("sshring_policy_source_up 1") != std::string::npos; }, 60s))
      << m << sshring::testing::read_file(dir_.file("relay.log"));
  EXPECT_TRUE(std::ifstream(cached_snapshot_path(dir_.file("cache"),
                                                 "etcd://" + etcd.endpoint(0).substr(8) + "/sshring"))
                  .good());
}

}  // namespace
}  // namespace sshring::policy
