// `sshring connect` as ssh runs it, through a real `sshring relay --policy` process to a real sshd:
// 1 GiB each way in stdio mode (ssh's pipes, spliced) and in fd-passing mode (detected, no --fdpass
// flag), digests equal; half-close through the relay after stdin EOF; and the hint a wrong relay id
// gets.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include <openssl/evp.h>

#include "common/unique_fd.h"
#include "protocol/preamble.h"
#include "tests/support/process.h"
#include "tests/support/sshd.h"

namespace t = sshring::testing;
namespace protocol = sshring::protocol;
using sshring::common::UniqueFd;

namespace {

constexpr long long kGiB = 1LL << 30;
// A deterministic stream both ends can produce: AES-CTR of zeros under a fixed key.
const std::string kGen =
    "openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f -iv 0 -in /dev/zero "
    "2>/dev/null | head -c ";

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string first_word(const std::string& s) {
  return s.substr(0, s.find_first_of(" \n"));
}

// Reads until EOF, answers with "got N bytes" and closes: the answer can only come after the
// client's half-close went through the relay.
class EofEcho {
 public:
  EofEcho() {
    fd_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    if (::bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), len) != 0 || ::listen(fd_.get(), 8) != 0 ||
        ::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0)
      throw std::runtime_error("listen");
    port_ = ntohs(a.sin_port);
    stop_.reset(::eventfd(0, EFD_CLOEXEC));
    if (!stop_) throw std::runtime_error("eventfd");
    thread_ = std::thread([this] {
      // Waits for the one client, or for the destructor (a test that never connects must not hold
      // its process for the whole poll timeout).
      pollfd p[2] = {{fd_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
      if (::poll(p, 2, 60000) <= 0 || (p[0].revents & POLLIN) == 0) return;
      UniqueFd c(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      size_t total = 0;
      char buf[65536];
      for (ssize_t n; (n = ::recv(c.get(), buf, sizeof(buf), 0)) > 0;) total += static_cast<size_t>(n);
      std::string answer = "got " + std::to_string(total) + " bytes\n";
      (void)!::send(c.get(), answer.data(), answer.size(), MSG_NOSIGNAL);
    });
  }
  ~EofEcho() {
    const uint64_t one = 1;
    (void)!::write(stop_.get(), &one, sizeof(one));
    thread_.join();
  }
  uint16_t port() const { return port_; }

 private:
  UniqueFd fd_;
  UniqueFd stop_;
  uint16_t port_ = 0;
  std::thread thread_;
};

class ClientThroughRelay : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { s_ = new Shared(); }
  static void TearDownTestSuite() {
    delete s_;
    s_ = nullptr;
  }
  struct Shared {
    t::TempDir dir;
    t::Sshd sshd;
    EofEcho echo;
    uint16_t port = t::free_port();
    t::Process relay;
    Shared() {
      std::string ports = "[" + std::to_string(sshd.port()) + ", " + std::to_string(echo.port()) + "]";
      t::write_file(dir.file("policy.yaml"),
                    "version: 1\nroles:\n  - name: ops\n    targets:\n      - cidrs: [127.0.0.1/32]\n"
                    "        ports: " +
                        ports +
                        "\nprincipals:\n  - name: tester\n    roles: [ops]\n"
                        "    keys: [\"" +
                        sshd.user_pubkey() + "\"]\n");
      relay =
          t::Process({t::sshring_bin(), "relay", "--listen", "127.0.0.1:" + std::to_string(port), "--policy",
                      dir.file("policy.yaml"), "--relay-id", "client-relay", "--workers", "1", "--quiet"},
                     t::Process::Options{.stderr_path = dir.file("relay.log")});
      if (!t::wait_for_port("127.0.0.1", port))
        throw std::runtime_error("relay did not start: " + t::read_file(dir.file("relay.log")));
    }
  };

  static std::string connect_cmd(const std::string& extra = "") {
    return t::sshring_bin() + " connect --relay 127.0.0.1:" + std::to_string(s_->port) +
           " --relay-id client-relay --principal tester --identity " + s_->sshd.user_key() + extra;
  }

  // The ssh command line (shell words) through the relay; fdpass adds only ProxyUseFdpass.
  static std::string ssh_cmd(bool fdpass, const std::string& remote) {
    std::string cmd;
    for (const auto& a : s_->sshd.ssh_base_args()) cmd += quote(a) + " ";
    cmd +=
        "-p " + std::to_string(s_->sshd.port()) + " -o " + quote("ProxyCommand=" + connect_cmd() + " %h %p");
    if (fdpass) cmd += " -o ProxyUseFdpass=yes";
    return cmd + " 127.0.0.1 " + quote(remote);
  }

  static std::string expected_digest() {
    static std::string d = [] {
      std::string out;
      EXPECT_EQ(t::sh(kGen + std::to_string(kGiB) + " | sha256sum", &out), 0);
      return first_word(out);
    }();
    return d;
  }

  static Shared* s_;
};
ClientThroughRelay::Shared* ClientThroughRelay::s_ = nullptr;

class ClientGiB : public ClientThroughRelay, public ::testing::WithParamInterface<bool> {};

TEST_P(ClientGiB, UpAndDownDigestsEqual) {
  bool fdpass = GetParam();
  std::string want = expected_digest();
  ASSERT_EQ(want.size(), 64u);
  std::string up;
  ASSERT_EQ(t::sh(kGen + std::to_string(kGiB) + " | " + ssh_cmd(fdpass, "sha256sum") + " 2>&1", &up), 0)
      << up;
  EXPECT_EQ(first_word(up), want) << up;
  std::string down;
  ASSERT_EQ(t::sh(ssh_cmd(fdpass, kGen + std::to_string(kGiB)) + " | sha256sum", &down), 0) << down;
  EXPECT_EQ(first_word(down), want) << down;
}

INSTANTIATE_TEST_SUITE_P(Modes, ClientGiB, ::testing::Values(false, true), [](const auto& i) {
  return i.param ? std::string("FdpassDetected") : std::string("StdioSplice");
});

// With fd passing detected, no sshring process stays between ssh and the relay.
TEST_F(ClientThroughRelay, FdpassIsDetectedWithoutTheFlag) {
  std::string out;
  ASSERT_EQ(t::sh(ssh_cmd(true, "echo ok; sleep 2") +
                      " & sleep 1; echo children=$(pgrep -f -P $! 'sshring connect' | wc -l); wait",
                  &out),
            0)
      << out;
  EXPECT_NE(out.find("ok"), std::string::npos) << out;
  EXPECT_NE(out.find("children=0"), std::string::npos) << "a connect process is still running: " << out;
}

// Half-close through the relay: stdin EOF reaches the upstream, whose answer still comes back.
TEST_F(ClientThroughRelay, HalfCloseAfterStdinEof) {
  std::string out;
  ASSERT_EQ(t::sh("head -c 3000000 /dev/zero | " + connect_cmd() + " 127.0.0.1 " +
                      std::to_string(s_->echo.port()) + " | cat",
                  &out),
            0)
      << out;
  EXPECT_EQ(out, "got 3000000 bytes\n");
}

// A preamble signed for another relay id: exit 23 and a line naming the id to pass.
TEST_F(ClientThroughRelay, WrongRelayIdSaysWhichIdToPass) {
  std::string out;
  int rc = t::sh(t::sshring_bin() + " connect --relay 127.0.0.1:" + std::to_string(s_->port) +
                     " --principal tester --identity " + s_->sshd.user_key() + " 127.0.0.1 " +
                     std::to_string(s_->sshd.port()) + " </dev/null 2>&1",
                 &out);
  EXPECT_EQ(rc, protocol::exit_code_for(protocol::Reason::kWrongRelay)) << out;
  EXPECT_NE(out.find("wrong_relay"), std::string::npos) << out;
  EXPECT_NE(out.find("add --relay-id client-relay"), std::string::npos) << out;
  EXPECT_NE(out.find("signed for '127.0.0.1'"), std::string::npos) << out;
}

TEST_F(ClientThroughRelay, SshConfigStanzaWorksWithSsh) {
  std::string stanza;
  ASSERT_EQ(t::run({t::sshring_bin(), "ssh-config", "--relay", "127.0.0.1:" + std::to_string(s_->port),
                    "--principal", "tester", "--relay-id", "client-relay", "--identity", s_->sshd.user_key(),
                    "--sshring", t::sshring_bin(), "relayed-*"},
                   &stanza),
            0);
  EXPECT_NE(stanza.find("ProxyUseFdpass yes"), std::string::npos) << stanza;
  std::string cfg =
      stanza + "Host relayed-*\n    HostName 127.0.0.1\n    Port " + std::to_string(s_->sshd.port()) + "\n";
  t::write_file(s_->dir.file("ssh_config"), cfg);
  std::string cmd;
  auto base = s_->sshd.ssh_base_args();
  base[2] = s_->dir.file("ssh_config");  // -F FILE instead of /dev/null
  for (const auto& a : base) cmd += quote(a) + " ";
  std::string out;
  ASSERT_EQ(t::sh(cmd + "relayed-db1 echo via-stanza 2>&1", &out), 0) << cfg << out;
  EXPECT_NE(out.find("via-stanza"), std::string::npos) << out;
}

}  // namespace
