// TCP sockets of the agent's network namespace over NETLINK_SOCK_DIAG (inet_diag): a dump for
// start-up seeding, an exact lookup, and SOCK_DESTROY to end a flow (both ends reset: the local
// socket is aborted and sends an RST to the peer). Needs CAP_NET_ADMIN; destroy needs a kernel with
// CONFIG_INET_DIAG_DESTROY. Control plane: every call returns errors as values (-errno).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "bpf/sshring_structs.h"

namespace sshring::bpf {

struct TcpSocket {
  sshring_flow_key key{};  // normalized like the kernel's: client = remote peer, server = local
  uint8_t state = 0;       // TCP_ESTABLISHED, TCP_SYN_RECV, ...
};

// TCP states worth a flow entry: a connection whose packets can still arrive.
uint32_t live_tcp_states();

// Appends every IPv4 and IPv6 TCP socket in one of `state_mask`'s states (bit 1 << TCP_*) to *out.
// Returns 0 or -errno.
int dump_tcp(uint32_t state_mask, std::vector<TcpSocket>* out);

// The live connections of both families, listed by a dump: what finds a socket bound to a device
// (an IPv6 link-local peer's, one in a VRF or under SO_BINDTODEVICE), which an exact lookup naming
// no device misses. A walk over many flows shares one, so it is listed once, on the first miss,
// however many flows miss (flows without sockets can be planted with spoofed SYNs). Good for one
// pass: it is not refreshed.
struct ConnectionDump {
  struct Entry {
    sshring_flow_key key{};
    uint8_t family = 0;  // AF_INET or AF_INET6, as the kernel holds the socket
    uint32_t cookie[2] = {};
    uint32_t ifindex = 0;
  };
  bool loaded = false;
  int rc = 0;        // the dump's result: 0 or -errno
  size_t loads = 0;  // dumps made (0 or 1)
  std::vector<Entry> entries;
};

// 1 if a connection with exactly this 4-tuple exists, 0 if not, -errno on error. A listener on the
// server address and port is not that connection (the kernel's exact lookup falls back to it), nor
// is TIME_WAIT. An exact lookup first; on a miss, `shared` (or a dump of its own).
int tcp_exists(const sshring_flow_key& key, ConnectionDump* shared = nullptr);

// Aborts the local socket of the connection with this 4-tuple (SOCK_DESTROY, by its cookie and
// device). 0, -ENOENT if there is none (never the listener), or -errno.
int destroy_tcp(const sshring_flow_key& key, ConnectionDump* shared = nullptr);

}  // namespace sshring::bpf
