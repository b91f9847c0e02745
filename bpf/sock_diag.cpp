#include "bpf/sock_diag.h"

#include <arpa/inet.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/unique_fd.h"

namespace sshring::bpf {

namespace {

struct Request {
  nlmsghdr nlh;
  inet_diag_req_v2 req;
};

common::UniqueFd open_diag() {
  return common::UniqueFd(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
}

// IPv4 in a v6 socket's address fields (::ffff:a.b.c.d), as the kernel flow key would hold it.
void key_addr(uint32_t out[4], const uint32_t in[4], uint8_t family) {
  std::memset(out, 0, 16);
  if (family == AF_INET) {
    out[0] = in[0];
  } else if (in[0] == 0 && in[1] == 0 && in[2] == htonl(0xffff)) {
    out[0] = in[3];
  } else {
    std::memcpy(out, in, 16);
  }
}

TcpSocket from_msg(const inet_diag_msg& m) {
  TcpSocket s;
  key_addr(s.key.server, m.id.idiag_src, m.idiag_family);
  key_addr(s.key.client, m.id.idiag_dst, m.idiag_family);
  bool mapped = m.idiag_family == AF_INET6 && m.id.idiag_src[0] == 0 && m.id.idiag_src[1] == 0 &&
                m.id.idiag_src[2] == htonl(0xffff);
  s.key.family = m.idiag_family == AF_INET || mapped ? 4 : 6;
  s.key.server_port = ntohs(m.id.idiag_sport);
  s.key.client_port = ntohs(m.id.idiag_dport);
  s.state = m.idiag_state;
  return s;
}

// The request for one exact 4-tuple in `family` (a v4 key asked as AF_INET6 uses mapped addresses);
// with a cookie, only the socket that has it.
Request exact_request(const sshring_flow_key& key, uint8_t family, uint16_t type, uint16_t flags,
                      const uint32_t* cookie = nullptr) {
  Request r{};
  r.nlh.nlmsg_len = sizeof(r);
  r.nlh.nlmsg_type = type;
  r.nlh.nlmsg_flags = flags;
  r.req.sdiag_family = family;
  r.req.sdiag_protocol = IPPROTO_TCP;
  r.req.idiag_states = ~0u;
  r.req.id.idiag_sport = htons(key.server_port);
  r.req.id.idiag_dport = htons(key.client_port);
  if (key.family == 4 && family == AF_INET6) {
    r.req.id.idiag_src[2] = r.req.id.idiag_dst[2] = htonl(0xffff);
    r.req.id.idiag_src[3] = key.server[0];
    r.req.id.idiag_dst[3] = key.client[0];
  } else {
    std::memcpy(r.req.id.idiag_src, key.server, 16);
    std::memcpy(r.req.id.idiag_dst, key.client, 16);
  }
  r.req.id.idiag_cookie[0] = cookie ? cookie[0] : INET_DIAG_NOCOOKIE;
  r.req.id.idiag_cookie[1] = cookie ? cookie[1] : INET_DIAG_NOCOOKIE;
  return r;
}

// Every TCP socket of `family` in one of `states` (bit 1 << TCP_*).
Request dump_request(uint8_t family, uint32_t states) {
  Request r{};
  r.nlh.nlmsg_len = sizeof(r);
  r.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  r.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  r.req.sdiag_family = family;
  r.req.sdiag_protocol = IPPROTO_TCP;
  r.req.idiag_states = states;
  return r;
}

// Sends one request and reads replies until DONE or an error/ack; `on_msg` sees each diag message.
template <class F>
int transact(int fd, const Request& r, F&& on_msg) {
  sockaddr_nl sa{};
  sa.nl_family = AF_NETLINK;
  if (::sendto(fd, &r, sizeof(r), 0, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0) return -errno;
  alignas(nlmsghdr) char buf[32768];
  while (true) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) return -EIO;
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, static_cast<unsigned>(n));
         h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_DONE) return 0;
      if (h->nlmsg_type == NLMSG_ERROR) {
        if (h->nlmsg_len < NLMSG_LENGTH(sizeof(nlmsgerr))) return -EIO;
        return static_cast<const nlmsgerr*>(NLMSG_DATA(h))->error;  // 0 is the ack
      }
      if (h->nlmsg_len >= NLMSG_LENGTH(sizeof(inet_diag_msg)))
        on_msg(*static_cast<const inet_diag_msg*>(NLMSG_DATA(h)));
      if (!(h->nlmsg_flags & NLM_F_MULTI)) return 0;
    }
  }
}

// The connection with exactly this 4-tuple. The kernel's exact lookup falls back to the listener on
// the server address and port when no connection has the tuple (an unapproved SYN that enforce mode
// dropped never made one), so each answer is checked: the same peer, a connection (not a listener,
// not TIME_WAIT: nothing left to end), a real cookie.
struct Found {
  int rc = -ENOENT;  // 0 when found, else -ENOENT or the error
  ConnectionDump::Entry at;
};

bool same_key(const sshring_flow_key& a, const sshring_flow_key& b) {
  return a.family == b.family && a.client_port == b.client_port && a.server_port == b.server_port &&
         std::memcmp(a.client, b.client, 16) == 0 && std::memcmp(a.server, b.server, 16) == 0;
}

// A connection an answer may name: not a listener, not TIME_WAIT, with a real cookie.
bool is_connection(const inet_diag_msg& m) {
  if (m.idiag_state == TCP_LISTEN || m.idiag_state == TCP_TIME_WAIT) return false;
  return !(m.id.idiag_cookie[0] == INET_DIAG_NOCOOKIE && m.id.idiag_cookie[1] == INET_DIAG_NOCOOKIE);
}

ConnectionDump::Entry entry_of(const inet_diag_msg& m, uint8_t family) {
  return {.key = from_msg(m).key,
          .family = family,
          .cookie = {m.id.idiag_cookie[0], m.id.idiag_cookie[1]},
          .ifindex = m.id.idiag_if};
}

void load(int fd, ConnectionDump& d) {
  d.loaded = true;
  d.loads++;
  for (uint8_t family : {AF_INET, AF_INET6}) {
    int rc = transact(fd, dump_request(family, live_tcp_states()), [&](const inet_diag_msg& m) {
      if (is_connection(m)) d.entries.push_back(entry_of(m, family));
    });
    if (rc != 0) {
      d.rc = rc;
      d.entries.clear();
      return;
    }
  }
}

// Asks as AF_INET and, for IPv4 keys not found, again as AF_INET6 with mapped addresses (a
// dual-stack listener's sockets); then the dump (`shared`, else one of its own) for sockets bound
// to a device.
Found find(int fd, const sshring_flow_key& key, ConnectionDump* shared) {
  Found f;
  const uint8_t first = key.family == 4 ? AF_INET : AF_INET6;
  for (uint8_t family : {first, static_cast<uint8_t>(AF_INET6)}) {
    int rc = transact(fd, exact_request(key, family, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST),
                      [&](const inet_diag_msg& m) {
                        if (f.rc == 0 || !is_connection(m)) return;
                        ConnectionDump::Entry e = entry_of(m, family);
                        if (!same_key(e.key, key)) return;
                        f.rc = 0;
                        f.at = e;
                      });
    if (f.rc == 0) return f;
    if (rc != 0 && rc != -ENOENT) {
      f.rc = rc;
      return f;
    }
    if (family == AF_INET6) break;
  }
  ConnectionDump own;
  ConnectionDump& d = shared ? *shared : own;
  if (!d.loaded) load(fd, d);
  if (d.rc != 0) {
    f.rc = d.rc;
    return f;
  }
  for (const auto& e : d.entries) {
    if (!same_key(e.key, key)) continue;
    f.rc = 0;
    f.at = e;
    return f;
  }
  return f;
}

}  // namespace

uint32_t live_tcp_states() {
  return (1u << TCP_ESTABLISHED) | (1u << TCP_SYN_RECV) | (1u << TCP_FIN_WAIT1) | (1u << TCP_FIN_WAIT2) |
         (1u << TCP_CLOSE_WAIT) | (1u << TCP_LAST_ACK) | (1u << TCP_CLOSING);
}

int dump_tcp(uint32_t state_mask, std::vector<TcpSocket>* out) {
  common::UniqueFd fd = open_diag();
  if (!fd) return -errno;
  for (uint8_t family : {AF_INET, AF_INET6}) {
    int rc = transact(fd.get(), dump_request(family, state_mask),
                      [&](const inet_diag_msg& m) { out->push_back(from_msg(m)); });
    if (rc < 0) return rc;
  }
  return 0;
}

int tcp_exists(const sshring_flow_key& key, ConnectionDump* shared) {
  common::UniqueFd fd = open_diag();
  if (!fd) return -errno;
  const Found f = find(fd.get(), key, shared);
  return f.rc == 0 ? 1 : f.rc == -ENOENT ? 0 : f.rc;
}

// Destroys by cookie: the kernel looks the tuple up again and ends only the socket we found, so
// neither its fallback to the listener nor a new connection on a reused tuple can be hit.
int destroy_tcp(const sshring_flow_key& key, ConnectionDump* shared) {
  common::UniqueFd fd = open_diag();
  if (!fd) return -errno;
  const Found f = find(fd.get(), key, shared);
  if (f.rc != 0) return f.rc;
  Request r = exact_request(key, f.at.family, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, f.at.cookie);
  r.req.id.idiag_if = f.at.ifindex;
  return transact(fd.get(), r, [](const inet_diag_msg&) {});
}

}  // namespace sshring::bpf
