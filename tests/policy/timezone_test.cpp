// Time zones and windows: the TZif reader against glibc for many zones and instants, POSIX rules,
// fixed offsets, windows across midnight and across both DST switches.
#include <gtest/gtest.h>

#include <ctime>
#include <random>

#include "common/civil_time.h"
#include "common/error.h"
#include "policy/model.h"
#include "policy/timezone.h"

namespace sshring::policy {
namespace {

// glibc as the oracle: single-threaded test, so setting TZ here is fine (the library never does).
int32_t glibc_offset(const char* zone, int64_t t) {
  setenv("TZ", zone, 1);
  tzset();
  time_t tt = static_cast<time_t>(t);
  tm out{};
  localtime_r(&tt, &out);
  return static_cast<int32_t>(out.tm_gmtoff);
}

TEST(TimeZone, MatchesGlibcAcrossZonesAndCenturies) {
  const char* zones[] = {"Europe/Berlin",    "America/New_York",  "Australia/Sydney",    "Asia/Kolkata",
                         "America/Santiago", "Europe/London",     "Pacific/Auckland",    "America/Sao_Paulo",
                         "Asia/Tokyo",       "Africa/Casablanca", "Australia/Lord_Howe", "America/St_Johns"};
  std::mt19937_64 rng(42);
  std::uniform_int_distribution<int64_t> when(0, 4102444800);  // 1970 .. 2100
  const char* old_tz = std::getenv("TZ");
  std::string saved = old_tz ? old_tz : "";
  for (const char* z : zones) {
    auto tz = TimeZone::load(z);
    for (int i = 0; i < 2000; ++i) {
      int64_t t = when(rng);
      ASSERT_EQ(tz->offset_at(t), glibc_offset(z, t))
          << z << " at " << t << " (" << common::format_rfc3339(t) << ")";
    }
  }
  if (old_tz) {
    setenv("TZ", saved.c_str(), 1);
  } else {
    unsetenv("TZ");
  }
  tzset();
}

TEST(TimeZone, BerlinSwitchesAtTheRightSecond) {
  auto tz = TimeZone::load("Europe/Berlin");
  EXPECT_EQ(tz->offset_at(1774745999), 3600);  // 2026-03-29T00:59:59Z: CET
  EXPECT_EQ(tz->offset_at(1774746000), 7200);  // 01:00:00Z: CEST
  EXPECT_EQ(tz->offset_at(1792889999), 7200);  // 2026-10-25T00:59:59Z: CEST
  EXPECT_EQ(tz->offset_at(1792890000), 3600);  // 01:00:00Z: CET
  // Far beyond the file's last transition: from its POSIX footer rule.
  EXPECT_EQ(tz->offset_at(4102444800 + 180 * 86400), 7200);  // mid-2100
}

TEST(TimeZone, FixedOffsetsAndPosixRules) {
  EXPECT_EQ(TimeZone::load("UTC")->offset_at(123), 0);
  EXPECT_EQ(TimeZone::load("+02:00")->offset_at(0), 7200);
  EXPECT_EQ(TimeZone::load("-0530")->offset_at(0), -(5 * 3600 + 1800));
  EXPECT_EQ(TimeZone::load("UTC+2")->offset_at(0), 7200);
  auto ny = TimeZone::from_posix("EST5EDT,M3.2.0,M11.1.0");
  ASSERT_TRUE(ny);
  EXPECT_EQ(ny->offset_at(1773558000), -4 * 3600);                       // 2026-03-15T07:00Z: EDT
  EXPECT_EQ(ny->offset_at(1772953199), -5 * 3600);                       // 2026-03-08T06:59:59Z: still EST
  EXPECT_EQ(ny->offset_at(1772953200), -4 * 3600);                       // 07:00:00Z = 02:00 EST: EDT begins
  auto south = TimeZone::from_posix("<-04>4<-03>,M9.1.6/24,M4.1.6/24");  // Santiago: DST across new year
  ASSERT_TRUE(south);
  EXPECT_EQ(south->offset_at(1767225600), -3 * 3600);  // 2026-01-01
  EXPECT_EQ(south->offset_at(1782864000), -4 * 3600);  // 2026-07-01
  EXPECT_FALSE(TimeZone::from_posix("E"));
  EXPECT_FALSE(TimeZone::from_posix("EST5EDT,M13.1.0,M11.1.0"));
  EXPECT_THROW(TimeZone::load("../etc/passwd"), common::UsageError);
  EXPECT_THROW(TimeZone::load("Nowhere/City"), common::UsageError);
  EXPECT_THROW(TimeZone::load("+1x"), common::UsageError);
}

Window window(uint8_t days, int start, int end, const char* tz) {
  Window w;
  w.days = days;
  w.start_min = static_cast<uint16_t>(start);
  w.end_min = static_cast<uint16_t>(end);
  w.tz_name = tz;
  w.tz = TimeZone::load(tz);
  return w;
}

constexpr uint8_t kMonFri = 0b0111110;
constexpr uint8_t kFriOnly = 1u << 5;

TEST(Window, AcrossMidnightBelongsToTheStartDay) {
  Window w = window(kFriOnly, 22 * 60, 6 * 60, "UTC");  // Fri 22:00 - Sat 06:00
  const int64_t fri = 1796947200;                       // 2026-12-11T00:00Z, a Friday
  EXPECT_FALSE(w.contains(fri + 21 * 3600 + 3599));
  EXPECT_TRUE(w.contains(fri + 22 * 3600));
  EXPECT_TRUE(w.contains(fri + 86400 + 3 * 3600));         // Sat 03:00
  EXPECT_TRUE(w.contains(fri + 86400 + 6 * 3600 - 1));     // Sat 05:59:59
  EXPECT_FALSE(w.contains(fri + 86400 + 6 * 3600));        // Sat 06:00
  EXPECT_FALSE(w.contains(fri + 3 * 3600));                // Fri 03:00 belongs to Thursday's window
  EXPECT_FALSE(w.contains(fri + 86400 + 22 * 3600 + 60));  // Sat 22:01: Saturday not listed
  Window full = window(0x7f, 0, 1440, "UTC");
  EXPECT_TRUE(full.contains(fri + 86399));
}

TEST(Window, FollowsLocalWallClockAcrossDst) {
  Window w = window(0x7f, 8 * 60, 20 * 60, "Europe/Berlin");
  // Spring forward (2026-03-29): 06:30Z is 08:30 CEST (inside); the day before 06:30Z is 07:30 CET.
  EXPECT_TRUE(w.contains(1774765800));
  EXPECT_FALSE(w.contains(1774679400));
  // Fall back (2026-10-25): 07:30Z is 08:30 CET (inside); 06:30Z is 07:30 CET (outside).
  EXPECT_TRUE(w.contains(1792913400));
  EXPECT_FALSE(w.contains(1792909800));
  // Night window across midnight on the spring-forward night: Sat 22:00 CET .. Sun 06:00 CEST.
  Window night = window(1u << 6, 22 * 60, 6 * 60, "Europe/Berlin");  // Saturday nights
  EXPECT_TRUE(night.contains(1774733400));                           // Sat 21:30Z = 22:30 CET
  EXPECT_TRUE(night.contains(1774755000));                           // Sun 03:30Z = 05:30 CEST
  EXPECT_FALSE(night.contains(1774758600));                          // Sun 04:30Z = 06:30 CEST
  Window ny = window(kMonFri, 9 * 60, 17 * 60, "America/New_York");
  EXPECT_TRUE(ny.contains(1796652000));  // Mon 2026-12-07 14:00Z = 09:00 EST
  EXPECT_FALSE(ny.contains(1796651999));
}

}  // namespace
}  // namespace sshring::policy
