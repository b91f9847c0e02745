// The SSH agent client against a real ssh-agent (started by PID, throwaway keys), and key-file
// signing, both checked by verifying the signatures with the public keys ssh-keygen wrote.
#include "client/agent.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <thread>

#include "common/error.h"

#include "client/client.h"
#include "protocol/keys.h"
#include "tests/support/process.h"

namespace protocol = sshring::protocol;
namespace client = sshring::client;
namespace t = sshring::testing;

namespace {

class AuthAgent : public ::testing::Test {
 protected:
  void SetUp() override {
    sock_ = dir_.file("agent.sock");
    agent_ = t::Process({"ssh-agent", "-D", "-a", sock_},
                        t::Process::Options{.stdout_path = dir_.file("agent.out")});
    ASSERT_TRUE(t::wait_for_unix_socket(sock_)) << "ssh-agent did not start";
    ASSERT_EQ(
        t::run({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "agent-key", "-f", dir_.file("k1")}), 0);
    ASSERT_EQ(t::run({"ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", dir_.file("ec")}), 0);
    ASSERT_EQ(t::run({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", dir_.file("k2")}), 0);
  }
  void add(const std::string& key) {
    ASSERT_EQ(t::sh("SSH_AUTH_SOCK=" + sock_ + " ssh-add -q " + key + " 2>&1"), 0);
  }
  protocol::Ed25519PublicKey pub(const std::string& name) {
    auto k = protocol::parse_openssh_public_key(t::read_file(dir_.file(name + ".pub")));
    EXPECT_TRUE(k);
    return k.value_or(protocol::Ed25519PublicKey{});
  }

  t::TempDir dir_;
  std::string sock_;
  t::Process agent_;
};

std::string_view view(const protocol::Ed25519Signature& s) {
  return {reinterpret_cast<const char*>(s.data()), s.size()};
}

}  // namespace

TEST_F(AuthAgent, ListsIdentitiesAndSignsWithEd25519) {
  add(dir_.file("ec"));
  add(dir_.file("k1"));
  client::AgentClient agent(sock_);
  auto ids = agent.identities();
  ASSERT_EQ(ids.size(), 2u);
  auto keys = agent.ed25519_keys();
  ASSERT_EQ(keys.size(), 1u);  // the ECDSA key is listed but skipped
  EXPECT_EQ(keys[0], pub("k1"));
  std::string data = "transcript bytes \x01\x02";
  auto sig = agent.sign(keys[0], data);
  EXPECT_TRUE(protocol::ed25519_verify(keys[0], data, view(sig)));
  EXPECT_FALSE(protocol::ed25519_verify(keys[0], data + "x", view(sig)));
  // Ed25519 is deterministic: the agent and the key file produce the same signature.
  auto file_key = protocol::Ed25519PrivateKey::load_file(dir_.file("k1"));
  EXPECT_EQ(file_key.sign(data), sig);
}

TEST_F(AuthAgent, RefusesKeysItDoesNotHold) {
  add(dir_.file("k1"));
  client::AgentClient agent(sock_);
  EXPECT_THROW(agent.sign(pub("k2"), "data"), std::runtime_error);
  // The connection stays usable after a refusal.
  EXPECT_EQ(agent.ed25519_keys().size(), 1u);
}

TEST_F(AuthAgent, SignerFromEnvironmentPicksTheRequestedKey) {
  add(dir_.file("k1"));
  add(dir_.file("k2"));
  ::setenv("SSH_AUTH_SOCK", sock_.c_str(), 1);
  client::Signer first = client::agent_signer();
  EXPECT_EQ(first.public_key, pub("k1"));
  client::Signer chosen = client::agent_signer(dir_.file("k2.pub"));
  EXPECT_EQ(chosen.public_key, pub("k2"));
  auto h = client::make_hello(chosen, "relay", "alice", "host", 22, client::unix_ms_now());
  EXPECT_TRUE(protocol::ed25519_verify(pub("k2"), protocol::transcript(h), h.signature));
  ::unsetenv("SSH_AUTH_SOCK");
  EXPECT_THROW(client::agent_signer(), sshring::common::UsageError);
}

TEST_F(AuthAgent, EmptyAgentAndMissingSocket) {
  ::setenv("SSH_AUTH_SOCK", sock_.c_str(), 1);
  EXPECT_THROW(client::agent_signer(), sshring::common::UsageError);
  ::unsetenv("SSH_AUTH_SOCK");
  EXPECT_THROW(client::AgentClient(dir_.file("nope.sock")), sshring::common::SystemError);
}

TEST_F(AuthAgent, KeyFileSigner) {
  client::Signer s = client::file_signer(dir_.file("k1"));
  EXPECT_EQ(s.public_key, pub("k1"));
  auto h = client::make_hello(s, "relay", "svc-ci", "10.0.0.5", 2222, client::unix_ms_now());
  EXPECT_TRUE(protocol::ed25519_verify(pub("k1"), protocol::transcript(h), h.signature));
}
