// `sshring grant add|list|revoke`: time-bound opt-out grants, checked against the policy's opt_out
// rules, stored in the grant store and recorded in the audit log.
#include <fcntl.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/store_flags.h"
#include "common/duration.h"
#include "common/error.h"
#include "common/flags.h"
#include "common/unique_fd.h"
#include "metrics/audit.h"
#include "policy/grant_store.h"
#include "policy/parser.h"

namespace {

using namespace sshring;
using common::UsageError;
using policy::UnixSeconds;

constexpr const char* kDefaultAuditLog = "/var/log/sshring/grant.audit.jsonl";

UnixSeconds unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string actor() {
  for (const char* v : {"SUDO_USER", "USER", "LOGNAME"}) {
    if (const char* s = std::getenv(v); s && *s) return s;
  }
  if (passwd* pw = ::getpwuid(::getuid())) return pw->pw_name;
  return "uid:" + std::to_string(::getuid());
}

void common_flags(common::Flags& f) {
  f.value("policy", "FILE", "policy file (its grant_store is the store)",
          std::string(policy::kDefaultPolicyPath));
  f.value("grant-store", "DIR", "grant store directory (default: the policy's grant_store)");
  f.value("audit-log", "FILE", "audit log for grant changes", std::string(kDefaultAuditLog));
  f.boolean("audit-syslog", "also send each audit record to syslog/journald (for log shippers)");
  cli::add_etcd_flags(f);
}

// The audit log allows one writer per file; concurrent `grant` commands take turns on a sidecar lock
// (blocking) around their whole change, so none fails and the hash chain never forks.
class AuditTurn {
 public:
  explicit AuditTurn(const std::string& audit_path) {
    for (size_t i = 1; i < audit_path.size(); ++i) {
      if (audit_path[i] == '/') ::mkdir(audit_path.substr(0, i).c_str(), 0750);
    }
    std::string path = audit_path + ".lock";
    fd_ = common::UniqueFd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640));
    if (!fd_) common::throw_errno("open " + path);
    while (::flock(fd_.get(), LOCK_EX) != 0) {
      if (errno != EINTR) common::throw_errno("lock " + path);
    }
  }

 private:
  common::UniqueFd fd_;
};

struct Context {
  policy::Policy policy;
  std::unique_ptr<policy::GrantStore> store;
  std::unique_ptr<AuditTurn> turn;  // declared before audit: released after the log closes
  std::unique_ptr<metrics::AuditLog> audit;
};

std::unique_ptr<metrics::AuditLog> open_audit(Context& c, const std::string& path, bool syslog) {
  c.turn = std::make_unique<AuditTurn>(path);
  metrics::AuditOptions o;
  o.path = path;
  o.component = "grant";
  o.fsync_each = true;  // a grant change is acknowledged only once its record is on disk
  o.syslog = syslog;
  return std::make_unique<metrics::AuditLog>(o);
}

Context open(const common::Flags& f, bool need_audit) {
  Context c;
  auto ps = cli::open_policy_and_store(f, true);  // --etcd, or the policy file and its grant store
  c.policy = std::move(ps.policy);
  c.store = std::move(ps.store);
  if (need_audit) c.audit = open_audit(c, f.get_or("audit-log", kDefaultAuditLog), f.flag("audit-syslog"));
  return c;
}

nlohmann::json ports_json(const policy::PortSet& ps) {
  nlohmann::json a = nlohmann::json::array();
  for (uint16_t p : ps.ports()) a.push_back(p);
  return a;
}

nlohmann::json terms(const policy::Grant& g) {
  return {{"grant_id", g.id},
          {"who", g.who},
          {"from", g.from.to_string()},
          {"to", g.to.to_string()},
          {"ports", ports_json(g.ports)},
          {"expires", policy::format_rfc3339(g.expires)},
          {"rule", g.rule}};
}

// Records grants that expired since the last command (grant_expire) and prunes old ones.
void sweep(Context& c, UnixSeconds now) {
  for (const auto& g : c.store->sweep(now, policy::kDefaultGrantRetentionSeconds)) {
    if (!c.audit) continue;
    auto r = terms(g);
    r["type"] = "grant_expire";
    r["actor"] = "system";
    c.audit->append(std::move(r));
  }
}

// "10.1.5.7", "10.1.5.0/24:22", "10.1.5.7:22,2222", "[fd01::/64]:22" -> CIDR + ports.
std::pair<policy::Cidr, policy::PortSet> parse_to(const std::string& s) {
  std::string cidr = s;
  std::string ports;
  if (!s.empty() && s[0] == '[') {
    auto close = s.find(']');
    if (close == std::string::npos) throw UsageError("--to '" + s + "': missing ']' (use [V6CIDR]:PORTS)");
    cidr = s.substr(1, close - 1);
    if (close + 1 < s.size()) {
      if (s[close + 1] != ':') throw UsageError("--to '" + s + "': expected ':' after ']'");
      ports = s.substr(close + 2);
    }
  } else if (std::count(s.begin(), s.end(), ':') == 1) {
    auto colon = s.find(':');
    cidr = s.substr(0, colon);
    ports = s.substr(colon + 1);
  }
  std::string why;
  auto c = policy::Cidr::parse(cidr, &why);
  if (!c) throw UsageError("--to '" + s + "': invalid CIDR '" + cidr + "': " + why);
  policy::PortSet ps = policy::PortSet::single(policy::kDefaultSshPort);
  if (!ports.empty()) {
    auto p = policy::PortSet::parse(ports);
    if (!p) throw UsageError("--to '" + s + "': invalid ports '" + ports + "'; expected e.g. 22 or 22,2222");
    ps = *p;
  }
  return {*c, ps};
}

int add(const std::vector<std::string>& args) {
  common::Flags f(
      "grant add",
      "sshring grant add [--policy FILE] --who NAME --from CIDR --to CIDR[:PORTS] --ttl 2h "
      "--reason \"...\" [--approver NAME]",
      "Adds a time-bound exception allowing direct SSH. Accepted only if an opt_out rule of the\n"
      "policy allows exactly that: who, from within its sources, to within its targets and ports,\n"
      "TTL at most its max_ttl, with a reason and an approver when it requires them.");
  common_flags(f);
  f.value("who", "NAME", "the principal the grant is for");
  f.value("from", "CIDR", "source address or prefix the direct connections come from");
  f.value("to", "CIDR[:PORTS]", "target address or prefix, optionally with ports (default 22)");
  f.value("ttl", "DURATION", "how long the grant lives, e.g. 30m, 2h");
  f.value("reason", "TEXT", "why (recorded in the grant and the audit log)");
  f.value("approver", "NAME", "who approved it");
  f.boolean("json", "print the stored grant as JSON");
  f.epilog("Exit codes: 0 added, 1 refused or failed, 2 usage error.\n");
  if (!f.parse(args)) return 0;
  if (!f.positionals().empty())
    throw UsageError("grant add: unexpected argument '" + f.positionals()[0] + "'");
  policy::GrantRequest req;
  req.who = f.require("who");
  std::string why;
  auto from = policy::Cidr::parse(f.require("from"), &why);
  if (!from) throw UsageError("--from '" + *f.get("from") + "': " + why);
  req.from = *from;
  std::tie(req.to, req.ports) = parse_to(f.require("to"));
  req.ttl_seconds = common::parse_duration_or_throw(f.require("ttl"), "--ttl").count();
  req.reason = f.get_or("reason", "");
  req.approver = f.get_or("approver", "");
  if (req.reason.size() > policy::kMaxTextLength) throw UsageError("--reason: at most 1024 characters");
  Context c = open(f, true);
  const UnixSeconds now = unix_now();
  sweep(c, now);
  std::string refusal;
  const policy::OptOutRule* rule = policy::find_allowing_rule(c.policy, req, now, &refusal);
  if (!rule) {
    std::cerr << "sshring grant add: refused: no opt_out rule allows " << req.who << " from "
              << req.from.to_string() << " to " << req.to.to_string() << ":" << req.ports.to_string()
              << " for " << common::format_duration(std::chrono::seconds(req.ttl_seconds)) << "\n"
              << refusal;
    return 1;
  }
  policy::Grant g;
  g.id = policy::new_grant_id();
  g.who = req.who;
  g.from = req.from;
  g.to = req.to;
  g.ports = req.ports;
  g.rule = rule->id;
  g.reason = req.reason;
  g.approver = req.approver;
  g.created_by = actor();
  g.created = now;
  g.expires = now + req.ttl_seconds;
  c.store->add(g);
  auto rec = terms(g);
  rec["type"] = "grant_add";
  if (int64_t rev = cli::store_revision(*c.store)) rec["etcd_revision"] = rev;
  rec["reason"] = g.reason;
  rec["actor"] = g.created_by;
  if (!g.approver.empty()) rec["approver"] = g.approver;
  c.audit->append(std::move(rec));
  c.audit->flush();
  if (f.flag("json")) {
    std::cout << policy::grant_to_json(g).dump(2) << "\n";
  } else {
    std::cout << g.id << " added under rule " << g.rule << ": " << g.who << " from " << g.from.to_string()
              << " to " << g.to.to_string() << ":" << g.ports.to_string() << " until "
              << policy::format_rfc3339(g.expires) << "\n";
  }
  return 0;
}

int list(const std::vector<std::string>& args) {
  common::Flags f("grant list", "sshring grant list [--policy FILE] [--json]",
                  "Lists the grants in the store (live, expired and revoked ones are kept 7 days).");
  common_flags(f);
  f.boolean("json", "print JSON (one array)");
  if (!f.parse(args)) return 0;
  const UnixSeconds now = unix_now();
  Context c;
  auto ps = cli::open_policy_and_store(f, false);
  c.policy = std::move(ps.policy);
  std::string dir = ps.etcd ? std::string() : f.get_or("grant-store", c.policy.grant_store);
  std::vector<policy::Grant> grants;
  if (ps.store) {
    c.store = std::move(ps.store);
    // Readers without write access just read (etcd: list never writes; relays' roles are read-only).
    if (!ps.etcd && ::access(dir.c_str(), W_OK) == 0) {
      c.audit = std::make_unique<metrics::AuditLog>(
          metrics::AuditOptions{.path = f.get_or("audit-log", kDefaultAuditLog),
                                .component = "grant",
                                .fsync_each = true,
                                .syslog = f.flag("audit-syslog")});
      sweep(c, now);
    }
    grants = c.store->load();
  }
  auto status = [&](const policy::Grant& g) -> std::string {
    if (g.revoked_at) return "revoked";
    if (!g.live(now)) return "expired";
    return common::format_duration(std::chrono::seconds(g.expires - now));
  };
  if (f.flag("json")) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& g : grants) {
      auto j = policy::grant_to_json(g);
      j["live"] = g.live(now);
      j["time_left_seconds"] = g.live(now) ? g.effective_expiry() - now : 0;
      a.push_back(std::move(j));
    }
    std::cout << a.dump(2) << "\n";
    return 0;
  }
  std::cout << std::left << std::setw(15) << "ID" << std::setw(12) << "WHO" << std::setw(20) << "FROM"
            << std::setw(24) << "TO" << std::setw(22) << "CREATED" << std::setw(22) << "EXPIRES"
            << std::setw(10) << "LEFT" << std::setw(12) << "APPROVER"
            << "REASON\n";
  for (const auto& g : grants) {
    std::cout << std::setw(15) << g.id << std::setw(12) << g.who << std::setw(20) << g.from.to_string()
              << std::setw(24) << (g.to.to_string() + ":" + g.ports.to_string()) << std::setw(22)
              << policy::format_rfc3339(g.created) << std::setw(22) << policy::format_rfc3339(g.expires)
              << std::setw(10) << status(g) << std::setw(12) << (g.approver.empty() ? "-" : g.approver)
              << g.reason << "\n";
  }
  return 0;
}

int revoke(const std::vector<std::string>& args) {
  common::Flags f("grant revoke", "sshring grant revoke ID --reason \"...\" [--policy FILE]",
                  "Revokes a grant at once: flows it covered classify as bypass_expired from now on.");
  common_flags(f);
  f.value("reason", "TEXT", "why (required; recorded in the audit log)");
  if (!f.parse(args)) return 0;
  if (f.positionals().size() != 1)
    throw UsageError("grant revoke: give exactly one grant ID (see grant list)");
  std::string reason = f.require("reason");
  const std::string& id = f.positionals()[0];
  Context c = open(f, true);
  const UnixSeconds now = unix_now();
  sweep(c, now);
  auto g = c.store->revoke(id, actor(), reason, now);
  if (!g) {
    std::cerr << "sshring grant revoke: no grant '" << id << "' in " << c.store->location()
              << " (see sshring grant list)\n";
    return 1;
  }
  auto rec = terms(*g);
  rec["type"] = "grant_revoke";
  if (int64_t rev = cli::store_revision(*c.store)) rec["etcd_revision"] = rev;
  rec["reason"] = reason;
  rec["actor"] = g->revoked_by;
  c.audit->append(std::move(rec));
  c.audit->flush();
  std::cout << g->id << " revoked\n";
  return 0;
}

int run(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout << "Usage: sshring grant add|list|revoke [OPTIONS]\n\n"
                 "  add      add a time-bound direct-SSH exception allowed by an opt_out rule\n"
                 "  list     list grants with their time left\n"
                 "  revoke   revoke a grant\n\n"
                 "Run 'sshring grant SUBCOMMAND --help' for options.\n";
    return args.empty() ? 2 : 0;
  }
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "add") return add(rest);
  if (args[0] == "list") return list(rest);
  if (args[0] == "revoke") return revoke(rest);
  throw UsageError("unknown subcommand '" + args[0] + "'; expected add, list or revoke (see --help)");
}

const sshring::cli::Registrar kGrant{{"grant", "add, list and revoke time-bound opt-out grants", run}};

}  // namespace
