// Reading audit records back: the parser shared by `sshring audit verify|report`, the writer's
// restart path and the fuzz target. Input is untrusted (a file anyone may have edited): hard limits,
// no exceptions escape parse_record.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sshring::metrics {

// Longest line the readers accept; the writers produce records far below this.
inline constexpr size_t kMaxRecordBytes = size_t{64} * 1024;
// `prev` of the first record of a fresh chain.
inline const std::string kZeroHash(64, '0');

// Record types (docs/audit.md). The log_* types and checkpoint are written by the log itself.
inline constexpr const char* kRecordTypes[] = {
    "session_start", "session_end", "session_deny", "grant_add", "grant_revoke", "grant_expire", "flow_open",
    "flow_close", "flow_cut", "policy_reload", "log_rotate", "log_recover", "log_reopen", "log_gap",
    "checkpoint", "relay_handover", "policy_push",
    // signed grants (docs/policy.md)
    "grant_request", "grant_approve", "grant_deny", "grant_review", "grant_reject"};

// clang-tidy 14 sees nlohmann::json's move as throwing in the implicit move constructor.
struct AuditRecord {  // NOLINT(bugprone-exception-escape)
  std::string ts;
  int64_t ts_ms = 0;  // ts as Unix milliseconds
  std::string type;
  std::string component;
  std::string host;
  uint64_t seq = 0;
  std::string prev;
  nlohmann::json body;  // the whole record, envelope included
};

// Parses and validates one line (without its newline): a JSON object with the envelope fields
// (ts RFC 3339 UTC, type known, component, host, seq >= 1, prev 64 lowercase hex) and the required
// fields of its type. nullopt and *error set ("field 'seq' missing", ...) otherwise.
std::optional<AuditRecord> parse_record(std::string_view line, std::string* error);

// Hex SHA-256 of `data` (lowercase, 64 chars).
std::string sha256_hex(std::string_view data);

}  // namespace sshring::metrics
