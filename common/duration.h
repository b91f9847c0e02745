// Durations as users write them: "90s", "15m", "2h", "1h30m", "7d".
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace sshring::common {

// Parses a positive duration made of <int><unit> groups (units: s, m, h, d). nullopt if malformed.
std::optional<std::chrono::seconds> parse_duration(std::string_view text);
// Throws UsageError naming `what` when malformed.
std::chrono::seconds parse_duration_or_throw(std::string_view text, std::string_view what);
// "2h5m", "45s", "0s".
std::string format_duration(std::chrono::seconds d);

}  // namespace sshring::common
