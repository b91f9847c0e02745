// Audit log throughput per writer: records appended per second by one thread, through to disk (each
// iteration batch ends with flush(), so the time includes write + fdatasync of every record). Batched mode
// (the relay's and agent's) with and without signed checkpoints (every 1,000 records, Ed25519), and
// fsync-each mode (the grant command's). The record is a typical session_end (~330 bytes on disk).
//
// Run:  ninja -C build audit_speed_test && build/bench/audit/audit_speed_test --benchmark_min_time=2
//       (AUDIT_BENCH_DIR=/var/tmp to measure a real disk instead of /tmp)
// Sample output (2 shared vCPUs; see bench/audit/RESULTS.md):
//   BM_AppendBatched/checkpoints:0      records_per_s=...
//   BM_AppendBatched/checkpoints:1      records_per_s=...
//   BM_AppendFsyncEach/checkpoints:1    records_per_s=...
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/sockaddr.h"
#include "metrics/audit.h"
#include "metrics/audit_types.h"

namespace {

namespace fs = std::filesystem;

struct Dir {
  std::string path;
  Dir() {
    const char* base = std::getenv("AUDIT_BENCH_DIR");
    std::string tmpl = std::string(base ? base : "/tmp") + "/sshring-audit-bench-XXXXXX";
    path = ::mkdtemp(tmpl.data()) ? tmpl : "/tmp";
  }
  ~Dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

sshring::metrics::SessionEnd record(uint64_t i) {
  sshring::metrics::SessionEnd e;
  e.session_id = "00000000000" + std::to_string(10000 + i % 90000);
  e.client = "10.0.0.9:41022";
  e.principal = "alice";
  e.key_fp = "SHA256:uSlnCwl4aFqOKeiIZnIqHkR1ODvAvSnUbIpcAu0RN5I";
  e.target_name = "db1.internal:22";
  e.target_addr = "10.0.5.7:22";
  e.upstream_local = "10.0.0.2:50112";
  e.bytes_up = 4096 + i;
  e.bytes_down = 1 << 20;
  e.duration_ms = 1234;
  e.reason = "closed";
  return e;
}

void run(benchmark::State& state, bool fsync_each) {
  Dir dir;
  sshring::metrics::AuditOptions o;
  o.path = dir.path + "/relay.audit.jsonl";
  o.component = "relay";
  o.fsync_each = fsync_each;
  if (state.range(0)) o.key_path = dir.path + "/relay.key";
  const int64_t batch = fsync_each ? 1 : 10000;
  uint64_t i = 0;
  {
    sshring::metrics::AuditLog log(o);
    for (auto _ : state) {
      for (int64_t n = 0; n < batch; ++n) log.append(record(i++));
      log.flush();
    }
    state.counters["checkpoints"] = static_cast<double>(log.stats().checkpoints);
  }
  state.counters["records_per_s"] = benchmark::Counter(static_cast<double>(i), benchmark::Counter::kIsRate);
  state.SetItemsProcessed(static_cast<int64_t>(i));
}

void BM_AppendBatched(benchmark::State& state) {
  run(state, false);
}

// What a relay worker pays per record: only the append calls are timed, at a relay-like pace (a batch
// of 64, then the writer seals and writes them while the timer is paused), so the number is the
// caller's cost with the writer thread live, not the writer's throughput. `make(i)` builds record i
// (untimed), `append(log, record)` hands it over (timed).
template <class Make, class Append>
void caller_cost(benchmark::State& state, Make make, Append append) {
  Dir dir;
  sshring::metrics::AuditOptions o;
  o.path = dir.path + "/relay.audit.jsonl";
  o.component = "relay";
  o.key_path = dir.path + "/relay.key";
  constexpr int kBatch = 64;
  std::vector<decltype(make(uint64_t{0}))> recs;
  uint64_t i = 0;
  sshring::metrics::AuditLog log(o);
  for (auto _ : state) {
    state.PauseTiming();
    log.flush();
    recs.clear();
    for (int n = 0; n < kBatch; ++n) recs.push_back(make(i++));
    state.ResumeTiming();
    for (auto& r : recs) append(log, r);
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.counters["per_record"] =
      benchmark::Counter(static_cast<double>(state.iterations() * kBatch),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// A typed record, built into its line on the writer thread.
void BM_AppendCallerCost(benchmark::State& state) {
  caller_cost(state, record, [](sshring::metrics::AuditLog& log, sshring::metrics::SessionEnd& r) {
    log.append(std::move(r));
  });
}

// What the relay appends: session records as raw values (append_session), formatted by the writer
// thread. The session's names are built untimed: the relay makes them once per session, from the
// preamble, audit log or not.
void BM_AppendSessionCallerCost(benchmark::State& state) {
  const auto client = *sshring::common::SockAddr::parse("10.0.0.9:41022");
  const auto target = *sshring::common::SockAddr::parse("10.0.5.7:22");
  const auto local = *sshring::common::SockAddr::parse("10.0.0.2:50112");
  auto make = [&](uint64_t i) {
    sshring::metrics::SessionEvent e;
    e.type = sshring::metrics::SessionEnd::kType;
    e.session_id = 10000 + i;
    e.client = client;
    e.target_addr = target;
    e.upstream_local = local;
    e.names = std::make_shared<const sshring::metrics::SessionNames>(
        sshring::metrics::SessionNames{.principal = "alice",
                                       .key_fp = "SHA256:uSlnCwl4aFqOKeiIZnIqHkR1ODvAvSnUbIpcAu0RN5I",
                                       .target_host = "db1.internal",
                                       .target_port = 22});
    e.bytes_up = 4096 + i;
    e.bytes_down = 1 << 20;
    e.duration_ms = 1234;
    e.reason = "closed";
    return e;
  };
  caller_cost(state, make, [](sshring::metrics::AuditLog& log, sshring::metrics::SessionEvent& e) {
    log.append_session(std::move(e));
  });
}
void BM_AppendFsyncEach(benchmark::State& state) {
  run(state, true);
}

}  // namespace

BENCHMARK(BM_AppendBatched)
    ->ArgName("checkpoints")
    ->Arg(0)
    ->Arg(1)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AppendCallerCost)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AppendSessionCallerCost)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AppendFsyncEach)->ArgName("checkpoints")->Arg(1)->UseRealTime()->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
