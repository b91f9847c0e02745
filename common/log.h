// Structured log lines on stderr: "ts=... level=info msg=\"...\" key=value ...".
// Control plane and per-session events only; never per byte.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace sshring::common {

enum class LogLevel { kDebug, kInfo, kWarn, kError };

void set_log_level(LogLevel level);
using LogField = std::pair<std::string_view, std::string>;
void log(LogLevel level, std::string_view msg, std::initializer_list<LogField> fields = {});

inline void log_info(std::string_view msg, std::initializer_list<LogField> f = {}) {
  log(LogLevel::kInfo, msg, f);
}
inline void log_warn(std::string_view msg, std::initializer_list<LogField> f = {}) {
  log(LogLevel::kWarn, msg, f);
}
inline void log_error(std::string_view msg, std::initializer_list<LogField> f = {}) {
  log(LogLevel::kError, msg, f);
}
inline void log_debug(std::string_view msg, std::initializer_list<LogField> f = {}) {
  log(LogLevel::kDebug, msg, f);
}

}  // namespace sshring::common
