// docs/metrics.md and the real /metrics output agree: same sshring_* families, same types.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "metrics/audit_metrics.h"
#include "metrics/catalog.h"
#include "metrics/server.h"
#include "tests/metrics/scrape.h"
#include "tests/support/process.h"

namespace sshring::metrics {
namespace {

// Rows "| `sshring_name` | type | ..." of the metric table.
std::map<std::string, std::string> documented() {
  std::istringstream in(sshring::testing::read_file(std::string(SSHRING_SOURCE_DIR) + "/docs/metrics.md"));
  std::map<std::string, std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("| `sshring_", 0) != 0) continue;
    auto end = line.find('`', 3);
    std::string name = line.substr(3, end - 3);
    auto c1 = line.find('|', end);
    auto c2 = line.find('|', c1 + 1);
    std::string type = line.substr(c1 + 1, c2 - c1 - 1);
    type.erase(0, type.find_first_not_of(' '));
    type.erase(type.find_last_not_of(' ') + 1);
    out[name] = type;
  }
  return out;
}

TEST(MetricsDocTest, DocumentedFamiliesEqualServedFamilies) {
  Server server("127.0.0.1:0", "relay");
  RelayWorkerStats worker;
  AgentStats agent;
  auto relay = register_relay(server, {&worker});
  auto policy = register_policy(server);
  policy.source(true, 1, 1, 1);  // source series appear with the first report (etcd consumers)
  register_agent(server, &agent);
  register_fleet(server, [] { return std::optional<FleetStats>(FleetStats{.claims = true}); });
  sshring::testing::TempDir dir;
  AuditLog audit({.path = dir.file("a.jsonl"), .component = "relay"});
  register_audit(server, &audit);
  // A family with no series yet is not served; the relay always has decisions once it runs.
  relay.decisions->Add({{"result", "allow"}, {"reason", "rule"}}).Increment();

  auto served_all = testing::parse_types(testing::http_get("127.0.0.1", server.port(), "/metrics"));
  std::map<std::string, std::string> served;
  for (const auto& [name, type] : served_all) {
    if (name.rfind("sshring_", 0) == 0) served[name] = type;
  }
  auto doc = documented();
  ASSERT_GT(doc.size(), 10u) << "docs/metrics.md table not found";
  for (const auto& [name, type] : served) {
    auto it = doc.find(name);
    if (it == doc.end()) {
      ADD_FAILURE() << name << " is served but not listed in docs/metrics.md";
    } else {
      EXPECT_EQ(it->second, type) << name << ": docs/metrics.md says " << it->second;
    }
  }
  for (const auto& [name, type] : doc) {
    EXPECT_TRUE(served.count(name)) << name << " is listed in docs/metrics.md but not served";
  }
}

}  // namespace
}  // namespace sshring::metrics
