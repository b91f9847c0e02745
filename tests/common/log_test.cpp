// The process log's key=value lines: values with spaces, quotes or control characters are quoted and
// escaped, so text from untrusted input (a grant's fields, a store key) cannot drive a terminal.
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "common/log.h"

namespace sshring::common {
namespace {

// What one log_warn call writes to stderr.
std::string logged(std::string_view value) {
  char path[] = "/tmp/sshring-log-test-XXXXXX";
  int fd = ::mkstemp(path);
  EXPECT_GE(fd, 0);
  ::unlink(path);
  int saved = ::dup(STDERR_FILENO);
  ::dup2(fd, STDERR_FILENO);
  log_warn("test", {{"v", std::string(value)}});
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  std::string out(4096, '\0');
  ssize_t n = ::pread(fd, out.data(), out.size(), 0);
  ::close(fd);
  out.resize(n > 0 ? static_cast<size_t>(n) : 0);
  auto at = out.find(" v=");
  return at == std::string::npos ? out : out.substr(at + 3, out.size() - at - 4);  // drop the newline
}

TEST(Log, ValuesAreQuotedAndControlCharactersEscaped) {
  EXPECT_EQ(logged("plain"), "plain");
  EXPECT_EQ(logged("two words"), "\"two words\"");
  EXPECT_EQ(logged("say \"hi\" \\"), "\"say \\\"hi\\\" \\\\\"");
  EXPECT_EQ(logged("line\nnext"), "\"line\\nnext\"");
  EXPECT_EQ(logged("zz-shadow\x1b[2J\r\x07\x7f"), "\"zz-shadow\\x1b[2J\\x0d\\x07\\x7f\"");
  EXPECT_EQ(logged("tab\there"), "\"tab\\x09here\"");
}

}  // namespace
}  // namespace sshring::common
