// Audit records for signed-grant events, built from policy's grant types: the one place that knows
// which grant fields each record carries, so the grant CLI, the relay and the agent record the same
// fields. It sits above policy and metrics (which know nothing of each other) and below the parts
// that write records.
#pragma once

#include <string_view>

#include "metrics/audit_types.h"
#include "policy/grant.h"

namespace sshring::bridge {

// Who signed: principal, "SHA256:..." fingerprint, and the OS user and host recorded beside the
// signature.
struct GrantActor {
  std::string principal;
  std::string fingerprint;
  std::string os_user;
  std::string host;
};

// A new request as checked: its terms, status and, under a break_glass rule, break_glass and, once
// live, the review_due time.
metrics::GrantRequest grant_request_record(const policy::CheckedGrant& chk, const GrantActor& by);
// `status` is the grant's status after the approval.
metrics::GrantApprove grant_approve_record(const policy::SignedGrant& g, const GrantActor& by,
                                           std::string_view status);
metrics::GrantDeny grant_deny_record(const policy::SignedGrant& g, const GrantActor& by,
                                     std::string_view reason);
metrics::GrantRevoke grant_revoke_record(const policy::SignedGrant& g, const GrantActor& by,
                                         std::string_view reason);
metrics::GrantReview grant_review_record(const policy::SignedGrant& g, const GrantActor& by,
                                         std::string_view note);
// A stored grant a reader refused to honour (reason code and detail from check_grant).
metrics::GrantReject grant_reject_record(const policy::CheckedGrant& c);
// The grant ended (expired, or its pending window closed), recorded by the first reader after.
metrics::GrantExpire grant_expire_record(const policy::CheckedGrant& c);

}  // namespace sshring::bridge
