// The one text form of a relay session id, used by logs, audit records and docs alike: 16 lower-case
// hex digits (the OK frame carries the same id as a u64, docs/protocol.md).
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace sshring::common {

inline std::string session_id_string(uint64_t id) {
  char buf[17];
  (void)std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(id));
  return buf;
}

}  // namespace sshring::common
