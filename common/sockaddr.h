// IPv4/IPv6 socket addresses: parsing "ADDR:PORT" / "[V6]:PORT" and formatting.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sshring::common {

class SockAddr {
 public:
  SockAddr() = default;
  SockAddr(const sockaddr* sa, socklen_t len);

  // "127.0.0.1:22", "[::1]:22", "0.0.0.0:0". Returns nullopt on anything else (no name lookup).
  static std::optional<SockAddr> parse(std::string_view text);
  // Like parse, but throws UsageError naming `what` (e.g. "--listen") and the expected form.
  static SockAddr parse_or_throw(std::string_view text, std::string_view what);
  // Address without a port ("10.0.0.1", "::1"); port set to `port`.
  static std::optional<SockAddr> from_ip(std::string_view ip, uint16_t port = 0);

  [[nodiscard]] const sockaddr* get() const noexcept { return reinterpret_cast<const sockaddr*>(&ss_); }
  sockaddr* get_mut() noexcept { return reinterpret_cast<sockaddr*>(&ss_); }
  [[nodiscard]] socklen_t len() const noexcept { return len_; }
  socklen_t* len_mut() noexcept { return &len_; }
  void set_len(socklen_t len) noexcept { len_ = len; }
  [[nodiscard]] int family() const noexcept { return ss_.sa.sa_family; }
  [[nodiscard]] uint16_t port() const noexcept;
  void set_port(uint16_t port) noexcept;
  // "1.2.3.4:22" or "[::1]:22".
  [[nodiscard]] std::string to_string() const;
  // "1.2.3.4" or "::1".
  [[nodiscard]] std::string ip_string() const;

 private:
  // Room for sockaddr_in6, the largest family it holds, not sockaddr_storage's 128 bytes: every
  // relay session keeps several of these.
  union Storage {
    sockaddr sa;
    sockaddr_in v4;
    sockaddr_in6 v6;
  };
  Storage ss_{};
  socklen_t len_ = 0;

 public:
  // What get_mut() can take: set_len(kCapacity) before getsockname/getpeername.
  static constexpr socklen_t kCapacity = sizeof(Storage);
};

}  // namespace sshring::common
