#include "metrics/audit_syslog.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sshring::metrics {

namespace {

// RFC 5424 section 6.3.3: '"', '\' and ']' are escaped inside PARAM-VALUE.
void param(std::string& out, const char* name, std::string_view value) {
  out.push_back(' ');
  out += name;
  out += "=\"";
  for (char c : value) {
    if (c == '"' || c == '\\' || c == ']') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('"');
}

// HOSTNAME and MSGID are PRINTUSASCII without spaces, at most 255 / 32 characters.
std::string token(std::string_view s, size_t max) {
  std::string out;
  for (char c : s.substr(0, max)) out.push_back(c > 32 && c < 127 ? c : '_');
  return out.empty() ? "-" : out;
}

}  // namespace

std::string format_rfc5424(const SyslogFields& f, std::string_view json_line) {
  // <PRI>: facility authpriv (10) * 8 + severity info (6).
  std::string out = "<86>1 ";
  out += f.ts;
  out.push_back(' ');
  out += token(f.host, 255);
  out += " sshring ";
  out += std::to_string(::getpid());
  out.push_back(' ');
  out += token(f.type, 32);
  out += " [";
  out += kSyslogSdId;
  param(out, "writer", f.writer);
  param(out, "seq", std::to_string(f.seq));
  param(out, "prev", f.prev);
  param(out, "hash", f.hash);
  out += "] ";
  out.append(json_line);
  return out;
}

bool SyslogSender::connect() {
  fd_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd_) return false;
  // A stalled daemon must not stall the audit writer for long: the record is on disk already.
  timeval tv{1, 0};
  ::setsockopt(fd_.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path_.size() >= sizeof(sa.sun_path)) return false;
  std::memcpy(sa.sun_path, path_.data(), path_.size());
  if (::connect(fd_.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    fd_.reset();
    return false;
  }
  return true;
}

bool SyslogSender::send(std::string_view msg) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (!fd_ && !connect()) continue;
    ssize_t n;
    do {
      n = ::send(fd_.get(), msg.data(), msg.size(), MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n == static_cast<ssize_t>(msg.size())) return true;
    fd_.reset();  // daemon restarted (ECONNREFUSED, ENOTCONN): reconnect once
  }
  return false;
}

}  // namespace sshring::metrics
