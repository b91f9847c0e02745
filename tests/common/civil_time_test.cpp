// RFC 3339 and the civil calendar (common/civil_time.h): the two grammars (policy files, our own
// records), formats that round-trip, and dates before 1970 and far ahead.
#include "common/civil_time.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <ctime>

#include "common/clock.h"

namespace common = sshring::common;

TEST(CivilTime, HumanGrammar) {
  int64_t t = 0;
  ASSERT_TRUE(common::parse_rfc3339("2027-06-30T00:00:00Z", &t));
  EXPECT_EQ(t, 1814313600);
  ASSERT_TRUE(common::parse_rfc3339("2027-06-30T02:00:00+02:00", &t));
  EXPECT_EQ(t, 1814313600);
  ASSERT_TRUE(common::parse_rfc3339("2027-06-30", &t));
  EXPECT_EQ(t, 1814313600);
  ASSERT_TRUE(common::parse_rfc3339("2027-06-30 01:30Z", &t));
  EXPECT_EQ(t, 1814313600 + 5400);
  EXPECT_TRUE(common::parse_rfc3339("2028-02-29T12:00:00Z", &t));
  for (const char* bad : {"2027-02-29T00:00:00Z", "2027-06-30T00:00:00", "2027-06-30T24:00:00Z", "27-06-30",
                          "2027-06-30T00:00:00.5Z", "2027-06-30T00:00:00+2:00", "2027-06-30X", ""})
    EXPECT_FALSE(common::parse_rfc3339(bad, &t)) << bad;
}

TEST(CivilTime, RecordGrammar) {
  EXPECT_EQ(common::parse_rfc3339_ms("1970-01-01T00:00:00Z"), 0);
  EXPECT_EQ(common::parse_rfc3339_ms("1970-01-01T00:00:01.5Z"), 1500);
  EXPECT_EQ(common::parse_rfc3339_ms("1970-01-01T00:00:01.123456789Z"), 1123);
  EXPECT_EQ(common::parse_rfc3339_ms("2000-03-01T00:00:00Z"), 951868800000);
  EXPECT_EQ(common::parse_rfc3339_ms("2000-03-01T01:00:00+01:00"), 951868800000);
  for (const char* bad : {"2000-13-01T00:00:00Z", "2000-03-01 00:00:00Z", "2000-03-01", "2000-03-01T00:00Z",
                          "2000-02-30T00:00:00Z", "2000-03-01T00:00:00.Z", "2000-03-01T00:00:00Zjunk"})
    EXPECT_FALSE(common::parse_rfc3339_ms(bad)) << bad;
}

TEST(CivilTime, FormatsRoundTripAndAgreeWithGlibc) {
  EXPECT_EQ(common::format_rfc3339(1814313600), "2027-06-30T00:00:00Z");
  EXPECT_EQ(common::format_rfc3339(-1), "1969-12-31T23:59:59Z");
  EXPECT_EQ(common::format_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
  EXPECT_EQ(common::format_rfc3339_ms(1500), "1970-01-01T00:00:01.500Z");
  // Out of the four-digit range (a crafted record's number): the bounds, no overflow (UBSan checks).
  EXPECT_EQ(common::format_rfc3339_ms(INT64_MIN), "0000-01-01T00:00:00.192Z");
  EXPECT_EQ(common::format_rfc3339_ms(INT64_MAX), "9999-12-31T23:59:59.807Z");
  EXPECT_EQ(common::format_rfc3339(INT64_MIN), "0000-01-01T00:00:00Z");
  EXPECT_EQ(common::format_rfc3339(INT64_MAX), "9999-12-31T23:59:59Z");
  const int64_t now = common::unix_now_ms();
  EXPECT_EQ(common::parse_rfc3339_ms(common::format_rfc3339_ms(now)), now);
  // Every day from 1900 to 2100 against gmtime_r.
  for (int64_t day = -25567; day < 47482; ++day) {
    const std::time_t secs = day * 86400 + 43210;
    std::tm tm{};
    ASSERT_NE(::gmtime_r(&secs, &tm), nullptr);
    char want[32];
    ASSERT_GT(std::strftime(want, sizeof want, "%Y-%m-%dT%H:%M:%SZ", &tm), 0u);
    ASSERT_EQ(common::format_rfc3339(secs), want);
    ASSERT_EQ(common::weekday_from_days(day), static_cast<unsigned>(tm.tm_wday)) << want;
    int64_t back = 0;
    ASSERT_TRUE(common::parse_rfc3339(want, &back)) << want;
    ASSERT_EQ(back, secs);
  }
}
