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

}  // namespace sshring::common
