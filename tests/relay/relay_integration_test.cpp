// The relay in-process on loopback: real sockets, real io_uring workers.
#include <netinet/in.h>
#include <sys/socket.h>

#include <gtest/gtest.h>

#include <sys/un.h>

#include <poll.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include <fcntl.h>
#include <sched.h>

#include "relay/handover.h"
#include "relay/relay.h"
#include "tests/relay/relay_fixtures.h"
#include "tests/support/netns.h"
#include "tests/support/process.h"

namespace sshring::relay {
namespace {

using namespace std::chrono_literals;
using test::EchoServer;

common::SockAddr addr(const std::string& s) {
  return *common::SockAddr::parse(s);
}

RelayConfig static_cfg(const common::SockAddr& upstream, const char* listen = "127.0.0.1:0") {
  RelayConfig cfg;
  Route r;
  r.listen = addr(listen);
  r.upstream = upstream;
  cfg.routes.push_back(r);
  cfg.workers = 2;
  cfg.log_sessions = false;
  return cfg;
}

template <typename F>
bool eventually(F f, std::chrono::milliseconds limit = 5s) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (f()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return f();
}

void expect_echo(const common::SockAddr& via, size_t len) {
  auto c = test::tcp_connect(via);
  ASSERT_TRUE(c) << strerror(errno);
  test::set_timeout(c.get(), 5s);
  std::string out(len, 0), in(len, 0);
  uint64_t st = 42 + len;
  test::fill_random(st, reinterpret_cast<uint8_t*>(out.data()), len);
  std::thread w([&] { ASSERT_TRUE(test::write_all(c.get(), out.data(), len)); });
  ASSERT_TRUE(test::read_exact(c.get(), in.data(), len));
  w.join();
  EXPECT_EQ(in, out);
}

class SpliceModes : public ::testing::TestWithParam<SpliceMode> {};

TEST_P(SpliceModes, EchoesIPv4AndIPv6) {
  EchoServer echo4;
  EchoServer echo6("::1");
  RelayConfig cfg = static_cfg(echo4.addr());
  cfg.splice_mode = GetParam();
  Route r6;
  r6.listen = addr("[::1]:0");
  r6.upstream = echo6.addr();
  cfg.routes.push_back(r6);
  Relay relay(cfg);
  relay.start();
  auto la = relay.listen_addresses();
  ASSERT_EQ(la.size(), 2u);
  EXPECT_NE(la[0].port(), 0);
  EXPECT_EQ(la[1].family(), AF_INET6);
  expect_echo(la[0], 1);
  expect_echo(la[0], 3 << 20);
  expect_echo(la[1], 100000);
  EXPECT_TRUE(eventually([&] { return relay.sessions_total(EndReason::kClosed) == 3; }));
  EXPECT_EQ(relay.sessions_active(), 0);
  EXPECT_EQ(relay.pipes_in_use(), 0);
  uint64_t c2u = 0, u2c = 0;
  for (auto* s : relay.stats()) {
    c2u += s->bytes_client_to_upstream.value();
    u2c += s->bytes_upstream_to_client.value();
  }
  EXPECT_EQ(c2u, 1u + (3u << 20) + 100000u);
  EXPECT_EQ(u2c, c2u);
}

INSTANTIATE_TEST_SUITE_P(Relay, SpliceModes, ::testing::Values(SpliceMode::kInline, SpliceMode::kRing),
                         [](const auto& info) {
                           return info.param == SpliceMode::kInline ? "Inline" : "Ring";
                         });

// An upstream that reads until EOF, then answers with the byte count and closes.
class CountingUpstream {
 public:
  CountingUpstream() : listen_(test::listen_any()), addr_(test::local_addr(listen_.get())) {
    thread_ = std::thread([this] {
      common::UniqueFd c(::accept(listen_.get(), nullptr, nullptr));
      if (!c) return;
      std::string got;
      test::read_to_eof(c.get(), got);
      std::string reply = "got " + std::to_string(got.size());
      test::write_all(c.get(), reply.data(), reply.size());
    });
  }
  ~CountingUpstream() { thread_.join(); }
  const common::SockAddr& addr() const { return addr_; }

 private:
  common::UniqueFd listen_;
  common::SockAddr addr_;
  std::thread thread_;
};

TEST(RelayTest, HalfCloseCarriesReplyAfterEof) {
  CountingUpstream up;
  Relay relay(static_cfg(up.addr()));
  relay.start();
  auto c = test::tcp_connect(relay.listen_addresses()[0]);
  ASSERT_TRUE(c);
  test::set_timeout(c.get(), 5s);
  std::string msg(123456, 'x');
  ASSERT_TRUE(test::write_all(c.get(), msg.data(), msg.size()));
  ASSERT_EQ(::shutdown(c.get(), SHUT_WR), 0);
  std::string reply;
  ASSERT_TRUE(test::read_to_eof(c.get(), reply));
  EXPECT_EQ(reply, "got 123456");
  EXPECT_TRUE(eventually([&] { return relay.sessions_total(EndReason::kClosed) == 1; }));
}

TEST(RelayTest, UpstreamRefusedResetsClient) {
  common::SockAddr dead;
  {
    auto l = test::listen_any();
    dead = test::local_addr(l.get());
  }  // closed: connections to it are refused
  Relay relay(static_cfg(dead));
  relay.start();
  auto c = test::tcp_connect(relay.listen_addresses()[0]);
  ASSERT_TRUE(c);
  ssize_t r = test::read_end(c.get(), 3s);
  EXPECT_TRUE(r == 0 || r == -ECONNRESET) << r;
  EXPECT_TRUE(eventually([&] { return relay.sessions_total(EndReason::kConnectFailed) == 1; }));
}

TEST(RelayTest, ConnectTimeoutOnSilentUpstream) {
  // A listener whose accept queue is full drops further SYNs: the relay's connect never completes.
  auto l = test::listen_any("127.0.0.1", 0);
  auto silent = test::local_addr(l.get());
  std::vector<common::UniqueFd> fillers;
  for (int i = 0; i < 3; ++i) fillers.push_back(test::tcp_connect_nb(silent));
  std::this_thread::sleep_for(100ms);
  RelayConfig cfg = static_cfg(silent);
  cfg.connect_timeout = 300ms;
  Relay relay(cfg);
  relay.start();
  auto t0 = std::chrono::steady_clock::now();
  auto c = test::tcp_connect(relay.listen_addresses()[0]);
  ASSERT_TRUE(c);
  ssize_t r = test::read_end(c.get(), 5s);
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_TRUE(r == 0 || r == -ECONNRESET) << r;
  EXPECT_GE(took, 250ms);
  EXPECT_LT(took, 3s);
  EXPECT_TRUE(eventually([&] { return relay.sessions_total(EndReason::kConnectFailed) == 1; }));
}

TEST(RelayTest, ConnectTimeoutOnAddressThatDrops) {
  std::string why;
  if (!testing::can_use_netns(&why)) GTEST_SKIP() << "network namespaces unavailable: " << why;
  // 10.99.0.2 resolves (static neighbour) to a MAC nobody owns on a veth: SYNs vanish silently.
  testing::NetNs ns("relayct");
  testing::NetNs peer("relayctp");
  testing::link_veth(ns, "v0", "10.99.0.1/24", peer, "v1", "10.99.0.3/24");
  ASSERT_EQ(ns.exec("ip neigh replace 10.99.0.2 lladdr 02:00:00:00:00:02 dev v0 nud permanent"), 0);
  // The relay and the client run in a thread that joined the namespace; worker threads inherit it.
  std::thread t([&] {
    common::UniqueFd nsfd(::open(("/var/run/netns/" + ns.name()).c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(nsfd);
    ASSERT_EQ(::setns(nsfd.get(), CLONE_NEWNET), 0) << strerror(errno);
    RelayConfig cfg = static_cfg(addr("10.99.0.2:22"));
    cfg.connect_timeout = 400ms;
    Relay relay(cfg);
    relay.start();
    auto t0 = std::chrono::steady_clock::now();
    auto c = test::tcp_connect(relay.listen_addresses()[0]);
    ASSERT_TRUE(c);
    ssize_t r = test::read_end(c.get(), 5s);
    auto took = std::chrono::steady_clock::now() - t0;
    EXPECT_TRUE(r == 0 || r == -ECONNRESET) << r;
    EXPECT_GE(took, 350ms);
    EXPECT_LT(took, 3s);
    EXPECT_TRUE(eventually([&] { return relay.sessions_total(EndReason::kConnectFailed) == 1; }));
  });
  t.join();
}

TEST(RelayTest, UpstreamResetMidStreamResetsClient) {
  EchoServer echo("127.0.0.1", 5000);
  Relay relay(static_cfg(echo.addr()));
  relay.start();
  auto c = test::tcp_connect(relay.listen_addresses()[0]);
  ASSERT_TRUE(c);
  test::set_timeout(c.get(), 5s);
  std::string data(20000, 'a');
  test::write_all(c.get(), data.data(), data.size());
  char buf[65536];
  size_t total = 0;
  ssize_t n;
  while ((n = ::read(c.get(), buf, sizeof(buf))) > 0) total += static_cast<size_t>(n);
  EXPECT_EQ(n, -1);  // a reset, not a clean EOF
  EXPECT_EQ(errno, ECONNRESET);
  EXPECT_LE(total, 5000u);
  EXPECT_TRUE(eventually([&] { return relay.sessions_total(EndReason::kUpstreamReset) == 1; }));
}

TEST(RelayTest, ClientResetResetsUpstream) {
  // The upstream side must see a reset too when the client aborts.
  auto l = test::listen_any();
  Relay relay(static_cfg(test::local_addr(l.get())));
  relay.start();
  auto c = test::tcp_connect(relay.listen_addresses()[0]);
  ASSERT_TRUE(c);
  common::UniqueFd u(::accept(l.get(), nullptr, nullptr));
  ASSERT_TRUE(u);
  test::write_all(c.get(), "hi", 2);
  char buf[2];
  ASSERT_TRUE(test::read_exact(u.get(), buf, 2));
  linger lg{1, 0};
  ::setsockopt(c.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  c.reset();
  EXPECT_EQ(test::read_end(u.get(), 3s), -ECONNRESET);
  EXPECT_TRUE(eventually([&] { return relay.sessions_total(EndReason::kClientReset) == 1; }));
}

TEST(RelayTest, MaxSessionsRefusesFast) {
  EchoServer echo;
  RelayConfig cfg = static_cfg(echo.addr());
  cfg.workers = 1;
  cfg.max_sessions = 2;
  Relay relay(cfg);
  relay.start();
  auto la = relay.listen_addresses()[0];
  auto a = test::tcp_connect(la);
  auto b = test::tcp_connect(la);
  ASSERT_TRUE(eventually([&] { return relay.sessions_active() == 2; }));
  auto t0 = std::chrono::steady_clock::now();
  auto c = test::tcp_connect(la);
  ASSERT_TRUE(c);
  ssize_t r = test::read_end(c.get(), 2s);
  EXPECT_TRUE(r == 0 || r == -ECONNRESET) << r;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
  EXPECT_EQ(relay.sessions_total(EndReason::kOverloaded), 1u);
  a.reset();
  ASSERT_TRUE(eventually([&] { return relay.sessions_active() == 1; }));
  expect_echo(la, 1000);  // capacity is back
}

TEST(RelayTest, IdleTimeoutClosesQuietSessions) {
  EchoServer echo;
  RelayConfig cfg = static_cfg(echo.addr());
  cfg.idle_timeout = 300ms;
  Relay relay(cfg);
  relay.start();
  auto la = relay.listen_addresses()[0];
  auto c = test::tcp_connect(la);
  ASSERT_TRUE(c);
  test::set_timeout(c.get(), 3s);
  // Traffic keeps it alive past the timeout...
  for (int i = 0; i < 5; ++i) {
    char b = 'x';
    ASSERT_TRUE(test::write_all(c.get(), &b, 1));
    ASSERT_TRUE(test::read_exact(c.get(), &b, 1));
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(relay.sessions_active(), 1);
  // ...silence ends it.
  ssize_t r = test::read_end(c.get(), 3s);
  EXPECT_TRUE(r == 0 || r == -ECONNRESET) << r;
  EXPECT_TRUE(eventually([&] { return relay.sessions_total(EndReason::kIdleTimeout) == 1; }));
}

TEST(RelayTest, DrainFinishesInFlightAndRefusesNew) {
  EchoServer echo;
  RelayConfig cfg = static_cfg(echo.addr());
  cfg.drain_timeout = 10s;
  Relay relay(cfg);
  relay.start();
  auto la = relay.listen_addresses()[0];
  auto c = test::tcp_connect(la);
  ASSERT_TRUE(c);
  test::set_timeout(c.get(), 5s);
  ASSERT_TRUE(eventually([&] { return relay.sessions_active() == 1; }));
  relay.begin_drain();
  std::this_thread::sleep_for(200ms);
  auto refused = test::tcp_connect(la);
  EXPECT_FALSE(refused);
  EXPECT_EQ(errno, ECONNREFUSED);
  std::string msg(200000, 'd'), back(200000, 0);
  std::thread w([&] { test::write_all(c.get(), msg.data(), msg.size()); });
  ASSERT_TRUE(test::read_exact(c.get(), back.data(), back.size()));
  w.join();
  EXPECT_EQ(back, msg);
  EXPECT_FALSE(relay.finished());
  c.reset();
  EXPECT_TRUE(eventually([&] { return relay.finished(); }));
  relay.wait();
  EXPECT_EQ(relay.sessions_total(EndReason::kClosed), 1u);
}

TEST(RelayTest, DrainDeadlineClosesStragglers) {
  EchoServer echo;
  RelayConfig cfg = static_cfg(echo.addr());
  cfg.drain_timeout = 300ms;
  Relay relay(cfg);
  relay.start();
  auto c = test::tcp_connect(relay.listen_addresses()[0]);
  ASSERT_TRUE(eventually([&] { return relay.sessions_active() == 1; }));
  relay.begin_drain();
  ssize_t r = test::read_end(c.get(), 3s);
  EXPECT_TRUE(r == 0 || r == -ECONNRESET) << r;
  relay.wait();
  EXPECT_EQ(relay.sessions_total(EndReason::kDrained), 1u);
}

TEST(RelayTest, ReloadSwitchesUpstreamAndAddsRoutes) {
  CountingUpstream first, second, third;
  RelayConfig cfg = static_cfg(first.addr());
  cfg.workers = 1;
  Relay relay(cfg);
  relay.start();
  auto la = relay.listen_addresses()[0];
  auto ask = [](const common::SockAddr& via) {
    auto c = test::tcp_connect(via);
    test::set_timeout(c.get(), 5s);
    test::write_all(c.get(), "abc", 3);
    ::shutdown(c.get(), SHUT_WR);
    std::string out;
    test::read_to_eof(c.get(), out);
    return out;
  };
  EXPECT_EQ(ask(la), "got 3");
  RelayConfig next = static_cfg(second.addr(), la.to_string().c_str());
  next.workers = 1;
  Route extra;
  extra.listen = addr("127.0.0.1:0");
  extra.upstream = third.addr();
  next.routes.push_back(extra);
  relay.reload(next);
  std::this_thread::sleep_for(100ms);
  auto now = relay.listen_addresses();
  ASSERT_EQ(now.size(), 2u);
  EXPECT_EQ(now[0].to_string(), la.to_string());
  EXPECT_EQ(ask(la), "got 3");      // went to `second`
  EXPECT_EQ(ask(now[1]), "got 3");  // went to `third`
}

// --- the handshake seam ---------------------------------------------------------------------------

struct SeamLog {
  std::mutex mu;
  std::vector<SessionSummary> ended;
  std::vector<std::string> events;
};

// Test-only handshake: the client sends "host:port\n" (connect there), "PEND host:port\n" (resolved
// off-loop through post + resume), or "DENY\n". Replies "OK <local>\n" / "FAIL <errno>\n" / "NO\n".
class LineHandshake : public Handshake {
 public:
  LineHandshake(std::shared_ptr<SeamLog> log, HandshakeContext& ctx, HandshakeResume resume)
      : log_(std::move(log)), ctx_(ctx), resume_(std::move(resume)) {}
  HandshakeStep on_data(std::span<const uint8_t> received) override {
    std::string_view s(reinterpret_cast<const char*>(received.data()), received.size());
    auto nl = s.find('\n');
    HandshakeStep step;
    if (nl == std::string_view::npos) return step;  // kNeedMore
    std::string line(s.substr(0, nl));
    if (line == "DENY") {
      step.kind = HandshakeStep::Kind::kReject;
      step.reply = "NO\n";
      return step;
    }
    if (line.rfind("NOW ", 0) == 0) {  // resume() called before on_data returns kPending
      HandshakeStep next;
      next.kind = HandshakeStep::Kind::kConnect;
      next.upstream = *common::SockAddr::parse(line.substr(4));
      next.consumed = nl + 1;
      resume_(next);
      step.kind = HandshakeStep::Kind::kPending;
      return step;
    }
    if (line.rfind("PEND ", 0) == 0) {
      auto target = *common::SockAddr::parse(line.substr(5));
      size_t consumed = nl + 1;
      // Off-loop work: another thread posts the result back to the worker.
      std::thread([this, target, consumed] {
        std::this_thread::sleep_for(50ms);
        ctx_.post([this, target, consumed] {
          HandshakeStep next;
          next.kind = HandshakeStep::Kind::kConnect;
          next.upstream = target;
          next.consumed = consumed;
          resume_(next);
        });
      }).detach();
      step.kind = HandshakeStep::Kind::kPending;
      return step;
    }
    step.kind = HandshakeStep::Kind::kConnect;
    step.upstream = *common::SockAddr::parse(line);
    step.consumed = nl + 1;
    return step;
  }
  std::string on_upstream_connected(const common::SockAddr& local) override {
    return "OK " + local.to_string() + "\n";
  }
  std::string on_upstream_failed(int err) override { return "FAIL " + std::to_string(err) + "\n"; }
  void on_end(const SessionSummary& summary) override {
    std::lock_guard lk(log_->mu);
    log_->ended.push_back(summary);
  }

 private:
  std::shared_ptr<SeamLog> log_;
  HandshakeContext& ctx_;
  HandshakeResume resume_;
};

class LineFactory : public HandshakeFactory {
 public:
  explicit LineFactory(std::shared_ptr<SeamLog> log) : log_(std::move(log)) {}
  std::unique_ptr<Handshake> create(uint64_t, const common::SockAddr&, const common::SockAddr&,
                                    HandshakeContext& ctx, HandshakeResume resume) override {
    return std::make_unique<LineHandshake>(log_, ctx, std::move(resume));
  }

 private:
  std::shared_ptr<SeamLog> log_;
};

class HandshakeSeamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    log_ = std::make_shared<SeamLog>();
    RelayConfig cfg;
    Route r;
    r.listen = addr("127.0.0.1:0");
    r.handshake = std::make_shared<LineFactory>(log_);
    cfg.routes.push_back(r);
    cfg.workers = 1;
    cfg.log_sessions = false;
    cfg.handshake_timeout = 400ms;
    cfg.connect_timeout = 1s;
    relay_ = std::make_unique<Relay>(cfg);
    relay_->start();
    la_ = relay_->listen_addresses()[0];
  }
  std::string read_line(int fd) {
    std::string line;
    char c;
    while (::read(fd, &c, 1) == 1) {
      line.push_back(c);
      if (c == '\n') break;
    }
    return line;
  }
  SessionSummary last_summary() {
    EXPECT_TRUE(eventually([&] {
      std::lock_guard lk(log_->mu);
      return !log_->ended.empty();
    }));
    std::lock_guard lk(log_->mu);
    return log_->ended.empty() ? SessionSummary{} : log_->ended.back();
  }
  std::shared_ptr<SeamLog> log_;
  std::unique_ptr<Relay> relay_;
  common::SockAddr la_;
};

TEST_F(HandshakeSeamTest, ConnectForwardsGluedBytesFirstAndRepliesBeforeSplicing) {
  auto l = test::listen_any();
  auto up = test::local_addr(l.get());
  auto c = test::tcp_connect(la_);
  ASSERT_TRUE(c);
  test::set_timeout(c.get(), 5s);
  std::string first = up.to_string() + "\nSSH-2.0-glued\r\n";
  ASSERT_TRUE(test::write_all(c.get(), first.data(), first.size()));
  common::UniqueFd u(::accept(l.get(), nullptr, nullptr));
  ASSERT_TRUE(u);
  test::set_timeout(u.get(), 5s);
  common::SockAddr upstream_peer;
  upstream_peer.set_len(sshring::common::SockAddr::kCapacity);
  ::getpeername(u.get(), upstream_peer.get_mut(), upstream_peer.len_mut());
  std::string ok = read_line(c.get());
  EXPECT_EQ(ok, "OK " + upstream_peer.to_string() + "\n");
  ASSERT_TRUE(test::write_all(c.get(), "more", 4));
  char buf[19];
  ASSERT_TRUE(test::read_exact(u.get(), buf, 19));
  EXPECT_EQ(std::string(buf, 19), "SSH-2.0-glued\r\nmore");
  ASSERT_TRUE(test::write_all(u.get(), "back", 4));
  char b4[4];
  ASSERT_TRUE(test::read_exact(c.get(), b4, 4));
  EXPECT_EQ(std::string(b4, 4), "back");
  ::shutdown(c.get(), SHUT_WR);
  u.reset();
  std::string rest;
  test::read_to_eof(c.get(), rest);
  auto sum = last_summary();
  EXPECT_EQ(sum.reason, EndReason::kClosed);
  EXPECT_EQ(sum.upstream.to_string(), up.to_string());
  EXPECT_EQ(sum.upstream_local.to_string(), upstream_peer.to_string());
  EXPECT_EQ(sum.bytes_client_to_upstream, 19u);
  EXPECT_EQ(sum.bytes_upstream_to_client, 4u);
  EXPECT_NE(sum.session_id, 0u);
}

TEST_F(HandshakeSeamTest, PendingResumesThroughPost) {
  EchoServer echo;
  auto c = test::tcp_connect(la_);
  test::set_timeout(c.get(), 5s);
  std::string first = "PEND " + echo.addr().to_string() + "\n";
  ASSERT_TRUE(test::write_all(c.get(), first.data(), first.size()));
  EXPECT_EQ(read_line(c.get()).rfind("OK 127.0.0.1:", 0), 0u);
  ASSERT_TRUE(test::write_all(c.get(), "ping", 4));
  char b[4];
  ASSERT_TRUE(test::read_exact(c.get(), b, 4));
  EXPECT_EQ(std::string(b, 4), "ping");
}

TEST_F(HandshakeSeamTest, ResumeBeforePendingReturnsIsKept) {
  EchoServer echo;
  auto c = test::tcp_connect(la_);
  test::set_timeout(c.get(), 5s);
  std::string first = "NOW " + echo.addr().to_string() + "\n";
  ASSERT_TRUE(test::write_all(c.get(), first.data(), first.size()));
  EXPECT_EQ(read_line(c.get()).rfind("OK 127.0.0.1:", 0), 0u);
  ASSERT_TRUE(test::write_all(c.get(), "pong", 4));
  char b[4];
  ASSERT_TRUE(test::read_exact(c.get(), b, 4));
  EXPECT_EQ(std::string(b, 4), "pong");
}

TEST_F(HandshakeSeamTest, RejectSendsReplyAndNeverConnects) {
  auto c = test::tcp_connect(la_);
  test::set_timeout(c.get(), 5s);
  ASSERT_TRUE(test::write_all(c.get(), "DENY\n", 5));
  std::string all;
  ASSERT_TRUE(test::read_to_eof(c.get(), all));
  EXPECT_EQ(all, "NO\n");
  auto sum = last_summary();
  EXPECT_EQ(sum.reason, EndReason::kDenied);
  EXPECT_EQ(sum.upstream.len(), 0u);
  EXPECT_EQ(relay_->sessions_total(EndReason::kDenied), 1u);
}

TEST_F(HandshakeSeamTest, ConnectFailureSendsFailReply) {
  common::SockAddr dead;
  {
    auto l = test::listen_any();
    dead = test::local_addr(l.get());
  }
  auto c = test::tcp_connect(la_);
  test::set_timeout(c.get(), 5s);
  std::string first = dead.to_string() + "\n";
  ASSERT_TRUE(test::write_all(c.get(), first.data(), first.size()));
  std::string all;
  ASSERT_TRUE(test::read_to_eof(c.get(), all));
  EXPECT_EQ(all, "FAIL " + std::to_string(ECONNREFUSED) + "\n");
  EXPECT_EQ(last_summary().reason, EndReason::kConnectFailed);
}

TEST_F(HandshakeSeamTest, SilentClientTimesOut) {
  auto c = test::tcp_connect(la_);
  ASSERT_TRUE(test::write_all(c.get(), "127.0.0.1", 9));  // no newline: never decides
  ssize_t r = test::read_end(c.get(), 3s);
  EXPECT_TRUE(r == 0 || r == -ECONNRESET) << r;
  EXPECT_EQ(last_summary().reason, EndReason::kHandshakeTimeout);
}

TEST_F(HandshakeSeamTest, OversizePreambleIsDenied) {
  auto c = test::tcp_connect(la_);
  std::string big(kMaxHandshakeBytes + 100, 'z');
  test::write_all(c.get(), big.data(), big.size());
  ssize_t r = test::read_end(c.get(), 3s);
  EXPECT_TRUE(r == 0 || r == -ECONNRESET) << r;
  EXPECT_EQ(last_summary().reason, EndReason::kDenied);
}

// A relay started from a hand-over (start_from, the `--takeover` path) has the same front door as
// one started fresh: the per-source cap refuses the excess of a flood of silent connections at
// once, the first-byte timeout ends the rest, and a reload (SIGHUP) keeps it serving. It used to
// start without its Admission: every silent connection was held like a session, and the reload
// followed the null pointer.
TEST(RelayTest, ARelayThatTookOverKeepsItsAdmissionAndReloads) {
  auto log = std::make_shared<SeamLog>();
  RelayConfig cfg;
  Route r;
  r.listen = addr("127.0.0.1:0");
  r.handshake = std::make_shared<LineFactory>(log);
  cfg.routes.push_back(r);
  cfg.log_sessions = false;
  cfg.handshake_timeout = 10s;
  cfg.startups.per_source = 4;
  cfg.startups.first_byte_timeout = 300ms;
  // The old relay's listener, as a hand-over brings it.
  auto l = test::listen_any();
  const auto la = test::local_addr(l.get());
  cfg.routes[0].listen = la;
  RelayExport in;
  in.workers = 1;
  in.listeners.push_back({la.to_string(), 0, std::move(l)});
  Relay relay(cfg);
  relay.start_from(std::move(in));
  relay.resume_after_handover();
  ASSERT_NE(relay.admission(), nullptr) << "start_from left the relay without its admission";

  std::vector<common::UniqueFd> cs;
  for (int i = 0; i < 12; ++i) cs.push_back(test::tcp_connect(la));
  // Past the per-source cap: reset at accept. The first four: closed by the first-byte timeout.
  int ended = 0;
  for (auto& c : cs) {
    ASSERT_TRUE(c);
    ssize_t e = test::read_end(c.get(), 2s);
    if (e == 0 || e == -ECONNRESET) ++ended;
  }
  EXPECT_EQ(ended, 12) << "silent connections were held past the first-byte timeout";
  EXPECT_TRUE(eventually([&] { return relay.admission()->in_progress() == 0; }));

  RelayConfig next = cfg;
  next.startups.per_source = 2;
  relay.reload(next);
  EXPECT_EQ(relay.admission()->config().per_source, 2u);
  // Still serving: a client that speaks is relayed.
  auto up = test::listen_any();
  auto c = test::tcp_connect(la);
  ASSERT_TRUE(c);
  const std::string line = test::local_addr(up.get()).to_string() + "\n";
  ASSERT_TRUE(test::write_all(c.get(), line.data(), line.size()));
  pollfd p{up.get(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 3000), 1) << "the relay stopped serving after the reload";
  relay.stop();
  relay.wait();
}

}  // namespace
}  // namespace sshring::relay

namespace sshring::relay {
namespace {

// A relay with one live session (`held`) and a control socket, each hand-over attempt's result
// recorded; nothing here may commit.
struct HandoverRig {
  EchoServer echo;
  Relay relay{static_cfg(echo.addr())};
  common::UniqueFd held;
  sshring::testing::TempDir dir;
  std::mutex mu;
  std::vector<std::string> results;
  std::unique_ptr<HandoverServer> server;

  HandoverRig() {
    relay.start();
    held = test::tcp_connect(relay.listen_addresses()[0]);
    server = std::make_unique<HandoverServer>(
        relay, control(), [](const HandoverServer::Counts&) { ADD_FAILURE() << "committed"; },
        [this](std::string_view r) {
          std::lock_guard lock(mu);
          results.emplace_back(r);
        });
  }
  std::string control() { return dir.file("relay.control"); }
  std::vector<std::string> results_now() {
    std::lock_guard lock(mu);
    return results;
  }
};

// A fake new relay on `path`: HELLO, then everything through END. Returns the connection (empty
// on failure) and appends the descriptors of every SESSION to *sockets.
common::UniqueFd take_state(const std::string& path, std::vector<common::UniqueFd>* sockets) {
  common::UniqueFd s(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof(a.sun_path), "%s", path.c_str());
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return {};
  if (send_handover(s.get(), HandoverMsg::kHello, {{"protocol", kHandoverProtocol}}) != 0) return {};
  HandoverMessage m;
  do {
    if (recv_handover(s.get(), m, 10000) != 0) return {};
    if (m.type == HandoverMsg::kSession)
      for (auto& fd : m.fds) sockets->push_back(std::move(fd));
  } while (m.type != HandoverMsg::kEnd);
  return s;
}

// A peer on the control socket that takes the parked state and then answers with garbage (a REFUSE
// whose error is not a string, bytes that are not a message, or nothing) must not leave the relay
// parked: after each attempt it relays its live session and new clients again, and counts the
// attempt (refused, failed, failed). The first answer used to throw past the resume.
TEST(RelayTest, GarbageFromAHandoverPeerLeavesTheRelayServing) {
  HandoverRig rig;
  const auto la = rig.relay.listen_addresses()[0];
  const std::vector<std::function<void(int)>> answers = {
      [](int s) {
        EXPECT_EQ(send_handover(s, HandoverMsg::kRefuse, {{"error", 5}}), 0);
      },
      [](int s) { EXPECT_EQ(::send(s, "\x00\x06{not json", 11, MSG_NOSIGNAL), 11); }, [](int) {},  // hang up
  };
  for (size_t i = 0; i < answers.size(); ++i) {
    SCOPED_TRACE(i);
    // The previous round's echo client has closed, but the relay may not have ended its session yet;
    // parking it too would make the count below 2.
    ASSERT_TRUE(eventually([&] { return rig.relay.sessions_active() == 1; }));
    std::vector<common::UniqueFd> sockets;
    common::UniqueFd s = take_state(rig.control(), &sockets);
    ASSERT_TRUE(s);
    EXPECT_EQ(sockets.size(), 2u);  // one session
    answers[i](s.get());
    s.reset();
    ASSERT_TRUE(eventually([&] { return rig.results_now().size() == i + 1; }));
    expect_echo(la, 1000);  // new clients are relayed again
    char b = static_cast<char>('a' + i), back = 0;
    ASSERT_TRUE(test::write_all(rig.held.get(), &b, 1));
    ASSERT_TRUE(test::read_exact(rig.held.get(), &back, 1)) << "the parked session was not resumed";
    EXPECT_EQ(back, b);
  }
  EXPECT_EQ(rig.results_now(), (std::vector<std::string>{"refused", "failed", "failed"}));
  EXPECT_FALSE(rig.server->handed_over());
  rig.relay.stop();
  rig.relay.wait();
}

// The old relay sends its sessions' own sockets (no duplicates), so while a hand-over holds them
// nothing may close them: a stop that arrives then waits. Here the peer has taken the state (the
// very socket the client is connected to, then closed its copy, so a close in the relay would
// reach the client) when the relay is told to stop; the session stays open until the peer hangs
// up, and then the stop ends it.
TEST(RelayTest, AStopWhileAHandoverHoldsTheSessionsWaitsForIt) {
  HandoverRig rig;
  ASSERT_TRUE(eventually([&] { return rig.relay.sessions_active() == 1; }));
  std::vector<common::UniqueFd> sockets;
  common::UniqueFd s = take_state(rig.control(), &sockets);
  ASSERT_TRUE(s);
  ASSERT_EQ(sockets.size(), 2u);
  // The first is the relay's end of our connection.
  common::SockAddr peer, mine;
  peer.set_len(common::SockAddr::kCapacity);
  mine.set_len(common::SockAddr::kCapacity);
  ASSERT_EQ(::getpeername(sockets[0].get(), peer.get_mut(), peer.len_mut()), 0);
  ASSERT_EQ(::getsockname(rig.held.get(), mine.get_mut(), mine.len_mut()), 0);
  EXPECT_EQ(peer.to_string(), mine.to_string());
  sockets.clear();

  rig.relay.stop();
  pollfd p{rig.held.get(), POLLIN | POLLRDHUP, 0};
  EXPECT_EQ(::poll(&p, 1, 500), 0) << "the relay closed a session the hand-over holds";
  EXPECT_EQ(rig.relay.sessions_active(), 1);
  s.reset();  // the peer hangs up: the relay takes its session back, and the stop ends it
  char b = 0;
  EXPECT_FALSE(test::read_exact(rig.held.get(), &b, 1)) << "the session outlived the stop";
  EXPECT_TRUE(eventually([&] { return rig.results_now().size() == 1; }));
  EXPECT_FALSE(rig.server->handed_over());
  ASSERT_TRUE(eventually([&] { return rig.relay.finished(); })) << "the stop was lost";
  rig.relay.wait();
  EXPECT_EQ(rig.relay.sessions_active(), 0);
}

// A new relay that takes the state and then says nothing would hold a stopping relay for the whole
// READY timeout (60 s); abort() (the second signal) cuts it short: the relay resumes its sessions,
// counts a failed hand-over, and the stop that waited ends them.
TEST(RelayTest, AnAbortedHandoverLetsTheWaitingStopGoAhead) {
  HandoverRig rig;
  ASSERT_TRUE(eventually([&] { return rig.relay.sessions_active() == 1; }));
  rig.server->abort();  // nothing in progress: a no-op
  std::vector<common::UniqueFd> sockets;
  common::UniqueFd s = take_state(rig.control(), &sockets);
  ASSERT_TRUE(s);
  sockets.clear();
  rig.relay.stop();
  EXPECT_EQ(rig.relay.sessions_active(), 1);
  rig.server->abort();
  // Well inside the 60 s the hand-over would otherwise wait for READY.
  pollfd p{rig.held.get(), POLLIN | POLLRDHUP, 0};
  ASSERT_EQ(::poll(&p, 1, 10000), 1) << "the stop still waits for the hand-over";
  char b = 0;
  EXPECT_LE(::recv(rig.held.get(), &b, 1, 0), 0) << "the session outlived the stop";
  ASSERT_TRUE(eventually([&] { return rig.relay.finished(); })) << "the stop did not go ahead";
  rig.relay.wait();
  // The server thread reports the result after it resumed the sessions, so possibly after the stop.
  EXPECT_TRUE(eventually([&] { return !rig.results_now().empty(); }));
  EXPECT_EQ(rig.results_now(), std::vector<std::string>{"failed"});
  EXPECT_FALSE(rig.server->handed_over());
}

}  // namespace
}  // namespace sshring::relay
