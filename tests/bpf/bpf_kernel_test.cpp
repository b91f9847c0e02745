// Kernel tests of the TC classifier through BPF_PROG_TEST_RUN: crafted frames in, return code and
// map contents out. Table-driven: each case is a packet and what the kernel must decide.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <optional>
#include <string>
#include <vector>

#include "bpf/kernel_policy.h"
#include "bpf/loader.h"
#include "common/unique_fd.h"
#include "tests/bpf/packet.h"

namespace sshring::bpf {
namespace {

using testing::build_packet;
using testing::kAck;
using testing::kFin;
using testing::kRst;
using testing::kSyn;
using testing::PacketSpec;
using testing::run_prog;

constexpr int kPass = -1;  // TC_ACT_UNSPEC
constexpr int kShot = 2;   // TC_ACT_SHOT

int64_t now_unix() {
  return static_cast<int64_t>(::time(nullptr));
}

int64_t boot_ns() {
  timespec ts{};
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

policy::Cidr cidr(const char* s) {
  auto c = policy::Cidr::parse(s);
  if (!c) throw std::invalid_argument(s);
  return *c;
}

sshring_flow_key flow_key(const PacketSpec& s) {
  sshring_flow_key k{};
  bool v6 = s.src.find(':') != std::string::npos;
  k.family = v6 ? 6 : 4;
  inet_pton(v6 ? AF_INET6 : AF_INET, s.src.c_str(), k.client);
  inet_pton(v6 ? AF_INET6 : AF_INET, s.dst.c_str(), k.server);
  k.client_port = s.sport;
  k.server_port = s.dport;
  return k;
}

class KernelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to load BPF programs";
    try {
      obj_.emplace(BpfObject::Options{.pin_dir = "", .attach_tracepoint = false});
    } catch (const std::exception& e) {
      FAIL() << "cannot load the BPF object (verifier or loader error): " << e.what();
    }
    sync_.emplace(*obj_);
    now_ = now_unix();
    KernelPolicy kp;
    kp.relays = {cidr("10.77.9.0/24"), cidr("fd77:9::/64")};
    kp.protected_dsts = {{cidr("10.77.0.0/16"), {{22, 22}, {2222, 2222}}}, {cidr("fd77::/16"), {{22, 22}}}};
    kp.rules = {
        {cidr("10.77.1.0/24"), cidr("10.77.0.10/32"), 22, 22, now_ + 3600, "g-live"},
        {cidr("10.77.2.0/24"), cidr("10.77.0.0/16"), 22, 2222, now_ - 10, "g-old"},
        {cidr("10.77.2.5/32"), cidr("10.77.0.10/32"), 22, 22, now_ + 600, "g-narrow"},
        {cidr("10.77.3.0/24"), cidr("10.77.0.10/32"), 22, 22, now_ + 60, "g-short"},
        {cidr("10.77.3.0/24"), cidr("10.77.0.10/32"), 22, 22, now_ + 7200, "g-long"},
        {cidr("fd77:1::/64"), cidr("fd77::10/128"), 22, 22, now_ + 3600, "g-six"},
        {cidr("::/0"), cidr("fd77::10/128"), 22, 22, now_ - 5, "g-six-old"},
    };
    auto r = sync_->apply(kp);
    ASSERT_EQ(r.truncated, 0u);
  }

  std::optional<sshring_flow> flow(const PacketSpec& s) {
    auto k = flow_key(s);
    sshring_flow f{};
    if (bpf_map_lookup_elem(obj_->map_fd("flows"), &k, &f) != 0) return std::nullopt;
    return f;
  }

  uint64_t stat(sshring_stat i) { return obj_->stat_counters()[i]; }

  std::optional<BpfObject> obj_;
  std::optional<MapSync> sync_;
  int64_t now_ = 0;
};

struct TagCase {
  const char* name;
  PacketSpec pkt;
  int tag;  // 0: no flow entry expected
  const char* grant;
};

TEST_F(KernelTest, TagsEachSynByPolicy) {
  const TagCase cases[] = {
      {"relay_v4", {.src = "10.77.9.7"}, SSHRING_TAG_PROXIED, ""},
      {"live_grant", {.src = "10.77.1.1"}, SSHRING_TAG_APPROVED, "g-live"},
      {"live_grant_other_dst", {.src = "10.77.1.1", .dst = "10.77.0.11"}, SSHRING_TAG_UNAPPROVED, ""},
      {"expired_grant", {.src = "10.77.2.9"}, SSHRING_TAG_EXPIRED, "g-old"},
      {"expired_grant_2222", {.src = "10.77.2.9", .dport = 2222}, SSHRING_TAG_EXPIRED, "g-old"},
      {"longer_prefix_live_wins", {.src = "10.77.2.5"}, SSHRING_TAG_APPROVED, "g-narrow"},
      {"longer_prefix_other_dst_falls_back",
       {.src = "10.77.2.5", .dst = "10.77.0.12"},
       SSHRING_TAG_EXPIRED,
       "g-old"},
      {"latest_expiry_reported", {.src = "10.77.3.3"}, SSHRING_TAG_APPROVED, "g-long"},
      {"no_grant", {.src = "192.0.2.1"}, SSHRING_TAG_UNAPPROVED, ""},
      {"relay_v6", {.src = "fd77:9::5", .dst = "fd77::10"}, SSHRING_TAG_PROXIED, ""},
      {"live_v6", {.src = "fd77:1::5", .dst = "fd77::10"}, SSHRING_TAG_APPROVED, "g-six"},
      {"expired_v6_any", {.src = "2001:db8::1", .dst = "fd77::10"}, SSHRING_TAG_EXPIRED, "g-six-old"},
      {"v6_any_does_not_cover_v4", {.src = "192.0.2.2"}, SSHRING_TAG_UNAPPROVED, ""},
      {"vlan_one", {.src = "10.77.1.2", .vlans = 1}, SSHRING_TAG_APPROVED, "g-live"},
      {"vlan_two", {.src = "10.77.1.3", .vlans = 2}, SSHRING_TAG_APPROVED, "g-live"},
      {"ip_options", {.src = "10.77.1.4", .ip_option_words = 10}, SSHRING_TAG_APPROVED, "g-live"},
      {"tcp_options", {.src = "10.77.1.5", .tcp_doff = 10}, SSHRING_TAG_APPROVED, "g-live"},
      {"v6_hop_dest_routing",
       {.src = "fd77:1::6", .dst = "fd77::10", .v6_ext = {0, 60, 43}},
       SSHRING_TAG_APPROVED,
       "g-six"},
      {"v6_ah", {.src = "fd77:1::7", .dst = "fd77::10", .v6_ext = {51}}, SSHRING_TAG_APPROVED, "g-six"},
      {"not_protected_port", {.src = "10.77.1.1", .dport = 80}, 0, ""},
      {"not_protected_host", {.src = "10.77.1.1", .dst = "10.99.0.1"}, 0, ""},
      {"syn_ack_does_not_open", {.src = "10.77.1.6", .flags = kSyn | kAck}, 0, ""},
      {"plain_ack_does_not_open", {.src = "10.77.1.7", .flags = kAck}, 0, ""},
      {"udp_ignored", {.src = "10.77.1.8", .ip_proto = 17}, 0, ""},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto pkt = build_packet(c.pkt);
    EXPECT_EQ(run_prog(obj_->ingress_fd(), pkt).retval, kPass);
    auto f = flow(c.pkt);
    if (c.tag == 0) {
      EXPECT_FALSE(f.has_value());
      continue;
    }
    ASSERT_TRUE(f.has_value());
    EXPECT_EQ(f->tag, c.tag);
    EXPECT_EQ(sync_->grant_name(f->grant), c.grant);
    EXPECT_EQ(f->packets[0], 1u);
    EXPECT_EQ(f->bytes[0], pkt.size());
  }
}

TEST_F(KernelTest, MalformedAndUnparsedPassUntouched) {
  struct Case {
    const char* name;
    PacketSpec pkt;
    sshring_stat counter;
  };
  const Case cases[] = {
      // The test-run path itself rejects an IPv4 ethertype with less than an IP header, so the
      // shortest cuts hide behind a VLAN tag (a real NIC hands such frames to tc as they are).
      {"vlan_header_cut", {.vlans = 1, .truncate_to = 16}, SSHRING_STAT_TRUNCATED},
      {"ipv4_cut", {.vlans = 1, .truncate_to = 18 + 12}, SSHRING_STAT_TRUNCATED},
      {"ipv4_options_cut", {.ip_option_words = 10, .truncate_to = 14 + 30}, SSHRING_STAT_TRUNCATED},
      {"tcp_cut", {.truncate_to = 14 + 20 + 10}, SSHRING_STAT_TRUNCATED},
      {"tcp_bad_doff", {.tcp_doff = 2}, SSHRING_STAT_TRUNCATED},
      {"vlan_cut", {.vlans = 2, .truncate_to = 16}, SSHRING_STAT_TRUNCATED},
      {"ipv6_cut",
       {.src = "fd77:1::9", .dst = "fd77::10", .vlans = 1, .truncate_to = 18 + 30},
       SSHRING_STAT_TRUNCATED},
      {"ipv6_ext_cut",
       {.src = "fd77:1::9", .dst = "fd77::10", .v6_ext = {0}, .truncate_to = 14 + 40 + 4},
       SSHRING_STAT_TRUNCATED},
      {"ipv4_first_fragment", {.src = "10.77.1.20", .frag_off = 0x2000}, SSHRING_STAT_FRAGMENTS},
      {"ipv4_later_fragment", {.src = "10.77.1.21", .frag_off = 0x0010}, SSHRING_STAT_FRAGMENTS},
      {"ipv6_fragment", {.src = "fd77:1::a", .dst = "fd77::10", .v6_ext = {44}}, SSHRING_STAT_FRAGMENTS},
      {"ipv6_esp", {.src = "fd77:1::b", .dst = "fd77::10", .v6_ext = {50}}, SSHRING_STAT_V6_UNPARSED},
      {"ipv6_too_many_ext",
       {.src = "fd77:1::c", .dst = "fd77::10", .v6_ext = {0, 60, 43, 60, 60}},
       SSHRING_STAT_V6_UNPARSED},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    uint64_t before = stat(c.counter);
    auto pkt = build_packet(c.pkt);
    for (int prog : {obj_->ingress_fd(), obj_->egress_fd()}) {
      try {
        EXPECT_EQ(run_prog(prog, pkt).retval, kPass);
      } catch (const std::exception& e) {
        ADD_FAILURE() << e.what() << " (" << pkt.size() << " bytes)";
      }
    }
    EXPECT_EQ(stat(c.counter), before + 2);
    EXPECT_FALSE(flow(c.pkt).has_value());
  }
}

TEST_F(KernelTest, EnforceDropsOnlyUnapprovedAndExpiredSyns) {
  obj_->set_enforce(true);
  const TagCase cases[] = {
      {"proxied_passes", {.src = "10.77.9.8", .sport = 41000}, SSHRING_TAG_PROXIED, ""},
      {"approved_passes", {.src = "10.77.1.9", .sport = 41001}, SSHRING_TAG_APPROVED, "g-live"},
      {"expired_dropped", {.src = "10.77.2.10", .sport = 41002}, 0, ""},
      {"unapproved_dropped", {.src = "198.51.100.1", .sport = 41003}, 0, ""},
      {"unapproved_v6_dropped", {.src = "2001:db8::2", .dst = "fd77::11", .sport = 41004}, 0, ""},
  };
  auto events = ring_buffer__new(
      obj_->events_fd(), [](void*, void*, size_t) { return 0; }, nullptr, nullptr);
  ASSERT_NE(events, nullptr);
  ring_buffer__consume(events);  // drain
  ring_buffer__free(events);
  uint64_t dropped_before = stat(SSHRING_STAT_DROPPED);
  int drops = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    int rc = run_prog(obj_->ingress_fd(), build_packet(c.pkt)).retval;
    EXPECT_EQ(rc, c.tag ? kPass : kShot);
    drops += c.tag ? 0 : 1;
    auto f = flow(c.pkt);
    EXPECT_EQ(f.has_value(), c.tag != 0);
    if (f) {
      EXPECT_EQ(f->tag, c.tag);
    }
  }
  EXPECT_EQ(stat(SSHRING_STAT_DROPPED), dropped_before + drops);
  // A retransmitted SYN of a refused connection is dropped again but reported and counted once.
  std::vector<sshring_event> got;
  events = ring_buffer__new(
      obj_->events_fd(),
      [](void* ctx, void* data, size_t size) {
        if (size >= sizeof(sshring_event))
          static_cast<std::vector<sshring_event>*>(ctx)->push_back(*static_cast<sshring_event*>(data));
        return 0;
      },
      &got, nullptr);
  ASSERT_NE(events, nullptr);
  ring_buffer__consume(events);
  got.clear();
  auto flows_before = obj_->tag_counters()[SSHRING_TAG_UNAPPROVED].flows;
  auto syn = build_packet({.src = "198.51.100.9", .sport = 41010});
  for (int i = 0; i < 3; i++) EXPECT_EQ(run_prog(obj_->ingress_fd(), syn).retval, kShot);
  ring_buffer__consume(events);
  ring_buffer__free(events);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].type, SSHRING_EV_DENY);
  EXPECT_EQ(obj_->tag_counters()[SSHRING_TAG_UNAPPROVED].flows, flows_before + 1);
  // The flag flips without a reload.
  obj_->set_enforce(false);
  EXPECT_EQ(run_prog(obj_->ingress_fd(), build_packet({.src = "198.51.100.1", .sport = 41005})).retval,
            kPass);
}

TEST_F(KernelTest, ExpiryIsDecidedInKernelTime) {
  // Pin kernel "now" around the expiry of a fresh grant: one second before it is live, one second
  // after it is expired, with no map update in between.
  const int64_t expiry = now_ + 100;
  KernelPolicy kp;
  kp.protected_dsts = {{cidr("10.77.0.0/16"), {{22, 22}}}};
  kp.rules = {{cidr("10.77.5.0/24"), cidr("10.77.0.0/16"), 22, 22, expiry, "g-edge"}};
  sync_->apply(kp);
  struct Case {
    int64_t offset_s;
    int tag;
  };
  const Case cases[] = {{-1, SSHRING_TAG_APPROVED},
                        {+1, SSHRING_TAG_EXPIRED},
                        {-30, SSHRING_TAG_APPROVED},
                        {+3600, SSHRING_TAG_EXPIRED}};
  uint16_t port = 42000;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.offset_s);
    obj_->set_clock_offset((expiry + c.offset_s) * 1000000000 - boot_ns());
    PacketSpec s{.src = "10.77.5.5", .sport = port++};
    EXPECT_EQ(run_prog(obj_->ingress_fd(), build_packet(s)).retval, kPass);
    auto f = flow(s);
    ASSERT_TRUE(f.has_value());
    EXPECT_EQ(f->tag, c.tag);
    EXPECT_EQ(sync_->grant_name(f->grant), "g-edge");
  }
}

TEST_F(KernelTest, CountsBothWaysAndReportsOpenAndClose) {
  std::vector<sshring_event> got;
  auto cb = [](void* ctx, void* data, size_t size) {
    if (size >= sizeof(sshring_event))
      static_cast<std::vector<sshring_event>*>(ctx)->push_back(*static_cast<sshring_event*>(data));
    return 0;
  };
  ring_buffer* rb = ring_buffer__new(obj_->events_fd(), cb, &got, nullptr);
  ASSERT_NE(rb, nullptr);
  ring_buffer__consume(rb);
  got.clear();

  PacketSpec c2s{.src = "10.77.1.50", .sport = 43000};
  PacketSpec s2c{.src = "10.77.0.10", .dst = "10.77.1.50", .sport = 22, .dport = 43000, .flags = kSyn | kAck};
  uint64_t bytes_c2s = 0, bytes_s2c = 0;
  auto in = [&](uint8_t flags, size_t payload) {
    c2s.flags = flags;
    c2s.payload = payload;
    auto p = build_packet(c2s);
    bytes_c2s += p.size();
    EXPECT_EQ(run_prog(obj_->ingress_fd(), p).retval, kPass);
  };
  auto out = [&](uint8_t flags, size_t payload) {
    s2c.flags = flags;
    s2c.payload = payload;
    auto p = build_packet(s2c);
    bytes_s2c += p.size();
    EXPECT_EQ(run_prog(obj_->egress_fd(), p).retval, kPass);
  };
  auto tags_before = obj_->tag_counters();
  in(kSyn, 0);
  in(kSyn, 0);  // retransmitted SYN: counted, no second open
  out(kSyn | kAck, 0);
  in(kAck, 0);
  in(kAck, 1000);
  out(kAck, 1400);
  out(kAck, 300);
  in(kFin | kAck, 0);
  auto f = flow(c2s);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->packets[0], 5u);
  EXPECT_EQ(f->packets[1], 3u);
  EXPECT_EQ(f->bytes[1], bytes_s2c);
  EXPECT_EQ(f->fin, SSHRING_FIN_C2S);
  out(kFin | kAck, 0);
  EXPECT_FALSE(flow(c2s).has_value()) << "FIN both ways closes the flow";

  ring_buffer__consume(rb);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].type, SSHRING_EV_OPEN);
  EXPECT_EQ(got[0].tag, SSHRING_TAG_APPROVED);
  EXPECT_EQ(got[1].type, SSHRING_EV_CLOSE);
  EXPECT_EQ(got[1].reason, SSHRING_CLOSE_FIN);
  EXPECT_EQ(got[1].packets[0], 5u);
  EXPECT_EQ(got[1].packets[1], 4u);  // SYN-ACK, 2 data, FIN
  EXPECT_EQ(got[1].bytes[0], bytes_c2s);
  EXPECT_EQ(got[1].bytes[1], bytes_s2c);
  EXPECT_EQ(got[1].key.client_port, 43000);
  EXPECT_EQ(got[1].key.server_port, 22);
  EXPECT_LE(got[1].first_ns, got[1].last_ns);

  auto tags_after = obj_->tag_counters();
  EXPECT_EQ(tags_after[SSHRING_TAG_APPROVED].flows - tags_before[SSHRING_TAG_APPROVED].flows, 1u);
  EXPECT_EQ(tags_after[SSHRING_TAG_APPROVED].packets - tags_before[SSHRING_TAG_APPROVED].packets, 9u);
  EXPECT_EQ(tags_after[SSHRING_TAG_APPROVED].bytes - tags_before[SSHRING_TAG_APPROVED].bytes,
            bytes_c2s + bytes_s2c);

  // RST from either side closes at once.
  PacketSpec r{.src = "10.77.9.9", .sport = 43001};
  run_prog(obj_->ingress_fd(), build_packet(r));
  ASSERT_TRUE(flow(r).has_value());
  got.clear();
  run_prog(
      obj_->egress_fd(),
      build_packet({.src = "10.77.0.10", .dst = "10.77.9.9", .sport = 22, .dport = 43001, .flags = kRst}));
  EXPECT_FALSE(flow(r).has_value());
  ring_buffer__consume(rb);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[1].type, SSHRING_EV_CLOSE);
  EXPECT_EQ(got[1].reason, SSHRING_CLOSE_RST);
  EXPECT_EQ(got[1].tag, SSHRING_TAG_PROXIED);
  ring_buffer__free(rb);
}

TEST_F(KernelTest, MapSyncConvergesOnReload) {
  // Revoking a grant and adding another: the trie holds exactly the new set.
  KernelPolicy kp;
  kp.protected_dsts = {{cidr("10.77.0.0/16"), {{22, 22}}}};
  kp.rules = {{cidr("10.77.7.0/24"), cidr("10.77.0.0/16"), 22, 22, now_ + 600, "g-new"}};
  auto r = sync_->apply(kp);
  EXPECT_GT(r.removed, 0u);
  auto again = sync_->apply(kp);
  EXPECT_EQ(again.added + again.removed + again.changed, 0u) << "second apply is a no-op";
  PacketSpec old_src{.src = "10.77.1.1", .sport = 44000};
  PacketSpec new_src{.src = "10.77.7.1", .sport = 44001};
  run_prog(obj_->ingress_fd(), build_packet(old_src));
  run_prog(obj_->ingress_fd(), build_packet(new_src));
  EXPECT_EQ(flow(old_src)->tag, SSHRING_TAG_UNAPPROVED);
  EXPECT_EQ(flow(new_src)->tag, SSHRING_TAG_APPROVED);
  EXPECT_EQ(sync_->grant_name(flow(new_src)->grant), "g-new");
}

// The tp_btf hook on inet_sock_set_state closes flows whose socket ends on this host without a FIN
// pair on the wire: a real loopback connection, aborted by the server side (SO_LINGER 0).
TEST(SockStateHook, LocalAbortClosesTheFlow) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to load BPF programs";
  std::optional<BpfObject> obj;
  try {
    obj.emplace(BpfObject::Options{.pin_dir = "", .attach_tracepoint = true});
  } catch (const std::exception& e) {
    FAIL() << "cannot load/attach the BPF object (verifier or loader error): " << e.what();
  }
  common::UniqueFd lis(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sa);
  ASSERT_EQ(::bind(lis.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  ASSERT_EQ(::listen(lis.get(), 1), 0);
  ASSERT_EQ(::getsockname(lis.get(), reinterpret_cast<sockaddr*>(&sa), &len), 0);
  common::UniqueFd cli(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(::connect(cli.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  sockaddr_in peer{};
  len = sizeof(peer);
  common::UniqueFd srv(::accept(lis.get(), reinterpret_cast<sockaddr*>(&peer), &len));
  ASSERT_TRUE(srv.valid());

  // The flow as the TC program would have recorded it at the SYN.
  sshring_flow_key key{};
  key.family = 4;
  key.client[0] = htonl(INADDR_LOOPBACK);
  key.server[0] = htonl(INADDR_LOOPBACK);
  key.client_port = ntohs(peer.sin_port);
  key.server_port = ntohs(sa.sin_port);
  sshring_flow f{};
  f.tag = SSHRING_TAG_UNAPPROVED;
  f.packets[0] = 3;
  f.bytes[0] = 200;
  ASSERT_EQ(bpf_map_update_elem(obj->map_fd("flows"), &key, &f, BPF_ANY), 0);

  std::vector<sshring_event> got;
  auto cb = [](void* ctx, void* data, size_t size) {
    if (size >= sizeof(sshring_event))
      static_cast<std::vector<sshring_event>*>(ctx)->push_back(*static_cast<sshring_event*>(data));
    return 0;
  };
  ring_buffer* rb = ring_buffer__new(obj->events_fd(), cb, &got, nullptr);
  ASSERT_NE(rb, nullptr);
  linger lg{1, 0};
  ASSERT_EQ(::setsockopt(srv.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
  srv.reset();  // RST: the server socket goes straight to TCP_CLOSE
  for (int i = 0; i < 50 && got.empty(); i++) ring_buffer__poll(rb, 20);
  ring_buffer__free(rb);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].type, SSHRING_EV_CLOSE);
  EXPECT_EQ(got[0].reason, SSHRING_CLOSE_LOCAL);
  EXPECT_EQ(got[0].bytes[0], 200u);
  EXPECT_EQ(got[0].key.client_port, key.client_port);
  sshring_flow after{};
  EXPECT_NE(bpf_map_lookup_elem(obj->map_fd("flows"), &key, &after), 0) << "entry removed";
}

}  // namespace
}  // namespace sshring::bpf
