// Control-plane errors. The data path never throws: it returns negative errno values.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace sshring::common {

// An error carrying errno, its text and what we were doing ("bind 127.0.0.1:22: Address in use").
class SystemError : public std::runtime_error {
 public:
  SystemError(std::string_view what, int err);
  [[nodiscard]] int code() const noexcept { return err_; }

 private:
  int err_;
};

// Throws SystemError with the current errno.
[[noreturn]] void throw_errno(std::string_view what);
// Throws SystemError with the given positive errno (for APIs that return -errno).
[[noreturn]] void throw_errno(std::string_view what, int err);

// Bad input from a user (flags, files): the message names the input, the place and the fix.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bad input in a file we parse (the policy, the relay config), in one style for all of them:
// "FILE:LINE:COLUMN: KEY: MESSAGE", e.g. "policy.yaml:12:5: principals[0].keys[1]: expected ...".
class SourceError : public UsageError {
 public:
  SourceError(std::string file, int line, int column, std::string key, std::string message);
  [[nodiscard]] const std::string& file() const noexcept { return file_; }
  [[nodiscard]] int line() const noexcept { return line_; }      // 1-based; 0 if unknown
  [[nodiscard]] int column() const noexcept { return column_; }  // 1-based; 0 if unknown
  [[nodiscard]] const std::string& key() const noexcept { return key_; }
  [[nodiscard]] const std::string& message() const noexcept { return message_; }

 private:
  std::string file_;
  int line_;
  int column_;
  std::string key_;
  std::string message_;
};

}  // namespace sshring::common
