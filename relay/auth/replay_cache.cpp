#include "relay/auth/replay_cache.h"

#include <algorithm>
#include <cstring>

#include "protocol/keys.h"

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

ReplayCache::ReplayCache(uint64_t skew_ms, size_t capacity, size_t per_principal)
    : skew_ms_(skew_ms),
      shard_capacity_(capacity / kShards + 1),
      per_principal_(per_principal ? per_principal : capacity / 16 + 1),
      per_principal_shard_(
          std::min(2 * per_principal_ / kShards + 1, std::max<size_t>(1, shard_capacity_ / 2))) {
  protocol::random_bytes(reinterpret_cast<uint8_t*>(&seed_), sizeof(seed_));
  protocol::random_bytes(reinterpret_cast<uint8_t*>(&shard_seed_), sizeof(shard_seed_));
  for (size_t i = 0; i < kShards; ++i) shards_.push_back(std::make_unique<Shard>(seed_));
}

uint64_t ReplayCache::principal_key(std::string_view principal) const {
  if (principal.empty()) return 0;
  uint64_t h = seed_;
  for (unsigned char c : principal) h = mix(h ^ c);
  return h | 1;  // never 0 (0 means "no principal")
}

void ReplayCache::prune(Shard& s, Now now) {
  while (!s.by_expiry.empty() && s.by_expiry.top().mono_expiry_ms < now.mono_ms) {
    const Entry& e = s.by_expiry.top();
    s.forgotten_ts = std::max(s.forgotten_ts, e.timestamp_ms);
    s.live.erase(e.nonce);
    if (e.principal != 0) {
      if (auto in = s.principals.find(e.principal); in != s.principals.end() && --in->second == 0)
        s.principals.erase(in);
      std::lock_guard lock(principals_mu_);
      auto it = principals_.find(e.principal);
      if (it != principals_.end() && --it->second == 0) principals_.erase(it);
    }
    s.by_expiry.pop();
  }
}

ReplayCache::Result ReplayCache::check_and_insert(std::string_view principal, const Nonce& nonce,
                                                  uint64_t timestamp_ms, Now now) {
  // Every byte of the nonce, keyed: the client picks the nonce, not the shard.
  Shard& s = *shards_[NonceHash{shard_seed_}(nonce) % kShards];
  const uint64_t who = principal_key(principal);
  std::lock_guard lock(s.mu);
  prune(s, now);
  if (s.live.contains(nonce)) return Result::kReplayed;
  if (timestamp_ms <= s.forgotten_ts) return Result::kTooOld;
  if (s.live.size() >= shard_capacity_) return Result::kFull;
  if (who != 0) {
    // Its share of this shard, then of the whole cache.
    auto here = s.principals.try_emplace(who, 0).first;
    if (here->second >= per_principal_shard_) return Result::kPrincipalFull;
    std::lock_guard plock(principals_mu_);
    size_t& n = principals_[who];
    if (n >= per_principal_) {
      if (here->second == 0) s.principals.erase(here);
      return Result::kPrincipalFull;
    }
    ++n;
    ++here->second;
  }
  const uint64_t wall_expiry = timestamp_ms + skew_ms_;
  const uint64_t left = wall_expiry > now.wall_ms ? wall_expiry - now.wall_ms : 0;
  s.live.insert(nonce);
  s.by_expiry.push(Entry{now.mono_ms + left, timestamp_ms, who, nonce});
  return Result::kFresh;
}

size_t ReplayCache::live_of(std::string_view principal) const {
  std::lock_guard lock(principals_mu_);
  auto it = principals_.find(principal_key(principal));
  return it == principals_.end() ? 0 : it->second;
}

ReplayCache::Snapshot ReplayCache::snapshot(uint64_t mono_now_ms) const {
  Snapshot out;
  out.seed = seed_;
  out.shard_seed = shard_seed_;
  for (size_t i = 0; i < kShards; ++i) {
    const Shard& s = *shards_[i];
    std::lock_guard lock(s.mu);
    out.forgotten_ts[i] = s.forgotten_ts;
    auto q = s.by_expiry;  // a copy: the queue has no iteration
    for (; !q.empty(); q.pop()) {
      const Entry& e = q.top();
      if (e.mono_expiry_ms < mono_now_ms) {  // expired, not yet pruned: forgotten
        out.forgotten_ts[i] = std::max(out.forgotten_ts[i], e.timestamp_ms);
        continue;
      }
      out.items.push_back({e.nonce, e.timestamp_ms, e.principal, e.mono_expiry_ms - mono_now_ms});
    }
  }
  return out;
}

bool ReplayCache::restore(const Snapshot& snap, uint64_t mono_now_ms) {
  if (size() != 0) return false;
  std::lock_guard plock(principals_mu_);
  seed_ = snap.seed;
  shard_seed_ = snap.shard_seed;
  principals_.clear();
  shards_.clear();
  for (size_t i = 0; i < kShards; ++i) {
    shards_.push_back(std::make_unique<Shard>(seed_));
    shards_.back()->forgotten_ts = snap.forgotten_ts[i];
  }
  for (const auto& it : snap.items) {
    Shard& s = *shards_[NonceHash{shard_seed_}(it.nonce) % kShards];
    if (!s.live.insert(it.nonce).second) continue;
    s.by_expiry.push(Entry{mono_now_ms + it.left_ms, it.timestamp_ms, it.principal, it.nonce});
    if (it.principal != 0) {
      ++s.principals[it.principal];
      ++principals_[it.principal];
    }
  }
  return true;
}

void ReplayCache::forget_through(uint64_t wall_ms) {
  for (auto& s : shards_) {
    std::lock_guard lock(s->mu);
    s->forgotten_ts = std::max(s->forgotten_ts, wall_ms);
  }
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
