// `sshring agent`: loads the classifier (re-using pinned maps), attaches it to the chosen
// interfaces, keeps the kernel maps in step with the policy snapshot, turns ring-buffer events into
// audit records, sweeps idle flows and exports metrics.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bpf/loader.h"
#include "policy/cache.h"

namespace sshring::bpf {

struct AgentOptions {
  std::string policy_path;
  std::string grant_store;  // empty: the policy's grant_store
  std::vector<std::string> ifaces;
  bool enforce = false;
  std::string metrics_listen;                    // empty: no exporter
  std::string audit_path;                        // empty: no audit log
  bool audit_syslog = false;                     // also send audit records to syslog/journald
  std::string audit_syslog_socket = "/dev/log";  // where --audit-syslog sends (RFC 5424)
  std::string audit_key;                         // Ed25519 checkpoint key (created if missing); empty: none
  std::string pin_dir = kDefaultPinDir;
  std::chrono::seconds idle_timeout{3600};  // flows silent this long are evicted and reported
  std::chrono::milliseconds tick{1000};     // clock sync, stats, live-flow walk cadence
  size_t max_rules = 0;                     // candidate rules the kernel can hold; 0: sized from the policy
  std::shared_ptr<policy::SnapshotSource> source;  // policy and grants from a store (etcd) instead
  std::optional<std::string> cache_dir;            // with a source: last good snapshot (default dir)
};

// Runs until `stop` becomes true (the CLI sets it from SIGINT/SIGTERM). Leaves programs attached
// and maps pinned on exit: counting continues while the agent restarts. Throws on start-up errors.
void run_agent(const AgentOptions& opts, const std::atomic<bool>& stop);

// Removes what the agent attached on these interfaces (only sshring filters; the clsact qdisc only
// where the agent created it) and, once no interface is left, the pins. Returns filters removed.
int detach_agent(const std::vector<std::string>& ifaces, const std::string& pin_dir);

}  // namespace sshring::bpf
