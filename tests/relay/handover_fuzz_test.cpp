// libFuzzer target for the receiving side of a live hand-over (`sshring relay --takeover`,
// relay/handover.h): whatever a process answering on the control socket sends, the new relay ends in
// a RelayExport or a HandoverError, never another exception or a crash, and keeps no descriptor it
// was sent beyond what it returns.
//
// Input: up to 64 records, each [u8 descriptors (mod 9)] [u16 length, big-endian] [message bytes: u16
// type + JSON body]. The records go down a real SOCK_SEQPACKET socketpair with that many descriptors
// attached (duplicates of /dev/null), as an old relay would send them.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <vector>

#include "common/unique_fd.h"
#include "relay/handover.h"

namespace relay = sshring::relay;
using sshring::common::UniqueFd;

namespace {

size_t open_fds() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

int devnull() {
  static const int fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  return fd;
}

// Sends one raw record; false when the socket is full (the rest of the input is dropped).
bool send_raw(int sock, const uint8_t* data, size_t len, size_t nfds) {
  std::vector<UniqueFd> fds;
  for (size_t i = 0; i < nfds; ++i) fds.emplace_back(::fcntl(devnull(), F_DUPFD_CLOEXEC, 0));
  iovec iov{const_cast<uint8_t*>(data), len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * relay::kHandoverMaxFds)] = {};
  if (nfds > 0) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    for (size_t i = 0; i < nfds; ++i) {
      int fd = fds[i].get();
      std::memcpy(CMSG_DATA(c) + i * sizeof(int), &fd, sizeof(int));
    }
  }
  return ::sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > relay::kHandoverMaxMessage) return 0;
  if (devnull() < 0) std::abort();
  const size_t before = open_fds();
  {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
    UniqueFd old_side(sv[1]);
    relay::HandoverClient client{UniqueFd(sv[0])};
    size_t at = 0;
    for (int records = 0; records < 64 && size - at >= 3; ++records) {
      size_t nfds = data[at] % (relay::kHandoverMaxFds + 1);
      size_t len = (static_cast<size_t>(data[at + 1]) << 8) | data[at + 2];
      at += 3;
      len = std::min(len, size - at);
      if (len == 0 || !send_raw(old_side.get(), data + at, len, nfds)) break;
      at += len;
    }
    // The old side has said all it will: the client reads the queued records, then end of stream
    // (a timeout would wait a minute).
    ::shutdown(old_side.get(), SHUT_WR);
    try {
      relay::RelayExport e = client.receive();
      for (const auto& s : e.sessions) {
        if (!s.client || !s.upstream) std::abort();
        for (const auto& d : s.dir)
          if (d.in_pipe > 0 && (!d.pipe_r || !d.pipe_w)) std::abort();
      }
      for (const auto& l : e.listeners)
        if (!l.fd) std::abort();
    } catch (const relay::HandoverError&) {
      // refused or failed: the running relay serves on
    } catch (...) {
      std::abort();  // anything else would end `relay --takeover` without its exit code
    }
  }
  if (open_fds() != before) std::abort();  // a descriptor sent to us leaked
  return 0;
}
