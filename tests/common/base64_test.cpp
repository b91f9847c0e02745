#include "common/base64.h"

#include <gtest/gtest.h>

using sshring::common::base64_decode;
using sshring::common::base64_encode;

TEST(Base64, RoundTripsPaddedAndUnpadded) {
  for (std::string s : {"", "f", "fo", "foo", "foob", "fooba", "foobar"}) {
    auto padded = base64_decode(base64_encode(s));
    ASSERT_TRUE(padded) << s;
    EXPECT_EQ(*padded, s);
    auto bare = base64_decode(base64_encode(s, false));
    ASSERT_TRUE(bare) << s;
    EXPECT_EQ(*bare, s);
  }
  EXPECT_EQ(base64_encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(base64_encode("fo"), "Zm8=");
  EXPECT_EQ(base64_encode("fo", false), "Zm8");
}

TEST(Base64, RejectsWhatIsNotStrictBase64) {
  for (const char* bad : {"Zm9=v", "Zm=9v", "Z", "Zm9v!", "Zn==", "Zm 9v", "Zm9v\n", "Zm9v==="})
    EXPECT_FALSE(base64_decode(bad)) << bad;
  EXPECT_EQ(base64_decode("Zm9w"), "fop");
}
