// A real Prometheus (Debian's /usr/bin/prometheus) scrapes running exporters every second with the
// project's rules loaded; then every Grafana panel query in deploy/grafana must parse and return data,
// and the recording rules and an alert must evaluate.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/unique_fd.h"
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
  void SetUp() override { start(); }

  void start() {
    ASSERT_TRUE(fs::exists("/usr/bin/prometheus")) << "/usr/bin/prometheus missing: run scripts/install-deps";
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

// An upstream that reads kUp bytes from each client, answers kDown bytes and closes.
class Upstream {
 public:
  static constexpr size_t kUp = 1000, kDown = 500;
  Upstream() {
    fd_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    if (::bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), len) != 0 || ::listen(fd_.get(), 16) != 0 ||
        ::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      throw std::runtime_error("upstream listen failed");
    }
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] {
      while (true) {
        common::UniqueFd c(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (!c) return;  // shutdown() below
        size_t got = 0;
        char buf[4096];
        while (got < kUp) {
          ssize_t n = ::read(c.get(), buf, sizeof(buf));
          if (n <= 0) break;
          got += static_cast<size_t>(n);
        }
        std::string reply(kDown, 'y');
        (void)!::write(c.get(), reply.data(), reply.size());
      }
    });
  }
  ~Upstream() {
    ::shutdown(fd_.get(), SHUT_RDWR);
    thread_.join();
  }
  [[nodiscard]] uint16_t port() const { return port_; }

 private:
  common::UniqueFd fd_;
  uint16_t port_ = 0;
  std::thread thread_;
};

// One client session through the relay: send kUp bytes, read until the relay closes.
size_t session(uint16_t relay_port) {
  common::UniqueFd c(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(relay_port);
  if (::connect(c.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return 0;
  std::string out(Upstream::kUp, 'x');
  (void)!::write(c.get(), out.data(), out.size());
  size_t got = 0;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(c.get(), buf, sizeof(buf))) > 0) got += static_cast<size_t>(n);
  return got;
}

// The real `sshring relay` (static route) after known traffic: exact counters on its /metrics, and
// Prometheus scrapes it beside the stand-in exporters.
class RealRelayFixture : public PrometheusFixture {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists("/usr/bin/prometheus")) << "/usr/bin/prometheus missing: run scripts/install-deps";
    listen_port_ = sshring::testing::free_port();
    real_relay_metrics_port_ = sshring::testing::free_port();
    real_relay_ = Process(
        {sshring::testing::sshring_bin(), "relay", "--listen", "127.0.0.1:" + std::to_string(listen_port_),
         "--upstream", "127.0.0.1:" + std::to_string(upstream_.port()), "--metrics",
         "127.0.0.1:" + std::to_string(real_relay_metrics_port_), "--quiet"},
        {.stdout_path = dir_.file("sshring-relay.out"), .stderr_path = dir_.file("sshring-relay.err")});
    ASSERT_TRUE(sshring::testing::wait_for_port("127.0.0.1", listen_port_))
        << sshring::testing::read_file(dir_.file("sshring-relay.err"));
    ASSERT_TRUE(
        sshring::testing::wait_for_port("127.0.0.1", real_relay_metrics_port_, std::chrono::seconds(10)))
        << "sshring relay does not serve --metrics: "
        << sshring::testing::read_file(dir_.file("sshring-relay.err"));
    start();
  }
  Upstream upstream_;
  uint16_t listen_port_ = 0;
  Process real_relay_;
};

struct RelayCounters {
  double ended = 0, active = -1, up = 0, down = 0;
  std::string body;
};

RelayCounters relay_counters(uint16_t port) {
  RelayCounters c;
  c.body = testing::http_get("127.0.0.1", port, "/metrics");
  for (const auto& [key, v] : testing::parse_samples(c.body)) {
    if (key.rfind("sshring_relay_sessions_total{", 0) == 0) c.ended += v;
  }
  c.active = testing::sample(c.body, "sshring_relay_sessions_active").value_or(-1);
  c.up = testing::sample(c.body, "sshring_relay_bytes_total{direction=\"client_to_upstream\"}").value_or(-1);
  c.down =
      testing::sample(c.body, "sshring_relay_bytes_total{direction=\"upstream_to_client\"}").value_or(-1);
  return c;
}

// Polls the relay's /metrics until `done` holds (workers account a close a moment after it happens).
RelayCounters wait_counters(uint16_t port, const std::function<bool(const RelayCounters&)>& done) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  auto c = relay_counters(port);
  while (!done(c) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    c = relay_counters(port);
  }
  return c;
}

TEST_F(RealRelayFixture, KnownTrafficGivesExactCountersAndIsScraped) {
  // The readiness probes (wait_for_port) were sessions too: start from where they left the counters.
  auto before = wait_counters(real_relay_metrics_port_, [](const RelayCounters& c) { return c.active == 0; });
  ASSERT_EQ(before.active, 0) << before.body;

  constexpr int kSessions = 3;
  for (int i = 0; i < kSessions; ++i) ASSERT_EQ(session(listen_port_), Upstream::kDown);
  auto after = wait_counters(real_relay_metrics_port_, [&](const RelayCounters& c) {
    return c.ended >= before.ended + kSessions && c.active == 0;
  });
  EXPECT_EQ(after.ended - before.ended, kSessions) << after.body;
  EXPECT_EQ(after.active, 0) << after.body;
  EXPECT_EQ(after.up - before.up, kSessions * Upstream::kUp) << after.body;
  EXPECT_EQ(after.down - before.down, kSessions * Upstream::kDown) << after.body;

  // Prometheus scrapes it as a relay target and reaches the same numbers.
  std::string inst = "127.0.0.1:" + std::to_string(real_relay_metrics_port_);
  std::string want = std::to_string(static_cast<uint64_t>(after.up + after.down));
  nlohmann::json r;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  do {
    r = query("sum(sshring_relay_bytes_total{job=\"sshring-relay\",instance=\"" + inst + "\"})");
    if (r["data"]["result"].size() == 1 && r["data"]["result"][0]["value"][1] == want) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  } while (std::chrono::steady_clock::now() < deadline);
  ASSERT_EQ(r["data"]["result"].size(), 1u) << r.dump();
  EXPECT_EQ(r["data"]["result"][0]["value"][1], want);
}

}  // namespace
}  // namespace sshring::metrics
