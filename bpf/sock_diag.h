// TCP sockets of the agent's network namespace over NETLINK_SOCK_DIAG (inet_diag): a dump for
// start-up seeding, an exact lookup, and SOCK_DESTROY to end a flow (both ends reset: the local
// socket is aborted and sends an RST to the peer). Needs CAP_NET_ADMIN; destroy needs a kernel with
// CONFIG_INET_DIAG_DESTROY. Control plane: every call returns errors as values (-errno).
#pragma once

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

// 1 if a connection with exactly this 4-tuple exists, 0 if not, -errno on error. A listener on the
// server address and port is not that connection (the kernel's exact lookup falls back to it).
int tcp_exists(const sshring_flow_key& key);

// Aborts the local socket of the connection with this 4-tuple (SOCK_DESTROY, by its cookie). 0,
// -ENOENT if there is none (never the listener), or -errno.
int destroy_tcp(const sshring_flow_key& key);

}  // namespace sshring::bpf
