// ns per packet of the TC classifier, measured by the kernel (BPF_PROG_TEST_RUN with repeat).
//
// Run (root):  build/bench/bpf/bpf_speed_test
// Sample output (2 vCPU VM shared with other builds, kernel 6.18; see bench/bpf/RESULTS.md):
//   BM_EstablishedPacket/iterations:20/manual_time          ns_per_packet=102
//   BM_SynNewFlow/iterations:20000/manual_time              ns_per_packet=532
//   BM_NotSsh/iterations:20/manual_time                     ns_per_packet=30
//   BM_TrivialProgram/iterations:20/manual_time             ns_per_packet=26
//   BM_TrivialProgramSingleRun/iterations:20000/manual_time ns_per_packet=77
// Established is the per-packet cost of a tracked SSH flow (parse, one hash lookup, atomic adds,
// per-CPU tag counters); SynNewFlow adds the LPM lookups, the rule scan, the LRU insert and the
// ring-buffer event; NotSsh is the cost every other packet pays (parse + the watched-port bitmap).
#include <benchmark/benchmark.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <memory>
#include <optional>

#include "bpf/kernel_policy.h"
#include "bpf/loader.h"
#include "tests/bpf/packet.h"

namespace {

using sshring::bpf::BpfObject;
using sshring::bpf::KernelPolicy;
using sshring::bpf::MapSync;
namespace t = sshring::testing;

constexpr int kRepeat = 100000;

BpfObject& object() {
  static std::unique_ptr<BpfObject> obj = [] {
    auto o = std::make_unique<BpfObject>(BpfObject::Options{.pin_dir = "", .attach_tracepoint = false});
    MapSync sync(*o);
    KernelPolicy kp;
    auto c = [](const char* s) { return *sshring::policy::Cidr::parse(s); };
    kp.relays = {c("10.77.9.0/24")};
    kp.protected_dsts = {{c("10.77.0.0/16"), {{22, 22}}}};
    int64_t now = ::time(nullptr);
    // A realistic trie: a few hundred grants over nested prefixes.
    for (int i = 0; i < 200; i++) {
      std::string from = "10.78." + std::to_string(i) + ".0/24";
      kp.rules.push_back({c(from.c_str()), c("10.77.0.0/16"), 22, 22, now + 3600, "g-" + std::to_string(i)});
    }
    kp.rules.push_back({c("10.77.1.0/24"), c("10.77.0.10/32"), 22, 22, now + 3600, "g-bench"});
    kp.rules.push_back({c("10.77.0.0/16"), c("10.77.0.10/32"), 22, 22, now - 60, "g-old"});
    sync.apply(kp);
    return o;
  }();
  return *obj;
}

void BM_EstablishedPacket(benchmark::State& state) {
  if (::geteuid() != 0) return state.SkipWithError("needs root");
  auto& obj = object();
  t::run_prog(obj.ingress_fd(), t::build_packet({.src = "10.77.1.1", .sport = 50000}));
  auto pkt =
      t::build_packet({.src = "10.77.1.1", .sport = 50000, .flags = t::kAck | t::kPsh, .payload = 1400});
  double ns = 0;
  for (auto _ : state) {
    auto r = t::run_prog(obj.ingress_fd(), pkt, kRepeat);
    ns = r.duration_ns;
    state.SetIterationTime(r.duration_ns * 1e-9 * kRepeat);
  }
  state.counters["ns_per_packet"] = ns;
  state.SetItemsProcessed(state.iterations() * kRepeat);
}
BENCHMARK(BM_EstablishedPacket)->UseManualTime()->Iterations(20);

void BM_SynNewFlow(benchmark::State& state) {
  if (::geteuid() != 0) return state.SkipWithError("needs root");
  auto& obj = object();
  t::PacketSpec spec{.src = "10.77.1.2", .sport = 50001};
  auto pkt = t::build_packet(spec);
  sshring_flow_key key{};
  key.family = 4;
  inet_pton(AF_INET, spec.src.c_str(), key.client);
  inet_pton(AF_INET, spec.dst.c_str(), key.server);
  key.client_port = spec.sport;
  key.server_port = spec.dport;
  ring_buffer* rb = ring_buffer__new(
      obj.events_fd(), [](void*, void*, size_t) { return 0; }, nullptr, nullptr);
  uint64_t total = 0, n = 0;
  for (auto _ : state) {
    // One fresh flow per run: the kernel times the single program run (repeat = 1).
    bpf_map_delete_elem(obj.map_fd("flows"), &key);
    auto r = t::run_prog(obj.ingress_fd(), pkt, 1);
    total += r.duration_ns;
    n++;
    state.SetIterationTime(r.duration_ns * 1e-9);
    if ((n & 1023) == 0) ring_buffer__consume(rb);
  }
  ring_buffer__consume(rb);
  ring_buffer__free(rb);
  state.counters["ns_per_packet"] = n ? static_cast<double>(total) / n : 0;
}
BENCHMARK(BM_SynNewFlow)->UseManualTime()->Iterations(20000);

void BM_NotSsh(benchmark::State& state) {
  if (::geteuid() != 0) return state.SkipWithError("needs root");
  auto& obj = object();
  auto pkt =
      t::build_packet({.src = "10.77.1.1", .sport = 50002, .dport = 443, .flags = t::kAck, .payload = 1400});
  double ns = 0;
  for (auto _ : state) {
    auto r = t::run_prog(obj.ingress_fd(), pkt, kRepeat);
    ns = r.duration_ns;
    state.SetIterationTime(r.duration_ns * 1e-9 * kRepeat);
  }
  state.counters["ns_per_packet"] = ns;
}
BENCHMARK(BM_NotSsh)->UseManualTime()->Iterations(20);

// Reference point: a two-instruction SCHED_CLS program (r0 = -1; exit) through the same test-run
// path, so the numbers above can be read as "classifier cost on top of the harness".
void BM_TrivialProgram(benchmark::State& state) {
  if (::geteuid() != 0) return state.SkipWithError("needs root");
  const bpf_insn insns[] = {
      {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .src_reg = 0, .off = 0, .imm = -1},
      {.code = BPF_JMP | BPF_EXIT, .dst_reg = 0, .src_reg = 0, .off = 0, .imm = 0},
  };
  int fd = bpf_prog_load(BPF_PROG_TYPE_SCHED_CLS, "trivial", "GPL", insns, 2, nullptr);
  if (fd < 0) return state.SkipWithError("cannot load a trivial program");
  auto pkt = t::build_packet({.src = "10.77.1.1", .sport = 50003, .flags = t::kAck, .payload = 1400});
  double ns = 0;
  for (auto _ : state) {
    auto r = t::run_prog(fd, pkt, kRepeat);
    ns = r.duration_ns;
    state.SetIterationTime(r.duration_ns * 1e-9 * kRepeat);
  }
  ::close(fd);
  state.counters["ns_per_packet"] = ns;
}
BENCHMARK(BM_TrivialProgram)->UseManualTime()->Iterations(20);

// The same trivial program timed one run at a time, like BM_SynNewFlow: the floor of that method.
void BM_TrivialProgramSingleRun(benchmark::State& state) {
  if (::geteuid() != 0) return state.SkipWithError("needs root");
  const bpf_insn insns[] = {
      {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .src_reg = 0, .off = 0, .imm = -1},
      {.code = BPF_JMP | BPF_EXIT, .dst_reg = 0, .src_reg = 0, .off = 0, .imm = 0},
  };
  int fd = bpf_prog_load(BPF_PROG_TYPE_SCHED_CLS, "trivial", "GPL", insns, 2, nullptr);
  if (fd < 0) return state.SkipWithError("cannot load a trivial program");
  auto pkt = t::build_packet({.src = "10.77.1.2", .sport = 50001});
  uint64_t total = 0, n = 0;
  for (auto _ : state) {
    auto r = t::run_prog(fd, pkt, 1);
    total += r.duration_ns;
    n++;
    state.SetIterationTime(r.duration_ns * 1e-9);
  }
  ::close(fd);
  state.counters["ns_per_packet"] = n ? static_cast<double>(total) / n : 0;
}
BENCHMARK(BM_TrivialProgramSingleRun)->UseManualTime()->Iterations(20000);

}  // namespace

// What a consumer on etcd adds after its snapshot: the agent's kernel-map sync after one grant
// changed, with 10,000 live grants plus 0, 10,000 or 100,000 expired ones still loaded (flows that used
// them are tagged bypass_expired). Each grant is its own /24 source to its own /32 target, as grants
// for single people and hosts are. MapSync::apply folds the whole policy and rewrites the rules
// array's other half when anything changed (from_snapshot and fold included in the time).
void BM_MapSyncOneChange(benchmark::State& state) {
  const size_t expired = static_cast<size_t>(state.range(0));
  const size_t total = 10000 + expired;
  BpfObject o(BpfObject::Options{.pin_dir = "", .attach_tracepoint = false, .max_rules = total + 1024});
  MapSync sync(o);
  auto c = [](const std::string& s) { return *sshring::policy::Cidr::parse(s); };
  KernelPolicy kp;
  kp.relays = {c("10.77.9.0/24")};
  kp.protected_dsts = {{c("10.0.0.0/8"), {{22, 22}}}};
  const int64_t now = ::time(nullptr);
  for (size_t i = 0; i < total; i++) {
    const std::string low = std::to_string((i >> 8) & 255) + "." + std::to_string(i & 255);
    const std::string high = std::to_string(i >> 16);
    kp.rules.push_back({c(std::to_string(11 + (i >> 16)) + "." + low + ".0/24"),
                        c("10." + high + "." + low + "/32"), 22, 22, i < 10000 ? now + 3600 : now - 3600,
                        "g-" + std::to_string(i)});
  }
  const auto first = sync.apply(kp);  // the first load, not timed
  if (first.rules_loaded != total) state.SkipWithError("not every rule was loaded");
  size_t n = 0;
  for (auto _ : state) {
    kp.rules[n++ % 10000].expires += 1;  // one grant changed (extended, revoked, ...)
    auto r = sync.apply(kp);
    if (r.truncated) state.SkipWithError("rules did not fit");
  }
  state.counters["rules"] = static_cast<double>(total);
}
BENCHMARK(BM_MapSyncOneChange)->Arg(0)->Arg(10000)->Arg(100000)->Unit(benchmark::kMillisecond)->Iterations(5);

BENCHMARK_MAIN();
