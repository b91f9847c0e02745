// Why a reader refuses to honour a stored grant: one list shared by policy (which decides) and metrics
// (which pre-creates a sshring_grants_rejected_total series per reason). docs/policy.md explains each.
#pragma once

#include <algorithm>
#include <array>
#include <string_view>

namespace sshring::common {

inline constexpr std::array<std::string_view, 9> kGrantRejectReasons = {
    "unsigned",     "bad_signature", "unknown_key",  "signer_mismatch", "future_time",
    "missing_rule", "outside_rule",  "bad_decision", "duplicate_id",
};

constexpr bool is_grant_reject_reason(std::string_view r) {
  return std::find(kGrantRejectReasons.begin(), kGrantRejectReasons.end(), r) != kGrantRejectReasons.end();
}

}  // namespace sshring::common
