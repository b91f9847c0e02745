// Whether pins under a directory outlive the agent: a bpffs mounted only inside the agent's own
// mount namespace (`ip netns exec` remounts /sys, a container may lack the host's /sys/fs/bpf) dies
// with the agent's last process, and with it every pinned map and program.
#pragma once

#include <string>

namespace sshring::bpf {

enum class PinScope {
  kShared,   // the bpffs holding `dir` is also mounted in PID 1's mount namespace
  kPrivate,  // it is not: pins vanish when the agent exits
  kUnknown,  // /proc/1/mountinfo unreadable (no PID 1 view); nothing said
};

// `dir` must exist and be on a bpffs (ensure_bpffs_dir). `init_mountinfo` is read to decide; tests
// pass their own.
PinScope pin_scope(const std::string& dir, const std::string& init_mountinfo = "/proc/1/mountinfo");

}  // namespace sshring::bpf
