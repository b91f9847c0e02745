// The relay's config file (YAML), as read by `sshring relay --config FILE` and reloaded on SIGHUP:
//
//   workers: 2                  # 0 or absent: one per CPU
//   max_sessions: 10000
//   connect_timeout: 5s         # durations: 500ms, 5s, 2m, 1h30m
//   idle_timeout: 1h            # 0: none
//   handshake_timeout: 10s
//   drain_timeout: 30s
//   pipe_size: 1048576          # bytes per splice pipe
//   splice_mode: inline         # inline | ring
//   max_startups: 256:30:2048   # unauthenticated connections: start:rate:full (relay/admission.h)
//   max_startups_per_source: 16
//   per_source_netblock: 32:64  # what counts as one source: IPv4 /32, IPv6 /64
//   first_byte_timeout: 3s
//   routes:
//     - listen: 0.0.0.0:2222
//       upstream: 10.0.0.5:22
//     - listen: "[::]:2223"
//       upstream: "[fd00::5]:22"
//
// Errors name the file, the line and the key, and say what is expected. Command-line flags override
// the file's limits (flags given at start stay in force across reloads).
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "relay/relay.h"

namespace sshring::relay {

// "500ms", "5s", "1h30m", "0" (zero). nullopt when malformed.
std::optional<std::chrono::milliseconds> parse_millis(std::string_view text);

// Which top-level settings the file set (so command-line flags can override only the rest).
struct ConfigFile {
  RelayConfig cfg;
  bool has_workers = false, has_max_sessions = false, has_connect_timeout = false, has_idle_timeout = false,
       has_handshake_timeout = false, has_drain_timeout = false;
};

// Parses YAML text; `source` names it in errors ("relay.yaml"). Throws common::UsageError.
// `upstream_optional`: routes may omit `upstream` (authenticated mode: a handshake picks it).
ConfigFile parse_config(std::string_view text, const std::string& source, bool upstream_optional = false);
// Reads and parses a file. Throws common::UsageError (unreadable file or bad content).
ConfigFile load_config_file(const std::string& path, bool upstream_optional = false);

}  // namespace sshring::relay
