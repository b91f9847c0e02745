// The relay: an in-process L4 relay for SSH built on io_uring.
//
// Usage (tests, the CLI and the authenticated mode all use exactly this):
//
//   relay::RelayConfig cfg;
//   cfg.routes.push_back({.listen = *SockAddr::parse("127.0.0.1:0"),
//                         .upstream = *SockAddr::parse("127.0.0.1:22")});   // static route
//   // or .handshake = std::make_shared<MyFactory>()                       // handshake route
//   relay::Relay relay(std::move(cfg));
//   relay.start();                          // binds every route (throws SystemError), starts workers
//   SockAddr bound = relay.listen_addresses()[0];   // the real port when 0 was asked
//   ...
//   relay.begin_drain();                    // stop accepting; sessions end by themselves or at the
//                                           // drain deadline (EndReason::kDrained)
//   relay.wait();                           // joins the workers (after drain or stop)
//   relay.stop();                           // or: end every session now and join
//
// Threads: `workers` threads (default: one per CPU). Each owns one io_uring, one SO_REUSEPORT
// listener per route, a session slab and a small pipe pool; workers share nothing mutable on the
// data path. Control calls (begin_drain, stop, reload) reach a worker through its post queue and an
// eventfd that wakes its ring.
//
// Data path per direction (see relay/pump.h): poll for readability, take a pipe from the pool,
// splice socket -> pipe, splice pipe -> socket until the pipe is empty, give the pipe back. An idle
// session therefore holds no pipe and no kernel worker thread. Splices run either as
// IORING_OP_SPLICE (SpliceMode::kRing, io-wq) or as non-blocking splice(2) calls on the worker
// thread right after io_uring reported readiness (SpliceMode::kInline, the default: the benchmark in
// bench/relay shows it wins on latency and CPU, because io_uring hands every splice to io-wq).
//
// Handshake routes (relay/handshake.h), as the worker implements the seam: client bytes are read into
// a kMaxHandshakeBytes buffer and on_data() sees everything received so far. kNeedMore reads on
// until the buffer is full (session ends kDenied) or handshake_timeout passes (kHandshakeTimeout).
// kPending waits for the HandshakeResume (from a HandshakeContext::post() callback, or even called
// before on_data() returned kPending; a stale resume after the session ended is ignored by
// generation). kConnect connects with connect_timeout (linked timeout), then sends
// on_upstream_connected()'s reply to the client and the bytes after `consumed` to the upstream, and
// splices only once both are out. kReject sends `reply` and closes with a FIN (no reset) without
// connecting; a failed connect sends on_upstream_failed(errno or ETIMEDOUT)'s reply the same way.
// on_end() runs once per session on the worker thread after both sockets are closed;
// bytes_client_to_upstream includes the glued bytes. RelayConfig::on_session_end runs right after it
// for every session (static and handshake routes alike).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/sockaddr.h"
#include "metrics/catalog.h"
#include "relay/admission.h"
#include "relay/handover.h"
#include "relay/handshake.h"

namespace sshring::relay {

enum class SpliceMode : uint8_t {
  kInline,  // splice(2) with SPLICE_F_NONBLOCK on the worker thread after a poll completion
  kRing,    // IORING_OP_SPLICE (executed by io-wq threads)
};

struct Route {
  common::SockAddr listen;
  // Exactly one of these: a fixed upstream, or a handshake that picks one per session.
  std::optional<common::SockAddr> upstream;
  std::shared_ptr<HandshakeFactory> handshake;
};

struct RelayConfig {
  std::vector<Route> routes;
  unsigned workers = 0;           // 0: one per CPU
  uint32_t max_sessions = 10000;  // whole relay; split evenly over workers (ceil)
  // Handshake routes: connections accepted but not yet authenticated have their own budget and do not
  // count against max_sessions (relay/admission.h).
  AdmissionConfig startups;
  std::shared_ptr<Admission> admission;  // shared by the workers; start()/start_from() create it when null
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds idle_timeout{0};  // 0: none
  std::chrono::milliseconds handshake_timeout{10000};
  std::chrono::milliseconds drain_timeout{30000};
  uint32_t pipe_size = 1u << 20;  // F_SETPIPE_SZ request; falls back to what the kernel grants
  uint32_t pipe_pool = 4;         // free pipes each worker keeps for reuse
  uint32_t ring_entries = 1024;
  SpliceMode splice_mode = SpliceMode::kInline;
  bool log_sessions = true;  // one structured log line per session end
  // Called on the worker thread after every session end (audit). Must not block for long.
  std::function<void(const SessionSummary&)> on_session_end;
};

// Validates a config (routes present, each with exactly one of upstream/handshake, limits in
// range). Throws common::UsageError naming the route and the fix.
void validate(const RelayConfig& cfg);

class Worker;
struct DrainTimer;

class Relay {
 public:
  explicit Relay(RelayConfig cfg);
  ~Relay();  // stop() + wait()
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  // Binds every route's listener in every worker (SO_REUSEPORT) and starts the worker threads.
  // Throws common::SystemError (bind, io_uring setup) or common::UsageError (bad config).
  void start();
  // The bound address of each route, in config order (port 0 resolved).
  [[nodiscard]] std::vector<common::SockAddr> listen_addresses() const;
  // Stops accepting (listeners closed: new clients are refused); running sessions continue until
  // they end or `drain_timeout` passes, then they are closed. Workers exit when empty.
  void begin_drain();
  // Ends every session now (kDrained) and makes the workers exit. Does not join (see wait()).
  void stop();
  // Joins the workers. Returns when every worker has exited.
  void wait();
  // True once every worker has exited.
  [[nodiscard]] bool finished() const;

  // Hand-over, old side (relay/handover.h): stops accepting, lets handshakes finish and parks every
  // established session; returns copies of the listeners and sessions. nullopt (everything resumed)
  // when the workers are not quiet within `timeout`.
  std::optional<RelayExport> park_for_handover(std::chrono::milliseconds timeout);
  // After park_for_handover: serve again (the hand-over failed) ...
  void resume_after_handover();
  // ... or let go of what was handed over; the workers exit.
  void commit_handover();
  // Hand-over, new side: like start(), but with the old process's listeners (by route address; a
  // route it did not have is bound anew), its worker count and its sessions, parked until
  // resume_after_handover(). Throws common::UsageError when a session's route or handshake state
  // cannot be taken (nothing started then), SystemError like start().
  void start_from(RelayExport in);

  // Replaces routes and limits (SIGHUP). Routes are matched by listen address: existing ones get the
  // new upstream/handshake for new sessions, new ones are bound and added, missing ones stop
  // accepting (their sessions continue). Throws like start(); on error nothing changes.
  void reload(RelayConfig cfg);

  [[nodiscard]] unsigned worker_count() const { return static_cast<unsigned>(workers_.size()); }
  // One stats block per worker, written only by that worker (for metrics::register_relay).
  [[nodiscard]] std::vector<const metrics::RelayWorkerStats*> stats() const;
  // Sums across workers (tests, logs).
  [[nodiscard]] int64_t sessions_active() const;
  [[nodiscard]] uint64_t sessions_total(EndReason r) const;
  [[nodiscard]] int64_t pipes_in_use() const;
  // The pre-authentication budget shared by the workers (null before start()).
  [[nodiscard]] const Admission* admission() const { return cfg_.admission.get(); }

 private:
  // What start() and start_from() share: validation, SIGPIPE, the admission.
  void prepare_start();
  // start_from: the old process's replay caches into this one's handshake factories.
  void adopt_replay(const RelayExport& in);
  RelayConfig cfg_;
  // Route slots, append-only across reloads (workers index their listeners the same way).
  std::vector<Route> table_;
  std::vector<bool> removed_;
  std::vector<common::SockAddr> bound_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;
  std::unique_ptr<DrainTimer> timer_;
  std::thread drain_timer_;
  std::atomic<bool> draining_{false};
  bool started_ = false;

  void launch();  // starts the worker threads and waits for their rings
};

}  // namespace sshring::relay
