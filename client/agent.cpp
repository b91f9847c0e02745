#include "client/agent.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "common/error.h"
#include "protocol/wire.h"

namespace sshring::client {
namespace {

// Message numbers from PROTOCOL.agent / draft-miller-ssh-agent.
constexpr uint8_t kAgentFailure = 5;
constexpr uint8_t kRequestIdentities = 11;
constexpr uint8_t kIdentitiesAnswer = 12;
constexpr uint8_t kSignRequest = 13;
constexpr uint8_t kSignResponse = 14;
constexpr uint32_t kMaxAgentReply = 256 * 1024;
constexpr uint32_t kMaxIdentities = 1024;

void write_all(int fd, const std::string& data, const std::string& path) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      common::throw_errno("write to ssh-agent " + path);
    }
    off += static_cast<size_t>(n);
  }
}

void read_all(int fd, char* buf, size_t len, const std::string& path) {
  size_t off = 0;
  while (off < len) {
    ssize_t n = ::read(fd, buf + off, len - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      common::throw_errno("read from ssh-agent " + path);
    }
    if (n == 0) throw std::runtime_error("ssh-agent " + path + " closed the connection");
    off += static_cast<size_t>(n);
  }
}

}  // namespace

AgentClient::AgentClient(const std::string& socket_path, std::chrono::milliseconds timeout)
    : path_(socket_path) {
  if (socket_path.empty())
    throw common::UsageError(
        "SSH_AUTH_SOCK is not set: start ssh-agent and ssh-add your key, or pass --identity");
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(sun.sun_path))
    throw common::UsageError("SSH_AUTH_SOCK path too long: " + socket_path);
  std::memcpy(sun.sun_path, socket_path.c_str(), socket_path.size() + 1);
  fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd_) common::throw_errno("socket(AF_UNIX)");
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  ::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd_.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (::connect(fd_.get(), reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) != 0)
    common::throw_errno("connect to ssh-agent at " + socket_path);
}

AgentClient AgentClient::from_env() {
  const char* p = std::getenv("SSH_AUTH_SOCK");
  return AgentClient(p ? p : "");
}

std::string AgentClient::request(const std::string& body) {
  protocol::Writer w;
  w.str32(body);
  write_all(fd_.get(), w.data(), path_);
  char len_buf[4];
  read_all(fd_.get(), len_buf, 4, path_);
  uint32_t len = protocol::Reader(std::string_view(len_buf, 4)).u32();
  if (len == 0 || len > kMaxAgentReply) throw std::runtime_error("ssh-agent " + path_ + ": bad reply length");
  std::string reply(len, '\0');
  read_all(fd_.get(), reply.data(), len, path_);
  return reply;
}

std::vector<AgentClient::Identity> AgentClient::identities() {
  protocol::Writer w;
  w.u8(kRequestIdentities);
  std::string reply = request(w.data());
  protocol::Reader r(reply);
  uint8_t type = r.u8();
  if (type != kIdentitiesAnswer) throw std::runtime_error("ssh-agent " + path_ + ": cannot list identities");
  uint32_t n = r.u32();
  if (n > kMaxIdentities) throw std::runtime_error("ssh-agent " + path_ + ": too many identities");
  std::vector<Identity> out;
  for (uint32_t i = 0; i < n && r.ok(); ++i) {
    Identity id;
    id.blob = r.str32(kMaxAgentReply);
    id.comment = r.str32(kMaxAgentReply);
    out.push_back(std::move(id));
  }
  if (!r.ok()) throw std::runtime_error("ssh-agent " + path_ + ": malformed identities answer");
  return out;
}

std::vector<protocol::Ed25519PublicKey> AgentClient::ed25519_keys() {
  std::vector<protocol::Ed25519PublicKey> out;
  for (const auto& id : identities())
    if (auto k = protocol::parse_ed25519_key_blob(id.blob)) out.push_back(*k);
  return out;
}

protocol::Ed25519Signature AgentClient::sign(const protocol::Ed25519PublicKey& key, std::string_view data) {
  protocol::Writer w;
  w.u8(kSignRequest);
  w.str32(protocol::ed25519_key_blob(key));
  w.str32(data);
  w.u32(0);  // flags: none apply to Ed25519
  std::string reply = request(w.data());
  protocol::Reader r(reply);
  uint8_t type = r.u8();
  if (type == kAgentFailure)
    throw std::runtime_error("ssh-agent " + path_ + " refused to sign with " + protocol::fingerprint(key));
  if (type != kSignResponse) throw std::runtime_error("ssh-agent " + path_ + ": unexpected reply to sign");
  auto sig_blob = r.str32(1024);
  if (!r.done()) throw std::runtime_error("ssh-agent " + path_ + ": malformed sign response");
  protocol::Reader s(sig_blob);
  auto alg = s.str32(64);
  auto raw = s.str32(128);
  if (!s.done() || alg != protocol::kSshEd25519 || raw.size() != 64)
    throw std::runtime_error("ssh-agent " + path_ + ": not an ssh-ed25519 signature");
  protocol::Ed25519Signature sig;
  std::memcpy(sig.data(), raw.data(), 64);
  return sig;
}

}  // namespace sshring::client
