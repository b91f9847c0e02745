#pragma once
// The version this binary reports (`sshring --version`, the build-info metric): the project version,
// or the Debian package version when scripts/package builds it.
namespace sshring::common {
const char* version();
}  // namespace sshring::common
