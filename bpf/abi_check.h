// Compile-time proof that the lists mirrored across the kernel/user boundary agree: flow tags
// (policy::FlowTag, metrics::kFlowTagNames vs SSHRING_TAG_*) and the kernel stat indices
// (enum sshring_stat vs metrics::kKernelStatNames). Included by the agent, which uses all of them.
#pragma once

#include <string_view>

#include "bpf/sshring_structs.h"
#include "metrics/catalog.h"
#include "policy/flow_tag.h"

namespace sshring::bpf::abi {

static_assert(static_cast<int>(policy::FlowTag::kProxied) == SSHRING_TAG_PROXIED);
static_assert(static_cast<int>(policy::FlowTag::kBypassApproved) == SSHRING_TAG_APPROVED);
static_assert(static_cast<int>(policy::FlowTag::kBypassExpired) == SSHRING_TAG_EXPIRED);
static_assert(static_cast<int>(policy::FlowTag::kBypassUnapproved) == SSHRING_TAG_UNAPPROVED);
static_assert(std::size(policy::kAllFlowTags) + 1 == SSHRING_NUM_TAGS);
static_assert(metrics::kNumFlowTags + 1 == SSHRING_NUM_TAGS);

constexpr bool stat_named(int idx, std::string_view name) {
  return std::string_view(metrics::kKernelStatNames[idx]) == name;
}
static_assert(metrics::kNumKernelStats == SSHRING_STAT_NUM, "one metric label per kernel stat");
static_assert(stat_named(SSHRING_STAT_TRUNCATED, "truncated"));
static_assert(stat_named(SSHRING_STAT_FRAGMENTS, "fragment"));
static_assert(stat_named(SSHRING_STAT_V6_UNPARSED, "v6_unparsed"));
static_assert(stat_named(SSHRING_STAT_RINGBUF_FULL, "ringbuf_full"));
static_assert(stat_named(SSHRING_STAT_FLOW_MAP_FULL, "flow_map_full"));
static_assert(stat_named(SSHRING_STAT_UNTRACKED, "untracked"));
static_assert(stat_named(SSHRING_STAT_DROPPED, "dropped_syn"));
static_assert(stat_named(SSHRING_STAT_CLOSED_LOCAL, "closed_local"));
static_assert(stat_named(SSHRING_STAT_DROPPED_PACKETS, "dropped_packet"));
static_assert(stat_named(SSHRING_STAT_EXPIRED_LIVE, "expired_live"));
static_assert(stat_named(SSHRING_STAT_RECLASSIFIED, "reclassified_syn"));

constexpr bool tags_named() {
  for (policy::FlowTag t : policy::kAllFlowTags)
    if (policy::flow_tag_name(t) != metrics::kFlowTagNames[static_cast<int>(t) - 1]) return false;
  return true;
}
static_assert(tags_named(), "metrics::kFlowTagNames follows policy::FlowTag");

}  // namespace sshring::bpf::abi
