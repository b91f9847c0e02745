// Preamble codec, limits, transcript binding, signatures, keys and the replay cache.
#include "protocol/preamble.h"

#include <gtest/gtest.h>

#include <map>

#include <cstring>
#include <functional>
#include <set>
#include <thread>

#include "common/base64.h"
#include "common/error.h"

#include "client/client.h"
#include "protocol/keys.h"
#include "protocol/wire.h"
#include "relay/auth/replay_cache.h"
#include "relay/auth/session_limits.h"
#include "tests/support/process.h"

namespace auth = sshring::relay::auth;
namespace protocol = sshring::protocol;
namespace client = sshring::client;
using protocol::DecodeStatus;

namespace {

std::span<const uint8_t> bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

client::Signer key_signer(const protocol::Ed25519PrivateKey& k) {
  auto shared = std::make_shared<protocol::Ed25519PrivateKey>(
      protocol::Ed25519PrivateKey::from_openssh(k.to_openssh(), "t"));
  return client::Signer{k.public_key(), [shared](std::string_view d) { return shared->sign(d); }};
}

protocol::Hello sample(const protocol::Ed25519PrivateKey& k) {
  return client::make_hello(key_signer(k), "relay-1", "alice", "db1.example", 22, 1700000000000);
}

bool verify(const protocol::Hello& h) {
  protocol::Ed25519PublicKey pk;
  std::memcpy(pk.data(), h.public_key.data(), 32);
  return protocol::ed25519_verify(pk, protocol::transcript(h), h.signature);
}

}  // namespace

TEST(AuthWire, Base64RoundTripAndRejects) {
  for (std::string s : std::vector<std::string>{"", "f", "fo", "foo", "foob", "fooba", "foobar",
                                                std::string("\0\xff\x10", 3)}) {
    auto enc = sshring::common::base64_encode(s);
    auto dec = sshring::common::base64_decode(enc);
    ASSERT_TRUE(dec) << enc;
    EXPECT_EQ(*dec, s);
    EXPECT_EQ(*sshring::common::base64_decode(sshring::common::base64_encode(s, false)), s);
  }
  EXPECT_EQ(sshring::common::base64_encode("foobar"), "Zm9vYmFy");
  EXPECT_FALSE(sshring::common::base64_decode("Zm9v!"));
  EXPECT_FALSE(sshring::common::base64_decode("Zm=9v"));
  EXPECT_FALSE(sshring::common::base64_decode("Z"));
}

TEST(AuthWire, ReaderIsBounded) {
  std::string s(
      "\x00\x00\x00\x05"
      "abc",
      7);
  protocol::Reader r(s);
  EXPECT_TRUE(r.str32(10).empty());
  EXPECT_FALSE(r.ok());
  protocol::Reader r2(
      std::string_view("\x03"
                       "abcd",
                       5));
  EXPECT_EQ(r2.str8(3), "abc");
  EXPECT_FALSE(r2.done());
  protocol::Reader r3(
      std::string_view("\x04"
                       "abcd",
                       5));
  r3.str8(3);  // over the field limit
  EXPECT_FALSE(r3.ok());
}

TEST(AuthPreamble, HelloRoundTrip) {
  auto k = protocol::Ed25519PrivateKey::generate();
  protocol::Hello h = sample(k);
  std::string frame = protocol::encode_hello(h);
  ASSERT_LE(frame.size(), protocol::kHeaderSize + protocol::kMaxHelloPayload);
  auto d = protocol::decode_hello(bytes(frame));
  ASSERT_EQ(d.status, DecodeStatus::kOk) << d.error;
  EXPECT_EQ(d.consumed, frame.size());
  EXPECT_EQ(d.hello.relay_id, "relay-1");
  EXPECT_EQ(d.hello.principal, "alice");
  EXPECT_EQ(d.hello.target, "db1.example");
  EXPECT_EQ(d.hello.port, 22);
  EXPECT_EQ(d.hello.timestamp_ms, 1700000000000u);
  EXPECT_EQ(d.hello.nonce, h.nonce);
  EXPECT_EQ(d.hello.public_key, h.public_key);
  EXPECT_TRUE(verify(d.hello));
}

TEST(AuthPreamble, EveryPrefixNeedsMoreAndGluedBytesAreLeftAlone) {
  auto k = protocol::Ed25519PrivateKey::generate();
  std::string frame = protocol::encode_hello(sample(k));
  for (size_t n = 0; n < frame.size(); ++n)
    EXPECT_EQ(protocol::decode_hello(bytes(frame.substr(0, n))).status, DecodeStatus::kNeedMore) << n;
  std::string glued = frame + "SSH-2.0-OpenSSH_9.2\r\n";
  auto d = protocol::decode_hello(bytes(glued));
  ASSERT_EQ(d.status, DecodeStatus::kOk);
  EXPECT_EQ(glued.substr(d.consumed), "SSH-2.0-OpenSSH_9.2\r\n");
}

TEST(AuthPreamble, MalformedInputsAreRejectedEarly) {
  auto k = protocol::Ed25519PrivateKey::generate();
  std::string frame = protocol::encode_hello(sample(k));
  struct Case {
    const char* name;
    std::string input;
    DecodeStatus want;
  };
  std::string wrong_version = frame;
  wrong_version[4] = 9;
  std::string wrong_type = frame;
  wrong_type[5] = 2;
  std::string oversized = frame;
  oversized[6] = 0x7f;  // payload length 32k+
  std::string longer = frame;
  longer[7] = static_cast<char>(static_cast<uint8_t>(longer[7]) + 1);
  longer += "x";  // a trailing byte inside the declared payload
  std::string empty_payload = frame.substr(0, 6) + std::string("\0\0", 2);
  std::string bad_field = frame;
  bad_field[protocol::kHeaderSize] = 0x7f;  // relay id length over its limit
  std::vector<Case> cases = {
      {"ssh banner", "SSH-2.0-OpenSSH_9.2\r\n", DecodeStatus::kMalformed},
      {"http", "GET / HTTP/1.1\r\n", DecodeStatus::kMalformed},
      {"one wrong byte", "X", DecodeStatus::kMalformed},
      {"zeros", std::string(64, '\0'), DecodeStatus::kMalformed},
      {"version", wrong_version, DecodeStatus::kUnsupportedVersion},
      {"type", wrong_type, DecodeStatus::kMalformed},
      {"oversized", oversized, DecodeStatus::kMalformed},
      {"trailing", longer, DecodeStatus::kMalformed},
      {"empty", empty_payload, DecodeStatus::kMalformed},
      {"field over limit", bad_field, DecodeStatus::kMalformed},
  };
  for (const auto& c : cases) EXPECT_EQ(protocol::decode_hello(bytes(c.input)).status, c.want) << c.name;
}

TEST(AuthPreamble, FieldLimitsOnEncode) {
  auto k = protocol::Ed25519PrivateKey::generate();
  auto h = sample(k);
  h.principal = std::string(protocol::kMaxPrincipal + 1, 'a');
  EXPECT_THROW(protocol::encode_hello(h), std::invalid_argument);
  h = sample(k);
  h.target = "bad host";
  EXPECT_THROW(protocol::encode_hello(h), std::invalid_argument);
  h = sample(k);
  h.port = 0;
  EXPECT_THROW(protocol::encode_hello(h), std::invalid_argument);
  h = sample(k);
  h.relay_id = std::string(protocol::kMaxRelayId, 'r');
  h.principal = std::string(protocol::kMaxPrincipal, 'p');
  h.target = std::string(protocol::kMaxTarget, 't');
  auto sig = k.sign(protocol::transcript(h));
  h.signature.assign(reinterpret_cast<const char*>(sig.data()), 64);
  std::string max_frame = protocol::encode_hello(h);
  EXPECT_LE(max_frame.size(), protocol::kHeaderSize + protocol::kMaxHelloPayload);
  EXPECT_EQ(protocol::decode_hello(bytes(max_frame)).status, DecodeStatus::kOk);
}

TEST(AuthPreamble, TranscriptBindsEveryField) {
  auto k = protocol::Ed25519PrivateKey::generate();
  auto h = sample(k);
  ASSERT_TRUE(verify(h));
  std::vector<std::function<void(protocol::Hello&)>> edits = {
      [](protocol::Hello& x) { x.relay_id = "relay-2"; },
      [](protocol::Hello& x) { x.principal = "bob"; },
      [](protocol::Hello& x) { x.target = "db2.example"; },
      [](protocol::Hello& x) { x.port = 2222; },
      [](protocol::Hello& x) { x.timestamp_ms += 1; },
      [](protocol::Hello& x) { x.nonce[3] ^= 1; },
      [](protocol::Hello& x) { x.signature[10] ^= 1; },
      // Moving bytes between adjacent fields must change the transcript too (length prefixes).
      [](protocol::Hello& x) {
        x.relay_id = "relay-1a";
        x.principal = "lice";
      },
  };
  for (size_t i = 0; i < edits.size(); ++i) {
    auto c = h;
    edits[i](c);
    EXPECT_FALSE(verify(c)) << "edit " << i;
  }
  auto other = protocol::Ed25519PrivateKey::generate();
  auto c = h;
  c.public_key.assign(reinterpret_cast<const char*>(other.public_key().data()), 32);
  EXPECT_FALSE(verify(c));
}

TEST(AuthPreamble, ReplyFrames) {
  std::string ok = protocol::encode_ok(0x1122334455667788ull);
  auto d = protocol::decode_reply(bytes(ok + "SSH-2.0-x\r\n"));
  ASSERT_EQ(d.status, DecodeStatus::kOk);
  EXPECT_EQ(d.reply.type, protocol::FrameType::kOk);
  EXPECT_EQ(d.reply.session_id, 0x1122334455667788ull);
  EXPECT_EQ(d.consumed, ok.size());
  std::string deny = protocol::encode_deny(protocol::Reason::kBadSignature, std::string(500, 'm'));
  auto dd = protocol::decode_reply(bytes(deny));
  ASSERT_EQ(dd.status, DecodeStatus::kOk);
  EXPECT_EQ(dd.reply.reason, static_cast<uint16_t>(protocol::Reason::kBadSignature));
  EXPECT_EQ(dd.reply.message.size(), protocol::kMaxDenyMessage);
  EXPECT_EQ(
      protocol::decode_reply(bytes(protocol::encode_hello(sample(protocol::Ed25519PrivateKey::generate()))))
          .status,
      DecodeStatus::kMalformed);
}

TEST(AuthPreamble, ReasonNamesAndExitCodesAreDistinct) {
  std::set<std::string> names;
  std::set<int> codes;
  for (uint16_t r = 1; r <= protocol::kMaxReason; ++r) {
    names.insert(protocol::reason_name(static_cast<protocol::Reason>(r)));
    codes.insert(protocol::exit_code_for(static_cast<protocol::Reason>(r)));
  }
  EXPECT_EQ(names.size(), protocol::kMaxReason);
  EXPECT_EQ(codes.size(), protocol::kMaxReason);
  EXPECT_EQ(names.count("unknown"), 0u);
}

TEST(AuthKeys, OpenSshKeyFileFromSshKeygen) {
  sshring::testing::TempDir dir;
  ASSERT_EQ(sshring::testing::run(
                {"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "t@x", "-f", dir.file("k")}),
            0);
  auto key = protocol::Ed25519PrivateKey::load_file(dir.file("k"));
  auto pub = protocol::parse_openssh_public_key(sshring::testing::read_file(dir.file("k.pub")));
  ASSERT_TRUE(pub);
  EXPECT_EQ(key.public_key(), *pub);
  std::string fp_out;
  ASSERT_EQ(sshring::testing::run({"ssh-keygen", "-l", "-f", dir.file("k.pub")}, &fp_out), 0);
  EXPECT_NE(fp_out.find(protocol::fingerprint(*pub)), std::string::npos) << fp_out;
  auto sig = key.sign("hello");
  EXPECT_TRUE(protocol::ed25519_verify(*pub, "hello",
                                       std::string_view(reinterpret_cast<const char*>(sig.data()), 64)));
  EXPECT_FALSE(protocol::ed25519_verify(*pub, "hellO",
                                        std::string_view(reinterpret_cast<const char*>(sig.data()), 64)));

  // Our writer produces files ssh-keygen accepts.
  auto gen = protocol::Ed25519PrivateKey::generate();
  sshring::testing::write_file(dir.file("g"), gen.to_openssh("gen"), 0600);
  std::string derived;
  ASSERT_EQ(sshring::testing::run({"ssh-keygen", "-y", "-f", dir.file("g")}, &derived), 0);
  EXPECT_EQ(protocol::parse_openssh_public_key(derived), gen.public_key());
}

TEST(AuthKeys, RejectsEncryptedAndOtherTypes) {
  sshring::testing::TempDir dir;
  ASSERT_EQ(
      sshring::testing::run({"ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", dir.file("enc")}), 0);
  try {
    protocol::Ed25519PrivateKey::load_file(dir.file("enc"));
    FAIL() << "encrypted key accepted";
  } catch (const sshring::common::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("encrypted"), std::string::npos) << e.what();
  }
  ASSERT_EQ(sshring::testing::run({"ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", dir.file("ec")}), 0);
  EXPECT_THROW(protocol::Ed25519PrivateKey::load_file(dir.file("ec")), sshring::common::UsageError);
  EXPECT_FALSE(protocol::parse_openssh_public_key(sshring::testing::read_file(dir.file("ec.pub"))));
  EXPECT_THROW(protocol::Ed25519PrivateKey::from_openssh("garbage", "x"), sshring::common::UsageError);
  EXPECT_THROW(protocol::Ed25519PrivateKey::load_file(dir.file("missing")), sshring::common::UsageError);
}

TEST(AuthReplayCache, RemembersForTheSkewWindowOnly) {
  auth::ReplayCache c(30000, 1000);
  auth::ReplayCache::Nonce n{};
  n[0] = 1;
  uint64_t t = 1'000'000;
  EXPECT_EQ(c.check_and_insert(n, t, t), auth::ReplayCache::Result::kFresh);
  EXPECT_EQ(c.check_and_insert(n, t, t + 1000), auth::ReplayCache::Result::kReplayed);
  EXPECT_EQ(c.check_and_insert(n, t, t + 30000), auth::ReplayCache::Result::kReplayed);
  // After timestamp + skew the relay's clock check rejects the preamble anyway; the entry goes.
  auth::ReplayCache::Nonce other{};
  other[0] = 2;
  EXPECT_EQ(c.check_and_insert(other, t + 30001, t + 30001), auth::ReplayCache::Result::kFresh);
  EXPECT_EQ(c.check_and_insert(n, t + 30001, t + 30001), auth::ReplayCache::Result::kFresh);
}

// A relay started without its predecessor's cache: every timestamp up to its start counts as
// forgotten in every shard, so none of them can be used (again), and later ones can.
TEST(AuthReplayCache, ForgetThroughRefusesEveryEarlierTimestampInEveryShard) {
  auth::ReplayCache c(30000, 1000);
  const uint64_t start = 2'000'000;
  c.forget_through(start);
  size_t too_old = 0, fresh = 0;
  for (int i = 0; i < 200; ++i) {  // random nonces: all 16 shards
    auth::ReplayCache::Nonce n{};
    protocol::random_bytes(n.data(), n.size());
    too_old += c.check_and_insert(n, start - 1 - i % 2, start + 10) == auth::ReplayCache::Result::kTooOld;
    n[0] ^= 1;
    fresh += c.check_and_insert(n, start + 1, start + 10) == auth::ReplayCache::Result::kFresh;
  }
  EXPECT_EQ(too_old, 200u);
  EXPECT_EQ(fresh, 200u);
  auth::ReplayCache::Nonce at{};
  at[0] = 7;
  EXPECT_EQ(c.check_and_insert(at, start, start + 10), auth::ReplayCache::Result::kTooOld) << "at the start";
  c.forget_through(start - 5000);  // never moves back
  EXPECT_EQ(c.check_and_insert(at, start - 1, start + 10), auth::ReplayCache::Result::kTooOld);
}

TEST(AuthReplayCache, BoundedMemoryFailsClosed) {
  auth::ReplayCache c(30000, 160);  // 16 shards x 11
  uint64_t now = 5'000'000;
  size_t fresh = 0, full = 0;
  for (int i = 0; i < 1000; ++i) {
    auth::ReplayCache::Nonce n{};
    protocol::random_bytes(n.data(), n.size());
    auto r = c.check_and_insert(n, now, now);
    fresh += r == auth::ReplayCache::Result::kFresh;
    full += r == auth::ReplayCache::Result::kFull;
  }
  EXPECT_LE(c.size(), 16u * 11u);
  EXPECT_EQ(fresh, c.size());
  EXPECT_GT(full, 0u);
  // Once the window has passed, space comes back.
  auth::ReplayCache::Nonce n{};
  protocol::random_bytes(n.data(), n.size());
  EXPECT_EQ(c.check_and_insert(n, now + 40000, now + 40000), auth::ReplayCache::Result::kFresh);
}

// One principal's flood cannot deny another's fresh nonces: the shard is picked by a keyed hash of
// the whole nonce (the flood below keeps the two bytes that used to pick it constant, putting every
// nonce in one shard, which it filled), and each principal holds at most a fraction of any shard.
TEST(AuthReplayCache, OnePrincipalsFloodCannotFillAShardForAnother) {
  const uint64_t wall = 1'800'000'000'000ull, mono = 1'000'000;
  auto flood = [&](auth::ReplayCache& c, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      auth::ReplayCache::Nonce x{};
      protocol::random_bytes(x.data(), x.size());
      x[0] = 0;
      x[15] = 0;
      (void)c.check_and_insert("mallory", x, wall, {wall, mono});
    }
  };
  auto refused_of_alice = [&](auth::ReplayCache& c, size_t n) {
    size_t refused = 0;
    for (size_t i = 0; i < n; ++i) {
      auth::ReplayCache::Nonce x{};
      protocol::random_bytes(x.data(), x.size());
      refused += c.check_and_insert("alice", x, wall + 1000, {wall + 1000, mono + 1000}) !=
                 auth::ReplayCache::Result::kFresh;
    }
    return refused;
  };
  {
    auth::ReplayCache c(30000, size_t{1} << 20);  // the relay's defaults: a shard is one principal's share
    flood(c, 70000);
    EXPECT_EQ(c.live_of("mallory"), (size_t{1} << 20) / 16 + 1);
    EXPECT_EQ(refused_of_alice(c, 16000), 0u);  // was about 1 in 16 (kFull)
  }
  {
    // A principal allowed the whole cache still gets at most half of each shard.
    auth::ReplayCache c(30000, 1600, 1600);  // 16 shards x 101
    flood(c, 5000);
    EXPECT_LE(c.live_of("mallory"), 16u * 50u);
    EXPECT_EQ(refused_of_alice(c, 300), 0u);  // was about 1 in 16 (kFull) too
  }
}

TEST(AuthReplayCache, ConcurrentInsertsOfOneNonceAdmitExactlyOne) {
  auth::ReplayCache c(30000, 10000);
  auth::ReplayCache::Nonce n{};
  n[5] = 9;
  std::atomic<int> fresh{0};
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i)
    ts.emplace_back([&] {
      for (int j = 0; j < 100; ++j)
        fresh += c.check_and_insert(n, 1000, 1000) == auth::ReplayCache::Result::kFresh;
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(fresh.load(), 1);
}

TEST(AuthSessionLimits, PerSourceAndPerPrincipal) {
  auth::SessionLimits l;
  auto a = *sshring::common::SockAddr::parse("10.0.0.1:1000");
  auto a2 = *sshring::common::SockAddr::parse("10.0.0.1:2000");
  auto mapped = *sshring::common::SockAddr::parse("[::ffff:10.0.0.1]:3000");
  auto b = *sshring::common::SockAddr::parse("10.0.0.2:1000");
  EXPECT_TRUE(l.enter_handshake(a, 2));
  EXPECT_TRUE(l.enter_handshake(a2, 2));
  EXPECT_FALSE(l.enter_handshake(mapped, 2));  // same IP, other port and family form
  EXPECT_TRUE(l.enter_handshake(b, 2));
  l.leave_handshake(a);
  EXPECT_EQ(l.handshakes_from(a2), 1u);
  EXPECT_TRUE(l.enter_handshake(mapped, 2));
  EXPECT_TRUE(l.acquire_session("alice", 1));
  EXPECT_FALSE(l.acquire_session("alice", 1));
  EXPECT_FALSE(l.acquire_session("bob", 0));
  l.release_session("alice");
  EXPECT_EQ(l.sessions_of("alice"), 0u);
  EXPECT_TRUE(l.acquire_session("alice", 1));
}

// With a ledger, a principal's limit counts what the other relays report, and every change of the
// local count is published (release down to 0 included, so the fleet sees the last session end).
TEST(AuthSessionLimits, FleetLedgerCountsOtherRelaysAndHearsEveryChange) {
  struct Ledger : sshring::policy::SessionLedger {
    std::map<std::string, uint32_t, std::less<>> remote, published;
    void publish(std::string_view p, uint32_t n) override { published[std::string(p)] = n; }
    uint32_t others(std::string_view p) const override {
      auto it = remote.find(p);
      return it == remote.end() ? 0 : it->second;
    }
  };
  auto ledger = std::make_shared<Ledger>();
  auth::SessionLimits l;
  l.set_ledger(ledger);
  ledger->remote["alice"] = 2;
  EXPECT_TRUE(l.acquire_session("alice", 3));
  EXPECT_EQ(ledger->published["alice"], 1u);
  EXPECT_FALSE(l.acquire_session("alice", 3));  // 1 here + 2 elsewhere
  EXPECT_EQ(l.sessions_of("alice"), 1u);
  ledger->remote["alice"] = UINT32_MAX;  // a huge remote count does not wrap around
  EXPECT_FALSE(l.acquire_session("alice", UINT32_MAX));
  ledger->remote["alice"] = 0;  // the other relay's lease expired
  EXPECT_TRUE(l.acquire_session("alice", 3));
  EXPECT_EQ(ledger->published["alice"], 2u);
  l.release_session("alice");
  l.release_session("alice");
  EXPECT_EQ(ledger->published["alice"], 0u);
  EXPECT_FALSE(l.acquire_session("bob", 0));
  EXPECT_FALSE(ledger->published.contains("bob"));  // a refusal publishes nothing
}

TEST(AuthClient, SplitHostPort) {
  EXPECT_EQ(client::split_host_port("relay.example:2222", "--relay"),
            std::make_pair(std::string("relay.example"), uint16_t{2222}));
  EXPECT_EQ(client::split_host_port("[::1]:22", "--relay").first, "::1");
  EXPECT_THROW(client::split_host_port("relay", "--relay"), sshring::common::UsageError);
  EXPECT_THROW(client::split_host_port("relay:0", "--relay"), sshring::common::UsageError);
  EXPECT_THROW(client::split_host_port("::1:22", "--relay"), sshring::common::UsageError);
}

TEST(AuthClient, DenyTextIsMadePrintable) {
  client::DeniedError e(9,
                        "a\x1b[31mb\nc\x9b"
                        "d\x7f");
  EXPECT_STREQ(e.what(), "denied by relay: target_not_allowed: a?[31mb?c?d?");
  EXPECT_EQ(e.detail(), "a?[31mb?c?d?");
  EXPECT_EQ(client::printable_text("plain text 1-2"), "plain text 1-2");
}
