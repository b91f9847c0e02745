// A relay worker: one thread, one io_uring, one listener per route, its sessions and pipe pool.
// Internal to relay/; the public API is relay/relay.h.
#pragma once

#include <liburing.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/sockaddr.h"
#include "common/unique_fd.h"
#include "metrics/catalog.h"
#include "relay/handover.h"
#include "relay/handshake.h"
#include "relay/pump.h"
#include "relay/relay.h"

namespace sshring::relay {

// Operation kinds carried in the low byte of user_data; the upper bits hold a session slot (or a
// route index for kAccept).
enum class Op : uint8_t {
  kAccept = 1,
  kWake,
  kTick,
  kCancel,  // completions of cancel requests (ignored)
  kRecvHs,
  kConnect,
  kLinkTimeout,
  kSendClient,
  kSendUpstream,
  kPollIn0,  // direction 0: client -> upstream; direction 1: upstream -> client
  kPollIn1,
  kPollOut0,
  kPollOut1,
  kSpliceIn0,
  kSpliceIn1,
  kSpliceOut0,
  kSpliceOut1,
};

inline uint64_t make_user_data(uint32_t index, Op op) {
  return (uint64_t{index} << 8) | static_cast<uint8_t>(op);
}
inline Op user_data_op(uint64_t ud) {
  return static_cast<Op>(ud & 0xff);
}
inline uint32_t user_data_index(uint64_t ud) {
  return static_cast<uint32_t>(ud >> 8);
}

// A pipe whose both ends stay in this worker; size as granted by F_SETPIPE_SZ.
struct PipePair {
  common::UniqueFd r, w;
  uint32_t capacity = 0;
  [[nodiscard]] bool valid() const { return r.valid(); }
};

// Free pipes for reuse; only pipes with data in flight are held by sessions.
class PipePool {
 public:
  PipePool(uint32_t pipe_size, uint32_t keep) : pipe_size_(pipe_size), keep_(keep) { free_.reserve(keep); }
  // Returns 0 or -errno (EMFILE, ENFILE).
  int acquire(PipePair& out);
  // `clean`: the pipe is empty and may be reused; otherwise it is closed.
  void release(PipePair& p, bool clean);
  // Counts a pipe that came with a handed-over session as in use (release() returns it).
  void adopt() { ++in_use_; }
  [[nodiscard]] int64_t in_use() const { return in_use_; }
  [[nodiscard]] size_t free_count() const { return free_.size(); }

 private:
  uint32_t pipe_size_;
  uint32_t keep_;
  std::vector<PipePair> free_;
  int64_t in_use_ = 0;
};

// The worker's io_uring, torn down exactly once by its owner.
class Ring {
 public:
  Ring() = default;
  ~Ring() { reset(); }
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;
  // io_uring_queue_init_params; returns 0 or -errno.
  int init(unsigned entries, io_uring_params& p) {
    reset();
    int r = io_uring_queue_init_params(entries, &ring_, &p);
    ok_ = r == 0;
    return r;
  }
  void reset() {
    if (ok_) io_uring_queue_exit(&ring_);
    ok_ = false;
  }
  [[nodiscard]] bool ok() const { return ok_; }
  io_uring* get() { return &ring_; }

 private:
  io_uring ring_{};
  bool ok_ = false;
};

struct RouteSlot {
  Route route;
  common::SockAddr bound;
  common::UniqueFd listen_fd;
  bool accepting = false;  // a multishot accept is armed
  bool removed = false;
};

// NOLINTNEXTLINE(bugprone-reserved-identifier): clang-tidy 14 names the implicit copy's loop index.
struct Session {
  enum class Phase : uint8_t { kFree, kHandshake, kPending, kConnecting, kReplying, kSplicing, kRejecting };
  uint32_t index = 0;
  uint32_t gen = 0;
  Phase phase = Phase::kFree;
  bool ending = false;
  bool rst = false;  // close both sockets with SO_LINGER 0 so peers see a reset
  EndReason reason = EndReason::kClosed;
  EndReason after_reply = EndReason::kDenied;  // kRejecting: how the session ends once the reply is out
  int error = 0;                               // errno behind a connect failure or reset (for the log)
  uint32_t inflight = 0;                       // bit per Op with a request in the ring
  uint64_t id = 0;
  uint32_t route = 0;
  common::UniqueFd client, upstream;
  common::SockAddr client_addr, listen_addr, upstream_addr, upstream_local;
  std::shared_ptr<HandshakeFactory> factory;  // keeps the factory alive for this session's handshake
  std::unique_ptr<Handshake> hs;
  bool in_hs_call = false;  // inside create()/on_data(): a resume() is held until it returns
  // A resume() that arrived before kPending was returned; rare, so held by pointer (an inline
  // optional would add ~190 bytes to every idle session).
  std::unique_ptr<HandshakeStep> early_step;
  std::vector<uint8_t> hs_buf;  // kMaxHandshakeBytes while in the handshake, from the worker's pool
  size_t hs_len = 0;
  std::string to_client;  // reply frames (OK/DENY)
  size_t to_client_off = 0;
  std::vector<uint8_t> to_upstream;  // bytes glued after the preamble
  size_t to_upstream_off = 0;
  Pump pump[2];
  PipePair pipe[2];
  __kernel_timespec connect_ts{};
  uint64_t start_ns = 0;
  uint64_t last_active_ns = 0;
  uint64_t deadline_ns = 0;  // handshake deadline
  bool startup = false;      // counted in the pre-authentication budget (relay/admission.h)
  Admission::SourceKey startup_key{};

  // Back to a free slot: every field but the slot's identity (index) and generation, which moves on
  // so that stale resumes and completions are ignored. (The handshake buffer went back to the
  // worker's pool before: Worker::release_hs_buf.)
  void reset() {
    const uint32_t keep_index = index;
    const uint32_t next_gen = gen + 1;
    *this = Session{};
    index = keep_index;
    gen = next_gen;
  }
};

class Worker final : public HandshakeContext {
 public:
  Worker(unsigned index, unsigned nworkers, const RelayConfig& cfg);
  ~Worker() override;
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Control thread, before run(): adds a bound listener for route `i`.
  void add_listener(const Route& route, const common::SockAddr& bound, common::UniqueFd fd);
  // Control thread, before run(): a session handed over by another process (relay/handover.h),
  // for route `route`, with its adopted handshake (null for static routes). It stays parked, and no
  // listener accepts, until request_resume().
  void add_import(SessionExport s, uint32_t route, std::unique_ptr<Handshake> hs);
  // Control thread, before run(): session ids continue after `seq` (ids unique across processes).
  void set_seq(uint64_t seq) { seq_ = seq; }
  // Control thread, before run(): start held (sessions parked, no accepts) until request_resume().
  void hold() { held_ = true; }
  // Worker thread entry.
  void run();

  // HandshakeContext: any thread.
  void post(std::function<void()> fn) override;

  // Control requests (any thread).
  void request_drain();
  void request_stop();
  // `table`: every route by slot index (append-only); `removed[i]`: slot i stops accepting;
  // `added`: listeners for slots beyond the current table.
  void request_reload(const RelayConfig& cfg, std::vector<Route> table, std::vector<bool> removed,
                      const std::shared_ptr<std::vector<RouteSlot>>& added);

  // Hand-over, old side. Stops accepting (listeners stay open), lets handshakes finish, parks every
  // established session, then calls `done` on the worker thread with copies (dup) of what it holds.
  struct Parked {
    std::vector<SessionExport> sessions;
    std::vector<ListenerExport> listeners;
    uint64_t seq = 0;
  };
  void request_park(std::function<void(Parked)> done);
  // Serve again: parked sessions continue, listeners accept (a failed hand-over; or the new side
  // once the old one is done).
  void request_resume();
  // The hand-over went through: forget the parked sessions and the listeners (the other process
  // has them) and exit.
  void request_commit();

  [[nodiscard]] const metrics::RelayWorkerStats& stats() const { return stats_; }
  [[nodiscard]] bool exited() const { return exited_.load(std::memory_order_acquire); }
  // The ring could not be set up (thrown from run()'s caller as SystemError).
  [[nodiscard]] int setup_error() const { return setup_error_.load(); }
  // Blocks until the ring is set up (or failed); used by Relay::start.
  void wait_ready();

 private:
  struct Limits {
    uint32_t max_sessions = 0;
    uint64_t connect_timeout_ns = 0, idle_timeout_ns = 0, handshake_timeout_ns = 0;
    uint64_t first_byte_timeout_ns = 0;
  };
  static Limits limits_from(const RelayConfig& cfg, unsigned nworkers);

  io_uring_sqe* get_sqe();
  void submit_now();
  void arm_wake();
  void arm_tick();
  void arm_accept(uint32_t route);
  void dispatch(io_uring_cqe* cqe);
  void on_accept(uint32_t route, int res, uint32_t flags);
  void on_wake(uint32_t flags);
  void on_tick();
  void run_posted();

  Session* alloc_session();
  void start_handshake(Session& s);
  void submit_recv_hs(Session& s);
  void apply_step(Session& s, HandshakeStep step);
  void start_connect(Session& s, const common::SockAddr& upstream);
  void on_connected(Session& s, int res);
  void submit_send_client(Session& s);
  void submit_send_upstream(Session& s);
  void maybe_start_splicing(Session& s);
  struct DirIo;
  [[nodiscard]] DirIo dir_io(Session& s, int d);
  void drive(Session& s, int dir, Pump::Action a);
  Pump::Action arm_poll(Session& s, const DirIo& io, bool out);
  Pump::Action splice_in(Session& s, const DirIo& io, int& budget);
  Pump::Action splice_out(Session& s, const DirIo& io);
  Pump::Action shutdown_dst(Session& s, const DirIo& io);
  void on_session_cqe(Session& s, Op op, int res, uint32_t flags);
  void on_recv_hs(Session& s, int res);
  void on_send_client(Session& s, int res);
  void on_send_upstream(Session& s, int res);
  void on_pump_cqe(Session& s, Op op, int res);
  [[nodiscard]] SessionSummary summary_of(const Session& s) const;
  void log_session_end(const Session& s, const SessionSummary& sum);
  // Hand-over helpers.
  [[nodiscard]] bool parking() const { return hold_ == Hold::kParking || hold_ == Hold::kParked || held_; }
  void check_park();
  void stop_now();
  void cancel_polls(Session& s);
  void rearm_parked(Session& s);
  SessionExport export_session(const Session& s);
  void import_session(SessionExport& e, uint32_t route, std::unique_ptr<Handshake> hs);
  void drop_parked(Session& s);
  void end(Session& s, EndReason reason);
  void settle(Session& s);  // finalizes an ending session once nothing is in flight
  void finalize(Session& s);
  void refuse(int fd);
  // Pre-authentication budget: admit_startup() at accept (false: refused and counted),
  // leave_startup() once the handshake decided or the session ended; `authenticated`: the preamble
  // verified, so the session now needs a max_sessions slot (false: none free, the session ends).
  bool admit_startup(const common::SockAddr& client, Admission::SourceKey& key);
  bool leave_startup(Session& s, bool authenticated);
  void close_listeners();

  void track(Session& s, Op op) { s.inflight |= 1u << static_cast<uint8_t>(op); }
  void untrack(Session& s, Op op) { s.inflight &= ~(1u << static_cast<uint8_t>(op)); }

  unsigned index_;
  unsigned nworkers_;
  RelayConfig cfg_;  // routes unused here; limits and callbacks
  Limits limits_;
  Ring ring_;
  bool ring_failed_ = false;    // io_uring_submit failed for good: the worker stops
  io_uring_sqe scratch_sqe_{};  // handed out after a ring failure so callers need no null checks
  common::UniqueFd wake_fd_;
  std::vector<RouteSlot> routes_;
  std::vector<std::unique_ptr<Session>> slots_;
  std::vector<uint32_t> free_slots_;
  uint32_t active_ = 0;
  uint32_t startups_ = 0;  // sessions in active_ that are still unauthenticated
  uint64_t seq_ = 0;
  PipePool pipes_;
  // Handshake buffers (kMaxHandshakeBytes each) of sessions no longer in the handshake, for the next
  // ones: an established session holds none (8 KiB each would be most of its memory), and at most
  // kKeepHsBufs wait here.
  static constexpr size_t kKeepHsBufs = 64;
  std::vector<std::vector<uint8_t>> hs_bufs_;
  void take_hs_buf(Session& s);
  void release_hs_buf(Session& s);
  metrics::RelayWorkerStats stats_;
  uint64_t now_ns_ = 0;
  __kernel_timespec tick_ts_{};
  bool accept_paused_ = false;
  uint64_t last_exhaustion_log_ns_ = 0;  // the pause is logged at most every 10 s
  bool draining_ = false;
  bool stopping_ = false;
  bool stop_after_hold_ = false;  // request_stop() arrived while the hand-over held the sessions
  // Hand-over: kDraining lets handshakes finish (no accepts), kParking cancels the polls of
  // established sessions, kParked holds them still until resume or commit.
  enum class Hold : uint8_t { kNone, kDraining, kParking, kParked };
  Hold hold_ = Hold::kNone;
  bool held_ = false;  // new side: started from a hand-over, waiting for request_resume()
  std::function<void(Parked)> on_parked_;
  uint32_t park_cursor_ = 0;  // check_park(): sessions before it were found quiet
  struct Import {
    SessionExport s;
    uint32_t route;
    std::unique_ptr<Handshake> hs;
  };
  std::vector<Import> imports_;

  std::mutex post_mu_;
  std::vector<std::function<void()>> posted_;
  std::vector<std::function<void()>> running_;

  std::mutex ready_mu_;
  bool ready_ = false;
  std::condition_variable ready_cv_;
  std::atomic<int> setup_error_{0};
  std::atomic<bool> exited_{false};
};

}  // namespace sshring::relay
