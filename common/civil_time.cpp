#include "common/civil_time.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <optional>

namespace sshring::common {

int64_t floor_div(int64_t a, int64_t b) noexcept {
  return a / b - ((a % b != 0) && ((a < 0) != (b < 0)));
}

bool is_leap_year(int64_t y) noexcept {
  return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

unsigned month_days(int64_t y, unsigned m) noexcept {
  static constexpr unsigned kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && is_leap_year(y) ? 29 : kDays[m - 1];
}

// Howard Hinnant's days_from_civil / civil_from_days (eras of 400 years, March-based years).
int64_t days_from_civil(int64_t y, unsigned m, unsigned d) noexcept {
  y -= m <= 2;
  const int64_t era = floor_div(y, 400);
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

void civil_from_days(int64_t z, int64_t* y, unsigned* m, unsigned* d) noexcept {
  z += 719468;
  const int64_t era = floor_div(z, 146097);
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t yy = static_cast<int64_t>(yoe) + era * 400;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = yy + (*m <= 2);
}

unsigned weekday_from_days(int64_t z) noexcept {
  return static_cast<unsigned>(z >= -4 ? (z + 4) % 7 : (z + 5) % 7 + 6);
}

namespace {

// The one RFC 3339 reader. `human` is the grammar of files people write (policy, flags): a bare date
// (midnight UTC), ' ' for 'T', seconds optional, no fraction. Otherwise the grammar our writers emit
// (audit records): the full date-time with seconds and an optional fraction.
bool parse(std::string_view s, bool human, int64_t* unix_ms) {
  if (s.size() > 40) return false;
  auto num = [&](size_t pos, size_t len, int* v) {
    if (pos + len > s.size()) return false;
    *v = 0;
    for (size_t i = pos; i < pos + len; ++i) {
      if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
      *v = *v * 10 + (s[i] - '0');
    }
    return true;
  };
  int y, mo, d, h = 0, mi = 0, se = 0;
  if (!num(0, 4, &y) || s.size() < 10 || s[4] != '-' || !num(5, 2, &mo) || s[7] != '-' || !num(8, 2, &d))
    return false;
  if (mo < 1 || mo > 12 || d < 1 || d > static_cast<int>(month_days(y, static_cast<unsigned>(mo))))
    return false;
  int64_t offset = 0, ms = 0;
  if (s.size() == 10) {
    if (!human) return false;
  } else {
    if ((s[10] != 'T' && s[10] != 't' && !(human && s[10] == ' ')) || !num(11, 2, &h) || s.size() < 16 ||
        s[13] != ':' || !num(14, 2, &mi)) {
      return false;
    }
    size_t p = 16;
    if (p < s.size() && s[p] == ':') {
      if (!num(p + 1, 2, &se)) return false;
      p += 3;
    } else if (!human) {
      return false;
    }
    if (!human && p < s.size() && s[p] == '.') {
      const size_t start = ++p;
      for (int64_t scale = 100; p < s.size() && std::isdigit(static_cast<unsigned char>(s[p]));
           ++p, scale /= 10)
        ms += (s[p] - '0') * scale;
      if (p == start) return false;
    }
    if (h > 23 || mi > 59 || se > 60) return false;
    if (p >= s.size()) return false;  // a time needs a zone: Z or an offset
    if (s[p] == 'Z' || s[p] == 'z') {
      if (p + 1 != s.size()) return false;
    } else if (s[p] == '+' || s[p] == '-') {
      int oh, om;
      if (s.size() != p + 6 || !num(p + 1, 2, &oh) || s[p + 3] != ':' || !num(p + 4, 2, &om) || oh > 23 ||
          om > 59) {
        return false;
      }
      offset = (s[p] == '-' ? -1 : 1) * (int64_t{oh} * 3600 + int64_t{om} * 60);
    } else {
      return false;
    }
  }
  const int64_t secs = days_from_civil(y, static_cast<unsigned>(mo), static_cast<unsigned>(d)) * 86400 +
                       int64_t{h} * 3600 + int64_t{mi} * 60 + se - offset;
  *unix_ms = secs * 1000 + ms;
  return true;
}

}  // namespace

bool parse_rfc3339(std::string_view text, int64_t* unix_seconds) {
  int64_t ms;
  if (!parse(text, /*human=*/true, &ms)) return false;
  *unix_seconds = ms / 1000;  // no fraction in this grammar: exact
  return true;
}

std::optional<int64_t> parse_rfc3339_ms(std::string_view text) {
  int64_t ms;
  if (!parse(text, /*human=*/false, &ms)) return std::nullopt;
  return ms;
}

namespace {

// RFC 3339 has four-digit years: times outside 0000-01-01 .. 9999-12-31 print as those bounds (and
// the arithmetic below stays far from overflow whatever number a record or flag carried).
constexpr int64_t kMinSeconds = -62167219200;  // 0000-01-01T00:00:00Z
constexpr int64_t kMaxSeconds = 253402300799;  // 9999-12-31T23:59:59Z

std::string format(int64_t unix_seconds, int millis) {
  unix_seconds = std::clamp(unix_seconds, kMinSeconds, kMaxSeconds);
  const int64_t days = floor_div(unix_seconds, 86400);
  const int64_t secs = unix_seconds - days * 86400;
  int64_t y;
  unsigned m, d;
  civil_from_days(days, &y, &m, &d);
  char buf[48];
  int n = std::snprintf(buf, sizeof buf, "%04lld-%02u-%02uT%02lld:%02lld:%02lld", static_cast<long long>(y),
                        m, d, static_cast<long long>(secs / 3600), static_cast<long long>(secs / 60 % 60),
                        static_cast<long long>(secs % 60));
  std::string out(buf, n > 0 ? static_cast<size_t>(n) : 0);
  if (millis >= 0) {
    (void)std::snprintf(buf, sizeof buf, ".%03d", millis);
    out += buf;
  }
  out += 'Z';
  return out;
}

}  // namespace

std::string format_rfc3339(int64_t unix_seconds) {
  return format(unix_seconds, -1);
}

std::string format_rfc3339_ms(int64_t unix_millis) {
  const auto rem = static_cast<int>(unix_millis % 1000);  // no multiplication back: INT64_MIN is fine
  return format(floor_div(unix_millis, 1000), rem < 0 ? rem + 1000 : rem);
}

}  // namespace sshring::common
