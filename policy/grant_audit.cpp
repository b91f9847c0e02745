#include "policy/grant_audit.h"

#include "common/civil_time.h"

namespace sshring::policy {
namespace {

nlohmann::json ports_json(const PortSet& ps) {
  nlohmann::json a = nlohmann::json::array();
  for (uint16_t p : ps.ports()) a.push_back(p);
  return a;
}

nlohmann::json terms(std::string_view type, const GrantRequest& r) {
  return {{"type", type},
          {"grant_id", r.id},
          {"who", r.who},
          {"from", r.from.to_string()},
          {"to", r.to.to_string()},
          {"ports", ports_json(r.ports)},
          {"ttl_seconds", r.ttl_seconds},
          {"rule", r.rule},
          {"requester", r.requester}};
}

nlohmann::json with_actor(nlohmann::json rec, const GrantActor& by) {
  rec["actor"] = by.principal;
  rec["signer"] = by.principal;
  rec["key_fingerprint"] = by.fingerprint;
  rec["os_user"] = by.os_user;
  rec["host"] = by.host;
  return rec;
}

}  // namespace

nlohmann::json grant_request_record(const CheckedGrant& chk, const GrantActor& by) {
  const SignedGrant& g = chk.object;
  auto rec = with_actor(terms("grant_request", g.request), by);
  rec["reason"] = g.request.reason;
  rec["status"] = status_name(chk.status);
  if (chk.break_glass) {
    rec["break_glass"] = true;
    if (chk.activated) rec["review_due"] = common::format_rfc3339(chk.review_due);
  }
  return rec;
}

nlohmann::json grant_approve_record(const SignedGrant& g, const GrantActor& by, std::string_view status) {
  auto rec = with_actor(terms("grant_approve", g.request), by);
  rec["status"] = status;
  return rec;
}

nlohmann::json grant_deny_record(const SignedGrant& g, const GrantActor& by, std::string_view reason) {
  auto rec = with_actor(terms("grant_deny", g.request), by);
  rec["reason"] = reason;
  return rec;
}

nlohmann::json grant_revoke_record(const SignedGrant& g, const GrantActor& by, std::string_view reason) {
  auto rec = with_actor(terms("grant_revoke", g.request), by);
  rec["reason"] = reason;
  return rec;
}

nlohmann::json grant_review_record(const SignedGrant& g, const GrantActor& by, std::string_view note) {
  auto rec = with_actor(terms("grant_review", g.request), by);
  rec["note"] = note;
  return rec;
}

nlohmann::json grant_reject_record(const CheckedGrant& c) {
  auto rec = terms("grant_reject", c.object.request);
  rec["actor"] = "system";
  rec["reason"] = c.reject_reason;
  rec["detail"] = c.detail;
  rec["key_fingerprint"] = c.requester_fingerprint;
  rec["os_user"] = c.object.request.os_user;
  rec["host"] = c.object.request.host;
  return rec;
}

nlohmann::json grant_expire_record(const CheckedGrant& c) {
  auto rec = terms("grant_expire", c.object.request);
  rec["actor"] = "system";
  rec["expires"] = common::format_rfc3339(c.activated ? c.terms.expires : c.pending_until);
  return rec;
}

}  // namespace sshring::policy
