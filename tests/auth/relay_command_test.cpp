// `sshring relay --policy FILE` as a process: real ssh through `sshring connect` (key-file signing,
// fd passing) to a real sshd, a denial with its exit code, policy reload on SIGHUP, and the audit
// records the relay wrote.
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "protocol/preamble.h"
#include "tests/support/process.h"
#include "tests/support/sshd.h"

namespace t = sshring::testing;
namespace protocol = sshring::protocol;

namespace {

std::string policy_yaml(const t::Sshd& sshd, const t::TempDir& dir, const std::string& principal) {
  return "version: 1\ngrant_store: " + dir.file("grants") +
         "\nroles:\n  - name: ops\n    targets:\n      - cidrs: [127.0.0.1/32]\n        ports: [" +
         std::to_string(sshd.port()) + "]\nprincipals:\n  - name: " + principal +
         "\n    roles: [ops]\n    keys: [\"" + sshd.user_pubkey() + "\"]\n";
}

}  // namespace

TEST(RelayCommand, PolicyModeEndToEnd) {
  t::TempDir dir;
  t::Sshd sshd;
  t::write_file(dir.file("policy.yaml"), policy_yaml(sshd, dir, "ops-user"));
  uint16_t port = t::free_port();
  t::Process relay({t::sshring_bin(), "relay", "--listen", "127.0.0.1:" + std::to_string(port), "--policy",
                    dir.file("policy.yaml"), "--relay-id", "cli-relay", "--audit-log",
                    dir.file("audit.jsonl"), "--workers", "1", "--quiet"},
                   t::Process::Options{.stderr_path = dir.file("relay.log")});
  ASSERT_TRUE(t::wait_for_port("127.0.0.1", port)) << t::read_file(dir.file("relay.log"));

  auto ssh = [&](const std::string& principal, std::string* out) {
    std::vector<std::string> argv = sshd.ssh_base_args();
    std::string pc = t::sshring_bin() + " connect --fdpass --relay 127.0.0.1:" + std::to_string(port) +
                     " --relay-id cli-relay --principal " + principal + " --identity " + sshd.user_key() +
                     " %h %p";
    argv.insert(argv.end(), {"-p", std::to_string(sshd.port()), "-o", "ProxyCommand=" + pc, "-o",
                             "ProxyUseFdpass=yes", "127.0.0.1", "echo via-cli-relay"});
    t::Process p(argv, t::Process::Options{.stdout_path = dir.file("out"), .stderr_path = dir.file("err")});
    auto rc = p.wait(std::chrono::seconds(30));
    *out = t::read_file(dir.file("out")) + t::read_file(dir.file("err"));
    return rc.value_or(-1);
  };
  std::string out;
  EXPECT_EQ(ssh("ops-user", &out), 0) << out;
  EXPECT_NE(out.find("via-cli-relay"), std::string::npos) << out;
  EXPECT_NE(ssh("intruder", &out), 0);
  // Before the signature is verified the client learns only "not authenticated" (the relay's audit
  // record says unknown_principal).
  EXPECT_NE(out.find("not_authenticated"), std::string::npos) << out;

  // The relay reloads the policy on SIGHUP: the principal is renamed, the old name is refused.
  t::write_file(dir.file("policy.yaml"), policy_yaml(sshd, dir, "renamed"));
  relay.signal(SIGHUP);
  bool refused = false;
  for (int i = 0; i < 50 && !refused; ++i) {
    std::string o;
    t::Process c({t::sshring_bin(), "connect", "--relay", "127.0.0.1:" + std::to_string(port), "--relay-id",
                  "cli-relay", "--principal", "ops-user", "--identity", sshd.user_key(), "127.0.0.1",
                  std::to_string(sshd.port())},
                 t::Process::Options{.stdout_path = dir.file("c.out"), .stderr_path = dir.file("c.err")});
    refused =
        c.wait(std::chrono::seconds(10)) == protocol::exit_code_for(protocol::Reason::kNotAuthenticated);
    if (!refused) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(refused);
  EXPECT_EQ(ssh("renamed", &out), 0) << out;

  relay.signal(SIGTERM);
  EXPECT_EQ(relay.wait(std::chrono::seconds(40)), 0) << t::read_file(dir.file("relay.log"));
  std::ifstream in(dir.file("audit.jsonl"));
  int starts = 0, ends = 0, denies = 0;
  for (std::string line; std::getline(in, line);) {
    auto r = nlohmann::json::parse(line);
    if (r["type"] == "session_start") {
      ++starts;
      EXPECT_TRUE(r.contains("principal") && r.contains("key_fp") && r.contains("upstream_local")) << line;
    }
    if (r["type"] == "session_end") {
      ++ends;
      EXPECT_TRUE(r.contains("principal") && r.contains("bytes_up") && r.contains("duration_ms")) << line;
    }
    if (r["type"] == "session_deny") ++denies;
  }
  EXPECT_GE(starts, 2);  // the reload probe may get one more session before the reload lands
  EXPECT_EQ(ends, starts);
  EXPECT_GE(denies, 2);
}
