#include "common/sockaddr.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

#include "common/error.h"

namespace sshring::common {

SockAddr::SockAddr(const sockaddr* sa, socklen_t len) {
  if (len > sizeof(ss_)) len = sizeof(ss_);
  std::memcpy(&ss_, sa, len);
  len_ = len;
}

std::optional<SockAddr> SockAddr::from_ip(std::string_view ip, uint16_t port) {
  if (ip.size() >= INET6_ADDRSTRLEN) return std::nullopt;
  char buf[INET6_ADDRSTRLEN];
  std::memcpy(buf, ip.data(), ip.size());
  buf[ip.size()] = '\0';
  SockAddr a;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&a.ss_);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&a.ss_);
  if (inet_pton(AF_INET, buf, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    a.len_ = sizeof(sockaddr_in);
    return a;
  }
  if (inet_pton(AF_INET6, buf, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    a.len_ = sizeof(sockaddr_in6);
    return a;
  }
  return std::nullopt;
}

std::optional<SockAddr> SockAddr::parse(std::string_view text) {
  std::string_view host;
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
      return std::nullopt;
    host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
    if (host.find(':') == std::string_view::npos) return std::nullopt;  // brackets are for IPv6 only
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return std::nullopt;  // bare IPv6 needs brackets
  }
  unsigned port = 0;
  auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc{} || ptr != port_text.data() + port_text.size() || port_text.empty() || port > 65535)
    return std::nullopt;
  return from_ip(host, static_cast<uint16_t>(port));
}

SockAddr SockAddr::parse_or_throw(std::string_view text, std::string_view what) {
  auto a = parse(text);
  if (!a) {
    throw UsageError(
        std::string(what) + ": '" + std::string(text) +
        "' is not an address; expected IPV4:PORT or [IPV6]:PORT, e.g. 127.0.0.1:2222 or [::1]:2222");
  }
  return *a;
}

uint16_t SockAddr::port() const noexcept {
  if (ss_.sa.sa_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&ss_)->sin_port);
  if (ss_.sa.sa_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(&ss_)->sin6_port);
  return 0;
}

void SockAddr::set_port(uint16_t port) noexcept {
  if (ss_.sa.sa_family == AF_INET) reinterpret_cast<sockaddr_in*>(&ss_)->sin_port = htons(port);
  if (ss_.sa.sa_family == AF_INET6) reinterpret_cast<sockaddr_in6*>(&ss_)->sin6_port = htons(port);
}

std::string SockAddr::ip_string() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss_.sa.sa_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&ss_)->sin_addr, buf, sizeof(buf));
  } else if (ss_.sa.sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&ss_)->sin6_addr, buf, sizeof(buf));
  } else {
    return "?";
  }
  return buf;
}

std::string SockAddr::to_string() const {
  if (ss_.sa.sa_family == AF_INET6) return "[" + ip_string() + "]:" + std::to_string(port());
  return ip_string() + ":" + std::to_string(port());
}

}  // namespace sshring::common
