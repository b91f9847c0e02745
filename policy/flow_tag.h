// The one vocabulary for direct SSH flows, shared by BPF maps, metrics labels, audit records and docs.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace sshring::policy {

// Numeric values are ABI: the BPF programs store them in maps (bpf/ mirrors them in its shared header).
enum class FlowTag : uint8_t {
  kProxied = 1,           // source is a relay instance
  kBypassApproved = 2,    // a live grant (or a live static opt-out rule) covers the flow
  kBypassExpired = 3,     // only an expired grant covers the flow
  kBypassUnapproved = 4,  // nothing covers the flow
};

constexpr std::string_view flow_tag_name(FlowTag t) {
  switch (t) {
    case FlowTag::kProxied:
      return "proxied";
    case FlowTag::kBypassApproved:
      return "bypass_approved";
    case FlowTag::kBypassExpired:
      return "bypass_expired";
    case FlowTag::kBypassUnapproved:
      return "bypass_unapproved";
  }
  return "unknown";
}

constexpr std::optional<FlowTag> flow_tag_from_name(std::string_view s) {
  if (s == "proxied") return FlowTag::kProxied;
  if (s == "bypass_approved") return FlowTag::kBypassApproved;
  if (s == "bypass_expired") return FlowTag::kBypassExpired;
  if (s == "bypass_unapproved") return FlowTag::kBypassUnapproved;
  return std::nullopt;
}

inline constexpr FlowTag kAllFlowTags[] = {FlowTag::kProxied, FlowTag::kBypassApproved,
                                           FlowTag::kBypassExpired, FlowTag::kBypassUnapproved};

}  // namespace sshring::policy
