// `sshring audit report --html`: a fleet's relay, agent and grant logs rendered as one page, opened
// in headless Chromium (Debian's chromium): the page's text has every section, every chart has bars,
// and a screenshot is taken (docs/audit-report.png is one such screenshot).
#include <gtest/gtest.h>

#include <filesystem>
#include <regex>
#include <set>

#include "metrics/audit.h"
#include "metrics/audit_types.h"
#include "tests/support/process.h"

namespace sshring::metrics {
namespace {

namespace fs = std::filesystem;
using sshring::testing::TempDir;

// Relay sessions for three principals, grants under two rules, bypass flows over five days.
void fleet(const TempDir& dir) {
  {
    AuditLog relay({.path = dir.file("relay.audit.jsonl"), .component = "relay", .fsync_each = true});
    const char* who[] = {"alice", "bob", "carol"};
    for (int i = 0; i < 12; ++i) {
      SessionEnd e;
      e.session_id = std::to_string(i);
      e.client = "10.0.0.9:4000";
      e.principal = who[i % 3];
      e.bytes_up = 1000;
      e.reason = "closed";
      relay.append(e);
    }
    SessionDeny d;
    d.client = "10.9.9.9:1";
    d.principal = "mallory";
    d.reason = "key_not_listed";
    relay.append(d);
  }
  {
    AuditLog grants({.path = dir.file("grant.audit.jsonl"), .component = "grant", .fsync_each = true});
    grants.append(GrantAdd{{.grant_id = "g1", .who = "alice", .to = "10.0.1.5/32", .ports = {22},
                            .expires = "2099-01-01T00:00:00Z", .rule = "oncall-db"},
                           "INC-42", "bob", "alice"});
    grants.append(GrantAdd{{.grant_id = "g2", .who = "carol", .to = "10.0.1.6/32", .ports = {22},
                            .expires = "2020-01-01T00:00:00Z", .rule = "migration"},
                           "move", "", "carol"});
    grants.append(GrantExpire{{.grant_id = "g2", .who = "carol", .rule = "migration"}});
    grants.append(GrantRevoke{{.grant_id = "g1", .who = "alice", .rule = "oncall-db"}, "done", "bob"});
  }
  AuditLog agent({.path = dir.file("agent.audit.jsonl"), .component = "agent", .fsync_each = true});
  for (int day = 0; day < 5; ++day) {
    for (int i = 0; i <= day; ++i) {
      std::string first = "2026-11-2" + std::to_string(5 + day) + "T10:00:0" + std::to_string(i) + ".000Z";
      const char* tag = i % 3 == 0 ? "bypass_approved" : i % 3 == 1 ? "bypass_unapproved" : "bypass_expired";
      std::string grant = i % 3 == 0 ? "g1" : i % 3 == 2 ? "g2" : "";
      agent.append(FlowOpen{.flow = {.src = "10.0.0." + std::to_string(60 + i), .dst = "10.0.1.5",
                                     .sport = static_cast<uint16_t>(5000 + day * 10 + i), .dport = 22},
                            .tag = tag,
                            .grant_id = grant,
                            .first_seen = first});
    }
  }
}

TEST(AuditReportHtmlTest, RendersInHeadlessChromiumWithDataInEveryChart) {
  TempDir dir;
  fleet(dir);
  std::string html = dir.file("report.html");
  std::string out;
  ASSERT_EQ(sshring::testing::run({sshring::testing::sshring_bin(), "audit", "report", "--since", "3650d", "--html",
                                   html, "--dir", dir.path()},
                                  &out),
            0)
      << out;
  EXPECT_NE(out.find("Per principal"), std::string::npos) << out;  // the text report still prints
  auto page = sshring::testing::read_file(html);
  EXPECT_EQ(page.find("<script"), std::string::npos);
  EXPECT_EQ(page.find("http://"), page.find("http://www.w3.org/2000/svg"));  // no external assets
  // Every chart has bars.
  std::regex chart_re("data-chart=\"([a-z_]+)\" data-bars=\"([0-9]+)\"");
  std::set<std::string> charts;
  for (auto it = std::sregex_iterator(page.begin(), page.end(), chart_re); it != std::sregex_iterator(); ++it) {
    charts.insert((*it)[1]);
    EXPECT_GT(std::stoi((*it)[2]), 0) << (*it)[1] << " has no bars";
  }
  EXPECT_EQ(charts, (std::set<std::string>{"flows_per_day", "flows_per_rule", "flows_per_principal",
                                          "grants_over_time", "top_unapproved_sources"}));

  if (sshring::testing::run({"sh", "-c", "command -v chromium"}) != 0) {
    if (std::getenv("CI")) FAIL() << "chromium is not installed (scripts/install-deps)";
    GTEST_SKIP() << "chromium is not installed";
  }
  std::vector<std::string> base = {"chromium", "--headless", "--no-sandbox", "--disable-gpu",
                                   "--disable-background-networking", "--disable-component-update",
                                   "--disable-sync", "--no-first-run", "--user-data-dir=" + dir.file("profile"),
                                   "--window-size=1280,2000"};
  // The DOM as Chromium parsed it: the text a reviewer reads and the rendered bars.
  auto dump = base;
  dump.insert(dump.end(), {"--dump-dom", "file://" + html});
  std::string dom;
  ASSERT_EQ(sshring::testing::run(dump, &dom), 0);
  for (const char* text : {"sshring audit report", "Bypass flows per day by tag", "Per rule", "oncall-db",
                           "Per principal", "alice", "Per host", "Grants over time", "Top unapproved sources",
                           "10.0.0.61", "INC-42"}) {
    EXPECT_NE(dom.find(text), std::string::npos) << text;
  }
  size_t rects = 0;
  for (size_t p = 0; (p = dom.find("class=\"bar\"", p)) != std::string::npos; ++p) ++rects;
  EXPECT_GE(rects, 5u);
  auto shot = base;
  shot.insert(shot.end(), {"--screenshot=" + dir.file("report.png"), "file://" + html});
  ASSERT_EQ(sshring::testing::run(shot), 0);
  ASSERT_TRUE(fs::exists(dir.file("report.png")));
  EXPECT_GT(fs::file_size(dir.file("report.png")), 20000u);  // a page with charts, not a blank one
  if (const char* keep = std::getenv("SSHRING_KEEP_SCREENSHOT")) fs::copy_file(dir.file("report.png"), keep,
                                                                                 fs::copy_options::overwrite_existing);
}

}  // namespace
}  // namespace sshring::metrics
