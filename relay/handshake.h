// The seam between the relay's data path (relay/worker) and the authenticated preamble
// (relay/auth, speaking protocol/preamble.h). A session runs: accept -> [handshake] -> connect upstream ->
// splice. Static routes use no handshake; authenticated mode creates one Handshake per accepted client.
//
// Threading: every Handshake method runs on the owning worker's thread. Work that may block (name
// resolution, anything slow) runs elsewhere and comes back through HandshakeContext::post(), which
// wakes the worker's ring; the callback then runs on the worker thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/sockaddr.h"

namespace sshring::relay {

struct HandshakeStep {
  enum class Kind : uint8_t {
    kNeedMore,  // keep reading from the client (the handshake timeout still runs)
    kPending,   // waiting on off-loop work; the worker calls nothing until resume() is called
    kConnect,   // connect to `upstream` (already checked by policy)
    kReject,    // send `reply` to the client, then close; no upstream connection is made
  };
  Kind kind = Kind::kNeedMore;
  common::SockAddr upstream;  // kConnect
  // kConnect: how many bytes of the client buffer the preamble used. Bytes after that are SSH bytes
  // that arrived glued to the preamble; the worker forwards them to the upstream first, in order.
  size_t consumed = 0;
  std::string reply;  // kReject: DENY frame
};

// Why a session ended, as it appears in logs, audit records and the `outcome` metric label.
enum class EndReason : uint8_t {
  kClosed,         // both directions finished cleanly
  kClientReset,    // error or RST from the client side
  kUpstreamReset,  // error or RST from the upstream side
  kIdleTimeout,
  kDrained,  // shutdown deadline reached
  kDenied,   // handshake rejected
  kHandshakeTimeout,
  kConnectFailed,  // refused, unreachable or connect timeout
  kOverloaded,     // max sessions reached, or out of descriptors
};

const char* end_reason_name(EndReason r);

struct SessionSummary {
  uint64_t session_id = 0;
  common::SockAddr client;          // the client's address
  common::SockAddr upstream;        // the target address
  common::SockAddr upstream_local;  // the relay's local address:port on the upstream leg
  uint64_t bytes_client_to_upstream = 0;
  uint64_t bytes_upstream_to_client = 0;
  uint64_t duration_ns = 0;
  EndReason reason = EndReason::kClosed;
};

// Per-worker services offered to handshakes.
class HandshakeContext {
 public:
  virtual ~HandshakeContext() = default;
  // Runs `fn` on this worker's thread soon. Safe to call from any thread.
  virtual void post(std::function<void()> fn) = 0;
};

class Handshake {
 public:
  virtual ~Handshake() = default;
  // All client bytes received so far (cumulative, from the first byte). Bounded by the worker's
  // handshake buffer (kMaxHandshakeBytes); a handshake must reject before that is exceeded.
  virtual HandshakeStep on_data(std::span<const uint8_t> received) = 0;
  // Called after kPending once the handshake called `resume` (see HandshakeResume).
  // Upstream connected: returns the bytes to send to the client before the splice starts (OK frame).
  virtual std::string on_upstream_connected(const common::SockAddr& local) = 0;
  // Upstream connect failed (errno, or ETIMEDOUT): returns the DENY frame to send before closing.
  virtual std::string on_upstream_failed(int err) = 0;
  // The session ended (also after a reject): write the audit record, release per-principal counts.
  virtual void on_end(const SessionSummary& summary) = 0;
  // Hand-over (relay/handover.h): what an established session's handshake must carry to another
  // process so that its on_end() there writes the same record (principal, target, ...). Empty: the
  // session cannot be handed over with its context.
  [[nodiscard]] virtual std::string handover_state() const { return {}; }
};

// Given to a Handshake when it is created; calling it (on the worker thread, e.g. from a posted
// callback) delivers the step that ends a kPending state. Calling it after the session ended is a
// no-op (the worker checks a generation counter).
using HandshakeResume = std::function<void(HandshakeStep)>;

class HandshakeFactory {
 public:
  virtual ~HandshakeFactory() = default;
  // One per accepted client, on the worker thread. `session_id` is unique in this relay process.
  virtual std::unique_ptr<Handshake> create(uint64_t session_id, const common::SockAddr& client,
                                            const common::SockAddr& listen, HandshakeContext& ctx,
                                            HandshakeResume resume) = 0;
  // Hand-over, receiving side: the handshake of an established session from handover_state() of
  // another process's handshake. Null when `state` cannot be read (the hand-over is refused).
  virtual std::unique_ptr<Handshake> adopt(uint64_t session_id, const common::SockAddr& client,
                                           const common::SockAddr& listen, std::string_view state) {
    (void)session_id;
    (void)client;
    (void)listen;
    (void)state;
    return nullptr;
  }
  // Hand-over of the replay protection (relay/handover.h, REPLAY messages): what this factory must
  // keep refusing (nonces it accepted that are still inside their skew window), as text parts of at
  // most kMaxReplayPartBytes, characters [0-9a-z :] only; empty: nothing to hand over ...
  [[nodiscard]] virtual std::vector<std::string> handover_replay() const { return {}; }
  // ... and, in the process that takes over, before its first session: takes them. False when the
  // parts cannot be read (the hand-over is refused).
  virtual bool adopt_replay(const std::vector<std::string>& parts) { return parts.empty(); }
  // No replay cache came from the process before this one (a plain start, or a hand-over from a
  // relay that sends none): refuse what that process may have accepted. Nothing to do for routes
  // without a handshake that keeps one.
  virtual void refuse_hellos_from_before_start() {}
};

inline constexpr size_t kMaxReplayPartBytes = size_t{48} * 1024;

// Largest client preamble the worker buffers before the handshake must decide.
inline constexpr size_t kMaxHandshakeBytes = 8192;

}  // namespace sshring::relay
