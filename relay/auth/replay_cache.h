// Remembers preamble nonces for as long as their timestamps are acceptable, so a captured preamble
// cannot be replayed. Shared by every worker: sharded, one small mutex per shard, touched once per
// handshake, and only for HELLOs whose signature verified for a known principal. Memory is bounded:
// when a shard is full of live entries it refuses new ones (fail closed, the handshake is denied as
// "overloaded") rather than forgetting a live nonce, and each principal has a bounded share, so one
// principal's flood of valid HELLOs fills its own share, not the cache other principals need. The
// share is bounded in each shard too (a fraction of the shard: no principal can fill one), and the
// shard is picked by a keyed hash of the whole nonce (seeded per process), so a client cannot aim its
// nonces at one shard either.
//
// Entries are dropped on the monotonic clock: at insert the deadline is now_mono + (timestamp + skew
// - now_wall), so a wall clock stepped forward cannot flush live nonces early. A wall clock stepped
// back would make forgotten timestamps acceptable again; so each shard remembers the newest timestamp
// it has forgotten, and a HELLO at or before it is refused (kTooOld) instead of being trusted.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <queue>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "protocol/preamble.h"

namespace sshring::relay::auth {

class ReplayCache {
 public:
  using Nonce = std::array<uint8_t, protocol::kNonceSize>;
  enum class Result : uint8_t { kFresh, kReplayed, kFull, kPrincipalFull, kTooOld };
  struct Now {
    uint64_t wall_ms;  // Unix milliseconds (what timestamps are compared with)
    uint64_t mono_ms;  // a monotonic clock in milliseconds
  };

  // `skew_ms`: a HELLO is accepted while |now - timestamp| <= skew_ms, so its nonce is kept until
  // timestamp + skew_ms. `capacity`: most live nonces kept (split over the shards).
  // `per_principal`: most live nonces of one principal (0: capacity / 16 + 1); in one shard at most
  // 2 * per_principal / 16 + 1 of them (twice its even spread), and never more than half the shard.
  ReplayCache(uint64_t skew_ms, size_t capacity, size_t per_principal = 0);

  // Inserts the nonce unless it is live already. Expired entries of the shard are dropped first.
  // kPrincipalFull: `principal` has its share of live nonces (nothing inserted). kTooOld: the
  // timestamp is not newer than one this shard already forgot (the wall clock went back).
  Result check_and_insert(std::string_view principal, const Nonce& nonce, uint64_t timestamp_ms, Now now);
  // Without a principal (no per-principal share) and with one clock for both.
  Result check_and_insert(const Nonce& nonce, uint64_t timestamp_ms, uint64_t now_ms) {
    return check_and_insert({}, nonce, timestamp_ms, Now{now_ms, now_ms});
  }
  [[nodiscard]] size_t size() const;
  [[nodiscard]] size_t live_of(std::string_view principal) const;
  [[nodiscard]] uint64_t skew_ms() const { return skew_ms_; }

  static constexpr size_t kShards = 16;
  // Hand-over (relay/handover.h): everything a new process needs to refuse what this one accepted.
  // The keys come along, so principal keys and shards mean the same in both processes.
  struct Snapshot {
    struct Item {
      Nonce nonce{};
      uint64_t timestamp_ms = 0;
      uint64_t principal = 0;  // keyed hash of the name (0: none)
      uint64_t left_ms = 0;    // until it expires, on the monotonic clock
    };
    uint64_t seed = 0, shard_seed = 0;
    std::array<uint64_t, kShards> forgotten_ts{};
    std::vector<Item> items;
  };
  [[nodiscard]] Snapshot snapshot(uint64_t mono_now_ms) const;
  // Into an empty cache only (a process that took over, before its first HELLO): takes the keys,
  // each shard's forgotten timestamp and every live nonce (even past this cache's capacity: a live
  // nonce is never dropped). False, nothing changed, when the cache is not empty.
  bool restore(const Snapshot& snap, uint64_t mono_now_ms);
  // A process that starts without its predecessor's cache cannot know which HELLOs that one
  // accepted: treats every timestamp up to `wall_ms` as forgotten (refused kTooOld), in every shard.
  void forget_through(uint64_t wall_ms);

 private:
  struct Entry {
    uint64_t mono_expiry_ms;
    uint64_t timestamp_ms;
    uint64_t principal;  // keyed hash of the principal's name, 0: none
    Nonce nonce;
    bool operator>(const Entry& o) const { return mono_expiry_ms > o.mono_expiry_ms; }
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
    uint64_t forgotten_ts = 0;                        // newest timestamp of a dropped entry
    std::unordered_map<uint64_t, size_t> principals;  // live nonces per principal key in this shard
  };

  [[nodiscard]] uint64_t principal_key(std::string_view principal) const;
  void prune(Shard& s, Now now);  // under s.mu

  uint64_t skew_ms_;
  size_t shard_capacity_;
  size_t per_principal_;
  size_t per_principal_shard_;
  uint64_t seed_;
  uint64_t shard_seed_;  // picks the shard (another key than the shards' own hash tables)
  std::vector<std::unique_ptr<Shard>> shards_;
  // Live nonces per principal key; locked after a shard's mutex, never before.
  mutable std::mutex principals_mu_;
  std::unordered_map<uint64_t, size_t> principals_;
};

}  // namespace sshring::relay::auth
