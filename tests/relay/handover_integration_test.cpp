// Live hand-over (`sshring relay --takeover`, relay/handover.h) with real processes: a real sshd, an
// authenticated relay process and real ssh clients (fd passing, so each ssh's socket is the relay's
// client socket). Each session streams random data through `cat` on the target and hashes what it
// sent and what came back; the sessions survive three hand-overs in a row, a new process that
// crashes half-way, and a hand-over while clients are connecting, with digests equal and the
// audit chain verifying across every process.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "tests/metrics/scrape.h"
#include "tests/relay/relay_fixtures.h"
#include "tests/support/process.h"
#include "tests/support/sshd.h"

namespace t = sshring::testing;
using namespace std::chrono_literals;

namespace {

// How many ssh sessions stream through the hand-overs (SSHRING_HANDOVER_SESSIONS overrides).
int session_count() {
  const char* v = std::getenv("SSHRING_HANDOVER_SESSIONS");
  return v ? std::atoi(v) : 200;
}

// How many clients connect around a hand-over (SSHRING_HANDOVER_CLIENTS overrides).
int client_count() {
  const char* v = std::getenv("SSHRING_HANDOVER_CLIENTS");
  return v ? std::atoi(v) : 1000;
}

struct Sha {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  Sha() { EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr); }
  ~Sha() { EVP_MD_CTX_free(ctx); }
  void add(const char* p, size_t n) { EVP_DigestUpdate(ctx, p, n); }
  std::string hex() {
    unsigned char d[32];
    unsigned len = 0;
    EVP_DigestFinal_ex(ctx, d, &len);
    static const char* k = "0123456789abcdef";
    std::string out;
    for (unsigned i = 0; i < len; ++i) out += {k[d[i] >> 4], k[d[i] & 15]};
    return out;
  }
};

// One ssh child with pipes on stdin/stdout: we write random bytes, the target's cat sends them back.
struct Stream {
  pid_t pid = -1;
  int in = -1, out = -1;  // our ends
  Sha sent, got;
  uint64_t n_sent = 0, n_got = 0;
  std::string first_line;  // the remote shell's pid: the same process from start to end
  bool in_closed = false, out_closed = false;
  int status = -1;
};

void spawn(Stream& s, const std::vector<std::string>& argv, const std::string& err_path) {
  int pin[2], pout[2];
  if (::pipe2(pin, O_CLOEXEC) != 0 || ::pipe2(pout, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
  s.pid = ::fork();
  if (s.pid == 0) {
    ::dup2(pin[0], 0);
    ::dup2(pout[1], 1);
    int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(err, 2);
    std::vector<char*> a;
    for (auto& x : argv) a.push_back(const_cast<char*>(x.c_str()));
    a.push_back(nullptr);
    ::execvp(a[0], a.data());
    ::_exit(127);
  }
  ::close(pin[0]);
  ::close(pout[1]);
  s.in = pin[1];
  s.out = pout[0];
  ::fcntl(s.in, F_SETFL, O_NONBLOCK);
  ::fcntl(s.out, F_SETFL, O_NONBLOCK);
}

class Handover : public ::testing::Test {
 protected:
  t::TempDir dir;
  t::Sshd sshd{t::Sshd::Options{.max_startups = 2000}};
  sshring::relay::test::BannerServer banner;  // the target of the thousand connecting clients
  uint16_t port = t::free_port();
  uint16_t metrics_port = t::free_port();  // each generation binds it once the one before let go
  std::string control = dir.file("relay.control");
  int generation = 0;
  // Process groups of hold_sessions(): the pipeline's sleep and `sshring connect` outlive the shell
  // a Process stops, and would hold the test's output open until the sleep ends.
  std::vector<pid_t> held_groups;
  ~Handover() override {
    for (pid_t g : held_groups) ::kill(-g, SIGKILL);
  }

  void SetUp() override {
    ::signal(SIGPIPE, SIG_IGN);  // a write to an ssh that died must fail the test, not kill it
    t::write_file(dir.file("policy.yaml"),
                  "version: 1\nroles:\n  - name: ops\n    max_sessions: 5000\n    targets:\n"
                  "      - cidrs: [127.0.0.1/32]\n        ports: [" +
                      std::to_string(sshd.port()) + ", " + std::to_string(banner.addr().port()) +
                      "]\nprincipals:\n  - name: tester\n    roles: [ops]\n    keys: [\"" +
                      sshd.user_pubkey() + "\"]\n");
  }

  std::vector<std::string> relay_argv(bool takeover) {
    std::vector<std::string> a = {
        t::sshring_bin(), "relay", "--listen", "127.0.0.1:" + std::to_string(port), "--policy",
        dir.file("policy.yaml"), "--relay-id", "ho-relay", "--audit-log", dir.file("audit.jsonl"),
        "--control-socket", control, "--workers", "2",
        // Every client here is 127.0.0.1, and a thousand connect around one
        // hand-over: admit them all, so what is tested is the hand-over
        // (admission's caps have their own tests).
        "--max-startups-per-source", "2048", "--max-startups", "2048:30:4096", "--max-handshakes-per-source",
        "2048", "--quiet", "--metrics", "127.0.0.1:" + std::to_string(metrics_port)};
    if (takeover) a.push_back("--takeover");
    return a;
  }

  // `wrap`: a command the relay runs under (prlimit, say).
  t::Process start_relay(bool takeover, std::vector<std::string> env = {},
                         std::vector<std::string> wrap = {}) {
    ++generation;
    std::vector<std::string> argv = relay_argv(takeover);
    argv.insert(argv.begin(), wrap.begin(), wrap.end());
    return t::Process(
        argv, t::Process::Options{.stderr_path = dir.file("relay" + std::to_string(generation) + ".log"),
                                  .env = std::move(env)});
  }

  std::string log(int gen) { return t::read_file(dir.file("relay" + std::to_string(gen) + ".log")); }

  // `n` sessions held open by `sshring connect` (stdin a sleeping pipe), each past sshd's banner.
  std::vector<t::Process> hold_sessions(int n, const std::string& prefix) {
    std::vector<t::Process> cs;
    for (int i = 0; i < n; ++i) {
      cs.emplace_back(
          std::vector<std::string>{
              "sh", "-c",
              "sleep 90 | " + t::sshring_bin() + " connect --relay 127.0.0.1:" + std::to_string(port) +
                  " --relay-id ho-relay --principal tester --identity " + sshd.user_key() + " 127.0.0.1 " +
                  std::to_string(sshd.port()) + " > " + dir.file(prefix + std::to_string(i))},
          t::Process::Options{});
      held_groups.push_back(cs.back().pid());
    }
    for (int i = 0; i < n; ++i) {
      const std::string f = dir.file(prefix + std::to_string(i));
      for (int k = 0; k < 100 && t::read_file(f).rfind("SSH-2.0", 0) != 0; ++k)
        std::this_thread::sleep_for(100ms);
      if (t::read_file(f).rfind("SSH-2.0", 0) != 0) ADD_FAILURE() << "session " << i << " did not reach sshd";
    }
    return cs;
  }

  // The serving relay's sample `key` (e.g. sshring_relay_handovers_total{result="failed"}), waiting up
  // to 10 s for the port (a relay that took over binds it only after the old one let go).
  std::optional<double> metric(const std::string& key) {
    for (int i = 0; i < 100; ++i) {
      try {
        return sshring::metrics::testing::sample(
            sshring::metrics::testing::http_get("127.0.0.1", metrics_port, "/metrics"), key);
      } catch (const std::exception&) {
        std::this_thread::sleep_for(100ms);
      }
    }
    return std::nullopt;
  }

  // The sample once it equals `want` (the old relay counts an attempt just after it logged and
  // answered it), or its last value after 10 s.
  std::optional<double> metric_when(const std::string& key, double want) {
    std::optional<double> v;
    for (int i = 0; i < 100; ++i) {
      v = metric(key);
      if (v == want) break;
      std::this_thread::sleep_for(100ms);
    }
    return v;
  }

  bool wait_for_control() {
    for (int i = 0; i < 200; ++i) {
      if (::access(control.c_str(), F_OK) == 0) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }

  std::vector<std::string> ssh_argv(const std::string& remote) {
    std::vector<std::string> a = sshd.ssh_base_args();
    // ssh's ConnectTimeout also bounds its wait for the banner; 200 key exchanges at once on two
    // cores can take longer than the 10 s the base arguments give (ssh keeps the first value given).
    for (auto& x : a)
      if (x.rfind("ConnectTimeout=", 0) == 0) x = "ConnectTimeout=120";
    std::string pc = t::sshring_bin() + " connect --relay 127.0.0.1:" + std::to_string(port) +
                     " --relay-id ho-relay --principal tester --identity " + sshd.user_key() + " %h %p";
    a.insert(a.end(), {"-p", std::to_string(sshd.port()), "-o", "ProxyCommand=" + pc, "-o",
                       "ProxyUseFdpass=yes", "127.0.0.1", remote});
    return a;
  }

  // One round over every stream: write up to `chunk` random bytes, read what came back.
  static void pump(std::vector<std::unique_ptr<Stream>>& ss, std::mt19937& rng, size_t chunk) {
    std::string buf(chunk, '\0');
    for (auto& sp : ss) {
      Stream& s = *sp;
      if (!s.in_closed && chunk > 0 && s.n_sent - s.n_got < (1u << 20)) {
        for (auto& c : buf) c = static_cast<char>(rng());
        ssize_t n = ::write(s.in, buf.data(), buf.size());
        if (n > 0) {
          s.sent.add(buf.data(), static_cast<size_t>(n));
          s.n_sent += static_cast<uint64_t>(n);
        }
      }
      char rb[65536];
      for (;;) {
        ssize_t n = ::read(s.out, rb, sizeof(rb));
        if (n <= 0) {
          if (n == 0) s.out_closed = true;
          break;
        }
        size_t off = 0;
        if (s.first_line.empty() || s.first_line.back() != '\n') {  // "pid\n" before the echo
          while (off < static_cast<size_t>(n) && (s.first_line.empty() || s.first_line.back() != '\n'))
            s.first_line += rb[off++];
        }
        s.got.add(rb + off, static_cast<size_t>(n) - off);
        s.n_got += static_cast<uint64_t>(n) - off;
      }
    }
  }

  // Streams for `d`, keeping traffic going.
  static void stream_for(std::vector<std::unique_ptr<Stream>>& ss, std::mt19937& rng,
                         std::chrono::milliseconds d) {
    auto end = std::chrono::steady_clock::now() + d;
    while (std::chrono::steady_clock::now() < end) {
      pump(ss, rng, 4096);
      std::this_thread::sleep_for(20ms);
    }
  }

  void alive(std::vector<std::unique_ptr<Stream>>& ss, const char* when) {
    for (size_t i = 0; i < ss.size(); ++i) {
      int st = 0;
      EXPECT_EQ(::waitpid(ss[i]->pid, &st, WNOHANG), 0)
          << "ssh " << i << " ended " << when << ": "
          << t::read_file(dir.file("ssh" + std::to_string(i) + ".err"));
      EXPECT_FALSE(ss[i]->out_closed) << "session " << i << " closed " << when;
    }
  }

  // Closes every stdin, drains until each ssh exits; checks digests and the remote pid line.
  static void finish(std::vector<std::unique_ptr<Stream>>& ss, std::mt19937& rng) {
    for (auto& s : ss) {
      ::close(s->in);
      s->in_closed = true;
    }
    auto deadline = std::chrono::steady_clock::now() + 120s;
    for (;;) {
      pump(ss, rng, 0);
      bool all = true;
      for (auto& s : ss) all = all && s->out_closed;
      if (all || std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(20ms);
    }
    for (size_t i = 0; i < ss.size(); ++i) {
      Stream& s = *ss[i];
      int st = 0;
      ::waitpid(s.pid, &st, 0);
      ::close(s.out);
      EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "ssh " << i << " status " << st;
      EXPECT_GT(s.n_sent, 0u);
      EXPECT_EQ(s.n_sent, s.n_got) << "session " << i;
      EXPECT_EQ(s.sent.hex(), s.got.hex()) << "session " << i;
      EXPECT_FALSE(s.first_line.empty()) << "session " << i;
    }
  }

  std::vector<nlohmann::json> audit_records() {
    std::vector<nlohmann::json> out;
    std::ifstream in(dir.file("audit.jsonl"));
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) out.push_back(nlohmann::json::parse(line));
    return out;
  }

  // `sshring relay --takeover`; returns its process once the old one has exited with 0.
  t::Process hand_over(t::Process& old, int old_gen) {
    t::Process next = start_relay(true);
    auto rc = old.wait(60s);
    EXPECT_EQ(rc, 0) << "old relay: " << log(old_gen) << "\nnew relay: " << log(generation);
    return next;
  }
};

}  // namespace

TEST_F(Handover, SessionsSurviveThreeHandoversAndACrashedTakeover) {
  t::Process relay = start_relay(false);
  ASSERT_TRUE(t::wait_for_port("127.0.0.1", port)) << log(1);
  ASSERT_TRUE(wait_for_control()) << log(1);
  const int n = session_count();
  std::mt19937 rng(42);
  std::vector<std::unique_ptr<Stream>> ss;
  for (int i = 0; i < n; ++i) {
    ss.push_back(std::make_unique<Stream>());
    spawn(*ss.back(), ssh_argv("echo $$; exec cat"), dir.file("ssh" + std::to_string(i) + ".err"));
    if (i % 10 == 9) std::this_thread::sleep_for(400ms);  // sshd's MaxStartups and the CPUs
  }
  // Every SSH session established end to end (the remote shell answered) before the first hand-over:
  // ssh's own ConnectTimeout still runs during its key exchange.
  // Only reads until then, so the key exchanges have the CPUs.
  auto deadline = std::chrono::steady_clock::now() + 240s;
  auto is_up = [](const Stream& s) { return !s.first_line.empty() && s.first_line.back() == '\n'; };
  auto established = [&] {
    for (auto& sp : ss)
      if (!is_up(*sp)) return false;
    return true;
  };
  while (!established() && std::chrono::steady_clock::now() < deadline) {
    pump(ss, rng, 0);
    std::this_thread::sleep_for(50ms);
  }
  if (!established()) {
    std::string why;
    for (size_t i = 0; i < ss.size(); ++i)
      if (!is_up(*ss[i]))
        why += "session " + std::to_string(i) + ": " +
               t::read_file(dir.file("ssh" + std::to_string(i) + ".err")) + "\n";
    FAIL() << "not every session was established:\n" << why << log(1);
  }
  stream_for(ss, rng, 2s);
  alive(ss, "before the first hand-over");

  // A new process that dies after taking everything, before READY: the old relay keeps serving.
  t::Process crash = start_relay(true, {"SSHRING_TEST_HANDOVER_CRASH=before_ready"});
  int crash_gen = generation;
  auto crc = crash.wait(60s);
  EXPECT_EQ(crc, 128 + SIGABRT) << log(crash_gen);
  EXPECT_TRUE(relay.running());
  for (int i = 0; i < 100 && log(1).find("keeps every session") == std::string::npos; ++i)
    std::this_thread::sleep_for(100ms);
  EXPECT_NE(log(1).find("keeps every session"), std::string::npos) << log(1);
  EXPECT_EQ(metric_when("sshring_relay_handovers_total{result=\"failed\"}", 1.0), 1.0);
  EXPECT_EQ(metric("sshring_relay_handovers_total{result=\"done\"}"), 0.0);
  stream_for(ss, rng, 2s);
  alive(ss, "after the crashed takeover");

  int gen = 1;
  for (int round = 0; round < 3; ++round) {
    t::Process next = hand_over(relay, gen);
    gen = generation;
    relay = std::move(next);
    EXPECT_TRUE(relay.running()) << log(gen);
    for (int i = 0; i < 100 && log(gen).find("took over") == std::string::npos; ++i)
      std::this_thread::sleep_for(100ms);
    EXPECT_NE(log(gen).find("took over"), std::string::npos) << log(gen);
    // The new process serves metrics on the same port, its policy families included (its reloader
    // counted the first load before the port was bound), and its own hand-over count starts at 0.
    EXPECT_GE(metric("sshring_policy_reloads_total{result=\"success\"}").value_or(0), 1.0) << log(gen);
    EXPECT_EQ(metric("sshring_relay_handovers_total{result=\"done\"}"), 0.0);
    stream_for(ss, rng, 3s);
    alive(ss, ("after hand-over " + std::to_string(round + 1)).c_str());
  }
  finish(ss, rng);
  relay.signal(SIGTERM);
  EXPECT_EQ(relay.wait(60s), 0) << log(gen);

  std::string out;
  EXPECT_EQ(t::run({t::sshring_bin(), "audit", "verify", dir.file("audit.jsonl")}, &out), 0) << out;
  int sent = 0, received = 0, ends = 0, starts = 0;
  for (const auto& r : audit_records()) {
    if (r["type"] == "relay_handover") {
      (r["side"] == "sent" ? sent : received)++;
      EXPECT_EQ(r["sessions"], n) << r.dump();
    }
    if (r["type"] == "session_start") ++starts;
    if (r["type"] == "session_end") {
      ++ends;
      EXPECT_EQ(r["principal"], "tester") << r.dump();
      EXPECT_EQ(r["reason"], "closed") << r.dump();
      EXPECT_GT(r["bytes_up"].get<uint64_t>(), 0u) << r.dump();
    }
  }
  EXPECT_EQ(sent, 3);
  EXPECT_EQ(received, 3);
  EXPECT_EQ(starts, n);  // no session restarted
  EXPECT_EQ(ends, n);
}

TEST_F(Handover, NoClientFailsWhileConnectingDuringAHandover) {
  t::Process relay = start_relay(false);
  ASSERT_TRUE(t::wait_for_port("127.0.0.1", port)) << log(1);
  ASSERT_TRUE(wait_for_control()) << log(1);
  // Clients that handshake and read the target's banner, started before, during and after the hand-over,
  // each after a random delay of up to 3 s: at the hand-over some are in the backlog, some in the
  // handshake, some relaying.
  const int clients = client_count();
  std::vector<t::Process> cs;
  cs.reserve(static_cast<size_t>(clients));
  auto launch = [&](int i) {
    cs.emplace_back(
        std::vector<std::string>{"sh", "-c",
                                 "sleep $((RANDOM % 3)).$((RANDOM % 10)) 2>/dev/null; " + t::sshring_bin() +
                                     " connect --relay 127.0.0.1:" + std::to_string(port) +
                                     " --relay-id ho-relay --principal tester --identity " + sshd.user_key() +
                                     " 127.0.0.1 " + std::to_string(banner.addr().port()) +
                                     " < /dev/null | head -c 7 > " + dir.file("c" + std::to_string(i))},
        t::Process::Options{});
  };
  for (int i = 0; i < clients / 2; ++i) launch(i);
  t::Process next = start_relay(true);
  for (int i = clients / 2; i < clients; ++i) launch(i);
  EXPECT_EQ(relay.wait(60s), 0) << log(1) << log(2);
  int ok = 0;
  for (int i = 0; i < clients; ++i) {
    EXPECT_EQ(cs[i].wait(60s), 0) << "client " << i;
    if (t::read_file(dir.file("c" + std::to_string(i))) == "SSH-2.0") ++ok;
  }
  EXPECT_EQ(ok, clients) << log(1) << log(2);
  EXPECT_TRUE(next.running()) << log(2);
}

size_t open_fds(int pid) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd"))
    ++n;
  return n;
}

// The old relay hands its sessions' own descriptors over, duplicating none: one at its descriptor
// limit, with room for the control connection and its listeners only, hands over every session.
// (Before, it needed a second descriptor per socket and so could hand over at most half its limit.)
TEST_F(Handover, ARelayAtItsDescriptorLimitHandsOverEverySession) {
  t::Process relay = start_relay(false);
  ASSERT_TRUE(t::wait_for_port("127.0.0.1", port)) << log(1);
  ASSERT_TRUE(wait_for_control()) << log(1);
  const int kSessions = 12;
  std::vector<t::Process> cs = hold_sessions(kSessions, "s");
  // The control connection, and a duplicate of each of the 2 workers' listeners.
  const std::string limit = std::to_string(open_fds(relay.pid()) + 3);
  ASSERT_EQ(t::run({"prlimit", "--pid", std::to_string(relay.pid()), "--nofile=" + limit + ":" + limit}), 0);

  t::Process next = start_relay(true);
  EXPECT_EQ(relay.wait(30s), 0) << log(1);
  EXPECT_NE(log(2).find("msg=\"took over\" sessions=12"), std::string::npos) << log(2);
  EXPECT_TRUE(next.running()) << log(2);
  EXPECT_EQ(metric_when("sshring_relay_sessions_active", kSessions), double{kSessions}) << log(2);
  for (int i = 0; i < kSessions; ++i) EXPECT_TRUE(cs[i].running()) << "session " << i << " ended";
  std::vector<t::Process> late = hold_sessions(1, "late");
  EXPECT_EQ(metric_when("sshring_relay_sessions_active", kSessions + 1.0), kSessions + 1.0) << log(2);
}

// A new relay without room for the descriptors it is sent says so (the limit, and the fix), tells
// the old relay, which counts a failed hand-over, keeps its sessions and serves on.
TEST_F(Handover, ANewRelayOutOfDescriptorsGivesUpAndTheOldRelayServesOn) {
  t::Process relay = start_relay(false);
  ASSERT_TRUE(t::wait_for_port("127.0.0.1", port)) << log(1);
  ASSERT_TRUE(wait_for_control()) << log(1);
  const int kSessions = 40;
  std::vector<t::Process> cs = hold_sessions(kSessions, "s");
  // Enough to start and connect, not for 80 sockets.
  t::Process next = start_relay(true, {}, {"prlimit", "--nofile=64:64", "--"});
  EXPECT_EQ(next.wait(30s), 5) << log(2);
  EXPECT_NE(log(2).find("ran out of descriptors receiving the sessions"), std::string::npos) << log(2);
  EXPECT_NE(log(2).find("raise LimitNOFILE"), std::string::npos) << log(2);
  EXPECT_NE(log(1).find("ran out of descriptors"), std::string::npos) << log(1);
  EXPECT_TRUE(relay.running()) << log(1);
  EXPECT_EQ(metric_when("sshring_relay_handovers_total{result=\"failed\"}", 1.0), 1.0);
  for (int i = 0; i < kSessions; ++i) EXPECT_TRUE(cs[i].running()) << "session " << i << " ended";
  // The old relay still takes new sessions, and a relay with room takes everything over.
  std::vector<t::Process> late = hold_sessions(1, "late");
  t::Process third = start_relay(true);
  EXPECT_EQ(relay.wait(30s), 0) << log(1);
  EXPECT_NE(log(3).find("msg=\"took over\" sessions=41"), std::string::npos) << log(3);
  for (int i = 0; i < kSessions; ++i) EXPECT_TRUE(cs[i].running()) << "session " << i << " ended";
}

TEST_F(Handover, StateOfAnotherVersionIsRefusedAndTheOldRelayServesOn) {
  t::Process relay = start_relay(false, {"SSHRING_TEST_HANDOVER_STATE_VERSION=99"});
  ASSERT_TRUE(t::wait_for_port("127.0.0.1", port)) << log(1);
  ASSERT_TRUE(wait_for_control()) << log(1);
  std::mt19937 rng(7);
  std::vector<std::unique_ptr<Stream>> ss;
  ss.push_back(std::make_unique<Stream>());
  spawn(*ss.back(), ssh_argv("echo $$; exec cat"), dir.file("ssh0.err"));
  stream_for(ss, rng, 3s);
  t::Process next = start_relay(true);
  EXPECT_EQ(next.wait(60s), 4) << log(2);
  EXPECT_NE(log(2).find("state version 99 cannot be read"), std::string::npos) << log(2);
  EXPECT_TRUE(relay.running());
  EXPECT_EQ(metric_when("sshring_relay_handovers_total{result=\"refused\"}", 1.0), 1.0);
  stream_for(ss, rng, 2s);
  alive(ss, "after the refused takeover");
  finish(ss, rng);
  // No relay at all on the control socket: exit 3, nothing taken.
  std::string out;
  EXPECT_EQ(t::run({t::sshring_bin(), "relay", "--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:2",
                    "--control-socket", dir.file("nobody.sock"), "--takeover"},
                   &out),
            3);
}
