// Cost of moving one session through the hand-over protocol (relay/handover.h), both sides in one
// thread over a SOCK_SEQPACKET pair: session_body + send_handover (old relay) and recv_handover +
// session_from_message (new relay), with the two sockets a session carries as real descriptors.
// The relay hands sessions over one after the other while every session is paused, so this per
// session cost times the session count is most of a hand-over's pause (bench/ssh/run measures the
// whole of it). Run: build/bench/relay/handover_message_bench
#include <benchmark/benchmark.h>
#include <sys/socket.h>

#include <cstdlib>
#include <vector>

#include "common/unique_fd.h"
#include "relay/handover.h"

namespace {

using sshring::common::SockAddr;
using sshring::common::UniqueFd;
namespace r = sshring::relay;

void BM_SessionThroughHandover(benchmark::State& state) {
  int sp[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) != 0) std::abort();
  UniqueFd a(sp[0]), b(sp[1]);
  // Two descriptors standing for the client and upstream sockets.
  int tcp[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, tcp) != 0) std::abort();
  UniqueFd c(tcp[0]), u(tcp[1]);
  r::SessionExport s;
  s.id = 0x1234567890abcdefULL;
  s.route = "127.0.0.1:2222";
  s.client_addr = *SockAddr::parse("10.1.2.3:51234");
  s.listen_addr = *SockAddr::parse("127.0.0.1:2222");
  s.upstream_addr = *SockAddr::parse("10.9.8.7:22");
  s.upstream_local = *SockAddr::parse("10.9.0.1:40000");
  s.age_ns = 123456789012;
  s.idle_ns = 456789;
  s.dir[0].bytes = 1 << 20;
  s.dir[1].bytes = 3 << 20;
  // What an authenticated session carries (Handshake::handover_state()): principal, key, target.
  s.handshake =
      R"({"principal":"alice","key_fp":"SHA256:0123456789abcdefghijklmnopqrstuvwxyzABCDEFG","target_host":"db-17.prod.example.com","target_port":22,"grant_id":"g-0000000000a1"})";
  s.client = r::HandoverFd::borrow(c.get());
  s.upstream = r::HandoverFd::borrow(u.get());
  for (auto _ : state) {
    std::vector<int> fds;
    nlohmann::json body = r::session_body(s, &fds);
    if (r::send_handover(a.get(), r::HandoverMsg::kSession, body, fds) != 0) std::abort();
    r::HandoverMessage m;
    if (r::recv_handover(b.get(), m, 1000) != 0) std::abort();
    r::SessionExport in = r::session_from_message(m);
    benchmark::DoNotOptimize(in.id);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_SessionThroughHandover);

}  // namespace

BENCHMARK_MAIN();
