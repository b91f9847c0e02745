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

// The request for one exact 4-tuple in `family` (a v4 key asked as AF_INET6 uses mapped addresses).
Request exact_request(const sshring_flow_key& key, uint8_t family, uint16_t type, uint16_t flags) {
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
  r.req.id.idiag_cookie[0] = r.req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
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

// Runs an exact-tuple request as AF_INET and, for IPv4 keys not found, again as AF_INET6 with mapped
// addresses (a dual-stack listener's sockets).
template <class F>
int exact(const sshring_flow_key& key, uint16_t type, uint16_t flags, F&& on_msg) {
  common::UniqueFd fd = open_diag();
  if (!fd) return -errno;
  int rc = transact(fd.get(), exact_request(key, key.family == 4 ? AF_INET : AF_INET6, type, flags), on_msg);
  if (rc == -ENOENT && key.family == 4)
    rc = transact(fd.get(), exact_request(key, AF_INET6, type, flags), on_msg);
  return rc;
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
    Request r{};
    r.nlh.nlmsg_len = sizeof(r);
    r.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    r.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    r.req.sdiag_family = family;
    r.req.sdiag_protocol = IPPROTO_TCP;
    r.req.idiag_states = state_mask;
    int rc = transact(fd.get(), r, [&](const inet_diag_msg& m) { out->push_back(from_msg(m)); });
    if (rc < 0) return rc;
  }
  return 0;
}

int tcp_exists(const sshring_flow_key& key) {
  bool found = false;
  int rc = exact(key, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, [&](const inet_diag_msg&) { found = true; });
  if (found) return 1;
  return rc == -ENOENT || rc == 0 ? 0 : rc;
}

int destroy_tcp(const sshring_flow_key& key) {
  return exact(key, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, [](const inet_diag_msg&) {});
}

}  // namespace sshring::bpf
