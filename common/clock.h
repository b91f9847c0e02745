// Kernel clocks in nanoseconds (CLOCK_MONOTONIC for timeouts, CLOCK_BOOTTIME to match BPF's
// bpf_ktime_get_boot_ns, CLOCK_REALTIME for wall time), and the wall clock in Unix seconds and
// milliseconds that policy decisions, preambles and audit records use.
#pragma once

#include <time.h>

#include <cstdint>

namespace sshring::common {

inline int64_t clock_ns(clockid_t id) noexcept {
  timespec ts{};
  ::clock_gettime(id, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

inline int64_t unix_now_s() noexcept {
  return clock_ns(CLOCK_REALTIME) / 1'000'000'000;
}
inline int64_t unix_now_ms() noexcept {
  return clock_ns(CLOCK_REALTIME) / 1'000'000;
}

// Unix time in ns = CLOCK_BOOTTIME ns + this offset (what BPF's boot-time stamps are converted with).
// It moves when the wall clock is stepped, so callers read it when they convert, not once.
inline int64_t realtime_minus_boottime_ns() noexcept {
  return clock_ns(CLOCK_REALTIME) - clock_ns(CLOCK_BOOTTIME);
}

}  // namespace sshring::common
