// The built `sshring relay` as a child process: bulk integrity, many sessions, idle cost, signals,
// fd exhaustion and a real OpenSSH session. Clients and upstreams live in this test process, so
// /proc/<relay pid> shows only the relay's own descriptors, threads and memory.
#include <fcntl.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <poll.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "tests/relay/relay_fixtures.h"
#include "tests/support/process.h"
#include "tests/support/sshd.h"

namespace sshring::relay {
namespace {

using namespace std::chrono_literals;
using testing::Process;
using testing::TempDir;

struct RelayProc {
  TempDir dir;
  uint16_t port = 0;
  Process proc;
  common::SockAddr addr;

  explicit RelayProc(std::vector<std::string> extra, const std::string& shell_prefix = "") {
    port = testing::free_port();
    std::vector<std::string> argv = {testing::sshring_bin(), "relay", "--listen",
                                     "127.0.0.1:" + std::to_string(port)};
    argv.insert(argv.end(), extra.begin(), extra.end());
    Process::Options o;
    o.stderr_path = dir.file("relay.log");
    if (!shell_prefix.empty()) {
      std::string cmd = shell_prefix + " exec";
      for (auto& a : argv) cmd += " '" + a + "'";
      argv = {"/bin/sh", "-c", cmd};
    }
    proc = Process(argv, o);
    addr = *common::SockAddr::parse("127.0.0.1:" + std::to_string(port));
    // Probe with a raw connect that carries no data (an upstream-less session ends by itself).
    auto end = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < end) {
      if (testing::read_file(log_path()).find("relay listening") != std::string::npos) return;
      std::this_thread::sleep_for(20ms);
    }
    ADD_FAILURE() << "relay did not start: " << testing::read_file(log_path());
  }
  std::string log_path() const { return dir.file("relay.log"); }
  std::string log() const { return testing::read_file(log_path()); }
  pid_t pid() const { return proc.pid(); }
};

template <typename F>
bool eventually(F f, std::chrono::milliseconds limit = 10s) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (f()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return f();
}

size_t count_occurrences(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

double cpu_seconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(in)), {});
  auto p = s.rfind(')');
  std::istringstream rest(s.substr(p + 2));
  std::string f;
  unsigned long long ut = 0, st = 0;
  for (int i = 3; i <= 15; ++i) {
    rest >> f;
    if (i == 14) ut = std::stoull(f);
    if (i == 15) st = std::stoull(f);
  }
  return static_cast<double>(ut + st) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

std::string hex(const unsigned char* d, unsigned n) {
  static const char* k = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < n; ++i) {
    s.push_back(k[d[i] >> 4]);
    s.push_back(k[d[i] & 15]);
  }
  return s;
}

// Sends `total` pseudo-random bytes (seeded) and returns their SHA-256.
std::string send_random(int fd, uint64_t seed, uint64_t total) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<uint8_t> buf(1 << 20);
  uint64_t st = seed;
  for (uint64_t sent = 0; sent < total;) {
    size_t n = std::min<uint64_t>(buf.size(), total - sent);
    test::fill_random(st, buf.data(), n);
    EVP_DigestUpdate(ctx, buf.data(), n);
    if (!test::write_all(fd, buf.data(), n)) break;
    sent += n;
  }
  ::shutdown(fd, SHUT_WR);
  unsigned char md[32];
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  return hex(md, len);
}

// Reads to EOF; returns SHA-256 and the byte count.
std::pair<std::string, uint64_t> recv_hash(int fd) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<uint8_t> buf(1 << 20);
  uint64_t total = 0;
  while (true) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    EVP_DigestUpdate(ctx, buf.data(), static_cast<size_t>(n));
    total += static_cast<uint64_t>(n);
  }
  unsigned char md[32];
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  return {hex(md, len), total};
}

TEST(RelayProcessTest, OneGiBEachWayAtOnceKeepsSha256) {
  constexpr uint64_t kBytes = 1ull << 30;
  auto l = test::listen_any();
  RelayProc relay({"--upstream", test::local_addr(l.get()).to_string(), "--workers", "2"});
  std::string up_sent, up_got, cl_sent, cl_got;
  uint64_t up_n = 0, cl_n = 0;
  auto t0 = std::chrono::steady_clock::now();
  std::thread upstream([&] {
    common::UniqueFd u(::accept(l.get(), nullptr, nullptr));
    std::thread tx([&] { up_sent = send_random(u.get(), 7, kBytes); });
    std::tie(up_got, up_n) = recv_hash(u.get());
    tx.join();
  });
  auto c = test::tcp_connect(relay.addr);
  ASSERT_TRUE(c);
  std::thread tx([&] { cl_sent = send_random(c.get(), 11, kBytes); });
  std::tie(cl_got, cl_n) = recv_hash(c.get());
  tx.join();
  upstream.join();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(up_n, kBytes);
  EXPECT_EQ(cl_n, kBytes);
  EXPECT_EQ(cl_sent, up_got);
  EXPECT_EQ(up_sent, cl_got);
  EXPECT_NE(cl_sent, up_sent);
  c.reset();
  EXPECT_TRUE(eventually([&] { return relay.log().find("reason=closed") != std::string::npos; }));
  RecordProperty("seconds", std::to_string(secs));
  std::cout << "2 GiB relayed in " << secs << " s; relay CPU " << cpu_seconds(relay.pid()) << " s\n";
}

TEST(RelayProcessTest, ThousandConcurrentSessionsLeaveNoFds) {
  test::EchoServer echo;
  RelayProc relay({"--upstream", echo.addr().to_string(), "--workers", "2", "--quiet"});
  // The baseline once start-up has settled: a descriptor it holds only briefly (CI once counted one
  // that was gone a moment later) must not read as a leak or a loss.
  int base = test::count_fds(relay.pid());
  for (int i = 0; i < 50; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const int now = test::count_fds(relay.pid());
    if (now == base && i >= 2) break;
    base = now;
  }
  int base_pipes = test::count_pipe_fds(relay.pid());
  ASSERT_GT(base, 0);
  constexpr int kN = 1000;
  std::vector<common::UniqueFd> cs;
  for (int i = 0; i < kN; ++i) {
    cs.push_back(test::tcp_connect(relay.addr));
    ASSERT_TRUE(cs.back()) << i << ": " << strerror(errno);
    test::set_timeout(cs.back().get(), 10s);
  }
  // All open at once, then all carry data.
  EXPECT_TRUE(eventually([&] { return test::count_fds(relay.pid()) >= base + 2 * kN; }))
      << test::count_fds(relay.pid());
  for (int i = 0; i < kN; ++i) {
    std::string msg = "session " + std::to_string(i) + std::string(1000, '.');
    ASSERT_TRUE(test::write_all(cs[i].get(), msg.data(), msg.size()));
  }
  for (int i = 0; i < kN; ++i) {
    std::string want = "session " + std::to_string(i) + std::string(1000, '.');
    std::string got(want.size(), 0);
    ASSERT_TRUE(test::read_exact(cs[i].get(), got.data(), got.size())) << i;
    ASSERT_EQ(got, want);
  }
  for (auto& c : cs) ::shutdown(c.get(), SHUT_WR);
  for (auto& c : cs) {
    std::string rest;
    EXPECT_TRUE(test::read_to_eof(c.get(), rest));
  }
  cs.clear();
  // Every socket is gone; pipes are only the pool's free ones (2 workers x 4 pipes x 2 ends at most).
  auto sockets_and_others = [&] { return test::count_fds(relay.pid()) - test::count_pipe_fds(relay.pid()); };
  EXPECT_TRUE(eventually([&] { return sockets_and_others() == base - base_pipes; }))
      << "relay non-pipe fds " << sockets_and_others() << " vs " << base - base_pipes << " before";
  EXPECT_LE(test::count_pipe_fds(relay.pid()), base_pipes + 2 * 4 * 2);
  EXPECT_TRUE(eventually([&] { return echo.open_connections() == 0; }));
  EXPECT_EQ(echo.accepted(), static_cast<uint64_t>(kN));
}

class IdleSessions : public ::testing::TestWithParam<const char*> {};

TEST_P(IdleSessions, TwoThousandAddNoThreadsAndHoldNoPipes) {
  test::EchoServer echo;
  RelayProc relay(
      {"--upstream", echo.addr().to_string(), "--workers", "2", "--quiet", "--splice-mode", GetParam()});
  // Exercise the data path once so the pipe pool and any io-wq threads exist before the baseline.
  {
    auto c = test::tcp_connect(relay.addr);
    std::string m(300000, 'p'), back(300000, 0);
    std::thread w([&] { test::write_all(c.get(), m.data(), m.size()); });
    ASSERT_TRUE(test::read_exact(c.get(), back.data(), back.size()));
    w.join();
  }
  std::this_thread::sleep_for(300ms);
  int threads0 = test::count_threads(relay.pid());
  int pipes0 = test::count_pipe_fds(relay.pid());
  long rss0 = test::rss_kib(relay.pid());
  int fds0 = test::count_fds(relay.pid());
  constexpr int kN = 2000;
  std::vector<common::UniqueFd> cs;
  for (int i = 0; i < kN; ++i) {
    cs.push_back(test::tcp_connect(relay.addr));
    ASSERT_TRUE(cs.back()) << i << ": " << strerror(errno);
  }
  ASSERT_TRUE(eventually([&] { return test::count_fds(relay.pid()) >= fds0 + 2 * kN; }));
  std::this_thread::sleep_for(500ms);
  int threads1 = test::count_threads(relay.pid());
  int pipes1 = test::count_pipe_fds(relay.pid());
  long rss1 = test::rss_kib(relay.pid());
  std::cout << "idle: threads " << threads0 << " -> " << threads1 << ", pipe fds " << pipes0 << " -> "
            << pipes1 << ", RSS " << rss0 << " -> " << rss1 << " KiB (" << (rss1 - rss0) * 1024.0 / kN
            << " B/session)\n";
  EXPECT_EQ(threads1, threads0);
  EXPECT_LE(pipes1, pipes0);     // the pool's free pipes at most; no session holds one
  EXPECT_LE(pipes0, 2 * 2 * 4);  // workers x pool x 2 ends
  EXPECT_LT((rss1 - rss0) * 1024 / kN, 2048) << "user-space bytes per idle session";
  // Still alive: each session still relays.
  for (int i = 0; i < kN; i += 97) {
    test::set_timeout(cs[i].get(), 5s);
    ASSERT_TRUE(test::write_all(cs[i].get(), "x", 1));
    char b;
    ASSERT_TRUE(test::read_exact(cs[i].get(), &b, 1));
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, IdleSessions, ::testing::Values("inline", "ring"));

TEST(RelayProcessTest, SlowReaderKeepsRelayMemoryBounded) {
  auto l = test::listen_any();
  RelayProc relay({"--upstream", test::local_addr(l.get()).to_string(), "--workers", "1"});
  constexpr uint64_t kBytes = 128ull << 20;
  std::atomic<uint64_t> sent{0};
  std::thread upstream([&] {
    common::UniqueFd u(::accept(l.get(), nullptr, nullptr));
    std::vector<uint8_t> buf(1 << 20, 0x5a);
    while (sent < kBytes) {
      if (!test::write_all(u.get(), buf.data(), buf.size())) break;
      sent += buf.size();
    }
  });
  auto c = test::tcp_connect(relay.addr);
  ASSERT_TRUE(c);
  long rss0 = test::rss_kib(relay.pid());
  long peak = rss0;
  uint64_t got = 0;
  std::vector<uint8_t> buf(1 << 20);
  // Slow phase: 16 KiB every 10 ms for 2 s; the writer must stall, the relay must not buffer.
  for (int i = 0; i < 200; ++i) {
    ssize_t n = ::read(c.get(), buf.data(), 16384);
    if (n > 0) got += static_cast<uint64_t>(n);
    peak = std::max(peak, test::rss_kib(relay.pid()));
    std::this_thread::sleep_for(10ms);
  }
  // Socket buffers and one pipe hold a few MiB in flight at most; the rest must wait at the writer.
  EXPECT_LT(sent.load(), kBytes / 2) << "the writer was not held back";
  EXPECT_LT(peak - rss0, 16 * 1024) << "relay RSS grew " << peak - rss0 << " KiB";
  // Fast phase: everything arrives.
  while (got < kBytes) {
    ssize_t n = ::read(c.get(), buf.data(), buf.size());
    if (n <= 0) break;
    got += static_cast<uint64_t>(n);
  }
  upstream.join();
  EXPECT_EQ(got, kBytes);
}

TEST(RelayProcessTest, SigtermDrainsThenSecondSignalEndsAtOnce) {
  test::EchoServer echo;
  RelayProc relay({"--upstream", echo.addr().to_string(), "--drain-timeout", "30s"});
  auto a = test::tcp_connect(relay.addr);
  test::set_timeout(a.get(), 5s);
  ASSERT_TRUE(test::write_all(a.get(), "1", 1));
  char b;
  ASSERT_TRUE(test::read_exact(a.get(), &b, 1));
  relay.proc.signal(SIGTERM);
  ASSERT_TRUE(eventually([&] { return relay.log().find("draining") != std::string::npos; }));
  std::this_thread::sleep_for(200ms);
  EXPECT_FALSE(test::tcp_connect(relay.addr)) << "new connections must be refused while draining";
  // The session in flight still works and completes.
  std::string m(100000, 'm'), back(100000, 0);
  std::thread w([&] { test::write_all(a.get(), m.data(), m.size()); });
  ASSERT_TRUE(test::read_exact(a.get(), back.data(), back.size()));
  w.join();
  EXPECT_EQ(back, m);
  EXPECT_TRUE(relay.proc.running());
  ::shutdown(a.get(), SHUT_WR);
  std::string rest;
  test::read_to_eof(a.get(), rest);
  auto code = relay.proc.wait(5s);
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0);
  EXPECT_NE(relay.log().find("reason=closed"), std::string::npos);

  // A second signal ends everything at once.
  RelayProc r2({"--upstream", echo.addr().to_string(), "--drain-timeout", "60s"});
  auto s = test::tcp_connect(r2.addr);
  ASSERT_TRUE(eventually([&] { return echo.open_connections() >= 1; }));
  r2.proc.signal(SIGTERM);
  ASSERT_TRUE(eventually([&] { return r2.log().find("draining") != std::string::npos; }));
  auto t0 = std::chrono::steady_clock::now();
  r2.proc.signal(SIGINT);
  auto code2 = r2.proc.wait(5s);
  ASSERT_TRUE(code2.has_value());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  EXPECT_NE(r2.log().find("reason=drained"), std::string::npos);
}

TEST(RelayProcessTest, SighupReloadsConfigFile) {
  test::EchoServer first;
  auto l2 = test::listen_any();
  TempDir dir;
  std::string cfg = dir.file("relay.yaml");
  uint16_t port = testing::free_port();
  auto write_cfg = [&](const std::string& up) {
    testing::write_file(
        cfg, "routes:\n  - listen: 127.0.0.1:" + std::to_string(port) + "\n    upstream: " + up + "\n");
  };
  write_cfg(first.addr().to_string());
  Process::Options o;
  o.stderr_path = dir.file("log");
  Process p({testing::sshring_bin(), "relay", "--config", cfg}, o);
  ASSERT_TRUE(testing::wait_for_port("127.0.0.1", port));
  auto via = *common::SockAddr::parse("127.0.0.1:" + std::to_string(port));
  write_cfg(test::local_addr(l2.get()).to_string());
  p.signal(SIGHUP);
  ASSERT_TRUE(eventually(
      [&] { return testing::read_file(dir.file("log")).find("config reloaded") != std::string::npos; }));
  auto c = test::tcp_connect(via);
  ASSERT_TRUE(c);
  pollfd pfd{l2.get(), POLLIN, 0};
  EXPECT_EQ(::poll(&pfd, 1, 3000), 1) << "the new upstream got no connection";
  // A broken file keeps the running config.
  testing::write_file(cfg, "routes: [\n");
  p.signal(SIGHUP);
  ASSERT_TRUE(eventually(
      [&] { return testing::read_file(dir.file("log")).find("reload failed") != std::string::npos; }));
  EXPECT_TRUE(p.running());
}

// A relay that took over (`--takeover`) reloads its config file on SIGHUP like any other; it used
// to follow a null admission pointer there and die with SIGSEGV, dropping every session.
TEST(RelayProcessTest, SighupAfterTakeoverReloadsAndServes) {
  test::EchoServer first;
  auto l2 = test::listen_any();
  TempDir dir;
  std::string cfg = dir.file("relay.yaml");
  uint16_t port = testing::free_port();
  auto write_cfg = [&](const std::string& up) {
    testing::write_file(
        cfg, "routes:\n  - listen: 127.0.0.1:" + std::to_string(port) + "\n    upstream: " + up + "\n");
  };
  write_cfg(first.addr().to_string());
  const std::vector<std::string> argv = {
      testing::sshring_bin(), "relay", "--config", cfg, "--control-socket", dir.file("ctl/relay.control")};
  Process::Options o;
  o.stderr_path = dir.file("old.log");
  Process old(argv, o);
  ASSERT_TRUE(testing::wait_for_port("127.0.0.1", port)) << testing::read_file(dir.file("old.log"));
  // The control socket comes up just after the listeners.
  ASSERT_TRUE(eventually([&] { return ::access(dir.file("ctl/relay.control").c_str(), F_OK) == 0; }));
  std::vector<std::string> take = argv;
  take.push_back("--takeover");
  o.stderr_path = dir.file("new.log");
  Process p(take, o);
  ASSERT_EQ(old.wait(30s), 0) << testing::read_file(dir.file("old.log"))
                              << testing::read_file(dir.file("new.log"));
  ASSERT_TRUE(eventually(
      [&] { return testing::read_file(dir.file("new.log")).find("took over") != std::string::npos; }));
  write_cfg(test::local_addr(l2.get()).to_string());
  p.signal(SIGHUP);
  ASSERT_TRUE(eventually([&] {
    return !p.running() ||
           testing::read_file(dir.file("new.log")).find("config reloaded") != std::string::npos;
  })) << testing::read_file(dir.file("new.log"));
  ASSERT_TRUE(p.running()) << "the relay died on SIGHUP: " << testing::read_file(dir.file("new.log"));
  auto via = *common::SockAddr::parse("127.0.0.1:" + std::to_string(port));
  auto c = test::tcp_connect(via);
  ASSERT_TRUE(c);
  pollfd pfd{l2.get(), POLLIN, 0};
  EXPECT_EQ(::poll(&pfd, 1, 3000), 1) << "the new upstream got no connection";
  EXPECT_TRUE(p.running());
}

// `--takeover` takes listeners and sessions only from a relay of its own user (or root): a process
// of another user serving the control socket (here nobody, in a directory it may not write: the
// socket was bound by root and served after dropping to nobody) is refused before HELLO, with the
// uid named, exit 3, nothing bound. It used to adopt whatever that process sent.
TEST(RelayProcessTest, TakeoverRefusesAControlSocketServedByAnotherUser) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to serve a socket as another user";
  TempDir dir;
  const std::string path = dir.file("relay.control");
  int report[2];
  ASSERT_EQ(::pipe2(report, O_CLOEXEC), 0);
  const pid_t fake = ::fork();
  ASSERT_GE(fake, 0);
  if (fake == 0) {  // the fake old relay: only syscalls from here on
    int s = ::socket(AF_UNIX, SOCK_SEQPACKET, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof(a.sun_path), "%s", path.c_str());
    if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::chmod(path.c_str(), 0666) != 0 ||
        ::syscall(SYS_setresgid, 65534, 65534, 65534) != 0 ||
        ::syscall(SYS_setresuid, 65534, 65534, 65534) != 0 || ::listen(s, 4) != 0)
      ::_exit(10);
    pollfd p{s, POLLIN, 0};
    if (::poll(&p, 1, 20000) != 1) ::_exit(11);
    int c = ::accept(s, nullptr, nullptr);
    char buf[256];
    pollfd q{c, POLLIN, 0};
    // A HELLO would come at once; the refusing relay closes the connection instead.
    const bool hello = ::poll(&q, 1, 5000) == 1 && ::recv(c, buf, sizeof(buf), MSG_DONTWAIT) > 0;
    const char r = hello ? 'H' : 'N';
    (void)!::write(report[1], &r, 1);
    ::_exit(0);
  }
  ::close(report[1]);
  for (int i = 0; i < 200 && ::access(path.c_str(), F_OK) != 0; ++i) std::this_thread::sleep_for(10ms);
  const uint16_t port = testing::free_port();
  std::string out;
  const int rc = testing::sh(testing::sshring_bin() + " relay --listen 127.0.0.1:" + std::to_string(port) +
                                 " --upstream 127.0.0.1:1 --control-socket " + path + " --takeover 2>&1",
                             &out);
  char r = '?';
  EXPECT_EQ(::read(report[0], &r, 1), 1);
  ::close(report[0]);
  int st = 0;
  ::waitpid(fake, &st, 0);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  EXPECT_EQ(rc, 3) << out;
  EXPECT_NE(out.find("runs as uid 65534"), std::string::npos) << out;
  EXPECT_EQ(r, 'N') << "the new relay sent HELLO to a process of another user";
  EXPECT_FALSE(test::tcp_connect(*common::SockAddr::parse("127.0.0.1:" + std::to_string(port))))
      << "the refused relay serves anyway";
}

// True when nothing listens on 127.0.0.1:port (TIME_WAIT left by closed sessions does not count).
bool no_listener(uint16_t port) {
  common::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  int one = 1;
  (void)::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  const auto a = *common::SockAddr::parse("127.0.0.1:" + std::to_string(port));
  return ::bind(fd.get(), a.get(), a.len()) == 0;
}

// An authenticated relay (a process) and a HELLO captured from `sshring connect` by a listener that
// only reads, to be sent again: what an attacker on the path replays.
class ReplayedHello {
 public:
  ReplayedHello() {
    EXPECT_EQ(testing::run({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", dir.file("key")}), 0);
    std::string pub = testing::read_file(dir.file("key.pub"));
    while (!pub.empty() && (pub.back() == '\n' || pub.back() == '\r')) pub.pop_back();
    testing::write_file(dir.file("policy.yaml"),
                        "version: 1\nroles:\n  - name: ops\n    targets:\n"
                        "      - cidrs: [127.0.0.1/32]\n        ports: [" +
                            std::to_string(tport) +
                            "]\nprincipals:\n  - name: tester\n    roles: [ops]\n"
                            "    keys: [\"" +
                            pub + "\"]\n");
    argv = {testing::sshring_bin(),
            "relay",
            "--listen",
            via.to_string(),
            "--policy",
            dir.file("policy.yaml"),
            "--relay-id",
            "rp",
            "--workers",
            "1",
            "--control-socket",
            dir.file("ctl/relay.control")};
  }

  // The preamble `sshring connect` sends, as it sends it.
  std::string capture() {
    auto listener = test::listen_any();
    Process client({testing::sshring_bin(), "connect", "--relay",
                    test::local_addr(listener.get()).to_string(), "--relay-id", "rp", "--principal", "tester",
                    "--identity", dir.file("key"), "127.0.0.1", std::to_string(tport)},
                   Process::Options{.stderr_path = dir.file("connect.log")});
    pollfd pc{listener.get(), POLLIN, 0};
    EXPECT_EQ(::poll(&pc, 1, 10000), 1) << testing::read_file(dir.file("connect.log"));
    common::UniqueFd cc(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    std::string frame;
    for (char buf[4096]; cc;) {
      pollfd q{cc.get(), POLLIN, 0};
      if (::poll(&q, 1, frame.empty() ? 10000 : 300) != 1) break;
      const ssize_t n = ::recv(cc.get(), buf, sizeof(buf), 0);
      if (n <= 0) break;
      frame.append(buf, static_cast<size_t>(n));
    }
    cc.reset();
    client.signal(SIGTERM);
    (void)client.wait(5s);
    return frame;
  }

  // Sends `frame` to the relay; true when the relay connected to the target.
  bool use(const std::string& frame) {
    auto c = test::tcp_connect(via);
    EXPECT_TRUE(c);
    EXPECT_TRUE(test::write_all(c.get(), frame.data(), frame.size()));
    pollfd p{target.get(), POLLIN, 0};
    if (::poll(&p, 1, 2000) != 1) {
      reply.clear();
      for (char buf[512];;) {
        pollfd q{c.get(), POLLIN, 0};
        if (::poll(&q, 1, 1000) != 1) break;
        const ssize_t n = ::recv(c.get(), buf, sizeof(buf), 0);
        if (n <= 0) break;
        reply.append(buf, static_cast<size_t>(n));
      }
      return false;
    }
    common::UniqueFd up(::accept4(target.get(), nullptr, nullptr, SOCK_CLOEXEC));
    return true;
  }

  bool logged(const std::string& file, const std::string& what) {
    return eventually([&] { return testing::read_file(dir.file(file)).find(what) != std::string::npos; });
  }

  TempDir dir;
  common::UniqueFd target = test::listen_any();
  uint16_t tport = test::local_addr(target.get()).port();
  uint16_t port = testing::free_port();
  common::SockAddr via = *common::SockAddr::parse("127.0.0.1:" + std::to_string(port));
  std::vector<std::string> argv;
  std::string reply;  // what the relay answered the last refused use()
};

// The replay cache moves with a live hand-over: a HELLO used with the old relay is refused by the one
// that took over (`replayed`), inside the skew window.
// From a relay that hands over no replay cache (state version 1, an older release: the test hook
// makes the old relay announce it), the new one refuses HELLOs from before it took over (`stale`).
TEST(RelayProcessTest, AHelloUsedBeforeATakeoverIsRefusedAfterIt) {
  for (const char* version : {"", "1"}) {
    SCOPED_TRACE(*version ? "from a state version 1 relay" : "replay cache handed over");
    ReplayedHello t;
    Process::Options oo{.stderr_path = t.dir.file("old.log")};
    if (*version) oo.env.push_back(std::string("SSHRING_TEST_HANDOVER_STATE_VERSION=") + version);
    Process old(t.argv, oo);
    ASSERT_TRUE(testing::wait_for_port("127.0.0.1", t.port)) << testing::read_file(t.dir.file("old.log"));
    const std::string frame = t.capture();
    ASSERT_FALSE(frame.empty());
    EXPECT_TRUE(t.use(frame)) << testing::read_file(t.dir.file("old.log"));
    EXPECT_FALSE(t.use(frame)) << "replayed to the same process";
    ASSERT_TRUE(eventually([&] { return ::access(t.dir.file("ctl/relay.control").c_str(), F_OK) == 0; }));
    std::vector<std::string> take = t.argv;
    take.push_back("--takeover");
    Process next(take, Process::Options{.stderr_path = t.dir.file("new.log")});
    ASSERT_EQ(old.wait(30s), 0) << testing::read_file(t.dir.file("old.log"));
    ASSERT_TRUE(t.logged("new.log", "took over")) << testing::read_file(t.dir.file("new.log"));
    EXPECT_FALSE(t.use(frame)) << "a HELLO used before the takeover was accepted again after it";
    EXPECT_TRUE(t.logged("new.log", *version ? "reason=stale" : "reason=replayed"))
        << testing::read_file(t.dir.file("new.log"));
    EXPECT_TRUE(t.use(t.capture())) << "a fresh HELLO: " << testing::read_file(t.dir.file("new.log"));
    EXPECT_TRUE(next.running());
  }
}

// A plain restart has no replay cache to take over, whether the relay stopped cleanly or crashed: the
// new process refuses every HELLO timestamped before it started (`stale`), so one the old process
// accepted cannot be used again; a HELLO made after the start goes through.
TEST(RelayProcessTest, AHelloUsedBeforeARestartOrACrashIsRefusedAfterIt) {
  for (int sig : {SIGTERM, SIGKILL}) {
    SCOPED_TRACE(sig == SIGTERM ? "stopped with SIGTERM" : "killed");
    ReplayedHello t;
    Process old(t.argv, Process::Options{.stderr_path = t.dir.file("old.log")});
    ASSERT_TRUE(testing::wait_for_port("127.0.0.1", t.port)) << testing::read_file(t.dir.file("old.log"));
    const std::string frame = t.capture();
    ASSERT_FALSE(frame.empty());
    EXPECT_TRUE(t.use(frame)) << testing::read_file(t.dir.file("old.log"));
    old.signal(sig);
    (void)old.wait(30s);
    // A killed relay's listener outlives the process until the kernel has torn down its io_uring
    // (a few ms to ~100 ms here, off the exit path); a relay started sooner shares the port with it
    // (SO_REUSEPORT), and what lands there is reset. What is tested here is the replay, not that.
    ASSERT_TRUE(eventually([&] { return no_listener(t.port); }));
    Process next(t.argv, Process::Options{.stderr_path = t.dir.file("new.log")});
    ASSERT_TRUE(testing::wait_for_port("127.0.0.1", t.port)) << testing::read_file(t.dir.file("new.log"));
    EXPECT_FALSE(t.use(frame)) << "a HELLO used before the restart was accepted again after it";
    EXPECT_TRUE(t.logged("new.log", "reason=stale")) << testing::read_file(t.dir.file("new.log"));
    EXPECT_NE(t.reply.find("it restarted just now"), std::string::npos)
        << "the client is told why: " << t.reply;
    const std::string fresh = t.capture();
    EXPECT_TRUE(t.use(fresh)) << "a HELLO made after the restart: "
                              << testing::read_file(t.dir.file("new.log"));
  }
}

TEST(RelayProcessTest, OutOfDescriptorsIsSurvivedWithoutSpinning) {
  test::EchoServer echo;
  // 40 descriptors: a handful of sessions fit, the rest hit EMFILE.
  RelayProc relay({"--upstream", echo.addr().to_string(), "--workers", "1", "--quiet"}, "ulimit -n 40;");
  std::vector<common::UniqueFd> cs;
  for (int i = 0; i < 60; ++i) cs.push_back(test::tcp_connect_nb(relay.addr));
  ASSERT_TRUE(eventually([&] { return relay.log().find("out of file descriptors") != std::string::npos; }))
      << relay.log();
  double cpu0 = cpu_seconds(relay.pid());
  std::this_thread::sleep_for(1s);
  double cpu1 = cpu_seconds(relay.pid());
  EXPECT_LT(cpu1 - cpu0, 0.2) << "relay spins while out of descriptors";
  cs.clear();
  // Descriptors come back: the relay serves again.
  ASSERT_TRUE(eventually(
      [&] {
        auto c = test::tcp_connect(relay.addr);
        if (!c) return false;
        test::set_timeout(c.get(), 1s);
        char b = 'q';
        return test::write_all(c.get(), &b, 1) && test::read_exact(c.get(), &b, 1) && b == 'q';
      },
      10s));
  EXPECT_TRUE(relay.proc.running());
}

TEST(RelayProcessTest, RealOpenSshSessionThroughRelay) {
  testing::Sshd sshd;
  RelayProc relay({"--upstream", "127.0.0.1:" + std::to_string(sshd.port())});
  TempDir dir;
  std::string input(4 << 20, 0);
  uint64_t st = 99;
  test::fill_random(st, reinterpret_cast<uint8_t*>(input.data()), input.size());
  testing::write_file(dir.file("in"), input);
  std::string want;
  ASSERT_EQ(testing::run({"sha256sum", dir.file("in")}, &want), 0);
  want = want.substr(0, 64);
  auto args = sshd.ssh_base_args();
  args.insert(args.end(), {"-o", "HostKeyAlias=[127.0.0.1]:" + std::to_string(sshd.port()), "-p",
                           std::to_string(relay.port), "127.0.0.1", "sha256sum"});
  std::string cmd;
  for (auto& a : args) cmd += "'" + a + "' ";
  std::string out;
  ASSERT_EQ(testing::sh(cmd + "< '" + dir.file("in") + "'", &out), 0) << out << relay.log();
  EXPECT_EQ(out.substr(0, 64), want);
  EXPECT_TRUE(eventually([&] { return relay.log().find("reason=closed") != std::string::npos; }))
      << relay.log();
}

std::string http_get(uint16_t port, const std::string& path) {
  auto c = test::tcp_connect(*common::SockAddr::parse("127.0.0.1:" + std::to_string(port)));
  if (!c) return {};
  test::set_timeout(c.get(), 5s);
  std::string req = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  test::write_all(c.get(), req.data(), req.size());
  std::string out;
  test::read_to_eof(c.get(), out);
  return out;
}

TEST(RelayProcessTest, MetricsAndAuditRecordEverySession) {
  test::EchoServer echo;
  TempDir dir;
  uint16_t mport = testing::free_port();
  RelayProc relay({"--upstream", echo.addr().to_string(), "--metrics", "127.0.0.1:" + std::to_string(mport),
                   "--audit-log", dir.file("audit.jsonl"), "--workers", "2"});
  ASSERT_TRUE(testing::wait_for_port("127.0.0.1", mport));
  for (int i = 0; i < 3; ++i) {
    auto c = test::tcp_connect(relay.addr);
    test::set_timeout(c.get(), 5s);
    ASSERT_TRUE(test::write_all(c.get(), "hello", 5));
    ::shutdown(c.get(), SHUT_WR);
    std::string back;
    ASSERT_TRUE(test::read_to_eof(c.get(), back));
    EXPECT_EQ(back, "hello");
  }
  std::string body;
  ASSERT_TRUE(eventually([&] {
    body = http_get(mport, "/metrics");
    return body.find("sshring_relay_sessions_total{outcome=\"closed\"} 3") != std::string::npos;
  })) << body;
  EXPECT_NE(body.find("sshring_relay_bytes_total{direction=\"client_to_upstream\"} 15"), std::string::npos)
      << body;
  EXPECT_NE(body.find("sshring_relay_pipes_in_use 0"), std::string::npos) << body;
  relay.proc.signal(SIGTERM);
  ASSERT_TRUE(relay.proc.wait(10s).has_value());
  std::string audit = testing::read_file(dir.file("audit.jsonl"));
  EXPECT_EQ(count_occurrences(audit, "\"type\":\"session_end\""), 3u) << audit;
  EXPECT_EQ(count_occurrences(audit, "\"reason\":\"closed\""), 3u) << audit;
  EXPECT_NE(audit.find("\"upstream_local\":\"127.0.0.1:"), std::string::npos) << audit;
  EXPECT_NE(audit.find("\"bytes_up\":5"), std::string::npos) << audit;
}

}  // namespace
}  // namespace sshring::relay
