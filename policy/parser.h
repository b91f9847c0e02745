// policy.yaml -> Policy. Every error names the file, line and column, the key and what is expected;
// unknown keys, duplicate keys and duplicate names are errors; the file and every list have limits.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "policy/model.h"

namespace sshring::policy {

// A policy file error: "policy.yaml:12:5: principals[0].keys[1]: expected ... (...)".
class PolicyError : public common::SourceError {
 public:
  using common::SourceError::SourceError;
};

// Parses YAML text. `source` names the input in errors. Throws PolicyError.
// Printable text only: false for control characters (C0, DEL, C1) and invalid or overlong UTF-8,
// which would corrupt logs, audit records, terminals and the YAML we emit. The policy parser and the
// grant code (request text, decision notes) use the same rule.
[[nodiscard]] bool printable_utf8(std::string_view s);
// `s` made safe to print to a terminal: printable UTF-8 stays as it is, a backslash becomes "\\",
// every other byte "\xHH", and the bidirectional overrides and isolates (U+200E, U+200F,
// U+202A-U+202E, U+2066-U+2069), which reorder what a screen shows, "\u{XXXX}". Injective, so
// two different texts never print alike.
[[nodiscard]] std::string printable_escape(std::string_view s);

Policy parse_policy(std::string_view text, std::string_view source = "policy.yaml");
// Reads and parses a file (size-limited). Throws PolicyError (or common::SystemError if unreadable).
Policy load_policy_file(const std::string& path);
// Emits YAML that parse_policy reads back to an equal Policy.
std::string to_yaml(const Policy& policy);

// Lints for `sshring policy check`: valid but suspicious.
struct Lint {
  std::string where;    // "opt_out[ci-direct]"
  std::string message;  // "from 0.0.0.0/0 opens direct SSH to every source"
};
inline constexpr int64_t kSaneMaxTtlSeconds = int64_t{24} * 3600;
// `relays` prefixes shorter than these are linted as overly wide (every host inside is trusted).
inline constexpr unsigned kMinRelayPrefixV4 = 16;
inline constexpr unsigned kMinRelayPrefixV6 = 48;
std::vector<Lint> lint_policy(const Policy& policy, UnixSeconds now);

}  // namespace sshring::policy
