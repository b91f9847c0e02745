#include "common/version.h"

// Defined for this file only, so a version change rebuilds one file (and ccache can share the rest
// between the test build and the package build).
#ifndef SSHRING_VERSION_STRING
#error "SSHRING_VERSION_STRING is set by common/CMakeLists.txt"
#endif

namespace sshring::common {
const char* version() {
  return SSHRING_VERSION_STRING;
}
}  // namespace sshring::common
