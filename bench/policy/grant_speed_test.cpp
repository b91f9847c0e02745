// Snapshot build with 10,000 signed grants, as every reader does it (Snapshot::build_checked):
// SSHSIG verification of each request and decision against the policy's keys, the rule re-check and
// approval counting, then the compile. Two shapes: grants under a rule needing no approval (one
// signature each) and under a two-approver rule (three signatures each); each cold (no cache: every
// signature verified) and warm (the reloader's SignatureCache: an unchanged grant is not verified
// again, as on a reload after one new grant).
//
// Run:  ninja -C build grant_speed_test && build/bench/policy/grant_speed_test --benchmark_min_time=1
// Sample output (2 vCPUs, RelWithDebInfo, quiet machine; medians in BENCHMARKS.md):
//   BM_BuildChecked/sigs:1/cache:0/process_time/real_time   1167 ms   2232 ms   per_grant=116.686us
//   BM_BuildChecked/sigs:3/cache:0/process_time/real_time   3341 ms   6337 ms   per_grant=334.097us
//   BM_BuildChecked/sigs:1/cache:1/process_time/real_time    108 ms    149 ms   per_grant=10.8067us
//   BM_BuildChecked/sigs:3/cache:1/process_time/real_time    247 ms    365 ms   per_grant=24.6725us
//   BM_Ed25519Verify/real_time/threads:1                     203 us    202 us
//   BM_Ed25519Verify/real_time/threads:2                     102 us    204 us
//   (wall, then CPU of the whole process)
#include <benchmark/benchmark.h>

#include <memory>
#include <string>
#include <vector>

#include "policy/grant.h"
#include "policy/snapshot.h"
#include "policy/sshsig.h"
#include "protocol/keys.h"

namespace protocol = sshring::protocol;

namespace {

using namespace sshring::policy;

constexpr int kGrants = 10000;
constexpr int kPrincipals = 1000;
constexpr UnixSeconds kNow = 1800000000;

struct Signer {
  std::shared_ptr<protocol::Ed25519PrivateKey> key;
  SshsigSigner s;
};

Signer make_signer(const std::string& name) {
  Signer out;
  out.key = std::make_shared<protocol::Ed25519PrivateKey>(protocol::Ed25519PrivateKey::generate());
  auto k = out.key;
  out.s = SshsigSigner{ed25519_key(k->public_key(), name), [k](std::string_view d) {
                         auto sig = k->sign(d);
                         return std::string(reinterpret_cast<const char*>(sig.data()), sig.size());
                       }};
  return out;
}

struct World {
  std::shared_ptr<const Policy> policy;
  std::vector<SignedGrant> one_sig;     // under "direct" (no approval)
  std::vector<SignedGrant> three_sigs;  // under "approved" (two approvals)
};

const World& world() {
  static const World w = [] {
    World w;
    auto p = std::make_shared<Policy>();
    std::vector<Signer> people;
    p->roles.push_back(Role{"eng", {Target{{*Cidr::parse("10.0.0.0/8")}, {}, PortSet::single(22)}}, {}, {}});
    p->roles.push_back(Role{"sec", {Target{{*Cidr::parse("10.0.0.0/8")}, {}, PortSet::single(22)}}, {}, {}});
    for (int i = 0; i < kPrincipals; ++i) {
      std::string name = "user" + std::to_string(i);
      people.push_back(make_signer(name));
      p->principals.push_back(Principal{name, {i < 10 ? "sec" : "eng"}, {people.back().s.key}});
    }
    for (const char* id : {"direct", "approved"}) {
      OptOutRule r;
      r.id = id;
      r.who_roles = {"eng"};
      r.from = {*Cidr::parse("11.0.0.0/8")};
      r.to_cidrs = {*Cidr::parse("10.0.0.0/8")};
      r.max_ttl_seconds = 8 * 3600;
      r.require_reason = false;
      r.expires = kNow + 86400;
      if (std::string(id) == "approved") {
        r.approvals_count = 2;
        r.approvers.roles = {"sec"};
      }
      p->opt_out.push_back(std::move(r));
    }
    w.policy = p;
    for (int i = 0; i < kGrants; ++i) {
      for (int shape = 0; shape < 2; ++shape) {
        const int who = 10 + i % (kPrincipals - 10);
        SignedGrant g;
        GrantRequest& r = g.request;
        char id[16];
        std::snprintf(id, sizeof id, "g-%012x", i);
        r.id = id;
        r.who = r.requester = "user" + std::to_string(who);
        r.rule = shape ? "approved" : "direct";
        r.from =
            *Cidr::parse("11." + std::to_string(i % 256) + "." + std::to_string(i / 256 % 256) + ".0/24");
        r.to = *Cidr::parse("10." + std::to_string(i % 200) + ".0.0/16");
        r.ttl_seconds = 3600;
        r.created = kNow - 600;
        sign_request(g, people[who].s);
        if (shape) {
          for (int a : {i % 10, (i + 1) % 10}) {
            GrantDecision d{DecisionKind::kApprove, "user" + std::to_string(a), kNow - 500, {}, {}, {}, {}};
            sign_decision(r, d, people[a].s);
            g.decisions.push_back(std::move(d));
          }
          w.three_sigs.push_back(std::move(g));
        } else {
          w.one_sig.push_back(std::move(g));
        }
      }
    }
    return w;
  }();
  return w;
}

void BM_BuildChecked(benchmark::State& state) {
  const World& w = world();
  const auto& grants = state.range(0) == 1 ? w.one_sig : w.three_sigs;
  const bool cached = state.range(1) != 0;
  SignatureCache cache;
  if (cached) (void)Snapshot::build_checked(w.policy, grants, kNow, &cache);  // warm: the previous reload
  size_t active = 0;
  for (auto _ : state) {
    auto s = Snapshot::build_checked(w.policy, grants, kNow, cached ? &cache : nullptr);
    active = s->live_grants(kNow);
    benchmark::DoNotOptimize(s);
  }
  if (active != grants.size()) state.SkipWithError("not every grant was active: the check refused some");
  state.counters["grants"] = static_cast<double>(grants.size());
  // Seconds per grant (printed with an SI prefix: 85u = 85 us).
  state.counters["per_grant"] =
      benchmark::Counter(static_cast<double>(grants.size()),
                         benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_BuildChecked)
    ->ArgsProduct({{1, 3}, {0, 1}})
    ->ArgNames({"sigs", "cache"})
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime();

// The peer: OpenSSL's Ed25519 verification alone (ed25519_verify_raw, as the grant check calls it), on
// one thread and on two. A cold build verifies one signature per grant, so 10,000 times this is the
// floor no build can beat on this machine's cores; the report gives the build as a ratio to it.
// Time is wall time per verification (with two threads: over both, so 1 / throughput).
void BM_Ed25519Verify(benchmark::State& state) {
  static const auto* sample = [] {
    auto* s = new std::pair<Signer, std::string>{make_signer("peer"), {}};
    s->second = std::string(200, 'x');
    return s;
  }();
  static const std::string sig = sample->first.s.sign_raw(sample->second);
  for (auto _ : state) {
    if (!ed25519_verify_raw(sample->first.s.key, sample->second, sig)) state.SkipWithError("did not verify");
  }
}
BENCHMARK(BM_Ed25519Verify)->Unit(benchmark::kMicrosecond)->Threads(1)->Threads(2)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
