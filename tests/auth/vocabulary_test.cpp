// One vocabulary: the names of a decision are spelled the same in the relay's DENY reasons (audit
// records, decision metrics), `policy explain`, the session outcome labels and the docs. Each list is
// walked from its enum, so a new value without a name, a label or a docs entry fails here.
#include <gtest/gtest.h>

#include <regex>
#include <set>
#include <string>

#include "common/session_id.h"
#include "metrics/catalog.h"
#include "policy/snapshot.h"
#include "protocol/preamble.h"
#include "relay/admission.h"
#include "relay/handshake.h"
#include "tests/support/process.h"

namespace protocol = sshring::protocol;
namespace relay = sshring::relay;
namespace policy = sshring::policy;
namespace metrics = sshring::metrics;

// EndReason indexes metrics::kSessionOutcomes (RelayWorkerStats::sessions_total): the last value and
// the label count must agree, or a new reason writes past the array.
static_assert(static_cast<size_t>(relay::EndReason::kOverloaded) + 1 == metrics::kNumSessionOutcomes,
              "every relay::EndReason needs a label in metrics::kSessionOutcomes");

namespace {

std::string doc(const std::string& name) {
  return sshring::testing::read_file(std::string(SSHRING_SOURCE_DIR) + "/docs/" + name);
}

TEST(Vocabulary, EveryDenyReasonHasANameAndAProtocolDocRow) {
  const std::string protocol = doc("protocol.md");
  std::set<std::string> names;
  for (uint16_t code = 1; code <= protocol::kMaxReason; ++code) {
    auto r = static_cast<protocol::Reason>(code);
    std::string name = protocol::reason_name(r);
    EXPECT_NE(name, "unknown") << code;
    EXPECT_STRNE(protocol::reason_description(r), "unknown reason") << code;
    EXPECT_TRUE(names.insert(name).second) << name << " is used twice";
    // "| 18   | `not_authenticated`   | 38   | ..."
    std::regex row("\\| " + std::to_string(code) + " +\\| `" + name + "` +\\| " +
                   std::to_string(protocol::exit_code_for(r)) + " +\\|");
    EXPECT_TRUE(std::regex_search(protocol, row))
        << "docs/protocol.md has no row for " << code << " " << name;
  }
  std::regex newer(std::to_string(protocol::kExitCodeBase + protocol::kMaxReason + 1) + " a DENY code newer");
  EXPECT_TRUE(std::regex_search(protocol, newer)) << "docs/protocol.md: exit code for newer reasons";
}

TEST(Vocabulary, PolicyReasonsAreSpelledAsTheRelaySpellsThem) {
  const std::string policy_doc = doc("policy.md");
  std::set<std::string> relay_names;
  for (uint16_t code = 1; code <= protocol::kMaxReason; ++code)
    relay_names.insert(protocol::reason_name(static_cast<protocol::Reason>(code)));
  const policy::Reason reasons[] = {policy::Reason::kAllowed,         policy::Reason::kUnknownPrincipal,
                                    policy::Reason::kKeyNotListed,    policy::Reason::kTargetNotAllowed,
                                    policy::Reason::kPortNotAllowed,  policy::Reason::kOutsideTimeWindow,
                                    policy::Reason::kTooManySessions, policy::Reason::kNoPolicy};
  for (auto r : reasons) {
    std::string name(policy::reason_name(r));
    EXPECT_NE(policy_doc.find("| `" + name + "` |"), std::string::npos) << "docs/policy.md lacks " << name;
    if (r == policy::Reason::kAllowed || r == policy::Reason::kNoPolicy) continue;  // never a DENY
    EXPECT_TRUE(relay_names.count(name)) << "policy says '" << name << "', the relay has no such reason";
  }
  EXPECT_EQ(policy_doc.find("outside_window`"), std::string::npos) << "the old spelling is back";
}

TEST(Vocabulary, SessionOutcomesAndStartupRefusalsAreDocumented) {
  const std::string metrics_doc = doc("metrics.md");
  const std::string audit_doc = doc("audit.md");
  for (size_t i = 0; i < metrics::kNumSessionOutcomes; ++i) {
    auto r = static_cast<relay::EndReason>(i);
    EXPECT_STREQ(relay::end_reason_name(r), metrics::kSessionOutcomes[i]);
    std::string label = std::string("`") + metrics::kSessionOutcomes[i] + "`";
    EXPECT_NE(metrics_doc.find(label), std::string::npos) << "docs/metrics.md lacks outcome " << label;
    EXPECT_NE(audit_doc.find(label), std::string::npos) << "docs/audit.md lacks outcome " << label;
  }
  for (size_t i = 0; i < metrics::kNumStartupRefusals; ++i) {
    std::string label =
        std::string("`") + relay::startup_refusal_name(static_cast<relay::StartupRefusal>(i)) + "`";
    EXPECT_NE(metrics_doc.find(label), std::string::npos) << "docs/metrics.md lacks refusal " << label;
  }
  // Every DENY name the audit record can carry is listed in docs/audit.md.
  for (uint16_t code = 1; code <= protocol::kMaxReason; ++code) {
    auto r = static_cast<protocol::Reason>(code);
    if (r == protocol::Reason::kTimeout || r == protocol::Reason::kNotAuthenticated ||
        r == protocol::Reason::kTargetUnreachable)
      continue;  // timeout: an outcome; not_authenticated: wire only; target_unreachable: a session_end
    std::string name = std::string("`") + protocol::reason_name(r) + "`";
    EXPECT_NE(audit_doc.find(name), std::string::npos) << "docs/audit.md lacks " << name;
  }
}

TEST(Vocabulary, SessionIdsHaveOneTextForm) {
  EXPECT_EQ(sshring::common::session_id_string(0x2a), "000000000000002a");
  EXPECT_EQ(sshring::common::session_id_string(~0ull), "ffffffffffffffff");
  EXPECT_NE(doc("protocol.md").find("16 hex digits"), std::string::npos);
}

}  // namespace
