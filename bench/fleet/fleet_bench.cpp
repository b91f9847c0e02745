// Fleet control plane at scale: a 3-member etcd (TLS, client-certificate auth, deploy/etcd roles) on
// loopback, W watch streams through one `etcd grpc-proxy`, R real consumers (EtcdSource + Reloader,
// what relays and agents run) on the members, G live grants (and X expired ones) in the store.
// Measures grant-add-to-visible latency p50/p99 at the proxied watchers and at the real consumers,
// grant add throughput (EtcdGrantStore::add, sequential and 8 writers), etcd RSS and DB size, and the
// lease count.
//
// Run:  ninja -C build fleet_bench && build/bench/fleet/fleet_bench [--watchers 1000] [--grants 10000]
//         [--expired 0] [--consumers 3] [--events 50]
// Sample output (2 shared vCPUs at load 30-43; see bench/fleet/RESULTS.md):
//   grants: 2000 live in 20.5 s (97/s sequential), 8 writers: 149/s
//   proxied watchers (1000): p50 107.0 ms p99 518.7 ms max 704.1 ms over 30 events (30000 deliveries)
//   consumers (3, snapshot published): p50 171.9 ms p99 380.3 ms (90 deliveries)
//   etcd RSS per member: 59 / 59 / 58 MiB; db size 1.3 MiB; proxy RSS 76 MiB; found 1 leases
//   nonce claim (Txn create-if-absent + lease, 300 sequential): p50 6.19 ms p99 15.85 ms
#include <signal.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "policy/cache.h"
#include "policy/etcd/client.h"
#include "policy/etcd/nonce_claims.h"
#include "policy/etcd/source.h"
#include "policy/etcd/store.h"
#include "tests/policy/etcd_cluster.h"
#include "tests/policy/grant_fixture.h"
#include "tests/support/process.h"

namespace {

using namespace sshring;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

struct Args {
  int watchers = 1000;
  int grants = 10000;
  int expired = 0;
  int consumers = 3;
  int events = 50;
  bool claims_only = false;  // --claims-only 1: just the nonce claims, at 4, 16 and 32 threads
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    int v = std::atoi(argv[i + 1]);
    if (k == "--watchers")
      a.watchers = v;
    else if (k == "--grants")
      a.grants = v;
    else if (k == "--expired")
      a.expired = v;
    else if (k == "--consumers")
      a.consumers = v;
    else if (k == "--events")
      a.events = v;
    else if (k == "--claims-only")
      a.claims_only = v != 0;
  }
  return a;
}

std::shared_ptr<policy::etcd::Client> client(const testing::EtcdCluster& c, const std::string& user,
                                             const std::string& endpoints) {
  policy::etcd::ClientOptions o;
  policy::etcd::parse_endpoints(endpoints, &o);
  if (o.tls) {
    o.ca_file = c.ca();
    o.cert_file = c.cert(user);
    o.key_file = c.key(user);
  }
  return std::make_shared<policy::etcd::Client>(o);
}

// ci-bot signs every grant, with a key the bench policy lists (readers honour only signed grants).
const policy::testing::Person& ci_bot() {
  static const policy::testing::Person p = policy::testing::person("ci-bot");
  return p;
}

policy::SignedGrant grant(int i, policy::UnixSeconds now, bool expired, const std::string& net = "10.1") {
  char id[16];
  std::snprintf(id, sizeof id, "g-%012x", i);
  std::string to = net + "." + std::to_string((i >> 8) & 255) + "." + std::to_string(i & 255) + "/32";
  auto r = policy::testing::request_for("ci-bot", "ci-direct", "10.2.0.0/16", to.c_str(), 3 * 3600,
                                        expired ? now - 4 * 3600 : now);
  r.reason = "bench";
  return policy::testing::signed_by(ci_bot(), std::move(r), id);
}

policy::UnixSeconds unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

long rss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  return -1;
}

std::string bench_policy() {
  return "version: 1\nrelays: [10.0.0.0/28]\nhosts: [{name: web, cidrs: [10.1.0.0/16]}]\n"
         "roles: [{name: ci, targets: [{cidrs: [10.1.0.0/16]}]}]\nprincipals: [{name: ci-bot, roles: [ci], "
         "keys: [\"" +
         ci_bot().key_line() +
         "\"]}]\n"
         "opt_out:\n  - {id: ci-direct, who: {roles: [ci]}, from: [10.2.0.0/16], to: {cidrs: [10.0.0.0/8]}, "
         "max_ttl: 8h, expires: 2099-01-01T00:00:00Z}\n";
}

// Put-time of each measured key, and when each watcher saw it.
struct Timeline {
  std::mutex mu;
  std::map<std::string, Clock::time_point> put_at;
  std::vector<double> watcher_ms;
  std::vector<double> consumer_ms;
  void seen(const std::string& key, std::vector<double>* into) {
    auto now = Clock::now();
    std::lock_guard lock(mu);
    auto it = put_at.find(key);
    if (it != put_at.end())
      into->push_back(std::chrono::duration<double, std::milli>(now - it->second).count());
  }
};

void fill(const testing::EtcdCluster& etcd, policy::etcd::EtcdGrantStore& store, const Args& a) {
  auto t0 = Clock::now();
  const auto now = unix_now();
  for (int i = 0; i < a.grants; ++i) store.add(grant(i, now, false));
  double s = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf("grants: %d live in %.1f s (%.0f/s sequential)", a.grants, s, a.grants / s);
  if (a.expired == 0) {
    std::printf("\n");
    return;
  }
  // The expired ones go in 100 per Txn, each create-if-absent and under its hour bucket's lease as
  // EtcdGrantStore::add stores them (the first is added by it, which makes the bucket's lease): one
  // by one, 100,000 would take over ten minutes here.
  t0 = Clock::now();
  store.add(grant(a.grants, now, true));
  policy::etcd::Keys keys("/sshring");
  auto c = client(etcd, "sshring-grant", etcd.endpoints());
  const int64_t lease = c->get(keys.grant(grant(a.grants, now, true).id())).kvs.at(0).lease;
  constexpr int kPerTxn = 100;
  for (int i = 1; i < a.expired; i += kPerTxn) {
    std::vector<policy::etcd::Compare> cmps;
    std::vector<policy::etcd::Op> ops;
    for (int j = i; j < std::min(a.expired, i + kPerTxn); ++j) {
      auto g = grant(a.grants + j, now, true);
      const std::string key = keys.grant(g.id());
      cmps.push_back({key, policy::etcd::Compare::Target::kCreate, 0});
      ops.push_back({policy::etcd::Op::Kind::kPut, key, policy::signed_grant_to_json(g).dump(), lease});
    }
    if (!c->txn(cmps, ops).succeeded) throw std::runtime_error("an expired grant already existed");
  }
  std::printf("; %d expired in %.1f s (%d per Txn)\n", a.expired,
              std::chrono::duration<double>(Clock::now() - t0).count(), kPerTxn);
}

void parallel_adds(const testing::EtcdCluster& etcd, int base, int n) {
  auto t0 = Clock::now();
  std::vector<std::thread> ts;
  for (int w = 0; w < 8; ++w) {
    ts.emplace_back([&, w] {
      policy::etcd::EtcdGrantStore s(client(etcd, "sshring-grant", etcd.endpoints()), "/sshring");
      for (int i = w; i < n; i += 8) s.add(grant(base + i, unix_now(), false));
    });
  }
  for (auto& t : ts) t.join();
  std::printf("grant add throughput, 8 writers: %.0f/s\n",
              n / std::chrono::duration<double>(Clock::now() - t0).count());
}

// The design candidate for cross-relay replay protection: each handshake claims its nonce with a
// create-if-absent Txn under one shared lease (the preamble's freshness window). This is the cost a
// handshake would pay, measured with the relay role's credentials.
void nonce_cost(const testing::EtcdCluster& etcd) {
  auto c = client(etcd, "sshring-relay", etcd.endpoints());
  int64_t lease = c->lease_grant(120);
  std::vector<double> ms;
  for (int i = 0; i < 300; ++i) {
    std::string key = "/sshring/sessions/nonces/r1/" + std::to_string(i);
    auto t0 = Clock::now();
    auto t = c->txn({{key, policy::etcd::Compare::Target::kCreate, 0}},
                    {{policy::etcd::Op::Kind::kPut, key, "", lease}});
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    if (!t.succeeded) std::printf("nonce %d: unexpected replay\n", i);
  }
  std::printf("nonce claim (Txn create-if-absent + lease, 300 sequential): p50 %.2f ms p99 %.2f ms\n",
              pct(ms, 0.5), pct(ms, 0.99));
}

// What the relay runs (EtcdNonceClaims: 4 claim threads, one shared lease per window): claims per
// second with 64 handshakes waiting on a claim at once, and each claim's latency.
void claims_throughput(const testing::EtcdCluster& etcd, size_t threads) {
  policy::etcd::EtcdNonceClaims claims(client(etcd, "sshring-relay", etcd.endpoints()), "/sshring",
                                       {.threads = threads});
  claims.start();
  constexpr int kClaims = 3000, kInFlight = 64;
  std::mutex mu;
  std::condition_variable cv;
  int outstanding = 0, fresh = 0;
  std::vector<double> ms;
  ms.reserve(kClaims);
  std::mt19937_64 rng(std::random_device{}());  // new nonces each run: all must be fresh
  const auto t0 = Clock::now();
  for (int i = 0; i < kClaims; ++i) {
    std::array<uint8_t, 16> nonce;
    for (auto& b : nonce) b = static_cast<uint8_t>(rng());
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return outstanding < kInFlight; });
      ++outstanding;
    }
    const auto start = Clock::now();
    claims.claim("bench", "ci-bot", nonce, [&, start](policy::NonceClaims::Result r) {
      std::lock_guard lock(mu);
      ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
      if (r == policy::NonceClaims::Result::kFresh) ++fresh;
      --outstanding;
      cv.notify_all();
    });
  }
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return outstanding == 0; });
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf(
      "nonce claims as the relay makes them (%d, %d in flight, %zu threads): %.0f/s, p50 %.2f ms p99 %.2f "
      "ms, "
      "%d fresh\n",
      kClaims, kInFlight, threads, kClaims / s, pct(ms, 0.5), pct(ms, 0.99), fresh);
}

}  // namespace

int run(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  Args a = parse(argc, argv);
  testing::EtcdCluster etcd(3);
  if (a.claims_only) {
    nonce_cost(etcd);
    for (size_t t : {4, 16, 32}) claims_throughput(etcd, t);
    return 0;
  }
  auto admin = client(etcd, "sshring-policy", etcd.endpoints());
  policy::etcd::Keys keys("/sshring");
  policy::etcd::push_policy(*admin, keys, bench_policy(), "bench", unix_now(), 0);
  policy::etcd::EtcdGrantStore store(client(etcd, "sshring-grant", etcd.endpoints()), "/sshring");
  fill(etcd, store, a);
  parallel_adds(etcd, 1 << 24, 800);

  // One grpc-proxy in front of the members; the watchers connect to it in plain text on loopback.
  // etcd 3.4's proxy refuses a client certificate with a CN (it would act as that user for every
  // client), so it gets a CN-less certificate and the watchers authenticate with a password user
  // (the proxy forwards their token).
  const std::string d = etcd.dir();
  testing::sh("cd " + d +
              " && (openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
              "-subj /O=sshring-proxy -keyout proxy-key.pem -out proxy.csr && printf "
              "'extendedKeyUsage=clientAuth\\n' > proxy.ext && openssl x509 -req -in proxy.csr -CA ca.pem "
              "-CAkey ca-key.pem -CAcreateserial -days 2 -extfile proxy.ext -out proxy.pem) >/dev/null 2>&1");
  etcd.etcdctl("user add bench-watch --new-user-password=bench-pw");
  etcd.etcdctl("user grant-role bench-watch sshring-agent");
  uint16_t proxy_port = testing::free_port();
  testing::Process::Options po;
  po.stderr_path = etcd.dir() + "/proxy.log";
  testing::Process proxy({"etcd", "grpc-proxy", "start", "--endpoints", etcd.endpoints(), "--listen-addr",
                          "127.0.0.1:" + std::to_string(proxy_port), "--cacert", etcd.ca(), "--cert",
                          d + "/proxy.pem", "--key", d + "/proxy-key.pem"},
                         po);
  if (!testing::wait_for_port("127.0.0.1", proxy_port, 60s)) {
    std::printf("grpc-proxy did not listen:\n%s\n", testing::read_file(etcd.dir() + "/proxy.log").c_str());
    return 1;
  }
  policy::etcd::ClientOptions po_opts;
  policy::etcd::parse_endpoints("127.0.0.1:" + std::to_string(proxy_port), &po_opts);
  po_opts.user = "bench-watch";
  po_opts.password = "bench-pw";
  auto via_proxy = std::make_shared<policy::etcd::Client>(po_opts);

  Timeline tl;
  std::atomic<bool> stop{false};
  std::vector<std::unique_ptr<policy::etcd::WatchStream>> streams;
  std::vector<std::thread> readers;
  for (int i = 0; i < a.watchers; ++i) streams.push_back(via_proxy->watch("/sshring/grants/", 0));
  for (auto& s : streams) {
    readers.emplace_back([&, st = s.get()] {
      policy::etcd::WatchBatch b;
      while (st->next(&b))
        for (const auto& e : b.events) tl.seen(e.kv.key, &tl.watcher_ms);
    });
  }
  // Real consumers: a snapshot is built and published per change (what a relay/agent does).
  struct Real {
    policy::PolicyCache cache;
    std::unique_ptr<policy::Reloader> rl;
  };
  std::vector<std::unique_ptr<Real>> reals;
  for (int i = 0; i < a.consumers; ++i) {
    auto r = std::make_unique<Real>();
    policy::ReloaderOptions o;
    o.source = std::make_shared<policy::etcd::EtcdSource>(client(etcd, "sshring-relay", etcd.endpoint(i % 3)),
                                                          "/sshring");
    o.cache_dir = etcd.dir() + "/cache" + std::to_string(i);
    o.handle_sighup = false;
    r->rl = std::make_unique<policy::Reloader>(r->cache, o);
    r->rl->reload_or_throw();
    r->rl->start();
    reals.push_back(std::move(r));
  }
  std::this_thread::sleep_for(2s);

  const int base = 1 << 25;
  for (int e = 0; e < a.events; ++e) {
    auto g = grant(base + e, unix_now(), false, "10.3");  // addresses no other grant covers
    {
      std::lock_guard lock(tl.mu);
      tl.put_at[keys.grant(g.id())] = Clock::now();
    }
    store.add(g);
    // Consumers: poll their published snapshot for the new grant.
    auto dst = g.request.to.addr;
    std::vector<bool> done(reals.size(), false);
    auto deadline = Clock::now() + 10s;
    size_t left = reals.size();
    while (left && Clock::now() < deadline) {
      for (size_t i = 0; i < reals.size(); ++i) {
        if (done[i]) continue;
        auto snap = reals[i]->cache.current();
        if (snap->classify_flow(*policy::IpAddr::parse("10.2.0.1"), dst, 22, unix_now()).tag ==
            policy::FlowTag::kBypassApproved) {
          done[i] = true;
          --left;
          tl.seen(keys.grant(g.id()), &tl.consumer_ms);
        }
      }
      std::this_thread::sleep_for(1ms);
    }
    std::this_thread::sleep_for(100ms);
  }
  std::this_thread::sleep_for(2s);
  for (auto& s : streams) s->cancel();
  for (auto& t : readers) t.join();
  {
    std::lock_guard lock(tl.mu);
    std::printf(
        "proxied watchers (%d): p50 %.1f ms p99 %.1f ms max %.1f ms over %d events (%zu deliveries)\n",
        a.watchers, pct(tl.watcher_ms, 0.5), pct(tl.watcher_ms, 0.99), pct(tl.watcher_ms, 1.0), a.events,
        tl.watcher_ms.size());
    std::printf("consumers (%d, snapshot published): p50 %.1f ms p99 %.1f ms (%zu deliveries)\n", a.consumers,
                pct(tl.consumer_ms, 0.5), pct(tl.consumer_ms, 0.99), tl.consumer_ms.size());
  }
  std::string out;
  etcd.etcdctl("endpoint status -w json", &out);
  double db_mib = 0;
  try {
    auto j = nlohmann::json::parse(out.substr(out.find('[')));
    for (const auto& e : j) db_mib = std::max(db_mib, e["Status"]["dbSize"].get<double>() / (1 << 20));
  } catch (const std::exception&) {
  }
  std::string leases;
  etcd.etcdctl("lease list", &leases);
  std::printf("etcd RSS per member: %ld / %ld / %ld MiB; db size %.1f MiB; proxy RSS %ld MiB; %s",
              rss_kib(etcd.pid(0)) / 1024, rss_kib(etcd.pid(1)) / 1024, rss_kib(etcd.pid(2)) / 1024, db_mib,
              rss_kib(proxy.pid()) / 1024, leases.substr(0, leases.find('\n') + 1).c_str());
  nonce_cost(etcd);
  claims_throughput(etcd, policy::etcd::NonceClaimOptions{}.threads);
  for (auto& r : reals) r->rl->stop();
  return 0;
}

// Exceptions end the run through the destructors, so the etcd members and the proxy are stopped.
int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fleet_bench: %s\n", e.what());
    return 1;
  }
}
