// Grants: run-time, time-bound exceptions issued under an opt_out rule (`sshring grant add`).
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "policy/model.h"

namespace sshring::policy {

struct Grant {
  std::string id;  // "g-" + 12 lowercase hex digits (random)
  std::string who;
  Cidr from;
  Cidr to;
  PortSet ports = PortSet::single(kDefaultSshPort);
  std::string rule;  // id of the opt_out rule that allowed it
  std::string reason;
  std::string approver;
  std::string created_by;  // login of the person who ran `grant add`
  UnixSeconds created = 0;
  UnixSeconds expires = 0;
  std::optional<UnixSeconds> revoked_at;
  std::string revoked_by;
  std::string revoke_reason;
  bool expire_recorded = false;  // a grant_expire audit record was written

  // Live iff now < effective_expiry(): it stops matching at its expiry second, or when revoked.
  [[nodiscard]] UnixSeconds effective_expiry() const noexcept {
    return revoked_at && *revoked_at < expires ? *revoked_at : expires;
  }
  [[nodiscard]] bool live(UnixSeconds now) const noexcept { return now < effective_expiry(); }
  bool operator==(const Grant&) const = default;
};

nlohmann::json grant_to_json(const Grant& g);
// Throws common::UsageError naming the field on malformed input.
Grant grant_from_json(const nlohmann::json& j);

// A request to add a grant, before it has an id and times.
struct GrantRequest {
  std::string who;
  Cidr from;
  Cidr to;
  PortSet ports = PortSet::single(kDefaultSshPort);
  int64_t ttl_seconds = 0;
  std::string reason;
  std::string approver;
};

// Which opt_out rule allows `req` at `now`. On refusal returns nullptr and fills *refusal with one
// line per rule considered ("rule ci-direct: ttl 12h exceeds max_ttl 8h"), or why none applies.
const OptOutRule* find_allowing_rule(const Policy& policy, const GrantRequest& req, UnixSeconds now,
                                     std::string* refusal);

}  // namespace sshring::policy
