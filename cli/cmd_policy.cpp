// `sshring policy check|explain|push|show|diff`: validate and lint a policy file; explain a session or
// flow decision; publish the policy to etcd and look at what is live there.
#include <fcntl.h>
#include <netdb.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/command.h"
#include "cli/store_flags.h"
#include "common/civil_time.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/flags.h"
#include "common/unique_fd.h"
#include "metrics/audit.h"
#include "metrics/audit_types.h"
#include "policy/etcd/client.h"
#include "policy/etcd/store.h"
#include "policy/grant_store.h"
#include "policy/local_addresses.h"
#include "policy/parser.h"
#include "policy/snapshot.h"

namespace {

using namespace sshring;
using common::UsageError;
using policy::UnixSeconds;

UnixSeconds now_or_at(const common::Flags& f) {
  if (auto at = f.get("at")) {
    UnixSeconds t;
    if (!common::parse_rfc3339(*at, &t)) {
      throw UsageError("--at '" + *at + "': expected a time like 2026-12-01T09:30:00Z");
    }
    return t;
  }
  return common::unix_now_s();
}

// "host:22", "10.1.5.7:22", "[fd01::5]:22" -> host, port.
std::pair<std::string, uint16_t> split_host_port(const std::string& s, std::string_view what) {
  std::string host;
  std::string port;
  if (!s.empty() && s[0] == '[') {
    auto close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':') {
      throw UsageError(std::string(what) + " '" + s + "': expected [IPV6]:PORT");
    }
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string::npos || s.find(':') != colon) {
      throw UsageError(std::string(what) + " '" + s + "': expected HOST:PORT (IPv6 as [ADDR]:PORT)");
    }
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  auto ps = policy::PortSet::parse(port);
  if (host.empty() || !ps || ps->ranges().size() != 1 || ps->ranges()[0].lo != ps->ranges()[0].hi) {
    throw UsageError(std::string(what) + " '" + s + "': expected HOST:PORT with a port 1-65535");
  }
  return {host, ps->ranges()[0].lo};
}

std::shared_ptr<const policy::Snapshot> load_snapshot(const common::Flags& f, bool with_grants) {
  auto ps = cli::open_policy_and_store(f, false);  // --etcd, or the policy file and its grant store
  auto pol = std::make_shared<policy::Policy>(std::move(ps.policy));
  std::vector<policy::SignedGrant> grants;
  if (with_grants && ps.store) grants = cli::with_ledger(std::move(ps.store), f)->load();
  // Grants are honoured only after their signatures and their rule check out, as in relay and agent.
  return policy::Snapshot::build_checked(std::move(pol), grants, now_or_at(f), nullptr);
}

// Stored grants whose (unhonoured) terms would cover the flow but that a reader rejected: shown so
// the person asking sees why a grant they expected does not apply.
nlohmann::json rejected_covering(const policy::Snapshot& snap, const policy::IpAddr& src,
                                 const policy::IpAddr& dst, uint16_t port) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& c : snap.checked_grants()) {
    const auto& r = c.object.request;
    if (c.status != policy::GrantStatus::kRejected || !r.from.contains(src) || !r.to.contains(dst) ||
        !r.ports.contains(port))
      continue;
    out.push_back({{"id", r.id}, {"reason", c.reject_reason}, {"detail", c.detail}});
  }
  return out;
}

int check(const std::vector<std::string>& args) {
  common::Flags f(
      "policy check", "sshring policy check FILE [--strict] [--json]",
      "Validates a policy file and lints it: shadowed or overlapping rules, opt-out from 0.0.0.0/0\n"
      "or ::/0, TTLs over 24h, roles no principal uses, keys listed for two principals.");
  f.boolean("strict", "exit 1 when there are warnings");
  f.boolean("json", "print the result as JSON");
  f.value("at", "TIME", "evaluate time-dependent lints at TIME (RFC 3339) instead of now");
  f.epilog("Exit codes: 0 valid, 1 invalid (or warnings with --strict), 2 usage error.\n");
  if (!f.parse(args)) return 0;
  if (f.positionals().size() != 1) throw UsageError("policy check: give exactly one FILE (see --help)");
  const std::string& file = f.positionals()[0];
  policy::Policy p;
  try {
    p = policy::load_policy_file(file);
  } catch (const policy::PolicyError& e) {
    if (f.flag("json")) {
      std::cout << nlohmann::json{{"file", file},
                                  {"valid", false},
                                  {"error",
                                   {{"line", e.line()},
                                    {"column", e.column()},
                                    {"key", e.key()},
                                    {"message", e.message()}}}}
                       .dump(2)
                << "\n";
    } else {
      std::cerr << e.what() << "\n";
    }
    return 1;
  }
  auto lints = policy::lint_policy(p, now_or_at(f));
  if (f.flag("json")) {
    nlohmann::json w = nlohmann::json::array();
    for (const auto& l : lints) w.push_back({{"where", l.where}, {"message", l.message}});
    std::cout << nlohmann::json{{"file", file}, {"valid", true}, {"warnings", w}}.dump(2) << "\n";
  } else {
    for (const auto& l : lints) std::cout << file << ": warning: " << l.where << ": " << l.message << "\n";
    std::cout << file << ": valid: " << p.principals.size() << " principals, " << p.roles.size() << " roles, "
              << p.hosts.size() << " host groups, " << p.opt_out.size() << " opt_out rules, " << lints.size()
              << " warnings\n";
  }
  return f.flag("strict") && !lints.empty() ? 1 : 0;
}

// `policy explain --flow`: what the host agent would tag the flow.
int explain_flow(const common::Flags& f, UnixSeconds now) {
  nlohmann::json out;
  if (f.positionals().size() != 1) throw UsageError("policy explain --flow SRC DST:PORT: give DST:PORT once");
  auto src = policy::IpAddr::parse(*f.get("flow"));
  if (!src) throw UsageError("--flow '" + *f.get("flow") + "': expected an IP address");
  auto [dst_text, port] = split_host_port(f.positionals()[0], "--flow destination");
  auto dst = policy::IpAddr::parse(dst_text);
  if (!dst) throw UsageError("--flow destination '" + dst_text + "': expected an IP address");
  auto snap = load_snapshot(f, true);
  auto fc = snap->classify_flow(*src, *dst, port, now);
  out = {{"kind", "flow"},
         {"source", src->to_string()},
         {"dest", dst->to_string()},
         {"port", port},
         {"tag", std::string(policy::flow_tag_name(fc.tag))},
         {"id", std::string(fc.id)},
         {"protected", snap->protects(*dst, port)}};
  if (!fc.id.empty()) out["expires"] = common::format_rfc3339(fc.expires);
  out["rejected_grants"] = rejected_covering(*snap, *src, *dst, port);
  if (!f.flag("json")) {
    std::cout << "flow " << src->to_string() << " -> " << f.positionals()[0] << ": "
              << policy::flow_tag_name(fc.tag);
    if (!fc.id.empty()) {
      std::cout << " by " << (fc.id.starts_with("g-") ? "grant " : "opt_out rule ") << fc.id
                << (fc.tag == policy::FlowTag::kBypassApproved ? " (expires " : " (expired ")
                << common::format_rfc3339(fc.expires) << ")";
    } else if (fc.tag == policy::FlowTag::kProxied) {
      std::cout << " (source is a relay)";
    } else {
      std::cout << " (no grant or opt_out rule covers it)";
    }
    std::cout << "\n";
    for (const auto& r : rejected_covering(*snap, *src, *dst, port))
      std::cout << "note: grant " << policy::printable_escape(r["id"].get<std::string>())
                << " would cover it but is rejected (" << r["reason"].get<std::string>()
                << "): " << policy::printable_escape(r["detail"].get<std::string>()) << "\n";
    if (!snap->protects(*dst, port))
      std::cout << "note: " << f.positionals()[0] << " is not a protected SSH port of any host group\n";
    return 0;
  }
  std::cout << out.dump(2) << "\n";
  return 0;
}

// `policy explain --principal`: what the relay would decide for the session.
int explain_session(const common::Flags& f, UnixSeconds now) {
  nlohmann::json out;
  std::string principal = f.require("principal");
  std::string from_text = f.require("from");
  auto from = policy::IpAddr::parse(from_text);
  if (!from) throw UsageError("--from '" + from_text + "': expected an IP address");
  auto [host, port] = split_host_port(f.require("to"), "--to");
  policy::AuthzRequest req;
  req.principal = principal;
  req.source = *from;
  req.port = port;
  req.now = now;
  std::string key = f.get_or("key", "");
  req.key_fingerprint = key;
  req.skip_key_check = key.empty();
  std::string name;
  if (auto a = policy::IpAddr::parse(host)) {
    req.target = *a;
  } else {
    name = host;
    req.target_name = name;
    if (auto addr = f.get("addr")) {
      auto a2 = policy::IpAddr::parse(*addr);
      if (!a2) throw UsageError("--addr '" + *addr + "': expected an IP address");
      req.target = *a2;
    } else {
      addrinfo hints{};
      hints.ai_socktype = SOCK_STREAM;
      addrinfo* res = nullptr;
      if (::getaddrinfo(host.c_str(), nullptr, &hints, &res) == 0 && res) {
        if (auto a3 = policy::IpAddr::from_sockaddr(res->ai_addr)) req.target = *a3;
        ::freeaddrinfo(res);
      }
    }
  }
  // The deciding relay's own addresses: a name that resolves to one is allowed only where an
  // entry's cidrs list it, as for loopback. Default: this host's (explain runs where the relay does).
  if (!name.empty() && req.target.valid()) {
    std::vector<policy::IpAddr> relay;
    for (const std::string& t : f.all("relay-addr")) {
      auto a = policy::IpAddr::parse(t);
      if (!a) throw UsageError("--relay-addr '" + t + "': expected an IP address");
      relay.push_back(*a);
    }
    if (relay.empty()) relay = policy::local_addresses();
    req.target_local = std::find(relay.begin(), relay.end(), req.target) != relay.end();
  }
  auto snap = load_snapshot(f, false);
  policy::Decision d =
      req.target.valid() ? snap->authorize(req) : snap->name_allowed(principal, name, port, now);
  out = {{"kind", "session"},
         {"principal", principal},
         {"source", from->to_string()},
         {"target", host},
         {"address", req.target.valid() ? req.target.to_string() : ""},
         {"port", port},
         {"decision", d.allowed ? "allow" : "deny"},
         {"reason", std::string(policy::reason_name(d.reason))},
         {"rule", std::string(d.rule)},
         {"key_checked", !key.empty()},
         {"address_is_relay", req.target_local},
         {"max_sessions", snap->max_sessions_for(principal)}};
  if (!f.flag("json")) {
    std::cout << "session " << principal << " from " << from->to_string() << " to " << host << ":" << port;
    if (!name.empty())
      std::cout << " (" << (req.target.valid() ? req.target.to_string() : "unresolved") << ")";
    std::cout << ": " << (d.allowed ? "allow" : "deny") << " (" << policy::reason_name(d.reason) << ")";
    if (!d.rule.empty()) std::cout << " by " << d.rule;
    std::cout << "\n";
    if (key.empty()) std::cout << "note: key not checked (give --key SHA256:...)\n";
    if (req.target_local)
      std::cout << "note: " << req.target.to_string()
                << " is an address of the relay (this host, or --relay-addr): a name leads there only "
                   "through an entry whose cidrs list it\n";
    if (d.allowed) std::cout << "max_sessions: " << snap->max_sessions_for(principal) << "\n";
    if (!req.target.valid()) std::cout << "note: " << host << " did not resolve; only the name was checked\n";
    return 0;
  }
  std::cout << out.dump(2) << "\n";
  return 0;
}

int explain(const std::vector<std::string>& args) {
  common::Flags f("policy explain",
                  "sshring policy explain [--policy FILE] --principal NAME --from IP --to HOST:PORT\n"
                  "       sshring policy explain [--policy FILE] --flow SRC DST:PORT",
                  "Prints the decision the relay (session) or the host agent (flow) would make, with the\n"
                  "rule that decided it.");
  f.value("policy", "FILE", "policy file", std::string(policy::kDefaultPolicyPath));
  f.value("grant-store", "DIR", "grant store directory (default: the policy's grant_store)");
  f.value("principal", "NAME", "session: the principal");
  f.value("from", "IP", "session: the client's source address");
  f.value("to", "HOST:PORT", "session: the target the client asks for (a name or an address)");
  f.value("addr", "IP", "session: the address HOST resolves to (default: resolve it now)");
  f.value("key", "FINGERPRINT", "session: the key's SHA256:... fingerprint (default: not checked)");
  f.multi("relay-addr", "IP",
          "session: an address of the relay that decides (repeatable; default: this host's addresses, "
          "as a relay here sees them)");
  f.value("flow", "SRC", "flow: source address; the destination DST:PORT follows as an argument");
  f.value("at", "TIME", "decide at TIME (RFC 3339) instead of now");
  f.boolean("json", "print the decision as JSON");
  cli::add_etcd_flags(f);
  cli::add_ledger_flag(f);
  if (!f.parse(args)) return 0;
  const UnixSeconds now = now_or_at(f);
  return f.has("flow") ? explain_flow(f, now) : explain_session(f, now);
}

constexpr const char* kDefaultPolicyAudit = "/var/log/sshring/policy.audit.jsonl";

std::string actor() {
  for (const char* v : {"SUDO_USER", "USER", "LOGNAME"}) {
    if (const char* s = std::getenv(v); s && *s) return s;
  }
  if (passwd* pw = ::getpwuid(::getuid())) return pw->pw_name;
  return "uid:" + std::to_string(::getuid());
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError(path + ": cannot read it");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// One writer per audit file: concurrent pushes on one machine take turns (as `grant` does).
common::UniqueFd audit_turn(const std::string& audit_path) {
  for (size_t i = 1; i < audit_path.size(); ++i)
    if (audit_path[i] == '/') ::mkdir(audit_path.substr(0, i).c_str(), 0750);
  std::string path = audit_path + ".lock";
  common::UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640));
  if (!fd) common::throw_errno("open " + path);
  while (::flock(fd.get(), LOCK_EX) != 0)
    if (errno != EINTR) common::throw_errno("lock " + path);
  return fd;
}

void etcd_only_flags(common::Flags& f) {
  cli::add_etcd_flags(f);
}

// What a refused push prints: who pushed what since the base, and how to go on.
void refused(const policy::etcd::Keys& keys, const policy::etcd::PushResult& r, int64_t base,
             const std::string& file) {
  std::cerr << "sshring policy push: refused: the live policy under " << keys.policy_current();
  if (r.live) {
    std::cerr << " is at revision " << r.live->revision << " (" << r.live->digest << ", pushed by "
              << r.live->author << " at " << r.live->pushed_at << ")";
  } else {
    std::cerr << " was deleted";
  }
  std::cerr << ", not revision " << base
            << ": someone pushed since your base.\nReview it (sshring policy diff " << file
            << " --etcd ...), then push again with --expect-revision " << (r.live ? r.live->revision : 0)
            << "\n";
}

// The policy_push audit record, on disk before the command says yes. False if it could not be written.
bool record_push(const common::Flags& f, const cli::EtcdTarget& t, const std::string& file,
                 const std::string& text, int64_t revision, int64_t base) {
  metrics::AuditLog audit(metrics::AuditOptions{.path = f.get_or("audit-log", kDefaultPolicyAudit),
                                                .component = "policy",
                                                .fsync_each = true,
                                                .syslog = f.flag("audit-syslog")});
  audit.append(metrics::PolicyPush{.actor = actor(),
                                   .file = file,
                                   .digest = "sha256:" + policy::etcd::sha256_hex(text),
                                   .size = text.size(),
                                   .store = "etcd://" + t.client->describe().substr(5) + t.prefix,
                                   .etcd_revision = static_cast<uint64_t>(std::max<int64_t>(revision, 0)),
                                   .base_revision = static_cast<uint64_t>(std::max<int64_t>(base, 0))}
                   .to_json());
  audit.flush();
  return audit.write_errors() == 0;
}

int push(const std::vector<std::string>& args) {
  common::Flags f(
      "policy push",
      "sshring policy push FILE --etcd ENDPOINTS [--etcd-prefix /sshring] [--expect-revision N]",
      "Validates FILE exactly like `policy check`, then publishes it to etcd atomically with its\n"
      "digest, author and time. Refused when the live policy changed since the revision the push\n"
      "is based on: --expect-revision N (shown by `policy show --etcd`), or else the revision read\n"
      "just before the push. Every relay and agent watching the prefix picks it up.");
  etcd_only_flags(f);
  f.value("expect-revision", "N", "push only if the live policy is still at revision N (0: none pushed yet)");
  f.value("audit-log", "FILE", "audit log for policy pushes", std::string(kDefaultPolicyAudit));
  f.boolean("audit-syslog", "also send the audit record to syslog/journald");
  f.boolean("strict", "refuse to push when the policy has lint warnings");
  f.epilog("Exit codes: 0 pushed, 1 invalid, refused or failed, 2 usage error.\n");
  if (!f.parse(args)) return 0;
  if (f.positionals().size() != 1) throw UsageError("policy push: give exactly one FILE (see --help)");
  const std::string& file = f.positionals()[0];
  policy::Policy p;
  try {
    p = policy::load_policy_file(file);
  } catch (const policy::PolicyError& e) {
    std::cerr << e.what() << "\nsshring policy push: not pushed: " << file << " is invalid\n";
    return 1;
  }
  const UnixSeconds now = now_or_at(f);
  auto lints = policy::lint_policy(p, now);
  for (const auto& l : lints) std::cerr << file << ": warning: " << l.where << ": " << l.message << "\n";
  if (f.flag("strict") && !lints.empty()) {
    std::cerr << "sshring policy push: not pushed: " << lints.size() << " warnings with --strict\n";
    return 1;
  }
  auto t = cli::etcd_from_flags(f);
  policy::etcd::Keys keys(t.prefix);
  const std::string text = read_text(file);
  auto turn = audit_turn(f.get_or("audit-log", kDefaultPolicyAudit));
  int64_t base = 0;
  if (f.has("expect-revision")) {
    base = f.get_int("expect-revision", 0, 0, INT64_MAX);
  } else if (auto live = policy::etcd::read_policy_meta(*t.client, keys)) {
    base = live->revision;
  }
  auto r = policy::etcd::push_policy(*t.client, keys, text, actor(), now, base);
  if (!r.pushed) {
    refused(keys, r, base, file);
    return 1;
  }
  bool audited = record_push(f, t, file, text, r.revision, base);
  std::cout << file << " pushed to " << keys.policy_current() << " at revision " << r.revision
            << " (sha256:" << policy::etcd::sha256_hex(text).substr(0, 16) << "..., " << lints.size()
            << " warnings)\n";
  return audited ? 0 : 1;
}

std::optional<policy::etcd::PublishedPolicy> live_policy(const common::Flags& f, std::string* where) {
  auto t = cli::etcd_from_flags(f);
  policy::etcd::Keys keys(t.prefix);
  *where = keys.policy_current();
  return policy::etcd::read_policy(*t.client, keys);
}

int show(const std::vector<std::string>& args) {
  common::Flags f(
      "policy show", "sshring policy show --etcd ENDPOINTS [--etcd-prefix /sshring] [--json]",
      "Prints the live policy in etcd, after a header with its revision, digest, author and time.");
  etcd_only_flags(f);
  f.boolean("json", "print the metadata and the text as JSON");
  if (!f.parse(args)) return 0;
  if (!f.has("etcd")) throw UsageError("policy show: give --etcd ENDPOINTS");
  std::string where;
  auto live = live_policy(f, &where);
  if (!live) {
    std::cerr << "sshring policy show: no policy under " << where << " (push one with sshring policy push)\n";
    return 1;
  }
  const auto& m = live->meta;
  if (f.flag("json")) {
    std::cout << nlohmann::json{{"key", where},        {"revision", m.revision},   {"digest", m.digest},
                                {"author", m.author},  {"pushed_at", m.pushed_at}, {"size", m.size},
                                {"policy", live->text}}
                     .dump(2)
              << "\n";
    return 0;
  }
  std::cout << "# " << where << " revision " << m.revision << " (use --expect-revision " << m.revision
            << ")\n# " << m.digest << ", " << m.size << " bytes, pushed by " << m.author << " at "
            << m.pushed_at << "\n"
            << live->text;
  return 0;
}

int diff(const std::vector<std::string>& args) {
  common::Flags f("policy diff", "sshring policy diff FILE --etcd ENDPOINTS [--etcd-prefix /sshring]",
                  "Shows what pushing FILE would change: a unified diff from the live policy to FILE.");
  etcd_only_flags(f);
  f.epilog("Exit codes: 0 no difference, 1 different (or no live policy), 2 usage error.\n");
  if (!f.parse(args)) return 0;
  if (f.positionals().size() != 1) throw UsageError("policy diff: give exactly one FILE (see --help)");
  if (!f.has("etcd")) throw UsageError("policy diff: give --etcd ENDPOINTS");
  const std::string& file = f.positionals()[0];
  const std::string text = read_text(file);
  std::string where;
  auto live = live_policy(f, &where);
  std::string live_text = live ? live->text : "";
  if (live_text == text) {
    std::cout << file << " is the live policy (" << where << " revision " << live->meta.revision << ")\n";
    return 0;
  }
  // diff(1) does the rendering; the live text goes through a private temp file.
  char tmp[] = "/tmp/sshring-policy-live-XXXXXX";
  common::UniqueFd fd(::mkstemp(tmp));
  if (!fd) common::throw_errno("create a temporary file for policy diff");
  std::ofstream(tmp, std::ios::binary) << live_text;
  std::string label = where + (live ? "@" + std::to_string(live->meta.revision) : " (none)");
  std::cout.flush();
  pid_t pid = ::fork();
  if (pid == 0) {
    ::execlp("diff", "diff", "-u", "--label", label.c_str(), "--label", file.c_str(), tmp, file.c_str(),
             static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  if (pid > 0) ::waitpid(pid, &status, 0);
  ::unlink(tmp);
  if (pid < 0 || !WIFEXITED(status) || WEXITSTATUS(status) > 1)
    throw common::UsageError("policy diff: diff(1) failed (is diffutils installed?)");
  return 1;
}

int run(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout
        << "Usage: sshring policy check FILE | explain ... | push FILE --etcd ... | show | diff FILE\n\n"
           "  check FILE   validate and lint a policy file\n"
           "  explain      show the decision for a session (--principal) or a flow (--flow)\n"
           "  push FILE    validate FILE and publish it to etcd (--etcd ENDPOINTS)\n"
           "  show         print the live policy in etcd with its revision\n"
           "  diff FILE    show what pushing FILE would change\n\n"
           "Run 'sshring policy SUBCOMMAND --help' for options.\n";
    return args.empty() ? 2 : 0;
  }
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "check") return check(rest);
  if (args[0] == "explain") return explain(rest);
  if (args[0] == "push") return push(rest);
  if (args[0] == "show") return show(rest);
  if (args[0] == "diff") return diff(rest);
  throw UsageError("unknown subcommand '" + args[0] +
                   "'; expected check, explain, push, show or diff (see --help)");
}

const sshring::cli::Registrar kPolicy{{"policy", "check, explain and publish (etcd) the access policy", run}};

}  // namespace
