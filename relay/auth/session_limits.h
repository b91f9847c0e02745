// Counters shared by every worker and touched only when a handshake starts or a session ends:
// connections in handshake per source address, and live sessions per principal. With a
// policy::SessionLedger (etcd) a principal's limit counts the other relays' sessions too, and every
// change of this relay's count is published to it.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "common/sockaddr.h"
#include "policy/session_ledger.h"

namespace sshring::relay::auth {

class SessionLimits {
 public:
  // Counts one more connection in handshake from `client`'s IP. False (and nothing counted) when
  // `max` are already in handshake.
  bool enter_handshake(const common::SockAddr& client, uint32_t max);
  void leave_handshake(const common::SockAddr& client);
  [[nodiscard]] uint32_t handshakes_from(const common::SockAddr& client) const;

  // Set once, before any session.
  void set_ledger(std::shared_ptr<policy::SessionLedger> ledger) { ledger_ = std::move(ledger); }
  [[nodiscard]] bool fleet_wide() const noexcept { return ledger_ != nullptr; }

  // Counts one more live session of `principal`; false (nothing counted) when `max` are live here
  // and, with a ledger, on the other relays.
  bool acquire_session(std::string_view principal, uint32_t max);
  // Counts a session that already runs (hand-over), whatever the limit and the ledger say.
  void count_session(std::string_view principal);
  void release_session(std::string_view principal);
  [[nodiscard]] uint32_t sessions_of(std::string_view principal) const;

 private:
  using IpKey = std::array<uint8_t, 17>;  // family byte + address
  struct IpKeyHash {
    size_t operator()(const IpKey& k) const noexcept;
  };
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };
  static IpKey key_of(const common::SockAddr& a);

  std::shared_ptr<policy::SessionLedger> ledger_;
  mutable std::mutex mu_;
  std::unordered_map<IpKey, uint32_t, IpKeyHash> handshakes_;
  std::unordered_map<std::string, uint32_t, StringHash, std::equal_to<>> sessions_;
};

}  // namespace sshring::relay::auth
