#include "common/host.h"

#include <unistd.h>

namespace sshring::common {

std::string host_name(std::string_view fallback) {
  char buf[256] = {};  // HOST_NAME_MAX is 64 on Linux; the last byte stays the terminator
  if (::gethostname(buf, sizeof(buf) - 1) != 0 || buf[0] == '\0') return std::string(fallback);
  return buf;
}

}  // namespace sshring::common
