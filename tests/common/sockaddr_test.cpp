#include "common/sockaddr.h"

#include <gtest/gtest.h>

#include "common/error.h"

using sshring::common::SockAddr;

TEST(SockAddr, ParsesAndFormats) {
  struct Case {
    const char* in;
    const char* out;  // nullptr: rejected
  };
  for (const auto& c : std::vector<Case>{{"127.0.0.1:22", "127.0.0.1:22"},
                                         {"0.0.0.0:0", "0.0.0.0:0"},
                                         {"[::1]:2222", "[::1]:2222"},
                                         {"[fd00::1]:65535", "[fd00::1]:65535"},
                                         {"::1:22", nullptr},
                                         {"[127.0.0.1]:22", nullptr},
                                         {"127.0.0.1", nullptr},
                                         {"127.0.0.1:", nullptr},
                                         {"127.0.0.1:65536", nullptr},
                                         {"127.0.0.1:2x", nullptr},
                                         {"localhost:22", nullptr},
                                         {"", nullptr}}) {
    auto a = SockAddr::parse(c.in);
    if (c.out == nullptr) {
      EXPECT_FALSE(a.has_value()) << c.in;
    } else {
      ASSERT_TRUE(a.has_value()) << c.in;
      EXPECT_EQ(a->to_string(), c.out);
    }
  }
}

TEST(SockAddr, ErrorNamesFlagAndForm) {
  try {
    SockAddr::parse_or_throw("nope", "--listen");
    FAIL();
  } catch (const sshring::common::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--listen: 'nope'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("[IPV6]:PORT"), std::string::npos);
  }
}
