// TcHook and detach_tc on a veth inside a namespace the test creates: attach, replace
// our own filter instead of stacking a second one, refuse a foreign program in our slot, and remove
// only what we created (our filter; the clsact qdisc only if we made it).
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <optional>
#include <string>

#include "bpf/loader.h"
#include "common/error.h"
#include "common/unique_fd.h"
#include "tests/support/netns.h"
#include "tests/support/process.h"

namespace sshring::bpf {
namespace {

// Moves this thread into a namespace for the scope (gtest runs tests on the main thread only).
class EnterNetNs {
 public:
  explicit EnterNetNs(const std::string& name)
      : orig_(::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)),
        target_(::open(("/run/netns/" + name).c_str(), O_RDONLY | O_CLOEXEC)) {
    if (!orig_ || !target_ || ::setns(target_.get(), CLONE_NEWNET) != 0) common::throw_errno("setns " + name);
  }
  ~EnterNetNs() { ::setns(orig_.get(), CLONE_NEWNET); }
  EnterNetNs(const EnterNetNs&) = delete;
  EnterNetNs& operator=(const EnterNetNs&) = delete;

 private:
  common::UniqueFd orig_, target_;
};

// A program that is not ours: r0 = -1 (TC_ACT_UNSPEC); exit.
common::UniqueFd foreign_prog() {
  const bpf_insn insns[] = {
      {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .src_reg = 0, .off = 0, .imm = -1},
      {.code = BPF_JMP | BPF_EXIT, .dst_reg = 0, .src_reg = 0, .off = 0, .imm = 0},
  };
  return common::UniqueFd(bpf_prog_load(BPF_PROG_TYPE_SCHED_CLS, "foreign", "GPL", insns, 2, nullptr));
}

void attach_foreign(int ifindex, int fd, uint32_t handle, uint32_t prio) {
  LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
  LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = fd, .handle = handle, .priority = prio);
  ASSERT_EQ(bpf_tc_attach(&hook, &opts), 0);
}

bool has_filter(int ifindex, uint32_t handle, uint32_t prio) {
  LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
  LIBBPF_OPTS(bpf_tc_opts, q, .handle = handle, .priority = prio);
  return bpf_tc_query(&hook, &q) == 0;
}

class TcHookTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!testing::can_use_netns(&why)) GTEST_SKIP() << why;
    ns_.emplace("tchook");
    ASSERT_EQ(ns_->exec("ip link add d0 type veth peer name d1 && ip link set d0 up"), 0);
    try {
      obj_.emplace(BpfObject::Options{.pin_dir = "", .attach_tracepoint = false});
    } catch (const std::exception& e) {
      FAIL() << "cannot load the BPF object (verifier or loader error): " << e.what();
    }
  }

  bool has_clsact() {
    std::string out;
    ns_->exec("tc qdisc show dev d0", &out);
    return out.find("clsact") != std::string::npos;
  }

  std::optional<testing::NetNs> ns_;
  std::optional<BpfObject> obj_;
};

TEST_F(TcHookTest, AttachesAndRemovesOnlyWhatItCreated) {
  EnterNetNs in(ns_->name());
  int idx = ifindex_of("d0");
  {
    TcHook ingress(idx, true, obj_->ingress_fd());
    TcHook egress(idx, false, obj_->egress_fd());
    EXPECT_TRUE(ingress.created_qdisc());
    EXPECT_FALSE(egress.created_qdisc());
    auto slot = query_tc_slot(idx, true);
    ASSERT_TRUE(slot.has_value());
    EXPECT_EQ(slot->prog_name, kIngressProgName);
    EXPECT_EQ(slot->prog_id, ingress.prog_id());
  }
  EXPECT_FALSE(query_tc_slot(idx, true).has_value());
  EXPECT_FALSE(has_clsact()) << "the qdisc we created is gone";

  // Someone else's qdisc and filter: ours comes and goes, theirs stay.
  ASSERT_EQ(ns_->exec("tc qdisc add dev d0 clsact"), 0);
  auto foreign = foreign_prog();
  ASSERT_TRUE(foreign.valid());
  attach_foreign(idx, foreign.get(), 1, 1);
  {
    TcHook ingress(idx, true, obj_->ingress_fd());
    EXPECT_FALSE(ingress.created_qdisc());
    EXPECT_TRUE(query_tc_slot(idx, true).has_value());
  }
  EXPECT_FALSE(query_tc_slot(idx, true).has_value());
  EXPECT_TRUE(has_filter(idx, 1, 1));
  EXPECT_TRUE(has_clsact());
}

TEST_F(TcHookTest, RefusesForeignProgramInOurSlot) {
  EnterNetNs in(ns_->name());
  int idx = ifindex_of("d0");
  ASSERT_EQ(ns_->exec("tc qdisc add dev d0 clsact"), 0);
  auto foreign = foreign_prog();
  ASSERT_TRUE(foreign.valid());
  attach_foreign(idx, foreign.get(), kTcHandle, kTcPriority);
  try {
    TcHook h(idx, true, obj_->ingress_fd());
    FAIL() << "attached over a foreign program";
  } catch (const common::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("another BPF program"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("foreign"), std::string::npos) << e.what();
  }
  auto slot = query_tc_slot(idx, true);
  ASSERT_TRUE(slot.has_value());
  EXPECT_EQ(slot->prog_name, "foreign");
  EXPECT_EQ(detach_tc(idx, false), 0) << "detach never removes a foreign program";
  EXPECT_TRUE(query_tc_slot(idx, true).has_value());
}

TEST_F(TcHookTest, RestartReplacesOwnFilterAndDetachRemovesIt) {
  EnterNetNs in(ns_->name());
  int idx = ifindex_of("d0");
  auto foreign = foreign_prog();
  ASSERT_TRUE(foreign.valid());
  {
    TcHook first(idx, true, obj_->ingress_fd());
    first.keep();  // as the agent does: stays attached after the process ends
    ASSERT_TRUE(first.created_qdisc());
  }
  ASSERT_TRUE(query_tc_slot(idx, true).has_value());
  attach_foreign(idx, foreign.get(), 1, 1);
  BpfObject second_obj(BpfObject::Options{.pin_dir = "", .attach_tracepoint = false});
  TcHook second(idx, true, second_obj.ingress_fd());
  second.keep();
  EXPECT_TRUE(second.replaced());
  EXPECT_EQ(query_tc_slot(idx, true)->prog_id, second.prog_id());
  std::string out;
  ns_->exec("tc filter show dev d0 ingress", &out);
  size_t ours = 0;
  for (size_t p = out.find("handle 0x5353"); p != std::string::npos; p = out.find("handle 0x5353", p + 1))
    ours++;
  EXPECT_EQ(ours, 1u) << out;

  EXPECT_EQ(detach_tc(idx, false), 1);
  EXPECT_FALSE(query_tc_slot(idx, true).has_value());
  EXPECT_TRUE(has_filter(idx, 1, 1));
}

}  // namespace
}  // namespace sshring::bpf
