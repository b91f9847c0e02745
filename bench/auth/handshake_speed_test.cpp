// Full authenticated handshakes per second on one core (decode + relay id + clock + principal/key
// lookup + Ed25519 verify + replay cache + policy decision + session counting), next to the raw
// OpenSSL Ed25519 verify rate measured in the same run. The verify is the physical limit; the target is
// a handshake rate of at least 80% of it. BM_FullHandshake/audit:1 does the same with an audit log
// (batched, signed checkpoints every 1,000 records), which records session_start and session_end per
// session: the audit's cost per handshake, next to the run without it.
//
// Run:  ninja -C build bench_auth_handshake && build/bench/auth/bench_auth_handshake
// Sample output (see RESULTS.md for the machine):
//   BM_OpenSslEd25519Verify        ... items_per_second=...
//   BM_FullHandshake               ... items_per_second=...
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <vector>

#include "client/client.h"
#include "metrics/audit.h"
#include "policy/parser.h"
#include "protocol/keys.h"
#include "relay/auth/auth_handshake.h"

namespace auth = sshring::relay::auth;
namespace protocol = sshring::protocol;
namespace client = sshring::client;
namespace relay = sshring::relay;
namespace policy = sshring::policy;
using sshring::common::SockAddr;

namespace {

constexpr int kFrames = 20000;
constexpr uint64_t kNowMs = 1704110400000ull;

class NullContext : public relay::HandshakeContext {
 public:
  void post(std::function<void()> fn) override { fn(); }
};

struct Setup {
  std::shared_ptr<protocol::Ed25519PrivateKey> key =
      std::make_shared<protocol::Ed25519PrivateKey>(protocol::Ed25519PrivateKey::generate());
  policy::PolicyCache cache;
  std::shared_ptr<auth::Resolver> resolver = std::make_shared<auth::AresResolver>();
  std::vector<std::string> frames;

  Setup() {
    std::string yaml =
        "version: 1\nroles:\n  - name: dev\n    targets:\n      - cidrs: [10.0.0.0/8]\n"
        "principals:\n";
    // A realistic policy size: many principals, the one we use somewhere in the middle.
    for (int i = 0; i < 2000; ++i) {
      auto other = protocol::Ed25519PrivateKey::generate();
      yaml += "  - name: user" + std::to_string(i) + "\n    roles: [dev]\n    keys: [\"" +
              protocol::format_openssh_public_key(i == 1000 ? key->public_key() : other.public_key()) +
              "\"]\n";
    }
    cache.publish(policy::Snapshot::build(std::make_shared<policy::Policy>(policy::parse_policy(yaml)), {}));
    client::Signer signer{key->public_key(), [k = key](std::string_view d) { return k->sign(d); }};
    frames.reserve(kFrames);
    for (int i = 0; i < kFrames; ++i)
      frames.push_back(protocol::encode_hello(
          client::make_hello(signer, "bench-relay", "user1000", "10.1.2.3", 22, kNowMs)));
  }
};

// A fresh factory (empty replay cache) per benchmark run, so repetitions can reuse the frames.
std::shared_ptr<auth::AuthHandshakeFactory> make_factory(Setup& s,
                                                         sshring::metrics::AuditLog* audit = nullptr) {
  auth::AuthOptions o;
  o.audit = audit;
  o.relay_ids = {"bench-relay"};
  o.clock_ms = [] { return kNowMs; };
  // Both clocks still: the frames all carry kNowMs, and a slow run (valgrind) must not age them.
  o.mono_ms = [] { return uint64_t{0}; };
  o.log_denials = false;
  o.resolver = s.resolver;
  return std::make_shared<auth::AuthHandshakeFactory>(s.cache, o);
}

Setup& setup() {
  static Setup s;
  return s;
}

void BM_OpenSslEd25519Verify(benchmark::State& state) {
  auto& s = setup();
  auto d = protocol::decode_hello({reinterpret_cast<const uint8_t*>(s.frames[0].data()), s.frames[0].size()});
  std::string tr = protocol::transcript(d.hello);
  protocol::Pkey pk = protocol::ed25519_public_pkey(s.key->public_key());
  for (auto _ : state) {
    // What any verifier must do per message with OpenSSL 3: a digest context and one verify.
    protocol::MdCtx ctx(EVP_MD_CTX_new());
    EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, pk.get());
    int ok = EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(d.hello.signature.data()), 64,
                              reinterpret_cast<const unsigned char*>(tr.data()), tr.size());
    if (ok != 1) state.SkipWithError("verify failed");
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_OpenSslEd25519Verify)->Iterations(kFrames)->Unit(benchmark::kMicrosecond);

// A scratch directory for the audit log, removed at the end.
struct ScratchDir {
  std::string path;
  ScratchDir() {
    const char* base = std::getenv("AUDIT_BENCH_DIR");  // default /tmp; a tmpfs leaves the disk out
    std::string tmpl = std::string(base ? base : "/tmp") + "/sshring-auth-bench-XXXXXX";
    path = ::mkdtemp(tmpl.data()) ? tmpl : "";
  }
  ~ScratchDir() {
    std::error_code ec;
    if (!path.empty()) std::filesystem::remove_all(path, ec);
  }
};

void BM_FullHandshake(benchmark::State& state) {
  auto& s = setup();
  ScratchDir dir;
  std::optional<sshring::metrics::AuditLog> audit;
  if (state.range(0)) {
    if (dir.path.empty()) state.SkipWithError("mkdtemp failed");
    audit.emplace(sshring::metrics::AuditOptions{
        .path = dir.path + "/relay.audit.jsonl", .component = "relay", .key_path = dir.path + "/relay.key"});
  }
  auto factory = make_factory(s, audit ? &*audit : nullptr);
  NullContext ctx;
  auto client = *SockAddr::parse("192.0.2.1:40000");
  auto listen = *SockAddr::parse("127.0.0.1:2222");
  relay::SessionSummary sum;
  size_t i = 0;
  uint64_t id = 1;
  for (auto _ : state) {
    const std::string& f = s.frames[i++ % s.frames.size()];
    auto hs = factory->create(id++, client, listen, ctx, [](relay::HandshakeStep) {});
    auto step = hs->on_data({reinterpret_cast<const uint8_t*>(f.data()), f.size()});
    if (step.kind != relay::HandshakeStep::Kind::kConnect) {
      std::string why = "handshake not allowed:";
      for (uint16_t r = 1; r <= protocol::kMaxReason; ++r)
        if (factory->decisions(r) != 0)
          why += std::string(" ") + protocol::reason_name(static_cast<protocol::Reason>(r));
      state.SkipWithError(why.c_str());
      break;
    }
    benchmark::DoNotOptimize(hs->on_upstream_connected(listen));
    hs->on_end(sum);
  }
  if (audit) {
    if (!audit->flush()) state.SkipWithError("audit records not on disk");
    state.counters["audit_records"] = static_cast<double>(audit->stats().records);
  }
  state.SetItemsProcessed(state.iterations());
}
// Each frame may be used once (replay cache), so the iteration count is the number of frames.
BENCHMARK(BM_FullHandshake)
    ->ArgName("audit")
    ->Arg(0)
    ->Arg(1)
    ->Iterations(kFrames)
    ->Unit(benchmark::kMicrosecond);

void BM_DecodeOnly(benchmark::State& state) {
  auto& s = setup();
  size_t i = 0;
  for (auto _ : state) {
    const std::string& f = s.frames[i++ % s.frames.size()];
    benchmark::DoNotOptimize(protocol::decode_hello({reinterpret_cast<const uint8_t*>(f.data()), f.size()}));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_DecodeOnly)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
