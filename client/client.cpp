#include "client/client.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "client/agent.h"
#include "common/clock.h"
#include "common/error.h"

namespace sshring::client {
namespace {

using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

// Waits for `events` on fd until the deadline; throws on timeout.
void wait_fd(int fd, short events, Clock::time_point deadline, const char* what) {
  for (;;) {
    pollfd p{fd, events, 0};
    int rc = ::poll(&p, 1, remaining_ms(deadline));
    if (rc > 0) return;
    if (rc == 0) throw std::runtime_error(std::string("timed out ") + what);
    if (errno != EINTR) common::throw_errno(what);
  }
}

void read_exact(int fd, uint8_t* buf, size_t len, Clock::time_point deadline) {
  size_t off = 0;
  while (off < len) {
    wait_fd(fd, POLLIN, deadline, "waiting for the relay's reply");
    ssize_t n = ::recv(fd, buf + off, len - off, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      common::throw_errno("reading the relay's reply");
    }
    if (n == 0) throw std::runtime_error("the relay closed the connection before answering");
    off += static_cast<size_t>(n);
  }
}

std::string read_small_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw common::UsageError("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string printable_text(std::string_view s) {
  // The relay's text reaches the user's terminal: every byte outside printable ASCII (ESC sequences,
  // C1 controls such as 0x9b CSI, newlines that could fake a second line) becomes '?'.
  std::string out(s);
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) c = '?';
  return out;
}

DeniedError::DeniedError(uint16_t reason, const std::string& message)
    : std::runtime_error(std::string("denied by relay: ") +
                         (reason >= 1 && reason <= protocol::kMaxReason
                              ? protocol::reason_name(static_cast<protocol::Reason>(reason))
                              : "reason " + std::to_string(reason)) +
                         (message.empty() ? "" : ": " + printable_text(message))),
      reason_(reason),
      detail_(printable_text(message)) {}

int DeniedError::exit_code() const {
  if (reason_ >= 1 && reason_ <= protocol::kMaxReason)
    return protocol::exit_code_for(static_cast<protocol::Reason>(reason_));
  return protocol::kExitCodeBase + protocol::kMaxReason + 1;
}

std::string deny_hint(const DeniedError& e, const std::string& sent_relay_id) {
  if (e.reason() != static_cast<uint16_t>(protocol::Reason::kWrongRelay)) return {};
  static constexpr std::string_view kMarker = "this relay's id is '";
  const std::string& d = e.detail();
  auto at = d.find(kMarker);
  auto end = at == std::string::npos ? at : d.find('\'', at + kMarker.size());
  if (end == std::string::npos)
    return "the relay does not accept relay id '" + sent_relay_id +
           "': pass the relay's id with --relay-id ID (ask its operator for its --relay-id)";
  std::string want = d.substr(at + kMarker.size(), end - at - kMarker.size());
  return "the relay's id is '" + want + "' but this client signed for '" + sent_relay_id +
         "': add --relay-id " + want + " to the sshring connect command (the ProxyCommand in ~/.ssh/config)";
}

std::string effective_relay_id(const ConnectOptions& opts) {
  if (!opts.relay_id.empty()) return opts.relay_id;
  return split_host_port(opts.relay, "--relay").first;
}

Signer file_signer(const std::string& key_path) {
  auto key = std::make_shared<protocol::Ed25519PrivateKey>(protocol::Ed25519PrivateKey::load_file(key_path));
  Signer s;
  s.public_key = key->public_key();
  s.sign = [key](std::string_view data) { return key->sign(data); };
  return s;
}

Signer agent_signer(const std::string& select_pub) {
  auto agent = std::make_shared<AgentClient>(AgentClient::from_env());
  auto keys = agent->ed25519_keys();
  Signer s;
  if (!select_pub.empty()) {
    std::string line = select_pub.rfind("ssh-", 0) == 0 ? select_pub : read_small_file(select_pub);
    auto want = protocol::parse_openssh_public_key(line);
    if (!want) throw common::UsageError(select_pub + ": not an ssh-ed25519 public key");
    bool found = false;
    for (const auto& k : keys) found = found || k == *want;
    if (!found)
      throw common::UsageError("ssh-agent has no key " + protocol::fingerprint(*want) + " (ssh-add it)");
    s.public_key = *want;
  } else {
    if (keys.empty())
      throw common::UsageError("ssh-agent holds no ed25519 key: ssh-add one, or pass --identity KEYFILE");
    s.public_key = keys.front();
  }
  protocol::Ed25519PublicKey pk = s.public_key;
  s.sign = [agent, pk](std::string_view data) { return agent->sign(pk, data); };
  return s;
}

protocol::Hello make_hello(const Signer& signer, std::string relay_id, std::string principal,
                           std::string target, uint16_t port, uint64_t now_ms) {
  protocol::Hello h;
  h.relay_id = std::move(relay_id);
  h.principal = std::move(principal);
  h.target = std::move(target);
  h.port = port;
  h.timestamp_ms = now_ms;
  protocol::random_bytes(h.nonce.data(), h.nonce.size());
  h.algorithm = protocol::KeyAlgorithm::kEd25519;
  h.public_key.assign(reinterpret_cast<const char*>(signer.public_key.data()), signer.public_key.size());
  auto sig = signer.sign(protocol::transcript(h));
  h.signature.assign(reinterpret_cast<const char*>(sig.data()), sig.size());
  return h;
}

uint64_t handshake_on(int fd, const protocol::Hello& hello, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  std::string frame;
  try {
    frame = protocol::encode_hello(hello);
  } catch (const std::invalid_argument& e) {
    throw common::UsageError(e.what());
  }
  size_t off = 0;
  while (off < frame.size()) {
    wait_fd(fd, POLLOUT, deadline, "sending the preamble");
    ssize_t n = ::send(fd, frame.data() + off, frame.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      common::throw_errno("sending the preamble");
    }
    off += static_cast<size_t>(n);
  }
  // Exactly one frame: the header, then its payload. Bytes after it belong to SSH.
  std::array<uint8_t, protocol::kHeaderSize + protocol::kMaxDenyPayload> buf{};
  read_exact(fd, buf.data(), protocol::kHeaderSize, deadline);
  int len = protocol::reply_payload_length(
      std::span<const uint8_t, protocol::kHeaderSize>(buf.data(), protocol::kHeaderSize));
  if (len < 0)
    throw std::runtime_error("the relay's reply is not an sshring frame (is --relay an sshring relay?)");
  read_exact(fd, buf.data() + protocol::kHeaderSize, static_cast<size_t>(len), deadline);
  protocol::ReplyDecode d = protocol::decode_reply(
      std::span<const uint8_t>(buf.data(), protocol::kHeaderSize + static_cast<size_t>(len)));
  if (d.status != protocol::DecodeStatus::kOk) throw std::runtime_error("malformed reply from the relay");
  if (d.reply.type == protocol::FrameType::kDeny) throw DeniedError(d.reply.reason, d.reply.message);
  return d.reply.session_id;
}

std::pair<std::string, uint16_t> split_host_port(const std::string& text, std::string_view what) {
  std::string host;
  std::string port;
  if (!text.empty() && text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':')
      throw common::UsageError(std::string(what) + " '" + text + "': expected [V6ADDR]:PORT");
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string::npos || colon == 0 || text.find(':') != colon)
      throw common::UsageError(std::string(what) + " '" + text + "': expected HOST:PORT");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  char* end = nullptr;
  long p = std::strtol(port.c_str(), &end, 10);
  if (port.empty() || *end != '\0' || p < 1 || p > 65535)
    throw common::UsageError(std::string(what) + " '" + text + "': port must be 1-65535");
  return {host, static_cast<uint16_t>(p)};
}

std::string login_name() {
  if (const char* u = std::getenv("USER"); u && *u) return u;
  if (passwd* pw = getpwuid(getuid())) return pw->pw_name;
  throw common::UsageError("cannot tell the login name: pass --principal");
}

uint64_t unix_ms_now() {
  return static_cast<uint64_t>(common::unix_now_ms());
}

Connected connect_via_relay(const ConnectOptions& opts, const Signer& signer) {
  auto [host, port] = split_host_port(opts.relay, "--relay");
  auto deadline = Clock::now() + opts.timeout;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0) throw std::runtime_error("cannot resolve relay " + host + ": " + gai_strerror(rc));
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, &::freeaddrinfo);
  common::UniqueFd fd;
  std::string last_error = "no address";
  for (auto* ai = res; ai != nullptr; ai = ai->ai_next) {
    common::UniqueFd s(::socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!s) continue;
    if (::connect(s.get(), ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      last_error = std::strerror(errno);
      continue;
    }
    pollfd p{s.get(), POLLOUT, 0};
    if (::poll(&p, 1, remaining_ms(deadline)) <= 0) {
      last_error = "connect timed out";
      continue;
    }
    int err = 0;
    socklen_t len = sizeof(err);
    ::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      last_error = std::strerror(err);
      continue;
    }
    fd = std::move(s);
    break;
  }
  if (!fd) throw std::runtime_error("cannot connect to relay " + opts.relay + ": " + last_error);
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  protocol::Hello h =
      make_hello(signer, effective_relay_id(opts), opts.principal.empty() ? login_name() : opts.principal,
                 opts.target, opts.port, unix_ms_now());
  Connected c;
  c.session_id = handshake_on(fd.get(), h, std::chrono::milliseconds(remaining_ms(deadline)));
  // Back to blocking for whoever uses the socket next (ssh after fd passing, or the pump).
  int fl = ::fcntl(fd.get(), F_GETFL);
  ::fcntl(fd.get(), F_SETFL, fl & ~O_NONBLOCK);
  c.fd = std::move(fd);
  return c;
}

void send_fd(int channel, int fd) {
  char byte = 0;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
  for (;;) {
    ssize_t n = ::sendmsg(channel, &msg, MSG_NOSIGNAL);
    if (n == 1) return;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == ENOTSOCK)
      throw common::UsageError("--fdpass: stdout is not a Unix socket (use it with ProxyUseFdpass yes)");
    common::throw_errno("passing the socket to ssh (sendmsg)");
  }
}

int pump_stdio(int sock, int in_fd, int out_fd) {
  constexpr size_t kBuf = size_t{128} * 1024;
  std::unique_ptr<char[]> up(new char[kBuf]);
  std::unique_ptr<char[]> down(new char[kBuf]);
  bool in_open = true;
  auto write_all = [](int fd, const char* p, size_t n, bool sock_fd) {
    while (n > 0) {
      ssize_t w = sock_fd ? ::send(fd, p, n, MSG_NOSIGNAL) : ::write(fd, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  };
  for (;;) {
    pollfd p[2] = {{sock, POLLIN, 0}, {in_open ? in_fd : -1, POLLIN, 0}};
    int rc = ::poll(p, 2, -1);
    if (rc < 0) {
      if (errno == EINTR) continue;
      std::perror("sshring connect: poll");
      return 1;
    }
    if (p[0].revents) {
      ssize_t n = ::recv(sock, down.get(), kBuf, 0);
      if (n == 0) return 0;  // the session is over
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        if (errno == ECONNRESET) return 0;
        std::perror("sshring connect: read from relay");
        return 1;
      }
      if (!write_all(out_fd, down.get(), static_cast<size_t>(n), false)) return 0;  // ssh went away
    }
    if (in_open && p[1].revents) {
      ssize_t n = ::read(in_fd, up.get(), kBuf);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        in_open = false;
        ::shutdown(sock, SHUT_WR);
        continue;
      }
      if (!write_all(sock, up.get(), static_cast<size_t>(n), true)) {
        std::perror("sshring connect: write to relay");
        return 1;
      }
    }
  }
}

}  // namespace sshring::client
