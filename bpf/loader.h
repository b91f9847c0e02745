// Owners of the kernel objects: the loaded skeleton (programs and maps, optionally pinned so they
// outlive the agent) and the tc clsact hooks the agent attaches. Control plane: throws SystemError.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "bpf/sshring_structs.h"

struct sshring_bpf;  // generated skeleton (sshring.skel.h)

namespace sshring::bpf {

inline constexpr const char* kDefaultPinDir = "/sys/fs/bpf/sshring";
// Our slot on each clsact hook: a filter at exactly this handle and priority is ours.
inline constexpr uint32_t kTcHandle = 0x5353;
inline constexpr uint32_t kTcPriority = 7;
inline constexpr const char* kIngressProgName = "sshring_ingress";
inline constexpr const char* kEgressProgName = "sshring_egress";

// Clear, actionable errors before touching the kernel: root, BPF syscall and BTF present.
void check_environment();

// Makes sure `dir` is on a bpffs (mounting /sys/fs/bpf when that is where it lives) and exists.
void ensure_bpffs_dir(const std::string& dir);

// The loaded skeleton. With a pin dir, the state maps (flows, counters, config, grant names, ifaces,
// denied, events) are re-used from (or pinned to) DIR/maps/<name> and programs are pinned at
// DIR/progs/<name>, so counts and open flows survive an agent restart. The policy maps (relays,
// protected_dsts, watched_ports, grants, rules) are not pinned: each agent builds them from the
// policy before it attaches, and sizes the rules array from it.
class BpfObject {
 public:
  struct Options {
    std::string pin_dir;  // empty: nothing pinned (tests, benchmarks)
    bool attach_tracepoint = true;
    size_t max_rules = SSHRING_DEFAULT_MAX_RULES;  // candidate rules one policy may load (x2 in the map)
  };
  explicit BpfObject(const Options& opts);
  BpfObject() : BpfObject(Options{}) {}
  ~BpfObject();
  BpfObject(const BpfObject&) = delete;
  BpfObject& operator=(const BpfObject&) = delete;

  [[nodiscard]] int ingress_fd() const;
  [[nodiscard]] int egress_fd() const;
  [[nodiscard]] int map_fd(const char* name) const;  // "flows", "grants", ... throws if unknown
  [[nodiscard]] int events_fd() const { return map_fd("events"); }
  [[nodiscard]] bool reused_pins() const { return reused_; }
  [[nodiscard]] sshring_bpf* skeleton() const { return skel_; }
  // Candidate rules one policy can load (half of the rules array, see kernel_policy.h).
  [[nodiscard]] size_t rule_capacity() const { return rule_capacity_; }

  // config map helpers
  void set_enforce(bool on);
  [[nodiscard]] bool enforce() const;
  // Keeps unix-time = boot-time + offset current in the kernel (call on start and every tick).
  void sync_clock();
  void set_clock_offset(int64_t offset_ns);  // tests: pin "now" to a chosen time

  // Sums of the per-CPU arrays.
  [[nodiscard]] std::vector<sshring_tag_counters> tag_counters() const;  // index = tag
  [[nodiscard]] std::vector<uint64_t> stat_counters() const;             // index = sshring_stat

 private:
  sshring_bpf* skel_ = nullptr;
  void* tp_link_ = nullptr;  // bpf_link*
  bool reused_ = false;
  size_t rule_capacity_ = 0;
};

// Removes every pin under `dir` that BpfObject creates (maps/*, progs/*) and the empty dirs.
void remove_pins(const std::string& dir);

// One sshring program on one clsact hook (ingress or egress of an interface). Destruction detaches
// it (and removes the clsact qdisc only if this hook created it) unless keep() was called: the agent
// keeps its filters in place across restarts.
class TcHook {
 public:
  // Attaches `prog_fd` at our slot (kTcHandle/kTcPriority). If our own program already sits there
  // (a previous agent), it is replaced atomically rather than attached twice. Throws if some other
  // program occupies the slot. `created_qdisc` reports whether the clsact qdisc was made here.
  TcHook(int ifindex, bool ingress, int prog_fd);
  ~TcHook();
  TcHook(const TcHook&) = delete;
  TcHook& operator=(const TcHook&) = delete;
  TcHook(TcHook&& o) noexcept;
  TcHook& operator=(TcHook&&) = delete;

  void keep() { keep_ = true; }
  [[nodiscard]] bool created_qdisc() const { return created_qdisc_; }
  [[nodiscard]] bool replaced() const { return replaced_; }
  [[nodiscard]] uint32_t prog_id() const { return prog_id_; }

 private:
  int ifindex_ = 0;
  bool ingress_ = true;
  bool created_qdisc_ = false;
  bool replaced_ = false;
  bool keep_ = false;
  bool active_ = false;
  uint32_t prog_id_ = 0;
};

// What sits in our slot of a hook: nullopt if empty, otherwise the program id and name.
struct TcSlot {
  uint32_t prog_id = 0;
  std::string prog_name;
};
std::optional<TcSlot> query_tc_slot(int ifindex, bool ingress);

// Detaches our filters from `ifindex` (only programs named sshring_*), and removes the clsact qdisc
// if `destroy_qdisc` (the agent created it). Returns how many filters were removed.
int detach_tc(int ifindex, bool destroy_qdisc);

// Interface name -> index, throwing a clear error when it does not exist.
int ifindex_of(const std::string& name);

// ifindex_of for an interface the classifier may attach to: one whose tc hook sees an Ethernet
// header (ARPHRD_ETHER; loopback's frames carry one too). Throws a UsageError naming the interface
// and its link type otherwise: on an L3 device (tun, WireGuard, ipip, gre, ppp) skb->data starts
// at the IP header, the parser would read it as Ethernet and pass every packet unseen, enforce mode
// included. Fail closed: refuse to attach rather than run blind. With `refused`, such an interface
// returns -1 and the message goes there instead.
int attachable_ifindex(const std::string& name, std::string* refused = nullptr);

}  // namespace sshring::bpf
