// The built `sshring agent` in a host namespace with a real sshd, and ssh clients in a client
// namespace whose veth carries one address per kind of source:
//
//   client netns (10.77.1.2 granted, 10.77.2.2 ungranted, 10.77.9.2 relay, 10.77.4.2 short grant)
//     vc  <-- veth -->  vh  host netns (10.77.0.1, sshd :22, agent on vh ingress+egress)
//
// Checked: each tag in flow_open/flow_close audit records, enforce mode refusing the unapproved,
// a grant expiring during the test, per-flow bytes against the veth's own counters, an agent restart
// in the middle of a transfer (counts keep growing, no second filter), and --detach.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "policy/grant.h"
#include "policy/grant_store.h"
#include "tests/bpf/raw_inject.h"
#include "tests/policy/etcd_cluster.h"
#include "tests/policy/grant_fixture.h"
#include "tests/support/netns.h"
#include "tests/support/process.h"
#include "tests/support/sshd.h"

namespace sshring::testing {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

constexpr const char* kHostAddr = "10.77.0.1";
// Not 22: OpenSSH looks up port-22 hosts in known_hosts without the [host]:port form the fixture writes.
constexpr uint16_t kSshPort = 2222;
constexpr const char* kGranted = "10.77.1.2";
constexpr const char* kUngranted = "10.77.2.2";
constexpr const char* kRelay = "10.77.9.2";
constexpr const char* kShort = "10.77.4.2";

std::vector<json> read_records(const std::string& path) {
  std::vector<json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    auto j = json::parse(line, nullptr, false);
    if (!j.is_discarded()) out.push_back(std::move(j));
  }
  return out;
}

// Waits for a record of `type` from `src`; returns the n-th (0-based) such record.
std::optional<json> wait_record(const std::string& path, const std::string& type, const std::string& src,
                                size_t nth = 0, std::chrono::milliseconds timeout = 15s,
                                const std::string& tag = "") {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  do {
    size_t seen = 0;
    for (auto& r : read_records(path)) {
      if (r.value("type", "") != type || !r.contains("flow") || r["flow"].value("src", "") != src) continue;
      if (!tag.empty() && r.value("tag", "") != tag) continue;
      if (seen++ == nth) return r;
    }
    std::this_thread::sleep_for(100ms);
  } while (std::chrono::steady_clock::now() < deadline);
  return std::nullopt;
}

// Every record from `src`, one per line: printed when a check on them fails.
std::string records_from(const std::string& path, const std::string& src) {
  std::string out;
  for (auto& r : read_records(path))
    if (r.contains("flow") && r["flow"].value("src", "") == src) out += r.dump() + "\n";
  return out;
}

uint64_t iface_bytes(const NetNs& ns, const std::string& dev) {
  std::string out;
  ns.exec("cat /sys/class/net/" + dev + "/statistics/rx_bytes /sys/class/net/" + dev + "/statistics/tx_bytes",
          &out);
  std::istringstream in(out);
  uint64_t rx = 0, tx = 0;
  in >> rx >> tx;
  return rx + tx;
}

class AgentIntegration : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!can_use_netns(&why)) GTEST_SKIP() << why;
    if (::access("/sys/kernel/btf/vmlinux", R_OK) != 0) GTEST_SKIP() << "kernel has no BTF";
    host_.emplace("agent-host");
    cli_.emplace("agent-cli");
    link_veth(*host_, "vh", std::string(kHostAddr) + "/16", *cli_, "vc", std::string(kGranted) + "/16");
    for (const char* a : {kUngranted, kRelay, kShort})
      ASSERT_EQ(run({"ip", "-n", cli_->name(), "addr", "add", std::string(a) + "/16", "dev", "vc"}), 0);
    // A bpffs of our own: `ip netns exec` hides /sys/fs/bpf, and a real pin root must stay untouched.
    bpffs_ = dir_.file("bpffs");
    ASSERT_EQ(run({"mkdir", "-p", bpffs_}), 0);
    ASSERT_EQ(::mount("bpf", bpffs_.c_str(), "bpf", 0, nullptr), 0) << "mount bpffs";
    mounted_ = true;
    pin_dir_ = bpffs_ + "/sshring-test-" + std::to_string(::getpid());
    audit_ = dir_.file("agent.audit.jsonl");
    grants_ = dir_.file("grants");
    now_ = ::time(nullptr);
    policy::DirGrantStore store(grants_);
    store.add(make_grant("g-0000000000a1", "10.77.1.0/24", now_ + 3600));
    short_expiry_ = now_ + 25;  // room for agent start and ssh on a loaded 2-CPU machine
    store.add(make_grant("g-0000000000b2", "10.77.4.0/24", short_expiry_));
    write_file(dir_.file("policy.yaml"), std::string("version: 1\ngrant_store: ") + grants_ + R"(
relays: [10.77.9.0/24]
hosts:
  - name: test
    cidrs: [10.77.0.0/24, "fd77::/64"]
    ssh_ports: [2222]
roles: [{name: ops, targets: [{cidrs: [10.77.0.0/24]}]}]
principals: [{name: alice, roles: [ops], keys: [")" +
                                             alice_.key_line() + R"("]}]
opt_out:
  - id: ops
    who: {roles: [], principals: [alice]}
    from: [10.77.0.0/16]
    to: {cidrs: [10.77.0.0/24], ports: [2222]}
    max_ttl: 8h
    expires: 2099-01-01T00:00:00Z
)");
    sshd_.emplace(Sshd::Options{.listen_addr = kHostAddr, .port = kSshPort, .netns = host_->name()});
  }

  void TearDown() override {
    agent_.reset();
    if (host_)
      run({"ip", "netns", "exec", host_->name(), sshring_bin(), "agent", "--detach", "--iface", "vh",
           "--pin-dir", pin_dir_});
    sshd_.reset();
    if (mounted_) ::umount2(bpffs_.c_str(), MNT_DETACH);
  }

  // Grants are honoured only when signed by a key the policy lists (alice's).
  policy::SignedGrant make_grant(const char* id, const char* from, int64_t expires) {
    const int64_t now = ::time(nullptr);
    auto r = policy::testing::request_for("alice", "ops", from, "10.77.0.1/32", expires - now, now);
    r.ports = policy::PortSet::single(kSshPort);
    r.reason = "integration test";
    return policy::testing::signed_by(alice_, r, id);
  }
  void revoke(policy::DirGrantStore& store, const char* id, int64_t at = ::time(nullptr)) {
    ASSERT_TRUE(store.update(id, [&](policy::SignedGrant& g) {
      policy::testing::add_decision(g, alice_, policy::DecisionKind::kRevoke, at, "done");
    }));
  }
  policy::testing::Person alice_ = policy::testing::person("alice");

  // `source`: where the policy comes from (default: --policy with the test's file).
  void start_agent(bool enforce, const std::string& log_name, const std::string& idle = "1h",
                   std::vector<std::string> source = {}) {
    if (source.empty()) source = {"--policy", dir_.file("policy.yaml")};
    std::vector<std::string> argv = {sshring_bin(), "agent",          "--iface",        "vh",
                                     "--pin-dir",   pin_dir_,         "--audit-log",    audit_,
                                     "--metrics",   "127.0.0.1:9465", "--idle-timeout", idle};
    argv.insert(argv.end(), source.begin(), source.end());
    if (enforce) argv.push_back("--enforce");
    Process::Options o;
    o.netns = host_->name();
    o.stderr_path = dir_.file(log_name);
    agent_.emplace(argv, o);
    // Ready once it logs that it runs (both filters attached, maps synced).
    for (int i = 0; i < 100; i++) {
      if (read_file(dir_.file(log_name)).find("agent: running") != std::string::npos) return;
      ASSERT_TRUE(agent_->running()) << "agent exited: " << read_file(dir_.file(log_name));
      std::this_thread::sleep_for(100ms);
    }
    FAIL() << "agent did not attach: " << read_file(dir_.file(log_name));
  }

  void stop_agent() {
    agent_->signal(SIGTERM);
    auto rc = agent_->wait(10s);
    EXPECT_EQ(rc.value_or(-1), 0);
    agent_.reset();
  }

  // ssh from `src` to the host running `cmd`; stdin from `input` (a shell snippet) if given.
  int ssh(const std::string& src, const std::string& cmd, const std::string& input = "",
          const std::string& timeout = "10") {
    std::string line = input.empty() ? "" : "(" + input + ") | ";
    for (auto a : sshd_->ssh_base_args()) {
      if (a == "ConnectTimeout=10") a = "ConnectTimeout=" + timeout;
      line += "'" + a + "' ";
    }
    line += "-b " + src + " -p " + std::to_string(kSshPort) + " " + kHostAddr + " '" + cmd + "'";
    if (input.empty()) line += " </dev/null";
    return cli_->exec(line);
  }

  // A long-running ssh session from `src` in the client namespace; its stdout goes to `out`.
  Process ssh_bg(const std::string& src, const std::string& cmd, const std::string& out) {
    std::vector<std::string> argv = sshd_->ssh_base_args();  // starts with "ssh"
    for (const std::string& a :
         {std::string("-o"), std::string("ServerAliveInterval=0"), std::string("-b"), src, std::string("-p"),
          std::to_string(kSshPort), std::string(kHostAddr), cmd})
      argv.push_back(a);
    Process::Options o;
    o.netns = cli_->name();
    o.stdout_path = out;
    o.stderr_path = out + ".err";
    return Process(argv, o);
  }

  // Established TCP connections to sshd in the host namespace.
  int sshd_connections() {
    std::string out;
    host_->exec("ss -Htn state established '( sport = :" + std::to_string(kSshPort) + " )' | wc -l", &out);
    return std::stoi(out.empty() ? "0" : out);
  }

  std::string tc_filters() {
    std::string in, eg;
    host_->exec("tc filter show dev vh ingress", &in);
    host_->exec("tc filter show dev vh egress", &eg);
    return in + eg;
  }

  TempDir dir_;
  std::optional<NetNs> host_, cli_;
  std::optional<Sshd> sshd_;
  std::optional<Process> agent_;
  std::string bpffs_, pin_dir_, audit_, grants_;
  bool mounted_ = false;
  int64_t now_ = 0, short_expiry_ = 0;
};

// Value of one sample ("name" or "name{labels}") on the agent's /metrics, or -1 if absent.
double metric(const NetNs& ns, const std::string& sample) {
  std::string out;
  ns.exec("curl -s http://127.0.0.1:9465/metrics", &out);
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(sample + " ", 0) == 0) return std::stod(line.substr(sample.size() + 1));
  }
  return -1;
}

// Waits until `pred` holds or `timeout` passes.
template <class P>
bool eventually(P pred, std::chrono::milliseconds timeout = 15s) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(100ms);
  }
  return true;
}

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) n++;
  return n;
}

TEST_F(AgentIntegration, TagsCountsEnforcesSurvivesRestartAndDetaches) {
  start_agent(false, "agent1.log");

  // Each kind of source, count-only mode: every connection goes through and is tagged.
  EXPECT_EQ(ssh(kRelay, "true"), 0);
  EXPECT_EQ(ssh(kUngranted, "true"), 0);
  EXPECT_EQ(ssh(kShort, "true"), 0);
  struct Want {
    const char* src;
    const char* tag;
    const char* grant;
  };
  for (const Want& w : {Want{kRelay, "proxied", ""}, Want{kUngranted, "bypass_unapproved", ""},
                        Want{kShort, "bypass_approved", "g-0000000000b2"}}) {
    SCOPED_TRACE(w.src);
    auto open = wait_record(audit_, "flow_open", w.src);
    ASSERT_TRUE(open.has_value());
    EXPECT_EQ((*open)["tag"], w.tag);
    EXPECT_EQ(open->value("grant_id", ""), w.grant);
    EXPECT_EQ((*open)["flow"]["dport"], kSshPort);
    auto close = wait_record(audit_, "flow_close", w.src);
    ASSERT_TRUE(close.has_value());
    EXPECT_EQ((*close)["tag"], w.tag);
    EXPECT_GT((*close)["bytes_in"].get<uint64_t>(), 1000u);
    EXPECT_GT((*close)["bytes_out"].get<uint64_t>(), 1000u);
    EXPECT_TRUE((*close)["end"] == "fin" || (*close)["end"] == "local_close") << close->dump();
  }

  // Bytes: 8 MiB through ssh from the granted source; the flow's bytes (both ways, L2 frames as seen
  // on the hook) against the client veth's rx+tx counters over the same interval (only this flow
  // and a few ARP frames cross it).
  const uint64_t before = iface_bytes(*cli_, "vc");
  ASSERT_EQ(ssh(kGranted, "cat > /dev/null", "head -c 8388608 /dev/zero"), 0);
  auto big = wait_record(audit_, "flow_close", kGranted);
  const uint64_t wire = iface_bytes(*cli_, "vc") - before;
  ASSERT_TRUE(big.has_value());
  EXPECT_EQ((*big)["tag"], "bypass_approved");
  EXPECT_EQ((*big)["grant_id"], "g-0000000000a1");
  const uint64_t flow_bytes = (*big)["bytes_in"].get<uint64_t>() + (*big)["bytes_out"].get<uint64_t>();
  EXPECT_GT((*big)["bytes_in"].get<uint64_t>(), 8388608u);
  const double err = std::abs(static_cast<double>(flow_bytes) - static_cast<double>(wire)) / wire;
  EXPECT_LT(err, 0.01) << "flow " << flow_bytes << " bytes, veth " << wire << " bytes";
  RecordProperty("flow_bytes", std::to_string(flow_bytes));
  RecordProperty("veth_bytes", std::to_string(wire));

  // Metrics are exported from the kernel's per-tag counters.
  std::string metrics;
  host_->exec("curl -s http://127.0.0.1:9465/metrics", &metrics);
  EXPECT_NE(metrics.find("sshring_bypass_flows_total{tag=\"bypass_approved\"}"), std::string::npos)
      << metrics;

  // Restart in the middle of a transfer: 2 MiB, agent stopped, 2 MiB while it is down, agent back
  // (replacing its own filter, not adding one), 2 MiB, close. The close record carries all of it.
  Process::Options po;
  po.netns = cli_->name();
  std::string line;
  for (const auto& a : sshd_->ssh_base_args()) line += "'" + a + "' ";
  line =
      "(head -c 2097152 /dev/zero; sleep 3; head -c 2097152 /dev/zero; sleep 3; head -c 2097152 /dev/zero) "
      "| " +
      line + "-b " + kGranted + " -p " + std::to_string(kSshPort) + " " + kHostAddr + " 'cat > /dev/null'";
  Process transfer({"sh", "-c", line}, po);
  std::this_thread::sleep_for(1500ms);
  stop_agent();
  EXPECT_EQ(count(tc_filters(), "handle 0x5353"), 2u) << "filters stay attached while the agent is down";
  std::this_thread::sleep_for(2500ms);
  start_agent(true, "agent2.log");  // also switches enforce on, without a reload
  // One filter per direction: the restarted agent replaced its own, it did not add a second.
  EXPECT_EQ(count(tc_filters(), "handle 0x5353"), 2u) << tc_filters();
  EXPECT_EQ(count(tc_filters(), "name sshring_ingress"), 1u) << tc_filters();
  EXPECT_EQ(count(tc_filters(), "name sshring_egress"), 1u) << tc_filters();
  ASSERT_EQ(transfer.wait(30s).value_or(-1), 0);
  auto restarted = wait_record(audit_, "flow_close", kGranted, 1);
  ASSERT_TRUE(restarted.has_value());
  EXPECT_GT((*restarted)["bytes_in"].get<uint64_t>(), 3u * 2097152) << restarted->dump();
  EXPECT_EQ((*restarted)["grant_id"], "g-0000000000a1");

  // Enforce: the ungranted source is refused, the granted one still gets in.
  EXPECT_NE(ssh(kUngranted, "true", "", "3"), 0);
  auto denied = wait_record(audit_, "flow_open", kUngranted, 1);
  ASSERT_TRUE(denied.has_value());
  EXPECT_EQ((*denied)["tag"], "bypass_unapproved");
  EXPECT_EQ(denied->value("enforced", false), true);
  EXPECT_EQ(ssh(kGranted, "true"), 0);

  // Hot reload: a new grant for the refused source lets it in (enforce stays on); revoking it makes
  // the next flow bypass_expired and refused again.
  auto synced = [&] { return count(read_file(dir_.file("agent2.log")), "kernel maps synced"); };
  auto wait_synced = [&](size_t n) {
    for (int i = 0; i < 100 && synced() < n; i++) std::this_thread::sleep_for(100ms);
    return synced() >= n;
  };
  size_t syncs = synced();
  policy::DirGrantStore store(grants_);
  store.add(make_grant("g-0000000000c3", "10.77.2.0/24", ::time(nullptr) + 3600));
  ASSERT_TRUE(wait_synced(syncs + 1)) << "no reload after a new grant";
  EXPECT_EQ(ssh(kUngranted, "true"), 0);
  auto granted = wait_record(audit_, "flow_open", kUngranted, 0, 15s, "bypass_approved");
  ASSERT_TRUE(granted.has_value());
  EXPECT_EQ((*granted)["tag"], "bypass_approved");
  EXPECT_EQ((*granted)["grant_id"], "g-0000000000c3");
  syncs = synced();
  revoke(store, "g-0000000000c3");
  ASSERT_TRUE(wait_synced(syncs + 1)) << "no reload after a revoke";
  EXPECT_NE(ssh(kUngranted, "true", "", "3"), 0);
  auto revoked = wait_record(audit_, "flow_open", kUngranted, 0, 15s, "bypass_expired");
  ASSERT_TRUE(revoked.has_value());
  EXPECT_EQ((*revoked)["tag"], "bypass_expired");
  EXPECT_EQ((*revoked)["grant_id"], "g-0000000000c3");

  // The short grant expires while we run: the kernel tags new flows expired (and drops them).
  auto wait_s = short_expiry_ + 1 - ::time(nullptr);
  if (wait_s > 0) std::this_thread::sleep_for(std::chrono::seconds(wait_s));
  EXPECT_NE(ssh(kShort, "true", "", "3"), 0);
  auto expired = wait_record(audit_, "flow_open", kShort, 1);
  ASSERT_TRUE(expired.has_value());
  EXPECT_EQ((*expired)["tag"], "bypass_expired");
  EXPECT_EQ((*expired)["grant_id"], "g-0000000000b2");
  EXPECT_EQ(expired->value("enforced", false), true);

  stop_agent();
  // Detach removes our filters and the qdisc the agent created, and the pins.
  ASSERT_EQ(run({"ip", "netns", "exec", host_->name(), sshring_bin(), "agent", "--detach", "--iface", "vh",
                 "--pin-dir", pin_dir_}),
            0);
  EXPECT_EQ(count(tc_filters(), "handle 0x5353"), 0u) << tc_filters();
  std::string qdisc;
  host_->exec("tc qdisc show dev vh", &qdisc);
  EXPECT_EQ(qdisc.find("clsact"), std::string::npos) << qdisc;
  EXPECT_NE(::access((pin_dir_ + "/maps/flows").c_str(), F_OK), 0);
}

TEST_F(AgentIntegration, IdleFlowIsEvictedAndReported) {
  start_agent(false, "agent.log", "2s");
  // An interactive-looking session that sends nothing for 5 s: swept after 2 s idle.
  EXPECT_EQ(ssh(kGranted, "sleep 5"), 0);
  auto close = wait_record(audit_, "flow_close", kGranted);
  ASSERT_TRUE(close.has_value());
  EXPECT_EQ((*close)["end"], "evicted") << close->dump();
  EXPECT_EQ((*close)["tag"], "bypass_approved");
  EXPECT_GT((*close)["bytes_in"].get<uint64_t>(), 1000u);
  stop_agent();
}

TEST_F(AgentIntegration, ClearErrors) {
  std::string out;
  int rc = sh("ip netns exec " + host_->name() + " " + sshring_bin() + " agent --policy " +
                  dir_.file("policy.yaml") + " --iface nosuch0 --pin-dir " + pin_dir_ + " 2>&1",
              &out);
  EXPECT_EQ(rc, 2);
  EXPECT_NE(out.find("interface 'nosuch0' not found"), std::string::npos) << out;

  // Not root: refused before touching the kernel, with the reason.
  rc = sh("setpriv --reuid=65534 --regid=65534 --clear-groups " + sshring_bin() + " agent --policy " +
              dir_.file("policy.yaml") + " --iface lo --pin-dir " + pin_dir_ + " 2>&1",
          &out);
  EXPECT_EQ(rc, 2);
  EXPECT_NE(out.find("must run as root"), std::string::npos) << out;

  // An unreadable policy names the file.
  rc = sh("ip netns exec " + host_->name() + " " + sshring_bin() + " agent --policy " +
              dir_.file("missing.yaml") + " --iface vh --pin-dir " + pin_dir_ + " 2>&1",
          &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("missing.yaml"), std::string::npos) << out;
  EXPECT_EQ(count(tc_filters(), "handle 0x5353"), 0u) << "nothing attached on a failed start";
}

// Crafted packets that the classifier cannot tag, sent from the client namespace with raw sockets
// and valid checksums. Count mode: the host's TCP answers each (SYN-ACK or RST): they reach the stack.
// Enforce mode: no answer, nothing reaches sshd, each counted under its kernel event.
TEST_F(AgentIntegration, CraftedPacketsDoNotReachSshdInEnforceMode) {
  ASSERT_EQ(run({"ip", "-n", host_->name(), "addr", "add", "fd77::1/64", "dev", "vh", "nodad"}), 0);
  ASSERT_EQ(run({"ip", "-n", cli_->name(), "addr", "add", "fd77::2/64", "dev", "vc", "nodad"}), 0);
  std::string mac;
  host_->exec("cat /sys/class/net/vh/address", &mac);
  mac.erase(mac.find_last_not_of("\n ") + 1);
  // The client kernel must not answer the host's SYN-ACKs with RSTs before we see them: it does,
  // but only after our AF_PACKET socket has a copy, which is all we look at.
  struct Attack {
    const char* name;
    std::vector<std::vector<uint8_t>> packets;
    uint16_t sport;
    const char* event;
  };
  uint16_t port = 50000;
  auto v4syn = [&](int frags) {
    return ipv4_packets({.src = kUngranted, .dst = kHostAddr, .sport = port, .dport = kSshPort}, frags);
  };
  auto v6 = [&](std::vector<uint8_t> ext) {
    return std::vector<std::vector<uint8_t>>{
        ipv6_packet({.src = "fd77::2", .dst = "fd77::1", .sport = port, .dport = kSshPort, .v6_ext = ext})};
  };
  auto attacks = [&] {
    std::vector<Attack> a;
    port++;
    a.push_back({"v4_syn_two_fragments", v4syn(2), port, "fragment"});
    port++;
    a.push_back({"v6_syn_atomic_fragment", v6({44}), port, "fragment"});
    port++;
    a.push_back({"v6_syn_five_dest_opts", v6({60, 60, 60, 60, 60}), port, "v6_unparsed"});
    port++;
    a.push_back({"v4_psh_data_no_flow",
                 ipv4_packets({.src = kUngranted,
                               .dst = kHostAddr,
                               .sport = port,
                               .dport = kSshPort,
                               .flags = 0x18,
                               .payload = "SSH-2.0-OpenSSH_9.2\r\n"}),
                 port, "untracked"});
    port++;
    a.push_back(
        {"v4_bare_ack_no_flow",
         ipv4_packets({.src = kUngranted, .dst = kHostAddr, .sport = port, .dport = kSshPort, .flags = 0x10}),
         port, "untracked"});
    return a;
  };
  auto ev = [&](const char* e) {
    return metric(*host_, std::string("sshring_agent_kernel_events_total{event=\"") + e + "\"}");
  };

  start_agent(false, "count.log");
  for (auto& a : attacks()) {
    SCOPED_TRACE(a.name);
    EXPECT_EQ(inject_and_listen(cli_->name(), "vc", mac, a.packets, a.sport, 2s), 1)
        << "count mode: the host's TCP should answer (the packet is well formed)";
  }
  stop_agent();

  start_agent(true, "enforce.log");
  std::map<std::string, double> before;
  for (const char* e : {"fragment", "v6_unparsed", "untracked", "dropped_packet"}) before[e] = ev(e);
  const int conns = sshd_connections();
  std::map<std::string, int> sent;
  for (auto& a : attacks()) {
    SCOPED_TRACE(a.name);
    EXPECT_EQ(inject_and_listen(cli_->name(), "vc", mac, a.packets, a.sport, 2s), 0) << "enforce: no answer";
    sent[a.event] += static_cast<int>(a.packets.size());
    sent["dropped_packet"] += static_cast<int>(a.packets.size());
  }
  EXPECT_EQ(sshd_connections(), conns) << "nothing reached sshd";
  for (const auto& kv : sent) {
    const std::string& e = kv.first;  // not a structured binding: clang 14 cannot capture one
    const int n = kv.second;
    SCOPED_TRACE(e);
    EXPECT_TRUE(eventually([&] { return ev(e.c_str()) >= before[e] + n; }, 5s))
        << e << ": " << ev(e.c_str()) << " < " << before[e] << " + " << n;
  }
  // A real client with a grant still gets in.
  EXPECT_EQ(ssh(kGranted, "true"), 0);
  stop_agent();
}

// One RST with a live session's 4-tuple and a sequence number outside its window, spoofed from the
// client namespace: the host's TCP ignores it (the socket stays established). The kernel program used
// to delete the flow entry on any inbound RST, and enforce mode then dropped every later packet of
// the session as untracked: a port sweep of such RSTs froze every proxied session. The session must
// keep exchanging data, and its close record must not say it ended by RST.
TEST_F(AgentIntegration, OutOfWindowRstDoesNotFreezeASessionInEnforceMode) {
  std::string mac;
  host_->exec("cat /sys/class/net/vh/address", &mac);
  mac.erase(mac.find_last_not_of("\n ") + 1);
  start_agent(true, "enforce.log");
  // A line a second from the relay's client, echoed by the server: each echo needs client->server
  // packets to pass.
  std::string line = "(for i in 1 2 3 4 5 6 7 8; do echo ping $i; sleep 1; done) | ";
  for (const auto& a : sshd_->ssh_base_args()) line += "'" + a + "' ";
  line += std::string("-b ") + kRelay + " -p " + std::to_string(kSshPort) + " " + kHostAddr + " cat";
  const std::string out = dir_.file("echo.out");
  Process::Options po;
  po.netns = cli_->name();
  po.stdout_path = out;
  po.stderr_path = out + ".err";
  Process session({"sh", "-c", line}, po);
  ASSERT_TRUE(eventually([&] { return read_file(out).find("ping 1") != std::string::npos; }, 20s))
      << read_file(out + ".err");

  // The session's client port, from the client's side of the connection.
  std::string ss;
  cli_->exec("ss -Htn state established '( dport = :" + std::to_string(kSshPort) + " )'", &ss);
  const std::string local = std::string(kRelay) + ":";
  const size_t at = ss.find(local);
  ASSERT_NE(at, std::string::npos) << ss;
  const auto port = static_cast<uint16_t>(std::stoi(ss.substr(at + local.size())));
  // raw_inject sends sequence number 1: out of window for a connection with a random ISN.
  (void)inject_and_listen(
      cli_->name(), "vc", mac,
      ipv4_packets(
          {.src = kRelay, .dst = kHostAddr, .sport = port, .dport = kSshPort, .flags = 0x04 /* RST */}),
      port, 200ms);

  auto rc = session.wait(30s);
  ASSERT_TRUE(rc.has_value()) << "the session froze after the spoofed RST; got:\n" << read_file(out);
  EXPECT_EQ(*rc, 0) << read_file(out + ".err");
  EXPECT_NE(read_file(out).find("ping 8"), std::string::npos) << read_file(out);
  auto close = wait_record(audit_, "flow_close", kRelay);
  ASSERT_TRUE(close.has_value()) << records_from(audit_, kRelay);
  EXPECT_NE((*close)["end"], "rst") << "the RST did not end the connection: " << close->dump();
  EXPECT_EQ((*close)["tag"], "proxied");
  stop_agent();
}

// L3 devices (tun, WireGuard, ipip) hand tc the IP header with no Ethernet header in front; the
// classifier would read it as Ethernet and pass everything unseen. The agent does not attach there.
// With nothing else to watch it exits 2; with other interfaces it serves those (refusing to start
// would leave an older agent's programs attached with maps no one syncs).
TEST_F(AgentIntegration, AttachingToAnL3InterfaceIsRefused) {
  ASSERT_EQ(run({"ip", "-n", host_->name(), "tuntap", "add", "sshrtun0", "mode", "tun"}), 0);
  ASSERT_EQ(run({"ip", "-n", host_->name(), "link", "set", "sshrtun0", "up"}), 0);
  const std::string agent = "ip netns exec " + host_->name() + " timeout 20 " + sshring_bin() +
                            " agent --policy " + dir_.file("policy.yaml") + " --enforce --pin-dir " +
                            pin_dir_;
  std::string out;
  // Bounded: an agent that attaches runs until stopped (timeout's 124 fails the check below).
  int rc = sh(agent + " --iface sshrtun0 2>&1", &out);
  EXPECT_EQ(rc, 2) << out;
  EXPECT_NE(out.find("interface 'sshrtun0' has link type 65534 (none: tun, WireGuard), not Ethernet"),
            std::string::npos)
      << out;
  EXPECT_EQ(count(tc_filters(), "handle 0x5353"), 0u) << "nothing attached";

  start_agent(true, "both.log", "1h", {"--policy", dir_.file("policy.yaml"), "--iface", "vh,sshrtun0"});
  const std::string log = read_file(dir_.file("both.log"));
  EXPECT_NE(log.find("not attaching to an interface it cannot see into"), std::string::npos) << log;
  EXPECT_EQ(count(tc_filters(), "handle 0x5353"), 2u) << "vh is watched, both ways";
  std::string tun;
  host_->exec("tc filter show dev sshrtun0 ingress; tc filter show dev sshrtun0 egress", &tun);
  EXPECT_EQ(count(tun, "handle 0x5353"), 0u) << tun;
  EXPECT_EQ(metric(*host_, "sshring_agent_interfaces_unwatched"), 1) << "what pages the operator";
  EXPECT_EQ(ssh(kUngranted, "true", "", "5") == 0, false) << "enforce mode runs on vh";
  stop_agent();
}

// The client closes first: its FIN, the server's FIN, then the client's last ACK. The entry used to
// be deleted at the second FIN, so enforce mode dropped that ACK as untracked and the server socket
// sat in LAST-ACK retransmitting its FIN. Now the entry lasts until the socket closes.
TEST_F(AgentIntegration, LastAckPassesWhenTheClientClosesFirstInEnforceMode) {
  start_agent(true, "enforce.log");
  const std::string script = dir_.file("close_first.sh");
  // Read sshd's banner (so nothing is unread: close sends a FIN, not an RST), then close.
  write_file(script, std::string("exec 3<>/dev/tcp/") + kHostAddr + "/" + std::to_string(kSshPort) +
                         " || exit 1\nread -r -t 5 banner <&3 || exit 2\n"
                         "case \"$banner\" in SSH-*) ;; *) exit 3 ;; esac\nexec 3<&-\n");
  ASSERT_EQ(cli_->exec("bash " + script), 0) << "an approved client reaches sshd";
  auto close = wait_record(audit_, "flow_close", kGranted);
  ASSERT_TRUE(close.has_value()) << records_from(audit_, kGranted);
  EXPECT_EQ((*close)["end"], "fin") << close->dump();
  auto lingering = [&] {
    std::string ss;
    host_->exec("ss -Htn state last-ack '( sport = :" + std::to_string(kSshPort) + " )'", &ss);
    return ss;
  };
  EXPECT_TRUE(eventually([&] { return lingering().empty(); }, 3s))
      << "the server socket is stuck in LAST-ACK: " << lingering();
  stop_agent();
}

// A flow entry whose connection never came to be: a spoofed SYN from an address nobody holds, which
// the host answered into the void until its half-open connection expired. Once enforce mode is on
// the agent refuses the flow and tries to end its socket. There is none, and the kernel's exact
// lookup falls back to the listener on the server address and port: the agent used to destroy
// sshd's listening socket, and every client after it was refused (one spoofed packet, a host cut
// off). Ending such a flow now finds nothing and counts it, and sshd keeps listening.
TEST_F(AgentIntegration, EndingAFlowWithNoSocketLeavesSshdListening) {
  std::string mac;
  host_->exec("cat /sys/class/net/vh/address", &mac);
  mac.erase(mac.find_last_not_of("\n ") + 1);
  // The host gives up a half-open connection after one SYN-ACK retry (about 3 s, not a minute).
  ASSERT_EQ(host_->exec("sysctl -qw net.ipv4.tcp_synack_retries=1"), 0);
  start_agent(false, "count.log");
  const char* kSpoofed = "10.77.2.99";  // in the client's subnet, held by no one: no RST comes back
  (void)inject_and_listen(
      cli_->name(), "vc", mac,
      ipv4_packets({.src = kSpoofed, .dst = kHostAddr, .sport = 40001, .dport = kSshPort}), 40001, 200ms);
  auto open = wait_record(audit_, "flow_open", kSpoofed);
  ASSERT_TRUE(open.has_value()) << "count mode tracks the spoofed SYN";
  EXPECT_EQ((*open)["tag"], "bypass_unapproved");
  auto half_open = [&] {
    std::string out;
    host_->exec("ss -Htn state syn-recv", &out);
    return out.find(kSpoofed) != std::string::npos;
  };
  ASSERT_TRUE(eventually([&] { return !half_open(); }, 20s)) << "the half-open connection did not expire";
  stop_agent();

  start_agent(true, "enforce.log");  // its first walk refuses the flow left in the pinned map
  EXPECT_TRUE(eventually(
      [&] { return metric(*host_, "sshring_agent_refused_flows_without_socket_total") >= 1; }, 10s))
      << read_file(dir_.file("enforce.log"));
  EXPECT_EQ(metric(*host_, "sshring_agent_flow_cut_errors_total"), 0)
      << "nothing failed: there was nothing to end";
  EXPECT_EQ(metric(*host_, "sshring_agent_flows_cut_total"), 0) << "nothing to end, nothing ended";
  std::string listening;
  host_->exec("ss -Htln sport = :" + std::to_string(kSshPort), &listening);
  EXPECT_NE(listening.find(std::string(kHostAddr) + ":" + std::to_string(kSshPort)), std::string::npos)
      << "sshd's listener was destroyed";
  EXPECT_EQ(ssh(kGranted, "true"), 0) << "a client with a grant is refused: sshd stopped listening";
  stop_agent();
}

// sshd on 0.0.0.0 or :: answers on every address of its host, not only the ones the policy lists. A
// secondary address (here on the host's loopback, reached over the veth: Linux accepts a packet for
// any local address on any interface) and the IPv6 link-local address every interface has are
// protected too: before, an unapproved client reached a listener on them in enforce mode, untagged.
TEST_F(AgentIntegration, UnlistedAddressesOfTheHostAreProtected) {
  ASSERT_EQ(run({"ip", "-n", host_->name(), "addr", "add", "10.66.0.1/32", "dev", "lo"}), 0);
  ASSERT_EQ(run({"ip", "-n", cli_->name(), "route", "add", "10.66.0.1/32", "dev", "vc"}), 0);
  // Each side's link-local address, once duplicate address detection is done with it (a tentative
  // one can neither accept nor be the source of a connection).
  auto link_local = [](const NetNs& ns, const char* dev) {
    std::string ll;
    (void)eventually(
        [&] {
          std::string out;
          ns.exec(std::string("ip -6 -o addr show dev ") + dev + " scope link | grep -v tentative", &out);
          auto at = out.find("fe80::");
          if (at == std::string::npos) return false;
          ll = out.substr(at, out.find('/', at) - at);
          return true;
        },
        10s);
    return ll;
  };
  const std::string ll = link_local(*host_, "vh");
  ASSERT_FALSE(ll.empty()) << "no link-local address on vh";
  ASSERT_FALSE(link_local(*cli_, "vc").empty()) << "no link-local address on vc";
  const std::string server = dir_.file("listen.py");
  write_file(server, R"(import socket, sys, threading
def serve(s):
    while True:
        c, _ = s.accept(); c.sendall(b"ECHO\n"); c.close()
a = socket.socket(); a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
a.bind(("10.66.0.1", 2222)); a.listen(8)
b = socket.socket(socket.AF_INET6); b.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
b.bind(socket.getaddrinfo(sys.argv[1] + "%vh", 2222, socket.AF_INET6)[0][4]); b.listen(8)
threading.Thread(target=serve, args=(a,), daemon=True).start()
open(sys.argv[2], "w").close()
serve(b)
)");
  Process::Options o;
  o.netns = host_->name();
  o.stderr_path = dir_.file("listen.err");
  Process listener({"python3", server, ll, dir_.file("listening")}, o);
  ASSERT_TRUE(eventually([&] { return ::access(dir_.file("listening").c_str(), F_OK) == 0; }, 10s))
      << read_file(dir_.file("listen.err"));
  // 0: the listener answered; else refused or timed out.
  const std::string client = dir_.file("reach.py");
  write_file(client, R"(import socket, sys
ai = socket.getaddrinfo(sys.argv[1], 2222)[0]
s = socket.socket(ai[0]); s.settimeout(3)
if len(sys.argv) > 2: s.bind((sys.argv[2], 0))
s.connect(ai[4]); sys.exit(0 if s.recv(5) == b"ECHO\n" else 1)
)");
  auto reach = [&](const std::string& host, const std::string& bind) {
    return cli_->exec("timeout 10 python3 " + client + " " + host + (bind.empty() ? "" : " " + bind));
  };
  const std::string v6 = ll + "%vc";
  ASSERT_EQ(reach("10.66.0.1", kUngranted), 0) << "the listener is reachable before the agent runs";
  ASSERT_EQ(reach(v6, ""), 0) << "the link-local listener is reachable before the agent runs";

  start_agent(true, "enforce.log");
  EXPECT_NE(reach("10.66.0.1", kUngranted), 0) << "an unlisted local address let an unapproved client in";
  EXPECT_NE(reach(v6, ""), 0) << "the link-local address let an unapproved client in";
  EXPECT_TRUE(wait_record(audit_, "flow_open", kUngranted).has_value()) << "the refused flow was not logged";
  EXPECT_EQ(ssh(kGranted, "true"), 0) << "the listed address still serves a granted client";
  stop_agent();
}

// A relay's session to an address the policy does not list but the agent protects (here a secondary
// one) that was open before the agent started is seeded like any other: enforce mode keeps it.
TEST_F(AgentIntegration, ASessionOpenBeforeStartToAnUnlistedAddressIsSeeded) {
  ASSERT_EQ(run({"ip", "-n", host_->name(), "addr", "add", "10.66.0.1/32", "dev", "lo"}), 0);
  ASSERT_EQ(run({"ip", "-n", cli_->name(), "route", "add", "10.66.0.1/32", "dev", "vc"}), 0);
  const std::string server = dir_.file("echo.py");
  write_file(server, R"(import socket, sys
a = socket.socket(); a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
a.bind(("10.66.0.1", 2222)); a.listen(1); open(sys.argv[1], "w").close()
c, _ = a.accept()
while True:
    b = c.recv(64)
    if not b: break
    c.sendall(b)
)");
  Process::Options so;
  so.netns = host_->name();
  so.stderr_path = dir_.file("echo.err");
  Process echo({"python3", server, dir_.file("echo.ready")}, so);
  ASSERT_TRUE(eventually([&] { return ::access(dir_.file("echo.ready").c_str(), F_OK) == 0; }, 10s));
  // The client echoes one line per file that appears: go0 before the agent, go1 after it.
  const std::string client = dir_.file("client.py");
  write_file(client, R"(import os, socket, sys, time
s = socket.socket(); s.settimeout(5); s.bind((sys.argv[1], 0)); s.connect(("10.66.0.1", 2222))
for i in range(2):
    while not os.path.exists(sys.argv[2] + str(i)): time.sleep(0.05)
    s.sendall(b"line%d\n" % i)
    print(s.recv(64).decode().strip(), flush=True)
)");
  Process::Options co;
  co.netns = cli_->name();
  co.stdout_path = dir_.file("client.out");
  co.stderr_path = dir_.file("client.err");
  Process c({"python3", client, kRelay, dir_.file("go")}, co);
  write_file(dir_.file("go0"), "");
  ASSERT_TRUE(
      eventually([&] { return read_file(dir_.file("client.out")).find("line0") != std::string::npos; }, 10s))
      << read_file(dir_.file("client.err"));
  start_agent(true, "enforce.log");
  write_file(dir_.file("go1"), "");
  EXPECT_TRUE(
      eventually([&] { return read_file(dir_.file("client.out")).find("line1") != std::string::npos; }, 10s))
      << "the session open before the agent was dropped: " << read_file(dir_.file("client.err"));
  stop_agent();
}

// Enforce mode ends a live session when its grant expires and when it is revoked: the client sees its
// connection reset within about a second, a flow_cut record names the grant. Count mode only re-tags.
TEST_F(AgentIntegration, ExpiryAndRevocationEndLiveFlows) {
  start_agent(true, "agent.log");
  auto out = dir_.file("short.out");
  Process shortlived = ssh_bg(kShort, "sleep 60", out);
  auto open = wait_record(audit_, "flow_open", kShort);
  ASSERT_TRUE(open.has_value());
  ASSERT_EQ((*open)["tag"], "bypass_approved");
  ASSERT_LT(::time(nullptr), short_expiry_) << "machine too slow: the 25 s grant expired before the session";
  auto rc = shortlived.wait(std::chrono::seconds(short_expiry_ - ::time(nullptr) + 10));
  const int64_t ended = ::time(nullptr);
  ASSERT_TRUE(rc.has_value()) << "session not cut after expiry";
  EXPECT_NE(*rc, 0) << "ssh should fail (connection reset), not finish";
  EXPECT_GE(ended, short_expiry_) << "cut before expiry";
  EXPECT_LE(ended, short_expiry_ + 3) << "cut too late";
  RecordProperty("expiry_to_client_exit_s", std::to_string(ended - short_expiry_));
  auto cut = wait_record(audit_, "flow_cut", kShort, 0, 5s);
  ASSERT_TRUE(cut.has_value());
  EXPECT_EQ((*cut)["tag"], "bypass_expired");
  EXPECT_EQ((*cut)["reason"], "grant_expired");
  EXPECT_EQ((*cut)["grant_id"], "g-0000000000b2");
  // The client learns from the RST: "Connection reset by peer", or "Broken pipe" when it writes first.
  std::string err = read_file(out + ".err");
  std::transform(err.begin(), err.end(), err.begin(), [](unsigned char c) { return std::tolower(c); });
  EXPECT_TRUE(err.find("reset") != std::string::npos || err.find("broken pipe") != std::string::npos) << err;

  // Revocation, enforce mode.
  auto synced = [&] { return count(read_file(dir_.file("agent.log")), "kernel maps synced"); };
  size_t syncs = synced();
  policy::DirGrantStore store(grants_);
  store.add(make_grant("g-0000000000c3", "10.77.2.0/24", ::time(nullptr) + 3600));
  ASSERT_TRUE(eventually([&] { return synced() > syncs; }));
  Process revoked = ssh_bg(kUngranted, "sleep 60", dir_.file("revoked.out"));
  auto approved = wait_record(audit_, "flow_open", kUngranted, 0, 15s, "bypass_approved");
  ASSERT_TRUE(approved.has_value());
  std::this_thread::sleep_for(1s);
  ASSERT_TRUE(revoked.running());
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t c3_revoked = ::time(nullptr);
  revoke(store, "g-0000000000c3", c3_revoked);
  auto rc2 = revoked.wait(10s);
  const auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_TRUE(rc2.has_value()) << "session not cut after revoke";
  EXPECT_NE(*rc2, 0);
  EXPECT_LT(took, 4s) << "cut took " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                      << " ms";
  RecordProperty("revoke_to_cut_ms",
                 std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()));
  auto cut2 = wait_record(audit_, "flow_cut", kUngranted, 0, 5s);
  ASSERT_TRUE(cut2.has_value());
  EXPECT_EQ((*cut2)["grant_id"], "g-0000000000c3");
  EXPECT_GE(metric(*host_, "sshring_agent_flows_cut_total"), 2);
  stop_agent();

  // Count mode: a revoked grant's live flow is re-tagged bypass_expired, not cut.
  start_agent(false, "count.log");
  store.add(make_grant("g-0000000000d4", "10.77.2.0/24", ::time(nullptr) + 3600));
  ASSERT_TRUE(
      eventually([&] { return count(read_file(dir_.file("count.log")), "kernel maps synced") >= 2; }));
  Process counted = ssh_bg(kUngranted, "sleep 8", dir_.file("counted.out"));
  ASSERT_TRUE(wait_record(audit_, "flow_open", kUngranted, 0, 15s, "bypass_approved").has_value());
  double retagged = metric(*host_, "sshring_agent_flows_retagged_total");
  // Revoked in the same second as c3: both now end at the same instant and the policy's tie-break
  // (lower id) picks c3 as the flow's cover. The re-tag must keep the grant that admitted the flow.
  revoke(store, "g-0000000000d4", c3_revoked);
  EXPECT_TRUE(
      eventually([&] { return metric(*host_, "sshring_agent_flows_retagged_total") > retagged; }, 5s));
  EXPECT_EQ(counted.wait(20s).value_or(-1), 0) << "count mode does not cut";
  auto closed = wait_record(audit_, "flow_close", kUngranted, 1, 15s, "bypass_expired");
  ASSERT_TRUE(closed.has_value()) << "the close carries the new tag";
  EXPECT_EQ((*closed)["grant_id"], "g-0000000000d4")
      << "the close names the grant that admitted the flow (the first such close is the cut c3 flow)\n"
      << records_from(audit_, kUngranted);
  stop_agent();
}

// The fleet path end to end: a three-member etcd (TLS, client certificates, the roles of
// deploy/etcd/roles.sh) in the host namespace, the policy pushed and a grant added by an admin
// command, the agent on etcd with the read-only agent role. A direct ssh is tagged bypass_approved once
// the grant is in the kernel maps, and bypass_expired after `grant revoke`; the leader is killed in
// between and the revoke goes through the surviving members; the agent never restarts.
TEST_F(AgentIntegration, GrantsFromAThreeMemberEtcdReachTheKernel) {
  EtcdCluster etcd(3, true, host_->name());
  const std::string key = dir_.file("admin-key");
  ASSERT_EQ(sh("ssh-keygen -q -t ed25519 -N '' -C alice -f " + key), 0);
  std::string pub = read_file(key + ".pub");
  pub.erase(pub.find_last_not_of('\n') + 1);
  write_file(dir_.file("fleet.yaml"), R"(version: 1
relays: [10.77.9.0/24]
hosts:
  - name: test
    cidrs: [10.77.0.0/24]
    ssh_ports: [2222]
roles: [{name: ops, targets: [{cidrs: [10.77.0.0/24]}]}]
principals: [{name: alice, roles: [ops], keys: [")" +
                                          pub +
                                          R"("]}]
opt_out:
  - id: ops
    who: {principals: [alice]}
    from: [10.77.0.0/16]
    to: {cidrs: [10.77.0.0/24], ports: [2222]}
    max_ttl: 8h
    require_grant: true
    expires: 2099-01-01T00:00:00Z
)");
  // The admin's commands, in the host namespace (where etcd listens), each with its own etcd user.
  auto admin = [&](std::vector<std::string> args, const std::string& user, std::string* out) {
    std::string cmd = etcd.in_ns() + "env USER=tester " + sshring_bin();
    for (const auto& a : args) cmd += " '" + a + "'";
    for (const auto& f : etcd.flags(user)) cmd += " '" + f + "'";
    return sh(cmd + " 2>&1", out);
  };
  std::string out;
  ASSERT_EQ(admin({"policy", "push", dir_.file("fleet.yaml"), "--audit-log", dir_.file("admin.audit.jsonl")},
                  "sshring-policy", &out),
            0)
      << out;
  std::vector<std::string> source = {"--cache-dir", dir_.file("cache")};
  for (const auto& f : etcd.flags("sshring-agent")) source.push_back(f);
  start_agent(false, "agent.log", "1h", source);
  auto synced = [&] { return count(read_file(dir_.file("agent.log")), "kernel maps synced"); };

  // Before any grant: unapproved.
  ASSERT_EQ(ssh(kGranted, "true"), 0);
  auto first = wait_record(audit_, "flow_open", kGranted);
  ASSERT_TRUE(first.has_value()) << records_from(audit_, kGranted) << read_file(dir_.file("agent.log"));
  EXPECT_EQ((*first)["tag"], "bypass_unapproved");

  size_t syncs = synced();
  ASSERT_EQ(admin({"grant", "add", "--identity", key, "--who", "alice", "--from", "10.77.1.0/24", "--to",
                   "10.77.0.1/32:2222", "--ttl", "1h", "--reason", "INC-7 fleet test", "--audit-log",
                   dir_.file("admin.audit.jsonl")},
                  "sshring-grant", &out),
            0)
      << out;
  const std::string id = out.substr(out.find("g-"), 14);
  ASSERT_TRUE(eventually([&] { return synced() > syncs; }, 30s)) << read_file(dir_.file("agent.log"));
  ASSERT_EQ(ssh(kGranted, "true"), 0);
  auto approved = wait_record(audit_, "flow_open", kGranted, 0, 15s, "bypass_approved");
  ASSERT_TRUE(approved.has_value()) << records_from(audit_, kGranted);
  EXPECT_EQ((*approved)["grant_id"], id);

  // Lose the leader; the revoke goes through the others and reaches the agent all the same.
  const int leader = etcd.leader();
  ASSERT_GE(leader, 0);
  etcd.kill(leader);
  syncs = synced();
  ASSERT_EQ(admin({"grant", "revoke", id, "--identity", key, "--reason", "done", "--audit-log",
                   dir_.file("admin.audit.jsonl")},
                  "sshring-grant", &out),
            0)
      << out;
  ASSERT_TRUE(eventually([&] { return synced() > syncs; }, 60s)) << read_file(dir_.file("agent.log"));
  ASSERT_EQ(ssh(kGranted, "true"), 0);
  auto expired = wait_record(audit_, "flow_open", kGranted, 0, 15s, "bypass_expired");
  ASSERT_TRUE(expired.has_value()) << records_from(audit_, kGranted);
  EXPECT_EQ((*expired)["grant_id"], id);
  EXPECT_TRUE(agent_->running());
  // The agent's credentials are read-only: it cannot mint a grant.
  EXPECT_NE(admin({"grant", "add", "--identity", key, "--who", "alice", "--from", "10.77.2.0/24", "--to",
                   "10.77.0.1/32:2222", "--ttl", "1h", "--reason", "forged", "--audit-log",
                   dir_.file("forged.audit.jsonl")},
                  "sshring-agent", &out),
            0)
      << out;
  stop_agent();
}

// Forged grant files in the agent's store never reach its kernel maps: alice's grant for another
// source widened after signing to cover kUngranted, the same without its signature, and one signed
// by a key no principal lists. A direct ssh from kUngranted stays bypass_unapproved (and is dropped
// in enforce mode); each forgery is counted under its reason; the genuine grant keeps working.
TEST_F(AgentIntegration, ForgedGrantFilesNeverReachTheKernelMaps) {
  const int64_t now = ::time(nullptr);
  auto widened = policy::signed_grant_to_json(make_grant("g-0000000000f1", "10.77.8.0/24", now + 3600));
  widened["request"]["from"] = "10.77.0.0/16";
  write_file(grants_ + "/g-0000000000f1.grant", widened.dump());
  auto unsigned_one = widened;
  unsigned_one["id"] = unsigned_one["request"]["id"] = "g-0000000000f2";
  unsigned_one["signature"] = "";
  write_file(grants_ + "/g-0000000000f2.grant", unsigned_one.dump());
  auto r = policy::testing::request_for("alice", "ops", "10.77.2.0/24", "10.77.0.1/32", 3600, now);
  r.ports = policy::PortSet::single(kSshPort);
  auto stranger = policy::testing::signed_by(policy::testing::person("mallory"), r, "g-0000000000f3");
  write_file(grants_ + "/g-0000000000f3.grant", policy::signed_grant_to_json(stranger).dump());

  start_agent(true, "agent.log");
  EXPECT_NE(ssh(kUngranted, "true", "", "3"), 0) << "enforce: a forged grant let ssh in";
  auto open = wait_record(audit_, "flow_open", kUngranted);
  ASSERT_TRUE(open.has_value());
  EXPECT_EQ((*open)["tag"], "bypass_unapproved") << open->dump();
  EXPECT_EQ(open->value("enforced", false), true) << open->dump();
  for (const char* reason : {"bad_signature", "unsigned", "unknown_key"})
    EXPECT_EQ(metric(*host_, std::string("sshring_grants_rejected_total{reason=\"") + reason + "\"}"), 1)
        << reason;
  EXPECT_EQ(ssh(kGranted, "true"), 0) << "the genuine grant of " << kGranted;
  stop_agent();
}

// Sessions open before the agent starts in enforce mode: it seeds their flow entries at start, so the
// approved one keeps running (its output keeps coming) and the unapproved one is cut.
TEST_F(AgentIntegration, ConnectionsOpenBeforeStartAreSeeded) {
  auto good_out = dir_.file("good.out");
  Process good = ssh_bg(kGranted, "for i in $(seq 1 40); do echo tick; sleep 0.5; done", good_out);
  Process bad = ssh_bg(kUngranted, "sleep 60", dir_.file("bad.out"));
  ASSERT_TRUE(eventually([&] { return sshd_connections() >= 2; }))
      << "sessions did not connect: " << read_file(dir_.file("bad.out.err"));
  ASSERT_TRUE(eventually([&] { return count(read_file(good_out), "tick") >= 2; }));
  start_agent(true, "agent.log");
  auto rc = bad.wait(10s);
  ASSERT_TRUE(rc.has_value()) << "unapproved session not cut";
  EXPECT_NE(*rc, 0);
  auto cut = wait_record(audit_, "flow_cut", kUngranted, 0, 5s);
  ASSERT_TRUE(cut.has_value());
  EXPECT_EQ((*cut)["reason"], "unapproved");
  auto seeded = wait_record(audit_, "flow_open", kGranted, 0, 5s);
  ASSERT_TRUE(seeded.has_value());
  EXPECT_EQ((*seeded)["tag"], "bypass_approved");
  EXPECT_EQ(seeded->value("seeded", false), true);
  size_t ticks = count(read_file(good_out), "tick");
  std::this_thread::sleep_for(3s);
  EXPECT_TRUE(good.running());
  EXPECT_GE(count(read_file(good_out), "tick"), ticks + 3) << "approved session stalled";
  EXPECT_GE(metric(*host_, "sshring_agent_flows_seeded_total"), 2);
  good.stop();
  stop_agent();
}

// A policy that does not fit the rules map (--max-rules 2, three grant sources): the agent keeps
// running, says so (log, metrics), and fails closed: the grants that were cut do not let anyone in.
TEST_F(AgentIntegration, PolicyThatDoesNotFitIsLoadedFailClosed) {
  policy::DirGrantStore store(grants_);
  store.add(make_grant("g-0000000000e5", "10.77.2.0/24", ::time(nullptr) + 3600));
  std::vector<std::string> argv = {sshring_bin(), "agent",       "--policy",  dir_.file("policy.yaml"),
                                   "--iface",     "vh",          "--pin-dir", pin_dir_,
                                   "--audit-log", audit_,        "--metrics", "127.0.0.1:9465",
                                   "--enforce",   "--max-rules", "2"};
  Process::Options o;
  o.netns = host_->name();
  o.stderr_path = dir_.file("agent.log");
  agent_.emplace(argv, o);
  ASSERT_TRUE(eventually([&] {
    return read_file(dir_.file("agent.log")).find("agent: running") != std::string::npos;
  })) << read_file(dir_.file("agent.log"));
  EXPECT_NE(read_file(dir_.file("agent.log")).find("POLICY DOES NOT FIT"), std::string::npos);
  EXPECT_EQ(metric(*host_, "sshring_agent_policy_fits"), 0);
  EXPECT_GT(metric(*host_, "sshring_agent_policy_rules_not_loaded"), 0);
  EXPECT_NE(ssh(kGranted, "true", "", "3"), 0) << "a grant that was not loaded must not let anyone in";
  EXPECT_TRUE(agent_->running());
  stop_agent();
}

// The agent under `ip netns exec` with its pins under /sys/fs/bpf: that bpffs exists only in its own
// mount namespace, so the pins would vanish with it. It says so loudly and in a metric; with the
// test's shared bpffs it does not.
TEST_F(AgentIntegration, PrivatePinsAreReported) {
  start_agent(false, "shared.log");
  EXPECT_EQ(read_file(dir_.file("shared.log")).find("PINS ARE PRIVATE"), std::string::npos);
  EXPECT_EQ(metric(*host_, "sshring_agent_pins_private"), 0);
  EXPECT_EQ(metric(*host_, "sshring_agent_interfaces_unwatched"), 0);
  stop_agent();
  const std::string private_dir = "/sys/fs/bpf/sshring-test-private-" + std::to_string(::getpid());
  std::vector<std::string> argv = {
      sshring_bin(), "agent",     "--policy",  dir_.file("policy.yaml"), "--iface", "vh",
      "--pin-dir",   private_dir, "--metrics", "127.0.0.1:9465"};
  Process::Options o;
  o.netns = host_->name();
  o.stderr_path = dir_.file("private.log");
  agent_.emplace(argv, o);
  ASSERT_TRUE(eventually([&] {
    return read_file(dir_.file("private.log")).find("agent: running") != std::string::npos;
  })) << read_file(dir_.file("private.log"));
  EXPECT_NE(read_file(dir_.file("private.log")).find("PINS ARE PRIVATE"), std::string::npos);
  EXPECT_EQ(metric(*host_, "sshring_agent_pins_private"), 1);
  stop_agent();
}

}  // namespace
}  // namespace sshring::testing
