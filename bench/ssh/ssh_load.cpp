// SSH sessions at scale for bench/ssh/scale (not a test): a libssh2 load generator and a holder of
// many sessions, through the relay (signed preamble, then SSH end to end) or straight to sshd.
//
//   ssh_load rate --target H:P --user U --key FILE [--relay H:P --relay-id ID --principal P
//                 --relay-key FILE] [--in-flight 64] [--seconds 20] [--max N]
//       Whole SSH sessions (TCP connect, preamble, key exchange, publickey auth, a channel with the
//       sftp subsystem and one SFTP round trip, close), `in-flight` at a time, until `seconds` pass
//       or `max` sessions are done. Prints one JSON line: sessions per second, setup p50/p99.
//       sshd must serve `Subsystem sftp internal-sftp`: no shell starts per session.
//   ssh_load hold --count N --ready FILE --go FILE [the same connection flags; --targets H:P,H:P,...
//                 spreads sessions over several sshd]
//       Opens N authenticated SSH sessions (each with an sftp channel), touches READY, waits for GO
//       (at most --hold-max seconds), then checks every session still answers an SFTP round trip.
//   ssh_load relay-hold --count N --ready FILE --go FILE --relay H:P --target H:P ...
//       N authenticated relay sessions (preamble only) to a plain sink, held and checked the same way.
//   --source-ip A binds every connection to source address A (127.0.0.x: more ephemeral ports).
//
// Every loop is bounded by count and time. Exit 0 when every session did what it should, else 1.
#include <arpa/inet.h>
#include <fcntl.h>
#include <libssh2.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"
#include "common/unique_fd.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace client = sshring::client;

struct Args {
  std::string mode;
  std::vector<std::string> targets;  // "H:P"
  std::string user, key, relay, relay_id = "bench", principal = "bench", relay_key, source_ip;
  int in_flight = 64, count = 0, max = 1000000, threads = 16;
  double seconds = 20, hold_max = 600;
  std::string ready, go;
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr, "ssh_load: %s (see the comment at the top of bench/ssh/ssh_load.cpp)\n", why.c_str());
  std::exit(2);
}

Args parse(int argc, char** argv) {
  if (argc < 2) usage("missing mode");
  Args a;
  a.mode = argv[1];
  for (int i = 2; i < argc; i += 2) {
    if (i + 1 >= argc) usage(std::string("missing value for ") + argv[i]);
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--target" || k == "--targets") {
      for (size_t p = 0; p <= v.size();) {
        size_t c = v.find(',', p);
        if (c == std::string::npos) c = v.size();
        a.targets.push_back(v.substr(p, c - p));
        p = c + 1;
      }
    } else if (k == "--user") {
      a.user = v;
    } else if (k == "--key") {
      a.key = v;
    } else if (k == "--relay") {
      a.relay = v;
    } else if (k == "--relay-id") {
      a.relay_id = v;
    } else if (k == "--principal") {
      a.principal = v;
    } else if (k == "--relay-key") {
      a.relay_key = v;
    } else if (k == "--source-ip") {
      a.source_ip = v;
    } else if (k == "--in-flight") {
      a.in_flight = std::stoi(v);
    } else if (k == "--threads") {
      a.threads = std::stoi(v);
    } else if (k == "--count") {
      a.count = std::stoi(v);
    } else if (k == "--max") {
      a.max = std::stoi(v);
    } else if (k == "--seconds") {
      a.seconds = std::stod(v);
    } else if (k == "--hold-max") {
      a.hold_max = std::stod(v);
    } else if (k == "--ready") {
      a.ready = v;
    } else if (k == "--go") {
      a.go = v;
    } else {
      usage("unknown flag " + k);
    }
  }
  if (a.targets.empty()) usage("--target is required");
  if (a.mode != "relay-hold" && (a.user.empty() || a.key.empty())) usage("--user and --key are required");
  if ((a.mode == "relay-hold") && a.relay.empty()) usage("relay-hold needs --relay");
  if ((a.mode == "hold" || a.mode == "relay-hold") && (a.count <= 0 || a.ready.empty() || a.go.empty()))
    usage("hold needs --count, --ready and --go");
  return a;
}

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5))];
}

// A TCP connection to `target`, through the relay (preamble done) or straight.
sshring::common::UniqueFd open_tcp(const Args& a, const client::Signer* signer, const std::string& target) {
  auto [host, port] = client::split_host_port(target, "--target");
  auto [chost, cport] = a.relay.empty() ? std::pair{host, port} : client::split_host_port(a.relay, "--relay");
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(cport);
  if (::inet_pton(AF_INET, chost.c_str(), &sa.sin_addr) != 1)
    throw std::runtime_error("addresses must be IPv4");
  sshring::common::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  if (!a.source_ip.empty()) {
    // One loopback source address has ~28,000 ephemeral ports towards one listener: tens of
    // thousands of sessions to one relay port need several source addresses.
    sockaddr_in src{};
    src.sin_family = AF_INET;
    if (::inet_pton(AF_INET, a.source_ip.c_str(), &src.sin_addr) != 1)
      throw std::runtime_error("bad --source-ip");
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&src), sizeof src) != 0)
      throw std::runtime_error(std::string("bind: ") + std::strerror(errno));
  }
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0)
    throw std::runtime_error(std::string("connect: ") + std::strerror(errno));
  if (!a.relay.empty()) {
    const auto now_ms = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                  std::chrono::system_clock::now().time_since_epoch())
                                                  .count());
    client::handshake_on(fd.get(), client::make_hello(*signer, a.relay_id, a.principal, host, port, now_ms),
                         std::chrono::seconds(60));
  }
  return fd;
}

struct Ssh {
  sshring::common::UniqueFd fd;
  LIBSSH2_SESSION* session = nullptr;
  LIBSSH2_CHANNEL* channel = nullptr;
  Ssh() = default;
  Ssh(const Ssh&) = delete;
  Ssh& operator=(const Ssh&) = delete;
  ~Ssh() {
    if (channel) libssh2_channel_free(channel);
    if (session) {
      libssh2_session_disconnect(session, "bye");
      libssh2_session_free(session);
    }
  }
};

// One SFTP INIT -> VERSION exchange on a channel running the sftp subsystem: proof that the whole path
// (client, relay, sshd) carries a request and its answer.
bool sftp_roundtrip(LIBSSH2_CHANNEL* ch) {
  static const unsigned char init[9] = {0, 0, 0, 5, 1, 0, 0, 0, 3};  // length 5, SSH_FXP_INIT, version 3
  if (libssh2_channel_write(ch, reinterpret_cast<const char*>(init), sizeof init) != sizeof init)
    return false;
  unsigned char head[5];
  size_t got = 0;
  while (got < sizeof head) {
    ssize_t n = libssh2_channel_read(ch, reinterpret_cast<char*>(head) + got, sizeof head - got);
    if (n <= 0) return false;
    got += static_cast<size_t>(n);
  }
  const uint32_t len = (uint32_t{head[0]} << 24) | (head[1] << 16) | (head[2] << 8) | head[3];
  if (head[4] != 2 || len < 5 || len > 4096) return false;  // SSH_FXP_VERSION
  std::vector<char> rest(len - 1);
  got = 0;
  while (got < rest.size()) {
    ssize_t n = libssh2_channel_read(ch, rest.data() + got, rest.size() - got);
    if (n <= 0) return false;
    got += static_cast<size_t>(n);
  }
  return true;
}

// Key exchange, publickey auth and a session channel with sshd's in-process sftp server (no shell
// starts: the user's shell profile stays out of the numbers), checked with one SFTP round trip.
// Throws with what failed.
std::unique_ptr<Ssh> open_ssh(const Args& a, const client::Signer* signer, const std::string& target) {
  auto s = std::make_unique<Ssh>();
  s->fd = open_tcp(a, signer, target);
  s->session = libssh2_session_init();
  if (!s->session) throw std::runtime_error("libssh2_session_init");
  libssh2_session_set_timeout(s->session, 60000);
  if (libssh2_session_handshake(s->session, s->fd.get()) != 0) throw std::runtime_error("ssh handshake");
  const std::string pub = a.key + ".pub";
  if (libssh2_userauth_publickey_fromfile(s->session, a.user.c_str(), pub.c_str(), a.key.c_str(), "") != 0)
    throw std::runtime_error("ssh userauth");
  s->channel = libssh2_channel_open_session(s->session);
  if (!s->channel) throw std::runtime_error("ssh channel");
  if (libssh2_channel_subsystem(s->channel, "sftp") != 0) throw std::runtime_error("ssh subsystem sftp");
  if (!sftp_roundtrip(s->channel)) throw std::runtime_error("sftp round trip");
  return s;
}

int rate(const Args& a, const client::Signer* signer) {
  std::atomic<int> started{0}, errors{0};
  std::mutex mu;
  std::vector<double> setup;
  std::string first_error;
  const auto t0 = Clock::now();
  const auto until = t0 + std::chrono::duration<double>(a.seconds);
  std::vector<std::thread> ts;
  for (int w = 0; w < a.in_flight; ++w) {
    ts.emplace_back([&, w] {
      while (Clock::now() < until && started.fetch_add(1) < a.max) {
        const auto s0 = Clock::now();
        try {
          auto s = open_ssh(a, signer, a.targets[static_cast<size_t>(w) % a.targets.size()]);
          libssh2_channel_send_eof(s->channel);
          libssh2_channel_close(s->channel);
          libssh2_channel_wait_closed(s->channel);
          std::lock_guard lock(mu);
          setup.push_back(ms_since(s0));
        } catch (const std::exception& e) {
          std::lock_guard lock(mu);
          if (first_error.empty()) first_error = e.what();
          if (errors.fetch_add(1) >= 100) break;  // something is wrong: report it, do not spin
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  const double s = ms_since(t0) / 1000;
  nlohmann::json out{{"mode", "rate"},
                     {"path", a.relay.empty() ? "direct" : "relay"},
                     {"in_flight", a.in_flight},
                     {"sessions", setup.size()},
                     {"errors", errors.load()},
                     {"seconds", s},
                     {"per_second", static_cast<double>(setup.size()) / s},
                     {"session_ms_p50", pct(setup, 0.5)},
                     {"session_ms_p99", pct(setup, 0.99)}};
  if (!first_error.empty()) out["first_error"] = first_error;
  std::printf("%s\n", out.dump().c_str());
  return errors.load() == 0 ? 0 : 1;
}

bool exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

void touch(const std::string& p) {
  sshring::common::UniqueFd fd(::open(p.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
}

// Opens `a.count` sessions with `a.threads` threads; `open_one(i)` makes session i and returns its
// echo check (called once after GO). Reports the opening rate and the check.
template <class Open>
int hold(const Args& a, Open&& open_one) {
  using Check = std::function<bool()>;
  std::vector<Check> checks(static_cast<size_t>(a.count));
  std::atomic<int> next{0}, errors{0};
  std::mutex mu;
  std::string first_error;
  const auto t0 = Clock::now();
  std::vector<std::thread> ts;
  for (int w = 0; w < a.threads; ++w) {
    ts.emplace_back([&] {
      for (int i; (i = next.fetch_add(1)) < a.count;) {
        try {
          checks[static_cast<size_t>(i)] = open_one(i);
        } catch (const std::exception& e) {
          errors.fetch_add(1);
          std::lock_guard lock(mu);
          if (first_error.empty()) first_error = e.what();
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  const double open_s = ms_since(t0) / 1000;
  touch(a.ready);
  const auto deadline = Clock::now() + std::chrono::duration<double>(a.hold_max);
  while (!exists(a.go) && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  int alive = 0;
  for (auto& c : checks)
    if (c && c()) ++alive;
  nlohmann::json out{{"mode", a.mode},         {"path", a.relay.empty() ? "direct" : "relay"},
                     {"count", a.count},       {"opened", a.count - errors.load()},
                     {"open_seconds", open_s}, {"opened_per_second", (a.count - errors.load()) / open_s},
                     {"alive_at_end", alive}};
  if (!first_error.empty()) out["first_error"] = first_error;
  std::printf("%s\n", out.dump().c_str());
  std::fflush(stdout);
  // The sessions close as `checks` goes; make that quick and bounded: exit now, the kernel closes.
  std::_Exit(alive == a.count ? 0 : 1);
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
  Args a = parse(argc, argv);
  std::optional<client::Signer> signer;
  try {
    if (!a.relay.empty()) {
      if (a.relay_key.empty()) usage("--relay needs --relay-key");
      signer = client::file_signer(a.relay_key);
    }
    if (libssh2_init(0) != 0) throw std::runtime_error("libssh2_init");
    const client::Signer* sp = signer ? &*signer : nullptr;
    if (a.mode == "rate") return rate(a, sp);
    if (a.mode == "hold") {
      return hold(a, [&](int i) -> std::function<bool()> {
        std::shared_ptr<Ssh> s = open_ssh(a, sp, a.targets[static_cast<size_t>(i) % a.targets.size()]);
        return [s] {
          libssh2_session_set_timeout(s->session, 10000);
          return sftp_roundtrip(s->channel);
        };
      });
    }
    if (a.mode == "relay-hold") {
      return hold(a, [&](int i) -> std::function<bool()> {
        auto fd = std::make_shared<sshring::common::UniqueFd>(
            open_tcp(a, sp, a.targets[static_cast<size_t>(i) % a.targets.size()]));
        return [fd] {
          if (::send(fd->get(), "x", 1, MSG_NOSIGNAL) != 1) return false;
          pollfd p{fd->get(), POLLIN, 0};
          char c = 0;
          return ::poll(&p, 1, 10000) == 1 && ::recv(fd->get(), &c, 1, 0) == 1 && c == 'x';
        };
      });
    }
    usage("unknown mode " + a.mode);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ssh_load: %s\n", e.what());
    return 1;
  }
}
