// One direction of a session (src socket -> pipe -> dst socket) as a pure state machine: the worker
// feeds it completions and performs the action it returns. Kept free of I/O so every transition is
// unit-tested (tests/relay/pump_test.cpp).
//
// The cycle: wait for readability (no pipe held) -> splice src into a pipe -> splice the pipe into dst
// until it is empty (waiting for writability when dst is full) -> splice in again while the last
// read filled the request (more is likely queued), else give the pipe back and wait again. An idle
// direction therefore holds no pipe and no pending splice.
#pragma once

#include <cerrno>
#include <cstdint>

namespace sshring::relay {

class Pump {
 public:
  enum class State : uint8_t { kIdle, kPollIn, kSpliceIn, kSpliceOut, kPollOut, kDone, kFailed };
  enum class Action : uint8_t {
    kNone,
    kArmPollIn,    // release the pipe (it is empty) and wait until src is readable
    kSpliceIn,     // splice src -> pipe (acquire a pipe first if none is held)
    kSpliceOut,    // splice pipe -> dst (in_pipe() bytes are waiting)
    kArmPollOut,   // dst is full: wait until it is writable
    kShutdownDst,  // src reached EOF, pipe empty: release the pipe, shutdown(dst, SHUT_WR); done
    kFailSrc,      // error on src: the session ends with a reset
    kFailDst,      // error on dst: the session ends with a reset
  };

  Action start() {
    state_ = State::kPollIn;
    return Action::kArmPollIn;
  }
  Action on_readable() {
    if (state_ != State::kPollIn) return Action::kNone;
    state_ = State::kSpliceIn;
    return Action::kSpliceIn;
  }
  // `res` is the splice result (bytes or -errno); `requested` the length asked for.
  Action on_spliced_in(int res, uint32_t requested) {
    if (state_ != State::kSpliceIn) return Action::kNone;
    if (res > 0) {
      in_pipe_ = static_cast<uint32_t>(res);
      more_likely_ = static_cast<uint32_t>(res) >= requested;
      state_ = State::kSpliceOut;
      return Action::kSpliceOut;
    }
    if (res == 0) {  // orderly EOF; the pipe is empty by construction
      state_ = State::kDone;
      return Action::kShutdownDst;
    }
    if (res == -EAGAIN || res == -EINTR) {
      state_ = State::kPollIn;
      return Action::kArmPollIn;
    }
    state_ = State::kFailed;
    return Action::kFailSrc;
  }
  Action on_spliced_out(int res) {
    if (state_ != State::kSpliceOut) return Action::kNone;
    if (res > 0) {
      uint32_t n = static_cast<uint32_t>(res) > in_pipe_ ? in_pipe_ : static_cast<uint32_t>(res);
      in_pipe_ -= n;
      bytes_ += n;
      if (in_pipe_ > 0) return Action::kSpliceOut;
      if (more_likely_ || eager_) {
        state_ = State::kSpliceIn;
        return Action::kSpliceIn;
      }
      state_ = State::kPollIn;
      return Action::kArmPollIn;
    }
    if (res == -EAGAIN || res == -EINTR) {
      state_ = State::kPollOut;
      return Action::kArmPollOut;
    }
    // 0 from a non-empty pipe cannot happen; treat it like an error on dst.
    state_ = State::kFailed;
    return Action::kFailDst;
  }
  Action on_writable() {
    if (state_ != State::kPollOut) return Action::kNone;
    state_ = State::kSpliceOut;
    return Action::kSpliceOut;
  }
  // The worker's per-event budget ran out while the pump wanted to splice in again with an empty
  // pipe: wait for readability instead (the poll completes at once if data is queued).
  Action yield() {
    if (state_ != State::kSpliceIn || in_pipe_ != 0) return Action::kNone;
    state_ = State::kPollIn;
    return Action::kArmPollIn;
  }

  // Eager: after draining, try one more splice-in before polling (an EAGAIN costs one cheap syscall
  // when splices run inline; a poll round trip costs a ring wakeup). Off for io-wq splices.
  void set_eager(bool eager) { eager_ = eager; }

  // Hand-over (relay/handover.h): a direction parked between events is in kPollIn (no pipe),
  // kPollOut (`in_pipe` bytes wait in its pipe) or kDone; another process continues it from there.
  [[nodiscard]] bool parked() const {
    return state_ == State::kPollIn || state_ == State::kPollOut || state_ == State::kDone;
  }
  // Rebuilds a parked direction; false (and no change) for any other state or a pipe count that
  // does not fit the state.
  bool restore(State state, uint32_t in_pipe, uint64_t bytes, bool eager) {
    if (state != State::kPollIn && state != State::kPollOut && state != State::kDone) return false;
    if ((state == State::kPollOut) != (in_pipe > 0)) return false;
    state_ = state;
    in_pipe_ = in_pipe;
    bytes_ = bytes;
    eager_ = eager;
    more_likely_ = false;
    return true;
  }

  [[nodiscard]] State state() const { return state_; }
  [[nodiscard]] uint32_t in_pipe() const { return in_pipe_; }
  [[nodiscard]] uint64_t bytes() const { return bytes_; }
  [[nodiscard]] bool done() const { return state_ == State::kDone; }
  [[nodiscard]] bool failed() const { return state_ == State::kFailed; }
  // A pipe is needed from splice-in until the pipe is drained.
  [[nodiscard]] bool needs_pipe() const {
    return state_ == State::kSpliceIn || state_ == State::kSpliceOut || state_ == State::kPollOut;
  }

 private:
  State state_ = State::kIdle;
  bool more_likely_ = false;
  bool eager_ = false;
  uint32_t in_pipe_ = 0;
  uint64_t bytes_ = 0;
};

}  // namespace sshring::relay
