#include "common/duration.h"

#include <gtest/gtest.h>

using sshring::common::format_duration;
using sshring::common::parse_duration;

TEST(Duration, Parses) {
  EXPECT_EQ(parse_duration("90s")->count(), 90);
  EXPECT_EQ(parse_duration("15m")->count(), 900);
  EXPECT_EQ(parse_duration("2h")->count(), 7200);
  EXPECT_EQ(parse_duration("1h30m")->count(), 5400);
  EXPECT_EQ(parse_duration("7d")->count(), 7 * 86400);
  for (const char* bad : {"", "h", "2", "2x", "-1h", "1.5h", "99999999999s", "4000d"})
    EXPECT_FALSE(parse_duration(bad).has_value()) << bad;
}

TEST(Duration, Formats) {
  EXPECT_EQ(format_duration(std::chrono::seconds(0)), "0s");
  EXPECT_EQ(format_duration(std::chrono::seconds(5400)), "1h30m");
  EXPECT_EQ(format_duration(std::chrono::seconds(90061)), "1d1h1m1s");
}
