// Central collection through real rsyslog daemons in network namespaces this test creates: two "hosts"
// (a relay and an agent writer, each with its own rsyslogd running deploy/rsyslog/sshring-host.conf)
// forward over RELP to a "collector" (deploy/rsyslog/sshring-collector.conf, one file per writer).
// The collector's files must equal the writers' own files byte for byte and verify with the writers'
// keys; with the collector down for ~30 s nothing is lost (the hosts' disk-assisted queues catch up);
// a collector filter that discards one record shows up as that writer's seq gap.
// Only the site values (socket path, collector address, port, output dir) are substituted in the
// shipped configs.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <sstream>
#include <thread>

#include "metrics/audit.h"
#include "metrics/audit_key.h"
#include "metrics/audit_types.h"
#include "metrics/audit_verify.h"
#include "tests/support/netns.h"
#include "tests/support/process.h"

namespace sshring::metrics {
namespace {

namespace fs = std::filesystem;
using sshring::testing::NetNs;
using sshring::testing::Process;
using sshring::testing::read_file;
using sshring::testing::TempDir;
using sshring::testing::write_file;

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos; pos += to.size()) s.replace(pos, from.size(), to);
  return s;
}

std::string deploy(const std::string& name) {
  return read_file(std::string(SSHRING_SOURCE_DIR) + "/deploy/rsyslog/" + name);
}

std::string host_name() {
  char h[256] = {};
  ::gethostname(h, sizeof(h) - 1);
  return h;
}

constexpr const char* kPort = "20514";

// One rsyslogd with its own config, work dir and pid file.
struct Daemon {
  std::string dir;
  std::string conf;
  std::string netns;
  Process proc;
  void start() {
    proc = Process({"rsyslogd", "-n", "-f", conf, "-i", dir + "/rsyslogd.pid"},
                   {.stdout_path = dir + "/out.log", .stderr_path = dir + "/err.log", .netns = netns});
  }
  void stop() { proc.stop(); }
};

// Writes the main config: work dir, (hosts) imuxsock without the system socket, then the shipped file.
Daemon make_daemon(const std::string& dir, const std::string& netns, const std::string& shipped, bool uxsock) {
  fs::create_directories(dir);
  write_file(dir + "/sshring.conf", shipped);
  std::string main = "global(workDirectory=\"" + dir + "\")\n";
  if (uxsock) main += "module(load=\"imuxsock\" SysSock.Use=\"off\")\n";
  main += "include(file=\"" + dir + "/sshring.conf\")\n";
  write_file(dir + "/rsyslog.conf", main);
  std::string out;
  EXPECT_EQ(sshring::testing::run({"rsyslogd", "-N1", "-f", dir + "/rsyslog.conf"}, &out), 0) << out;
  return Daemon{dir, dir + "/rsyslog.conf", netns, {}};
}

std::string host_conf(const std::string& sock, const std::string& collector_ip) {
  auto s = deploy("sshring-host.conf");
  s = replace_all(s, "/run/sshring/syslog.sock", sock);
  s = replace_all(s, "collector.example.net", collector_ip);
  return replace_all(s, "\"2514\"", std::string("\"") + kPort + "\"");
}

std::string collector_conf(const std::string& out_dir, const std::string& filter) {
  auto s = deploy("sshring-collector.conf");
  s = replace_all(s, "/var/log/sshring-collector/", out_dir + "/");
  s = replace_all(s, "\"2514\"", std::string("\"") + kPort + "\"");
  return replace_all(s, "# site filters here", filter);
}

size_t line_count(const std::string& path) {
  if (!fs::exists(path)) return 0;
  auto s = read_file(path);
  return static_cast<size_t>(std::count(s.begin(), s.end(), '\n'));
}

// Waits (bounded) until `path` holds `n` lines.
bool wait_lines(const std::string& path, size_t n, std::chrono::seconds limit = std::chrono::seconds(120)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (line_count(path) >= n) return line_count(path) == n;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return false;
}

SessionEnd session(int i) {
  SessionEnd e;
  e.session_id = "s" + std::to_string(i);
  e.client = "10.0.0.9:4000";
  e.principal = "alice";
  e.bytes_up = static_cast<uint64_t>(i);
  e.reason = "closed";
  return e;
}

FlowClose flow(int i) {
  return FlowClose{.flow = {.src = "10.0.0.9", .dst = "10.0.0.5", .sport = static_cast<uint16_t>(1000 + i), .dport = 22},
                   .tag = i % 7 == 0 ? "bypass_unapproved" : "bypass_approved",
                   .bytes_in = static_cast<uint64_t>(i),
                   .end = "fin"};
}

class AuditRsyslog : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!sshring::testing::can_use_netns(&why)) {
      if (std::getenv("CI")) FAIL() << why;
      GTEST_SKIP() << why;
    }
    collector_ns_ = std::make_unique<NetNs>("coll");
    h1_ns_ = std::make_unique<NetNs>("host1");
    h2_ns_ = std::make_unique<NetNs>("host2");
    sshring::testing::link_veth(*collector_ns_, "c1", "10.77.1.1/24", *h1_ns_, "h1", "10.77.1.2/24");
    sshring::testing::link_veth(*collector_ns_, "c2", "10.77.2.1/24", *h2_ns_, "h2", "10.77.2.2/24");
    out_ = dir_.file("collected");
    fs::create_directories(out_);
    collector_ = make_daemon(dir_.file("collector"), collector_ns_->name(), collector_conf(out_, ""), false);
    host1_ = make_daemon(dir_.file("host1"), h1_ns_->name(), host_conf(dir_.file("host1.sock"), "10.77.1.1"), true);
    host2_ = make_daemon(dir_.file("host2"), h2_ns_->name(), host_conf(dir_.file("host2.sock"), "10.77.2.1"), true);
    collector_.start();
    host1_.start();
    host2_.start();
    for (const auto& s : {dir_.file("host1.sock"), dir_.file("host2.sock")}) {
      auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (!fs::exists(s) && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      ASSERT_TRUE(fs::exists(s)) << "rsyslogd did not create " << s << ": " << read_file(host1_.dir + "/err.log");
    }
  }

  AuditOptions writer(const std::string& component, const std::string& sock) {
    AuditOptions o;
    o.path = dir_.file(component + ".audit.jsonl");
    o.component = component;
    o.batch_interval = std::chrono::milliseconds(20);
    o.syslog = true;
    o.syslog_socket = sock;
    o.key_path = dir_.file(component + ".key");
    o.checkpoint_every = 50;
    return o;
  }

  TrustedKeys trusted() {
    TrustedKeys t;
    for (const char* c : {"relay", "agent"}) {
      auto line = AuditKey::load(dir_.file(std::string(c) + ".key")).public_line();
      t.add(std::string(c) + "@" + host_name(), *parse_public_key("ssh-ed25519", line.substr(12), nullptr));
    }
    return t;
  }

  std::string collected(const std::string& component) { return out_ + "/" + component + "@" + host_name() + ".audit.jsonl"; }

  // The collector's copy equals the writer's file and verifies with the writer's key.
  void expect_complete(const AuditOptions& o) {
    ASSERT_TRUE(wait_lines(collected(o.component), line_count(o.path)))
        << o.component << ": collector has " << line_count(collected(o.component)) << " of " << line_count(o.path)
        << " lines; collector stderr: " << read_file(collector_.dir + "/err.log");
    EXPECT_EQ(read_file(collected(o.component)), read_file(o.path)) << o.component;
    auto keys = trusted();
    VerifyOptions v{.trusted = &keys, .require_head = true, .collector = true};
    auto res = verify_chain({collected(o.component)}, v);
    EXPECT_TRUE(res.ok()) << (res.error ? res.error->to_string() : res.gaps.front().to_string());
    EXPECT_EQ(res.records, line_count(o.path));
    EXPECT_GE(res.checkpoints, 1u);
  }

  TempDir dir_;
  std::unique_ptr<NetNs> collector_ns_, h1_ns_, h2_ns_;
  std::string out_;
  Daemon collector_, host1_, host2_;
};

TEST_F(AuditRsyslog, TwoHostsReachTheCollectorSurviveItsOutageAndGapsAreNamed) {
  auto ro = writer("relay", dir_.file("host1.sock"));
  auto ao = writer("agent", dir_.file("host2.sock"));
  AuditLog relay(ro);
  AuditLog agent(ao);
  int n = 0;
  for (; n < 120; ++n) {
    relay.append(session(n));
    agent.append(flow(n));
  }
  ASSERT_TRUE(relay.flush());
  ASSERT_TRUE(agent.flush());
  expect_complete(ro);
  expect_complete(ao);

  // The collector goes away for ~30 s while both writers go on; then it comes back.
  collector_.stop();
  for (int s = 0; s < 30; ++s, ++n) {
    for (int i = 0; i < 5; ++i) {
      relay.append(session(n * 10 + i));
      agent.append(flow(n * 10 + i));
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  relay.flush();
  agent.flush();
  collector_.start();
  expect_complete(ro);
  expect_complete(ao);

  // A filter on the way discards one relay record: verify names the writer and the seq.
  collector_.stop();
  std::string writer_id = "relay@" + host_name();
  uint64_t lost = line_count(ro.path) + 3;  // seq of a record yet to be written
  collector_ = make_daemon(collector_.dir, collector_ns_->name(),
                           collector_conf(out_, "if $!rfc5424-sd!sshring@32473!writer == \"" + writer_id +
                                                    "\" and $!rfc5424-sd!sshring@32473!seq == \"" +
                                                    std::to_string(lost) + "\" then stop"),
                           false);
  collector_.start();
  for (int i = 0; i < 10; ++i) relay.append(session(100000 + i));
  relay.flush();
  ASSERT_TRUE(wait_lines(collected("relay"), line_count(ro.path) - 1));
  auto keys = trusted();
  VerifyOptions v{.trusted = &keys, .require_head = true, .collector = true};
  auto res = verify_chain({collected("relay")}, v);
  ASSERT_EQ(res.gaps.size(), 1u) << (res.error ? res.error->to_string() : "");
  EXPECT_NE(res.gaps[0].message.find(writer_id + ": seq " + std::to_string(lost) + " missing"), std::string::npos)
      << res.gaps[0].message;
  EXPECT_FALSE(res.error) << res.error->to_string();
  // The command line says the same, for every writer in the collector's directory, and exits 1.
  write_file(dir_.file("trusted"), writer_id + " " + AuditKey::load(ro.key_path).public_line() + "\n* " +
                                       AuditKey::load(ao.key_path).public_line() + "\n");
  std::string out;
  int rc = sshring::testing::run({sshring::testing::sshring_bin(), "audit", "verify", "--collector", "--trusted-keys",
                                  dir_.file("trusted"), "--dir", out_},
                                 &out);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("GAP"), std::string::npos) << out;
  EXPECT_NE(out.find(writer_id + ": seq " + std::to_string(lost) + " missing"), std::string::npos) << out;
  EXPECT_NE(out.find("OK   " + collected("agent")), std::string::npos) << out;
}

}  // namespace
}  // namespace sshring::metrics
