// Hand-over SESSION messages (relay/handover.h): a round trip, and descriptor indices that point at
// the sockets or wrap around are refused (both were found by relay_handover_fuzz_test's inputs), and
// a peer's last message is read even when it closed with ours unread.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <limits>
#include <stdexcept>
#include <thread>

#include "relay/handover.h"

namespace relay = sshring::relay;
using sshring::common::UniqueFd;

namespace {

relay::HandoverMessage message_with(size_t fds, const nlohmann::json& body) {
  relay::HandoverMessage m;
  m.type = relay::HandoverMsg::kSession;
  m.body = body;
  for (size_t i = 0; i < fds; ++i) m.fds.emplace_back(::open("/dev/null", O_RDWR | O_CLOEXEC));
  return m;
}

nlohmann::json body_with_pipe_at(nlohmann::json at) {
  return {{"id", 1},
          {"worker", 0},
          {"route", "127.0.0.1:2222"},
          {"age_ns", 1},
          {"idle_ns", 1},
          {"handshake", ""},
          {"dirs",
           {{{"state", 1}, {"in_pipe", 10}, {"bytes", 0}, {"pipe_fd", at}},
            {{"state", 0}, {"in_pipe", 0}, {"bytes", 0}}}}};
}

}  // namespace

TEST(HandoverMessage, SessionRoundTripsWithItsPipe) {
  auto m = message_with(4, body_with_pipe_at(2));
  relay::SessionExport s = relay::session_from_message(m);
  EXPECT_EQ(s.id, 1u);
  EXPECT_TRUE(s.client && s.upstream && s.dir[0].pipe_r && s.dir[0].pipe_w);
  EXPECT_EQ(s.dir[0].in_pipe, 10u);
  std::vector<int> fds;
  nlohmann::json again = relay::session_body(s, &fds);
  EXPECT_EQ(fds.size(), 4u);
  EXPECT_EQ(again["dirs"][0]["pipe_fd"], 2);
}

TEST(HandoverMessage, PipeIndexOutsideTheDescriptorsIsRefused) {
  for (nlohmann::json at : {nlohmann::json(std::numeric_limits<uint64_t>::max()), nlohmann::json(0),
                            nlohmann::json(1), nlohmann::json(3), nlohmann::json(4)}) {
    SCOPED_TRACE(at.dump());
    auto m = message_with(4, body_with_pipe_at(at));
    EXPECT_THROW(relay::session_from_message(m), std::runtime_error);
  }
}

// A number that parsed as a float (too large for 64 bits, or 1e30) is refused, never cast: the cast
// would be undefined (found by relay_handover_fuzz_test in CI's 20 s run).
TEST(HandoverMessage, NumbersThatAreNotWholeAreRefused) {
  for (const char* field : {"id", "age_ns", "worker"}) {
    for (nlohmann::json bad : {nlohmann::json(1e30), nlohmann::json(-1), nlohmann::json(0.5),
                               nlohmann::json::parse("38446744073709551615"), nlohmann::json("7")}) {
      SCOPED_TRACE(std::string(field) + "=" + bad.dump());
      auto body = body_with_pipe_at(2);
      body[field] = bad;
      auto m = message_with(4, body);
      EXPECT_THROW(relay::session_from_message(m), std::runtime_error);
    }
  }
  auto body = body_with_pipe_at(nlohmann::json::parse("38446744073709551615"));
  auto m = message_with(4, body);
  EXPECT_THROW(relay::session_from_message(m), std::runtime_error);
}

// The new relay that refuses the state answers REFUSE and exits with the rest of the state unread. The
// kernel then reports ECONNRESET before the queued REFUSE; the sender must still read why (CI saw the
// hand-over counted "failed" instead of "refused" when the exit won the race).
TEST(HandoverMessage, RefuseQueuedBeforeThePeerClosedIsReadBeforeTheReset) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd old_relay(sv[0]), new_relay(sv[1]);
  ASSERT_EQ(relay::send_handover(old_relay.get(), relay::HandoverMsg::kState, {{"state_version", 99}}), 0);
  ASSERT_EQ(relay::send_handover(old_relay.get(), relay::HandoverMsg::kEnd, nlohmann::json::object()), 0);
  relay::HandoverMessage m;
  ASSERT_EQ(relay::recv_handover(new_relay.get(), m, 1000), 0);
  ASSERT_EQ(relay::send_handover(new_relay.get(), relay::HandoverMsg::kRefuse, {{"error", "version 99"}}), 0);
  new_relay.reset();  // END still unread: the kernel marks the old relay's socket reset
  ASSERT_EQ(relay::recv_handover(old_relay.get(), m, 1000), 0);
  EXPECT_EQ(m.type, relay::HandoverMsg::kRefuse);
  EXPECT_EQ(m.body.value("error", std::string()), "version 99");
  EXPECT_EQ(relay::recv_handover(old_relay.get(), m, 1000), -ECONNRESET);
}

namespace {

// A new relay that took longer than its ready budget from END to READY refuses instead: the old
// relay may have given up waiting (60 s) and resumed, and a late READY would leave both serving the
// same sockets. The old side sees REFUSE with result "failed", never READY.
TEST(HandoverClientTest, ALateReadyBecomesARefusal) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd old_side(sv[1]);
  relay::HandoverClient client{UniqueFd(sv[0]), std::chrono::milliseconds(100)};
  std::thread old_relay([&] {
    relay::HandoverMessage m;
    ASSERT_EQ(relay::recv_handover(old_side.get(), m, 5000), 0);
    ASSERT_EQ(m.type, relay::HandoverMsg::kHello);
    ASSERT_EQ(relay::send_handover(old_side.get(), relay::HandoverMsg::kState,
                                   {{"state_version", relay::kHandoverStateVersion},
                                    {"workers", 1},
                                    {"next_seq", 0},
                                    {"listeners", 0},
                                    {"sessions", 0}}),
              0);
    ASSERT_EQ(
        relay::send_handover(old_side.get(), relay::HandoverMsg::kEnd, {{"listeners", 0}, {"sessions", 0}}),
        0);
  });
  relay::RelayExport state = client.receive();
  old_relay.join();
  EXPECT_EQ(state.workers, 1u);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // a slow import
  try {
    client.ready_and_wait_done();
    ADD_FAILURE() << "READY sent after the budget";
  } catch (const relay::HandoverError& e) {
    EXPECT_EQ(e.code(), relay::kTakeoverFailed);
    EXPECT_NE(std::string(e.what()).find("keeps every session"), std::string::npos) << e.what();
  }
  relay::HandoverMessage m;
  ASSERT_EQ(relay::recv_handover(old_side.get(), m, 5000), 0);
  EXPECT_EQ(m.type, relay::HandoverMsg::kRefuse);
  EXPECT_EQ(m.body.value("result", std::string()), "failed");
}

// Within the budget READY goes out as before.
TEST(HandoverClientTest, AReadyInTimeIsSent) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd old_side(sv[1]);
  relay::HandoverClient client{UniqueFd(sv[0])};
  std::thread old_relay([&] {
    relay::HandoverMessage m;
    ASSERT_EQ(relay::recv_handover(old_side.get(), m, 5000), 0);
    ASSERT_EQ(relay::send_handover(
                  old_side.get(), relay::HandoverMsg::kState,
                  {{"state_version", relay::kHandoverStateVersion}, {"workers", 1}, {"next_seq", 0}}),
              0);
    ASSERT_EQ(relay::send_handover(old_side.get(), relay::HandoverMsg::kEnd, nlohmann::json::object()), 0);
    ASSERT_EQ(relay::recv_handover(old_side.get(), m, 5000), 0);
    EXPECT_EQ(m.type, relay::HandoverMsg::kReady);
    ASSERT_EQ(relay::send_handover(old_side.get(), relay::HandoverMsg::kDone, nlohmann::json::object()), 0);
  });
  (void)client.receive();
  EXPECT_TRUE(client.ready_and_wait_done());
  old_relay.join();
}

// A STATE, then whatever `more` sends, from a fake old relay; returns how receive() ended and what
// the fake read back (REFUSE expected).
struct StateOutcome {
  int code = 0;  // HandoverError::code(), 0 when receive() returned
  std::string what;
  relay::HandoverMsg answer = relay::HandoverMsg::kHello;
};

StateOutcome receive_from(const nlohmann::json& state, const std::function<void(int)>& more = {}) {
  int sv[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd old_side(sv[1]);
  relay::HandoverClient client{UniqueFd(sv[0])};
  StateOutcome out;
  std::thread old_relay([&] {
    relay::HandoverMessage m;
    ASSERT_EQ(relay::recv_handover(old_side.get(), m, 5000), 0);
    ASSERT_EQ(relay::send_handover(old_side.get(), relay::HandoverMsg::kState, state), 0);
    if (more) more(old_side.get());
    (void)relay::send_handover(old_side.get(), relay::HandoverMsg::kEnd, nlohmann::json::object());
    if (relay::recv_handover(old_side.get(), m, 5000) == 0) out.answer = m.type;
  });
  try {
    (void)client.receive();
  } catch (const relay::HandoverError& e) {
    out.code = e.code();
    out.what = e.what();
  }
  client.refuse("test ends");  // unblocks the fake when receive() returned
  old_relay.join();
  return out;
}

// The peer's STATE sizes this process (workers, rings, listeners): numbers past what any relay runs
// are refused as unreadable state, before anything is built. 100,000 workers used to be taken.
TEST(HandoverClientTest, AStateAskingForMoreWorkersThanARelayRunsIsRefused) {
  for (const uint64_t workers : {uint64_t{257}, uint64_t{100000}, uint64_t{UINT32_MAX}}) {
    SCOPED_TRACE(workers);
    StateOutcome o = receive_from({{"state_version", relay::kHandoverStateVersion}, {"workers", workers}});
    EXPECT_EQ(o.code, relay::kTakeoverRefused) << o.what;
    EXPECT_NE(o.what.find("workers"), std::string::npos) << o.what;
    EXPECT_EQ(o.answer, relay::HandoverMsg::kRefuse);
  }
  StateOutcome ok = receive_from({{"state_version", relay::kHandoverStateVersion}, {"workers", 256}});
  EXPECT_EQ(ok.code, 0) << ok.what;
}

TEST(HandoverClientTest, AListenerOfAWorkerTheStateDoesNotHaveIsRefused) {
  StateOutcome o = receive_from({{"state_version", relay::kHandoverStateVersion}, {"workers", 2}}, [](int s) {
    UniqueFd l(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    ASSERT_EQ(relay::send_handover(s, relay::HandoverMsg::kListener,
                                   {{"route", "127.0.0.1:1"}, {"worker", 2}}, {l.get()}),
              0);
  });
  EXPECT_EQ(o.code, relay::kTakeoverRefused) << o.what;
  EXPECT_EQ(o.answer, relay::HandoverMsg::kRefuse);
}

// State version 2 carries the replay cache in REPLAY parts; HELLO lists the versions this relay
// reads, and a relay from before version 2 (state version 1, no REPLAY) is still taken over.
TEST(HandoverClientTest, ReplayPartsArriveWithVersionTwoAndVersionOneIsStillRead) {
  for (const uint32_t version : {2u, 1u}) {
    SCOPED_TRACE(version);
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    UniqueFd old_side(sv[1]);
    relay::HandoverClient client{UniqueFd(sv[0])};
    nlohmann::json hello;
    std::thread old_relay([&] {
      relay::HandoverMessage m;
      ASSERT_EQ(relay::recv_handover(old_side.get(), m, 5000), 0);
      hello = m.body;
      ASSERT_EQ(relay::send_handover(old_side.get(), relay::HandoverMsg::kState,
                                     {{"state_version", version}, {"workers", 1}}),
                0);
      if (version >= 2)
        for (const char* part : {"keys 1 2 forgot", "aa:1:2:3"})
          ASSERT_EQ(relay::send_handover(old_side.get(), relay::HandoverMsg::kReplay,
                                         {{"route", "127.0.0.1:2222"}, {"part", part}}),
                    0);
      ASSERT_EQ(relay::send_handover(old_side.get(), relay::HandoverMsg::kEnd, nlohmann::json::object()), 0);
    });
    relay::RelayExport state = client.receive();
    old_relay.join();
    EXPECT_EQ(hello["state_versions"], nlohmann::json::array({1, 2}));
    EXPECT_EQ(state.state_version, version);
    if (version >= 2) {
      ASSERT_EQ(state.replay.size(), 1u);
      EXPECT_EQ(state.replay[0].route, "127.0.0.1:2222");
      EXPECT_EQ(state.replay[0].parts, (std::vector<std::string>{"keys 1 2 forgot", "aa:1:2:3"}));
    } else {
      EXPECT_TRUE(state.replay.empty());
    }
  }
}

// The control socket's directory: created 0700 when missing; refused when another user owns it or
// group or others can write it (they could serve the next --takeover).
TEST(ControlDirectory, OnlyADirectoryOfThisUserWritableByItAloneIsTrusted) {
  char tmpl[] = "/tmp/sshring-ctl-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string base = tmpl;
  const std::string sock = base + "/a/b/relay.control";
  EXPECT_NE(relay::control_directory_problem(sock, false).find("No such file"), std::string::npos);
  EXPECT_EQ(relay::control_directory_problem(sock, true), "");
  struct stat st {};
  ASSERT_EQ(::stat((base + "/a/b").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  ASSERT_EQ(::chmod((base + "/a/b").c_str(), 0777), 0);
  EXPECT_NE(relay::control_directory_problem(sock, true).find("writable by group or others (mode 0777)"),
            std::string::npos);
  ASSERT_EQ(::chmod((base + "/a/b").c_str(), 01733), 0);  // sticky, as /tmp: still others can write
  EXPECT_NE(relay::control_directory_problem(sock, false), "");
  ASSERT_EQ(::chmod((base + "/a/b").c_str(), 0755), 0);
  EXPECT_EQ(relay::control_directory_problem(sock, false), "");
  if (::geteuid() == 0) {
    ASSERT_EQ(::chown((base + "/a/b").c_str(), 65534, 65534), 0);
    EXPECT_NE(relay::control_directory_problem(sock, false).find("belongs to uid 65534"), std::string::npos);
  }
  std::filesystem::remove_all(base);
}

}  // namespace
