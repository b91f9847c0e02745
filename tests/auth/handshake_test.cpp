// The relay side of the preamble driven directly through relay/handshake.h (no sockets): every
// allow and deny path, glued bytes, pending resolution through HandshakeContext::post, limits.
#include "relay/auth/auth_handshake.h"

#include <gtest/gtest.h>

#include <sys/mount.h>
#include <unistd.h>

#include <cstring>
#include <deque>
#include <filesystem>
#include <mutex>

#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "client/client.h"
#include "metrics/audit.h"
#include "metrics/audit_verify.h"
#include "policy/parser.h"
#include "protocol/keys.h"
#include "relay/auth/auth_service.h"
#include "tests/support/process.h"

namespace auth = sshring::relay::auth;
namespace protocol = sshring::protocol;
namespace client = sshring::client;
namespace relay = sshring::relay;
namespace policy = sshring::policy;
using sshring::common::SockAddr;
using Kind = relay::HandshakeStep::Kind;

namespace {

// Monday 2024-01-01 12:00:00 UTC.
constexpr uint64_t kNowMs = 1704110400000ull;

class Context : public relay::HandshakeContext {
 public:
  void post(std::function<void()> fn) override {
    std::lock_guard lock(mu_);
    q_.push_back(std::move(fn));
  }
  // Runs posted callbacks until `done` or the timeout.
  bool run_until(const std::function<bool()>& done,
                 std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
      std::deque<std::function<void()>> batch;
      {
        std::lock_guard lock(mu_);
        batch.swap(q_);
      }
      for (auto& f : batch) f();
      if (std::chrono::steady_clock::now() > deadline) return false;
      if (batch.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
  }

 private:
  std::mutex mu_;
  std::deque<std::function<void()>> q_;
};

struct AuthHandshake : ::testing::Test {
  protocol::Ed25519PrivateKey alice = protocol::Ed25519PrivateKey::generate();
  protocol::Ed25519PrivateKey bob = protocol::Ed25519PrivateKey::generate();
  protocol::Ed25519PrivateKey stranger = protocol::Ed25519PrivateKey::generate();
  policy::PolicyCache cache;
  std::shared_ptr<auth::AuthHandshakeFactory> factory;
  Context ctx;
  uint64_t clock = kNowMs;
  uint64_t next_id = 1;

  void SetUp() override {
    std::string yaml = R"(version: 1
roles:
  - name: dev
    max_sessions: 2
    targets:
      - names: ["*.allowed.test"]
        cidrs: [127.0.0.0/8]
        ports: [22, 2222]
      - cidrs: [10.1.0.0/16]
  - name: night
    windows: [{days: Mon, hours: "01:00-02:00", tz: UTC}]
    targets:
      - cidrs: [10.2.0.0/16]
principals:
  - name: alice
    roles: [dev, night]
    keys: [")" + protocol::format_openssh_public_key(alice.public_key(), "alice") +
                       R"("]
  - name: bob
    roles: [dev]
    keys: [")" + protocol::format_openssh_public_key(bob.public_key(), "bob") +
                       R"("]
)";
    cache.publish(policy::Snapshot::build(std::make_shared<policy::Policy>(policy::parse_policy(yaml)), {}));
    auth::ResolverOptions ro;
    ro.static_hosts["db.allowed.test"] = {"127.0.0.5"};
    ro.static_hosts["evil.allowed.test"] = {"192.0.2.7"};
    ro.static_hosts["two.allowed.test"] = {"192.0.2.8", "127.0.0.9"};
    auth::AuthOptions o;
    o.relay_ids = {"relay-a"};
    o.max_handshakes_per_source = 3;
    o.resolver = std::make_shared<auth::AresResolver>(ro);
    o.clock_ms = [this] { return clock; };
    o.log_denials = false;
    opts = o;
    factory = std::make_shared<auth::AuthHandshakeFactory>(cache, o);
  }
  auth::AuthOptions opts;  // what `factory` was built with (a new process's factory: the same)

  client::Signer signer(const protocol::Ed25519PrivateKey& k) {
    auto copy = std::make_shared<protocol::Ed25519PrivateKey>(
        protocol::Ed25519PrivateKey::from_openssh(k.to_openssh(), "k"));
    return {k.public_key(), [copy](std::string_view d) { return copy->sign(d); }};
  }
  std::string hello(const protocol::Ed25519PrivateKey& k, const std::string& principal,
                    const std::string& target, uint16_t port = 22, const std::string& relay_id = "relay-a") {
    return protocol::encode_hello(client::make_hello(signer(k), relay_id, principal, target, port, clock));
  }

  struct Session {
    std::unique_ptr<relay::Handshake> hs;
    std::optional<relay::HandshakeStep> resumed;
  };
  std::unique_ptr<Session> open(const std::string& client = "10.9.0.1:40000") {
    auto s = std::make_unique<Session>();
    auto* raw = s.get();
    s->hs = factory->create(next_id++, *SockAddr::parse(client), *SockAddr::parse("127.0.0.1:2222"), ctx,
                            [raw](relay::HandshakeStep st) { raw->resumed = std::move(st); });
    return s;
  }
  // Feeds `bytes` at once and resolves a pending step.
  relay::HandshakeStep feed(Session& s, const std::string& bytes) {
    auto step = s.hs->on_data({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
    if (step.kind != Kind::kPending) return step;
    EXPECT_TRUE(ctx.run_until([&] { return s.resumed.has_value(); }));
    return s.resumed.value_or(relay::HandshakeStep{});
  }
  static uint16_t deny_reason(const relay::HandshakeStep& st) {
    if (st.kind != Kind::kReject) return 0;
    auto d = protocol::decode_reply({reinterpret_cast<const uint8_t*>(st.reply.data()), st.reply.size()});
    return d.status == protocol::DecodeStatus::kOk && d.reply.type == protocol::FrameType::kDeny
               ? d.reply.reason
               : 0;
  }
  void end(Session& s, relay::EndReason r = relay::EndReason::kClosed) {
    relay::SessionSummary sum;
    sum.reason = r;
    s.hs->on_end(sum);
  }
};

uint16_t code(protocol::Reason r) {
  return static_cast<uint16_t>(r);
}

}  // namespace

TEST_F(AuthHandshake, AllowsAnAddressTargetAndKeepsGluedBytes) {
  auto s = open();
  std::string frame = hello(alice, "alice", "10.1.2.3", 22);
  auto st = feed(*s, frame + "SSH-2.0-OpenSSH_9.2\r\n");
  ASSERT_EQ(st.kind, Kind::kConnect) << deny_reason(st);
  EXPECT_EQ(st.upstream.to_string(), "10.1.2.3:22");
  EXPECT_EQ(st.consumed, frame.size());
  EXPECT_EQ(factory->limits().sessions_of("alice"), 1u);
  std::string ok = s->hs->on_upstream_connected(*SockAddr::parse("127.0.0.1:50000"));
  auto d = protocol::decode_reply({reinterpret_cast<const uint8_t*>(ok.data()), ok.size()});
  ASSERT_EQ(d.status, protocol::DecodeStatus::kOk);
  EXPECT_EQ(d.reply.type, protocol::FrameType::kOk);
  EXPECT_EQ(d.reply.session_id, 1u);
  end(*s);
  EXPECT_EQ(factory->limits().sessions_of("alice"), 0u);
  EXPECT_EQ(factory->limits().handshakes_from(*SockAddr::parse("10.9.0.1:1")), 0u);
}

// An established session does not keep the policy snapshot it was decided on: after a reload the
// old snapshot (a fleet's can hold 100,000 grants) is freed while the session lives on. Both ways
// of deciding are checked: an address target, and a name resolved off the loop.
TEST_F(AuthHandshake, AnEstablishedSessionDoesNotPinItsSnapshot) {
  for (const char* target : {"10.1.2.3", "db.allowed.test"}) {
    std::weak_ptr<const policy::Snapshot> decided_on = cache.current();
    auto s = open();
    auto st = feed(*s, hello(alice, "alice", target, 22));
    ASSERT_EQ(st.kind, Kind::kConnect) << target << ": " << deny_reason(st);
    s->hs->on_upstream_connected(*SockAddr::parse("127.0.0.1:50000"));
    cache.publish(policy::Snapshot::build(std::make_shared<policy::Policy>(cache.current()->policy()), {}));
    EXPECT_TRUE(decided_on.expired()) << target << ": the session still holds the old snapshot";
    end(*s);
  }
  // A denied one neither.
  std::weak_ptr<const policy::Snapshot> decided_on = cache.current();
  auto d = open();
  auto st = feed(*d, hello(stranger, "alice", "10.1.2.3", 22));
  ASSERT_EQ(st.kind, Kind::kReject);
  cache.publish(policy::Snapshot::build(std::make_shared<policy::Policy>(cache.current()->policy()), {}));
  EXPECT_TRUE(decided_on.expired());
  end(*d);
}

TEST_F(AuthHandshake, ByteByByteNeedsMoreThenDecides) {
  auto s = open();
  std::string frame = hello(alice, "alice", "10.1.2.3");
  for (size_t n = 1; n < frame.size(); ++n)
    ASSERT_EQ(s->hs->on_data({reinterpret_cast<const uint8_t*>(frame.data()), n}).kind, Kind::kNeedMore) << n;
  EXPECT_EQ(feed(*s, frame).kind, Kind::kConnect);
  end(*s);
}

TEST_F(AuthHandshake, ResolvesNamesOffTheLoopAndConnectsToTheCheckedAddress) {
  auto s = open();
  auto first =
      s->hs->on_data({reinterpret_cast<const uint8_t*>(hello(alice, "alice", "db.allowed.test").data()), 0});
  EXPECT_EQ(first.kind, Kind::kNeedMore);
  std::string frame = hello(alice, "alice", "db.allowed.test", 2222);
  auto step = s->hs->on_data({reinterpret_cast<const uint8_t*>(frame.data()), frame.size()});
  ASSERT_EQ(step.kind, Kind::kPending);
  EXPECT_FALSE(s->resumed);  // nothing happens until the worker runs the posted callback
  ASSERT_TRUE(ctx.run_until([&] { return s->resumed.has_value(); }));
  ASSERT_EQ(s->resumed->kind, Kind::kConnect) << deny_reason(*s->resumed);
  EXPECT_EQ(s->resumed->upstream.to_string(), "127.0.0.5:2222");
  EXPECT_EQ(s->resumed->consumed, frame.size());
  end(*s);

  // Of several addresses, the first one the policy allows is used.
  auto t = open();
  auto st = feed(*t, hello(alice, "alice", "two.allowed.test"));
  ASSERT_EQ(st.kind, Kind::kConnect);
  EXPECT_EQ(st.upstream.to_string(), "127.0.0.9:22");
  end(*t);
}

TEST_F(AuthHandshake, RealDnsPathThroughCares) {
  // "localhost" goes through c-ares (its /etc/hosts lookup), not the static table.
  auto s = open();
  auto st = feed(*s, hello(alice, "alice", "localhost"));
  // The cidr-only target lets any name pass the name check; the resolved loopback address is then
  // refused (no entry both names localhost and covers 127.0.0.1). The client is not told what the
  // name resolved to: the relay's resolver must not answer for internal names.
  EXPECT_EQ(deny_reason(st), code(protocol::Reason::kAddressNotAllowed));
  EXPECT_EQ(st.reply.find("127.0.0.1"), std::string::npos);
  EXPECT_NE(st.reply.find("localhost resolved to no address the policy allows"), std::string::npos);
  end(*s);
  auto t = open();
  auto st2 = feed(*t, hello(alice, "alice", "nonexistent.allowed.test"));
  EXPECT_EQ(deny_reason(st2), code(protocol::Reason::kResolveFailed));
  end(*t);
}

TEST_F(AuthHandshake, Denials) {
  struct Case {
    const char* name;
    std::function<std::string()> input;
    protocol::Reason want;                                // the exact reason (decision metrics, audit)
    std::optional<protocol::Reason> wire = std::nullopt;  // what the client sees, when it must see less
  };
  const auto hidden = protocol::Reason::kNotAuthenticated;
  std::vector<Case> cases = {
      {"unknown principal", [&] { return hello(alice, "mallory", "10.1.0.1"); },
       protocol::Reason::kUnknownPrincipal, hidden},
      {"key not listed", [&] { return hello(stranger, "alice", "10.1.0.1"); },
       protocol::Reason::kKeyNotListed, hidden},
      {"someone else's key", [&] { return hello(bob, "alice", "10.1.0.1"); }, protocol::Reason::kKeyNotListed,
       hidden},
      {"wrong signature",
       [&] {
         auto h = client::make_hello(signer(alice), "relay-a", "alice", "10.1.0.1", 22, clock);
         h.signature[0] ^= 1;
         return protocol::encode_hello(h);
       },
       protocol::Reason::kBadSignature, hidden},
      {"unknown principal with a bad signature",
       [&] {
         auto h = client::make_hello(signer(stranger), "relay-a", "mallory", "10.1.0.1", 22, clock);
         h.signature[5] ^= 1;
         return protocol::encode_hello(h);
       },
       protocol::Reason::kUnknownPrincipal, hidden},
      {"signed for another target",
       [&] {
         auto h = client::make_hello(signer(alice), "relay-a", "alice", "10.1.0.1", 22, clock);
         h.target = "10.1.0.2";  // redirect attempt: signature no longer matches
         return protocol::encode_hello(h);
       },
       protocol::Reason::kBadSignature, hidden},
      {"another relay", [&] { return hello(alice, "alice", "10.1.0.1", 22, "relay-b"); },
       protocol::Reason::kWrongRelay},
      {"target not allowed", [&] { return hello(alice, "alice", "10.3.0.1"); },
       protocol::Reason::kTargetNotAllowed},
      {"port not allowed", [&] { return hello(alice, "alice", "db.allowed.test", 23); },
       protocol::Reason::kPortNotAllowed},
      {"port not allowed on an address", [&] { return hello(alice, "alice", "10.1.0.1", 23); },
       protocol::Reason::kPortNotAllowed},
      {"name resolving to a disallowed address", [&] { return hello(alice, "alice", "evil.allowed.test"); },
       protocol::Reason::kAddressNotAllowed},
      {"outside time window", [&] { return hello(alice, "alice", "10.2.0.1"); },
       protocol::Reason::kOutsideTimeWindow},
      {"stale",
       [&] {
         return protocol::encode_hello(
             client::make_hello(signer(alice), "relay-a", "alice", "10.1.0.1", 22, clock - 31000));
       },
       protocol::Reason::kStale},
      {"from the future",
       [&] {
         return protocol::encode_hello(
             client::make_hello(signer(alice), "relay-a", "alice", "10.1.0.1", 22, clock + 31000));
       },
       protocol::Reason::kStale},
      {"further in the future than max_future_skew",
       [&] {
         return protocol::encode_hello(
             client::make_hello(signer(alice), "relay-a", "alice", "10.1.0.1", 22, clock + 5001));
       },
       protocol::Reason::kStale},
      {"impossible length (valid HELLOs are at most 669 bytes)",
       [&] {
         std::string f = hello(alice, "alice", "10.1.0.1");
         f[6] = 0x02;  // declares 0x2a0 = 672 payload bytes; only the header is needed to refuse
         f[7] = static_cast<char>(0xa0);
         return f.substr(0, 8);
       },
       protocol::Reason::kMalformed},
      {"garbage", [] { return std::string("SSH-2.0-OpenSSH_9.2\r\n"); }, protocol::Reason::kMalformed},
      {"oversized",
       [&] {
         std::string f = hello(alice, "alice", "10.1.0.1");
         f[6] = 0x20;  // declares an 8 KiB payload
         return f;
       },
       protocol::Reason::kMalformed},
      {"version 2",
       [&] {
         std::string f = hello(alice, "alice", "10.1.0.1");
         f[4] = 2;
         return f;
       },
       protocol::Reason::kUnsupportedVersion},
  };
  for (const auto& c : cases) {
    auto s = open();
    auto st = feed(*s, c.input());
    EXPECT_EQ(st.kind, Kind::kReject) << c.name;
    EXPECT_EQ(deny_reason(st), code(c.wire.value_or(c.want))) << c.name;
    end(*s, relay::EndReason::kDenied);
    EXPECT_GE(factory->decisions(code(c.want)), 1u) << c.name;
  }
  EXPECT_EQ(factory->limits().sessions_of("alice"), 0u);
  EXPECT_EQ(factory->limits().handshakes_from(*SockAddr::parse("10.9.0.1:1")), 0u);
}

TEST_F(AuthHandshake, ReplayedPreambleIsDenied) {
  std::string frame = hello(alice, "alice", "10.1.0.1");
  auto a = open();
  EXPECT_EQ(feed(*a, frame).kind, Kind::kConnect);
  end(*a);
  clock += 5000;  // still inside the skew window
  auto b = open("10.9.0.2:1");
  EXPECT_EQ(deny_reason(feed(*b, frame)), code(protocol::Reason::kReplayed));
  end(*b);
  clock += 60000;  // outside the window the clock check refuses it
  auto c = open("10.9.0.2:1");
  EXPECT_EQ(deny_reason(feed(*c, frame)), code(protocol::Reason::kStale));
  end(*c);
}

// A live hand-over carries the replay cache: a HELLO used with the old process is refused by the
// new one while its timestamp is in the window (it used to be accepted once more), a new HELLO is
// accepted, the principal's share counts what it used before, and unreadable state is refused.
TEST_F(AuthHandshake, ReplayCacheMovesWithAHandover) {
  std::vector<std::string> frames;
  for (int i = 0; i < 3; ++i) {
    frames.push_back(hello(alice, "alice", "10.1.0.1"));
    auto a = open();
    EXPECT_EQ(feed(*a, frames.back()).kind, Kind::kConnect);
    end(*a);
  }
  const std::vector<std::string> parts = factory->handover_replay();
  ASSERT_EQ(parts.size(), 2u);  // the keys, then one part of nonces
  for (const auto& p : parts)
    EXPECT_EQ(p.find_first_not_of("0123456789abcdefghijklmnopqrstuvwxyz :"), std::string::npos);
  auto next = std::make_shared<auth::AuthHandshakeFactory>(cache, opts);
  ASSERT_TRUE(next->adopt_replay(parts));
  EXPECT_EQ(next->replay_cache().size(), 3u);
  EXPECT_EQ(next->replay_cache().live_of("alice"), 3u);
  factory = next;
  clock += 5000;
  for (const auto& f : frames) {
    auto b = open("10.9.0.2:1");
    EXPECT_EQ(deny_reason(feed(*b, f)), code(protocol::Reason::kReplayed));
    end(*b);
  }
  auto c = open("10.9.0.2:1");
  EXPECT_EQ(feed(*c, hello(alice, "alice", "10.1.0.1")).kind, Kind::kConnect);
  end(*c);
  EXPECT_FALSE(next->adopt_replay(parts)) << "a cache in use takes no hand-over state";
  for (const std::vector<std::string>& bad :
       {std::vector<std::string>{"keys 1 2 forgot 0"}, std::vector<std::string>{parts[0], "zz:1:2:3"},
        std::vector<std::string>{parts[0], parts[1] + " 00"}}) {
    auto fresh = std::make_shared<auth::AuthHandshakeFactory>(cache, opts);
    EXPECT_FALSE(fresh->adopt_replay(bad)) << bad.back();
  }
}

// A principal with a listed key but no role floods valid HELLOs: its nonces fill only its own share
// of the replay cache, so another principal still gets in (without the share, the cache would be full
// and everyone would be refused as overloaded).
TEST_F(AuthHandshake, ReplayFloodByARolelessPrincipalDoesNotDenyAnother) {
  protocol::Ed25519PrivateKey loner = protocol::Ed25519PrivateKey::generate();
  std::string yaml =
      "version: 1\nroles:\n  - name: dev\n    targets:\n      - cidrs: [10.1.0.0/16]\n"
      "principals:\n  - name: alice\n    roles: [dev]\n    keys: [\"" +
      protocol::format_openssh_public_key(alice.public_key(), "alice") +
      "\"]\n  - name: loner\n    roles: []\n    keys: [\"" +
      protocol::format_openssh_public_key(loner.public_key(), "loner") + "\"]\n";
  policy::PolicyCache small_cache;
  small_cache.publish(
      policy::Snapshot::build(std::make_shared<policy::Policy>(policy::parse_policy(yaml)), {}));
  auth::AuthOptions o;
  o.relay_ids = {"relay-a"};
  o.replay_capacity = 320;  // 16 shards x 21
  o.replay_per_principal = 40;
  o.max_handshakes_per_source = 10000;
  o.clock_ms = [this] { return clock; };
  o.log_denials = false;
  auto f = std::make_shared<auth::AuthHandshakeFactory>(small_cache, o);
  int overloaded = 0, not_allowed = 0;
  for (int i = 0; i < 1000; ++i) {
    auto s = std::make_unique<Session>();
    s->hs = f->create(i + 1, *SockAddr::parse("10.9.0.1:1"), *SockAddr::parse("127.0.0.1:2222"), ctx,
                      [](relay::HandshakeStep) {});
    uint16_t r = deny_reason(feed(*s, hello(loner, "loner", "10.1.0.1")));
    overloaded += r == code(protocol::Reason::kOverloaded);
    not_allowed += r == code(protocol::Reason::kTargetNotAllowed);
    s->hs->on_end({});
  }
  EXPECT_EQ(not_allowed, 40);  // the nonces that were stored (signature verified, principal known)
  EXPECT_EQ(overloaded, 960);  // the rest: the loner's share is full, nothing else
  EXPECT_EQ(f->replay_cache().live_of("loner"), 40u);
  EXPECT_EQ(f->replay_cache().size(), 40u);
  for (int i = 0; i < 5; ++i) {
    auto s = std::make_unique<Session>();
    s->hs = f->create(5000 + i, *SockAddr::parse("10.9.0.2:1"), *SockAddr::parse("127.0.0.1:2222"), ctx,
                      [](relay::HandshakeStep) {});
    auto st = feed(*s, hello(alice, "alice", "10.1.0.1"));
    EXPECT_EQ(st.kind, Kind::kConnect) << i << " reason " << deny_reason(st);
    s->hs->on_end({});
  }
  // HELLOs that never verified are never stored: a stranger's flood leaves the cache as it was.
  for (int i = 0; i < 100; ++i) {
    auto s = std::make_unique<Session>();
    s->hs = f->create(9000 + i, *SockAddr::parse("10.9.0.3:1"), *SockAddr::parse("127.0.0.1:2222"), ctx,
                      [](relay::HandshakeStep) {});
    EXPECT_EQ(deny_reason(feed(*s, hello(stranger, "alice", "10.1.0.1"))),
              code(protocol::Reason::kNotAuthenticated));
    s->hs->on_end({});
  }
  EXPECT_EQ(f->replay_cache().size(), 45u);
}

// The replay cache forgets on the monotonic clock. Wall clock forward then back: the nonce is still
// remembered (a wall-clock prune would have dropped it). Both clocks on past the window, then the wall
// clock back: the forgotten timestamp is refused as stale instead of being accepted again.
TEST_F(AuthHandshake, WallClockStepsDoNotAdmitAReplay) {
  uint64_t mono = 1'000'000;
  auth::AuthOptions o;
  o.relay_ids = {"relay-a"};
  o.max_handshakes_per_source = 10000;
  o.clock_ms = [this] { return clock; };
  o.mono_ms = [&mono] { return mono; };
  o.log_denials = false;
  auto f = std::make_shared<auth::AuthHandshakeFactory>(cache, o);
  uint64_t id = 1;
  auto attempt = [&](const std::string& frame) {
    auto s = std::make_unique<Session>();
    s->hs = f->create(id++, *SockAddr::parse("10.9.0.1:1"), *SockAddr::parse("127.0.0.1:2222"), ctx,
                      [](relay::HandshakeStep) {});
    auto st = feed(*s, frame);
    s->hs->on_end({});
    return st;
  };
  const uint64_t t0 = clock;
  std::string captured = hello(alice, "alice", "10.1.0.1");
  ASSERT_EQ(attempt(captured).kind, Kind::kConnect);
  // Wall clock jumps 2 minutes ahead (monotonic: 1 s); fresh HELLOs at that time sweep every shard.
  clock = t0 + 120'000;
  mono += 1000;
  for (int i = 0; i < 64; ++i) ASSERT_EQ(attempt(hello(bob, "bob", "10.1.0.1")).kind, Kind::kConnect) << i;
  // ... and back to 2 s after the capture: inside the skew window, so only the cache stops it.
  clock = t0 + 2000;
  mono += 1000;
  EXPECT_EQ(deny_reason(attempt(captured)), code(protocol::Reason::kReplayed));

  // A new relay: both clocks move past the window and a sweep forgets the nonce ...
  f = std::make_shared<auth::AuthHandshakeFactory>(cache, o);
  clock = t0;
  ASSERT_EQ(attempt(captured).kind, Kind::kConnect);
  clock = t0 + 31'000;
  mono += 31'000;
  for (int i = 0; i < 64; ++i) ASSERT_EQ(attempt(hello(bob, "bob", "10.1.0.1")).kind, Kind::kConnect) << i;
  // ... then the wall clock is stepped back 29 s: the timestamp is acceptable again, the nonce is
  // gone, and the shard's memory of what it forgot refuses it.
  clock = t0 + 2000;
  EXPECT_EQ(deny_reason(attempt(captured)), code(protocol::Reason::kStale));
  // An honest HELLO made now (after every forgotten timestamp) still gets in.
  clock = t0 + 31'001;
  EXPECT_EQ(attempt(hello(alice, "alice", "10.1.0.1")).kind, Kind::kConnect);
}

TEST_F(AuthHandshake, SessionLimitPerPrincipal) {
  auto a = open(), b = open();
  EXPECT_EQ(feed(*a, hello(alice, "alice", "10.1.0.1")).kind, Kind::kConnect);
  EXPECT_EQ(feed(*b, hello(alice, "alice", "10.1.0.1")).kind, Kind::kConnect);
  auto c = open();
  EXPECT_EQ(deny_reason(feed(*c, hello(alice, "alice", "10.1.0.1"))),
            code(protocol::Reason::kTooManySessions));
  end(*c, relay::EndReason::kDenied);
  // Another principal is not affected; ending a session frees a slot.
  auto d = open();
  EXPECT_EQ(feed(*d, hello(bob, "bob", "10.1.0.1")).kind, Kind::kConnect);
  end(*a);
  auto e = open();
  EXPECT_EQ(feed(*e, hello(alice, "alice", "10.1.0.1")).kind, Kind::kConnect);
  end(*b);
  end(*d);
  end(*e);
  EXPECT_EQ(factory->limits().sessions_of("alice"), 0u);
}

TEST_F(AuthHandshake, HandshakeCapPerSourceAddress) {
  std::vector<std::unique_ptr<Session>> idle;
  for (int i = 0; i < 3; ++i) idle.push_back(open("10.9.0.7:" + std::to_string(1000 + i)));
  auto over = open("10.9.0.7:2000");
  EXPECT_EQ(deny_reason(feed(*over, hello(alice, "alice", "10.1.0.1"))),
            code(protocol::Reason::kTooManyHandshakes));
  end(*over, relay::EndReason::kDenied);
  auto other_source = open("10.9.0.8:2000");
  EXPECT_EQ(feed(*other_source, hello(alice, "alice", "10.1.0.1")).kind, Kind::kConnect);
  end(*other_source);
  // A slowloris connection that times out frees its slot.
  end(*idle[0], relay::EndReason::kHandshakeTimeout);
  EXPECT_EQ(factory->decisions(code(protocol::Reason::kTimeout)), 1u);
  auto again = open("10.9.0.7:3000");
  EXPECT_EQ(feed(*again, hello(alice, "alice", "10.1.0.1")).kind, Kind::kConnect);
  end(*again);
  for (size_t i = 1; i < idle.size(); ++i) end(*idle[i], relay::EndReason::kHandshakeTimeout);
}

TEST_F(AuthHandshake, UpstreamFailureIsTargetUnreachable) {
  auto s = open();
  ASSERT_EQ(feed(*s, hello(alice, "alice", "10.1.0.1")).kind, Kind::kConnect);
  std::string deny = s->hs->on_upstream_failed(ECONNREFUSED);
  auto d = protocol::decode_reply({reinterpret_cast<const uint8_t*>(deny.data()), deny.size()});
  ASSERT_EQ(d.status, protocol::DecodeStatus::kOk);
  EXPECT_EQ(d.reply.reason, code(protocol::Reason::kTargetUnreachable));
  end(*s, relay::EndReason::kConnectFailed);
  EXPECT_EQ(factory->limits().sessions_of("alice"), 0u);
}

TEST_F(AuthHandshake, SessionEndingWhileResolvingIsSafe) {
  // The handshake goes away while the name is being resolved; the late answer must be dropped.
  auto s = open();
  std::string frame = hello(alice, "alice", "slow.allowed.test");  // goes to DNS (fails eventually)
  auto step = s->hs->on_data({reinterpret_cast<const uint8_t*>(frame.data()), frame.size()});
  ASSERT_EQ(step.kind, Kind::kPending);
  end(*s, relay::EndReason::kHandshakeTimeout);
  s->hs.reset();
  EXPECT_EQ(factory->limits().sessions_of("alice"), 0u);
  ctx.run_until([] { return false; }, std::chrono::milliseconds(200));
}

// The answer is already posted to the worker when the session times out: running it afterwards must
// neither decide nor count (the timeout was the session's one decision).
TEST_F(AuthHandshake, AnAnswerAfterTheSessionEndedIsNotCounted) {
  struct Manual : auth::Resolver {
    std::vector<Callback> pending;
    void resolve(std::string, uint16_t, Callback cb) override { pending.push_back(std::move(cb)); }
  };
  auto resolver = std::make_shared<Manual>();
  auth::AuthOptions o;
  o.relay_ids = {"relay-a"};
  o.resolver = resolver;
  o.clock_ms = [this] { return clock; };
  o.log_denials = false;
  factory = std::make_shared<auth::AuthHandshakeFactory>(cache, o);
  for (bool fails : {false, true}) {
    auto s = open();
    std::string frame = hello(alice, "alice", "db.allowed.test");
    ASSERT_EQ(s->hs->on_data({reinterpret_cast<const uint8_t*>(frame.data()), frame.size()}).kind,
              Kind::kPending);
    ASSERT_EQ(resolver->pending.size(), 1u);
    if (fails) {
      resolver->pending[0]("timeout", {});
    } else {
      resolver->pending[0]("", {*SockAddr::parse("192.0.2.1:22")});  // not allowed: would count a deny
    }
    resolver->pending.clear();
    end(*s, relay::EndReason::kHandshakeTimeout);
    ctx.run_until([] { return false; }, std::chrono::milliseconds(50));  // runs the posted answer
    EXPECT_FALSE(s->resumed.has_value());
  }
  EXPECT_EQ(factory->decisions(code(protocol::Reason::kTimeout)), 2u);
  EXPECT_EQ(factory->decisions(code(protocol::Reason::kResolveFailed)), 0u);
  EXPECT_EQ(factory->decisions(code(protocol::Reason::kAddressNotAllowed)), 0u);
  EXPECT_EQ(factory->limits().sessions_of("alice"), 0u);
}

TEST(AuthService, LoadsThePolicyFileAndReloads) {
  sshring::testing::TempDir dir;
  auto key = std::make_shared<protocol::Ed25519PrivateKey>(protocol::Ed25519PrivateKey::generate());
  auto policy_for = [&](const std::string& principal) {
    return "version: 1\ngrant_store: " + dir.file("grants") +
           "\nroles:\n  - name: dev\n    targets:\n      - cidrs: [10.0.0.0/8]\n"
           "principals:\n  - name: " +
           principal + "\n    roles: [dev]\n    keys: [\"" +
           protocol::format_openssh_public_key(key->public_key()) + "\"]\n";
  };
  sshring::testing::write_file(dir.file("policy.yaml"), policy_for("carol"));
  auth::AuthServiceOptions o;
  o.policy_path = dir.file("policy.yaml");
  o.relay_ids = {"r1"};
  o.audit_path = dir.file("audit.jsonl");
  o.watch = false;
  o.auth.log_denials = false;
  auth::AuthService svc(o);
  Context ctx;
  client::Signer signer{key->public_key(), [key](std::string_view d) { return key->sign(d); }};
  auto attempt = [&](const std::string& principal) {
    auto hs = svc.factory()->create(1, *SockAddr::parse("192.0.2.1:1"), *SockAddr::parse("127.0.0.1:2"), ctx,
                                    [](relay::HandshakeStep) {});
    std::string f = protocol::encode_hello(
        client::make_hello(signer, "r1", principal, "10.0.0.1", 22, client::unix_ms_now()));
    auto st = hs->on_data({reinterpret_cast<const uint8_t*>(f.data()), f.size()});
    hs->on_end(relay::SessionSummary{});
    return st.kind;
  };
  EXPECT_EQ(attempt("carol"), Kind::kConnect);
  sshring::testing::write_file(dir.file("policy.yaml"), policy_for("dave"));
  std::string err;
  ASSERT_TRUE(svc.reload(&err)) << err;
  EXPECT_EQ(attempt("carol"), Kind::kReject);
  EXPECT_EQ(attempt("dave"), Kind::kConnect);
  sshring::testing::write_file(dir.file("policy.yaml"), "version: 1\nprincipals: [oops");
  EXPECT_FALSE(svc.reload(&err));  // a broken file keeps the last good policy
  EXPECT_EQ(attempt("dave"), Kind::kConnect);
  EXPECT_THROW(auth::AuthService({.policy_path = dir.file("missing.yaml")}), std::exception);
}

TEST_F(AuthHandshake, DecisionsAndHandshakeTimeReachPrometheus) {
  prometheus::Registry registry;
  auto& decisions = prometheus::BuildCounter().Name("sshring_policy_decisions_total").Register(registry);
  auto& hist =
      prometheus::BuildHistogram().Name("sshring_relay_handshake_duration_seconds").Register(registry);
  auto& h = hist.Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.01, 0.1, 1});
  factory->set_metrics({.handshake_seconds = &h, .decisions = &decisions});
  auto a = open();
  ASSERT_EQ(feed(*a, hello(alice, "alice", "10.1.0.1")).kind, Kind::kConnect);
  a->hs->on_upstream_connected(*SockAddr::parse("127.0.0.1:1"));
  end(*a);
  auto b = open();
  EXPECT_EQ(deny_reason(feed(*b, hello(alice, "mallory", "10.1.0.1"))),
            code(protocol::Reason::kNotAuthenticated));
  end(*b, relay::EndReason::kDenied);
  EXPECT_EQ(decisions.Add({{"result", "allow"}, {"reason", "allowed"}}).Value(), 1);
  EXPECT_EQ(decisions.Add({{"result", "deny"}, {"reason", "unknown_principal"}}).Value(), 1);
  EXPECT_EQ(h.Collect().histogram.sample_count, 1u);
}

// Fail closed on the audit log: while it cannot be written, new sessions are refused (overloaded);
// when the disk has room again the next record goes through and sessions are admitted again.
TEST_F(AuthHandshake, RefusesNewSessionsWhileTheAuditLogIsUnwritable) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs";
  sshring::testing::TempDir dir;
  std::string mnt = dir.file("mnt");
  std::filesystem::create_directories(mnt);
  ASSERT_EQ(::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=128k"), 0) << std::strerror(errno);
  struct Unmount {
    std::string p;
    ~Unmount() { ::umount2(p.c_str(), MNT_DETACH); }
  } unmount{mnt};
  sshring::metrics::AuditLog audit(
      {.path = mnt + "/relay.audit.jsonl", .component = "relay", .fsync_each = true});
  auto make = [&](bool refuse) {
    auth::AuthOptions o;
    o.relay_ids = {"relay-a"};
    o.clock_ms = [this] { return clock; };
    o.log_denials = false;
    o.audit = &audit;
    o.refuse_when_audit_unwritable = refuse;
    factory = std::make_shared<auth::AuthHandshakeFactory>(cache, o);
  };
  make(true);
  auto admitted = [&] {
    auto s = open();
    auto st = feed(*s, hello(alice, "alice", "10.1.2.3", 22));
    bool ok = st.kind == Kind::kConnect;
    if (ok) s->hs->on_upstream_connected(*SockAddr::parse("127.0.0.1:50000"));
    end(*s);
    if (!ok) {
      EXPECT_EQ(deny_reason(st), code(protocol::Reason::kOverloaded));
    }
    return ok;
  };
  EXPECT_TRUE(admitted());
  {
    FILE* f = std::fopen((mnt + "/filler").c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::string chunk(4096, 'x');
    while (std::fwrite(chunk.data(), 1, chunk.size(), f) == chunk.size() && std::fflush(f) == 0) {
    }
    std::fclose(f);
  }
  // Sessions are admitted until a record fails (the file's last page may still have room).
  for (int i = 0; i < 100 && audit.writable(); ++i) EXPECT_TRUE(admitted());
  ASSERT_FALSE(audit.writable());
  EXPECT_FALSE(admitted());
  make(false);  // --audit-failure continue
  EXPECT_TRUE(admitted());
  make(true);
  std::filesystem::remove(mnt + "/filler");
  EXPECT_FALSE(admitted());  // still marked unwritable; its deny record is the write that succeeds
  EXPECT_TRUE(audit.writable());
  EXPECT_TRUE(admitted());
  EXPECT_TRUE(audit.flush());
  EXPECT_TRUE(sshring::metrics::verify_chain({mnt + "/relay.audit.jsonl"}).ok());
}
