// The proleptic Gregorian calendar in UTC, and RFC 3339 timestamps: the one place every part formats
// and parses the times it writes to audit records, logs and policy files.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sshring::common {

// Floor division (rounds toward minus infinity), for times before 1970.
int64_t floor_div(int64_t a, int64_t b) noexcept;
bool is_leap_year(int64_t y) noexcept;
unsigned month_days(int64_t y, unsigned m) noexcept;  // m is 1..12
// Days since 1970-01-01 of a civil date, and back.
int64_t days_from_civil(int64_t y, unsigned m, unsigned d) noexcept;
void civil_from_days(int64_t days, int64_t* y, unsigned* m, unsigned* d) noexcept;
// 0 = Sunday ... 6 = Saturday.
unsigned weekday_from_days(int64_t days) noexcept;

// Parses "2027-06-30T00:00:00Z" or with an offset "+02:00"; also a bare date "2027-06-30" (midnight
// UTC), 'T' or ' ' between date and time, seconds optional: the times people write in policy files
// and flags. Returns false if malformed (a time without a zone is).
bool parse_rfc3339(std::string_view text, int64_t* unix_seconds);
// The times our writers emit, read back: "2027-06-30T00:00:00.250Z" (a fraction of any length, or
// none; Z or an offset). Milliseconds since the epoch, or nullopt if malformed.
std::optional<int64_t> parse_rfc3339_ms(std::string_view text);
std::string format_rfc3339(int64_t unix_seconds);    // "2027-06-30T00:00:00Z"
std::string format_rfc3339_ms(int64_t unix_millis);  // "2027-06-30T00:00:00.250Z"

}  // namespace sshring::common
