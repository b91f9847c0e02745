#include "tests/support/process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

namespace sshring::testing {

namespace {
std::optional<int> decode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return std::nullopt;
}

void redirect(const std::string& path, int target, int flags) {
  int fd = ::open(path.c_str(), flags, 0644);
  if (fd < 0) _exit(126);
  ::dup2(fd, target);
  ::close(fd);
}
}  // namespace

Process::Process(const std::vector<std::string>& argv_in, const Options& opts) {
  std::vector<std::string> argv;
  if (!opts.netns.empty()) argv = {"ip", "netns", "exec", opts.netns};
  argv.insert(argv.end(), argv_in.begin(), argv_in.end());
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  pid_ = ::fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    // New process group so stop() can reach helpers the child spawns (e.g. ip netns exec).
    ::setpgid(0, 0);
    redirect(opts.stdin_path.empty() ? "/dev/null" : opts.stdin_path, 0, O_RDONLY);
    if (!opts.stdout_path.empty()) redirect(opts.stdout_path, 1, O_WRONLY | O_CREAT | O_TRUNC);
    if (!opts.stderr_path.empty()) redirect(opts.stderr_path, 2, O_WRONLY | O_CREAT | O_TRUNC);
    for (const auto& e : opts.env) ::putenv(const_cast<char*>(e.c_str()));
    ::execvp(cargv[0], cargv.data());
    _exit(127);
  }
}

Process::Process(Process&& o) noexcept : pid_(std::exchange(o.pid_, -1)), status_(o.status_) {}
Process& Process::operator=(Process&& o) noexcept {
  if (this != &o) {
    stop();
    pid_ = std::exchange(o.pid_, -1);
    status_ = o.status_;
  }
  return *this;
}
Process::~Process() {
  stop();
}

bool Process::running() {
  if (pid_ < 0 || status_) return false;
  int st = 0;
  pid_t r = ::waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    status_ = decode(st);
    return false;
  }
  return true;
}

void Process::signal(int sig) const {
  if (pid_ > 0 && !status_) ::kill(pid_, sig);
}

std::optional<int> Process::wait(std::chrono::milliseconds timeout) {
  if (pid_ < 0) return std::nullopt;
  if (status_) return status_;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (!running()) return status_;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return std::nullopt;
}

void Process::stop() {
  if (pid_ < 0 || !running()) return;
  ::kill(pid_, SIGTERM);
  if (!wait(std::chrono::seconds(5))) {
    ::kill(pid_, SIGKILL);
    wait(std::chrono::seconds(5));
  }
}

int run(const std::vector<std::string>& argv, std::string* out, const std::string& netns) {
  TempDir dir;
  Process::Options o;
  o.netns = netns;
  if (out) o.stdout_path = dir.file("out");
  Process p(argv, o);
  auto rc = p.wait(std::chrono::minutes(5));
  if (out) *out = read_file(dir.file("out"));
  return rc.value_or(-1);
}

int sh(const std::string& cmd, std::string* out) {
  return run({"sh", "-c", cmd}, out);
}

TempDir::TempDir() {
  char tmpl[] = "/tmp/sshring-test-XXXXXX";
  if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}
TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

void write_file(const std::string& path, const std::string& content, int mode) {
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    if (!f) throw std::runtime_error("cannot write " + path);
    f << content;
  }
  ::chmod(path.c_str(), mode);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

namespace {
struct UniqueFdLike {
  int fd;
  ~UniqueFdLike() {
    if (fd >= 0) ::close(fd);
  }
};

// True if 127.0.0.1:port can be bound for TCP now.
bool bindable(uint16_t port) {
  UniqueFdLike fd{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  return fd.fd >= 0 && ::bind(fd.fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
}

// The first port of the kernel's ephemeral range (source ports of outgoing connections).
int ephemeral_low() {
  std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
  int lo = 0;
  return (in >> lo) ? lo : 0;
}
}  // namespace

// Tests run in parallel (scripts/test: two per core), and a port handed out here is bound later by
// another process (a relay, sshd, etcd). Two races made that flaky: the kernel's port 0 hands out
// ephemeral ports, which any test's outgoing connection may take as its source port meanwhile; and
// two test processes could be handed the same port. So the port comes from below the ephemeral range,
// and a lock file per port (held until this process exits) keeps it from every other test process.
uint16_t free_port() {
  static std::mutex mu;
  static std::vector<int> held;  // lock files, open until exit
  std::lock_guard lk(mu);
  const int lo = 20000, hi = std::min(32000, ephemeral_low() > 0 ? ephemeral_low() : 32000);
  if (hi - lo >= 1000) {
    std::error_code ec;
    const std::string dir = "/tmp/sshring-test-ports";
    std::filesystem::create_directories(dir, ec);
    thread_local std::mt19937 rng(std::random_device{}() ^ static_cast<unsigned>(::getpid()));
    for (int attempt = 0; attempt < 2000; ++attempt) {
      const auto port = static_cast<uint16_t>(lo + static_cast<int>(rng() % static_cast<unsigned>(hi - lo)));
      const std::string lock = dir + "/" + std::to_string(port);
      int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
      if (fd < 0) break;
      if (::flock(fd, LOCK_EX | LOCK_NB) != 0 || !bindable(port)) {
        ::close(fd);
        continue;
      }
      held.push_back(fd);
      return port;
    }
  }
  // Fallback (no usable range or lock dir): the kernel's choice.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

bool wait_for_unix_socket(const std::string& path, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof(a.sun_path)) return false;
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  for (;;) {
    UniqueFdLike fd{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    if (fd.fd >= 0 && ::connect(fd.fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

bool wait_for_port(const std::string& host, uint16_t port, std::chrono::milliseconds timeout,
                   const std::string& netns) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (!netns.empty()) {
      // A probe inside the namespace: bash's /dev/tcp avoids depending on nc.
      std::string cmd = "exec 3<>/dev/tcp/" + host + "/" + std::to_string(port);
      if (run({"ip", "netns", "exec", netns, "bash", "-c", cmd}) == 0) return true;
    } else {
      bool v6 = host.find(':') != std::string::npos;
      int fd = ::socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
      int rc = -1;
      if (v6) {
        sockaddr_in6 a{};
        a.sin6_family = AF_INET6;
        a.sin6_port = htons(port);
        inet_pton(AF_INET6, host.c_str(), &a.sin6_addr);
        rc = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
      } else {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        inet_pton(AF_INET, host.c_str(), &a.sin_addr);
        rc = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
      }
      ::close(fd);
      if (rc == 0) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

std::string sshring_bin() {
  return SSHRING_BIN;
}

bool make_full_device(const std::string& path) {
  return ::mknod(path.c_str(), S_IFCHR | 0600, makedev(1, 7)) == 0;
}

}  // namespace sshring::testing
