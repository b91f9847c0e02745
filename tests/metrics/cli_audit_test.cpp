// `sshring audit verify|report` end to end on a crafted log.
#include <gtest/gtest.h>

#include "tests/metrics/crafted_log.h"

namespace sshring::metrics {
namespace {

using sshring::testing::TempDir;

TEST(AuditCliTest, VerifyAndReport) {
  TempDir dir;
  craft(dir);
  std::string out;
  ASSERT_EQ(sshring::testing::run(
                {sshring::testing::sshring_bin(), "audit", "verify", dir.file("agent.audit.jsonl")}, &out),
            0)
      << out;
  EXPECT_NE(out.find("OK"), std::string::npos) << out;
  ASSERT_EQ(sshring::testing::run({sshring::testing::sshring_bin(), "audit", "report", "--json", "--since",
                                   "1h", "--dir", dir.path()},
                                  &out),
            0)
      << out;
  auto pos = out.find('{');
  ASSERT_NE(pos, std::string::npos) << out;
  auto j = nlohmann::json::parse(out.substr(pos));
  EXPECT_EQ(j["flows_by_tag"][0]["flows"], 3);
  EXPECT_EQ(j["grants"][0]["approver"], "bob");

  // Break the chain: verify exits 1 and names file:line.
  auto content = sshring::testing::read_file(dir.file("agent.audit.jsonl"));
  auto p = content.find("10.0.0.66");
  content[p + 8] = '7';
  sshring::testing::write_file(dir.file("agent.audit.jsonl"), content);
  EXPECT_EQ(
      sshring::testing::run({sshring::testing::sshring_bin(), "audit", "verify", "--dir", dir.path()}, &out),
      1)
      << out;
  EXPECT_NE(out.find("agent.audit.jsonl:1:"), std::string::npos) << out;
}

}  // namespace
}  // namespace sshring::metrics
