// Shared fixtures for the policy tests.
#pragma once

#include <string>

namespace sshring::policy::testing {

inline constexpr const char* kAliceKey =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF3oFxm2mMPRtv6zr+/hoPQwOgi7+TTIJSHigB2Qf3Mg alice@laptop";
inline constexpr const char* kAliceFingerprint = "SHA256:DAQGb9dW+12JA+PJ2CQaKpvIK6a4BevcTWTmRyABUzQ";
inline constexpr const char* kBobKey =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEZWwZQw2b5p61KytCcaG4Yp0SxzXz6+bXh+JSgjEU/w bob@workstation";

inline std::string example_policy_path() {
  return std::string(SSHRING_SOURCE_DIR) + "/deploy/examples/policy.yaml";
}

}  // namespace sshring::policy::testing
