// Pre-authentication admission: the budget of connections that were accepted but have not yet shown a
// verified preamble ("startups", as OpenSSH calls them). Modelled on sshd's MaxStartups and
// PerSourceMaxStartups/PerSourceNetBlockSize:
//
//   * relay-wide: below `start` startups every connection is admitted; from `start` on a new one is
//     refused with probability rate% rising linearly to 100% at `full` (random early drop), so a
//     flood cannot take the last slot deterministically;
//   * per source: at most `per_source` startups from one IPv4 /v4_prefix or IPv6 /v6_prefix network
//     (default /32 and /64: one host, one customer network), counted at accept, before any byte;
//   * the worker ends a startup that sent no byte within `first_byte_timeout`.
//
// Startups never count against RelayConfig::max_sessions: that budget is for authenticated sessions
// (and static routes), so silent connections cannot take a real user's slot. The worker calls enter()
// once per accepted connection of a handshake route and leave() once the handshake decided (verified,
// refused) or the connection ended. One object is shared by every worker (a source is spread over the
// workers by SO_REUSEPORT); it takes one short lock per accept and per leave, never per byte.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string_view>
#include <unordered_map>

#include "common/sockaddr.h"
#include "metrics/catalog.h"

namespace sshring::relay {

struct AdmissionConfig {
  uint32_t start = 256;      // --max-startups start:rate:full
  uint32_t rate = 30;        // percent refused at `start`
  uint32_t full = 2048;      // every new startup refused from here on
  uint32_t per_source = 16;  // --max-startups-per-source
  uint8_t v4_prefix = 32;    // --per-source-netblock V4:V6
  uint8_t v6_prefix = 64;
  std::chrono::milliseconds first_byte_timeout{3000};  // --first-byte-timeout
};

// Parses "start:rate:full" (or a single "full", as sshd does) into `cfg`. Throws common::UsageError
// naming `what` and the expected form.
void parse_max_startups(std::string_view text, std::string_view what, AdmissionConfig& cfg);
// Parses "V4:V6" prefix lengths (e.g. "32:64"; "24" sets only IPv4).
void parse_netblock(std::string_view text, std::string_view what, AdmissionConfig& cfg);
// Throws common::UsageError when the numbers do not make sense together.
void validate(const AdmissionConfig& cfg);

// Why a startup was refused; index into metrics::kStartupRefusals (label `reason`).
enum class StartupRefusal : uint8_t { kFull, kEarlyDrop, kPerSource, kFirstByteTimeout };
static_assert(static_cast<size_t>(StartupRefusal::kFirstByteTimeout) + 1 == metrics::kNumStartupRefusals,
              "StartupRefusal and metrics::kStartupRefusals must list the same reasons");
const char* startup_refusal_name(StartupRefusal r);

class Admission {
 public:
  // `random`: uniform 32-bit numbers for the early drop (tests pass a fixed sequence); default: a
  // generator seeded from std::random_device.
  explicit Admission(AdmissionConfig cfg, std::function<uint32_t()> random = {});

  // New limits for new connections (reload); startups in progress stay counted.
  void configure(const AdmissionConfig& cfg);
  [[nodiscard]] AdmissionConfig config() const;

  // The source network a client counts under: family byte, then the address masked to the prefix.
  using SourceKey = std::array<uint8_t, 17>;

  // At accept. nullopt: admitted and counted until leave(key), `key` is where it counts (kept by the
  // caller, so a reload that changes the prefixes releases what was taken). Otherwise the refusal
  // (nothing counted).
  std::optional<StartupRefusal> enter(const common::SockAddr& client, SourceKey& key);
  void leave(const SourceKey& key);

  [[nodiscard]] uint32_t in_progress() const;
  [[nodiscard]] uint32_t from(const common::SockAddr& client) const;

  [[nodiscard]] static SourceKey source_of(const common::SockAddr& client, uint8_t v4_prefix,
                                           uint8_t v6_prefix);

 private:
  struct KeyHash {
    size_t operator()(const SourceKey& k) const noexcept;
  };
  bool early_drop(uint32_t n);  // under mu_

  mutable std::mutex mu_;
  AdmissionConfig cfg_;
  std::function<uint32_t()> random_;
  uint64_t rng_state_ = 0;
  uint32_t total_ = 0;
  std::unordered_map<SourceKey, uint32_t, KeyHash> per_source_;
};

}  // namespace sshring::relay
