#include "bridge/grant_records.h"

#include "common/civil_time.h"

namespace sshring::bridge {
namespace {

void fill_terms(metrics::GrantTerms& t, const policy::GrantRequest& r) {
  t.grant_id = r.id;
  t.who = r.who;
  t.from = r.from.to_string();
  t.to = r.to.to_string();
  t.ports = r.ports.ports();
  t.rule = r.rule;
  if (r.ttl_seconds > 0) t.ttl_seconds = static_cast<uint64_t>(r.ttl_seconds);
  t.requester = r.requester;
}

// Terms and signer: what every signed decision record starts with.
template <class R>
R signed_by(const policy::SignedGrant& g, const GrantActor& by) {
  R rec;
  fill_terms(rec, g.request);
  rec.actor = by.principal;
  rec.signer = by.principal;
  rec.key_fingerprint = by.fingerprint;
  rec.os_user = by.os_user;
  rec.signer_host = by.host;
  return rec;
}

}  // namespace

metrics::GrantRequest grant_request_record(const policy::CheckedGrant& chk, const GrantActor& by) {
  auto rec = signed_by<metrics::GrantRequest>(chk.object, by);
  rec.reason = chk.object.request.reason;
  rec.status = policy::status_name(chk.status);
  if (chk.break_glass) {
    rec.break_glass = true;
    if (chk.activated) rec.review_due = common::format_rfc3339(chk.review_due);
  }
  return rec;
}

metrics::GrantApprove grant_approve_record(const policy::SignedGrant& g, const GrantActor& by,
                                           std::string_view status) {
  auto rec = signed_by<metrics::GrantApprove>(g, by);
  rec.status = status;
  return rec;
}

metrics::GrantDeny grant_deny_record(const policy::SignedGrant& g, const GrantActor& by,
                                     std::string_view reason) {
  auto rec = signed_by<metrics::GrantDeny>(g, by);
  rec.reason = reason;
  return rec;
}

metrics::GrantRevoke grant_revoke_record(const policy::SignedGrant& g, const GrantActor& by,
                                         std::string_view reason) {
  auto rec = signed_by<metrics::GrantRevoke>(g, by);
  rec.reason = reason;
  return rec;
}

metrics::GrantReview grant_review_record(const policy::SignedGrant& g, const GrantActor& by,
                                         std::string_view note) {
  auto rec = signed_by<metrics::GrantReview>(g, by);
  rec.note = note;
  return rec;
}

metrics::GrantReject grant_reject_record(const policy::CheckedGrant& c) {
  metrics::GrantReject rec;
  fill_terms(rec, c.object.request);
  rec.reason = c.reject_reason;
  rec.detail = c.detail;
  rec.key_fingerprint = c.requester_fingerprint;
  rec.os_user = c.object.request.os_user;
  rec.signer_host = c.object.request.host;
  return rec;
}

metrics::GrantExpire grant_expire_record(const policy::CheckedGrant& c) {
  metrics::GrantExpire rec;
  fill_terms(rec, c.object.request);
  rec.expires = common::format_rfc3339(c.activated ? c.terms.expires : c.pending_until);
  return rec;
}

}  // namespace sshring::bridge
