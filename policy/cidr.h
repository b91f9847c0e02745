// IP addresses, CIDR prefixes, port sets and the longest-prefix trie every policy lookup runs on.
// Lookups never allocate and never throw: they run on the relay's data path.
#pragma once

#include <sys/socket.h>

#include <array>
#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sshring::policy {

// An IPv4 or IPv6 address in network byte order. IPv4 uses bytes[0..3]; the rest stay zero.
// IPv4-mapped IPv6 addresses (::ffff:a.b.c.d, seen on dual-stack sockets) are normalized to IPv4 by
// parse() and from_sockaddr(), so a v4 rule matches them.
struct IpAddr {
  uint8_t family = 0;  // 4 or 6; 0 = unset
  std::array<uint8_t, 16> bytes{};

  static std::optional<IpAddr> parse(std::string_view text);
  static std::optional<IpAddr> from_sockaddr(const sockaddr* sa);
  static IpAddr v4(uint32_t host_order);
  static IpAddr v6(const std::array<uint8_t, 16>& b);

  [[nodiscard]] bool is_v4() const noexcept { return family == 4; }
  [[nodiscard]] bool valid() const noexcept { return family == 4 || family == 6; }
  [[nodiscard]] unsigned bits() const noexcept { return family == 4 ? 32 : 128; }
  // Bit i counted from the most significant bit of the first byte.
  [[nodiscard]] unsigned bit(unsigned i) const noexcept { return (bytes[i >> 3] >> (7 - (i & 7))) & 1u; }
  [[nodiscard]] std::string to_string() const;
  auto operator<=>(const IpAddr&) const = default;
};

// A prefix "10.0.0.0/8", "fd00::/120". A bare address is a host prefix (/32 or /128).
struct Cidr {
  IpAddr addr;
  uint8_t len = 0;

  // nullopt on malformed text or host bits set beyond the prefix ("10.0.0.1/8").
  static std::optional<Cidr> parse(std::string_view text);
  // Like parse, but explains what is wrong in *why (e.g. "host bits set; did you mean 10.0.0.0/8").
  static std::optional<Cidr> parse(std::string_view text, std::string* why);
  static Cidr host(const IpAddr& a) { return Cidr{a, static_cast<uint8_t>(a.bits())}; }

  [[nodiscard]] bool contains(const IpAddr& a) const noexcept;
  // True if every address of `inner` is inside this prefix.
  [[nodiscard]] bool contains(const Cidr& inner) const noexcept;
  [[nodiscard]] bool overlaps(const Cidr& o) const noexcept { return contains(o) || o.contains(*this); }
  [[nodiscard]] std::string to_string() const;
  auto operator<=>(const Cidr&) const = default;
};

// Inclusive port ranges, sorted and merged. Written "22", "2200-2299"; lists [22, "2200-2299"].
struct PortRange {
  uint16_t lo = 0;
  uint16_t hi = 0;
  auto operator<=>(const PortRange&) const = default;
};

class PortSet {
 public:
  PortSet() = default;
  explicit PortSet(std::vector<PortRange> ranges);  // sorts and merges
  static PortSet single(uint16_t p) { return PortSet({PortRange{p, p}}); }
  static PortSet all() { return PortSet({PortRange{1, 65535}}); }
  // "22", "22,2222", "2200-2299"; nullopt if malformed or port 0.
  static std::optional<PortSet> parse(std::string_view text);

  [[nodiscard]] bool contains(uint16_t port) const noexcept {
    for (const auto& r : ranges_) {
      if (port < r.lo) return false;
      if (port <= r.hi) return true;
    }
    return false;
  }
  // True if every port of `o` is in this set.
  [[nodiscard]] bool contains(const PortSet& o) const noexcept;
  [[nodiscard]] bool overlaps(const PortSet& o) const noexcept;
  [[nodiscard]] bool empty() const noexcept { return ranges_.empty(); }
  [[nodiscard]] const std::vector<PortRange>& ranges() const noexcept { return ranges_; }
  // Every port, expanded (for loading into kernel maps). At most 65535 entries.
  [[nodiscard]] std::vector<uint16_t> ports() const;
  [[nodiscard]] std::string to_string() const;  // "22,2200-2299"
  bool operator==(const PortSet&) const = default;

 private:
  std::vector<PortRange> ranges_;
};

// A binary trie over address bits, one root per family. Values are stored in insertion order in a
// contiguous vector; nodes are indices (no pointers), so a built trie is cheap to copy and to walk.
// for_each_match visits every stored prefix containing the address, shortest first.
template <class T>
class CidrTrie {
 public:
  CidrTrie() { nodes_.resize(2); }  // 0: v4 root, 1: v6 root

  // Returns the value slot for `c`, default-constructing it on first insert.
  T& insert(const Cidr& c) {
    uint32_t n = c.addr.is_v4() ? 0 : 1;
    for (unsigned i = 0; i < c.len; ++i) {
      unsigned b = c.addr.bit(i);
      if (nodes_[n].child[b] == 0) {
        nodes_[n].child[b] = static_cast<uint32_t>(nodes_.size());
        nodes_.emplace_back();
      }
      n = nodes_[n].child[b];
    }
    if (nodes_[n].value < 0) {
      nodes_[n].value = static_cast<int32_t>(values_.size());
      values_.emplace_back();
      prefixes_.push_back(c);
    }
    return values_[static_cast<size_t>(nodes_[n].value)];
  }

  // Calls f(const T&, const Cidr&) for every stored prefix containing `a`, shortest first.
  template <class F>
  void for_each_match(const IpAddr& a, F&& f) const {
    if (!a.valid()) return;
    uint32_t n = a.is_v4() ? 0 : 1;
    const unsigned bits = a.bits();
    for (unsigned i = 0;; ++i) {
      const Node& node = nodes_[n];
      if (node.value >= 0)
        f(values_[static_cast<size_t>(node.value)], prefixes_[static_cast<size_t>(node.value)]);
      if (i == bits) break;
      uint32_t next = node.child[a.bit(i)];
      if (next == 0) break;
      n = next;
    }
  }

  // The value of the longest stored prefix containing `a`, or nullptr.
  [[nodiscard]] const T* longest_match(const IpAddr& a) const {
    const T* best = nullptr;
    for_each_match(a, [&](const T& v, const Cidr&) { best = &v; });
    return best;
  }
  [[nodiscard]] bool contains(const IpAddr& a) const { return longest_match(a) != nullptr; }

  [[nodiscard]] size_t size() const noexcept { return values_.size(); }
  [[nodiscard]] bool empty() const noexcept { return values_.empty(); }
  [[nodiscard]] const std::vector<T>& values() const noexcept { return values_; }
  [[nodiscard]] std::vector<T>& values() noexcept { return values_; }
  [[nodiscard]] const std::vector<Cidr>& prefixes() const noexcept { return prefixes_; }

 private:
  struct Node {
    uint32_t child[2] = {0, 0};  // 0 = none (the roots are never a child)
    int32_t value = -1;
  };
  std::vector<Node> nodes_;
  std::vector<T> values_;
  std::vector<Cidr> prefixes_;
};

}  // namespace sshring::policy
