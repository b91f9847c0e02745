// Relay config file parsing and its errors (file, line, key, fix).
#include "relay/config.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace sshring::relay {
namespace {

TEST(RelayConfigTest, ParsesRoutesAndLimits) {
  auto f = parse_config(
      "workers: 3\nmax_sessions: 500\nconnect_timeout: 250ms\nidle_timeout: 2m\ndrain_timeout: 5s\n"
      "splice_mode: ring\npipe_size: 262144\nroutes:\n"
      "  - listen: 127.0.0.1:2222\n    upstream: 10.0.0.5:22\n"
      "  - listen: \"[::1]:2223\"\n    upstream: \"[fd00::5]:22\"\n",
      "relay.yaml");
  EXPECT_EQ(f.cfg.workers, 3u);
  EXPECT_EQ(f.cfg.max_sessions, 500u);
  EXPECT_EQ(f.cfg.connect_timeout, std::chrono::milliseconds(250));
  EXPECT_EQ(f.cfg.idle_timeout, std::chrono::minutes(2));
  EXPECT_EQ(f.cfg.drain_timeout, std::chrono::seconds(5));
  EXPECT_EQ(f.cfg.splice_mode, SpliceMode::kRing);
  EXPECT_EQ(f.cfg.pipe_size, 262144u);
  ASSERT_EQ(f.cfg.routes.size(), 2u);
  EXPECT_EQ(f.cfg.routes[1].listen.to_string(), "[::1]:2223");
  EXPECT_EQ(f.cfg.routes[1].upstream->to_string(), "[fd00::5]:22");
  EXPECT_TRUE(f.has_workers);
  EXPECT_FALSE(f.has_handshake_timeout);
}

TEST(RelayConfigTest, ParsesThePreAuthenticationBudget) {
  auto f = parse_config(
      "max_startups: 10:50:40\nmax_startups_per_source: 4\nper_source_netblock: 24:48\n"
      "first_byte_timeout: 750ms\nroutes:\n  - listen: 127.0.0.1:2222\n    upstream: 10.0.0.5:22\n",
      "relay.yaml");
  EXPECT_EQ(f.cfg.startups.start, 10u);
  EXPECT_EQ(f.cfg.startups.rate, 50u);
  EXPECT_EQ(f.cfg.startups.full, 40u);
  EXPECT_EQ(f.cfg.startups.per_source, 4u);
  EXPECT_EQ(f.cfg.startups.v4_prefix, 24u);
  EXPECT_EQ(f.cfg.startups.v6_prefix, 48u);
  EXPECT_EQ(f.cfg.startups.first_byte_timeout, std::chrono::milliseconds(750));
  // Absent: the defaults of relay/admission.h.
  auto d = parse_config("routes:\n  - listen: 127.0.0.1:2222\n    upstream: 10.0.0.5:22\n", "relay.yaml");
  EXPECT_EQ(d.cfg.startups.per_source, AdmissionConfig{}.per_source);
  EXPECT_EQ(d.cfg.startups.v6_prefix, 64u);
}

struct BadCase {
  const char* yaml;
  std::vector<const char*> must_contain;
};

// The relay config and the policy report bad input the same way: FILE:LINE:COLUMN: KEY: MESSAGE.
TEST(RelayConfigTest, ErrorsHaveThePolicyFileStyle) {
  try {
    parse_config("workers: many\nroutes: []\n", "relay.yaml");
    FAIL() << "no error";
  } catch (const common::SourceError& e) {
    EXPECT_EQ(e.file(), "relay.yaml");
    EXPECT_EQ(e.line(), 1);
    EXPECT_EQ(e.column(), 10);
    EXPECT_EQ(e.key(), "workers");
    EXPECT_EQ(std::string(e.what()), "relay.yaml:1:10: workers: " + e.message());
  }
}

TEST(RelayConfigTest, ErrorsNameFileLineKeyAndFix) {
  const std::vector<BadCase> cases = {
      {"routes:\n  - listen: 127.0.0.1:2222\n    upstream: nowhere\n",
       {"relay.yaml:3:15: upstream: ", "ADDR:PORT", "nowhere"}},
      {"connect_timeout: soon\nroutes:\n  - listen: 127.0.0.1:1\n    upstream: 127.0.0.1:2\n",
       {"relay.yaml:1", "connect_timeout", "500ms", "soon"}},
      {"wokers: 2\nroutes: []\n", {"relay.yaml:1", "wokers", "unknown setting", "workers"}},
      {"workers: -1\nroutes: []\n", {"workers", "whole number"}},
      {"routes:\n  - listen: 127.0.0.1:2222\n", {"relay.yaml:2", "upstream", "missing"}},
      {"routes:\n  - upstream: 127.0.0.1:22\n", {"listen", "missing"}},
      {"routes:\n  - listen: 127.0.0.1:1\n    upstream: 127.0.0.1:2\n    via: x\n", {"relay.yaml:4", "via"}},
      {"routes:\n  - listen: 127.0.0.1:1\n    upstream: 127.0.0.1:2\n  - listen: 127.0.0.1:1\n    upstream: "
       "127.0.0.1:3\n",
       {"earlier route"}},
      {"routes: 5\n", {"list"}},
      {"max_sessions: 0\nroutes: []\n", {"max_sessions"}},
      {"splice_mode: fast\nroutes: []\n", {"inline", "ring", "fast"}},
      {"routes: [\n", {"not valid YAML"}},
      {"workers: 1\n", {"routes", "required"}},
      {"- a\n- b\n", {"mapping"}},
      {"routes:\n  - listen: 127.0.0.1:1\n    upstream: 127.0.0.1:0\n", {"port must not be 0"}},
      // Found by the fuzzer: a key that is itself a list threw YAML::BadConversion, not UsageError.
      {"!:@ []:\n ", {"relay.yaml:1", "plain word"}},
      {"routes: []\nmax_startups: 100:30:10\n", {"relay.yaml:2", "max_startups"}},
      {"max_startups: lots\nroutes: []\n", {"relay.yaml:1", "START:RATE:FULL"}},
      {"per_source_netblock: 33:64\nroutes: []\n", {"relay.yaml:1", "per_source_netblock", "0..32"}},
      {"max_startups_per_source: 0\nroutes: []\n", {"relay.yaml:1", "max_startups_per_source"}},
      {"first_byte_timeout: 0\nroutes: []\n", {"relay.yaml:1", "first_byte_timeout"}},
      {"routes:\n  - {listen: 127.0.0.1:1, [a]: b}\n", {"relay.yaml:2", "plain word"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.yaml);
    try {
      parse_config(c.yaml, "relay.yaml");
      ADD_FAILURE() << "no error";
    } catch (const common::UsageError& e) {
      std::string msg = e.what();
      for (const char* want : c.must_contain) EXPECT_NE(msg.find(want), std::string::npos) << msg;
    }
  }
}

TEST(RelayConfigTest, UpstreamOptionalForAuthenticatedRoutes) {
  auto f = parse_config("routes:\n  - listen: 127.0.0.1:2222\n", "relay.yaml", true);
  ASSERT_EQ(f.cfg.routes.size(), 1u);
  EXPECT_FALSE(f.cfg.routes[0].upstream.has_value());
}

TEST(RelayConfigTest, MissingFileNamesPath) {
  try {
    load_config_file("/nonexistent/relay.yaml");
    FAIL();
  } catch (const common::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/relay.yaml"), std::string::npos);
  }
}

TEST(RelayConfigTest, Millis) {
  EXPECT_EQ(parse_millis("500ms"), std::chrono::milliseconds(500));
  EXPECT_EQ(parse_millis("2s"), std::chrono::milliseconds(2000));
  EXPECT_EQ(parse_millis("1h30m"), std::chrono::milliseconds(5400000));
  EXPECT_EQ(parse_millis("0"), std::chrono::milliseconds(0));
  EXPECT_FALSE(parse_millis("ms"));
  EXPECT_FALSE(parse_millis("5x"));
  EXPECT_FALSE(parse_millis("-5ms"));
}

TEST(RelayConfigTest, ValidateRejectsRouteWithoutTarget) {
  RelayConfig cfg;
  Route r;
  r.listen = *common::SockAddr::parse("127.0.0.1:0");
  cfg.routes.push_back(r);
  EXPECT_THROW(validate(cfg), common::UsageError);
  cfg.routes[0].upstream = *common::SockAddr::parse("127.0.0.1:22");
  EXPECT_NO_THROW(validate(cfg));
  RelayConfig empty;
  EXPECT_THROW(validate(empty), common::UsageError);
}

}  // namespace
}  // namespace sshring::relay
