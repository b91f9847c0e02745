// Live hand-over of a running relay to a new process (`sshring relay --takeover`, docs/operations.md).
//
// The old relay listens on a control socket (AF_UNIX SOCK_SEQPACKET, mode 0600, peer uid checked).
// The new one connects and the two exchange messages, each one JSON object plus up to 8 descriptors
// (SCM_RIGHTS):
//
//   new -> old  HELLO    {protocol, state_versions}
//   old         stops accepting (listeners stay open: clients wait in the backlog), lets sessions in
//               the handshake finish, then parks every established session between two events
//               (no poll, no splice in flight; bytes a full destination left in a pipe stay there)
//   old -> new  STATE    {state_version, workers, next_seq, listeners, sessions}
//               LISTENER {route, worker}                      + the listening socket
//               SESSION  {id, route, addresses, ages, per-direction state, handshake}
//                                                              + client, upstream[, pipe r, w]...
//               REPLAY   {route, part}  (state version 2: the replay cache, in parts)
//               END      {listeners, sessions}
//   new         imports all of it into workers that do not run it yet; REFUSE {error} when it
//               cannot read the state (another state_version, a route it lacks) or fails
//               ({error, result: "failed"}: it read the state but could not take it)
//   new -> old  READY
//   old         drops what it handed over (closes its descriptors), writes its
//               relay_handover audit record, flushes the audit log
//   old -> new  DONE; the old process exits once its workers are empty
//   new         opens the audit log (continuing the chain after the old record), writes its
//               relay_handover record, then arms every session and listener.
//
// Until READY the old relay owns everything: a REFUSE, a crash or a silent peer (timeout) makes it
// resume every parked session and its listeners where they stopped. A session moves as the same
// kernel sockets, so its TCP state, buffered bytes and peers never notice.
#pragma once

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/sockaddr.h"
#include "common/unique_fd.h"
#include "relay/pump.h"

namespace sshring::relay {

inline constexpr uint32_t kHandoverProtocol = 1;
// What the state messages mean; a relay imports only the state versions it knows. The new relay's
// HELLO lists the versions it reads (`state_versions`; none listed: 1 only) and the old one sends the
// newest both know. 2 adds REPLAY (the replay cache); 1 has none (a HELLO the old relay accepted could
// be used once more with the new one within the skew window: the new one warns).
inline constexpr uint32_t kHandoverStateVersion = 2;
inline constexpr uint32_t kHandoverOldestStateVersion = 1;
inline constexpr size_t kHandoverMaxFds = 8;
// Bounds on what a STATE may announce: the most workers a relay runs (--workers, relay::validate),
// listeners per worker, and sessions (--max-sessions at most). A peer asking for more is refused.
inline constexpr uint32_t kHandoverMaxWorkers = 256;
inline constexpr uint64_t kHandoverMaxListenersPerWorker = 1024;
inline constexpr uint64_t kHandoverMaxSessions = 10'000'000;
inline constexpr uint64_t kHandoverMaxReplayParts = 65536;  // of HandshakeFactory::kMaxReplayPartBytes
inline constexpr size_t kHandoverMaxMessage = size_t{64} * 1024;
// How long the new relay may take from END to READY: half of the old relay's 60 s wait for READY.
inline constexpr std::chrono::milliseconds kHandoverReadyBudget{30'000};

enum class HandoverMsg : uint16_t {
  kHello = 1,
  kState,
  kListener,
  kSession,
  kEnd,
  kReady,
  kDone,
  kRefuse,
  kReplay,
};

// A descriptor a hand-over moves. The receiving side owns what it was sent. The sending side only
// borrows the parked worker's own descriptor: the worker keeps it open, and touches neither it nor
// its session, until the hand-over commits or resumes (Worker::request_park), so handing sessions
// over takes no spare descriptors from a relay that may be near its limit.
class HandoverFd {
 public:
  HandoverFd() = default;
  HandoverFd(common::UniqueFd owned) noexcept : owned_(std::move(owned)) {}  // NOLINT: implicit on purpose
  static HandoverFd borrow(int fd) noexcept {
    HandoverFd h;
    h.borrowed_ = fd;
    return h;
  }
  [[nodiscard]] int get() const noexcept { return owned_ ? owned_.get() : borrowed_; }
  explicit operator bool() const noexcept { return get() >= 0; }
  // The owned descriptor; a borrowed one is not this object's to give (empty).
  common::UniqueFd take() noexcept { return std::move(owned_); }

 private:
  common::UniqueFd owned_;
  int borrowed_ = -1;
};

// One established session, parked between events.
struct SessionExport {
  uint64_t id = 0;
  uint32_t worker = 0;
  std::string route;  // the route's bound listen address
  common::SockAddr client_addr, listen_addr, upstream_addr, upstream_local;
  uint64_t age_ns = 0, idle_ns = 0;
  struct Dir {
    Pump::State state = Pump::State::kPollIn;
    uint32_t in_pipe = 0;
    uint64_t bytes = 0;
    HandoverFd pipe_r, pipe_w;  // only with in_pipe > 0
  } dir[2];
  std::string handshake;  // Handshake::handover_state(); empty for static routes
  HandoverFd client, upstream;
};

struct ListenerExport {
  std::string route;  // bound address
  uint32_t worker = 0;
  common::UniqueFd fd;
};

// A handshake factory's replay protection (HandshakeFactory::handover_replay), by the bound address
// of a route that uses it.
struct ReplayExport {
  std::string route;
  std::vector<std::string> parts;
};

struct RelayExport {
  uint32_t state_version = kHandoverStateVersion;  // what the old relay sent (1: no replay state)
  uint32_t workers = 0;
  uint64_t next_seq = 0;  // per-worker sequence the importer continues from (session ids stay unique)
  std::vector<ListenerExport> listeners;
  std::vector<SessionExport> sessions;
  std::vector<ReplayExport> replay;
};

// One message on the control socket.
struct HandoverMessage {
  HandoverMsg type = HandoverMsg::kRefuse;
  nlohmann::json body = nlohmann::json::object();
  std::vector<common::UniqueFd> fds;
};

// Sends one message (blocking). Returns 0 or -errno.
int send_handover(int sock, HandoverMsg type, const nlohmann::json& body, const std::vector<int>& fds = {});
// Receives one message, waiting up to timeout_ms (-1: forever). Returns 0, -errno, -ETIMEDOUT,
// -EPROTO for a message this side cannot parse, -EMFILE when this process had no room for the
// descriptors that came with it, or -ECONNRESET when the peer closed and nothing it sent before
// closing is left to read.
int recv_handover(int sock, HandoverMessage& out, int timeout_ms);

// SESSION messages: the body, with the descriptors to send appended to *fds; and back.
// session_from_message() takes the message's descriptors and throws std::runtime_error naming the
// field it could not read.
nlohmann::json session_body(const SessionExport& s, std::vector<int>* fds);
SessionExport session_from_message(HandoverMessage& m);

const char* handover_msg_name(HandoverMsg t);

}  // namespace sshring::relay

#include <atomic>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

namespace sshring::relay {

class Relay;

// Old side: serves the control socket on its own thread. One hand-over at a time; a failed one
// leaves the relay serving and the socket listening for the next attempt.
class HandoverServer {
 public:
  struct Counts {
    size_t listeners = 0, sessions = 0;
    int peer_pid = 0;
  };
  // Binds `path` (mode 0600; a stale socket file is replaced, a live one is not: throws
  // common::UsageError). `on_commit` runs once the new process is READY and before DONE is sent:
  // write the relay_handover record and flush the audit log there, stop serving metrics.
  // `on_result` (optional) is told how each attempt ended: "done", "refused" (the two sides cannot
  // read each other) or "failed" (anything else; this relay serves on); on the control socket's
  // thread.
  HandoverServer(Relay& relay, std::string path, std::function<void(const Counts&)> on_commit,
                 std::function<void(std::string_view)> on_result = {});
  ~HandoverServer();
  HandoverServer(const HandoverServer&) = delete;
  HandoverServer& operator=(const HandoverServer&) = delete;
  // True once a hand-over went through (the relay's workers are exiting).
  [[nodiscard]] bool handed_over() const { return done_.load(); }
  [[nodiscard]] const std::string& path() const { return path_; }
  // Cuts a hand-over in progress short, unless the new relay's READY was read (then it owns the
  // sessions): this relay resumes them, and a stop that waited for the hand-over goes ahead. A
  // READY already queued when the connection is cut is still read and honoured: the new relay has
  // sent it and will serve, so this one must let go, not resume.
  void abort();

 private:
  void loop();
  const char* serve(common::UniqueFd conn);
  const char* send_state(const common::UniqueFd& conn, RelayExport& parked, int peer_pid, uint32_t version);
  Relay& relay_;
  std::string path_;
  std::function<void(const Counts&)> on_commit_;
  std::function<void(std::string_view)> on_result_;
  common::UniqueFd listen_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> done_{false};
  std::mutex conn_mu_;  // the connection of the hand-over in progress, for abort()
  int conn_fd_ = -1;
  bool ready_ = false;
  std::thread thread_;
};

// New side. Each step throws HandoverError with the exit code `sshring relay --takeover` reports.
class HandoverError : public std::runtime_error {
 public:
  HandoverError(int code, const std::string& what) : std::runtime_error(what), code_(code) {}
  [[nodiscard]] int code() const { return code_; }

 private:
  int code_;
};
inline constexpr int kTakeoverNoRelay = 3;  // nothing to take over at the control socket
inline constexpr int kTakeoverRefused = 4;  // state this relay cannot read (the old one serves on)
inline constexpr int kTakeoverFailed = 5;   // failed half-way (the old one serves on)

class HandoverClient {
 public:
  // Connects to the running relay's control socket, after checking its directory
  // (control_directory_problem), then checks that the process serving it runs as this user or
  // root (SO_PEERCRED) before anything is sent: kTakeoverNoRelay otherwise.
  explicit HandoverClient(const std::string& path);
  // Uses an already connected control socket (tests, the fuzz target); `ready_budget` as below.
  explicit HandoverClient(common::UniqueFd connected,
                          std::chrono::milliseconds ready_budget = kHandoverReadyBudget);
  // HELLO, then everything up to END. Refuses (REFUSE to the old side) unreadable state.
  RelayExport receive();
  // Tells the old side why this process gives up; it resumes serving. `failed`: the state was
  // readable but this process could not take it (counted as failed, not refused).
  void refuse(const std::string& why, bool failed = false);
  // READY, then waits for DONE (the old relay let go and flushed its audit log). Returns false when
  // the old process went away without DONE (it is gone either way; this one carries on).
  // Refuses instead (throws HandoverError) when more than the ready budget passed since END: the
  // old relay gives up waiting for READY after 60 s and serves on, and a READY that arrived just
  // after that would leave both processes serving the same sockets.
  bool ready_and_wait_done();
  [[nodiscard]] int peer_pid() const { return peer_pid_; }

 private:
  RelayExport receive_state();
  common::UniqueFd sock_;
  int peer_pid_ = 0;
  std::chrono::milliseconds ready_budget_ = kHandoverReadyBudget;
  std::chrono::steady_clock::time_point end_at_{};  // when END arrived
};

// Why the directory of control socket `path` cannot be trusted, or "" when it can: it must be a
// directory owned by this user or root and writable by neither group nor others (whoever can write
// it can put their own socket there, serve the next --takeover and hand it listeners and sessions
// of their choosing). `create`: make it first when missing, mode 0700 (its missing parents too).
std::string control_directory_problem(const std::string& path, bool create);

// The control socket path `relay` uses when none is given.
inline constexpr const char* kDefaultControlSocket = "/run/sshring/relay.control";

}  // namespace sshring::relay
