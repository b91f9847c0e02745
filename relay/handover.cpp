#include "relay/handover.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <thread>

#include "common/error.h"
#include "common/json_number.h"
#include "common/log.h"
#include "relay/relay.h"

namespace sshring::relay {
namespace {

// Message layout: u16 type, then the JSON body text.
constexpr size_t kTypeBytes = 2;

common::SockAddr addr_field(const nlohmann::json& b, const char* key) {
  if (!b.contains(key)) return {};
  const std::string text = b.at(key).get<std::string>();
  if (text.empty()) return {};
  auto a = common::SockAddr::parse(text);
  if (!a) throw std::runtime_error(std::string("hand-over session: bad address in '") + key + "': " + text);
  return *a;
}

// A required whole-number field of a hand-over message, 0..max (see common/json_number.h).
uint64_t number(const nlohmann::json& b, const char* key, uint64_t max = UINT64_MAX) {
  auto v = common::json_uint(b, key, max);
  if (!v) {
    throw std::runtime_error(std::string("hand-over: '") + key + "' must be a whole number from 0 to " +
                             std::to_string(max));
  }
  return *v;
}

// An optional one: `fallback` when absent, refused like a required one when present but malformed.
uint64_t number_or(const nlohmann::json& b, const char* key, uint64_t max, uint64_t fallback) {
  return b.contains(key) ? number(b, key, max) : fallback;
}

std::string addr_text(const common::SockAddr& a) {
  return a.len() ? a.to_string() : std::string();
}

}  // namespace

const char* handover_msg_name(HandoverMsg t) {
  switch (t) {
    case HandoverMsg::kHello:
      return "HELLO";
    case HandoverMsg::kState:
      return "STATE";
    case HandoverMsg::kListener:
      return "LISTENER";
    case HandoverMsg::kSession:
      return "SESSION";
    case HandoverMsg::kEnd:
      return "END";
    case HandoverMsg::kReady:
      return "READY";
    case HandoverMsg::kDone:
      return "DONE";
    case HandoverMsg::kRefuse:
      return "REFUSE";
    case HandoverMsg::kReplay:
      return "REPLAY";
  }
  return "?";
}

int send_handover(int sock, HandoverMsg type, const nlohmann::json& body, const std::vector<int>& fds) {
  if (fds.size() > kHandoverMaxFds) return -E2BIG;
  std::string text = body.dump();
  std::string buf(kTypeBytes, '\0');
  auto t = static_cast<uint16_t>(type);
  buf[0] = static_cast<char>(t >> 8);
  buf[1] = static_cast<char>(t & 0xff);
  buf += text;
  if (buf.size() > kHandoverMaxMessage) return -EMSGSIZE;
  iovec iov{buf.data(), buf.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kHandoverMaxFds)] = {};
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    ssize_t n = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n == static_cast<ssize_t>(buf.size())) return 0;
    if (n < 0 && errno == EINTR) continue;
    return n < 0 ? -errno : -EPROTO;
  }
}

int recv_handover(int sock, HandoverMessage& out, int timeout_ms) {
  out = HandoverMessage{};
  // One buffer per thread: a hand-over reads one message per session while every session waits,
  // and allocating and clearing 64 KiB for each was a tenth of the time.
  thread_local std::string buf(kHandoverMaxMessage, '\0');
  iovec iov{buf.data(), buf.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kHandoverMaxFds)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  // Read first and wait only when nothing is queued: mid hand-over the next message is usually
  // there already, and a poll before each read was one more system call per session.
  ssize_t n;
  for (;;) {
    n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n >= 0 || errno == ECONNRESET) break;
    if (errno == EINTR) continue;
    if (errno != EAGAIN) return -errno;
    pollfd p{sock, POLLIN, 0};
    int r = ::poll(&p, 1, timeout_ms);
    if (r == 0) return -ETIMEDOUT;
    if (r < 0 && errno != EINTR) return -errno;
  }
  // A peer that closes with our messages unread leaves ECONNRESET on this socket, and the kernel
  // reports it before the messages the peer sent us first (its REFUSE, say). Those are still queued:
  // read them, so that the reset is what we see after them.
  if (n < 0 && errno == ECONNRESET) n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  if (n < 0) return errno == EAGAIN ? -ECONNRESET : -errno;
  // Take every descriptor first, so none leaks whatever the body says.
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      out.fds.emplace_back(fd);
    }
  }
  if (n == 0) return -ECONNRESET;
  // The kernel truncates the descriptors (MSG_CTRUNC) when this process has no room for them: say
  // so, rather than blame the peer's message.
  if ((msg.msg_flags & MSG_CTRUNC) != 0) {
    common::UniqueFd probe(::fcntl(sock, F_DUPFD_CLOEXEC, 0));
    return !probe && (errno == EMFILE || errno == ENFILE) ? -EMFILE : -EPROTO;
  }
  if ((msg.msg_flags & MSG_TRUNC) != 0 || static_cast<size_t>(n) < kTypeBytes) return -EPROTO;
  out.type = static_cast<HandoverMsg>((static_cast<uint8_t>(buf[0]) << 8) | static_cast<uint8_t>(buf[1]));
  out.body = nlohmann::json::parse(buf.begin() + kTypeBytes, buf.begin() + n, nullptr, false);
  if (out.body.is_discarded() || !out.body.is_object()) return -EPROTO;
  return 0;
}

nlohmann::json session_body(const SessionExport& s, std::vector<int>* fds) {
  nlohmann::json b = {{"id", s.id},
                      {"worker", s.worker},
                      {"route", s.route},
                      {"client", addr_text(s.client_addr)},
                      {"listen", addr_text(s.listen_addr)},
                      {"upstream", addr_text(s.upstream_addr)},
                      {"upstream_local", addr_text(s.upstream_local)},
                      {"age_ns", s.age_ns},
                      {"idle_ns", s.idle_ns},
                      {"handshake", s.handshake}};
  fds->push_back(s.client.get());
  fds->push_back(s.upstream.get());
  nlohmann::json dirs = nlohmann::json::array();
  for (const auto& d : s.dir) {
    nlohmann::json j = {{"state", static_cast<int>(d.state)}, {"in_pipe", d.in_pipe}, {"bytes", d.bytes}};
    if (d.in_pipe > 0) {
      j["pipe_fd"] = fds->size();
      fds->push_back(d.pipe_r.get());
      fds->push_back(d.pipe_w.get());
    }
    dirs.push_back(j);
  }
  b["dirs"] = dirs;
  return b;
}

SessionExport session_from_message(HandoverMessage& m) {
  const nlohmann::json& b = m.body;
  SessionExport s;
  try {
    s.id = number(b, "id");
    s.worker = static_cast<uint32_t>(number(b, "worker", UINT32_MAX));
    s.route = b.at("route").get<std::string>();
    s.client_addr = addr_field(b, "client");
    s.listen_addr = addr_field(b, "listen");
    s.upstream_addr = addr_field(b, "upstream");
    s.upstream_local = addr_field(b, "upstream_local");
    s.age_ns = number(b, "age_ns");
    s.idle_ns = number(b, "idle_ns");
    s.handshake = b.at("handshake").get<std::string>();
    const auto& dirs = b.at("dirs");
    if (!dirs.is_array() || dirs.size() != 2) throw std::runtime_error("'dirs' must hold two directions");
    if (m.fds.size() < 2) throw std::runtime_error("missing the session's sockets");
    s.client = std::move(m.fds[0]);
    s.upstream = std::move(m.fds[1]);
    for (int d = 0; d < 2; ++d) {
      auto& out = s.dir[d];
      if (!dirs[d].is_object()) throw std::runtime_error("each direction must be an object");
      out.state =
          static_cast<Pump::State>(number(dirs[d], "state", static_cast<uint64_t>(Pump::State::kFailed)));
      out.in_pipe = static_cast<uint32_t>(number(dirs[d], "in_pipe", UINT32_MAX));
      out.bytes = number(dirs[d], "bytes");
      if (out.in_pipe > 0) {
        // Indices 0 and 1 are the sockets; a pair named twice (or past the end) is refused rather
        // than read as an empty descriptor.
        size_t at = number(dirs[d], "pipe_fd", kHandoverMaxFds);
        if (at < 2 || at >= m.fds.size() || m.fds.size() - at < 2 || !m.fds[at] || !m.fds[at + 1])
          throw std::runtime_error("missing a pipe descriptor");
        out.pipe_r = std::move(m.fds[at]);
        out.pipe_w = std::move(m.fds[at + 1]);
      }
    }
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(std::string("hand-over session: ") + e.what());
  }
  return s;
}

namespace {

constexpr int kStepTimeoutMs = 60'000;                   // any one message of the exchange
constexpr auto kParkTimeout = std::chrono::seconds(30);  // handshakes finishing in the old relay

sockaddr_un unix_addr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof(a.sun_path))
    throw common::UsageError("--control-socket " + path + ": path longer than " +
                             std::to_string(sizeof(a.sun_path) - 1) + " bytes");
  std::memcpy(a.sun_path, path.c_str(), path.size());
  return a;
}

// The newest state version both sides read: the new relay lists what it reads in HELLO (a relay
// from before version 2 lists nothing and reads 1). Test hook: announce another state version (tests
// check that the new side refuses it loudly).
uint32_t state_version_to_send(const nlohmann::json& hello) {
  if (const char* v = std::getenv("SSHRING_TEST_HANDOVER_STATE_VERSION"))
    return static_cast<uint32_t>(std::strtoul(v, nullptr, 10));
  uint32_t best = kHandoverOldestStateVersion;
  const auto listed = hello.find("state_versions");
  if (listed != hello.end() && listed->is_array())
    for (const auto& v : *listed)
      if (v.is_number_unsigned() && v.get<uint64_t>() <= kHandoverStateVersion)
        best = std::max(best, static_cast<uint32_t>(v.get<uint64_t>()));
  return best;
}

}  // namespace

std::string control_directory_problem(const std::string& path, bool create) {
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = ".";
  if (create) {
    // One component at a time, each new one 0700 (umask can only narrow it).
    std::filesystem::path p;
    for (const auto& part : dir) {
      p /= part;
      if (::mkdir(p.c_str(), 0700) != 0 && errno != EEXIST)
        return "cannot create control socket directory " + p.string() + ": " + strerror(errno);
    }
  }
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0)
    return "control socket directory " + dir.string() + ": " + strerror(errno);
  const std::string fix =
      " (use a directory only this user can write, mode 0700, such as systemd's "
      "RuntimeDirectory=)";
  if (!S_ISDIR(st.st_mode)) return "control socket directory " + dir.string() + " is not a directory";
  if (st.st_uid != ::geteuid() && st.st_uid != 0)
    return "control socket directory " + dir.string() + " belongs to uid " + std::to_string(st.st_uid) +
           ", not this user or root" + fix;
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    char mode[8];
    (void)std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return "control socket directory " + dir.string() + " is writable by group or others (mode " + mode +
           ")" + fix;
  }
  return {};
}

HandoverServer::HandoverServer(Relay& relay, std::string path, std::function<void(const Counts&)> on_commit,
                               std::function<void(std::string_view)> on_result)
    : relay_(relay),
      path_(std::move(path)),
      on_commit_(std::move(on_commit)),
      on_result_(std::move(on_result)) {
  sockaddr_un a = unix_addr(path_);
  if (std::string why = control_directory_problem(path_, true); !why.empty())
    throw common::UsageError("--control-socket " + path_ + ": " + why);
  {
    common::UniqueFd probe(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0)
      throw common::UsageError(
          "--control-socket " + path_ +
          ": another relay is serving it (take it over with --takeover, or pick another path)");
  }
  ::unlink(path_.c_str());  // stale: its relay is gone
  listen_.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!listen_) common::throw_errno("control socket");
  mode_t old = ::umask(0077);  // 0600 from the start, no window with a wider mode
  int r = ::bind(listen_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a));
  ::umask(old);
  if (r != 0) common::throw_errno("bind control socket " + path_);
  ::chmod(path_.c_str(), 0600);
  if (::listen(listen_.get(), 4) != 0) common::throw_errno("listen on control socket " + path_);
  thread_ = std::thread([this] { loop(); });
}

void HandoverServer::abort() {
  std::lock_guard lock(conn_mu_);
  if (conn_fd_ < 0 || ready_) return;
  ::shutdown(conn_fd_, SHUT_RDWR);
  common::log_warn("hand-over aborted: the relay was told to stop; it keeps its sessions and stops");
}

HandoverServer::~HandoverServer() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  // The socket file belongs to whoever serves it now: remove it only if nobody took over.
  if (!done_) ::unlink(path_.c_str());
}

void HandoverServer::loop() {
  while (!stop_ && !done_) {
    pollfd p{listen_.get(), POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    common::UniqueFd c(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!c) {
      // Out of descriptors the connection stays in the backlog and poll reports it at once: back
      // off instead of spinning (a hand-over needs one spare descriptor and one per listener).
      if (errno == EMFILE || errno == ENFILE) {
        common::log_warn("control socket: cannot accept a hand-over (descriptor limit; raise LimitNOFILE)");
        for (int i = 0; i < 10 && !stop_; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      continue;
    }
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (::getsockopt(c.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
        (cred.uid != ::geteuid() && cred.uid != 0)) {
      common::log_warn("control socket: refused a peer of another user",
                       {{"uid", std::to_string(cred.uid)}, {"pid", std::to_string(cred.pid)}});
      continue;
    }
    const char* result = "failed";
    try {
      result = serve(std::move(c));
    } catch (const std::exception& e) {
      common::log_error("hand-over failed; serving on", {{"error", e.what()}});
    }
    if (on_result_) on_result_(result);
  }
}

const char* HandoverServer::serve(common::UniqueFd conn) {
  // Every blocking step on the connection is bounded (a peer that stops reading leaves sendmsg
  // waiting), and abort() can cut it short; either way the relay resumes and serves on.
  const timeval step{kStepTimeoutMs / 1000, 0};
  (void)::setsockopt(conn.get(), SOL_SOCKET, SO_SNDTIMEO, &step, sizeof(step));
  struct Active {
    HandoverServer& s;
    Active(HandoverServer& srv, int fd) : s(srv) {
      std::lock_guard lock(s.conn_mu_);
      s.conn_fd_ = fd;
      s.ready_ = false;
    }
    ~Active() {
      std::lock_guard lock(s.conn_mu_);
      s.conn_fd_ = -1;
    }
    Active(const Active&) = delete;
    Active& operator=(const Active&) = delete;
  } active(*this, conn.get());
  HandoverMessage m;
  if (int r = recv_handover(conn.get(), m, kStepTimeoutMs); r != 0 || m.type != HandoverMsg::kHello) {
    common::log_warn("control socket: no HELLO", {{"error", r ? strerror(-r) : handover_msg_name(m.type)}});
    return "failed";
  }
  const auto protocol = m.body.find("protocol");
  if (protocol == m.body.end() || *protocol != kHandoverProtocol) {
    (void)send_handover(
        conn.get(), HandoverMsg::kRefuse,
        {{"error", "this relay speaks hand-over protocol " + std::to_string(kHandoverProtocol)}});
    common::log_error("hand-over refused: the new relay speaks another protocol",
                      {{"protocol", protocol == m.body.end() ? "none" : protocol->dump()}});
    return "refused";
  }
  ucred cred{};
  socklen_t len = sizeof(cred);
  (void)::getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len);
  common::log_info("hand-over: parking sessions", {{"to_pid", std::to_string(cred.pid)}});
  auto exp = relay_.park_for_handover(kParkTimeout);
  if (!exp) {
    (void)send_handover(conn.get(), HandoverMsg::kRefuse,
                        {{"error", "the running relay did not become quiet"}});
    common::log_error("hand-over aborted: workers did not park in time; serving on");
    return "failed";
  }
  common::log_info("hand-over: sessions parked; sending them",
                   {{"sessions", std::to_string(exp->sessions.size())},
                    {"listeners", std::to_string(exp->listeners.size())}});
  // From here every way out before READY resumes the parked sessions, an exception included.
  try {
    return send_state(conn, *exp, cred.pid, state_version_to_send(m.body));
  } catch (const std::exception& e) {
    if (done_) return "done";  // committed: the sessions are the new relay's now
    relay_.resume_after_handover();
    common::log_error("hand-over failed; this relay keeps every session and serves on",
                      {{"error", e.what()}});
    return "failed";
  }
}

namespace {
// Listeners the parked workers failed to duplicate (EMFILE; sessions' descriptors are not
// duplicated, only listeners, one per worker and route).
size_t missing_descriptors(const RelayExport& e) {
  size_t n = 0;
  for (const auto& l : e.listeners) n += l.fd ? 0 : 1;
  return n;
}
}  // namespace

const char* HandoverServer::send_state(const common::UniqueFd& conn, RelayExport& parked, int peer_pid,
                                       uint32_t version) {
  HandoverMessage m;
  std::optional<RelayExport> exp(std::move(parked));
  Counts counts{exp->listeners.size(), exp->sessions.size(), peer_pid};
  auto fail = [&](const std::string& why, const char* result = "failed") {
    relay_.resume_after_handover();
    common::log_error("hand-over failed; this relay keeps every session and serves on", {{"error", why}});
    return result;
  };
  // Checked before anything is sent: a descriptor of -1 in SCM_RIGHTS fails the send with EBADF,
  // which names neither the cause nor the fix.
  if (const size_t missing = missing_descriptors(*exp); missing > 0) {
    exp.reset();
    return fail("could not duplicate " + std::to_string(missing) + " of the " +
                std::to_string(counts.listeners) +
                " listeners (descriptor limit: a hand-over needs one more per listener; raise LimitNOFILE)");
  }
  int r = send_handover(conn.get(), HandoverMsg::kState,
                        {{"state_version", version},
                         {"workers", exp->workers},
                         {"next_seq", exp->next_seq},
                         {"listeners", counts.listeners},
                         {"sessions", counts.sessions},
                         {"pid", ::getpid()}});
  for (size_t i = 0; r == 0 && i < exp->listeners.size(); ++i)
    r = send_handover(conn.get(), HandoverMsg::kListener,
                      {{"route", exp->listeners[i].route}, {"worker", exp->listeners[i].worker}},
                      {exp->listeners[i].fd.get()});
  for (size_t i = 0; r == 0 && i < exp->sessions.size(); ++i) {
    std::vector<int> fds;
    nlohmann::json body = session_body(exp->sessions[i], &fds);
    r = send_handover(conn.get(), HandoverMsg::kSession, body, fds);
  }
  size_t replay_parts = 0;
  for (size_t i = 0; r == 0 && version >= 2 && i < exp->replay.size(); ++i)
    for (size_t k = 0; r == 0 && k < exp->replay[i].parts.size(); ++k, ++replay_parts)
      r = send_handover(conn.get(), HandoverMsg::kReplay,
                        {{"route", exp->replay[i].route}, {"part", exp->replay[i].parts[k]}});
  if (r == 0 && version < 2 && !exp->replay.empty())
    common::log_warn(
        "hand-over: the new relay reads state version 1, which has no replay cache: a HELLO "
        "accepted here can be used once more with it within the skew window");
  if (r == 0)
    r = send_handover(conn.get(), HandoverMsg::kEnd,
                      {{"listeners", counts.listeners}, {"sessions", counts.sessions}});
  exp.reset();  // this process's copies stay with the parked sessions
  auto answer_error = [&] {
    const auto error = m.body.find("error");
    return error != m.body.end() && error->is_string() ? error->get<std::string>() : std::string("?");
  };
  // A REFUSE says "failed" when the new relay could read the state but not take it (out of
  // descriptors, say); otherwise the two versions cannot read each other.
  auto refusal_result = [&] {
    const auto result = m.body.find("result");
    return result != m.body.end() && *result == "failed" ? "failed" : "refused";
  };
  if (r != 0) {
    // A new relay that refuses the STATE message answers and exits at once, so our later sends can
    // fail; its REFUSE is still queued on the socket and says why.
    if (recv_handover(conn.get(), m, kStepTimeoutMs) == 0 && m.type == HandoverMsg::kRefuse)
      return fail("the new relay refused: " + answer_error(), refusal_result());
    return fail(std::string("sending state: ") + strerror(-r));
  }
  r = recv_handover(conn.get(), m, kStepTimeoutMs);
  if (r != 0) return fail(r == -ECONNRESET ? "the new relay exited before READY" : std::string(strerror(-r)));
  if (m.type != HandoverMsg::kReady)
    return fail("the new relay refused: " + answer_error(),
                m.type == HandoverMsg::kRefuse ? refusal_result() : "failed");
  {
    std::lock_guard lock(conn_mu_);
    ready_ = true;  // from here the new relay owns the sessions: abort() no longer applies
  }
  relay_.commit_handover();
  try {
    if (on_commit_) on_commit_(counts);
  } catch (const std::exception& e) {
    common::log_error("hand-over: commit hook failed", {{"error", e.what()}});
  }
  done_ = true;
  listen_.reset();  // the new relay binds this path for the next hand-over
  (void)send_handover(conn.get(), HandoverMsg::kDone, {{"sessions", counts.sessions}});
  common::log_info("hand-over done", {{"sessions", std::to_string(counts.sessions)},
                                      {"listeners", std::to_string(counts.listeners)},
                                      {"to_pid", std::to_string(peer_pid)}});
  return "done";
}

HandoverClient::HandoverClient(common::UniqueFd connected, std::chrono::milliseconds ready_budget)
    : sock_(std::move(connected)), ready_budget_(ready_budget) {}

HandoverClient::HandoverClient(const std::string& path) {
  sockaddr_un a = unix_addr(path);
  sock_.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!sock_ || ::connect(sock_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0)
    throw HandoverError(kTakeoverNoRelay, "--takeover: no relay answers on " + path + ": " + strerror(errno) +
                                              " (is it running with --control-socket " + path + "?)");
  // Whoever serves the socket hands this process listeners and sessions: it must be our own relay.
  if (std::string why = control_directory_problem(path, false); !why.empty())
    throw HandoverError(kTakeoverNoRelay, "--takeover: not taking over through " + path + ": " + why);
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(sock_.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
    throw HandoverError(kTakeoverNoRelay, "--takeover: SO_PEERCRED on " + path + ": " + strerror(errno));
  if (cred.uid != ::geteuid() && cred.uid != 0)
    throw HandoverError(kTakeoverNoRelay,
                        "--takeover: the process serving " + path + " (pid " + std::to_string(cred.pid) +
                            ") runs as uid " + std::to_string(cred.uid) +
                            ", not this user or root: not a relay of ours; nothing taken over");
}

RelayExport HandoverClient::receive() {
  // A field of the wrong type (nlohmann throws) is state this relay cannot read: refused like one.
  try {
    return receive_state();
  } catch (const HandoverError&) {
    throw;
  } catch (const std::exception& e) {
    std::string why = std::string("unreadable hand-over state: ") + e.what();
    refuse(why);
    throw HandoverError(kTakeoverRefused, "--takeover: " + why);
  }
}

RelayExport HandoverClient::receive_state() {
  nlohmann::json versions = nlohmann::json::array();
  for (uint32_t v = kHandoverOldestStateVersion; v <= kHandoverStateVersion; ++v) versions.push_back(v);
  if (int r =
          send_handover(sock_.get(), HandoverMsg::kHello,
                        {{"protocol", kHandoverProtocol}, {"state_versions", versions}, {"pid", ::getpid()}});
      r != 0)
    throw HandoverError(kTakeoverFailed, std::string("--takeover: sending HELLO: ") + strerror(-r));
  HandoverMessage m;
  auto next = [&](const char* what) {
    int r = recv_handover(sock_.get(), m, kStepTimeoutMs);
    if (r == -EMFILE) {
      const std::string why =
          "the new relay ran out of descriptors receiving the sessions (it needs 2 per session and 1 per "
          "listener; raise LimitNOFILE)";
      refuse(why, true);
      throw HandoverError(kTakeoverFailed, "--takeover: " + why);
    }
    if (r != 0)
      throw HandoverError(kTakeoverFailed,
                          std::string("--takeover: waiting for ") + what + ": " + strerror(-r));
    if (m.type == HandoverMsg::kRefuse)
      throw HandoverError(kTakeoverRefused, "--takeover: the running relay refused: " +
                                                m.body.value("error", std::string("?")));
  };
  next("STATE");
  if (m.type != HandoverMsg::kState) throw HandoverError(kTakeoverFailed, "--takeover: expected STATE");
  const auto version = number_or(m.body, "state_version", UINT32_MAX, 0);
  if (version < kHandoverOldestStateVersion || version > kHandoverStateVersion) {
    std::string why = "hand-over state version " + std::to_string(version) +
                      " cannot be read by this relay (it reads " +
                      std::to_string(kHandoverOldestStateVersion) + " to " +
                      std::to_string(kHandoverStateVersion) + "); upgrade in steps or restart";
    refuse(why);
    throw HandoverError(kTakeoverRefused, "--takeover: " + why);
  }
  RelayExport out;
  out.state_version = static_cast<uint32_t>(version);
  size_t replay_parts = 0;
  // Bounded: the peer's numbers size this process's workers, rings and tables (refused as
  // unreadable state by receive() when out of range).
  out.workers = static_cast<uint32_t>(number_or(m.body, "workers", kHandoverMaxWorkers, 1));
  if (out.workers == 0) out.workers = 1;
  out.next_seq = number_or(m.body, "next_seq", UINT64_MAX, 0);
  peer_pid_ = static_cast<int>(number_or(m.body, "pid", INT32_MAX, 0));
  (void)number_or(m.body, "listeners", uint64_t{out.workers} * kHandoverMaxListenersPerWorker, 0);
  (void)number_or(m.body, "sessions", kHandoverMaxSessions, 0);
  const uint64_t max_listeners = uint64_t{out.workers} * kHandoverMaxListenersPerWorker;
  auto too_many = [&](const char* what, uint64_t max) {
    const std::string why = std::string("the running relay sent more ") + what +
                            " than a relay has (at most " + std::to_string(max) + ")";
    refuse(why);
    return HandoverError(kTakeoverRefused, "--takeover: " + why);
  };
  for (;;) {
    next("state");
    if (m.type == HandoverMsg::kEnd) {
      end_at_ = std::chrono::steady_clock::now();
      break;
    }
    if (m.type == HandoverMsg::kListener) {
      if (m.fds.size() != 1) throw HandoverError(kTakeoverFailed, "--takeover: LISTENER without its socket");
      if (out.listeners.size() >= max_listeners) throw too_many("listeners", max_listeners);
      out.listeners.push_back({m.body.value("route", std::string()),
                               static_cast<uint32_t>(number_or(m.body, "worker", out.workers - 1, 0)),
                               std::move(m.fds[0])});
    } else if (m.type == HandoverMsg::kReplay && out.state_version >= 2) {
      if (++replay_parts > kHandoverMaxReplayParts)
        throw too_many("replay cache parts", kHandoverMaxReplayParts);
      const std::string route = m.body.at("route").get<std::string>();
      std::string part = m.body.at("part").get<std::string>();
      if (part.size() > kMaxReplayPartBytes) throw std::runtime_error("hand-over: a REPLAY part is too long");
      if (out.replay.empty() || out.replay.back().route != route) out.replay.push_back({route, {}});
      out.replay.back().parts.push_back(std::move(part));
    } else if (m.type == HandoverMsg::kSession) {
      if (out.sessions.size() >= kHandoverMaxSessions) throw too_many("sessions", kHandoverMaxSessions);
      try {
        out.sessions.push_back(session_from_message(m));
      } catch (const std::exception& e) {
        refuse(e.what());
        throw HandoverError(kTakeoverRefused, std::string("--takeover: ") + e.what());
      }
    } else {
      throw HandoverError(kTakeoverFailed,
                          std::string("--takeover: unexpected ") + handover_msg_name(m.type));
    }
  }
  return out;
}

void HandoverClient::refuse(const std::string& why, bool failed) {
  nlohmann::json body = {{"error", why}};
  if (failed) body["result"] = "failed";
  (void)send_handover(sock_.get(), HandoverMsg::kRefuse, body);
}

bool HandoverClient::ready_and_wait_done() {
  if (const auto took = std::chrono::steady_clock::now() - end_at_; took > ready_budget_) {
    const std::string why =
        "taking over took " +
        std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()) +
        " ms, more than the " + std::to_string(ready_budget_.count()) +
        " ms the running relay is sure to wait for READY; it keeps every session";
    refuse(why, true);
    throw HandoverError(kTakeoverFailed, "--takeover: " + why);
  }
  if (int r = send_handover(sock_.get(), HandoverMsg::kReady, nlohmann::json::object()); r != 0)
    throw HandoverError(kTakeoverFailed, std::string("--takeover: sending READY: ") + strerror(-r));
  HandoverMessage m;
  int r = recv_handover(sock_.get(), m, kStepTimeoutMs);
  return r == 0 && m.type == HandoverMsg::kDone;
}

}  // namespace sshring::relay
