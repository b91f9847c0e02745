// Live session counts shared by the relays of a fleet, so a principal's `max_sessions` holds across
// all of them and not per relay. A relay tells the ledger its own count of a principal whenever it
// changes and asks it how many sessions the other relays hold; how the counts travel (etcd:
// policy/etcd/session_ledger.h) is the implementation's business. Both calls are made on relay
// workers with a lock held, so neither may block on the network.
#pragma once

#include <cstdint>
#include <string_view>

namespace sshring::policy {

class SessionLedger {
 public:
  virtual ~SessionLedger() = default;
  // This relay now holds `count` live sessions of `principal`.
  virtual void publish(std::string_view principal, uint32_t count) = 0;
  // Live sessions of `principal` that the other relays reported last (0 if none is known).
  [[nodiscard]] virtual uint32_t others(std::string_view principal) const = 0;
};

}  // namespace sshring::policy
