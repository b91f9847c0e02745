#include "policy/grant.h"

#include <nlohmann/json.hpp>

#include <algorithm>

#include "common/duration.h"
#include "common/error.h"

namespace sshring::policy {

nlohmann::json grant_to_json(const Grant& g) {
  nlohmann::json j = {
      {"id", g.id},
      {"who", g.who},
      {"from", g.from.to_string()},
      {"to", g.to.to_string()},
      {"ports", g.ports.to_string()},
      {"rule", g.rule},
      {"reason", g.reason},
      {"approver", g.approver},
      {"created_by", g.created_by},
      {"created", format_rfc3339(g.created)},
      {"expires", format_rfc3339(g.expires)},
      {"created_unix", g.created},
      {"expires_unix", g.expires},
      {"expire_recorded", g.expire_recorded},
  };
  if (g.revoked_at) {
    j["revoked_at"] = format_rfc3339(*g.revoked_at);
    j["revoked_unix"] = *g.revoked_at;
    j["revoked_by"] = g.revoked_by;
    j["revoke_reason"] = g.revoke_reason;
  }
  return j;
}

Grant grant_from_json(const nlohmann::json& j) {
  auto bad = [](const std::string& field, const std::string& why) -> common::UsageError {
    return common::UsageError("grant field '" + field + "': " + why);
  };
  if (!j.is_object()) throw common::UsageError("grant: expected a JSON object");
  auto str = [&](const char* k, bool required) -> std::string {
    auto it = j.find(k);
    if (it == j.end()) {
      if (required) throw bad(k, "missing");
      return {};
    }
    if (!it->is_string()) throw bad(k, "expected a string");
    return it->get<std::string>();
  };
  auto num = [&](const char* k) -> int64_t {
    auto it = j.find(k);
    if (it == j.end() || !it->is_number_integer()) throw bad(k, "expected an integer");
    return it->get<int64_t>();
  };
  Grant g;
  g.id = str("id", true);
  g.who = str("who", true);
  auto from = Cidr::parse(str("from", true));
  if (!from) throw bad("from", "not a CIDR");
  g.from = *from;
  auto to = Cidr::parse(str("to", true));
  if (!to) throw bad("to", "not a CIDR");
  g.to = *to;
  auto ports = PortSet::parse(str("ports", true));
  if (!ports) throw bad("ports", "not a port list");
  g.ports = *ports;
  g.rule = str("rule", false);
  g.reason = str("reason", false);
  g.approver = str("approver", false);
  g.created_by = str("created_by", false);
  g.created = num("created_unix");
  g.expires = num("expires_unix");
  if (j.contains("revoked_unix")) {
    g.revoked_at = num("revoked_unix");
    g.revoked_by = str("revoked_by", false);
    g.revoke_reason = str("revoke_reason", false);
  }
  if (auto it = j.find("expire_recorded"); it != j.end() && it->is_boolean())
    g.expire_recorded = it->get<bool>();
  return g;
}

const OptOutRule* find_allowing_rule(const Policy& policy, const GrantRequest& req, UnixSeconds now,
                                     std::string* refusal) {
  std::string why;
  const Principal* who = policy.find_principal(req.who);
  auto ttl = [](int64_t s) { return common::format_duration(std::chrono::seconds(s)); };
  for (const auto& r : policy.opt_out) {
    std::string no;
    bool who_ok =
        std::find(r.who_principals.begin(), r.who_principals.end(), req.who) != r.who_principals.end();
    if (!who_ok && who) {
      for (const auto& role : who->roles) {
        if (std::find(r.who_roles.begin(), r.who_roles.end(), role) != r.who_roles.end()) who_ok = true;
      }
    }
    if (!who_ok) {
      no = req.who + " is not among its principals or roles";
    } else if (r.expires <= now) {
      no = "the rule expired at " + format_rfc3339(r.expires);
    } else if (!std::any_of(r.from.begin(), r.from.end(),
                            [&](const Cidr& c) { return c.contains(req.from); })) {
      no = "from " + req.from.to_string() + " is not within its sources";
    } else if (!std::any_of(r.to_cidrs.begin(), r.to_cidrs.end(),
                            [&](const Cidr& c) { return c.contains(req.to); })) {
      no = "to " + req.to.to_string() + " is not within its targets";
    } else if (!r.to_ports.contains(req.ports)) {
      no = "ports " + req.ports.to_string() + " are not within its ports " + r.to_ports.to_string();
    } else if (req.ttl_seconds > r.max_ttl_seconds) {
      no = "ttl " + ttl(req.ttl_seconds) + " exceeds its max_ttl " + ttl(r.max_ttl_seconds);
    } else if (now + req.ttl_seconds > r.expires) {
      no = "the grant would outlive the rule, which expires at " + format_rfc3339(r.expires);
    } else if (r.require_reason && req.reason.empty()) {
      no = "it requires --reason";
    } else if (r.require_approver && req.approver.empty()) {
      no = "it requires --approver";
    } else if (r.require_approver && req.approver == req.who) {
      no = "the approver must be someone other than " + req.who;
    } else {
      return &r;
    }
    why += "rule " + r.id + ": " + no + "\n";
  }
  if (why.empty()) why = "no opt_out rule exists in " + policy.source + "\n";
  if (refusal) *refusal = why;
  return nullptr;
}

}  // namespace sshring::policy
