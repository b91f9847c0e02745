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
#include "bpf/live_flows.h"
#include "bpf/loader.h"
#include "common/unique_fd.h"
#include "metrics/catalog.h"
#include "policy/parser.h"
#include "policy/snapshot.h"
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
    if (::access("/sys/kernel/btf/vmlinux", R_OK) != 0) GTEST_SKIP() << "kernel has no BTF";
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

// Enforce mode fails closed on ingress: what the classifier cannot read or has no entry for does not
// reach a protected address. Each path is counted (also in count mode, see the test above); egress
// and unprotected destinations pass.
TEST_F(KernelTest, EnforceDropsWhatItCannotClassify) {
  obj_->set_enforce(true);
  struct Case {
    const char* name;
    PacketSpec pkt;
    bool ingress;
    int rc;
    sshring_stat counter;  // SSHRING_STAT_NUM: none
  };
  const Case cases[] = {
      {"ipv4_first_fragment", {.src = "10.77.1.30", .frag_off = 0x2000}, true, kShot, SSHRING_STAT_FRAGMENTS},
      {"ipv4_later_fragment", {.src = "10.77.1.31", .frag_off = 0x0003}, true, kShot, SSHRING_STAT_FRAGMENTS},
      {"ipv4_fragment_from_granted_source",
       {.src = "10.77.1.32", .frag_off = 0x2000},
       true,
       kShot,
       SSHRING_STAT_FRAGMENTS},
      {"ipv4_fragment_other_port",
       {.src = "10.77.1.33", .dport = 443, .frag_off = 0x2000},
       true,
       kShot,
       SSHRING_STAT_FRAGMENTS},
      {"ipv4_fragment_unprotected_host",
       {.src = "10.77.1.34", .dst = "10.99.0.1", .frag_off = 0x2000},
       true,
       kPass,
       SSHRING_STAT_FRAGMENTS},
      {"ipv4_udp_fragment_ignored",
       {.src = "10.77.1.35", .frag_off = 0x2000, .ip_proto = 17},
       true,
       kPass,
       SSHRING_STAT_NUM},
      {"ipv6_fragment",
       {.src = "fd77:1::20", .dst = "fd77::10", .v6_ext = {44}},
       true,
       kShot,
       SSHRING_STAT_FRAGMENTS},
      {"ipv6_atomic_fragment",
       {.src = "fd77:1::21", .dst = "fd77::10", .v6_ext = {44}, .v6_frag_atomic = true},
       true,
       kShot,
       SSHRING_STAT_FRAGMENTS},
      {"ipv6_atomic_fragment_after_dest_opts",
       {.src = "fd77:1::22", .dst = "fd77::10", .v6_ext = {60, 44}, .v6_frag_atomic = true},
       true,
       kShot,
       SSHRING_STAT_FRAGMENTS},
      {"ipv6_udp_fragment_ignored",
       {.src = "fd77:1::23", .dst = "fd77::10", .v6_ext = {44}, .ip_proto = 17},
       true,
       kPass,
       SSHRING_STAT_NUM},
      {"ipv6_five_dest_opts",
       {.src = "fd77:1::24", .dst = "fd77::10", .v6_ext = {60, 60, 60, 60, 60}},
       true,
       kShot,
       SSHRING_STAT_V6_UNPARSED},
      {"ipv6_esp",
       {.src = "fd77:1::25", .dst = "fd77::10", .v6_ext = {50}},
       true,
       kShot,
       SSHRING_STAT_V6_UNPARSED},
      {"ipv6_unparsed_unprotected_host",
       {.src = "fd77:1::26", .dst = "fd99::1", .v6_ext = {60, 60, 60, 60, 60}},
       true,
       kPass,
       SSHRING_STAT_V6_UNPARSED},
      {"tcp_cut", {.src = "10.77.1.36", .truncate_to = 14 + 20 + 10}, true, kShot, SSHRING_STAT_TRUNCATED},
      {"bare_ack_no_flow", {.src = "10.77.1.37", .flags = kAck}, true, kShot, SSHRING_STAT_UNTRACKED},
      {"psh_data_no_flow",
       {.src = "10.77.9.37", .flags = kAck | testing::kPsh, .payload = 64},
       true,
       kShot,
       SSHRING_STAT_UNTRACKED},
      {"rst_no_flow", {.src = "10.77.1.38", .flags = kRst}, true, kShot, SSHRING_STAT_UNTRACKED},
      {"fin_no_flow", {.src = "10.77.1.39", .flags = kFin | kAck}, true, kShot, SSHRING_STAT_UNTRACKED},
      {"egress_untracked_passes",
       {.src = "10.77.0.10", .dst = "10.77.1.40", .sport = 22, .dport = 40000, .flags = kAck},
       false,
       kPass,
       SSHRING_STAT_UNTRACKED},
      {"egress_fragment_passes",
       {.src = "10.77.0.10", .dst = "10.77.1.41", .frag_off = 0x2000},
       false,
       kPass,
       SSHRING_STAT_FRAGMENTS},
      {"ack_to_unprotected_port",
       {.src = "10.77.1.42", .dport = 80, .flags = kAck},
       true,
       kPass,
       SSHRING_STAT_NUM},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto before = obj_->stat_counters();
    auto pkt = build_packet(c.pkt);
    EXPECT_EQ(run_prog(c.ingress ? obj_->ingress_fd() : obj_->egress_fd(), pkt).retval, c.rc);
    auto after = obj_->stat_counters();
    for (int i = 0; i < SSHRING_STAT_NUM; i++) {
      uint64_t want =
          before[i] + (i == c.counter ? 1 : 0) + (i == SSHRING_STAT_DROPPED_PACKETS && c.rc == kShot ? 1 : 0);
      EXPECT_EQ(after[i], want) << "stat " << i;
    }
    EXPECT_FALSE(flow(c.pkt).has_value());
  }
  // The same ACK passes once its flow was opened by an approved SYN.
  PacketSpec syn{.src = "10.77.1.43"};
  EXPECT_EQ(run_prog(obj_->ingress_fd(), build_packet(syn)).retval, kPass);
  PacketSpec ack = syn;
  ack.flags = kAck;
  ack.payload = 100;
  EXPECT_EQ(run_prog(obj_->ingress_fd(), build_packet(ack)).retval, kPass);
  EXPECT_EQ(flow(syn)->packets[0], 2u);
}

// A SYN on a key that already has an entry is classified again: an entry planted while a grant was
// live does not carry a connection after its revocation.
TEST_F(KernelTest, SynOnExistingKeyIsClassifiedAgain) {
  obj_->set_enforce(true);
  PacketSpec syn{.src = "10.77.1.44", .sport = 45000};
  ASSERT_EQ(run_prog(obj_->ingress_fd(), build_packet(syn)).retval, kPass);
  ASSERT_EQ(flow(syn)->tag, SSHRING_TAG_APPROVED);
  // Retransmit, same decision: the entry stays, counted.
  ASSERT_EQ(run_prog(obj_->ingress_fd(), build_packet(syn)).retval, kPass);
  EXPECT_EQ(flow(syn)->packets[0], 2u);
  // Revoke g-live (policy without it), then the same 4-tuple SYNs again.
  KernelPolicy kp;
  kp.protected_dsts = {{cidr("10.77.0.0/16"), {{22, 22}}}};
  sync_->apply(kp);
  uint64_t before = stat(SSHRING_STAT_RECLASSIFIED);
  EXPECT_EQ(run_prog(obj_->ingress_fd(), build_packet(syn)).retval, kShot);
  EXPECT_FALSE(flow(syn).has_value()) << "the planted entry is gone";
  EXPECT_EQ(stat(SSHRING_STAT_RECLASSIFIED), before + 1);
  PacketSpec ack = syn;
  ack.flags = kAck;
  EXPECT_EQ(run_prog(obj_->ingress_fd(), build_packet(ack)).retval, kShot);
  // Count mode: the new SYN opens a fresh entry with the new tag.
  obj_->set_enforce(false);
  PacketSpec syn2{.src = "10.77.1.45", .sport = 45001};
  kp.rules = {{cidr("10.77.1.0/24"), cidr("10.77.0.10/32"), 22, 22, now_ + 3600, "g-live"}};
  sync_->apply(kp);
  ASSERT_EQ(run_prog(obj_->ingress_fd(), build_packet(syn2)).retval, kPass);
  kp.rules.clear();
  sync_->apply(kp);
  ASSERT_EQ(run_prog(obj_->ingress_fd(), build_packet(syn2)).retval, kPass);
  ASSERT_TRUE(flow(syn2).has_value());
  EXPECT_EQ(flow(syn2)->tag, SSHRING_TAG_UNAPPROVED);
  EXPECT_EQ(flow(syn2)->packets[0], 1u) << "a new entry, not the old one";
}

// A live approved flow turns bypass_expired at its grant's expiry, on its next packet, in kernel time;
// enforce mode then drops its inbound packets (RSTs pass so the ends can learn) and lets the server's
// packets out. A flow the agent re-tagged is refused the same way.
TEST_F(KernelTest, LiveFlowExpiresInKernelTime) {
  const int64_t expiry = now_ + 100;
  KernelPolicy kp;
  kp.protected_dsts = {{cidr("10.77.0.0/16"), {{22, 22}}}};
  kp.rules = {{cidr("10.77.5.0/24"), cidr("10.77.0.0/16"), 22, 22, expiry, "g-edge"}};
  sync_->apply(kp);
  obj_->set_clock_offset((expiry - 2) * 1000000000 - boot_ns());
  PacketSpec syn{.src = "10.77.5.6", .sport = 46000};
  ASSERT_EQ(run_prog(obj_->ingress_fd(), build_packet(syn)).retval, kPass);
  ASSERT_EQ(flow(syn)->tag, SSHRING_TAG_APPROVED);
  EXPECT_EQ(flow(syn)->expires_unix, expiry);
  obj_->set_enforce(true);
  PacketSpec ack = syn;
  ack.flags = kAck;
  EXPECT_EQ(run_prog(obj_->ingress_fd(), build_packet(ack)).retval, kPass) << "still live";
  uint64_t expired_before = stat(SSHRING_STAT_EXPIRED_LIVE);
  obj_->set_clock_offset((expiry + 1) * 1000000000 - boot_ns());
  EXPECT_EQ(run_prog(obj_->ingress_fd(), build_packet(ack)).retval, kShot);
  EXPECT_EQ(flow(syn)->tag, SSHRING_TAG_EXPIRED);
  EXPECT_EQ(stat(SSHRING_STAT_EXPIRED_LIVE), expired_before + 1);
  EXPECT_EQ(run_prog(obj_->ingress_fd(), build_packet(ack)).retval, kShot);
  EXPECT_EQ(stat(SSHRING_STAT_EXPIRED_LIVE), expired_before + 1) << "re-tagged once";
  PacketSpec out{.src = "10.77.0.10", .dst = "10.77.5.6", .sport = 22, .dport = 46000, .flags = kAck};
  EXPECT_EQ(run_prog(obj_->egress_fd(), build_packet(out)).retval, kPass);
  // Count mode passes it, still tagged expired.
  obj_->set_enforce(false);
  EXPECT_EQ(run_prog(obj_->ingress_fd(), build_packet(ack)).retval, kPass);
  obj_->set_enforce(true);
  ack.flags = kRst;
  EXPECT_EQ(run_prog(obj_->ingress_fd(), build_packet(ack)).retval, kPass);
  ASSERT_TRUE(flow(syn).has_value()) << "an inbound RST only marks it (the socket may ignore it)";
  EXPECT_EQ(flow(syn)->fin, SSHRING_RST_C2S);

  // A proxied flow the agent re-tagged unapproved (relay removed from the policy).
  PacketSpec relay{.src = "10.77.9.30", .sport = 46001};
  obj_->set_enforce(false);
  ASSERT_EQ(run_prog(obj_->ingress_fd(), build_packet({.src = "10.77.9.30", .dport = 22})).retval, kPass);
  auto k = flow_key(relay);
  sshring_flow f{};
  f.tag = SSHRING_TAG_UNAPPROVED;
  ASSERT_EQ(bpf_map_update_elem(obj_->map_fd("flows"), &k, &f, BPF_ANY), 0);
  obj_->set_enforce(true);
  relay.flags = kAck;
  EXPECT_EQ(run_prog(obj_->ingress_fd(), build_packet(relay)).retval, kShot);
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
  ASSERT_TRUE(flow(c2s).has_value()) << "FIN both ways: closing, the last ACK must still pass";
  EXPECT_EQ(flow(c2s)->fin, SSHRING_FIN_BOTH);
  obj_->set_enforce(true);
  in(kAck, 0);  // the last ACK
  obj_->set_enforce(false);
  ring_buffer__consume(rb);
  ASSERT_EQ(got.size(), 1u) << "no close before the socket's TCP_CLOSE or a new SYN";
  // A new connection on the key after a FIN pair: the old one is reported closed by FIN.
  in(kSyn, 0);
  const uint64_t syn_bytes = build_packet(c2s).size();
  bytes_c2s -= syn_bytes;

  ring_buffer__consume(rb);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].type, SSHRING_EV_OPEN);
  EXPECT_EQ(got[0].tag, SSHRING_TAG_APPROVED);
  EXPECT_EQ(got[1].type, SSHRING_EV_CLOSE);
  EXPECT_EQ(got[1].reason, SSHRING_CLOSE_FIN);
  EXPECT_EQ(got[1].packets[0], 6u);  // and the last ACK
  EXPECT_EQ(got[1].packets[1], 4u);  // SYN-ACK, 2 data, FIN
  EXPECT_EQ(got[2].type, SSHRING_EV_OPEN);
  EXPECT_EQ(got[1].bytes[0], bytes_c2s);
  EXPECT_EQ(got[1].bytes[1], bytes_s2c);
  EXPECT_EQ(got[1].key.client_port, 43000);
  EXPECT_EQ(got[1].key.server_port, 22);
  EXPECT_LE(got[1].first_ns, got[1].last_ns);

  auto tags_after = obj_->tag_counters();
  EXPECT_EQ(tags_after[SSHRING_TAG_APPROVED].flows - tags_before[SSHRING_TAG_APPROVED].flows, 2u);
  EXPECT_EQ(tags_after[SSHRING_TAG_APPROVED].packets - tags_before[SSHRING_TAG_APPROVED].packets, 11u);
  EXPECT_EQ(tags_after[SSHRING_TAG_APPROVED].bytes - tags_before[SSHRING_TAG_APPROVED].bytes,
            bytes_c2s + bytes_s2c + syn_bytes);

  // An outbound RST (the host's own stack ends the connection) closes at once.
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

// A SYN flood fills the ring buffer (nothing consumes it here): the flows made meanwhile lose their
// open event. Each such entry is marked, and the agent's walk writes its flow_open (late) once.
TEST_F(KernelTest, LostOpenEventsAreReportedByTheWalk) {
  const int n = SSHRING_RINGBUF_BYTES / sizeof(sshring_event) + 100;  // more than the ring holds
  PacketSpec syn{.src = "10.77.9.7"};
  for (int i = 0; i < n; i++) {
    syn.sport = static_cast<uint16_t>(1024 + i);
    ASSERT_EQ(run_prog(obj_->ingress_fd(), build_packet(syn)).retval, kPass);
  }
  const uint64_t lost = stat(SSHRING_STAT_RINGBUF_FULL);
  ASSERT_GT(lost, 0u);
  syn.sport = 1024;
  EXPECT_EQ(flow(syn)->open_lost, 0) << "its event was queued";
  syn.sport = static_cast<uint16_t>(1024 + n - 1);
  EXPECT_EQ(flow(syn)->open_lost, 1);

  auto pol = std::make_shared<const policy::Policy>(policy::parse_policy(R"(version: 1
relays: [10.77.9.0/24]
hosts: [{name: t, cidrs: [10.77.0.0/16], ssh_ports: [22]}]
)",
                                                                         "lost-open.yaml"));
  auto snap = policy::Snapshot::build(pol, {});
  metrics::AgentStats stats;
  std::vector<nlohmann::json> records;
  LiveFlows live(*obj_, *sync_, stats, [&](nlohmann::json r) { records.push_back(std::move(r)); });
  auto late_opens = [&] {
    return std::count_if(records.begin(), records.end(), [](const nlohmann::json& r) {
      return r.value("type", "") == "flow_open" && r.value("late", false) && r.value("tag", "") == "proxied";
    });
  };
  live.walk(*snap, now_, false, std::chrono::hours(1));
  EXPECT_EQ(static_cast<uint64_t>(late_opens()), lost);
  live.walk(*snap, now_, false, std::chrono::hours(1));
  EXPECT_EQ(static_cast<uint64_t>(late_opens()), lost) << "once per flow";
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
// The socket-close hook on a real loopback connection: the close reason comes from the socket. An
// inbound RST marked in the entry is the end only if the socket took it (sk_err ECONNRESET).
TEST(SockStateHook, ClosesTheFlowWithTheSocketsReason) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to load BPF programs";
  if (::access("/sys/kernel/btf/vmlinux", R_OK) != 0) GTEST_SKIP() << "kernel has no BTF";
  std::optional<BpfObject> obj;
  try {
    obj.emplace(BpfObject::Options{.pin_dir = "", .attach_tracepoint = true});
  } catch (const std::exception& e) {
    FAIL() << "cannot load/attach the BPF object (verifier or loader error): " << e.what();
  }
  struct Case {
    const char* name;
    uint32_t marks;    // fin bits the TC program left in the entry
    bool peer_aborts;  // the client resets the server socket, else the server aborts its own
    uint8_t reason;
  };
  for (const Case& c : {Case{"local_abort", 0, false, SSHRING_CLOSE_LOCAL},
                        Case{"abort_after_ignored_rst", SSHRING_RST_C2S, false, SSHRING_CLOSE_LOCAL},
                        Case{"peer_rst_taken", SSHRING_RST_C2S, true, SSHRING_CLOSE_RST}}) {
    SCOPED_TRACE(c.name);
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
    f.fin = c.marks;
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
    common::UniqueFd& aborts = c.peer_aborts ? cli : srv;
    ASSERT_EQ(::setsockopt(aborts.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
    aborts.reset();  // sends an RST; the aborting socket goes straight to TCP_CLOSE
    for (int i = 0; i < 50 && got.empty(); i++) ring_buffer__poll(rb, 20);
    ring_buffer__free(rb);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].type, SSHRING_EV_CLOSE);
    EXPECT_EQ(got[0].reason, c.reason);
    EXPECT_EQ(got[0].bytes[0], 200u);
    EXPECT_EQ(got[0].key.client_port, key.client_port);
    sshring_flow after{};
    EXPECT_NE(bpf_map_lookup_elem(obj->map_fd("flows"), &key, &after), 0) << "entry removed";
  }
}

}  // namespace
}  // namespace sshring::bpf
