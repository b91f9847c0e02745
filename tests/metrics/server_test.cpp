// The exposer and the metric catalog, scraped over real HTTP after known traffic.
#include <gtest/gtest.h>

#include <thread>

#include "metrics/catalog.h"
#include "metrics/server.h"
#include "policy/flow_tag.h"
#include "tests/metrics/scrape.h"

namespace sshring::metrics {
namespace {

using testing::http_get;
using testing::sample;

TEST(ServerTest, PortZeroPicksAPortAndServesBuildInfo) {
  Server server("127.0.0.1:0", "relay");
  ASSERT_NE(server.port(), 0);
  auto body = http_get("127.0.0.1", server.port(), "/metrics");
  EXPECT_NE(body.find("sshring_build_info{"), std::string::npos) << body;
  auto types = testing::parse_types(body);
  EXPECT_EQ(types["sshring_build_info"], "gauge");
  EXPECT_NE(body.find("component=\"relay\""), std::string::npos);
}

TEST(ServerTest, ListensOnIpv6Loopback) {
  std::unique_ptr<Server> server;
  try {
    server = std::make_unique<Server>("[::1]:0", "agent");
  } catch (const std::exception& e) {
    GTEST_SKIP() << "no IPv6 loopback here: " << e.what();
  }
  ASSERT_NE(server->port(), 0);
  AgentStats stats;
  register_agent(*server, &stats);
  stats.flows_by_tag[3].add(2);
  auto body = http_get("::1", server->port(), "/metrics");
  EXPECT_NE(body.find("component=\"agent\""), std::string::npos) << body;
  EXPECT_EQ(sample(body, "sshring_bypass_flows_total{tag=\"bypass_unapproved\"}"), 2) << body;
  EXPECT_EQ(testing::parse_types(body)["sshring_bypass_flows_total"], "counter");
  EXPECT_THROW(http_get("::1", server->port(), "/other"), std::runtime_error);
}

TEST(ServerTest, BadAddressesNameTheAddress) {
  try {
    Server s("localhost:9100", "relay");
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("localhost:9100"), std::string::npos) << e.what();
  }
  Server first("127.0.0.1:0", "relay");
  std::string taken = "127.0.0.1:" + std::to_string(first.port());
  try {
    Server second(taken, "relay");
    FAIL() << "expected an error for a port in use";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(taken), std::string::npos) << e.what();
  }
}

TEST(ServerTest, CollectorFamiliesAndSamples) {
  Server server("127.0.0.1:0", "relay");
  server.add_collector([] {
    auto c = counter_family("sshring_test_things_total", "things");
    add_sample(c, {{"kind", "a"}}, 3);
    add_sample(c, {{"kind", "b"}}, 4.5);
    auto g = gauge_family("sshring_test_level", "level");
    add_sample(g, {}, -2);
    return std::vector<prometheus::MetricFamily>{c, g};
  });
  auto body = http_get("127.0.0.1", server.port(), "/metrics");
  EXPECT_EQ(sample(body, "sshring_test_things_total{kind=\"a\"}"), 3);
  EXPECT_EQ(sample(body, "sshring_test_things_total{kind=\"b\"}"), 4.5);
  EXPECT_EQ(sample(body, "sshring_test_level"), -2);
  auto types = testing::parse_types(body);
  EXPECT_EQ(types["sshring_test_things_total"], "counter");
  EXPECT_EQ(types["sshring_test_level"], "gauge");
}

TEST(CatalogTest, FlowTagNamesMatchPolicy) {
  ASSERT_EQ(kNumFlowTags, std::size(policy::kAllFlowTags));
  for (auto t : policy::kAllFlowTags) {
    EXPECT_EQ(kFlowTagNames[static_cast<int>(t) - 1], policy::flow_tag_name(t));
  }
}

// n sessions over two workers, m bytes each way, each outcome: the scrape sums them exactly.
TEST(CatalogTest, RelayCountersAfterKnownTraffic) {
  Server server("127.0.0.1:0", "relay");
  RelayWorkerStats w1, w2;
  auto relay = register_relay(server, {&w1, &w2});
  // Each worker thread writes only its own stats, as in the relay.
  std::thread t1([&] {
    for (int i = 0; i < 7; ++i) {
      w1.sessions_active.add(1);
      w1.bytes_client_to_upstream.add(1000);
      w1.bytes_upstream_to_client.add(250);
    }
    for (int i = 0; i < 5; ++i) {
      w1.sessions_active.add(-1);
      w1.sessions_total[0].add();
    }
    w1.accept_errors.add(2);
    w1.pipes_in_use.set(2);
  });
  std::thread t2([&] {
    w2.sessions_active.add(3);
    w2.sessions_total[2].add(4);  // upstream_reset
    w2.sessions_total[5].add(1);  // denied
    w2.bytes_client_to_upstream.add(5);
    w2.pipes_in_use.set(3);
  });
  t1.join();
  t2.join();
  relay.max_sessions->Set(100);
  relay.decisions->Add({{"result", "allow"}, {"reason", "rule"}}).Increment(6);
  relay.decisions->Add({{"result", "deny"}, {"reason", "no_rule"}}).Increment();
  relay.handshake_seconds->Observe(0.003);
  relay.handshake_seconds->Observe(0.2);
  relay.connect_seconds->Observe(0.0002);

  auto body = http_get("127.0.0.1", server.port(), "/metrics");
  EXPECT_EQ(sample(body, "sshring_relay_sessions_active"), 5);
  EXPECT_EQ(sample(body, "sshring_relay_sessions_max"), 100);
  EXPECT_EQ(sample(body, "sshring_relay_sessions_total{outcome=\"closed\"}"), 5);
  EXPECT_EQ(sample(body, "sshring_relay_sessions_total{outcome=\"upstream_reset\"}"), 4);
  EXPECT_EQ(sample(body, "sshring_relay_sessions_total{outcome=\"denied\"}"), 1);
  EXPECT_EQ(sample(body, "sshring_relay_sessions_total{outcome=\"overloaded\"}"), 0);
  EXPECT_EQ(sample(body, "sshring_relay_bytes_total{direction=\"client_to_upstream\"}"), 7005);
  EXPECT_EQ(sample(body, "sshring_relay_bytes_total{direction=\"upstream_to_client\"}"), 1750);
  EXPECT_EQ(sample(body, "sshring_relay_accept_errors_total"), 2);
  EXPECT_EQ(sample(body, "sshring_relay_pipes_in_use"), 5);
  EXPECT_EQ(sample(body, "sshring_policy_decisions_total{reason=\"rule\",result=\"allow\"}"), 6);
  EXPECT_EQ(sample(body, "sshring_policy_decisions_total{reason=\"no_rule\",result=\"deny\"}"), 1);
  EXPECT_EQ(sample(body, "sshring_relay_handshake_duration_seconds_count"), 2);
  EXPECT_EQ(sample(body, "sshring_relay_handshake_duration_seconds_bucket{le=\"0.005\"}"), 1);
  EXPECT_EQ(sample(body, "sshring_relay_handshake_duration_seconds_bucket{le=\"0.25\"}"), 2);
  EXPECT_EQ(sample(body, "sshring_relay_upstream_connect_duration_seconds_bucket{le=\"0.00025\"}"), 1);
  auto types = testing::parse_types(body);
  EXPECT_EQ(types["sshring_relay_handshake_duration_seconds"], "histogram");
  EXPECT_EQ(types["sshring_relay_sessions_total"], "counter");
  EXPECT_EQ(types["sshring_relay_sessions_active"], "gauge");

  // Counters move between scrapes without re-registration.
  w2.sessions_total[0].add(10);
  body = http_get("127.0.0.1", server.port(), "/metrics");
  EXPECT_EQ(sample(body, "sshring_relay_sessions_total{outcome=\"closed\"}"), 15);
}

// The source reports a running total of skipped grant values; the counter follows it, never back.
TEST(CatalogTest, MisplacedGrantsFollowTheSourcesTotal) {
  Server server("127.0.0.1:0", "agent");
  auto policy = register_policy(server);
  policy.decision_restored();
  policy.source(true, 7, 1700000000, 1700000001);
  policy.source_misplaced(3);
  policy.source_misplaced(3);
  auto body = http_get("127.0.0.1", server.port(), "/metrics");
  EXPECT_EQ(sample(body, "sshring_policy_source_misplaced_grants_total"), 3);
  EXPECT_EQ(sample(body, "sshring_grant_decisions_restored_total"), 1);
  policy.source_misplaced(5);
  policy.source_misplaced(2);  // a source restarted from zero: no decrease
  body = http_get("127.0.0.1", server.port(), "/metrics");
  EXPECT_EQ(sample(body, "sshring_policy_source_misplaced_grants_total"), 5);
}

TEST(CatalogTest, PolicyAndAgentAfterKnownFlows) {
  Server server("127.0.0.1:0", "agent");
  auto policy = register_policy(server);
  AgentStats stats;
  register_agent(server, &stats);
  policy.reloads->Add({{"result", "success"}}).Increment(3);
  policy.last_success->Set(1700000000);
  policy.grants_active->Set(4);
  policy.grants_expiring->Set(1);
  // One flow of each tag, proxied twice; bytes per tag.
  const uint64_t flows[] = {2, 1, 1, 1};
  const uint64_t bytes[] = {9000, 1234, 77, 5};
  for (size_t i = 0; i < 4; ++i) {
    stats.flows_by_tag[i].add(flows[i]);
    stats.bytes_by_tag[i].add(bytes[i]);
  }
  stats.ringbuf_drops.add(3);
  stats.map_full.add(1);
  stats.flows_evicted.add(2);
  stats.flows_tracked.set(6);
  stats.enforce.set(1);

  auto body = http_get("127.0.0.1", server.port(), "/metrics");
  EXPECT_EQ(sample(body, "sshring_policy_reloads_total{result=\"success\"}"), 3);
  EXPECT_EQ(sample(body, "sshring_policy_reloads_total{result=\"failure\"}"), 0);
  EXPECT_EQ(sample(body, "sshring_policy_last_reload_success_timestamp_seconds"), 1700000000);
  EXPECT_EQ(sample(body, "sshring_grants_active"), 4);
  EXPECT_EQ(sample(body, "sshring_grants_expiring_within_hour"), 1);
  for (size_t i = 0; i < 4; ++i) {
    std::string tag = kFlowTagNames[i];
    EXPECT_EQ(sample(body, "sshring_bypass_flows_total{tag=\"" + tag + "\"}"), flows[i]) << tag;
    EXPECT_EQ(sample(body, "sshring_bypass_bytes_total{tag=\"" + tag + "\"}"), bytes[i]) << tag;
  }
  EXPECT_EQ(sample(body, "sshring_agent_ringbuf_drops_total"), 3);
  EXPECT_EQ(sample(body, "sshring_agent_map_full_total"), 1);
  EXPECT_EQ(sample(body, "sshring_agent_flows_evicted_total"), 2);
  EXPECT_EQ(sample(body, "sshring_agent_flows_tracked"), 6);
  EXPECT_EQ(sample(body, "sshring_agent_enforce_mode"), 1);
}

}  // namespace
}  // namespace sshring::metrics
