#include "policy/timezone.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>

#include "common/civil_time.h"
#include "common/error.h"

namespace sshring::policy {

using common::civil_from_days;
using common::days_from_civil;
using common::floor_div;
using common::is_leap_year;
using common::month_days;
using common::weekday_from_days;

struct TimeZoneBuilder {
  static std::shared_ptr<TimeZone> make(std::string name) {
    auto tz = std::shared_ptr<TimeZone>(new TimeZone());
    tz->name_ = std::move(name);
    return tz;
  }
  static void set_rule(TimeZone& tz, const TimeZone::PosixRule& r) {
    tz.has_rule_ = true;
    tz.rule_ = r;
  }
  static const TimeZone::PosixRule& rule(const TimeZone& tz) { return tz.rule_; }
  static void set_table(TimeZone& tz, std::vector<int64_t> t, std::vector<int32_t> o, int32_t initial) {
    tz.transitions_ = std::move(t);
    tz.offsets_ = std::move(o);
    tz.initial_offset_ = initial;
  }
};

namespace {

// --- POSIX TZ strings -------------------------------------------------------------------------------

struct Cursor {
  std::string_view s;
  size_t i = 0;
  [[nodiscard]] bool done() const { return i >= s.size(); }
  [[nodiscard]] char peek() const { return done() ? '\0' : s[i]; }
};

bool parse_name(Cursor& c) {
  if (c.peek() == '<') {
    size_t close = c.s.find('>', c.i);
    if (close == std::string_view::npos || close - c.i < 4) return false;
    c.i = close + 1;
    return true;
  }
  size_t start = c.i;
  while (!c.done() && std::isalpha(static_cast<unsigned char>(c.peek()))) ++c.i;
  return c.i - start >= 3;
}

bool parse_num(Cursor& c, int max, int* out) {
  size_t start = c.i;
  int v = 0;
  while (!c.done() && std::isdigit(static_cast<unsigned char>(c.peek()))) {
    v = v * 10 + (c.peek() - '0');
    ++c.i;
    if (v > max) return false;
  }
  if (c.i == start) return false;
  *out = v;
  return true;
}

// [+-]hh[:mm[:ss]] -> seconds (sign as written).
bool parse_hms(Cursor& c, int max_hours, int32_t* out) {
  int sign = 1;
  if (c.peek() == '+' || c.peek() == '-') {
    if (c.peek() == '-') sign = -1;
    ++c.i;
  }
  int h = 0, m = 0, s = 0;
  if (!parse_num(c, max_hours, &h)) return false;
  if (c.peek() == ':') {
    ++c.i;
    if (!parse_num(c, 59, &m)) return false;
    if (c.peek() == ':') {
      ++c.i;
      if (!parse_num(c, 59, &s)) return false;
    }
  }
  *out = sign * (h * 3600 + m * 60 + s);
  return true;
}

bool parse_when(Cursor& c, TimeZone::PosixRule::When* w) {
  if (c.peek() == 'M') {
    ++c.i;
    w->kind = 'M';
    if (!parse_num(c, 12, &w->month) || w->month < 1 || c.peek() != '.') return false;
    ++c.i;
    if (!parse_num(c, 5, &w->week) || w->week < 1 || c.peek() != '.') return false;
    ++c.i;
    if (!parse_num(c, 6, &w->wday)) return false;
  } else if (c.peek() == 'J') {
    ++c.i;
    w->kind = 'J';
    if (!parse_num(c, 365, &w->day) || w->day < 1) return false;
  } else {
    w->kind = 'D';
    if (!parse_num(c, 365, &w->day)) return false;
  }
  if (c.peek() == '/') {
    ++c.i;
    if (!parse_hms(c, 167, &w->secs)) return false;
  }
  return true;
}

// Day number (days since epoch) of a rule date in year y.
int64_t rule_day(const TimeZone::PosixRule::When& w, int64_t y) {
  int64_t jan1 = days_from_civil(y, 1, 1);
  if (w.kind == 'J') return jan1 + w.day - 1 + (is_leap_year(y) && w.day >= 60 ? 1 : 0);
  if (w.kind == 'D') return jan1 + w.day;
  int64_t first = days_from_civil(y, static_cast<unsigned>(w.month), 1);
  unsigned wd = weekday_from_days(first);
  int64_t day = first + (static_cast<unsigned>(w.wday) + 7 - wd) % 7 + int64_t{w.week - 1} * 7;
  int64_t mlen = month_days(y, static_cast<unsigned>(w.month));
  while (day >= first + mlen) day -= 7;
  return day;
}

int32_t rule_offset(const TimeZone::PosixRule& r, int64_t t) {
  if (!r.has_dst) return r.std_offset;
  int64_t y;
  unsigned m, d;
  civil_from_days(floor_div(t + r.std_offset, 86400), &y, &m, &d);
  int64_t start = rule_day(r.start, y) * 86400 + r.start.secs - r.std_offset;
  int64_t end = rule_day(r.end, y) * 86400 + r.end.secs - r.dst_offset;
  bool dst = start < end ? (t >= start && t < end) : !(t >= end && t < start);
  return dst ? r.dst_offset : r.std_offset;
}

// --- TZif files -------------------------------------------------------------------------------------

uint32_t be32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

[[noreturn]] void bad_zone(std::string_view name, std::string_view why) {
  throw common::UsageError("time zone '" + std::string(name) + "': " + std::string(why) +
                           "; use UTC, a fixed offset like +02:00, or an IANA name like Europe/Berlin");
}

std::shared_ptr<const TimeZone> parse_tzif(std::string_view name, const std::string& data) {
  auto u = reinterpret_cast<const unsigned char*>(data.data());
  size_t n = data.size();
  if (n < 44 || std::memcmp(u, "TZif", 4) != 0) bad_zone(name, "not a TZif file");
  auto counts = [&](size_t off, uint32_t c[6]) {
    if (off + 44 > n) bad_zone(name, "truncated TZif header");
    for (int i = 0; i < 6; ++i) c[i] = be32(u + off + 20 + static_cast<size_t>(i) * 4);
  };
  uint32_t c[6];
  counts(0, c);
  auto block_size = [](const uint32_t c[6], size_t tsize) {
    // isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt
    return size_t{c[3]} * tsize + c[3] + size_t{c[4]} * 6 + c[5] + size_t{c[2]} * (tsize + 4) + c[1] + c[0];
  };
  size_t off = 44;
  size_t tsize = 4;
  if (u[4] >= '2') {  // skip the 32-bit block, use the 64-bit one
    off += block_size(c, 4);
    if (off + 44 > n || std::memcmp(u + off, "TZif", 4) != 0) bad_zone(name, "malformed TZif v2 header");
    counts(off, c);
    off += 44;
    tsize = 8;
  }
  if (c[3] > 10000 || c[4] == 0 || c[4] > 256 || off + block_size(c, tsize) > n)
    bad_zone(name, "malformed TZif data");
  const uint32_t timecnt = c[3], typecnt = c[4];
  const unsigned char* times = u + off;
  const unsigned char* idx = times + size_t{timecnt} * tsize;
  const unsigned char* types = idx + timecnt;
  std::vector<int32_t> type_off(typecnt);
  for (uint32_t i = 0; i < typecnt; ++i)
    type_off[i] = static_cast<int32_t>(be32(types + static_cast<size_t>(i) * 6));
  std::vector<int64_t> trans(timecnt);
  std::vector<int32_t> offs(timecnt);
  for (uint32_t i = 0; i < timecnt; ++i) {
    if (tsize == 8) {
      trans[i] = static_cast<int64_t>((uint64_t{be32(times + static_cast<size_t>(i) * 8)} << 32) |
                                      be32(times + static_cast<size_t>(i) * 8 + 4));
    } else {
      trans[i] = static_cast<int32_t>(be32(times + static_cast<size_t>(i) * 4));
    }
    if (idx[i] >= typecnt) bad_zone(name, "TZif transition names a missing type");
    offs[i] = type_off[idx[i]];
    if (i > 0 && trans[i] <= trans[i - 1]) bad_zone(name, "TZif transitions out of order");
  }
  auto tz = TimeZoneBuilder::make(std::string(name));
  TimeZoneBuilder::set_table(*tz, std::move(trans), std::move(offs), type_off[0]);
  if (tsize == 8) {
    size_t foot = off + block_size(c, tsize);
    if (foot < n && u[foot] == '\n') {
      size_t end = data.find('\n', foot + 1);
      if (end != std::string::npos && end > foot + 1) {
        auto rule = TimeZone::from_posix(std::string_view(data).substr(foot + 1, end - foot - 1));
        if (!rule) bad_zone(name, "unreadable POSIX rule in TZif footer");
        TimeZoneBuilder::set_rule(*tz, TimeZoneBuilder::rule(*rule));
      }
    }
  }
  return tz;
}

}  // namespace

std::shared_ptr<const TimeZone> TimeZone::from_posix(std::string_view rule) {
  Cursor c{rule};
  PosixRule r;
  if (!parse_name(c)) return nullptr;
  int32_t off = 0;
  if (!parse_hms(c, 24, &off)) return nullptr;
  r.std_offset = -off;  // POSIX offsets are west of UTC
  if (!c.done()) {
    if (!parse_name(c)) return nullptr;
    r.has_dst = true;
    r.dst_offset = r.std_offset + 3600;
    if (!c.done() && c.peek() != ',') {
      if (!parse_hms(c, 24, &off)) return nullptr;
      r.dst_offset = -off;
    }
    if (c.peek() != ',') return nullptr;  // no default rule: zoneinfo always spells it out
    ++c.i;
    if (!parse_when(c, &r.start) || c.peek() != ',') return nullptr;
    ++c.i;
    if (!parse_when(c, &r.end) || !c.done()) return nullptr;
  }
  auto tz = TimeZoneBuilder::make(std::string(rule));
  TimeZoneBuilder::set_rule(*tz, r);
  return tz;
}

std::shared_ptr<const TimeZone> TimeZone::utc() {
  static const std::shared_ptr<const TimeZone> kUtc = [] {
    auto tz = TimeZoneBuilder::make("UTC");
    return std::shared_ptr<const TimeZone>(tz);
  }();
  return kUtc;
}

std::shared_ptr<const TimeZone> TimeZone::load(std::string_view name) {
  if (name.empty()) bad_zone(name, "empty");
  if (name == "UTC" || name == "Z" || name == "GMT" || name == "Etc/UTC") return utc();
  std::string_view off = name;
  if (off.starts_with("UTC") && off.size() > 3 && (off[3] == '+' || off[3] == '-')) off.remove_prefix(3);
  if (off[0] == '+' || off[0] == '-') {
    int sign = off[0] == '-' ? -1 : 1;
    off.remove_prefix(1);
    std::string digits;
    for (char ch : off) {
      if (ch != ':') digits += ch;
    }
    if (digits.empty() || digits.size() > 4 || !std::all_of(digits.begin(), digits.end(), ::isdigit)) {
      bad_zone(name, "malformed fixed offset");
    }
    int h = 0, m = 0;
    if (digits.size() <= 2) {
      h = std::stoi(digits);
    } else {
      h = std::stoi(digits.substr(0, digits.size() - 2));
      m = std::stoi(digits.substr(digits.size() - 2));
    }
    if (h > 14 || m > 59) bad_zone(name, "offset out of range (at most 14:00)");
    auto tz = TimeZoneBuilder::make(std::string(name));
    PosixRule r;
    r.std_offset = sign * (h * 3600 + m * 60);
    TimeZoneBuilder::set_rule(*tz, r);
    return tz;
  }
  if (name.size() > 64 || name.front() == '/' || name.find("..") != std::string_view::npos ||
      !std::all_of(name.begin(), name.end(), [](char ch) {
        return std::isalnum(static_cast<unsigned char>(ch)) || std::strchr("/_+-", ch);
      })) {
    bad_zone(name, "not a valid zone name");
  }
  const char* dir = std::getenv("TZDIR");
  std::string path = std::string(dir && *dir ? dir : "/usr/share/zoneinfo") + "/" + std::string(name);
  std::ifstream in(path, std::ios::binary);
  if (!in) bad_zone(name, "no such zone in the time zone database (" + path + ")");
  std::string data;
  data.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  if (data.size() > (1u << 20)) bad_zone(name, "zone file too large");
  return parse_tzif(name, data);
}

int32_t TimeZone::offset_at(int64_t t) const noexcept {
  if (transitions_.empty() || t >= transitions_.back()) {
    if (has_rule_) return rule_offset(rule_, t);
    return transitions_.empty() ? initial_offset_ : offsets_.back();
  }
  auto it = std::upper_bound(transitions_.begin(), transitions_.end(), t);
  if (it == transitions_.begin()) return initial_offset_;
  return offsets_[static_cast<size_t>(it - transitions_.begin() - 1)];
}

}  // namespace sshring::policy
