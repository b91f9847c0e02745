// Helpers for relay tests: real loopback sockets, an epoll echo upstream, /proc probes.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "common/sockaddr.h"
#include "common/unique_fd.h"

namespace sshring::relay::test {

// Blocking TCP connect with TCP_NODELAY; invalid fd on failure (errno kept).
common::UniqueFd tcp_connect(const common::SockAddr& to);
// Non-blocking connect started (EINPROGRESS ok); for opening many sessions quickly.
common::UniqueFd tcp_connect_nb(const common::SockAddr& to);
bool write_all(int fd, const void* data, size_t len);
// Reads exactly len bytes or fails (EOF/error/timeout via SO_RCVTIMEO set by set_timeout).
bool read_exact(int fd, void* data, size_t len);
// Reads until EOF; returns false on error. Appends to out.
bool read_to_eof(int fd, std::string& out);
void set_timeout(int fd, std::chrono::milliseconds t);
// Result of a read that should end the stream: 0 (EOF), -errno, or >0 if data came instead.
ssize_t read_end(int fd, std::chrono::milliseconds timeout);

// A listening socket on 127.0.0.1 (or ::1) with port 0.
common::UniqueFd listen_any(const char* ip = "127.0.0.1", int backlog = 4096);
common::SockAddr local_addr(int fd);

// Echo server on its own epoll thread: echoes every byte; on client EOF it finishes echoing and
// shuts down its write side (so half-close is observable). With `reset_after` > 0 it resets a
// connection (SO_LINGER 0 close) after echoing that many bytes.
class EchoServer {
 public:
  explicit EchoServer(const char* ip = "127.0.0.1", uint64_t reset_after = 0);
  ~EchoServer();
  EchoServer(const EchoServer&) = delete;
  EchoServer& operator=(const EchoServer&) = delete;
  [[nodiscard]] const common::SockAddr& addr() const { return addr_; }
  [[nodiscard]] uint64_t accepted() const { return accepted_.load(); }
  [[nodiscard]] int open_connections() const { return open_.load(); }

 private:
  void loop();
  common::UniqueFd listen_, epoll_, stop_;
  common::SockAddr addr_;
  uint64_t reset_after_;
  std::atomic<uint64_t> accepted_{0};
  std::atomic<int> open_{0};
  std::thread thread_;
};

// A server that speaks first, as sshd does: each connection gets `banner` and is closed. It accepts
// as fast as connections come (sshd forks per connection and drops SYNs past its backlog of 128,
// which makes sshd, not the relay, what a thousand connecting clients measure).
class BannerServer {
 public:
  explicit BannerServer(std::string banner = "SSH-2.0-sshring-test\r\n");
  ~BannerServer();
  BannerServer(const BannerServer&) = delete;
  BannerServer& operator=(const BannerServer&) = delete;
  [[nodiscard]] const common::SockAddr& addr() const { return addr_; }
  [[nodiscard]] uint64_t served() const { return served_.load(); }

 private:
  void loop();
  std::string banner_;
  common::UniqueFd listen_, stop_;
  common::SockAddr addr_;
  std::atomic<uint64_t> served_{0};
  std::thread thread_;
};

// /proc probes for a process (self when pid == 0).
int count_fds(pid_t pid = 0);
int count_pipe_fds(pid_t pid = 0);
int count_threads(pid_t pid = 0);
long rss_kib(pid_t pid = 0);

// Fills `buf` with deterministic pseudo-random bytes from `state` (xorshift).
void fill_random(uint64_t& state, uint8_t* buf, size_t len);

}  // namespace sshring::relay::test
