// Crafted packets on the wire for integration tests: valid IPv4/IPv6 + TCP with correct checksums
// (so the receiving stack would act on them), sent as Ethernet frames on an interface of a network
// namespace through an AF_PACKET socket, and a listener for the host's answers (SYN-ACK or RST).
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace sshring::testing {

struct Segment {
  std::string src, dst;  // both IPv4 or both IPv6
  uint16_t sport = 0, dport = 0;
  uint8_t flags = 0x02;  // SYN
  std::string payload;
  // IPv6 only: extension headers before TCP, each 60 (dest opts, 8 bytes) or 44 (atomic fragment).
  std::vector<uint8_t> v6_ext;
};

inline uint32_t sum16(const uint8_t* p, size_t n, uint32_t s = 0) {
  for (size_t i = 0; i + 1 < n; i += 2) s += (p[i] << 8) | p[i + 1];
  if (n & 1) s += p[n - 1] << 8;
  return s;
}

inline uint16_t fold(uint32_t s) {
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return static_cast<uint16_t>(~s);
}

inline void put16(std::vector<uint8_t>& v, size_t at, uint16_t x) {
  v[at] = x >> 8;
  v[at + 1] = x & 0xff;
}

// TCP header (20 bytes, no options) + payload, checksum over the pseudo-header of src/dst.
inline std::vector<uint8_t> tcp_bytes(const Segment& s, const uint8_t* src, const uint8_t* dst, size_t alen) {
  std::vector<uint8_t> t(20 + s.payload.size(), 0);
  put16(t, 0, s.sport);
  put16(t, 2, s.dport);
  t[7] = 1;  // seq 1
  t[12] = 5 << 4;
  t[13] = s.flags;
  put16(t, 14, 64240);
  std::memcpy(t.data() + 20, s.payload.data(), s.payload.size());
  uint32_t ps = sum16(src, alen, 0);
  ps = sum16(dst, alen, ps);
  ps += 6 + static_cast<uint32_t>(t.size());
  put16(t, 16, fold(sum16(t.data(), t.size(), ps)));
  return t;
}

// IPv4 datagrams carrying the segment: one, or `fragments` pieces (8-byte multiples but the last).
inline std::vector<std::vector<uint8_t>> ipv4_packets(const Segment& s, int fragments = 1) {
  in_addr a{}, b{};
  inet_pton(AF_INET, s.src.c_str(), &a);
  inet_pton(AF_INET, s.dst.c_str(), &b);
  auto tcp = tcp_bytes(s, reinterpret_cast<uint8_t*>(&a), reinterpret_cast<uint8_t*>(&b), 4);
  std::vector<std::vector<uint8_t>> out;
  size_t chunk = fragments > 1 ? ((tcp.size() / fragments + 7) / 8) * 8 : tcp.size();
  for (size_t off = 0; off < tcp.size(); off += chunk) {
    size_t n = std::min(chunk, tcp.size() - off);
    std::vector<uint8_t> ip(20, 0);
    ip[0] = 0x45;
    put16(ip, 2, static_cast<uint16_t>(20 + n));
    put16(ip, 4, 0x4242);
    bool more = off + n < tcp.size();
    put16(ip, 6, static_cast<uint16_t>((more ? 0x2000 : 0) | (off / 8)));
    ip[8] = 64;
    ip[9] = 6;
    std::memcpy(&ip[12], &a, 4);
    std::memcpy(&ip[16], &b, 4);
    put16(ip, 10, fold(sum16(ip.data(), 20)));
    ip.insert(ip.end(), tcp.begin() + off, tcp.begin() + off + n);
    out.push_back(std::move(ip));
  }
  return out;
}

inline std::vector<uint8_t> ipv6_packet(const Segment& s) {
  in6_addr a{}, b{};
  inet_pton(AF_INET6, s.src.c_str(), &a);
  inet_pton(AF_INET6, s.dst.c_str(), &b);
  auto tcp = tcp_bytes(s, a.s6_addr, b.s6_addr, 16);
  std::vector<uint8_t> ext;
  for (size_t i = 0; i < s.v6_ext.size(); i++) {
    uint8_t next = i + 1 < s.v6_ext.size() ? s.v6_ext[i + 1] : 6;
    if (s.v6_ext[i] == 44)
      ext.insert(ext.end(), {next, 0, 0, 0, 0x12, 0x34, 0x56, 0x78});  // offset 0, M=0: atomic
    else
      ext.insert(ext.end(), {next, 0, 1, 4, 0, 0, 0, 0});  // PadN
  }
  std::vector<uint8_t> ip(40, 0);
  ip[0] = 0x60;
  put16(ip, 4, static_cast<uint16_t>(ext.size() + tcp.size()));
  ip[6] = s.v6_ext.empty() ? 6 : s.v6_ext[0];
  ip[7] = 64;
  std::memcpy(&ip[8], a.s6_addr, 16);
  std::memcpy(&ip[24], b.s6_addr, 16);
  ip.insert(ip.end(), ext.begin(), ext.end());
  ip.insert(ip.end(), tcp.begin(), tcp.end());
  return ip;
}

inline bool parse_mac(const std::string& text, uint8_t out[6]) {
  unsigned m[6];
  if (std::sscanf(text.c_str(), "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6)
    return false;
  for (int i = 0; i < 6; i++) out[i] = static_cast<uint8_t>(m[i]);
  return true;
}

// In a child that joins network namespace `netns`: sends `packets` (IP datagrams, v4 or v6 by their
// first nibble) out of `ifname` to `dst_mac`, then listens `listen` for any TCP segment to local port
// `reply_port`. Returns 1 if one came (the host answered), 0 if none, negative on a setup error.
inline int inject_and_listen(const std::string& netns, const std::string& ifname, const std::string& dst_mac,
                             const std::vector<std::vector<uint8_t>>& packets, uint16_t reply_port,
                             std::chrono::milliseconds listen) {
  // Everything that allocates happens before fork: the child only makes syscalls.
  const std::string ns_path = "/run/netns/" + netns;
  uint8_t mac[6];
  if (!parse_mac(dst_mac, mac)) return -3;
  pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int nsfd = ::open(ns_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (nsfd < 0 || ::setns(nsfd, CLONE_NEWNET) != 0) ::_exit(10);
    int fd = ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
    unsigned idx = if_nametoindex(ifname.c_str());
    if (fd < 0 || idx == 0) ::_exit(11);
    sockaddr_ll sll{};
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = static_cast<int>(idx);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&sll), sizeof(sll)) != 0) ::_exit(12);
    for (const auto& ip : packets) {
      bool v6 = (ip[0] >> 4) == 6;
      sockaddr_ll to = sll;
      to.sll_protocol = htons(v6 ? ETH_P_IPV6 : ETH_P_IP);
      to.sll_halen = 6;
      std::memcpy(to.sll_addr, mac, 6);
      int s = ::socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, to.sll_protocol);
      if (s < 0 || ::sendto(s, ip.data(), ip.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof(to)) < 0)
        ::_exit(13);
      ::close(s);
    }
    auto deadline = std::chrono::steady_clock::now() + listen;
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      uint8_t buf[2048];
      sockaddr_ll from{};
      socklen_t fl = sizeof(from);
      ssize_t n = ::recvfrom(fd, buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &fl);
      if (n < 14 || from.sll_pkttype == PACKET_OUTGOING) continue;
      uint16_t eth = (buf[12] << 8) | buf[13];
      size_t l4 = 0;
      if (eth == ETH_P_IP && n >= 34 && buf[23] == 6) l4 = 14 + (buf[14] & 0x0f) * 4;
      if (eth == ETH_P_IPV6 && n >= 54 && buf[20] == 6) l4 = 54;
      if (l4 && static_cast<size_t>(n) >= l4 + 4 && ((buf[l4 + 2] << 8) | buf[l4 + 3]) == reply_port)
        ::_exit(1);
    }
    ::_exit(0);
  }
  int st = 0;
  if (::waitpid(pid, &st, 0) != pid || !WIFEXITED(st)) return -2;
  int rc = WEXITSTATUS(st);
  return rc <= 1 ? rc : -rc;
}

}  // namespace sshring::testing
