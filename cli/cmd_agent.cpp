// `sshring agent`: the host agent that counts and tags direct SSH flows with eBPF (docs/agent.md).
#include <signal.h>

#include <atomic>
#include <iostream>
#include <sstream>

#include "bpf/agent.h"
#include "bpf/loader.h"
#include "cli/command.h"
#include "cli/store_flags.h"
#include "common/duration.h"
#include "common/error.h"
#include "common/flags.h"
#include "common/log.h"

namespace {

std::atomic<bool> g_stop{false};

void on_signal(int) {
  g_stop.store(true);
}

std::vector<std::string> split_ifaces(const std::vector<std::string>& values) {
  std::vector<std::string> out;
  for (const auto& v : values) {
    std::stringstream ss(v);
    std::string item;
    while (std::getline(ss, item, ','))
      if (!item.empty()) out.push_back(item);
  }
  return out;
}

sshring::common::Flags agent_flags() {
  sshring::common::Flags flags(
      "agent",
      "sshring agent --policy FILE --iface IFACE[,IFACE] [OPTIONS]\n       sshring agent --detach "
      "--iface IFACE[,IFACE] [--pin-dir DIR]",
      "Counts and tags every direct SSH flow to this host with eBPF programs on the tc hooks of the "
      "given interfaces: proxied (from a relay), bypass_approved (a live grant covers it), "
      "bypass_expired (only an expired grant does), bypass_unapproved (nothing does). Writes one "
      "audit record per flow open and close and exports Prometheus metrics. Programs stay attached "
      "and maps pinned when the agent exits, so counting goes on across restarts; --detach removes "
      "them. Needs root.");
  flags.value("policy", "FILE", "policy file (grants come from its grant_store)", "/etc/sshring/policy.yaml")
      .value("grant-store", "DIR", "grant store directory (default: the policy's grant_store)")
      .multi("iface", "IFACE[,IFACE]", "interfaces to attach to (comma-separated)")
      .boolean("enforce",
               "fail closed: only flows tagged proxied or bypass_approved reach a protected port; expired or "
               "revoked flows are ended (default: count only)")
      .value("metrics", "ADDR:PORT", "serve Prometheus metrics here (e.g. 127.0.0.1:9465)")
      .value("audit-log", "FILE", "audit log (JSON lines, hash-chained)",
             "/var/log/sshring/agent.audit.jsonl")
      .boolean("audit-syslog", "also send each audit record to syslog/journald (for log shippers)")
      .value("audit-syslog-socket", "PATH", "unix socket --audit-syslog sends RFC 5424 messages to",
             "/dev/log")
      .value("audit-key", "FILE", "Ed25519 key signing audit checkpoints (created 0600 if missing)")
      .value("pin-dir", "DIR", "where maps and programs are pinned (a bpffs directory)",
             sshring::bpf::kDefaultPinDir)
      .value("idle-timeout", "DURATION",
             "evict and report flows silent this long (e.g. 1h, 90s); in enforce mode only once their "
             "socket is gone",
             "1h")
      .value("max-rules", "N",
             "candidate grant rules the kernel maps hold (default: sized from the policy at start, at least "
             "65536); a policy needing more is loaded cut, fail closed, and sshring_agent_policy_fits drops "
             "to 0")
      .boolean("detach", "remove what the agent attached on --iface (and the pins once none is left)")
      .boolean("verbose", "log every flow event")
      .epilog(
          "Examples:\n"
          "  sshring agent --policy /etc/sshring/policy.yaml --iface eth0 --metrics 127.0.0.1:9465\n"
          "  sshring agent --policy policy.yaml --iface eth0,eth1 --enforce\n"
          "  sshring agent --detach --iface eth0\n"
          "Reload: the policy file and grant store are watched; SIGHUP forces a reload.\n"
          "Exit codes: 0 stopped by SIGINT/SIGTERM, 1 runtime error, 2 bad usage (not root, unknown "
          "interface,\n"
          "another program on the hook).");
  sshring::cli::add_etcd_flags(flags);  // --etcd: policy and grants from etcd, watched
  sshring::cli::add_cache_flag(flags);
  return flags;
}

sshring::bpf::AgentOptions agent_options(const sshring::common::Flags& flags,
                                         const std::vector<std::string>& ifaces, const std::string& pin_dir) {
  sshring::bpf::AgentOptions opts;
  opts.policy_path = flags.require("policy");
  opts.grant_store = flags.get_or("grant-store", "");
  opts.source = sshring::cli::snapshot_source(flags);
  opts.cache_dir = sshring::cli::cache_dir(flags);
  opts.ifaces = ifaces;
  opts.enforce = flags.flag("enforce");
  opts.metrics_listen = flags.get_or("metrics", "");
  opts.audit_path = flags.get_or("audit-log", "");
  opts.audit_syslog = flags.flag("audit-syslog");
  opts.audit_syslog_socket = flags.get_or("audit-syslog-socket", "/dev/log");
  opts.audit_key = flags.get_or("audit-key", "");
  opts.pin_dir = pin_dir;
  if (auto v = flags.get_or("max-rules", ""); !v.empty()) {
    try {
      size_t used = 0;
      opts.max_rules = std::stoul(v, &used);
      if (used != v.size() || opts.max_rules == 0) throw std::invalid_argument(v);
    } catch (const std::exception&) {
      throw sshring::common::UsageError("--max-rules: '" + v + "' is not a positive number (e.g. 200000)");
    }
  }
  opts.idle_timeout =
      sshring::common::parse_duration_or_throw(flags.get_or("idle-timeout", "1h"), "--idle-timeout");
  return opts;
}

int run(const std::vector<std::string>& args) {
  sshring::common::Flags flags = agent_flags();
  if (!flags.parse(args)) return 0;
  if (flags.flag("verbose")) sshring::common::set_log_level(sshring::common::LogLevel::kDebug);
  auto ifaces = split_ifaces(flags.all("iface"));
  std::string pin_dir = flags.get_or("pin-dir", sshring::bpf::kDefaultPinDir);
  if (flags.flag("detach")) {
    int n = sshring::bpf::detach_agent(ifaces, pin_dir);
    std::cout << "detached " << n << " filter(s)\n";
    return 0;
  }
  // Root first: refused before the policy or its store is opened, with the reason.
  sshring::bpf::check_environment();
  sshring::bpf::AgentOptions opts = agent_options(flags, ifaces, pin_dir);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  sshring::bpf::run_agent(opts, g_stop);
  return 0;
}

const sshring::cli::Registrar kAgent{{"agent", "count and tag direct SSH flows on this host (eBPF)", run}};

}  // namespace
