// A real Prometheus (Debian's /usr/bin/prometheus) scrapes running exporters every second with the
// project's rules loaded; then every Grafana panel query in deploy/grafana must parse and return data,
// and the recording rules and an alert must evaluate.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/metrics/scrape.h"
#include "tests/support/process.h"

namespace sshring::metrics {
namespace {

namespace fs = std::filesystem;
using sshring::testing::Process;
using sshring::testing::TempDir;

const std::string kSource = SSHRING_SOURCE_DIR;

std::string urlencode(const std::string& s) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// Grafana variables as the dashboards use them, replaced the way Grafana would for "All".
std::string substitute(std::string expr) {
  const std::pair<std::string, std::string> vars[] = {
      {"$__rate_interval", "1m"}, {"$__interval", "15s"}, {"$__range", "5m"}, {"$instance", ".*"}};
  for (const auto& [from, to] : vars) {
    for (size_t p; (p = expr.find(from)) != std::string::npos;) expr.replace(p, from.size(), to);
  }
  return expr;
}

class PrometheusFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists("/usr/bin/prometheus"))
      GTEST_SKIP() << "/usr/bin/prometheus missing (scripts/install-deps)";
    relay_port_ = sshring::testing::free_port();
    agent_port_ = sshring::testing::free_port();
    relay_ = Process({SSHRING_TEST_EXPORTER, "127.0.0.1:" + std::to_string(relay_port_), "relay"},
                     {.stdout_path = dir_.file("relay.out"), .stderr_path = dir_.file("relay.err")});
    agent_ = Process({SSHRING_TEST_EXPORTER, "127.0.0.1:" + std::to_string(agent_port_), "agent"},
                     {.stdout_path = dir_.file("agent.out"), .stderr_path = dir_.file("agent.err")});
    ASSERT_TRUE(sshring::testing::wait_for_port("127.0.0.1", relay_port_));
    ASSERT_TRUE(sshring::testing::wait_for_port("127.0.0.1", agent_port_));

    std::string relay_targets = "\"127.0.0.1:" + std::to_string(relay_port_) + "\"";
    if (real_relay_metrics_port_)
      relay_targets += ", \"127.0.0.1:" + std::to_string(real_relay_metrics_port_) + "\"";
    sshring::testing::write_file(
        dir_.file("prometheus.yml"),
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "rule_files:\n  - " +
            kSource + "/deploy/prometheus/sshring.rules.yml\n" +
            "scrape_configs:\n"
            "  - job_name: sshring-relay\n    static_configs:\n      - targets: [" +
            relay_targets +
            "]\n"
            "  - job_name: sshring-agent\n    static_configs:\n      - targets: [\"127.0.0.1:" +
            std::to_string(agent_port_) + "\"]\n");
    prom_port_ = sshring::testing::free_port();
    prometheus_ =
        Process({"/usr/bin/prometheus", "--config.file=" + dir_.file("prometheus.yml"),
                 "--storage.tsdb.path=" + dir_.file("data"),
                 "--web.listen-address=127.0.0.1:" + std::to_string(prom_port_), "--log.level=warn"},
                {.stdout_path = dir_.file("prometheus.out"), .stderr_path = dir_.file("prometheus.err")});
    ASSERT_TRUE(sshring::testing::wait_for_port("127.0.0.1", prom_port_, std::chrono::seconds(20)))
        << sshring::testing::read_file(dir_.file("prometheus.err"));
    // Enough scrapes for rate() over every target (3 samples each).
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    int targets = real_relay_metrics_port_ ? 3 : 2;
    while (true) {
      auto r = query("count(count_over_time(up[1m]) >= 3 and up == 1)");
      if (r["data"]["result"].size() == 1 && r["data"]["result"][0]["value"][1] == std::to_string(targets))
        break;
      ASSERT_LT(std::chrono::steady_clock::now(), deadline)
          << "Prometheus did not scrape the targets: " << r.dump() << "\n"
          << sshring::testing::read_file(dir_.file("prometheus.err"));
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
  }

  nlohmann::json query(const std::string& q) {
    try {
      return nlohmann::json::parse(
          testing::http_get("127.0.0.1", prom_port_, "/api/v1/query?query=" + urlencode(q)));
    } catch (const std::exception& e) {
      return {{"status", "error"}, {"error", e.what()}};
    }
  }

  TempDir dir_;
  uint16_t relay_port_ = 0, agent_port_ = 0, prom_port_ = 0, real_relay_metrics_port_ = 0;
  Process relay_, agent_, prometheus_;
};

TEST_F(PrometheusFixture, EveryDashboardPanelQueryReturnsData) {
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(kSource + "/deploy/grafana")) {
    if (entry.path().extension() != ".json") continue;
    auto dash = nlohmann::json::parse(sshring::testing::read_file(entry.path().string()));
    ASSERT_TRUE(dash.contains("panels")) << entry.path();
    for (const auto& panel : dash["panels"]) {
      for (const auto& target : panel["targets"]) {
        std::string expr = substitute(target["expr"].get<std::string>());
        auto r = query(expr);
        std::string where =
            entry.path().filename().string() + " panel '" + panel["title"].get<std::string>() + "': " + expr;
        EXPECT_EQ(r["status"], "success") << where << "\n" << r.dump();
        EXPECT_FALSE(r["data"]["result"].empty()) << where << " returned no data";
        ++checked;
      }
    }
  }
  EXPECT_GE(checked, 20);
}

TEST_F(PrometheusFixture, RulesEvaluateOnScrapedData) {
  // Exact values scraped from the exporter (set once, never changed).
  auto max = query("sshring_relay_sessions_max");
  ASSERT_EQ(max["data"]["result"].size(), 1u) << max.dump();
  EXPECT_EQ(max["data"]["result"][0]["value"][1], "1000");
  auto grants = query("sshring_grants_active{job=\"sshring-agent\"}");
  ASSERT_EQ(grants["data"]["result"].size(), 1u) << grants.dump();
  EXPECT_EQ(grants["data"]["result"][0]["value"][1], "3");

  // Recording rules and the unapproved-bypass alert (the exporter keeps opening such flows).
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (true) {
    auto rec = query("sshring:bypass_flows:rate5m{tag=\"bypass_unapproved\"}");
    auto alerts = query("ALERTS{alertname=\"SshringUnapprovedBypass\",alertstate=\"firing\"}");
    auto reload = query("ALERTS{alertname=\"SshringPolicyReloadFailing\"}");
    if (!rec["data"]["result"].empty() && !alerts["data"]["result"].empty() &&
        !reload["data"]["result"].empty())
      break;
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << rec.dump() << "\n"
                                                          << alerts.dump() << "\n"
                                                          << reload.dump();
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
}

}  // namespace
}  // namespace sshring::metrics
