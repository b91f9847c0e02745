// Kernel clocks in nanoseconds (CLOCK_MONOTONIC for timeouts, CLOCK_BOOTTIME to match BPF's
// bpf_ktime_get_boot_ns, CLOCK_REALTIME for wall time).
#pragma once

#include <time.h>

#include <cstdint>

namespace sshring::common {

inline int64_t clock_ns(clockid_t id) noexcept {
  timespec ts{};
  ::clock_gettime(id, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace sshring::common
