#include "common/flags.h"

#include <gtest/gtest.h>

#include "common/error.h"

using sshring::common::Flags;
using sshring::common::UsageError;

namespace {
Flags make() {
  Flags f("relay", "sshring relay [OPTIONS]", "Runs the relay.");
  f.value("listen", "ADDR:PORT", "where to listen")
      .value("workers", "N", "worker threads", "2")
      .multi("route", "SPEC", "a route")
      .boolean("verbose", "more logs");
  return f;
}
}  // namespace

TEST(Flags, ParsesValuesBooleansAndPositionals) {
  Flags f = make();
  ASSERT_TRUE(f.parse({"--listen", "127.0.0.1:1", "--verbose", "--route=a", "--route", "b", "pos"}));
  EXPECT_EQ(f.get("listen"), "127.0.0.1:1");
  EXPECT_TRUE(f.flag("verbose"));
  EXPECT_EQ(f.all("route"), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(f.positionals(), (std::vector<std::string>{"pos"}));
  EXPECT_EQ(f.get_int("workers", 1, 1, 64), 2);  // default applies
}

TEST(Flags, ErrorsNameTheFlag) {
  struct Case {
    std::vector<std::string> args;
    std::string expect;
  };
  for (const auto& c : std::vector<Case>{{{"--nope"}, "unknown option '--nope'"},
                                         {{"--listen"}, "--listen needs a value ADDR:PORT"},
                                         {{"--listen", "a", "--listen", "b"}, "--listen given twice"},
                                         {{"--verbose=1"}, "--verbose takes no value"},
                                         {{"-x"}, "unknown option '-x'"}}) {
    Flags f = make();
    try {
      f.parse(c.args);
      ADD_FAILURE() << "no error for " << c.expect;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(c.expect), std::string::npos) << e.what();
    }
  }
}

TEST(Flags, IntRangeAndRequired) {
  Flags f = make();
  ASSERT_TRUE(f.parse({"--workers", "0"}));
  EXPECT_THROW((void)f.get_int("workers", 1, 1, 64), UsageError);
  EXPECT_THROW((void)f.require("listen"), UsageError);
}

TEST(Flags, HelpListsEveryOption) {
  Flags f = make();
  std::string h = f.help_text();
  for (const char* s :
       {"--listen ADDR:PORT", "--workers N", "(default: 2)", "--route SPEC", "--verbose", "--help"})
    EXPECT_NE(h.find(s), std::string::npos) << s;
}

// man pages and completion (packaging/helpdoc) split a help line at the first run of two spaces:
// a name plus placeholder one column short of the text column (27 of 28) goes on a line of its own,
// as longer ones do, instead of running into its text with one space.
TEST(Flags, HelpKeepsTwoSpacesBeforeEveryDescription) {
  Flags f("x", "sshring x", "X.");
  f.value("etcd-password-file", "FILE", "twenty-seven columns with its indent");
  f.value("a-very-long-option-name-indeed", "FILE", "past the column");
  f.value("etcd-password-fil", "FILE", "twenty-six columns");
  std::string h = f.help_text();
  EXPECT_NE(h.find("  --etcd-password-file FILE\n                            twenty-seven"),
            std::string::npos)
      << h;
  EXPECT_NE(h.find("  --etcd-password-fil FILE  twenty-six"), std::string::npos) << h;
  EXPECT_NE(h.find("  --a-very-long-option-name-indeed FILE\n                            past"),
            std::string::npos)
      << h;
}
