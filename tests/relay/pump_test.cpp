// Transitions of one relay direction (relay/pump.h), table-driven.
#include "relay/pump.h"

#include <gtest/gtest.h>

#include <vector>

namespace sshring::relay {
namespace {

using A = Pump::Action;
using S = Pump::State;

// One input to the pump: an event kind and its result.
struct Ev {
  enum Kind { kStart, kReadable, kIn, kOut, kWritable, kYield } kind;
  int res = 0;
  uint32_t requested = 65536;
};

struct Case {
  const char* name;
  std::vector<Ev> events;
  std::vector<A> actions;  // expected action after each event
  S final_state;
  uint64_t bytes;
  bool needs_pipe;
};

A feed(Pump& p, const Ev& e) {
  switch (e.kind) {
    case Ev::kStart:
      return p.start();
    case Ev::kReadable:
      return p.on_readable();
    case Ev::kIn:
      return p.on_spliced_in(e.res, e.requested);
    case Ev::kOut:
      return p.on_spliced_out(e.res);
    case Ev::kWritable:
      return p.on_writable();
    case Ev::kYield:
      return p.yield();
  }
  return A::kNone;
}

const std::vector<Case> kCases = {
    {"idle waits for readability without a pipe", {{Ev::kStart}}, {A::kArmPollIn}, S::kPollIn, 0, false},
    {"short read drains then polls again",
     {{Ev::kStart}, {Ev::kReadable}, {Ev::kIn, 100}, {Ev::kOut, 100}},
     {A::kArmPollIn, A::kSpliceIn, A::kSpliceOut, A::kArmPollIn},
     S::kPollIn,
     100,
     false},
    {"full read splices in again without polling",
     {{Ev::kStart}, {Ev::kReadable}, {Ev::kIn, 65536}, {Ev::kOut, 65536}},
     {A::kArmPollIn, A::kSpliceIn, A::kSpliceOut, A::kSpliceIn},
     S::kSpliceIn,
     65536,
     true},
    {"partial write continues splicing out",
     {{Ev::kStart}, {Ev::kReadable}, {Ev::kIn, 1000}, {Ev::kOut, 400}, {Ev::kOut, 600}},
     {A::kArmPollIn, A::kSpliceIn, A::kSpliceOut, A::kSpliceOut, A::kArmPollIn},
     S::kPollIn,
     1000,
     false},
    {"full destination waits for writability holding the pipe",
     {{Ev::kStart}, {Ev::kReadable}, {Ev::kIn, 1000}, {Ev::kOut, -EAGAIN}},
     {A::kArmPollIn, A::kSpliceIn, A::kSpliceOut, A::kArmPollOut},
     S::kPollOut,
     0,
     true},
    {"writable resumes splicing out",
     {{Ev::kStart}, {Ev::kReadable}, {Ev::kIn, 1000}, {Ev::kOut, -EAGAIN}, {Ev::kWritable}, {Ev::kOut, 1000}},
     {A::kArmPollIn, A::kSpliceIn, A::kSpliceOut, A::kArmPollOut, A::kSpliceOut, A::kArmPollIn},
     S::kPollIn,
     1000,
     false},
    {"spurious readiness (EAGAIN) goes back to polling",
     {{Ev::kStart}, {Ev::kReadable}, {Ev::kIn, -EAGAIN}},
     {A::kArmPollIn, A::kSpliceIn, A::kArmPollIn},
     S::kPollIn,
     0,
     false},
    {"EOF shuts the destination down",
     {{Ev::kStart}, {Ev::kReadable}, {Ev::kIn, 0}},
     {A::kArmPollIn, A::kSpliceIn, A::kShutdownDst},
     S::kDone,
     0,
     false},
    {"EOF after data",
     {{Ev::kStart}, {Ev::kReadable}, {Ev::kIn, 5}, {Ev::kOut, 5}, {Ev::kReadable}, {Ev::kIn, 0}},
     {A::kArmPollIn, A::kSpliceIn, A::kSpliceOut, A::kArmPollIn, A::kSpliceIn, A::kShutdownDst},
     S::kDone,
     5,
     false},
    {"reset on the source fails the source",
     {{Ev::kStart}, {Ev::kReadable}, {Ev::kIn, -ECONNRESET}},
     {A::kArmPollIn, A::kSpliceIn, A::kFailSrc},
     S::kFailed,
     0,
     false},
    {"broken destination fails the destination",
     {{Ev::kStart}, {Ev::kReadable}, {Ev::kIn, 10}, {Ev::kOut, -EPIPE}},
     {A::kArmPollIn, A::kSpliceIn, A::kSpliceOut, A::kFailDst},
     S::kFailed,
     0,
     false},
    {"yield turns a repeat splice-in into a poll",
     {{Ev::kStart}, {Ev::kReadable}, {Ev::kIn, 65536}, {Ev::kOut, 65536}, {Ev::kYield}},
     {A::kArmPollIn, A::kSpliceIn, A::kSpliceOut, A::kSpliceIn, A::kArmPollIn},
     S::kPollIn,
     65536,
     false},
    {"events out of order are ignored",
     {{Ev::kStart}, {Ev::kWritable}, {Ev::kOut, 10}, {Ev::kIn, 10}},
     {A::kArmPollIn, A::kNone, A::kNone, A::kNone},
     S::kPollIn,
     0,
     false},
};

TEST(PumpTest, Transitions) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    Pump p;
    ASSERT_EQ(c.events.size(), c.actions.size());
    for (size_t i = 0; i < c.events.size(); ++i)
      EXPECT_EQ(feed(p, c.events[i]), c.actions[i]) << "event " << i;
    EXPECT_EQ(p.state(), c.final_state);
    EXPECT_EQ(p.bytes(), c.bytes);
    EXPECT_EQ(p.needs_pipe(), c.needs_pipe);
  }
}

TEST(PumpTest, EagerProbesOnceBeforePolling) {
  Pump p;
  p.set_eager(true);
  p.start();
  p.on_readable();
  EXPECT_EQ(p.on_spliced_in(100, 65536), A::kSpliceOut);
  EXPECT_EQ(p.on_spliced_out(100), A::kSpliceIn);  // short read, but try again before polling
  EXPECT_EQ(p.on_spliced_in(-EAGAIN, 65536), A::kArmPollIn);
  EXPECT_FALSE(p.needs_pipe());
}

TEST(PumpTest, InPipeTracksPartialWrites) {
  Pump p;
  p.start();
  p.on_readable();
  p.on_spliced_in(3000, 65536);
  EXPECT_EQ(p.in_pipe(), 3000u);
  p.on_spliced_out(1000);
  EXPECT_EQ(p.in_pipe(), 2000u);
  EXPECT_EQ(p.bytes(), 1000u);
}

// Hand-over: a direction parked with bytes in its pipe continues in another process exactly there;
// states that are not parked (a splice in flight) or a pipe count that does not fit are refused.
TEST(PumpTest, RestoreContinuesAParkedDirection) {
  Pump p;
  p.start();
  p.on_readable();
  p.on_spliced_in(3000, 65536);
  EXPECT_EQ(p.on_spliced_out(-EAGAIN), A::kArmPollOut);
  ASSERT_TRUE(p.parked());
  Pump q;
  ASSERT_TRUE(q.restore(p.state(), p.in_pipe(), p.bytes(), true));
  EXPECT_EQ(q.on_writable(), A::kSpliceOut);
  EXPECT_EQ(q.on_spliced_out(3000), A::kSpliceIn);  // eager: one more splice-in before polling
  EXPECT_EQ(q.bytes(), 3000u);

  struct Case {
    S state;
    uint32_t in_pipe;
    bool ok;
  };
  for (const Case& c :
       {Case{S::kPollIn, 0, true}, Case{S::kPollOut, 10, true}, Case{S::kDone, 0, true},
        Case{S::kPollIn, 5, false}, Case{S::kPollOut, 0, false}, Case{S::kSpliceIn, 0, false},
        Case{S::kSpliceOut, 10, false}, Case{S::kFailed, 0, false}, Case{S::kIdle, 0, false}}) {
    Pump r;
    EXPECT_EQ(r.restore(c.state, c.in_pipe, 0, false), c.ok) << static_cast<int>(c.state) << " " << c.in_pipe;
    if (!c.ok) EXPECT_EQ(r.state(), S::kIdle);
  }
}

}  // namespace
}  // namespace sshring::relay
