// A stand-in relay/agent exporter for the dashboard test: registers the real relay, policy and agent
// metric families through metrics/catalog and keeps feeding them traffic until SIGTERM, so rate()
// and histogram_quantile() have data. Usage: sshring_test_exporter ADDR:PORT relay|agent
#include <csignal>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <thread>

#include "metrics/catalog.h"
#include "metrics/server.h"

namespace {
volatile std::sig_atomic_t g_stop = 0;
}

int main(int argc, char** argv) {
  using namespace sshring::metrics;
  if (argc != 3) {
    std::cerr << "usage: sshring_test_exporter ADDR:PORT relay|agent\n";
    return 2;
  }
  std::signal(SIGTERM, [](int) { g_stop = 1; });
  std::signal(SIGINT, [](int) { g_stop = 1; });
  std::string component = argv[2];
  Server server(argv[1], component);
  auto policy = register_policy(server);
  policy.reloads->Add({{"result", "success"}}).Increment();
  policy.last_success->Set(static_cast<double>(std::time(nullptr)));
  policy.grants_active->Set(3);
  policy.grants_expiring->Set(1);

  RelayWorkerStats w1, w2;
  AgentStats agent;
  RelayMetrics relay;
  if (component == "relay") {
    relay = register_relay(server, {&w1, &w2});
    relay.max_sessions->Set(1000);
  } else {
    register_agent(server, &agent);
    agent.enforce.set(0);
  }
  std::printf("listening %u\n", server.port());
  std::fflush(stdout);

  for (uint64_t tick = 0; !g_stop; ++tick) {
    // A failing reload now and then, after Prometheus has seen the counter at 0.
    if (tick % 50 == 20) policy.reloads->Add({{"result", "failure"}}).Increment();
    if (component == "relay") {
      w1.sessions_active.set(40 + static_cast<int64_t>(tick % 7));
      w2.sessions_active.set(30);
      w1.sessions_total[tick % kNumSessionOutcomes].add();
      w2.sessions_total[0].add();
      w1.bytes_client_to_upstream.add(4096);
      w1.bytes_upstream_to_client.add(65536);
      w2.bytes_upstream_to_client.add(1024);
      if (tick % 5 == 0) w1.accept_errors.add();
      w1.pipes_in_use.set(80);
      relay.handshake_seconds->Observe(0.002 + 0.001 * static_cast<double>(tick % 10));
      relay.connect_seconds->Observe(0.0005 * static_cast<double>(1 + tick % 4));
      relay.decisions->Add({{"result", "allow"}, {"reason", "rule"}}).Increment();
      if (tick % 3 == 0) relay.decisions->Add({{"result", "deny"}, {"reason", "no_rule"}}).Increment();
    } else {
      for (size_t i = 0; i < kNumFlowTags; ++i) {
        agent.flows_by_tag[i].add(i + 1);
        agent.bytes_by_tag[i].add(1000 * (i + 1));
      }
      if (tick % 4 == 0) agent.ringbuf_drops.add();
      if (tick % 6 == 0) agent.map_full.add();
      if (tick % 2 == 0) agent.flows_evicted.add();
      agent.flows_tracked.set(100 + static_cast<int64_t>(tick % 20));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return 0;
}
