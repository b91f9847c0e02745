// Audit records as RFC 5424 syslog messages, for central collection by the host's syslog daemon
// (rsyslog forwards them over RELP; deploy/rsyslog/). Structured data carries what a collector needs to
// check each writer's chain without parsing the message:
//   <86>1 2026-12-01T19:30:24.123Z host1 sshring 4242 session_end
//       [sshring@32473 writer="relay@host1" seq="17" prev="9f..." hash="3a..."] {"ts":...}
// The MSG is the record's exact JSON line, so its SHA-256 is `hash` and the next record's `prev`.
// Facility authpriv, severity info. 32473 is the private enterprise number reserved for examples
// (RFC 5612).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/unique_fd.h"

namespace sshring::metrics {

inline constexpr const char* kSyslogSdId = "sshring@32473";

struct SyslogFields {
  std::string ts;  // RFC 3339 (the record's ts)
  std::string host;
  std::string type;  // MSGID
  std::string writer;
  uint64_t seq = 0;
  std::string prev;
  std::string hash;
};

std::string format_rfc5424(const SyslogFields& f, std::string_view json_line);

// Sends datagrams to a unix socket (/dev/log). Reconnects once on failure; a send that cannot be
// delivered within a second is dropped and reported as false (the collector then sees a seq gap).
class SyslogSender {
 public:
  explicit SyslogSender(std::string path) : path_(std::move(path)) {}
  bool send(std::string_view msg);

 private:
  bool connect();
  std::string path_;
  common::UniqueFd fd_;
};

}  // namespace sshring::metrics
