// The stdio data path of `sshring connect` on real pipes and a real loopback TCP connection: bytes
// both ways, half-close after stdin EOF, the session's end, ssh going away (EPIPE), and the detection
// of ssh's fd-passing channel.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <future>
#include <random>
#include <string>
#include <thread>

#include "client/stdio.h"
#include "common/unique_fd.h"

namespace client = sshring::client;
using sshring::common::UniqueFd;

namespace {

struct Pipe {
  UniqueFd r, w;
  Pipe() {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw std::runtime_error("pipe2");
    r.reset(p[0]);
    w.reset(p[1]);
  }
};

// A connected loopback TCP pair: [0] for the client, [1] plays the relay.
std::pair<UniqueFd, UniqueFd> tcp_pair() {
  UniqueFd l(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (::bind(l.get(), reinterpret_cast<sockaddr*>(&a), len) != 0 || ::listen(l.get(), 1) != 0 ||
      ::getsockname(l.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0)
    throw std::runtime_error("listen");
  UniqueFd c(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (::connect(c.get(), reinterpret_cast<sockaddr*>(&a), len) != 0) throw std::runtime_error("connect");
  UniqueFd s(::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
  return {std::move(c), std::move(s)};
}

std::string random_bytes(size_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(g());
  return s;
}

void write_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n <= 0) throw std::runtime_error("write");
    off += static_cast<size_t>(n);
  }
}

std::string read_to_eof(int fd) {
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n <= 0) return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

}  // namespace

// stdin EOF half-closes the socket; the relay side answers after that EOF; the client passes the
// answer through and ends with 0 when the relay closes.
TEST(ClientStdio, SplicesBothWaysAndHalfClosesAfterStdinEof) {
  Pipe in, out;
  auto [client, relay] = tcp_pair();
  ASSERT_TRUE(client::are_pipes(in.r.get(), out.w.get()));
  auto rc = std::async(std::launch::async,
                       [&, c = client.get()] { return client::splice_stdio(c, in.r.get(), out.w.get()); });
  const std::string up = random_bytes(8 << 20, 1);
  const std::string down = random_bytes(6 << 20, 2);
  std::thread feeder([&] {
    write_all(in.w.get(), up);
    in.w.reset();  // ssh closed the ProxyCommand's stdin
  });
  auto stdout_reader = std::async(std::launch::async, [&] { return read_to_eof(out.r.get()); });
  // The relay reads until the client's half-close, and only then answers.
  std::string got = read_to_eof(relay.get());
  feeder.join();
  EXPECT_EQ(got.size(), up.size());
  EXPECT_TRUE(got == up);
  write_all(relay.get(), down);
  relay.reset();
  ASSERT_EQ(rc.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_EQ(rc.get(), 0);
  out.w.reset();
  std::string back = stdout_reader.get();
  EXPECT_EQ(back.size(), down.size());
  EXPECT_TRUE(back == down);
}

// ssh exits while the relay still sends: the client ends with 0 (EPIPE, not SIGPIPE).
TEST(ClientStdio, StdoutGoneEndsCleanly) {
  Pipe in, out;
  auto [client, relay] = tcp_pair();
  auto rc = std::async(std::launch::async,
                       [&, c = client.get()] { return client::splice_stdio(c, in.r.get(), out.w.get()); });
  out.r.reset();
  std::thread sender([&, r = relay.get()] {
    std::string chunk(1 << 16, 'x');
    for (int i = 0; i < 1000; ++i)
      if (::send(r, chunk.data(), chunk.size(), MSG_NOSIGNAL) < 0) break;
  });
  ASSERT_EQ(rc.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_EQ(rc.get(), 0);
  client.reset();
  sender.join();
}

// The relay resets the connection: the session is over, not an error.
TEST(ClientStdio, RelayResetEndsTheSession) {
  Pipe in, out;
  auto [client, relay] = tcp_pair();
  auto rc = std::async(std::launch::async,
                       [&, c = client.get()] { return client::splice_stdio(c, in.r.get(), out.w.get()); });
  linger lg{1, 0};
  ::setsockopt(relay.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  relay.reset();  // RST
  ASSERT_EQ(rc.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_EQ(rc.get(), 0);
}

TEST(ClientStdio, FdPassChannelDetection) {
  int sp[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
  UniqueFd a(sp[0]), b(sp[1]);
  UniqueFd dup(::fcntl(a.get(), F_DUPFD_CLOEXEC, 0));
  // What ssh does for ProxyUseFdpass: one end of a socketpair on stdin and stdout.
  EXPECT_TRUE(client::is_fdpass_channel(a.get(), dup.get()));
  // Two different sockets, pipes, a TCP socket: not ssh's channel.
  EXPECT_FALSE(client::is_fdpass_channel(a.get(), b.get()));
  Pipe p;
  EXPECT_FALSE(client::is_fdpass_channel(p.r.get(), p.w.get()));
  auto [c, s] = tcp_pair();
  EXPECT_FALSE(client::is_fdpass_channel(c.get(), c.get()));
  // A socket connected to a named listener (journald's stdout stream looks like this): not it.
  std::string path = "/tmp/sshring-stdio-test-" + std::to_string(::getpid()) + ".sock";
  ::unlink(path.c_str());
  UniqueFd l(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  std::snprintf(un.sun_path, sizeof(un.sun_path), "%s", path.c_str());
  ASSERT_EQ(::bind(l.get(), reinterpret_cast<sockaddr*>(&un), sizeof(un)), 0);
  ASSERT_EQ(::listen(l.get(), 1), 0);
  UniqueFd named(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(::connect(named.get(), reinterpret_cast<sockaddr*>(&un), sizeof(un)), 0);
  EXPECT_FALSE(client::is_fdpass_channel(named.get(), named.get()));
  ::unlink(path.c_str());
}
