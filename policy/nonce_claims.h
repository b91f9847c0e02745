// One-time use of preamble nonces across the relays that share a relay id. A preamble signed for
// relay id R is valid at every relay answering to R (behind one load balancer), so each relay's own
// replay cache alone lets a captured preamble be replayed once per relay within its freshness
// window. A relay claims each nonce here after its own cache said fresh; the first claim wins.
// How claims are stored (etcd: policy/etcd/nonce_claims.h) is the implementation's business.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string_view>

namespace sshring::policy {

class NonceClaims {
 public:
  enum class Result : uint8_t {
    kFresh,        // this claim was the first
    kReplayed,     // another relay (or an earlier handshake) claimed the nonce
    kUnavailable,  // the store could not be reached in time (the caller decides: local cache, or refuse)
    kFailed,       // the store refused (permission, quota) or too many claims wait: refuse the session
  };
  virtual ~NonceClaims() = default;
  // Claims `nonce` for `relay_id` for at least the freshness window the implementation was built
  // with. Never blocks: `done` runs exactly once, on another thread (or on this one when the claim
  // could not even be queued).
  virtual void claim(std::string_view relay_id, std::string_view principal,
                     const std::array<uint8_t, 16>& nonce, std::function<void(Result)> done) = 0;
};

}  // namespace sshring::policy
