// `audit report` numbers on a crafted log, and the CLI end to end.
#include <gtest/gtest.h>

#include <map>

#include "metrics/audit.h"
#include "metrics/audit_report.h"
#include "metrics/audit_verify.h"
#include "tests/metrics/crafted_log.h"
#include "tests/support/process.h"

namespace sshring::metrics {
namespace {

using sshring::testing::TempDir;

AuditReport build(const TempDir& dir, ReportOptions opts) {
  AuditReport rep(opts);
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
  auto j = build(dir, {}).to_json();
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

  auto text = build(dir, {}).to_text();
  EXPECT_NE(text.find("INC-42 relay outage"), std::string::npos) << text;
  EXPECT_LT(text.find("bypass_unapproved"), text.find("bypass_approved")) << text;
}

// Break-glass grants stay in the report until reviewed, whatever the window; overdue once past
// review_due (or when no due time was recorded); a reviewed one names its reviewer.
TEST(AuditReportTest, BreakGlassReviewsAwaitingOverdueAndDone) {
  TempDir dir;
  {
    AuditLog log({.path = dir.file("grant.audit.jsonl"), .component = "grant", .fsync_each = true});
    auto request = [&](const char* id, const char* due, bool glass = true) {
      nlohmann::json r{{"type", "grant_request"}, {"grant_id", id},      {"who", "alice"},
                       {"from", "10.8.0.0/24"},   {"to", "10.1.2.3/32"}, {"ports", {22}},
                       {"requester", "alice"},    {"rule", "glass"},     {"reason", "relay down"},
                       {"status", "active"},      {"signer", "alice"},   {"key_fingerprint", "SHA256:alice"}};
      if (glass) r["break_glass"] = true;
      if (due) r["review_due"] = due;
      log.append(r);
    };
    request("g-late", "2026-01-02T00:00:00Z");
    request("g-due", "2026-01-09T00:00:00Z");
    request("g-done", "2026-01-02T00:00:00Z");
    request("g-nodue", nullptr);
    request("g-plain", nullptr, false);
    log.append({{"type", "grant_review"},
                {"grant_id", "g-done"},
                {"signer", "carol"},
                {"key_fingerprint", "SHA256:carol"},
                {"note", "ok"}});
  }
  const int64_t now = 1767571200000;  // 2026-01-05T00:00:00Z
  // The window starts after every record was written: unreviewed ones are listed all the same.
  AuditReport rep = build(dir, {.since_ms = INT64_MAX - 1, .now_ms = now});
  auto j = rep.to_json();
  std::map<std::string, std::string> review;
  for (const auto& g : j["break_glass"])
    review[g["grant_id"].get<std::string>()] = g["review"].get<std::string>();
  EXPECT_EQ(review, (std::map<std::string, std::string>{
                        {"g-due", "awaiting"}, {"g-late", "overdue"}, {"g-nodue", "overdue"}}))
      << j["break_glass"];
  EXPECT_EQ(j["break_glass_reviews_overdue"], 2);
  const std::string text = rep.to_text();
  EXPECT_NE(text.find("Break-glass grants (3, 2 overdue for review)"), std::string::npos) << text;

  // In a window holding the review, the reviewed grant is listed with its reviewer.
  j = build(dir, {.now_ms = now}).to_json();
  ASSERT_EQ(j["break_glass"].size(), 4u) << j["break_glass"];
  EXPECT_EQ(j["break_glass"][0]["grant_id"], "g-done");
  EXPECT_EQ(j["break_glass"][0]["review"], "reviewed");
  EXPECT_EQ(j["break_glass"][0]["reviewed_by"], "carol");
}

// Signed grants per rule and per principal: requested, live (at once or by its approval), approved,
// denied. A request left pending counts only as requested.
TEST(AuditReportTest, SignedGrantRequestsApprovalsAndDenialsPerRuleAndPrincipal) {
  TempDir dir;
  {
    AuditLog log({.path = dir.file("grant.audit.jsonl"), .component = "grant", .fsync_each = true});
    auto request = [&](const char* id, const char* who, const char* rule, const char* status) {
      log.append({{"type", "grant_request"},
                  {"grant_id", id},
                  {"who", who},
                  {"from", "10.8.0.0/24"},
                  {"to", "10.1.2.3/32"},
                  {"ports", {22}},
                  {"rule", rule},
                  {"status", status},
                  {"signer", who},
                  {"key_fingerprint", std::string("SHA256:") + who}});
    };
    auto decide = [&](const char* type, const char* id, const char* status) {
      nlohmann::json r{
          {"type", type}, {"grant_id", id}, {"signer", "sec1"}, {"key_fingerprint", "SHA256:sec1"}};
      if (status) r["status"] = status;
      log.append(r);
    };
    request("g-ci", "ci-bot", "ci", "active");    // rule needs no approval: live at once
    request("g-ok", "alice", "prod", "pending");  // approved below
    request("g-no", "alice", "prod", "pending");  // denied below
    request("g-wait", "bob", "prod", "pending");  // never decided
    decide("grant_approve", "g-ok", "active");
    decide("grant_deny", "g-no", nullptr);
  }
  auto j = build(dir, {}).to_json();
  std::map<std::string, nlohmann::ordered_json> rule, who;
  for (const auto& r : j["by_rule"]) rule[r["rule"].get<std::string>()] = r["grants"];
  for (const auto& p : j["by_principal"]) who[p["principal"].get<std::string>()] = p["grants"];
  EXPECT_EQ(rule["prod"]["requested"], 3) << j["by_rule"];
  EXPECT_EQ(rule["prod"]["added"], 1);
  EXPECT_EQ(rule["prod"]["approved"], 1);
  EXPECT_EQ(rule["prod"]["denied"], 1);
  EXPECT_EQ(rule["ci"]["requested"], 1);
  EXPECT_EQ(rule["ci"]["added"], 1);
  EXPECT_EQ(rule["ci"]["approved"], 0);
  EXPECT_EQ(who["alice"]["requested"], 2) << j["by_principal"];
  EXPECT_EQ(who["alice"]["denied"], 1);
  EXPECT_EQ(who["bob"]["requested"], 1);
  EXPECT_EQ(who["bob"]["added"], 0);
  ASSERT_EQ(j["grants_per_day"].size(), 1u);
  EXPECT_EQ(j["grants_per_day"][0]["added"], 2);
  const std::string text = build(dir, {}).to_text();
  EXPECT_NE(text.find("DENIED_GRANTS"), std::string::npos) << text;
}

TEST(AuditReportTest, WindowExcludesOlderRecords) {
  TempDir dir;
  craft(dir);
  // Everything was written just now: a window starting in the future sees no flows but still knows
  // nothing about grants outside it.
  auto future = std::chrono::duration_cast<std::chrono::milliseconds>(
                    (std::chrono::system_clock::now() + std::chrono::hours(1)).time_since_epoch())
                    .count();
  auto j = build(dir, {.since_ms = future}).to_json();
  EXPECT_EQ(j["flows_by_tag"][0]["flows"], 0);
  EXPECT_EQ(j["grants"].size(), 0u);
  EXPECT_EQ(j["records"], 0);
}

}  // namespace
}  // namespace sshring::metrics
