// `audit report` numbers on a crafted log, and the CLI end to end.
#include <gtest/gtest.h>

#include "metrics/audit.h"
#include "metrics/audit_report.h"
#include "metrics/audit_verify.h"
#include "tests/metrics/crafted_log.h"
#include "tests/support/process.h"

namespace sshring::metrics {
namespace {

using sshring::testing::TempDir;

AuditReport build(const TempDir& dir, int64_t since_ms) {
  AuditReport rep({.since_ms = since_ms});
  for (const auto& log : find_audit_logs(dir.path())) {
    for (const auto& file : log) {
      for_each_line(file, [&](uint64_t, std::string_view line, bool complete) {
        if (!complete) return;
        auto rec = parse_record(line, nullptr);
        ASSERT_TRUE(rec) << line;
        rep.add(*rec);
      });
    }
  }
  return rep;
}

TEST(AuditReportTest, NumbersOnACraftedLog) {
  TempDir dir;
  craft(dir);
  auto j = build(dir, 0).to_json();
  // Flows by tag, unapproved first.
  ASSERT_EQ(j["flows_by_tag"].size(), 4u);
  EXPECT_EQ(j["flows_by_tag"][0]["tag"], "bypass_unapproved");
  EXPECT_EQ(j["flows_by_tag"][0]["flows"], 3);
  EXPECT_EQ(j["flows_by_tag"][0]["bytes"], 1650);
  EXPECT_EQ(j["flows_by_tag"][1]["tag"], "bypass_expired");
  EXPECT_EQ(j["flows_by_tag"][1]["flows"], 1);
  EXPECT_EQ(j["flows_by_tag"][1]["bytes"], 10);
  EXPECT_EQ(j["flows_by_tag"][2]["tag"], "bypass_approved");
  EXPECT_EQ(j["flows_by_tag"][2]["flows"], 3);
  EXPECT_EQ(j["flows_by_tag"][2]["bytes"], 9000);
  EXPECT_EQ(j["flows_by_tag"][3]["tag"], "proxied");
  EXPECT_EQ(j["flows_by_tag"][3]["flows"], 1);
  // Flagged flows: the 3 unapproved, then the expired one.
  ASSERT_EQ(j["flagged_flows_total"], 4);
  EXPECT_EQ(j["flagged_flows"][0]["tag"], "bypass_unapproved");
  EXPECT_EQ(j["flagged_flows"][2]["end"], "open");
  EXPECT_EQ(j["flagged_flows"][3]["tag"], "bypass_expired");
  EXPECT_EQ(j["flagged_flows"][3]["grant_id"], "g2");
  // Top sources: 10.0.0.66 (3 unapproved) before 10.0.0.9 (3 approved); proxied flows are not bypass.
  ASSERT_EQ(j["top_sources"].size(), 3u);
  EXPECT_EQ(j["top_sources"][0]["src"], "10.0.0.66");
  EXPECT_EQ(j["top_sources"][0]["unapproved"], 3);
  EXPECT_EQ(j["top_sources"][1]["src"], "10.0.0.9");
  EXPECT_EQ(j["top_sources"][1]["flows"], 3);
  EXPECT_EQ(j["top_targets"][0]["flows"], 5);  // 10.0.1.5:22: 2 unapproved + 3 approved
  // Grants with reason, approver, flows and bytes.
  ASSERT_EQ(j["grants"].size(), 2u);
  EXPECT_EQ(j["grants"][0]["grant_id"], "g1");
  EXPECT_EQ(j["grants"][0]["reason"], "INC-42 relay outage");
  EXPECT_EQ(j["grants"][0]["approver"], "bob");
  EXPECT_EQ(j["grants"][0]["flows"], 3);
  EXPECT_EQ(j["grants"][0]["bytes"], 9000);
  EXPECT_EQ(j["grants"][0]["status"], "active");
  EXPECT_EQ(j["grants"][1]["status"], "expired");
  EXPECT_EQ(j["grants"][1]["flows"], 1);

  auto text = build(dir, 0).to_text();
  EXPECT_NE(text.find("INC-42 relay outage"), std::string::npos) << text;
  EXPECT_LT(text.find("bypass_unapproved"), text.find("bypass_approved")) << text;
}

TEST(AuditReportTest, WindowExcludesOlderRecords) {
  TempDir dir;
  craft(dir);
  // Everything was written just now: a window starting in the future sees no flows but still knows
  // nothing about grants outside it.
  auto future = std::chrono::duration_cast<std::chrono::milliseconds>(
                    (std::chrono::system_clock::now() + std::chrono::hours(1)).time_since_epoch())
                    .count();
  auto j = build(dir, future).to_json();
  EXPECT_EQ(j["flows_by_tag"][0]["flows"], 0);
  EXPECT_EQ(j["grants"].size(), 0u);
  EXPECT_EQ(j["records"], 0);
}

}  // namespace
}  // namespace sshring::metrics
