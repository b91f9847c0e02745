// bpf/sock_diag.h against the kernel, on loopback in this process's namespace: the exact lookup and
// SOCK_DESTROY name one 4-tuple, and a tuple with no connection must never reach the listening
// socket the kernel's lookup falls back to (destroying that stopped sshd accepting anyone).
#include "bpf/sock_diag.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common/unique_fd.h"
#include "tests/support/netns.h"

namespace sshring::bpf {
namespace {

using common::UniqueFd;

// kV4: an AF_INET listener; kV6: AF_INET6 on ::1; kMapped: AF_INET6 on ::ffff:127.0.0.1, whose
// connections are IPv4 flows held by IPv6 sockets (a dual-stack sshd's).
enum class Kind { kV4, kV6, kMapped };

struct Addr {
  sockaddr_storage ss{};
  socklen_t len = 0;
};

Addr loopback(Kind k, uint16_t port) {
  Addr a;
  if (k == Kind::kV4) {
    auto* s = reinterpret_cast<sockaddr_in*>(&a.ss);
    s->sin_family = AF_INET;
    s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->sin_port = htons(port);
    a.len = sizeof(*s);
  } else {
    auto* s = reinterpret_cast<sockaddr_in6*>(&a.ss);
    s->sin6_family = AF_INET6;
    if (k == Kind::kV6) {
      s->sin6_addr = in6addr_loopback;
    } else {
      EXPECT_EQ(::inet_pton(AF_INET6, "::ffff:127.0.0.1", &s->sin6_addr), 1);
    }
    s->sin6_port = htons(port);
    a.len = sizeof(*s);
  }
  return a;
}

uint16_t port_of(int fd) {
  Addr a;
  a.len = sizeof(a.ss);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&a.ss), &a.len), 0);
  return ntohs(a.ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&a.ss)->sin_port
                                         : reinterpret_cast<sockaddr_in6*>(&a.ss)->sin6_port);
}

// The flow key the kernel program would make: IPv4 for kV4 and kMapped.
sshring_flow_key key_for(Kind k, uint16_t server_port, uint16_t client_port) {
  sshring_flow_key key{};
  key.server_port = server_port;
  key.client_port = client_port;
  if (k == Kind::kV6) {
    key.family = 6;
    std::memcpy(key.server, &in6addr_loopback, 16);
    std::memcpy(key.client, &in6addr_loopback, 16);
  } else {
    key.family = 4;
    key.server[0] = key.client[0] = htonl(INADDR_LOOPBACK);
  }
  return key;
}

class SockDiag : public ::testing::TestWithParam<Kind> {
 protected:
  void SetUp() override {
    const Kind k = GetParam();
    listener_.reset(::socket(k == Kind::kV4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
    ASSERT_TRUE(listener_);
    Addr a = loopback(k, 0);
    ASSERT_EQ(::bind(listener_.get(), reinterpret_cast<sockaddr*>(&a.ss), a.len), 0) << std::strerror(errno);
    ASSERT_EQ(::listen(listener_.get(), 16), 0);
    port_ = port_of(listener_.get());
  }
  // A client of the listener (the peer is IPv4 for kMapped); empty if the connect failed.
  UniqueFd connect_client() {
    const Kind k = GetParam() == Kind::kMapped ? Kind::kV4 : GetParam();
    UniqueFd c(::socket(k == Kind::kV4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
    Addr a = loopback(k, port_);
    if (::connect(c.get(), reinterpret_cast<sockaddr*>(&a.ss), a.len) != 0) c.reset();
    return c;
  }
  bool still_listening() {
    int on = 0;
    socklen_t len = sizeof(on);
    return ::getsockopt(listener_.get(), SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on == 1 &&
           static_cast<bool>(connect_client());
  }
  UniqueFd listener_;
  uint16_t port_ = 0;
};

// The attack: an unapproved client's SYN is dropped by enforce mode, so its flow has no socket, and
// the agent's sweep then ends it. The kernel's exact lookup fell back to the listener on the server
// address and port, and SOCK_DESTROY aborted it: sshd stopped accepting everyone.
TEST_P(SockDiag, ATupleWithNoConnectionLeavesTheListenerAlone) {
  const sshring_flow_key ghost = key_for(GetParam(), port_, 40001);
  EXPECT_EQ(tcp_exists(ghost), 0);
  EXPECT_EQ(destroy_tcp(ghost), -ENOENT);
  EXPECT_TRUE(still_listening()) << "the listener was destroyed";
}

// The connection that does exist is found and ended: the client sees a reset, the listener stays.
TEST_P(SockDiag, AnEstablishedTupleIsFoundAndDestroyed) {
  UniqueFd c = connect_client();
  ASSERT_TRUE(c);
  UniqueFd served(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(served);
  const sshring_flow_key k = key_for(GetParam(), port_, port_of(c.get()));
  EXPECT_EQ(tcp_exists(k), 1);
  EXPECT_EQ(destroy_tcp(k), 0);
  EXPECT_EQ(tcp_exists(k), 0);
  pollfd p{c.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 2000), 1);
  char b;
  EXPECT_LT(::recv(c.get(), &b, 1, 0), 0);
  EXPECT_EQ(errno, ECONNRESET);
  EXPECT_TRUE(still_listening()) << "the listener went with the flow";
}

// Flows without sockets can be planted with spoofed SYNs: a walk over many of them lists the
// connections once (on the first miss), not once per flow, and still finds a live one.
TEST_P(SockDiag, AWalkSharesOneDumpAcrossItsMisses) {
  UniqueFd c = connect_client();
  ASSERT_TRUE(c);
  UniqueFd served(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ConnectionDump dump;
  for (uint16_t i = 0; i < 200; ++i) {
    EXPECT_EQ(tcp_exists(key_for(GetParam(), port_, static_cast<uint16_t>(41000 + i)), &dump), 0);
    EXPECT_EQ(destroy_tcp(key_for(GetParam(), port_, static_cast<uint16_t>(41000 + i)), &dump), -ENOENT);
  }
  EXPECT_EQ(dump.loads, 1u);
  EXPECT_EQ(tcp_exists(key_for(GetParam(), port_, port_of(c.get())), &dump), 1);
  EXPECT_TRUE(still_listening());
}

INSTANTIATE_TEST_SUITE_P(
    Families, SockDiag, ::testing::Values(Kind::kV4, Kind::kV6, Kind::kMapped), [](const auto& i) {
      return std::string(i.param == Kind::kV4 ? "v4" : i.param == Kind::kV6 ? "v6" : "mapped");
    });

}  // namespace
}  // namespace sshring::bpf

namespace sshring::bpf {
namespace {

// Runs in network namespace `name` until destroyed, then returns to the namespace it came from.
class InNetns {
 public:
  explicit InNetns(const std::string& name)
      : home_(::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)),
        there_(::open(("/run/netns/" + name).c_str(), O_RDONLY | O_CLOEXEC)) {
    ok_ = home_ && there_ && ::setns(there_.get(), CLONE_NEWNET) == 0;
  }
  ~InNetns() {
    if (ok_) (void)::setns(home_.get(), CLONE_NEWNET);
  }
  InNetns(const InNetns&) = delete;
  InNetns& operator=(const InNetns&) = delete;
  [[nodiscard]] bool ok() const { return ok_; }

 private:
  UniqueFd home_, there_;
  bool ok_ = false;
};

// An IPv6 link-local peer: the server's connection socket is bound to the interface it came in on,
// so an exact lookup that names no device misses it (and falls back to the listener). The agent
// must still see it alive and be able to end it; before, a live link-local session looked gone and
// was evicted after its idle time, then dropped.
TEST(SockDiagLinkLocal, AConnectionBoundToItsInterfaceIsFoundAndDestroyed) {
  std::string why;
  if (!testing::can_use_netns(&why)) GTEST_SKIP() << why;
  testing::NetNs server_ns("sdiag-srv"), client_ns("sdiag-cli");
  testing::link_veth(server_ns, "ds", "10.250.0.1/24", client_ns, "dc", "10.250.0.2/24", "fe80::a/64",
                     "fe80::b/64");
  UniqueFd client, listener, served;
  uint16_t port = 0;
  {
    InNetns in(client_ns.name());
    ASSERT_TRUE(in.ok());
    client.reset(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  }
  InNetns in(server_ns.name());
  ASSERT_TRUE(in.ok());
  listener.reset(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in6 any{};
  any.sin6_family = AF_INET6;
  any.sin6_addr = in6addr_any;  // inside the test's own namespace
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&any), sizeof(any)), 0)
      << std::strerror(errno);
  ASSERT_EQ(::listen(listener.get(), 4), 0);
  port = port_of(listener.get());
  sockaddr_in6 to{};
  to.sin6_family = AF_INET6;
  ASSERT_EQ(::inet_pton(AF_INET6, "fe80::a", &to.sin6_addr), 1);
  to.sin6_port = htons(port);
  std::string ifindex;
  ASSERT_EQ(client_ns.exec("cat /sys/class/net/dc/ifindex", &ifindex), 0);
  to.sin6_scope_id = static_cast<uint32_t>(std::stoul(ifindex));
  // The client socket belongs to the client namespace whatever namespace this thread is in now
  // (link_veth adds the addresses without duplicate detection: usable at once).
  ASSERT_EQ(::connect(client.get(), reinterpret_cast<sockaddr*>(&to), sizeof(to)), 0) << std::strerror(errno);
  served.reset(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(served);
  sshring_flow_key k{};
  k.family = 6;
  k.server_port = port;
  k.client_port = port_of(client.get());
  ASSERT_EQ(::inet_pton(AF_INET6, "fe80::a", k.server), 1);
  ASSERT_EQ(::inet_pton(AF_INET6, "fe80::b", k.client), 1);
  EXPECT_EQ(tcp_exists(k), 1) << "a live link-local connection looked gone";
  EXPECT_EQ(destroy_tcp(k), 0);
  EXPECT_EQ(tcp_exists(k), 0);
  pollfd p{client.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 2000), 1);
  char b;
  EXPECT_LT(::recv(client.get(), &b, 1, 0), 0);
  EXPECT_EQ(errno, ECONNRESET);
  int on = 0;
  socklen_t len = sizeof(on);
  ASSERT_EQ(::getsockopt(listener.get(), SOL_SOCKET, SO_ACCEPTCONN, &on, &len), 0);
  EXPECT_EQ(on, 1) << "the listener went with the flow";
}

}  // namespace
}  // namespace sshring::bpf
