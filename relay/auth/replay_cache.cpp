#include "relay/auth/replay_cache.h"

#include <cstring>

#include "relay/auth/keys.h"

namespace sshring::relay::auth {
namespace {
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

size_t ReplayCache::NonceHash::operator()(const Nonce& n) const noexcept {
  // Keyed so that clients cannot aim their nonces at one bucket.
  uint64_t a, b;
  std::memcpy(&a, n.data(), 8);
  std::memcpy(&b, n.data() + 8, 8);
  return static_cast<size_t>(mix(a ^ seed) ^ mix(b + seed));
}

ReplayCache::ReplayCache(uint64_t skew_ms, size_t capacity)
    : skew_ms_(skew_ms), shard_capacity_(capacity / kShards + 1) {
  random_bytes(reinterpret_cast<uint8_t*>(&seed_), sizeof(seed_));
  for (size_t i = 0; i < kShards; ++i) shards_.push_back(std::make_unique<Shard>(seed_));
}

ReplayCache::Result ReplayCache::check_and_insert(const Nonce& nonce, uint64_t timestamp_ms,
                                                  uint64_t now_ms) {
  Shard& s = *shards_[mix(seed_ ^ nonce[0] ^ (uint64_t{nonce[15]} << 8)) % kShards];
  std::lock_guard lock(s.mu);
  while (!s.by_expiry.empty() && s.by_expiry.top().expiry_ms < now_ms) {
    s.live.erase(s.by_expiry.top().nonce);
    s.by_expiry.pop();
  }
  if (s.live.contains(nonce)) return Result::kReplayed;
  if (s.live.size() >= shard_capacity_) return Result::kFull;
  s.live.insert(nonce);
  s.by_expiry.push(Entry{timestamp_ms + skew_ms_, nonce});
  return Result::kFresh;
}

size_t ReplayCache::size() const {
  size_t n = 0;
  for (const auto& s : shards_) {
    std::lock_guard lock(s->mu);
    n += s->live.size();
  }
  return n;
}

}  // namespace sshring::relay::auth
