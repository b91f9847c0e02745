// Authenticated sessions end to end: the real relay (relay::Relay) with the AuthHandshakeFactory,
// a real sshd, a real ssh-agent, real `ssh` with `sshring connect` as ProxyCommand (with and without
// ProxyUseFdpass), an in-process libssh2 client for 200 concurrent sessions, and every denial
// checked against a counting upstream listener (a denied session must not reach the upstream).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <libssh2.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "client/client.h"
#include "common/unique_fd.h"
#include "metrics/audit.h"
#include "policy/parser.h"
#include "relay/auth/auth_handshake.h"
#include "relay/relay.h"
#include "tests/support/process.h"
#include "tests/support/sshd.h"

namespace auth = sshring::relay::auth;
namespace protocol = sshring::protocol;
namespace client = sshring::client;
namespace relay = sshring::relay;
namespace policy = sshring::policy;
namespace t = sshring::testing;
using sshring::common::SockAddr;
using sshring::common::UniqueFd;

namespace {

// Accepts on 127.0.0.1, counts connections, greets with a banner (like sshd, it speaks first) and
// records what each connection sent until EOF.
class Upstream {
 public:
  Upstream() {
    fd_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    ::setsockopt(fd_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(fd_.get(), 128) != 0)
      throw std::runtime_error("upstream listen");
    socklen_t len = sizeof(a);
    ::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { loop(); });
  }
  ~Upstream() {
    stop_ = true;
    thread_.join();
    for (auto& c : conns_) c.join();
  }
  uint16_t port() const { return port_; }
  int accepts() const { return accepts_.load(); }
  std::vector<std::string> received() {
    std::lock_guard lock(mu_);
    return received_;
  }

  static constexpr std::string_view kBanner = "UPSTREAM-BANNER\r\n";

 private:
  void loop() {
    while (!stop_) {
      pollfd p{fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      int c = ::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      ++accepts_;
      conns_.emplace_back([this, c] {
        UniqueFd fd(c);
        (void)!::send(c, kBanner.data(), kBanner.size(), MSG_NOSIGNAL);
        std::string got;
        char buf[4096];
        for (;;) {
          pollfd p{c, POLLIN, 0};
          if (::poll(&p, 1, 100) == 0) {
            if (stop_) break;
            continue;
          }
          ssize_t n = ::recv(c, buf, sizeof(buf), 0);
          if (n <= 0) break;
          got.append(buf, static_cast<size_t>(n));
        }
        std::lock_guard lock(mu_);
        received_.push_back(got);
      });
    }
  }

  UniqueFd fd_;
  uint16_t port_ = 0;
  std::atomic<int> accepts_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::vector<std::thread> conns_;
  std::mutex mu_;
  std::vector<std::string> received_;
};

UniqueFd tcp_connect(uint16_t port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return UniqueFd();
  return fd;
}

// Reads until EOF or the timeout; `closed` tells which.
std::string read_all(int fd, std::chrono::milliseconds timeout, bool* closed) {
  std::string out;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  *closed = false;
  char buf[4096];
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 20) <= 0) continue;
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) {
      *closed = true;
      break;
    }
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

struct Exchange {
  bool closed = false;
  protocol::ReplyDecode reply;
  std::string raw;
  std::string after;  // bytes after the reply frame
};

// Sends `bytes` in one write, optionally half-closes, and reads until the relay closes.
Exchange send_preamble(uint16_t port, const std::string& bytes, bool half_close = true,
                       std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  Exchange e;
  UniqueFd fd = tcp_connect(port);
  EXPECT_TRUE(fd.valid());
  (void)!::send(fd.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
  if (half_close) ::shutdown(fd.get(), SHUT_WR);
  e.raw = read_all(fd.get(), timeout, &e.closed);
  e.reply = protocol::decode_reply({reinterpret_cast<const uint8_t*>(e.raw.data()), e.raw.size()});
  if (e.reply.status == protocol::DecodeStatus::kOk) e.after = e.raw.substr(e.reply.consumed);
  return e;
}

uint16_t deny_code(const Exchange& e) {
  if (e.reply.status != protocol::DecodeStatus::kOk || e.reply.reply.type != protocol::FrameType::kDeny)
    return 0;
  return e.reply.reply.reason;
}
uint16_t code(protocol::Reason r) {
  return static_cast<uint16_t>(r);
}

const char* kDayNames[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};

client::Signer signer_of(std::shared_ptr<protocol::Ed25519PrivateKey> k) {
  return {k->public_key(), [k](std::string_view d) { return k->sign(d); }};
}

class AuthRelay : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { s_ = new Shared(); }
  static void TearDownTestSuite() {
    delete s_;
    s_ = nullptr;
  }

  struct Shared {
    t::TempDir dir;
    t::Sshd sshd;
    Upstream upstream;
    t::Process agent;
    std::string agent_sock;
    std::shared_ptr<protocol::Ed25519PrivateKey> user_key;  // the sshd user key, also listed in the policy
    std::shared_ptr<protocol::Ed25519PrivateKey> limited_key =
        std::make_shared<protocol::Ed25519PrivateKey>(protocol::Ed25519PrivateKey::generate());
    std::shared_ptr<protocol::Ed25519PrivateKey> night_key =
        std::make_shared<protocol::Ed25519PrivateKey>(protocol::Ed25519PrivateKey::generate());
    std::shared_ptr<protocol::Ed25519PrivateKey> stranger_key =
        std::make_shared<protocol::Ed25519PrivateKey>(protocol::Ed25519PrivateKey::generate());
    policy::PolicyCache cache;
    std::unique_ptr<sshring::metrics::AuditLog> audit;
    std::shared_ptr<auth::AuthHandshakeFactory> factory;
    std::unique_ptr<relay::Relay> relay;
    uint16_t relay_port = 0;
    // A second sshd (same keys) whose sessions get an empty HOME: 200 concurrent shells must not
    // depend on the machine's dotfiles (a login-shell hook that takes a global lock serialises them).
    uint16_t bulk_port = t::free_port();
    t::Process bulk_sshd;

    void start_bulk_sshd() {
      std::string cfg = t::read_file(sshd.dir() + "/sshd_config");
      auto replace = [&](const std::string& from, const std::string& to) {
        auto pos = cfg.find(from);
        if (pos == std::string::npos) throw std::runtime_error("sshd_config lacks " + from);
        cfg.replace(pos, from.size(), to);
      };
      replace("Port " + std::to_string(sshd.port()) + "\n", "Port " + std::to_string(bulk_port) + "\n");
      replace(sshd.dir() + "/sshd.pid", dir.file("bulk_sshd.pid"));
      ::mkdir(dir.file("home").c_str(), 0755);
      cfg += "SetEnv HOME=" + dir.file("home") + "\n";
      t::write_file(dir.file("bulk_sshd_config"), cfg);
      bulk_sshd = t::Process({"/usr/sbin/sshd", "-D", "-e", "-f", dir.file("bulk_sshd_config")},
                             t::Process::Options{.stderr_path = dir.file("bulk_sshd.log")});
      if (!t::wait_for_port("127.0.0.1", bulk_port))
        throw std::runtime_error("bulk sshd did not start: " + t::read_file(dir.file("bulk_sshd.log")));
    }

    Shared() {
      start_bulk_sshd();
      agent_sock = dir.file("agent.sock");
      agent = t::Process({"ssh-agent", "-D", "-a", agent_sock},
                         t::Process::Options{.stdout_path = dir.file("a.out")});
      if (!t::wait_for_unix_socket(agent_sock)) throw std::runtime_error("ssh-agent did not start");
      if (t::sh("SSH_AUTH_SOCK=" + agent_sock + " ssh-add -q " + sshd.user_key() + " 2>&1") != 0)
        throw std::runtime_error("ssh-add failed");
      user_key = std::make_shared<protocol::Ed25519PrivateKey>(
          protocol::Ed25519PrivateKey::load_file(sshd.user_key()));
      std::time_t now = std::time(nullptr);
      std::tm tm{};
      gmtime_r(&now, &tm);
      std::string other_day = kDayNames[(tm.tm_wday + 3) % 7];
      std::string ports = "[" + std::to_string(sshd.port()) + ", " + std::to_string(upstream.port()) + ", " +
                          std::to_string(bulk_port) + "]";
      std::string yaml =
          "version: 1\nroles:\n"
          "  - name: ssh\n    max_sessions: 500\n    targets:\n"
          "      - cidrs: [127.0.0.1/32]\n        ports: " +
          ports +
          "\n"
          "  - name: single\n    max_sessions: 1\n    targets:\n"
          "      - cidrs: [127.0.0.1/32]\n        ports: " +
          ports +
          "\n"
          "  - name: night\n    windows: [{days: " +
          other_day +
          ", hours: \"00:00-23:59\", tz: UTC}]\n"
          "    targets:\n      - cidrs: [127.0.0.1/32]\n        ports: " +
          ports +
          "\n"
          "principals:\n"
          "  - name: tester\n    roles: [ssh]\n    keys: [\"" +
          sshd.user_pubkey() +
          "\"]\n"
          "  - name: limited\n    roles: [single]\n    keys: [\"" +
          protocol::format_openssh_public_key(limited_key->public_key()) +
          "\"]\n"
          "  - name: nightowl\n    roles: [night]\n    keys: [\"" +
          protocol::format_openssh_public_key(night_key->public_key()) + "\"]\n";
      cache.publish(
          policy::Snapshot::build(std::make_shared<policy::Policy>(policy::parse_policy(yaml)), {}));
      audit = std::make_unique<sshring::metrics::AuditLog>(
          sshring::metrics::AuditOptions{.path = dir.file("audit.jsonl"), .component = "relay"});
      auth::ResolverOptions ro;
      ro.static_hosts["sshd.allowed.test"] = {"127.0.0.1"};
      ro.static_hosts["evil.allowed.test"] = {"127.0.0.2"};
      auth::AuthOptions o;
      o.relay_ids = {"test-relay"};
      o.max_handshakes_per_source = 512;  // the 200-session test connects from one address
      o.resolver = std::make_shared<auth::AresResolver>(ro);
      o.audit = audit.get();
      o.log_denials = false;
      factory = std::make_shared<auth::AuthHandshakeFactory>(cache, o);
      relay::RelayConfig cfg;
      cfg.routes.push_back({.listen = *SockAddr::parse("127.0.0.1:0"), .handshake = factory});
      cfg.workers = 2;
      cfg.startups.per_source = 512;  // likewise for the pre-authentication budget
      cfg.log_sessions = false;
      relay = std::make_unique<relay::Relay>(std::move(cfg));
      relay->start();
      relay_port = relay->listen_addresses()[0].port();
    }
    ~Shared() {
      relay->stop();
      relay->wait();
    }
  };

  std::string hello(const std::shared_ptr<protocol::Ed25519PrivateKey>& k, const std::string& principal,
                    const std::string& target, uint16_t port, const std::string& relay_id = "test-relay") {
    return protocol::encode_hello(
        client::make_hello(signer_of(k), relay_id, principal, target, port, client::unix_ms_now()));
  }

  // `relay`: ADDR:PORT of another relay than the shared one.
  std::string proxy_command(bool fdpass, const std::string& extra = "", const std::string& relay = "") const {
    return t::sshring_bin() + " connect" + (fdpass ? " --fdpass" : "") + " --relay " +
           (relay.empty() ? "127.0.0.1:" + std::to_string(s_->relay_port) : relay) +
           " --relay-id test-relay --principal tester" + extra + " %h %p";
  }

  // Runs ssh through the relay (or `relay`); returns the exit status and stdout.
  int ssh(bool fdpass, const std::string& command, std::string* out, const std::string& stdin_path = "",
          std::chrono::seconds timeout = std::chrono::seconds(60), const std::string& relay = "") {
    std::vector<std::string> argv = s_->sshd.ssh_base_args();
    argv.insert(argv.end(), {"-p", std::to_string(s_->sshd.port()), "-o",
                             "ProxyCommand=" + proxy_command(fdpass, "", relay)});
    if (fdpass) argv.insert(argv.end(), {"-o", "ProxyUseFdpass=yes"});
    argv.insert(argv.end(), {"127.0.0.1", command});
    t::Process::Options po;
    po.stdout_path = s_->dir.file("ssh.out");
    po.stderr_path = s_->dir.file("ssh.err");
    po.stdin_path = stdin_path;
    po.env = {"SSH_AUTH_SOCK=" + s_->agent_sock};
    t::Process p(argv, po);
    auto rc = p.wait(timeout);
    if (out) *out = t::read_file(po.stdout_path);
    if (!rc) ADD_FAILURE() << "ssh timed out";
    std::string err = t::read_file(po.stderr_path);
    if (!err.empty()) std::cerr << "ssh stderr: " << err;
    return rc.value_or(-1);
  }

  std::vector<nlohmann::json> audit_records() {
    s_->audit->flush();
    std::vector<nlohmann::json> out;
    std::ifstream in(s_->dir.file("audit.jsonl"));
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) out.push_back(nlohmann::json::parse(line));
    return out;
  }

  static Shared* s_;
};

AuthRelay::Shared* AuthRelay::s_ = nullptr;

}  // namespace

TEST_F(AuthRelay, SshThroughProxyCommandRunsACommand) {
  std::string out;
  EXPECT_EQ(ssh(false, "echo hello-from-$((40+2)); exit 7", &out), 7);
  EXPECT_EQ(out, "hello-from-42\n");
}

TEST_F(AuthRelay, SshWithProxyUseFdpassRunsACommand) {
  std::string out;
  EXPECT_EQ(ssh(true, "echo fdpass-ok; exit 3", &out), 3);
  EXPECT_EQ(out, "fdpass-ok\n");
}

TEST_F(AuthRelay, HundredMebibyteRoundTripBothModes) {
  std::string in = s_->dir.file("big.in");
  ASSERT_EQ(t::sh("head -c 104857600 /dev/urandom > " + in), 0);
  for (bool fdpass : {false, true}) {
    auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(ssh(fdpass, "cat", nullptr, in, std::chrono::seconds(110)), 0) << "fdpass=" << fdpass;
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cerr << "100 MiB round trip (fdpass=" << fdpass << "): " << secs << " s\n";
    EXPECT_EQ(t::run({"cmp", in, s_->dir.file("ssh.out")}), 0) << "fdpass=" << fdpass;
  }
}

TEST_F(AuthRelay, GluedBytesAreForwardedInOrderAndTheBannerIsNotLost) {
  int before = s_->upstream.accepts();
  std::string glued = hello(s_->user_key, "tester", "127.0.0.1", s_->upstream.port()) + "SSH-2.0-glued\r\n";
  Exchange e = send_preamble(s_->relay_port, glued + "more-bytes");
  ASSERT_EQ(e.reply.status, protocol::DecodeStatus::kOk);
  ASSERT_EQ(e.reply.reply.type, protocol::FrameType::kOk) << deny_code(e);
  EXPECT_NE(e.reply.reply.session_id, 0u);
  EXPECT_EQ(e.after, Upstream::kBanner);  // the upstream's first bytes, right after the OK
  EXPECT_EQ(s_->upstream.accepts(), before + 1);
  for (int i = 0; i < 100 && s_->upstream.received().size() < static_cast<size_t>(before + 1); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  auto got = s_->upstream.received();
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(got.back(), "SSH-2.0-glued\r\nmore-bytes");

  // The client library reads exactly the OK frame, leaving the banner in the socket.
  auto c = client::connect_via_relay({.relay = "127.0.0.1:" + std::to_string(s_->relay_port),
                                      .relay_id = "test-relay",
                                      .principal = "tester",
                                      .target = "sshd.allowed.test",
                                      .port = s_->sshd.port()},
                                     signer_of(s_->user_key));
  bool closed = false;
  ::shutdown(c.fd.get(), SHUT_WR);
  std::string banner = read_all(c.fd.get(), std::chrono::seconds(5), &closed);
  EXPECT_EQ(banner.rfind("SSH-2.0-OpenSSH", 0), 0u) << banner;
}

TEST_F(AuthRelay, DenialsNeverReachTheUpstream) {
  uint16_t up = s_->upstream.port();
  auto replayed = hello(s_->user_key, "tester", "127.0.0.1", up);
  Exchange first = send_preamble(s_->relay_port, replayed);
  ASSERT_EQ(first.reply.reply.type, protocol::FrameType::kOk);
  int before = s_->upstream.accepts();

  auto tampered_target = [&] {
    auto h = client::make_hello(signer_of(s_->user_key), "test-relay", "tester", "127.0.0.1", up,
                                client::unix_ms_now());
    h.port = s_->sshd.port();  // signed for one target, sent for another
    return protocol::encode_hello(h);
  };
  auto bad_sig = [&] {
    auto h = client::make_hello(signer_of(s_->user_key), "test-relay", "tester", "127.0.0.1", up,
                                client::unix_ms_now());
    h.signature[63] ^= 0x40;
    return protocol::encode_hello(h);
  };
  auto truncated = [&] {
    std::string f = hello(s_->user_key, "tester", "127.0.0.1", up);
    f[7] = static_cast<char>(f[7] - 10);  // declared shorter than its fields
    return f.substr(0, f.size() - 10);
  };
  auto oversized = [&] {
    std::string f = hello(s_->user_key, "tester", "127.0.0.1", up);
    f[6] = 0x1f;  // ~8 KiB declared: over the HELLO limit
    return f;
  };
  struct Case {
    const char* name;
    std::string bytes;
    protocol::Reason want;  // on the wire (the audit record keeps the exact reason)
  };
  const auto hidden = protocol::Reason::kNotAuthenticated;
  std::vector<Case> cases = {
      {"unknown principal", hello(s_->user_key, "nobody", "127.0.0.1", up), hidden},
      {"key not listed", hello(s_->stranger_key, "tester", "127.0.0.1", up), hidden},
      {"wrong signature", bad_sig(), hidden},
      {"target not allowed", hello(s_->user_key, "tester", "127.0.0.3", up),
       protocol::Reason::kTargetNotAllowed},
      {"port not allowed", hello(s_->user_key, "tester", "127.0.0.1", 9), protocol::Reason::kPortNotAllowed},
      {"name resolving to a disallowed address", hello(s_->user_key, "tester", "evil.allowed.test", up),
       protocol::Reason::kAddressNotAllowed},
      {"outside time window", hello(s_->night_key, "nightowl", "127.0.0.1", up),
       protocol::Reason::kOutsideTimeWindow},
      {"replayed preamble", replayed, protocol::Reason::kReplayed},
      {"preamble for another target", tampered_target(), hidden},
      {"preamble for another relay", hello(s_->user_key, "tester", "127.0.0.1", up, "other-relay"),
       protocol::Reason::kWrongRelay},
      {"truncated", truncated(), protocol::Reason::kMalformed},
      {"oversized", oversized(), protocol::Reason::kMalformed},
      {"garbage", "GET / HTTP/1.0\r\n\r\n", protocol::Reason::kMalformed},
      {"ssh banner instead of a preamble", "SSH-2.0-OpenSSH_9.2p1\r\n", protocol::Reason::kMalformed},
  };
  for (const auto& c : cases) {
    Exchange e = send_preamble(s_->relay_port, c.bytes);
    EXPECT_TRUE(e.closed) << c.name;
    EXPECT_EQ(deny_code(e), code(c.want)) << c.name << " got " << e.raw.size() << " bytes";
    EXPECT_TRUE(e.after.empty()) << c.name;
  }
  EXPECT_EQ(s_->upstream.accepts(), before);

  // Over the session limit: one live session of `limited` holds its only slot.
  UniqueFd held = tcp_connect(s_->relay_port);
  std::string h1 = hello(s_->limited_key, "limited", "127.0.0.1", up);
  ASSERT_EQ(::send(held.get(), h1.data(), h1.size(), MSG_NOSIGNAL), static_cast<ssize_t>(h1.size()));
  for (int i = 0; i < 200 && s_->upstream.accepts() == before; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_EQ(s_->upstream.accepts(), before + 1);
  Exchange over = send_preamble(s_->relay_port, hello(s_->limited_key, "limited", "127.0.0.1", up));
  EXPECT_EQ(deny_code(over), code(protocol::Reason::kTooManySessions));
  EXPECT_EQ(s_->upstream.accepts(), before + 1);
  held.reset();
  // Once it ended, the slot is free again.
  bool ok = false;
  for (int i = 0; i < 50 && !ok; ++i) {
    Exchange again = send_preamble(s_->relay_port, hello(s_->limited_key, "limited", "127.0.0.1", up));
    ok = again.reply.status == protocol::DecodeStatus::kOk &&
         again.reply.reply.type == protocol::FrameType::kOk;
    if (!ok) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(ok);

  // The audit log has one session_deny per refusal with the reason, and start/end for sessions.
  auto records = audit_records();
  std::set<std::string> deny_reasons;
  int starts = 0, ends = 0;
  for (const auto& r : records) {
    if (r["type"] == "session_deny") deny_reasons.insert(r["reason"].get<std::string>());
    if (r["type"] == "session_start") {
      ++starts;
      EXPECT_TRUE(r.contains("upstream_local"));
      const auto& key = r["principal"] == "limited" ? s_->limited_key : s_->user_key;
      EXPECT_EQ(r["key_fp"], protocol::fingerprint(key->public_key())) << r.dump();
    }
    if (r["type"] == "session_end") ++ends;
  }
  for (const char* want : {"unknown_principal", "key_not_listed", "bad_signature", "target_not_allowed",
                           "address_not_allowed", "outside_time_window", "replayed", "wrong_relay",
                           "malformed", "too_many_sessions", "port_not_allowed"})
    EXPECT_TRUE(deny_reasons.count(want)) << want;
  EXPECT_GE(starts, 2);
  EXPECT_GE(ends, 1);
}

// Before the signature is verified a stranger learns nothing: unknown principal, a key not listed for
// the principal and a bad signature get the same bytes on the wire; the audit log keeps which it was.
TEST_F(AuthRelay, IdentityFailuresLookTheSameOnTheWire) {
  uint16_t up = s_->upstream.port();
  auto bad_sig = [&] {
    auto h = client::make_hello(signer_of(s_->user_key), "test-relay", "tester", "127.0.0.1", up,
                                client::unix_ms_now());
    h.signature[10] ^= 0x01;
    return protocol::encode_hello(h);
  };
  std::vector<std::pair<std::string, std::string>> cases = {
      {"unknown_principal", hello(s_->user_key, "nobody-" + std::to_string(::getpid()), "127.0.0.1", up)},
      {"key_not_listed", hello(s_->stranger_key, "tester", "127.0.0.1", up)},
      {"bad_signature", bad_sig()},
  };
  size_t denies_before = 0;
  for (const auto& r : audit_records()) denies_before += r["type"] == "session_deny";
  std::vector<std::string> wire;
  for (const auto& [why, bytes] : cases) {
    Exchange e = send_preamble(s_->relay_port, bytes);
    EXPECT_TRUE(e.closed) << why;
    wire.push_back(e.raw);
  }
  std::string want =
      protocol::encode_deny(protocol::Reason::kNotAuthenticated, protocol::kNotAuthenticatedMessage);
  for (size_t i = 0; i < wire.size(); ++i) EXPECT_EQ(wire[i], want) << cases[i].first;
  // The newest audit records keep the exact reasons (two workers: in either order). A record is
  // written once the worker finalized the session, which can be just after the client saw the close.
  std::vector<std::string> reasons;
  for (int i = 0; i < 200 && reasons.size() < denies_before + 3; ++i) {
    if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(25));
    reasons.clear();
    for (const auto& r : audit_records())
      if (r["type"] == "session_deny") reasons.push_back(r["reason"].get<std::string>());
  }
  ASSERT_EQ(reasons.size(), denies_before + 3);
  std::multiset<std::string> last(reasons.end() - 3, reasons.end());
  EXPECT_EQ(last, (std::multiset<std::string>{"unknown_principal", "key_not_listed", "bad_signature"}));
}

TEST_F(AuthRelay, SlowlorisIsCutByTheHandshakeTimeout) {
  relay::RelayConfig cfg;
  cfg.routes.push_back({.listen = *SockAddr::parse("127.0.0.1:0"), .handshake = s_->factory});
  cfg.workers = 1;
  cfg.handshake_timeout = std::chrono::milliseconds(500);
  cfg.log_sessions = false;
  relay::Relay slow(std::move(cfg));
  slow.start();
  uint16_t port = slow.listen_addresses()[0].port();
  int before = s_->upstream.accepts();
  uint64_t timeouts = s_->factory->decisions(code(protocol::Reason::kTimeout));
  std::string frame = hello(s_->user_key, "tester", "127.0.0.1", s_->upstream.port());
  UniqueFd fd = tcp_connect(port);
  auto start = std::chrono::steady_clock::now();
  (void)!::send(fd.get(), frame.data(), 10, MSG_NOSIGNAL);  // a few bytes, then nothing
  bool closed = false;
  read_all(fd.get(), std::chrono::seconds(5), &closed);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(closed);
  EXPECT_LT(secs, 3.0);
  EXPECT_EQ(s_->upstream.accepts(), before);
  slow.stop();
  slow.wait();
  EXPECT_EQ(s_->factory->decisions(code(protocol::Reason::kTimeout)), timeouts + 1);
}

// Fail closed on the audit log, through a relay with real ssh: while the relay's audit log cannot be
// written, ssh through it is refused (`sshring connect` says overloaded) and no shell runs; once the
// disk has room again sessions go through, and the chain verifies across the outage.
TEST_F(AuthRelay, SshIsRefusedWhileTheAuditLogIsUnwritableAndRecovers) {
  if (::geteuid() != 0) {
    if (std::getenv("CI")) FAIL() << "needs root to mount a small tmpfs";
    GTEST_SKIP() << "needs root to mount a small tmpfs";
  }
  const std::string mnt = s_->dir.file("auditfs");
  ::mkdir(mnt.c_str(), 0700);
  ASSERT_EQ(::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=128k"), 0) << std::strerror(errno);
  struct Unmount {
    std::string p;
    ~Unmount() { ::umount2(p.c_str(), MNT_DETACH); }
  } unmount{mnt};
  const std::string log_path = mnt + "/relay.audit.jsonl";
  {
    sshring::metrics::AuditLog audit({.path = log_path, .component = "relay", .fsync_each = true});
    auth::AuthOptions o;
    o.relay_ids = {"test-relay"};
    o.audit = &audit;
    o.log_denials = false;
    o.refuse_when_audit_unwritable = true;  // --audit-failure refuse, the default
    auto factory = std::make_shared<auth::AuthHandshakeFactory>(s_->cache, o);
    relay::RelayConfig cfg;
    cfg.routes.push_back({.listen = *SockAddr::parse("127.0.0.1:0"), .handshake = factory});
    cfg.workers = 1;
    cfg.log_sessions = false;
    relay::Relay r(std::move(cfg));
    r.start();
    const std::string via = "127.0.0.1:" + std::to_string(r.listen_addresses()[0].port());
    std::string out;
    ASSERT_EQ(ssh(false, "echo before", &out, "", std::chrono::seconds(60), via), 0);
    EXPECT_EQ(out, "before\n");

    const std::string filler = mnt + "/filler";
    {
      FILE* f = std::fopen(filler.c_str(), "w");
      ASSERT_NE(f, nullptr);
      std::string chunk(4096, 'x');
      while (std::fwrite(chunk.data(), 1, chunk.size(), f) == chunk.size() && std::fflush(f) == 0) {
      }
      std::fclose(f);
    }
    // Sessions still go through until a record fails (the file's last page may have room left).
    for (int i = 0; i < 20 && audit.writable(); ++i)
      (void)ssh(false, "true", nullptr, "", std::chrono::seconds(60), via);
    ASSERT_FALSE(audit.writable());
    EXPECT_NE(ssh(false, "echo during", &out, "", std::chrono::seconds(60), via), 0);
    EXPECT_EQ(out, "") << "a shell ran while the audit log was unwritable";
    const std::string err = t::read_file(s_->dir.file("ssh.err"));
    EXPECT_NE(err.find("overloaded"), std::string::npos) << err;

    std::filesystem::remove(filler);
    // The first refusal after the disk freed up writes its deny record; the next session is let in.
    bool ok = false;
    for (int i = 0; i < 5 && !ok; ++i)
      ok = ssh(false, "echo after", &out, "", std::chrono::seconds(60), via) == 0 && out == "after\n";
    EXPECT_TRUE(ok);
    r.stop();
    r.wait();
    EXPECT_TRUE(audit.flush());
  }
  std::string verify;
  EXPECT_EQ(t::run({t::sshring_bin(), "audit", "verify", log_path}, &verify), 0) << verify;
}

// `rm` of the live audit file while the relay runs: the writer notices before its next write, puts the
// chain so far into a new file at the path with a log_reopen record, and the next session is recorded
// there; verify follows the whole chain in the one new file.
TEST_F(AuthRelay, LiveAuditFileRemovedWhileTheRelayRunsKeepsTheChain) {
  const std::string log_path = s_->dir.file("rm-relay.audit.jsonl");
  {
    sshring::metrics::AuditLog audit({.path = log_path, .component = "relay"});  // batched, as the relay runs
    auth::AuthOptions o;
    o.relay_ids = {"test-relay"};
    o.audit = &audit;
    o.log_denials = false;
    auto factory = std::make_shared<auth::AuthHandshakeFactory>(s_->cache, o);
    relay::RelayConfig cfg;
    cfg.routes.push_back({.listen = *SockAddr::parse("127.0.0.1:0"), .handshake = factory});
    cfg.workers = 1;
    cfg.log_sessions = false;
    relay::Relay r(std::move(cfg));
    r.start();
    const std::string via = "127.0.0.1:" + std::to_string(r.listen_addresses()[0].port());
    std::string out;
    ASSERT_EQ(ssh(false, "echo one", &out, "", std::chrono::seconds(60), via), 0);
    ASSERT_TRUE(audit.flush());
    ASSERT_TRUE(std::filesystem::remove(log_path));
    ASSERT_EQ(ssh(false, "echo two", &out, "", std::chrono::seconds(60), via), 0);
    EXPECT_EQ(out, "two\n");
    r.stop();
    r.wait();
    EXPECT_TRUE(audit.flush());
    EXPECT_EQ(audit.stats().reopened, 1u);
  }
  ASSERT_TRUE(std::filesystem::exists(log_path));
  int ends = 0, reopens = 0;
  std::istringstream in(t::read_file(log_path));
  for (std::string line; std::getline(in, line);) {
    auto rec = nlohmann::json::parse(line);
    if (rec["type"] == "session_end") ++ends;
    if (rec["type"] == "log_reopen") {
      ++reopens;
      EXPECT_EQ(rec["reason"], "deleted");
      EXPECT_EQ(ends, 1) << "the reopen comes after the first session and before the second";
    }
  }
  EXPECT_EQ(ends, 2);
  EXPECT_EQ(reopens, 1);
  std::string verify;
  EXPECT_EQ(t::run({t::sshring_bin(), "audit", "verify", log_path}, &verify), 0) << verify;
}

TEST_F(AuthRelay, ConnectCommandPrintsTheReasonAndExitsWithItsCode) {
  std::string key = s_->dir.file("night_key");
  t::write_file(key, s_->night_key->to_openssh(), 0600);
  struct Case {
    std::string principal, target;
    protocol::Reason want;
  };
  std::vector<Case> cases = {{"nobody", "127.0.0.1", protocol::Reason::kNotAuthenticated},
                             {"nightowl", "127.0.0.1", protocol::Reason::kOutsideTimeWindow},
                             {"nightowl", "127.0.0.3", protocol::Reason::kTargetNotAllowed}};
  for (const auto& c : cases) {
    t::Process::Options po;
    po.stdout_path = s_->dir.file("connect.out");
    po.stderr_path = s_->dir.file("connect.err");
    t::Process p({t::sshring_bin(), "connect", "--relay", "127.0.0.1:" + std::to_string(s_->relay_port),
                  "--relay-id", "test-relay", "--principal", c.principal, "--identity", key, c.target,
                  std::to_string(s_->upstream.port())},
                 po);
    EXPECT_EQ(p.wait(std::chrono::seconds(20)), protocol::exit_code_for(c.want)) << c.principal;
    std::string err = t::read_file(po.stderr_path);
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
    EXPECT_NE(err.find(protocol::reason_name(c.want)), std::string::npos) << err;
  }
}

TEST_F(AuthRelay, TwoHundredConcurrentLibssh2Sessions) {
  constexpr int kSessions = 200;
  ASSERT_EQ(libssh2_init(0), 0);
  std::string user = getpwuid(getuid())->pw_name;
  std::string pub = s_->sshd.user_key() + ".pub";
  std::atomic<int> ok{0};
  std::atomic<int> ready{0};
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> errors;
  auto fail = [&](int i, const std::string& what) {
    std::lock_guard lock(mu);
    errors.push_back(std::to_string(i) + ": " + what);
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < kSessions; ++i) {
    threads.emplace_back([&, i] {
      bool counted = false;
      auto arrive = [&] {
        if (counted) return;
        counted = true;
        std::unique_lock lock(mu);
        ++ready;
        cv.notify_all();
        // Hold the session open until every thread got here, so all run at the same time.
        cv.wait_for(lock, std::chrono::seconds(90), [&] { return ready.load() == kSessions; });
      };
      try {
        auto c = client::connect_via_relay({.relay = "127.0.0.1:" + std::to_string(s_->relay_port),
                                            .relay_id = "test-relay",
                                            .principal = "tester",
                                            .target = "127.0.0.1",
                                            .port = s_->bulk_port,
                                            .timeout = std::chrono::seconds(60)},
                                           signer_of(s_->user_key));
        LIBSSH2_SESSION* session = libssh2_session_init();
        libssh2_session_set_timeout(session, 60000);
        std::unique_ptr<LIBSSH2_SESSION, void (*)(LIBSSH2_SESSION*)> guard(session, [](LIBSSH2_SESSION* s) {
          libssh2_session_disconnect(s, "bye");
          libssh2_session_free(s);
        });
        if (libssh2_session_handshake(session, c.fd.get()) != 0) return fail(i, "ssh handshake");
        if (libssh2_userauth_publickey_fromfile(session, user.c_str(), pub.c_str(),
                                                s_->sshd.user_key().c_str(), "") != 0)
          return fail(i, "userauth");
        LIBSSH2_CHANNEL* ch = libssh2_channel_open_session(session);
        if (ch == nullptr) return fail(i, "channel");
        std::string cmd = "echo session-" + std::to_string(i);
        if (libssh2_channel_exec(ch, cmd.c_str()) != 0) return fail(i, "exec");
        std::string out;
        char buf[256];
        ssize_t n = 0;
        while ((n = libssh2_channel_read(ch, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
        if (n < 0) {
          char* msg = nullptr;
          libssh2_session_last_error(session, &msg, nullptr, 0);
          return fail(i, "read: " + std::to_string(n) + " " + (msg ? msg : ""));
        }
        libssh2_channel_close(ch);
        libssh2_channel_wait_closed(ch);
        int status = libssh2_channel_get_exit_status(ch);
        libssh2_channel_free(ch);
        arrive();
        if (out != "session-" + std::to_string(i) + "\n" || status != 0)
          return fail(i, "output '" + out + "'");
        ++ok;
      } catch (const std::exception& e) {
        fail(i, e.what());
      }
      arrive();
    });
  }
  for (auto& th : threads) th.join();
  libssh2_exit();
  for (const auto& e : errors) ADD_FAILURE() << e;
  EXPECT_EQ(ok.load(), kSessions);
  // Every session slot is released once the relay has seen the ends.
  for (int i = 0; i < 200 && s_->factory->limits().sessions_of("tester") != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(s_->factory->limits().sessions_of("tester"), 0u);
}

TEST_F(AuthRelay, HandshakeCapPerSourceThroughTheRelay) {
  auth::AuthOptions o;
  o.relay_ids = {"test-relay"};
  o.max_handshakes_per_source = 2;
  o.log_denials = false;
  auto factory = std::make_shared<auth::AuthHandshakeFactory>(s_->cache, o);
  relay::RelayConfig cfg;
  cfg.routes.push_back({.listen = *SockAddr::parse("127.0.0.1:0"), .handshake = factory});
  cfg.workers = 1;
  cfg.log_sessions = false;
  relay::Relay capped(std::move(cfg));
  capped.start();
  uint16_t port = capped.listen_addresses()[0].port();
  int before = s_->upstream.accepts();
  std::vector<UniqueFd> idle;
  for (int i = 0; i < 2; ++i) idle.push_back(tcp_connect(port));
  for (int i = 0; i < 200 && factory->limits().handshakes_from(*SockAddr::parse("127.0.0.1:0")) < 2; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  Exchange over = send_preamble(port, hello(s_->user_key, "tester", "127.0.0.1", s_->upstream.port()));
  EXPECT_EQ(deny_code(over), code(protocol::Reason::kTooManyHandshakes));
  EXPECT_EQ(s_->upstream.accepts(), before);
  idle.clear();  // they go away; their slots come back
  bool ok = false;
  for (int i = 0; i < 100 && !ok; ++i) {
    Exchange again = send_preamble(port, hello(s_->user_key, "tester", "127.0.0.1", s_->upstream.port()));
    ok = again.reply.status == protocol::DecodeStatus::kOk &&
         again.reply.reply.type == protocol::FrameType::kOk;
    if (!ok) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(ok);
  capped.stop();
  capped.wait();
}

// Every session slot held by an authenticated session: the next verified client is refused (closed
// without an OK, counted as overloaded) and never reaches the upstream. Silent connections around it
// are startups and take none of the slots; once one session ends its slot serves the next client.
TEST_F(AuthRelay, VerifiedClientIsRefusedOnlyWhenAuthenticatedSessionsHoldEverySlot) {
  relay::RelayConfig cfg;
  cfg.routes.push_back({.listen = *SockAddr::parse("127.0.0.1:0"), .handshake = s_->factory});
  cfg.workers = 1;  // max_sessions is split over the workers: one worker holds exactly two
  cfg.max_sessions = 2;
  cfg.startups.per_source = 64;
  cfg.log_sessions = false;
  relay::Relay r(std::move(cfg));
  r.start();
  const uint16_t port = r.listen_addresses()[0].port();
  const uint16_t up = s_->upstream.port();
  auto wait_for = [](auto done) {
    for (int i = 0; i < 500 && !done(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return done();
  };
  std::vector<UniqueFd> silent;
  for (int i = 0; i < 10; ++i) silent.push_back(tcp_connect(port));
  ASSERT_TRUE(wait_for([&] { return r.admission()->in_progress() == 10; }));
  const int before = s_->upstream.accepts();
  std::vector<UniqueFd> held;
  for (int i = 0; i < 2; ++i) {
    held.push_back(tcp_connect(port));
    std::string h = hello(s_->user_key, "tester", "127.0.0.1", up);
    ASSERT_EQ(::send(held.back().get(), h.data(), h.size(), MSG_NOSIGNAL), static_cast<ssize_t>(h.size()));
  }
  ASSERT_TRUE(wait_for([&] { return s_->upstream.accepts() == before + 2; })) << "the two sessions started";
  ASSERT_EQ(r.sessions_total(relay::EndReason::kOverloaded), 0u) << "ten silent connections took a slot";

  Exchange over = send_preamble(port, hello(s_->user_key, "tester", "127.0.0.1", up));
  EXPECT_TRUE(over.closed);
  EXPECT_FALSE(over.reply.status == protocol::DecodeStatus::kOk &&
               over.reply.reply.type == protocol::FrameType::kOk);
  // Counted when the worker finalizes the session, just after the client saw the close.
  EXPECT_TRUE(wait_for([&] { return r.sessions_total(relay::EndReason::kOverloaded) == 1; }));
  EXPECT_EQ(s_->upstream.accepts(), before + 2);

  held.pop_back();  // one session ends; its slot comes back
  bool ok = wait_for([&] {
    Exchange again = send_preamble(port, hello(s_->user_key, "tester", "127.0.0.1", up));
    return again.reply.status == protocol::DecodeStatus::kOk &&
           again.reply.reply.type == protocol::FrameType::kOk;
  });
  EXPECT_TRUE(ok);
  held.clear();
  silent.clear();
  r.stop();
  r.wait();
}

namespace {

// Opens `count` TCP connections to `relay` that never send a byte, each from the next address of
// `sources` (bound first; IPV6_FREEBIND for addresses that are only routed to lo), at most `per_ms`
// per millisecond. The sockets stay open until the returned vector is gone: the relay sees them as
// live, silent clients until it refuses or times them out.
std::vector<UniqueFd> open_silent(const SockAddr& relay, const std::vector<SockAddr>& sources, int count,
                                  int per_ms, std::atomic<int>* opened) {
  std::vector<UniqueFd> fds;
  fds.reserve(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) {
    const SockAddr& src = sources[static_cast<size_t>(i) % sources.size()];
    UniqueFd fd(::socket(src.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) break;
    int one = 1;
    if (src.family() == AF_INET6) ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_FREEBIND, &one, sizeof(one));
    if (::bind(fd.get(), src.get(), src.len()) != 0) {
      ADD_FAILURE() << "bind " << src.to_string() << ": " << std::strerror(errno);
      break;
    }
    if (::connect(fd.get(), relay.get(), relay.len()) != 0 && errno != EINPROGRESS) continue;
    fds.push_back(std::move(fd));
    opened->store(static_cast<int>(fds.size()));
    if (per_ms > 0 && i % per_ms == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return fds;
}

// A local route for a /64 on lo, so that any address in it can be a source (removed on destruction).
class LoopbackPrefix {
 public:
  explicit LoopbackPrefix(std::string prefix) : prefix_(std::move(prefix)) {
    ok_ = t::sh("ip -6 route add local " + prefix_ + " dev lo 2>&1") == 0;
  }
  ~LoopbackPrefix() {
    if (ok_) t::sh("ip -6 route del local " + prefix_ + " dev lo 2>&1");
  }
  [[nodiscard]] bool ok() const { return ok_; }

 private:
  std::string prefix_;
  bool ok_ = false;
};

struct FloodResult {
  int opened = 0;
  int ssh_status = -1;
  std::string ssh_out;
  uint32_t max_from_one_source = 0;
};

}  // namespace

// The pre-authentication budget under a flood: silent connections from a few sources take only their
// per-source startup share, never a session slot (max_sessions is 200 here, the flood is 5,000), so
// a real `ssh` through the relay from another source connects and completes while the flood runs.
class StartupFlood : public AuthRelay {
 protected:
  FloodResult run(const std::string& listen, const std::vector<SockAddr>& sources,
                  const std::string& relay_for_client, const SockAddr& one_source) {
    relay::RelayConfig cfg;
    cfg.routes.push_back({.listen = *SockAddr::parse(listen), .handshake = s_->factory});
    cfg.workers = 2;
    cfg.max_sessions = 200;
    cfg.startups.first_byte_timeout = std::chrono::milliseconds(1500);
    cfg.log_sessions = false;
    relay::Relay r(std::move(cfg));
    r.start();
    SockAddr bound = r.listen_addresses()[0];
    std::string client_relay = relay_for_client + ":" + std::to_string(bound.port());
    FloodResult res;
    std::atomic<int> opened{0};
    std::atomic<bool> flooding{true};
    std::atomic<uint32_t> max_one{0};
    std::vector<UniqueFd> held;
    std::thread flood([&] {
      held = open_silent(bound, sources, 5000, 3, &opened);
      flooding = false;
    });
    std::thread watch([&] {  // samples the per-source count while the flood runs
      while (flooding) {
        max_one = std::max(max_one.load(), r.admission()->from(one_source));
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    });
    while (opened.load() < 1000 && flooding) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    res.ssh_status =
        ssh(false, "echo through-the-flood", &res.ssh_out, "", std::chrono::seconds(90), client_relay);
    flood.join();
    watch.join();
    res.opened = static_cast<int>(held.size());
    res.max_from_one_source = max_one.load();
    uint64_t per_source = 0, overloaded = r.sessions_total(relay::EndReason::kOverloaded);
    for (const auto* w : r.stats())
      per_source += w->startups_refused[static_cast<size_t>(relay::StartupRefusal::kPerSource)].value();
    EXPECT_GT(per_source, 1000u) << "the flood was not refused at accept";
    EXPECT_EQ(overloaded, 0u) << "an authenticated session lost its slot";
    // The admitted silent ones are cut by the first-byte timeout, and every startup slot comes back.
    auto refused = [&](relay::StartupRefusal why) {
      uint64_t n = 0;
      for (const auto* w : r.stats()) n += w->startups_refused[static_cast<size_t>(why)].value();
      return n;
    };
    for (int i = 0; i < 300 && (r.admission()->in_progress() != 0 ||
                                refused(relay::StartupRefusal::kFirstByteTimeout) == 0);
         ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_GT(refused(relay::StartupRefusal::kFirstByteTimeout), 0u);
    EXPECT_EQ(r.admission()->in_progress(), 0u);
    int64_t startups = 0;
    for (const auto* w : r.stats()) startups += w->startups_active.value();
    EXPECT_EQ(startups, 0);
    held.clear();
    r.stop();
    r.wait();
    return res;
  }
};

TEST_F(StartupFlood, FiveThousandSilentIpv4ConnectionsDoNotStopARealClient) {
  std::vector<SockAddr> sources;
  for (int i = 2; i <= 9; ++i) sources.push_back(*SockAddr::parse("127.0.0." + std::to_string(i) + ":0"));
  FloodResult r = run("127.0.0.1:0", sources, "127.0.0.1", sources[0]);
  EXPECT_EQ(r.opened, 5000);
  EXPECT_EQ(r.ssh_status, 0);
  EXPECT_EQ(r.ssh_out, "through-the-flood\n");
  EXPECT_LE(r.max_from_one_source, relay::AdmissionConfig{}.per_source);
  EXPECT_GT(r.max_from_one_source, 0u);
}

TEST_F(StartupFlood, FiveThousandSilentIpv6AddressesOfOneSlash64DoNotStopARealClient) {
  // A /64 unique to this process, routed to lo: every flood connection has its own address in it.
  char prefix[64];
  std::snprintf(prefix, sizeof(prefix), "fd53:%x:%x:1", (::getpid() >> 16) & 0xffff, ::getpid() & 0xffff);
  LoopbackPrefix route(std::string(prefix) + "::/64");
  if (!route.ok()) {
    if (std::getenv("CI")) FAIL() << "cannot add a local IPv6 route on lo";
    GTEST_SKIP() << "cannot add a local IPv6 route on lo (needs root)";
  }
  std::vector<SockAddr> sources;
  for (int i = 1; i <= 5000; ++i) {
    char a[96];
    std::snprintf(a, sizeof(a), "[%s:%x:%x::%x]:0", prefix, i * 7, i, i + 1);
    sources.push_back(*SockAddr::parse(a));
  }
  // The real client connects from ::1, another /64.
  FloodResult r = run("[::1]:0", sources, "[::1]", sources[0]);
  EXPECT_EQ(r.opened, 5000);
  EXPECT_EQ(r.ssh_status, 0);
  EXPECT_EQ(r.ssh_out, "through-the-flood\n");
  EXPECT_LE(r.max_from_one_source, relay::AdmissionConfig{}.per_source);
  EXPECT_GT(r.max_from_one_source, 0u);
}

// A hostile relay answers with terminal escapes in its DENY text: `sshring connect` prints one line
// of printable ASCII (the escape bytes replaced), never the escapes themselves.
TEST_F(AuthRelay, ConnectPrintsTheDenyTextWithoutTerminalEscapes) {
  UniqueFd lfd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(lfd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(::listen(lfd.get(), 4), 0);
  socklen_t len = sizeof(a);
  ::getsockname(lfd.get(), reinterpret_cast<sockaddr*>(&a), &len);
  const std::string evil =
      "\x1b]0;owned\x07\x1b[2J\x9b"
      "31m text\r\nsshring connect: fake second line";
  std::thread fake([&] {
    pollfd p{lfd.get(), POLLIN, 0};
    if (::poll(&p, 1, 20000) <= 0) return;
    UniqueFd c(::accept4(lfd.get(), nullptr, nullptr, SOCK_CLOEXEC));
    char buf[2048];
    (void)!::recv(c.get(), buf, sizeof(buf), 0);
    std::string deny = protocol::encode_deny(protocol::Reason::kTargetNotAllowed, evil);
    (void)!::send(c.get(), deny.data(), deny.size(), MSG_NOSIGNAL);
  });
  std::string key = s_->dir.file("escape_key");
  t::write_file(key, s_->night_key->to_openssh(), 0600);
  t::Process::Options po;
  po.stderr_path = s_->dir.file("escape.err");
  t::Process p({t::sshring_bin(), "connect", "--relay", "127.0.0.1:" + std::to_string(ntohs(a.sin_port)),
                "--relay-id", "test-relay", "--principal", "nightowl", "--identity", key, "127.0.0.1", "22"},
               po);
  EXPECT_EQ(p.wait(std::chrono::seconds(20)), protocol::exit_code_for(protocol::Reason::kTargetNotAllowed));
  fake.join();
  std::string err = t::read_file(po.stderr_path);
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  for (char c : err.substr(0, err.size() - 1))
    EXPECT_TRUE(c >= 0x20 && c <= 0x7e) << "byte " << static_cast<int>(static_cast<unsigned char>(c));
  EXPECT_NE(err.find("?]0;owned??[2J?31m text??sshring connect: fake second line"), std::string::npos) << err;
}
