// Policy decision speed at scale: authorize and classify_flow against a snapshot of 10,000 role
// target rules, 10,000 principals, 1,000 static opt_out rules and 10,000 grants; snapshot build time.
// Every decision benchmark also reports p50/p99/max of single calls (steady_clock around each call,
// ~20 ns of clock overhead included) and heap allocations per decision (global operator new counted).
//
// Run:  ninja -C build policy_speed_test && build/bench/policy/policy_speed_test --benchmark_min_time=0.5
// Sample output (2 shared vCPUs, RelWithDebInfo; see bench/policy/RESULTS.md):
//   BM_Authorize              257 ns   allocs_per_op=0 allowed_pct=67.8 p50_ns=210 p99_ns=550
//   BM_ClassifyFlow           260 ns   allocs_per_op=0 approved_pct=25.1 p50_ns=221 p99_ns=471
//   BM_ClassifyFlowThroughput 229 ns
//   BM_SnapshotBuild         36.7 ms  grants=10k rules=11k
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <new>
#include <random>

#include "policy/snapshot.h"

namespace {
std::atomic<uint64_t> g_allocs{0};
}  // namespace

void* operator new(std::size_t n) {
  g_allocs.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  return operator new(n);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}

namespace {

using namespace sshring::policy;

constexpr int kRoles = 1000;
constexpr int kTargetsPerRole = 10;  // 10,000 target rules
constexpr int kPrincipals = 10000;
constexpr int kOptOut = 1000;
constexpr int kGrants = 10000;
constexpr UnixSeconds kNow = 1800000000;

IpAddr v4(uint32_t x) {
  return IpAddr::v4(x);
}
Cidr prefix(uint32_t addr, unsigned len) {
  uint32_t mask = len == 0 ? 0 : ~uint32_t{0} << (32 - len);
  return Cidr{v4(addr & mask), static_cast<uint8_t>(len)};
}

struct World {
  std::shared_ptr<Policy> policy = std::make_shared<Policy>();
  std::vector<Grant> grants;
  std::vector<std::string> fingerprints;
};

World& world() {
  static World w = [] {
    World w;
    std::mt19937 rng(1);
    auto r = [&](uint32_t n) { return std::uniform_int_distribution<uint32_t>(0, n - 1)(rng); };
    Policy& p = *w.policy;
    p.relays = {prefix(0x0a000000, 28)};
    p.hosts = {HostGroup{"all", {prefix(0x0a000000, 8)}, PortSet::single(22)}};
    for (int i = 0; i < kRoles; ++i) {
      Role role;
      role.name = "role" + std::to_string(i);
      for (int t = 0; t < kTargetsPerRole; ++t) {
        Target tg;
        tg.cidrs = {prefix(0x0a000000 | r(1u << 24), 16 + r(17))};
        tg.ports = PortSet({{22, 22}, {2200, static_cast<uint16_t>(2200 + r(10))}});
        if (t == 0) tg.names = {"*.svc" + std::to_string(i) + ".example.com"};
        role.targets.push_back(tg);
      }
      if (i % 3 == 0)
        role.windows.push_back(Window{0x3e, 8 * 60, 20 * 60, "Mon-Fri", "UTC", TimeZone::utc()});
      role.max_sessions = 10;
      p.roles.push_back(std::move(role));
    }
    for (int i = 0; i < kPrincipals; ++i) {
      Principal pr;
      pr.name = "user" + std::to_string(i);
      for (int k = 0, n = 1 + static_cast<int>(r(3)); k < n; ++k) {
        std::string rn = "role" + std::to_string(r(kRoles));
        if (std::find(pr.roles.begin(), pr.roles.end(), rn) == pr.roles.end()) pr.roles.push_back(rn);
      }
      std::array<uint8_t, 32> raw{};
      for (auto& b : raw) b = static_cast<uint8_t>(r(256));
      pr.keys.push_back(ed25519_key(raw, pr.name));
      w.fingerprints.push_back(pr.keys.back().fingerprint);
      p.principals.push_back(std::move(pr));
    }
    for (int i = 0; i < kOptOut; ++i) {
      OptOutRule o;
      o.id = "rule" + std::to_string(i);
      o.who_roles = {"role" + std::to_string(r(kRoles))};
      o.from = {prefix(0x0b000000 | r(1u << 24), 16 + r(9))};
      o.to_cidrs = {prefix(0x0a000000 | r(1u << 24), 16 + r(9))};
      o.max_ttl_seconds = 3600;
      o.expires = kNow - 1000 + r(2000);
      o.standing = i % 2 != 0;  // half approve by themselves, half only through grants
      p.opt_out.push_back(std::move(o));
    }
    for (int i = 0; i < kGrants; ++i) {
      Grant g;
      char id[16];
      std::snprintf(id, sizeof id, "g-%012x", i);
      g.id = id;
      g.who = "user" + std::to_string(r(kPrincipals));
      g.from = prefix(0x0b000000 | r(1u << 24), 16 + r(17));
      g.to = prefix(0x0a000000 | r(1u << 24), 16 + r(17));
      g.rule = "rule" + std::to_string(r(kOptOut));
      g.created = kNow - 3600;
      g.expires = kNow - 1800 + r(3600);
      w.grants.push_back(std::move(g));
    }
    return w;
  }();
  return w;
}

std::shared_ptr<const Snapshot> snapshot() {
  static auto s = Snapshot::build(world().policy, world().grants);
  return s;
}

void report_latency(benchmark::State& state, std::vector<uint64_t>& ns, uint64_t allocs, uint64_t calls) {
  std::sort(ns.begin(), ns.end());
  state.counters["p50_ns"] = static_cast<double>(ns[ns.size() / 2]);
  state.counters["p99_ns"] = static_cast<double>(ns[ns.size() * 99 / 100]);
  state.counters["max_ns"] = static_cast<double>(ns.back());
  state.counters["allocs_per_op"] = static_cast<double>(allocs) / static_cast<double>(calls);
}

void BM_Authorize(benchmark::State& state) {
  auto s = snapshot();
  const World& w = world();
  std::mt19937 rng(2);
  struct Q {
    std::string principal;
    std::string fp;
    std::string name;
    IpAddr addr;
  };
  std::vector<Q> qs;
  for (int i = 0; i < 4096; ++i) {
    uint32_t pi = rng() % kPrincipals;
    const Principal& pr = w.policy->principals[pi];
    const Role* role = w.policy->find_role(pr.roles[0]);
    // Mostly addresses inside one of the principal's targets (allowed paths), some random ones.
    IpAddr addr =
        i % 4 ? role->targets[rng() % kTargetsPerRole].cidrs[0].addr : v4(0x0a000000 | (rng() & 0xffffff));
    std::string name = i % 8 == 0 ? "db.svc" + std::to_string(rng() % kRoles) + ".example.com" : "";
    qs.push_back({pr.name, i % 16 ? w.fingerprints[pi] : "SHA256:nope", name, addr});
  }
  std::vector<uint64_t> ns;
  ns.reserve(1 << 20);
  uint64_t allocs = 0, calls = 0, allowed = 0;
  size_t i = 0;
  for (auto _ : state) {
    const Q& q = qs[i++ & 4095];
    AuthzRequest r;
    r.principal = q.principal;
    r.key_fingerprint = q.fp;
    r.source = v4(0x0b000001);
    r.target_name = q.name;
    r.target = q.addr;
    r.port = 22;
    r.now = kNow;
    uint64_t a0 = g_allocs.load(std::memory_order_relaxed);
    auto t0 = std::chrono::steady_clock::now();
    Decision d = s->authorize(r);
    auto t1 = std::chrono::steady_clock::now();
    allocs += g_allocs.load(std::memory_order_relaxed) - a0;
    benchmark::DoNotOptimize(d);
    allowed += d.allowed;
    ++calls;
    if (ns.size() < ns.capacity()) ns.push_back(static_cast<uint64_t>((t1 - t0).count()));
  }
  state.counters["allowed_pct"] = 100.0 * static_cast<double>(allowed) / static_cast<double>(calls);
  report_latency(state, ns, allocs, calls);
}
BENCHMARK(BM_Authorize);

void BM_ClassifyFlow(benchmark::State& state) {
  auto s = snapshot();
  const World& w = world();
  std::mt19937 rng(3);
  struct Q {
    IpAddr src, dst;
  };
  std::vector<Q> qs;
  for (int i = 0; i < 4096; ++i) {
    if (i % 2) {  // inside some grant
      const Grant& g = w.grants[rng() % kGrants];
      qs.push_back({g.from.addr, g.to.addr});
    } else {
      qs.push_back({v4(0x0b000000 | (rng() & 0xffffff)), v4(0x0a000000 | (rng() & 0xffffff))});
    }
  }
  std::vector<uint64_t> ns;
  ns.reserve(1 << 20);
  uint64_t allocs = 0, calls = 0;
  uint64_t tags[5] = {};
  size_t i = 0;
  for (auto _ : state) {
    const Q& q = qs[i++ & 4095];
    uint64_t a0 = g_allocs.load(std::memory_order_relaxed);
    auto t0 = std::chrono::steady_clock::now();
    FlowClass fc = s->classify_flow(q.src, q.dst, 22, kNow);
    auto t1 = std::chrono::steady_clock::now();
    allocs += g_allocs.load(std::memory_order_relaxed) - a0;
    benchmark::DoNotOptimize(fc);
    tags[static_cast<int>(fc.tag)]++;
    ++calls;
    if (ns.size() < ns.capacity()) ns.push_back(static_cast<uint64_t>((t1 - t0).count()));
  }
  state.counters["approved_pct"] = 100.0 * static_cast<double>(tags[2]) / static_cast<double>(calls);
  state.counters["expired_pct"] = 100.0 * static_cast<double>(tags[3]) / static_cast<double>(calls);
  report_latency(state, ns, allocs, calls);
}
BENCHMARK(BM_ClassifyFlow);

// Throughput without per-call clocks: the mean cost of a decision in a tight loop.
void BM_ClassifyFlowThroughput(benchmark::State& state) {
  auto s = snapshot();
  std::mt19937 rng(4);
  std::vector<std::pair<IpAddr, IpAddr>> qs;
  for (int i = 0; i < 4096; ++i) {
    const Grant& g = world().grants[rng() % kGrants];
    qs.emplace_back(g.from.addr, i % 2 ? g.to.addr : v4(0x0a000000 | (rng() & 0xffffff)));
  }
  size_t i = 0;
  for (auto _ : state) {
    const auto& q = qs[i++ & 4095];
    benchmark::DoNotOptimize(s->classify_flow(q.first, q.second, 22, kNow));
  }
}
BENCHMARK(BM_ClassifyFlowThroughput);

void BM_SnapshotBuild(benchmark::State& state) {
  const World& w = world();
  for (auto _ : state) {
    auto s = Snapshot::build(w.policy, w.grants);
    benchmark::DoNotOptimize(s);
  }
  state.counters["rules"] = kRoles * kTargetsPerRole + kOptOut;
  state.counters["grants"] = kGrants;
}
BENCHMARK(BM_SnapshotBuild)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
