#include "tests/relay/relay_fixtures.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>

namespace sshring::relay::test {

common::UniqueFd tcp_connect(const common::SockAddr& to) {
  common::UniqueFd fd(::socket(to.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return fd;
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (::connect(fd.get(), to.get(), to.len()) != 0) {
    int e = errno;
    fd.reset();
    errno = e;
  }
  return fd;
}

common::UniqueFd tcp_connect_nb(const common::SockAddr& to) {
  common::UniqueFd fd(::socket(to.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return fd;
  if (::connect(fd.get(), to.get(), to.len()) != 0 && errno != EINPROGRESS) fd.reset();
  return fd;
}

bool write_all(int fd, const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (len > 0) {
    ssize_t n = ::send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      pollfd pfd{fd, POLLOUT, 0};
      if (::poll(&pfd, 1, 10000) <= 0) return false;
      continue;
    }
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

bool read_exact(int fd, void* data, size_t len) {
  auto* p = static_cast<uint8_t*>(data);
  while (len > 0) {
    ssize_t n = ::read(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

bool read_to_eof(int fd, std::string& out) {
  char buf[65536];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) return true;
    out.append(buf, static_cast<size_t>(n));
  }
}

void set_timeout(int fd, std::chrono::milliseconds t) {
  timeval tv{static_cast<time_t>(t.count() / 1000), static_cast<suseconds_t>((t.count() % 1000) * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

ssize_t read_end(int fd, std::chrono::milliseconds timeout) {
  pollfd pfd{fd, POLLIN, 0};
  int r = ::poll(&pfd, 1, static_cast<int>(timeout.count()));
  if (r == 0) return -ETIMEDOUT;
  char c;
  ssize_t n = ::recv(fd, &c, 1, MSG_DONTWAIT);
  return n < 0 ? -errno : n;
}

common::UniqueFd listen_any(const char* ip, int backlog) {
  auto addr = common::SockAddr::from_ip(ip, 0);
  if (!addr) throw std::runtime_error(std::string("bad ip ") + ip);
  common::UniqueFd fd(::socket(addr->family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd.get(), addr->get(), addr->len()) != 0 || ::listen(fd.get(), backlog) != 0)
    throw std::runtime_error(std::string("listen: ") + strerror(errno));
  return fd;
}

common::SockAddr local_addr(int fd) {
  common::SockAddr a;
  a.set_len(sshring::common::SockAddr::kCapacity);
  ::getsockname(fd, a.get_mut(), a.len_mut());
  return a;
}

BannerServer::BannerServer(std::string banner) : banner_(std::move(banner)) {
  listen_ = listen_any("127.0.0.1");
  addr_ = local_addr(listen_.get());
  stop_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  thread_ = std::thread([this] { loop(); });
}

BannerServer::~BannerServer() {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(stop_.get(), &one, sizeof(one));
  thread_.join();
}

void BannerServer::loop() {
  pollfd fds[2] = {{listen_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
  while (::poll(fds, 2, 1000) >= 0 && (fds[1].revents & POLLIN) == 0) {
    if ((fds[0].revents & POLLIN) == 0) continue;
    common::UniqueFd c(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!c) continue;
    // A few dozen bytes into an empty socket buffer: the write does not block.
    if (::write(c.get(), banner_.data(), banner_.size()) == static_cast<ssize_t>(banner_.size()))
      served_.fetch_add(1);
  }
}

EchoServer::EchoServer(const char* ip, uint64_t reset_after) : reset_after_(reset_after) {
  listen_ = listen_any(ip);
  int fl = ::fcntl(listen_.get(), F_GETFL);
  ::fcntl(listen_.get(), F_SETFL, fl | O_NONBLOCK);
  addr_ = local_addr(listen_.get());
  epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  stop_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = listen_.get();
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, listen_.get(), &ev);
  ev.data.fd = stop_.get();
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, stop_.get(), &ev);
  thread_ = std::thread([this] { loop(); });
}

EchoServer::~EchoServer() {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(stop_.get(), &one, sizeof(one));
  thread_.join();
}

void EchoServer::loop() {
  struct Conn {
    std::string pending;  // bytes read but not yet echoed
    uint64_t echoed = 0;
    bool eof = false;
  };
  std::map<int, Conn> conns;
  auto close_conn = [&](int fd, bool rst) {
    if (rst) {
      linger l{1, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    }
    ::close(fd);
    conns.erase(fd);
    open_.fetch_sub(1);
  };
  auto update = [&](int fd, Conn& c) {
    epoll_event ev{};
    ev.data.fd = fd;
    ev.events = (c.eof ? 0 : EPOLLIN) | (c.pending.empty() ? 0 : EPOLLOUT);
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev);
  };
  epoll_event evs[256];
  char buf[65536];
  while (true) {
    int n = ::epoll_wait(epoll_.get(), evs, 256, 1000);
    for (int i = 0; i < n; ++i) {
      int fd = evs[i].data.fd;
      if (fd == stop_.get()) {
        for (auto it = conns.begin(); it != conns.end();) {
          ::close(it->first);
          it = conns.erase(it);
        }
        return;
      }
      if (fd == listen_.get()) {
        while (true) {
          int c = ::accept4(listen_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0) break;
          accepted_.fetch_add(1);
          open_.fetch_add(1);
          conns[c] = Conn{};
          epoll_event ev{};
          ev.events = EPOLLIN;
          ev.data.fd = c;
          ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c, &ev);
        }
        continue;
      }
      auto it = conns.find(fd);
      if (it == conns.end()) continue;
      Conn& c = it->second;
      bool dead = false;
      if ((evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !c.eof && c.pending.size() < (1u << 20)) {
        ssize_t r = ::read(fd, buf, sizeof(buf));
        if (r > 0) {
          c.pending.append(buf, static_cast<size_t>(r));
        } else if (r == 0) {
          c.eof = true;
        } else if (errno != EAGAIN) {
          dead = true;
        }
      }
      if (!dead && !c.pending.empty()) {
        size_t want = c.pending.size();
        if (reset_after_ && c.echoed + want > reset_after_) want = reset_after_ - c.echoed;
        ssize_t w = want ? ::send(fd, c.pending.data(), want, MSG_NOSIGNAL) : 0;
        if (w > 0) {
          c.pending.erase(0, static_cast<size_t>(w));
          c.echoed += static_cast<uint64_t>(w);
        } else if (w < 0 && errno != EAGAIN) {
          dead = true;
        }
        if (reset_after_ && c.echoed >= reset_after_) {
          close_conn(fd, true);
          continue;
        }
      }
      if (dead) {
        close_conn(fd, true);
        continue;
      }
      if (c.eof && c.pending.empty()) {
        ::shutdown(fd, SHUT_WR);
        // Wait for the peer to close too (the relay closes after both directions end).
        char tmp;
        ssize_t r = ::recv(fd, &tmp, 1, MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN)) {
          close_conn(fd, false);
          continue;
        }
        epoll_event ev{};
        ev.data.fd = fd;
        ev.events = EPOLLRDHUP | EPOLLIN;
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev);
        c.pending.clear();
        continue;
      }
      update(fd, c);
    }
  }
}

namespace {
std::string proc_dir(pid_t pid) {
  return pid ? "/proc/" + std::to_string(pid) : std::string("/proc/self");
}

int count_dir(const std::string& path, const char* link_prefix) {
  DIR* d = ::opendir(path.c_str());
  if (!d) return -1;
  int n = 0;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    if (link_prefix) {
      char target[256];
      ssize_t len = ::readlinkat(dirfd(d), e->d_name, target, sizeof(target) - 1);
      if (len <= 0) continue;
      target[len] = 0;
      if (std::strncmp(target, link_prefix, std::strlen(link_prefix)) != 0) continue;
    }
    ++n;
  }
  ::closedir(d);
  return n;
}
}  // namespace

int count_fds(pid_t pid) {
  return count_dir(proc_dir(pid) + "/fd", nullptr) - (pid ? 0 : 1);
}
int count_pipe_fds(pid_t pid) {
  return count_dir(proc_dir(pid) + "/fd", "pipe:");
}
int count_threads(pid_t pid) {
  return count_dir(proc_dir(pid) + "/task", nullptr);
}

long rss_kib(pid_t pid) {
  std::ifstream in(proc_dir(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

void fill_random(uint64_t& state, uint8_t* buf, size_t len) {
  size_t i = 0;
  while (i < len) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    size_t take = len - i < 8 ? len - i : 8;
    std::memcpy(buf + i, &state, take);
    i += take;
  }
}

}  // namespace sshring::relay::test
