// Time zones for role windows, without the process-wide TZ variable (localtime_r with a scoped TZ is not
// thread-safe). A zone is "UTC", a fixed offset ("+02:00", "-0530", "UTC+2") or an IANA name read from
// the TZif file in $TZDIR or /usr/share/zoneinfo: we use its 64-bit transition table and, past its
// last transition, its POSIX TZ footer rule ("CET-1CEST,M3.5.0,M10.5.0/3"), so DST is exact for any
// year. Loaded once per snapshot build; offset_at() is a binary search, no allocation.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sshring::policy {

class TimeZone {
 public:
  // Throws common::UsageError naming the zone and the expected forms.
  static std::shared_ptr<const TimeZone> load(std::string_view name);
  // Parses a POSIX TZ rule string ("EST5EDT,M3.2.0,M11.1.0"); nullptr if malformed.
  static std::shared_ptr<const TimeZone> from_posix(std::string_view rule);
  static std::shared_ptr<const TimeZone> utc();

  // Seconds east of UTC in effect at `unix_seconds`.
  [[nodiscard]] int32_t offset_at(int64_t unix_seconds) const noexcept;
  [[nodiscard]] const std::string& name() const noexcept { return name_; }

  struct PosixRule {
    struct When {
      char kind = 0;  // 'M' month.week.day, 'J' julian 1..365 (no Feb 29), 'D' zero-based day 0..365
      int month = 0, week = 0, wday = 0, day = 0;
      int32_t secs = 7200;  // local time of the switch, default 02:00
    };
    int32_t std_offset = 0;  // seconds east of UTC
    int32_t dst_offset = 0;
    bool has_dst = false;
    When start, end;
  };

 private:
  std::string name_;
  std::vector<int64_t> transitions_;  // sorted unix seconds
  std::vector<int32_t> offsets_;      // offset in effect from transitions_[i]
  int32_t initial_offset_ = 0;        // before the first transition
  bool has_rule_ = false;
  PosixRule rule_;
  friend struct TimeZoneBuilder;
};

}  // namespace sshring::policy
