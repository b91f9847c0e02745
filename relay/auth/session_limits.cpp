#include "relay/auth/session_limits.h"

#include <netinet/in.h>

#include <cstring>

namespace sshring::relay::auth {

SessionLimits::IpKey SessionLimits::key_of(const common::SockAddr& a) {
  IpKey k{};
  if (a.family() == AF_INET) {
    k[0] = 4;
    std::memcpy(k.data() + 1, &reinterpret_cast<const sockaddr_in*>(a.get())->sin_addr, 4);
  } else if (a.family() == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(a.get());
    if (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr)) {  // dual-stack listeners: count as the IPv4 address
      k[0] = 4;
      std::memcpy(k.data() + 1, v6->sin6_addr.s6_addr + 12, 4);
    } else {
      k[0] = 6;
      std::memcpy(k.data() + 1, v6->sin6_addr.s6_addr, 16);
    }
  }
  return k;
}

size_t SessionLimits::IpKeyHash::operator()(const IpKey& k) const noexcept {
  return std::hash<std::string_view>{}(std::string_view(reinterpret_cast<const char*>(k.data()), k.size()));
}

bool SessionLimits::enter_handshake(const common::SockAddr& client, uint32_t max) {
  std::lock_guard lock(mu_);
  uint32_t& n = handshakes_[key_of(client)];
  if (n >= max) {
    if (n == 0) handshakes_.erase(key_of(client));
    return false;
  }
  ++n;
  return true;
}

void SessionLimits::leave_handshake(const common::SockAddr& client) {
  std::lock_guard lock(mu_);
  auto it = handshakes_.find(key_of(client));
  if (it == handshakes_.end()) return;
  if (--it->second == 0) handshakes_.erase(it);
}

uint32_t SessionLimits::handshakes_from(const common::SockAddr& client) const {
  std::lock_guard lock(mu_);
  auto it = handshakes_.find(key_of(client));
  return it == handshakes_.end() ? 0 : it->second;
}

bool SessionLimits::acquire_session(std::string_view principal, uint32_t max) {
  std::lock_guard lock(mu_);
  const uint64_t elsewhere = ledger_ ? ledger_->others(principal) : 0;
  auto it = sessions_.find(principal);
  const uint64_t here = it == sessions_.end() ? 0 : it->second;
  if (here + elsewhere >= max) return false;
  if (it == sessions_.end()) it = sessions_.emplace(std::string(principal), 0).first;
  ++it->second;
  if (ledger_) ledger_->publish(principal, it->second);
  return true;
}

void SessionLimits::count_session(std::string_view principal) {
  std::lock_guard lock(mu_);
  auto it = sessions_.find(principal);
  if (it == sessions_.end()) it = sessions_.emplace(std::string(principal), 0).first;
  ++it->second;
  if (ledger_) ledger_->publish(principal, it->second);
}

void SessionLimits::release_session(std::string_view principal) {
  std::lock_guard lock(mu_);
  auto it = sessions_.find(principal);
  if (it == sessions_.end()) return;
  const uint32_t left = --it->second;
  if (ledger_) ledger_->publish(principal, left);
  if (left == 0) sessions_.erase(it);
}

uint32_t SessionLimits::sessions_of(std::string_view principal) const {
  std::lock_guard lock(mu_);
  auto it = sessions_.find(principal);
  return it == sessions_.end() ? 0 : it->second;
}

}  // namespace sshring::relay::auth
