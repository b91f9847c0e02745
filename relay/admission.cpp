#include "relay/admission.h"

#include <netinet/in.h>

#include <charconv>
#include <cstring>
#include <random>
#include <string>

#include "common/error.h"

namespace sshring::relay {
namespace {

// One number of `text` (the whole flag value, named in the error).
uint32_t parse_u32(std::string_view s, std::string_view what, std::string_view text, std::string_view form) {
  uint32_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size())
    throw common::UsageError(std::string(what) + " '" + std::string(text) + "': expected " +
                             std::string(form));
  return v;
}

// Keeps the first `bits` bits of `n` bytes at `p`, zeroes the rest.
void mask(uint8_t* p, size_t n, unsigned bits) {
  for (size_t i = 0; i < n; ++i) {
    unsigned keep = bits >= 8 * (i + 1) ? 8 : (bits > 8 * i ? bits - 8 * i : 0);
    p[i] = static_cast<uint8_t>(p[i] & static_cast<uint8_t>(0xff00u >> keep));
  }
}

uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

const char* startup_refusal_name(StartupRefusal r) {
  auto i = static_cast<size_t>(r);
  return i < metrics::kNumStartupRefusals ? metrics::kStartupRefusals[i] : "unknown";
}

void parse_max_startups(std::string_view text, std::string_view what, AdmissionConfig& cfg) {
  constexpr std::string_view kForm = "START:RATE:FULL (e.g. 256:30:2048) or FULL";
  auto c1 = text.find(':');
  if (c1 == std::string_view::npos) {
    uint32_t full = parse_u32(text, what, text, kForm);
    cfg.start = full;
    cfg.rate = 100;
    cfg.full = full;
  } else {
    auto c2 = text.find(':', c1 + 1);
    if (c2 == std::string_view::npos)
      throw common::UsageError(std::string(what) + " '" + std::string(text) + "': expected " +
                               std::string(kForm));
    cfg.start = parse_u32(text.substr(0, c1), what, text, kForm);
    cfg.rate = parse_u32(text.substr(c1 + 1, c2 - c1 - 1), what, text, kForm);
    cfg.full = parse_u32(text.substr(c2 + 1), what, text, kForm);
  }
  // Checked here with `what` (a flag or a config key); validate() names the flags.
  const std::string head = std::string(what) + " '" + std::string(text) + "': ";
  if (cfg.full == 0) throw common::UsageError(head + "FULL must be at least 1");
  if (cfg.start > cfg.full) throw common::UsageError(head + "START must not exceed FULL");
  if (cfg.rate > 100) throw common::UsageError(head + "RATE is a percentage, 0..100");
  validate(cfg);
}

void parse_netblock(std::string_view text, std::string_view what, AdmissionConfig& cfg) {
  constexpr std::string_view kForm = "V4:V6 prefix lengths (e.g. 32:64)";
  auto c = text.find(':');
  uint32_t v4 = parse_u32(text.substr(0, c), what, text, kForm);
  uint32_t v6 =
      c == std::string_view::npos ? cfg.v6_prefix : parse_u32(text.substr(c + 1), what, text, kForm);
  if (v4 > 32 || v6 > 128)
    throw common::UsageError(std::string(what) + " '" + std::string(text) +
                             "': IPv4 prefix 0..32, IPv6 prefix 0..128");
  cfg.v4_prefix = static_cast<uint8_t>(v4);
  cfg.v6_prefix = static_cast<uint8_t>(v6);
}

void validate(const AdmissionConfig& cfg) {
  if (cfg.full == 0) throw common::UsageError("--max-startups: FULL must be at least 1");
  if (cfg.start > cfg.full) throw common::UsageError("--max-startups: START must not exceed FULL");
  if (cfg.rate > 100) throw common::UsageError("--max-startups: RATE is a percentage, 0..100");
  if (cfg.per_source == 0) throw common::UsageError("--max-startups-per-source must be at least 1");
  if (cfg.v4_prefix > 32 || cfg.v6_prefix > 128)
    throw common::UsageError("--per-source-netblock: IPv4 prefix 0..32, IPv6 prefix 0..128");
  if (cfg.first_byte_timeout.count() <= 0) throw common::UsageError("--first-byte-timeout must be positive");
}

Admission::Admission(AdmissionConfig cfg, std::function<uint32_t()> random)
    : cfg_(cfg), random_(std::move(random)) {
  validate(cfg_);
  std::random_device rd;
  rng_state_ = (uint64_t{rd()} << 32) | rd();
}

void Admission::configure(const AdmissionConfig& cfg) {
  validate(cfg);
  std::lock_guard lock(mu_);
  cfg_ = cfg;
}

AdmissionConfig Admission::config() const {
  std::lock_guard lock(mu_);
  return cfg_;
}

Admission::SourceKey Admission::source_of(const common::SockAddr& a, uint8_t v4_prefix, uint8_t v6_prefix) {
  SourceKey k{};
  if (a.family() == AF_INET) {
    k[0] = 4;
    std::memcpy(k.data() + 1, &reinterpret_cast<const sockaddr_in*>(a.get())->sin_addr, 4);
    mask(k.data() + 1, 4, v4_prefix);
  } else if (a.family() == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(a.get());
    if (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr)) {  // dual-stack listener: an IPv4 client
      k[0] = 4;
      std::memcpy(k.data() + 1, v6->sin6_addr.s6_addr + 12, 4);
      mask(k.data() + 1, 4, v4_prefix);
    } else {
      k[0] = 6;
      std::memcpy(k.data() + 1, v6->sin6_addr.s6_addr, 16);
      mask(k.data() + 1, 16, v6_prefix);
    }
  }
  return k;  // unknown family (no peer address): all such clients share one key
}

size_t Admission::KeyHash::operator()(const SourceKey& k) const noexcept {
  return std::hash<std::string_view>{}(std::string_view(reinterpret_cast<const char*>(k.data()), k.size()));
}

bool Admission::early_drop(uint32_t n) {
  if (n < cfg_.start) return false;
  if (n >= cfg_.full) return true;
  // sshd's MaxStartups curve: rate% at `start`, rising linearly to 100% at `full`.
  const double span = static_cast<double>(cfg_.full - cfg_.start);
  const double p = cfg_.rate / 100.0 + (1.0 - cfg_.rate / 100.0) * (n - cfg_.start) / span;
  const uint32_t r = random_ ? random_() : static_cast<uint32_t>(splitmix(rng_state_));
  return static_cast<double>(r) < p * 4294967296.0;
}

std::optional<StartupRefusal> Admission::enter(const common::SockAddr& client, SourceKey& key) {
  std::lock_guard lock(mu_);
  if (total_ >= cfg_.full) return StartupRefusal::kFull;
  key = source_of(client, cfg_.v4_prefix, cfg_.v6_prefix);
  auto it = per_source_.find(key);
  if (it != per_source_.end() && it->second >= cfg_.per_source) return StartupRefusal::kPerSource;
  if (early_drop(total_)) return StartupRefusal::kEarlyDrop;
  if (it == per_source_.end()) it = per_source_.emplace(key, 0).first;
  ++it->second;
  ++total_;
  return std::nullopt;
}

void Admission::leave(const SourceKey& key) {
  std::lock_guard lock(mu_);
  auto it = per_source_.find(key);
  if (it == per_source_.end()) return;
  if (--it->second == 0) per_source_.erase(it);
  if (total_ > 0) --total_;
}

uint32_t Admission::in_progress() const {
  std::lock_guard lock(mu_);
  return total_;
}

uint32_t Admission::from(const common::SockAddr& client) const {
  std::lock_guard lock(mu_);
  auto it = per_source_.find(source_of(client, cfg_.v4_prefix, cfg_.v6_prefix));
  return it == per_source_.end() ? 0 : it->second;
}

}  // namespace sshring::relay
