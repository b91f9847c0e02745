#include "common/error.h"

#include <cerrno>
#include <cstring>

namespace sshring::common {

SystemError::SystemError(std::string_view what, int err)
    : std::runtime_error(std::string(what) + ": " + std::strerror(err)), err_(err) {}

void throw_errno(std::string_view what) {
  throw SystemError(what, errno);
}
void throw_errno(std::string_view what, int err) {
  throw SystemError(what, err < 0 ? -err : err);
}

}  // namespace sshring::common
