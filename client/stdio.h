// The data path of `sshring connect` once the relay said OK. ssh runs its ProxyCommand in one of two
// ways: with ProxyUseFdpass=yes, stdin and stdout are both one end of a Unix socketpair over which
// ssh wants the connected socket (one byte + SCM_RIGHTS), after which this process exits; otherwise
// stdin and stdout are pipes, and this process stays in the path. Between pipes and a TCP socket,
// splice(2) moves pages without copying through user space and without an intermediate pipe (one end
// of each splice is already a pipe), so that is what run_stdio() does; anything else (a tty, a file,
// a socket) falls back to the read/write copy loop.
#pragma once

namespace sshring::client {

// True when in_fd and out_fd are the same unnamed AF_UNIX stream socket, which is how ssh hands a
// ProxyCommand its fd-passing channel (a socketpair dup'ed onto stdin and stdout). A named peer
// (journald's stdout stream, a listening service) or distinct fds are not taken for it.
bool is_fdpass_channel(int in_fd = 0, int out_fd = 1);

// Both fds are pipes (FIFOs), so splice_stdio() can serve them.
bool are_pipes(int in_fd, int out_fd);

// Moves stdin -> sock and sock -> stdout with splice(2) until the socket's read side ends.
// Half-close and errors as pump_stdio(): stdin EOF shuts down the socket's write side and keeps
// reading; the socket's EOF or reset ends with 0; stdout gone (EPIPE: ssh exited) ends with 0; any
// other error is printed to stderr and ends with 1. Leaves the socket non-blocking.
int splice_stdio(int sock, int in_fd = 0, int out_fd = 1);

// splice_stdio() when both stdio fds are pipes, else pump_stdio().
int run_stdio(int sock, int in_fd = 0, int out_fd = 1);

}  // namespace sshring::client
