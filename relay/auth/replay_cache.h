// Remembers preamble nonces for as long as their timestamps are acceptable, so a captured preamble
// cannot be replayed. Shared by every worker: sharded, one small mutex per shard, touched once per
// handshake. Memory is bounded: when a shard is full of live entries it refuses new ones (fail
// closed, the handshake is denied as "overloaded") rather than forgetting a live nonce.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <queue>
#include <unordered_set>
#include <vector>

#include "relay/auth/preamble.h"

namespace sshring::relay::auth {

class ReplayCache {
 public:
  using Nonce = std::array<uint8_t, kNonceSize>;
  enum class Result : uint8_t { kFresh, kReplayed, kFull };

  // `skew_ms`: a HELLO is accepted while |now - timestamp| <= skew_ms, so its nonce is kept until
  // timestamp + skew_ms. `capacity`: most live nonces kept (split over the shards).
  ReplayCache(uint64_t skew_ms, size_t capacity);

  // Inserts the nonce unless it is live already. Expired entries of the shard are dropped first.
  Result check_and_insert(const Nonce& nonce, uint64_t timestamp_ms, uint64_t now_ms);
  [[nodiscard]] size_t size() const;
  [[nodiscard]] uint64_t skew_ms() const { return skew_ms_; }

 private:
  static constexpr size_t kShards = 16;
  struct Entry {
    uint64_t expiry_ms;
    Nonce nonce;
    bool operator>(const Entry& o) const { return expiry_ms > o.expiry_ms; }
  };
  struct NonceHash {
    uint64_t seed;
    size_t operator()(const Nonce& n) const noexcept;
  };
  struct Shard {
    explicit Shard(uint64_t seed) : live(16, NonceHash{seed}) {}
    mutable std::mutex mu;
    std::unordered_set<Nonce, NonceHash> live;
    std::priority_queue<Entry, std::vector<Entry>, std::greater<>> by_expiry;
  };

  uint64_t skew_ms_;
  size_t shard_capacity_;
  uint64_t seed_;
  std::vector<std::unique_ptr<Shard>> shards_;
};

}  // namespace sshring::relay::auth
