// What one grant change costs a consumer (relay or agent on etcd) as the store grows: the Reloader's
// reload from its SnapshotSource after one grant was added, with 10,000 live grants plus 0, 10,000 or
// 100,000 expired ones (a fleet keeps expired and revoked grants for their retention period, so flows
// that used them are tagged bypass_expired).
//
//   memo:1   the Reloader as shipped: reload() = read the source, reuse the checks of unchanged grants
//            (GrantMemo), compile the snapshot, publish; with cache:1 also the disk cache write.
//   memo:0   the peer in the same run: what every reload did before the memo, i.e. parse the policy
//            and every grant's JSON, check every grant (signatures from a warm SignatureCache, so no
//            Ed25519 math), compile.
//
// Run:  ninja -C build reload_speed_test && build/bench/policy/reload_speed_test  (results: RESULTS.md)
// Setup signs the grants once (about 50 us each) and makes the first, cold build (every signature
// verified), which takes a while at 110,000 grants; the timed loop is the reload after one change.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "policy/cache.h"
#include "policy/parser.h"
#include "tests/policy/grant_fixture.h"

namespace {

using namespace sshring::policy;
namespace t = sshring::policy::testing;

UnixSeconds unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

const t::Person& bot() {
  static const t::Person p = t::person("ci-bot");
  return p;
}

std::string policy_text() {
  return "version: 1\nrelays: [10.0.0.0/28]\nhosts: [{name: web, cidrs: [10.1.0.0/16]}]\n"
         "roles: [{name: ci, targets: [{cidrs: [10.1.0.0/16]}]}]\nprincipals: [{name: ci-bot, roles: [ci], "
         "keys: [\"" +
         bot().key_line() +
         "\"]}]\n"
         "opt_out:\n  - {id: ci-direct, who: {roles: [ci]}, from: [10.2.0.0/16], to: {cidrs: [10.0.0.0/8]}, "
         "max_ttl: 8h, expires: 2099-01-01T00:00:00Z}\n";
}

// The text a store holds for grant i (what EtcdGrantStore::add writes).
std::string grant_text(int i, UnixSeconds now, bool expired) {
  char id[16];
  std::snprintf(id, sizeof id, "g-%012x", i);
  std::string to = "10.1." + std::to_string((i >> 8) & 255) + "." + std::to_string(i & 255) + "/32";
  auto r = t::request_for("ci-bot", "ci-direct", "10.2.0.0/16", to.c_str(), 3 * 3600,
                          expired ? now - 4 * 3600 : now - 60);
  r.reason = "bench";
  return signed_grant_to_json(t::signed_by(bot(), std::move(r), id)).dump();
}

const std::vector<GrantText>& all_texts() {
  static const std::vector<GrantText> v = [] {
    std::vector<GrantText> out;
    const UnixSeconds now = unix_now();
    for (int i = 0; i < 10000; ++i)
      out.push_back(std::make_shared<const std::string>(grant_text(i, now, false)));
    for (int i = 0; i < 100000; ++i)
      out.push_back(std::make_shared<const std::string>(grant_text(10000 + i, now, true)));
    for (int i = 0; i < 64; ++i)
      out.push_back(std::make_shared<const std::string>(grant_text(200000 + i, now, false)));  // the changes
    return out;
  }();
  return v;
}

// An in-memory store: the grants, and which extra one is in it.
class MemorySource final : public SnapshotSource {
 public:
  MemorySource(size_t expired, size_t* extra) : expired_(expired), extra_(extra) {}
  void start(std::function<void()>) override {}
  void stop() override {}
  SourceData read() override {
    const auto& all = all_texts();
    SourceData d;
    d.policy_text = policy_text();
    d.policy_origin = "bench";
    d.grants.assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(10000 + expired_));
    d.grants.push_back(all[110000 + *extra_ % 64]);
    d.revision = static_cast<int64_t>(*extra_) + 1;
    return d;
  }
  [[nodiscard]] Status status() const override { return {true, 1, unix_now()}; }
  [[nodiscard]] std::string id() const override { return "memory://bench"; }

 private:
  size_t expired_;
  size_t* extra_;
};

void BM_ReloadOneChange(benchmark::State& state) {
  const size_t expired = static_cast<size_t>(state.range(0));
  const bool memo = state.range(1) != 0;
  const bool disk = state.range(2) != 0;
  if (!memo && disk) {
    state.SkipWithError("the peer has no disk cache variant");
    return;
  }
  size_t extra = 0;
  auto source = std::make_shared<MemorySource>(expired, &extra);
  char dir[] = "/tmp/sshring-reload-bench-XXXXXX";
  if (!::mkdtemp(dir)) {
    state.SkipWithError("mkdtemp");
    return;
  }
  PolicyCache cache;
  ReloaderOptions o;
  o.source = source;
  o.cache_dir = disk ? dir : "";
  o.watch = false;
  o.handle_sighup = false;
  Reloader reloader(cache, o);
  SignatureCache signatures;
  std::string error;
  auto peer_build = [&] {
    SourceData d = source->read();
    auto p = std::make_shared<const Policy>(parse_policy(d.policy_text, d.policy_origin));
    std::vector<SignedGrant> grants;
    grants.reserve(d.grants.size());
    for (const auto& text : d.grants) grants.push_back(signed_grant_from_json(nlohmann::json::parse(*text)));
    return Snapshot::build_checked(std::move(p), grants, unix_now(), &signatures);
  };
  // The first, cold build (every signature verified), not timed.
  if (memo && !reloader.reload(&error)) state.SkipWithError(error.c_str());
  if (!memo) (void)peer_build();
  size_t grants = 0;
  for (auto _ : state) {
    ++extra;  // one grant replaced by another: one added, one gone
    if (memo) {
      if (!reloader.reload(&error)) {
        state.SkipWithError(error.c_str());
        break;
      }
      grants = cache.current()->grants().size();
    } else {
      grants = peer_build()->grants().size();
    }
  }
  if (grants != 10000 + expired + 1) state.SkipWithError("not every grant was honoured");
  state.counters["grants"] = static_cast<double>(grants);
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_ReloadOneChange)
    ->ArgsProduct({{0, 10000, 100000}, {0, 1}, {0, 1}})
    ->ArgNames({"expired", "memo", "cache"})
    ->Unit(benchmark::kMillisecond)
    ->Iterations(5)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
