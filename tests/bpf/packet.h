// Crafted Ethernet/IP/TCP frames for BPF_PROG_TEST_RUN (kernel tests and the ns/packet benchmark).
#pragma once

#include <arpa/inet.h>
#include <bpf/bpf.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace sshring::testing {

inline constexpr uint8_t kFin = 0x01, kSyn = 0x02, kRst = 0x04, kPsh = 0x08, kAck = 0x10;

struct PacketSpec {
  std::string src = "10.77.1.1";
  std::string dst = "10.77.0.10";
  uint16_t sport = 40000;
  uint16_t dport = 22;
  uint8_t flags = kSyn;
  int vlans = 0;                // 802.1Q / 802.1ad tags before the IP header
  int ip_option_words = 0;      // IPv4 options (4-byte words, NOPs)
  std::vector<uint8_t> v6_ext;  // IPv6 extension headers in order (0, 43, 60, 44, 51, 50, ...)
  uint16_t frag_off = 0;        // IPv4 frag_off field (host order, flags included)
  uint8_t ip_proto = 6;
  size_t payload = 0;
  size_t truncate_to = 0;  // 0: whole frame
  int tcp_doff = 5;
  bool v6_frag_atomic = false;  // fragment header with offset 0 and no more fragments
};

inline std::vector<uint8_t> build_packet(const PacketSpec& s) {
  bool v6 = s.src.find(':') != std::string::npos;
  std::vector<uint8_t> p;
  auto put16 = [&](uint16_t v) {
    p.push_back(v >> 8);
    p.push_back(v & 0xff);
  };
  // Ethernet
  for (int i = 0; i < 12; i++) p.push_back(i < 6 ? 0x02 : 0x04);
  for (int i = 0; i < s.vlans; i++) {
    put16(i == 0 && s.vlans > 1 ? 0x88a8 : 0x8100);
    put16(100 + i);
  }
  put16(v6 ? 0x86dd : 0x0800);
  const size_t l3 = p.size();
  size_t ext_len = 0;
  for (uint8_t e : s.v6_ext) ext_len += e == 44 ? 8 : (e == 51 ? 12 : 8);
  const size_t tcp_len = static_cast<size_t>(s.tcp_doff) * 4;
  if (!v6) {
    size_t ihl = 5 + s.ip_option_words;
    p.push_back(0x40 | ihl);
    p.push_back(0);
    put16(static_cast<uint16_t>(ihl * 4 + tcp_len + s.payload));
    put16(0x1234);
    put16(s.frag_off);
    p.push_back(64);
    p.push_back(s.ip_proto);
    put16(0);
    in_addr a{}, b{};
    if (inet_pton(AF_INET, s.src.c_str(), &a) != 1 || inet_pton(AF_INET, s.dst.c_str(), &b) != 1)
      throw std::invalid_argument("bad IPv4 in packet spec");
    auto* pa = reinterpret_cast<uint8_t*>(&a);
    auto* pb = reinterpret_cast<uint8_t*>(&b);
    p.insert(p.end(), pa, pa + 4);
    p.insert(p.end(), pb, pb + 4);
    for (int i = 0; i < s.ip_option_words * 4; i++) p.push_back(1);  // NOP
  } else {
    p.push_back(0x60);
    p.push_back(0);
    put16(0);
    put16(static_cast<uint16_t>(ext_len + tcp_len + s.payload));
    p.push_back(s.v6_ext.empty() ? s.ip_proto : s.v6_ext[0]);
    p.push_back(64);
    in6_addr a{}, b{};
    if (inet_pton(AF_INET6, s.src.c_str(), &a) != 1 || inet_pton(AF_INET6, s.dst.c_str(), &b) != 1)
      throw std::invalid_argument("bad IPv6 in packet spec");
    p.insert(p.end(), a.s6_addr, a.s6_addr + 16);
    p.insert(p.end(), b.s6_addr, b.s6_addr + 16);
    for (size_t i = 0; i < s.v6_ext.size(); i++) {
      uint8_t next = i + 1 < s.v6_ext.size() ? s.v6_ext[i + 1] : s.ip_proto;
      uint8_t e = s.v6_ext[i];
      if (e == 44) {  // fragment header: first fragment with more to come, or atomic
        p.insert(p.end(), {next, 0, 0, static_cast<uint8_t>(s.v6_frag_atomic ? 0 : 1), 0, 0, 0, 1});
      } else if (e == 51) {  // AH: (len+2)*4 = 12 bytes
        p.insert(p.end(), {next, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1});
      } else {  // options-style: 8 bytes, PadN
        p.insert(p.end(), {next, 0, 1, 4, 0, 0, 0, 0});
      }
    }
  }
  (void)l3;
  // TCP
  put16(s.sport);
  put16(s.dport);
  for (int i = 0; i < 8; i++) p.push_back(i == 3 ? 1 : 0);  // seq, ack
  p.push_back(static_cast<uint8_t>(s.tcp_doff << 4));
  p.push_back(s.flags);
  put16(65535);
  put16(0);
  put16(0);
  for (size_t i = 20; i < tcp_len; i++) p.push_back(1);
  p.insert(p.end(), s.payload, 0xab);
  if (s.truncate_to && s.truncate_to < p.size()) p.resize(s.truncate_to);
  return p;
}

struct RunResult {
  int retval = 0;
  uint32_t duration_ns = 0;  // average per run when repeat > 1
};

inline RunResult run_prog(int prog_fd, const std::vector<uint8_t>& pkt, int repeat = 1) {
  std::vector<uint8_t> out(pkt.size() + 256);
  LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = pkt.data(), .data_out = out.data(),
              .data_size_in = static_cast<uint32_t>(pkt.size()),
              .data_size_out = static_cast<uint32_t>(out.size()), .repeat = repeat);
  int err = bpf_prog_test_run_opts(prog_fd, &opts);
  if (err) throw std::runtime_error("bpf_prog_test_run_opts failed: " + std::to_string(err));
  return {static_cast<int>(opts.retval), opts.duration};
}

}  // namespace sshring::testing
