#include "policy/cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <charconv>
#include <cstring>

namespace sshring::policy {
namespace {

bool is_v4_mapped(const uint8_t* b) {
  static constexpr uint8_t kPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return std::memcmp(b, kPrefix, 12) == 0;
}

bool parse_u32(std::string_view s, uint32_t max, uint32_t* out) {
  if (s.empty() || s.size() > 5) return false;
  uint32_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v > max) return false;
  *out = v;
  return true;
}

}  // namespace

std::optional<IpAddr> IpAddr::parse(std::string_view text) {
  if (text.empty() || text.size() >= INET6_ADDRSTRLEN) return std::nullopt;
  char buf[INET6_ADDRSTRLEN];
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  IpAddr a;
  if (text.find(':') == std::string_view::npos) {
    in_addr v4{};
    if (inet_pton(AF_INET, buf, &v4) != 1) return std::nullopt;
    a.family = 4;
    std::memcpy(a.bytes.data(), &v4, 4);
    return a;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, buf, &v6) != 1) return std::nullopt;
  if (is_v4_mapped(v6.s6_addr)) {
    a.family = 4;
    std::memcpy(a.bytes.data(), v6.s6_addr + 12, 4);
    return a;
  }
  a.family = 6;
  std::memcpy(a.bytes.data(), v6.s6_addr, 16);
  return a;
}

std::optional<IpAddr> IpAddr::from_sockaddr(const sockaddr* sa) {
  if (sa == nullptr) return std::nullopt;
  IpAddr a;
  if (sa->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    a.family = 4;
    std::memcpy(a.bytes.data(), &in->sin_addr, 4);
    return a;
  }
  if (sa->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    if (is_v4_mapped(in6->sin6_addr.s6_addr)) {
      a.family = 4;
      std::memcpy(a.bytes.data(), in6->sin6_addr.s6_addr + 12, 4);
    } else {
      a.family = 6;
      std::memcpy(a.bytes.data(), in6->sin6_addr.s6_addr, 16);
    }
    return a;
  }
  return std::nullopt;
}

IpAddr IpAddr::v4(uint32_t host_order) {
  IpAddr a;
  a.family = 4;
  a.bytes[0] = static_cast<uint8_t>(host_order >> 24);
  a.bytes[1] = static_cast<uint8_t>(host_order >> 16);
  a.bytes[2] = static_cast<uint8_t>(host_order >> 8);
  a.bytes[3] = static_cast<uint8_t>(host_order);
  return a;
}

IpAddr IpAddr::v6(const std::array<uint8_t, 16>& b) {
  IpAddr a;
  a.family = 6;
  a.bytes = b;
  return a;
}

std::string IpAddr::to_string() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (family == 4) {
    inet_ntop(AF_INET, bytes.data(), buf, sizeof buf);
  } else if (family == 6) {
    inet_ntop(AF_INET6, bytes.data(), buf, sizeof buf);
  } else {
    return "(unset)";
  }
  return buf;
}

std::optional<Cidr> Cidr::parse(std::string_view text) {
  return parse(text, nullptr);
}

std::optional<Cidr> Cidr::parse(std::string_view text, std::string* why) {
  auto fail = [&](std::string msg) -> std::optional<Cidr> {
    if (why) *why = std::move(msg);
    return std::nullopt;
  };
  auto slash = text.find('/');
  auto addr = IpAddr::parse(text.substr(0, slash));
  if (!addr) return fail("not an IPv4 or IPv6 address");
  Cidr c{*addr, static_cast<uint8_t>(addr->bits())};
  if (slash != std::string_view::npos) {
    // A v4-mapped v6 prefix (::ffff:a.b.c.d/L) was normalized to v4: its length is a v6 length
    // (96..128), checked as such and then shifted to the v4 one.
    const bool mapped = addr->is_v4() && text.substr(0, slash).find(':') != std::string_view::npos;
    const uint32_t max_len = mapped ? 128 : addr->bits();
    uint32_t len = 0;
    if (!parse_u32(text.substr(slash + 1), max_len, &len)) {
      return fail("prefix length must be 0.." + std::to_string(max_len));
    }
    if (mapped) {
      if (len < 96) return fail("IPv4-mapped prefix shorter than /96");
      len -= 96;
    }
    c.len = static_cast<uint8_t>(len);
  }
  for (unsigned i = c.len; i < c.addr.bits(); ++i) {
    if (c.addr.bit(i)) {
      Cidr fixed = c;
      for (unsigned j = c.len; j < c.addr.bits(); ++j) fixed.addr.bytes[j >> 3] &= ~(1u << (7 - (j & 7)));
      return fail("host bits set beyond /" + std::to_string(c.len) + "; did you mean " + fixed.to_string());
    }
  }
  return c;
}

bool Cidr::contains(const IpAddr& a) const noexcept {
  if (a.family != addr.family) return false;
  unsigned full = len >> 3;
  if (std::memcmp(a.bytes.data(), addr.bytes.data(), full) != 0) return false;
  unsigned rem = len & 7;
  if (rem == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rem));
  return (a.bytes[full] & mask) == (addr.bytes[full] & mask);
}

bool Cidr::contains(const Cidr& inner) const noexcept {
  return inner.len >= len && contains(inner.addr);
}

std::string Cidr::to_string() const {
  return addr.to_string() + "/" + std::to_string(len);
}

PortSet::PortSet(std::vector<PortRange> ranges) {
  std::sort(ranges.begin(), ranges.end());
  for (const auto& r : ranges) {
    if (!ranges_.empty() && r.lo <= static_cast<uint32_t>(ranges_.back().hi) + 1) {
      ranges_.back().hi = std::max(ranges_.back().hi, r.hi);
    } else {
      ranges_.push_back(r);
    }
  }
}

std::optional<PortSet> PortSet::parse(std::string_view text) {
  std::vector<PortRange> out;
  while (!text.empty()) {
    auto comma = text.find(',');
    std::string_view part = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view{} : text.substr(comma + 1);
    if (comma != std::string_view::npos && text.empty()) return std::nullopt;
    auto dash = part.find('-');
    uint32_t lo = 0, hi = 0;
    if (dash == std::string_view::npos) {
      if (!parse_u32(part, 65535, &lo)) return std::nullopt;
      hi = lo;
    } else if (!parse_u32(part.substr(0, dash), 65535, &lo) ||
               !parse_u32(part.substr(dash + 1), 65535, &hi)) {
      return std::nullopt;
    }
    if (lo == 0 || hi < lo) return std::nullopt;
    out.push_back({static_cast<uint16_t>(lo), static_cast<uint16_t>(hi)});
  }
  if (out.empty()) return std::nullopt;
  return PortSet(std::move(out));
}

bool PortSet::contains(const PortSet& o) const noexcept {
  for (const auto& r : o.ranges_) {
    bool inside = false;
    for (const auto& m : ranges_) {
      if (m.lo <= r.lo && r.hi <= m.hi) {
        inside = true;
        break;
      }
    }
    if (!inside) return false;
  }
  return true;
}

bool PortSet::overlaps(const PortSet& o) const noexcept {
  for (const auto& a : ranges_) {
    for (const auto& b : o.ranges_) {
      if (a.lo <= b.hi && b.lo <= a.hi) return true;
    }
  }
  return false;
}

std::vector<uint16_t> PortSet::ports() const {
  std::vector<uint16_t> out;
  for (const auto& r : ranges_) {
    for (uint32_t p = r.lo; p <= r.hi; ++p) out.push_back(static_cast<uint16_t>(p));
  }
  return out;
}

std::string PortSet::to_string() const {
  std::string s;
  for (const auto& r : ranges_) {
    if (!s.empty()) s += ',';
    s += std::to_string(r.lo);
    if (r.hi != r.lo) s += "-" + std::to_string(r.hi);
  }
  return s;
}

}  // namespace sshring::policy
