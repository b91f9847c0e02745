// Audit record bodies for grant events, one function per record type, so every writer (the grant
// CLI, the relay, the agent) records the same fields: the grant's terms, the signer principal and key
// fingerprint, and the OS user and host recorded beside the signature (never trusted). The caller adds
// nothing but appends the record to its audit log.
#pragma once

#include <nlohmann/json.hpp>

#include <string_view>

#include "policy/grant.h"

namespace sshring::policy {

// Who signed: principal, "SHA256:..." fingerprint, and the recorded OS user and host.
struct GrantActor {
  std::string principal;
  std::string fingerprint;
  std::string os_user;
  std::string host;
};

// A new request as checked: its terms, status and, under a break_glass rule, break_glass and the
// review_due time (`audit report` lists break-glass grants until they are reviewed).
nlohmann::json grant_request_record(const CheckedGrant& chk, const GrantActor& by);
nlohmann::json grant_approve_record(const SignedGrant& g, const GrantActor& by, std::string_view status);
nlohmann::json grant_deny_record(const SignedGrant& g, const GrantActor& by, std::string_view reason);
nlohmann::json grant_revoke_record(const SignedGrant& g, const GrantActor& by, std::string_view reason);
nlohmann::json grant_review_record(const SignedGrant& g, const GrantActor& by, std::string_view note);
// A stored grant a reader refused to honour (reason code and detail from check_grant).
nlohmann::json grant_reject_record(const CheckedGrant& c);
nlohmann::json grant_expire_record(const CheckedGrant& c);

}  // namespace sshring::policy
