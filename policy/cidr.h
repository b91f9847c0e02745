// IP addresses, CIDR prefixes, port sets and the longest-prefix trie every policy lookup runs on.
// Lookups never allocate and never throw: they run on the relay's data path.
#pragma once

#include <sys/socket.h>

#include <array>
#include <compare>
#include <cstdint>
#include <optional>
#include <stdexcept>
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
  auto operator<=>(const IpAddr&) const = default;  // NOLINT(modernize-use-nullptr): tidy 14 misreads it
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
  auto operator<=>(const PortRange&) const = default;  // NOLINT(modernize-use-nullptr): tidy 14 misreads it
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
    if (frozen_) throw std::logic_error("CidrTrie::insert after freeze");
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
    const unsigned bits = a.bits();
    if (frozen_) {
      // Path-compressed walk: one node per stored prefix or branch point on the path.
      uint32_t n = a.is_v4() ? 0 : 1;
      while (true) {
        const CNode& c = cnodes_[n];
        if (!prefix_matches(c, a)) break;
        if (c.value >= 0) f(values_[static_cast<size_t>(c.value)], prefixes_[static_cast<size_t>(c.value)]);
        if (c.len == bits) break;
        uint32_t next = c.child[a.bit(c.len)];
        if (next == 0) break;
        n = next;
      }
      return;
    }
    uint32_t n = a.is_v4() ? 0 : 1;
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

  // Builds the path-compressed form lookups use from then on (chains of single-child nodes without
  // a value collapse into one node), and drops the build-time nodes. insert() must not follow.
  void freeze() {
    if (frozen_) return;
    cnodes_.clear();
    cnodes_.resize(2);
    for (uint32_t fam = 0; fam < 2; ++fam) {
      IpAddr a;
      a.family = fam == 0 ? 4 : 6;
      compress(fam, 0, a, fam);
    }
    nodes_.clear();
    nodes_.shrink_to_fit();
    frozen_ = true;
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
  struct CNode {
    std::array<uint8_t, 16> bytes{};  // the node's prefix (bits beyond len are zero)
    uint32_t child[2] = {0, 0};
    int32_t value = -1;
    uint8_t len = 0;
  };

  static bool prefix_matches(const CNode& c, const IpAddr& a) noexcept {
    const unsigned full = c.len >> 3;
    for (unsigned i = 0; i < full; ++i) {
      if (a.bytes[i] != c.bytes[i]) return false;
    }
    const unsigned rem = c.len & 7;
    if (rem == 0) return true;
    const auto mask = static_cast<uint8_t>(0xff << (8 - rem));
    return (a.bytes[full] & mask) == c.bytes[full];
  }

  // Compresses the raw subtree at `n` (at depth `depth`, address bits so far in `a`) into cnodes_,
  // at slot `slot` if given (the roots) or a new one. Returns the slot.
  uint32_t compress(uint32_t n, unsigned depth, IpAddr a, int64_t slot = -1) {
    const unsigned bits = a.bits();
    while (nodes_[n].value < 0 && depth < bits && ((nodes_[n].child[0] != 0) != (nodes_[n].child[1] != 0))) {
      unsigned b = nodes_[n].child[1] != 0 ? 1 : 0;
      if (b) a.bytes[depth >> 3] |= static_cast<uint8_t>(1u << (7 - (depth & 7)));
      n = nodes_[n].child[b];
      ++depth;
    }
    uint32_t idx;
    if (slot >= 0) {
      idx = static_cast<uint32_t>(slot);
    } else {
      idx = static_cast<uint32_t>(cnodes_.size());
      cnodes_.emplace_back();
    }
    cnodes_[idx].bytes = a.bytes;
    cnodes_[idx].len = static_cast<uint8_t>(depth);
    cnodes_[idx].value = nodes_[n].value;
    for (unsigned b = 0; b < 2; ++b) {
      if (nodes_[n].child[b] == 0 || depth >= bits) continue;
      IpAddr next = a;
      if (b) next.bytes[depth >> 3] |= static_cast<uint8_t>(1u << (7 - (depth & 7)));
      uint32_t c = compress(nodes_[n].child[b], depth + 1, next);
      cnodes_[idx].child[b] = c;
    }
    return idx;
  }

  std::vector<Node> nodes_;
  std::vector<CNode> cnodes_;
  bool frozen_ = false;
  std::vector<T> values_;
  std::vector<Cidr> prefixes_;
};

}  // namespace sshring::policy
