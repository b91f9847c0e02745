#include "common/error.h"

#include <cerrno>
#include <cstring>
#include <utility>

namespace sshring::common {

SystemError::SystemError(std::string_view what, int err)
    : std::runtime_error(std::string(what) + ": " + std::strerror(err)), err_(err) {}

SourceError::SourceError(std::string file, int line, int column, std::string key, std::string message)
    : UsageError(file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " +
                 (key.empty() ? std::string() : key + ": ") + message),
      file_(std::move(file)),
      line_(line),
      column_(column),
      key_(std::move(key)),
      message_(std::move(message)) {}

void throw_errno(std::string_view what) {
  throw SystemError(what, errno);
}
void throw_errno(std::string_view what, int err) {
  throw SystemError(what, err < 0 ? -err : err);
}

}  // namespace sshring::common
