#include "client/stdio.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "client/client.h"

namespace sshring::client {
namespace {

// Up to one full pipe per call; the kernel caps it at what the pipe holds.
constexpr size_t kSpliceChunk = 1 << 20;
// ssh's pipes start at 64 KiB; a bigger pipe means fewer splice calls per MiB. Best effort: the
// limit is /proc/sys/fs/pipe-max-size and a failure only costs syscalls.
constexpr int kPipeSize = 1 << 20;

enum class Dir { kUp = 0, kDown = 1 };  // up: stdin -> socket, down: socket -> stdout

struct Leg {
  int src;
  int dst;
  const char* what;  // for error messages
  bool open = true;
  bool want_write = false;  // last splice stopped because dst was full: poll dst, not src
};

enum class Step { kContinue, kDone, kFailed };

bool writable_now(int fd) {
  pollfd p{fd, POLLOUT, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & POLLOUT);
}

// Splices until the leg would block. Up: src EOF half-closes the socket. Down: src EOF ends it all.
Step drain(Leg& leg, Dir d, int sock) {
  for (;;) {
    ssize_t n = ::splice(leg.src, nullptr, leg.dst, nullptr, kSpliceChunk, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) continue;
    if (n == 0) {
      if (d == Dir::kDown) return Step::kDone;  // the session is over
      leg.open = false;
      ::shutdown(sock, SHUT_WR);
      return Step::kContinue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {
      // Either side may have blocked; a writable dst means the source ran dry.
      leg.want_write = !writable_now(leg.dst);
      return Step::kContinue;
    }
    if (d == Dir::kDown && (errno == ECONNRESET || errno == EPIPE)) return Step::kDone;
    if (d == Dir::kUp && errno == ECONNRESET) return Step::kDone;
    std::perror(leg.what);
    return Step::kFailed;
  }
}

}  // namespace

bool is_fdpass_channel(int in_fd, int out_fd) {
  struct stat a {};
  struct stat b {};
  if (::fstat(in_fd, &a) != 0 || ::fstat(out_fd, &b) != 0) return false;
  if (!S_ISSOCK(b.st_mode) || a.st_dev != b.st_dev || a.st_ino != b.st_ino) return false;
  int domain = 0;
  int type = 0;
  socklen_t len = sizeof(domain);
  if (::getsockopt(out_fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || domain != AF_UNIX) return false;
  len = sizeof(type);
  if (::getsockopt(out_fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) return false;
  sockaddr_un peer{};
  socklen_t plen = sizeof(peer);
  if (::getpeername(out_fd, reinterpret_cast<sockaddr*>(&peer), &plen) != 0) return false;
  return plen <= sizeof(sa_family_t);  // unnamed: a socketpair
}

bool are_pipes(int in_fd, int out_fd) {
  struct stat a {};
  struct stat b {};
  return ::fstat(in_fd, &a) == 0 && ::fstat(out_fd, &b) == 0 && S_ISFIFO(a.st_mode) && S_ISFIFO(b.st_mode);
}

int splice_stdio(int sock, int in_fd, int out_fd) {
  // A splice into a pipe whose reader (ssh) is gone raises SIGPIPE; we want EPIPE instead.
  (void)::signal(SIGPIPE, SIG_IGN);
  int fl = ::fcntl(sock, F_GETFL);
  if (fl < 0 || ::fcntl(sock, F_SETFL, fl | O_NONBLOCK) != 0) {
    std::perror("sshring connect: making the relay socket non-blocking");
    return 1;
  }
  (void)::fcntl(in_fd, F_SETPIPE_SZ, kPipeSize);
  (void)::fcntl(out_fd, F_SETPIPE_SZ, kPipeSize);
  Leg legs[2] = {{in_fd, sock, "sshring connect: stdin -> relay"},
                 {sock, out_fd, "sshring connect: relay -> stdout"}};
  for (;;) {
    pollfd p[2];
    for (int i = 0; i < 2; ++i) {
      const Leg& l = legs[i];
      p[i] = {l.open ? (l.want_write ? l.dst : l.src) : -1,
              static_cast<short>(l.want_write ? POLLOUT : POLLIN), 0};
    }
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      std::perror("sshring connect: poll");
      return 1;
    }
    for (int i = 0; i < 2; ++i) {
      if (p[i].fd < 0 || p[i].revents == 0) continue;
      legs[i].want_write = false;
      Step s = drain(legs[i], static_cast<Dir>(i), sock);
      if (s == Step::kDone) return 0;
      if (s == Step::kFailed) return 1;
    }
  }
}

int run_stdio(int sock, int in_fd, int out_fd) {
  return are_pipes(in_fd, out_fd) ? splice_stdio(sock, in_fd, out_fd) : pump_stdio(sock, in_fd, out_fd);
}

}  // namespace sshring::client
