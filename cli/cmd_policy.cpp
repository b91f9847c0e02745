// `sshring policy check|explain`: validate and lint a policy file; explain a session or flow decision.
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/flags.h"
#include "policy/grant_store.h"
#include "policy/parser.h"
#include "policy/snapshot.h"

namespace {

using namespace sshring;
using common::UsageError;
using policy::UnixSeconds;

UnixSeconds now_or_at(const common::Flags& f) {
  if (auto at = f.get("at")) {
    UnixSeconds t;
    if (!policy::parse_rfc3339(*at, &t)) {
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
  auto pol = std::make_shared<policy::Policy>(
      policy::load_policy_file(f.get_or("policy", policy::kDefaultPolicyPath)));
  std::vector<policy::SignedGrant> grants;
  if (with_grants) {
    std::string store = f.get_or("grant-store", pol->grant_store);
    if (::access(store.c_str(), F_OK) == 0) grants = policy::DirGrantStore(store, false).load();
  }
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
  f.value("flow", "SRC", "flow: source address; the destination DST:PORT follows as an argument");
  f.value("at", "TIME", "decide at TIME (RFC 3339) instead of now");
  f.boolean("json", "print the decision as JSON");
  if (!f.parse(args)) return 0;
  const UnixSeconds now = now_or_at(f);
  nlohmann::json out;
  if (f.has("flow")) {
    if (f.positionals().size() != 1)
      throw UsageError("policy explain --flow SRC DST:PORT: give DST:PORT once");
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
    if (!fc.id.empty()) out["expires"] = policy::format_rfc3339(fc.expires);
    out["rejected_grants"] = rejected_covering(*snap, *src, *dst, port);
    if (!f.flag("json")) {
      std::cout << "flow " << src->to_string() << " -> " << f.positionals()[0] << ": "
                << policy::flow_tag_name(fc.tag);
      if (!fc.id.empty()) {
        std::cout << " by " << (fc.id.starts_with("g-") ? "grant " : "opt_out rule ") << fc.id
                  << (fc.tag == policy::FlowTag::kBypassApproved ? " (expires " : " (expired ")
                  << policy::format_rfc3339(fc.expires) << ")";
      } else if (fc.tag == policy::FlowTag::kProxied) {
        std::cout << " (source is a relay)";
      } else {
        std::cout << " (no grant or opt_out rule covers it)";
      }
      std::cout << "\n";
      for (const auto& r : rejected_covering(*snap, *src, *dst, port))
        std::cout << "note: grant " << r["id"].get<std::string>() << " would cover it but is rejected ("
                  << r["reason"].get<std::string>() << "): " << r["detail"].get<std::string>() << "\n";
      if (!snap->protects(*dst, port))
        std::cout << "note: " << f.positionals()[0] << " is not a protected SSH port of any host group\n";
      return 0;
    }
  } else {
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
           {"max_sessions", snap->max_sessions_for(principal)}};
    if (!f.flag("json")) {
      std::cout << "session " << principal << " from " << from->to_string() << " to " << host << ":" << port;
      if (!name.empty())
        std::cout << " (" << (req.target.valid() ? req.target.to_string() : "unresolved") << ")";
      std::cout << ": " << (d.allowed ? "allow" : "deny") << " (" << policy::reason_name(d.reason) << ")";
      if (!d.rule.empty()) std::cout << " by " << d.rule;
      std::cout << "\n";
      if (key.empty()) std::cout << "note: key not checked (give --key SHA256:...)\n";
      if (d.allowed) std::cout << "max_sessions: " << snap->max_sessions_for(principal) << "\n";
      if (!req.target.valid())
        std::cout << "note: " << host << " did not resolve; only the name was checked\n";
      return 0;
    }
  }
  std::cout << out.dump(2) << "\n";
  return 0;
}

int run(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout << "Usage: sshring policy check FILE | explain ...\n\n"
                 "  check FILE   validate and lint a policy file\n"
                 "  explain      show the decision for a session (--principal) or a flow (--flow)\n\n"
                 "Run 'sshring policy SUBCOMMAND --help' for options.\n";
    return args.empty() ? 2 : 0;
  }
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "check") return check(rest);
  if (args[0] == "explain") return explain(rest);
  throw UsageError("unknown subcommand '" + args[0] + "'; expected check or explain (see --help)");
}

const sshring::cli::Registrar kPolicy{{"policy", "check and explain the access policy", run}};

}  // namespace
