#include "bpf/loader.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/magic.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <utility>

#include "common/clock.h"
#include "common/error.h"
#include "common/log.h"
#include "common/unique_fd.h"
#include "sshring.skel.h"  // generated into the build tree

namespace sshring::bpf {

using common::throw_errno;

namespace {

bool is_bpffs(const std::string& path) {
  struct statfs st {};
  return ::statfs(path.c_str(), &st) == 0 && st.f_type == BPF_FS_MAGIC;
}

std::string prog_name_of(uint32_t id) {
  int fd = bpf_prog_get_fd_by_id(id);
  if (fd < 0) return "";
  bpf_prog_info info{};
  uint32_t len = sizeof(info);
  std::string name;
  if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0) name = info.name;
  ::close(fd);
  return name;
}

uint32_t prog_id_of(int prog_fd) {
  bpf_prog_info info{};
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(prog_fd, &info, &len) != 0) throw_errno("bpf_obj_get_info_by_fd");
  return info.id;
}

// Rebuilt from the policy by every agent before it attaches: never pinned (their sizes follow the
// policy, and a stale copy must not outlive the policy it came from).
bool is_policy_map(const std::string& name) {
  return name == "relays" || name == "protected_dsts" || name == "watched_ports" || name == "grants" ||
         name == "rules";
}

bool is_ours(const std::string& name) {
  return name == kIngressProgName || name == kEgressProgName;
}

// libbpf prints kernel extack messages for probes that are expected to fail ("Parent Qdisc doesn't
// exists" when querying an interface without clsact); those are silenced, verifier logs are not.
thread_local bool t_quiet = false;

int libbpf_print(enum libbpf_print_level level, const char* fmt, va_list ap) {
  if (level == LIBBPF_DEBUG || t_quiet) return 0;
  return std::vfprintf(stderr, fmt, ap);
}

void install_libbpf_print() {
  static std::once_flag once;
  std::call_once(once, [] { libbpf_set_print(libbpf_print); });
}

struct Quiet {
  Quiet() { t_quiet = true; }
  ~Quiet() { t_quiet = false; }
  Quiet(const Quiet&) = delete;
  Quiet& operator=(const Quiet&) = delete;
};

}  // namespace

void check_environment() {
  if (::geteuid() != 0)
    throw common::UsageError(
        "sshring agent must run as root (it loads BPF programs and attaches tc filters: CAP_BPF, "
        "CAP_NET_ADMIN); run it with sudo or from the systemd unit");
  if (::access("/sys/kernel/btf/vmlinux", R_OK) != 0)
    throw common::UsageError(
        "kernel BTF (/sys/kernel/btf/vmlinux) is missing: the agent needs a kernel built with "
        "CONFIG_DEBUG_INFO_BTF=y and CONFIG_BPF_SYSCALL=y");
}

void ensure_bpffs_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string root = "/sys/fs/bpf";
  if (dir.rfind(root, 0) == 0 && !is_bpffs(root)) {
    // Not mounted at boot on some systems (and hidden inside `ip netns exec`): mount it.
    if (::mount("bpf", root.c_str(), "bpf", 0, nullptr) != 0) throw_errno("mount bpffs at " + root);
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw common::SystemError("create pin dir " + dir, ec.value());
  if (!is_bpffs(dir))
    throw common::UsageError("--pin-dir " + dir +
                             " is not on a BPF filesystem; use a directory under /sys/fs/bpf or mount "
                             "one (mount -t bpf bpf DIR)");
}

BpfObject::BpfObject(const Options& opts) {
  install_libbpf_print();
  libbpf_set_strict_mode(LIBBPF_STRICT_ALL);
  skel_ = sshring_bpf__open();
  if (!skel_) throw_errno("open BPF skeleton (is the bpf() syscall available?)");
  try {
    if (!opts.pin_dir.empty()) {
      ensure_bpffs_dir(opts.pin_dir + "/maps");
      ensure_bpffs_dir(opts.pin_dir + "/progs");
      bpf_map* m;
      bpf_object__for_each_map(m, skel_->obj) {
        if (is_policy_map(bpf_map__name(m))) continue;
        std::string path = opts.pin_dir + "/maps/" + bpf_map__name(m);
        if (::access(path.c_str(), F_OK) == 0) reused_ = true;
        if (int err = bpf_map__set_pin_path(m, path.c_str())) throw_errno("pin path " + path, -err);
      }
    }
    if (opts.max_rules == 0 || opts.max_rules > (1u << 30) / sizeof(sshring_rule))
      throw common::UsageError("--max-rules " + std::to_string(opts.max_rules) + " is out of range; use 1.." +
                               std::to_string((1u << 30) / sizeof(sshring_rule)));
    rule_capacity_ = opts.max_rules;
    if (int err = bpf_map__set_max_entries(skel_->maps.rules, static_cast<uint32_t>(2 * opts.max_rules)))
      throw common::SystemError("size rules map", -err);
    if (!opts.attach_tracepoint) bpf_program__set_autoload(skel_->progs.sshring_sock_state, false);
    if (int err = sshring_bpf__load(skel_))
      throw common::SystemError(
          "load BPF programs (verifier log above; pinned maps of an older agent version need "
          "`sshring agent --detach`)",
          -err);
    if (opts.attach_tracepoint) {
      bpf_link* link = bpf_program__attach(skel_->progs.sshring_sock_state);
      if (!link) throw_errno("attach tp_btf inet_sock_set_state");
      tp_link_ = link;
    }
    if (!opts.pin_dir.empty()) {
      for (bpf_program* p : {skel_->progs.sshring_ingress, skel_->progs.sshring_egress}) {
        std::string path = opts.pin_dir + "/progs/" + bpf_program__name(p);
        ::unlink(path.c_str());  // a previous agent's program: tc keeps its own reference
        if (int err = bpf_program__pin(p, path.c_str())) throw common::SystemError("pin " + path, -err);
      }
    }
    uint32_t zero = 0;
    sshring_config cfg{};
    if (bpf_map_lookup_elem(map_fd("agent_config"), &zero, &cfg) != 0) throw_errno("read config map");
    if (cfg.abi_version != 0 && cfg.abi_version != SSHRING_ABI_VERSION)
      throw common::UsageError("pinned maps under " + opts.pin_dir + " have ABI version " +
                               std::to_string(cfg.abi_version) + ", this agent needs " +
                               std::to_string(SSHRING_ABI_VERSION) + "; run `sshring agent --detach` first");
    cfg.abi_version = SSHRING_ABI_VERSION;
    cfg.realtime_offset_ns = common::realtime_minus_boottime_ns();
    if (bpf_map_update_elem(map_fd("agent_config"), &zero, &cfg, BPF_ANY) != 0)
      throw_errno("write config map");
  } catch (...) {
    if (tp_link_) bpf_link__destroy(static_cast<bpf_link*>(tp_link_));
    sshring_bpf__destroy(skel_);
    throw;
  }
}

BpfObject::~BpfObject() {
  if (tp_link_) bpf_link__destroy(static_cast<bpf_link*>(tp_link_));
  sshring_bpf__destroy(skel_);  // closes fds; pinned objects stay
}

int BpfObject::ingress_fd() const {
  return bpf_program__fd(skel_->progs.sshring_ingress);
}
int BpfObject::egress_fd() const {
  return bpf_program__fd(skel_->progs.sshring_egress);
}

int BpfObject::map_fd(const char* name) const {
  bpf_map* m = bpf_object__find_map_by_name(skel_->obj, name);
  if (!m) throw common::SystemError(std::string("no BPF map named ") + name, ENOENT);
  return bpf_map__fd(m);
}

void BpfObject::set_enforce(bool on) {
  uint32_t zero = 0;
  sshring_config cfg{};
  if (bpf_map_lookup_elem(map_fd("agent_config"), &zero, &cfg) != 0) throw_errno("read config map");
  cfg.enforce = on ? 1 : 0;
  if (bpf_map_update_elem(map_fd("agent_config"), &zero, &cfg, BPF_ANY) != 0) throw_errno("write config map");
}

bool BpfObject::enforce() const {
  uint32_t zero = 0;
  sshring_config cfg{};
  if (bpf_map_lookup_elem(map_fd("agent_config"), &zero, &cfg) != 0) throw_errno("read config map");
  return cfg.enforce != 0;
}

void BpfObject::sync_clock() {
  set_clock_offset(common::realtime_minus_boottime_ns());
}

void BpfObject::set_clock_offset(int64_t offset_ns) {
  uint32_t zero = 0;
  sshring_config cfg{};
  if (bpf_map_lookup_elem(map_fd("agent_config"), &zero, &cfg) != 0) throw_errno("read config map");
  cfg.realtime_offset_ns = offset_ns;
  if (bpf_map_update_elem(map_fd("agent_config"), &zero, &cfg, BPF_ANY) != 0) throw_errno("write config map");
}

std::vector<sshring_tag_counters> BpfObject::tag_counters() const {
  int ncpu = libbpf_num_possible_cpus();
  std::vector<sshring_tag_counters> out(SSHRING_NUM_TAGS), percpu(ncpu);
  for (uint32_t t = 0; t < SSHRING_NUM_TAGS; t++) {
    if (bpf_map_lookup_elem(map_fd("tag_stats"), &t, percpu.data()) != 0) throw_errno("read tag_stats");
    for (const auto& c : percpu) {
      out[t].flows += c.flows;
      out[t].packets += c.packets;
      out[t].bytes += c.bytes;
    }
  }
  return out;
}

std::vector<uint64_t> BpfObject::stat_counters() const {
  int ncpu = libbpf_num_possible_cpus();
  std::vector<uint64_t> out(SSHRING_STAT_NUM), percpu(ncpu);
  for (uint32_t i = 0; i < SSHRING_STAT_NUM; i++) {
    if (bpf_map_lookup_elem(map_fd("stats"), &i, percpu.data()) != 0) throw_errno("read stats");
    for (uint64_t v : percpu) out[i] += v;
  }
  return out;
}

void remove_pins(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  for (const char* sub : {"/maps", "/progs"}) {
    fs::path d = dir + sub;
    if (!fs::exists(d, ec)) continue;
    for (const auto& e : fs::directory_iterator(d, ec)) ::unlink(e.path().c_str());
    ::rmdir(d.c_str());
  }
  ::rmdir(dir.c_str());  // only if empty: never removes what others pinned there
}

std::optional<TcSlot> query_tc_slot(int ifindex, bool ingress) {
  install_libbpf_print();
  Quiet quiet;
  LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex,
              .attach_point = ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS);
  LIBBPF_OPTS(bpf_tc_opts, q, .handle = kTcHandle, .priority = kTcPriority);
  int err = bpf_tc_query(&hook, &q);
  if (err == -ENOENT || err == -EINVAL) return std::nullopt;  // no qdisc or no filter there
  if (err) throw common::SystemError("query tc filter on ifindex " + std::to_string(ifindex), -err);
  return TcSlot{q.prog_id, prog_name_of(q.prog_id)};
}

TcHook::TcHook(int ifindex, bool ingress, int prog_fd) : ifindex_(ifindex), ingress_(ingress) {
  const char* dir = ingress ? "ingress" : "egress";
  LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex,
              .attach_point = ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS);
  install_libbpf_print();
  int err;
  {
    Quiet quiet;  // EEXIST (a clsact qdisc is already there) is expected
    err = bpf_tc_hook_create(&hook);
  }
  if (err && err != -EEXIST)
    throw common::SystemError("create clsact qdisc on ifindex " + std::to_string(ifindex), -err);
  created_qdisc_ = err == 0;
  auto undo_qdisc = [&] {
    if (!created_qdisc_) return;
    LIBBPF_OPTS(bpf_tc_hook, both, .ifindex = ifindex,
                .attach_point = static_cast<bpf_tc_attach_point>(BPF_TC_INGRESS | BPF_TC_EGRESS));
    bpf_tc_hook_destroy(&both);
  };
  __u32 flags = 0;
  if (auto slot = query_tc_slot(ifindex, ingress)) {
    if (!is_ours(slot->prog_name)) {
      undo_qdisc();
      throw common::UsageError("another BPF program (id " + std::to_string(slot->prog_id) + ", name '" +
                               slot->prog_name + "') sits on the tc " + dir + " hook of ifindex " +
                               std::to_string(ifindex) + " at handle 0x5353 prio 7; remove it first");
    }
    flags = BPF_TC_F_REPLACE;
    replaced_ = true;
  }
  LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = prog_fd, .flags = flags, .handle = kTcHandle,
              .priority = kTcPriority);
  err = bpf_tc_attach(&hook, &opts);
  if (err) {
    undo_qdisc();
    throw common::SystemError(std::string("attach tc ") + dir + " on ifindex " + std::to_string(ifindex),
                              -err);
  }
  prog_id_ = prog_id_of(prog_fd);
  active_ = true;
}

TcHook::TcHook(TcHook&& o) noexcept
    : ifindex_(o.ifindex_),
      ingress_(o.ingress_),
      created_qdisc_(o.created_qdisc_),
      replaced_(o.replaced_),
      keep_(o.keep_),
      active_(std::exchange(o.active_, false)),
      prog_id_(o.prog_id_) {}

TcHook::~TcHook() {
  if (!active_ || keep_) return;
  LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex_,
              .attach_point = ingress_ ? BPF_TC_INGRESS : BPF_TC_EGRESS);
  // Remove only our filter, and only if it is still the program we attached. The query allocates (a
  // name string): if that fails, leave the filter rather than throw from a destructor.
  std::optional<TcSlot> slot;
  try {
    slot = query_tc_slot(ifindex_, ingress_);
  } catch (const std::exception&) {
    // slot stays empty
  }
  if (slot && slot->prog_id == prog_id_) {
    LIBBPF_OPTS(bpf_tc_opts, opts, .handle = kTcHandle, .priority = kTcPriority);
    bpf_tc_detach(&hook, &opts);
  }
  if (created_qdisc_) {
    // The qdisc is ours: removing it also removes the other direction's filter, which is ours too.
    LIBBPF_OPTS(bpf_tc_hook, both, .ifindex = ifindex_,
                .attach_point = static_cast<bpf_tc_attach_point>(BPF_TC_INGRESS | BPF_TC_EGRESS));
    bpf_tc_hook_destroy(&both);
  }
}

int detach_tc(int ifindex, bool destroy_qdisc) {
  int removed = 0;
  for (bool ingress : {true, false}) {
    auto slot = query_tc_slot(ifindex, ingress);
    if (!slot || !is_ours(slot->prog_name)) continue;
    LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex,
                .attach_point = ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS);
    LIBBPF_OPTS(bpf_tc_opts, opts, .handle = kTcHandle, .priority = kTcPriority);
    int err = bpf_tc_detach(&hook, &opts);
    if (err) throw common::SystemError("detach tc filter from ifindex " + std::to_string(ifindex), -err);
    removed++;
  }
  if (destroy_qdisc) {
    LIBBPF_OPTS(bpf_tc_hook, both, .ifindex = ifindex,
                .attach_point = static_cast<bpf_tc_attach_point>(BPF_TC_INGRESS | BPF_TC_EGRESS));
    bpf_tc_hook_destroy(&both);
  }
  return removed;
}

int ifindex_of(const std::string& name) {
  unsigned idx = ::if_nametoindex(name.c_str());
  if (idx == 0)
    throw common::UsageError("interface '" + name + "' not found in this network namespace (see `ip link`)");
  return static_cast<int>(idx);
}

namespace {

const char* link_type_name(int type) {
  switch (type) {
    case ARPHRD_NONE:
      return "none: tun, WireGuard";
    case ARPHRD_TUNNEL:
      return "ipip";
    case ARPHRD_TUNNEL6:
      return "ip6tnl";
    case ARPHRD_SIT:
      return "sit";
    case ARPHRD_IPGRE:
      return "gre";
    case ARPHRD_PPP:
      return "ppp";
    default:
      return "not Ethernet";
  }
}

}  // namespace

int attachable_ifindex(const std::string& name, std::string* refused) {
  int idx = ifindex_of(name);
  // SIOCGIFHWADDR answers for this network namespace (sysfs may show another under setns).
  common::UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s) throw_errno("socket for SIOCGIFHWADDR");
  struct ifreq ifr {};
  (void)std::snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name.c_str());
  if (::ioctl(s.get(), SIOCGIFHWADDR, &ifr) != 0) throw_errno("link type of interface '" + name + "'");
  const int type = ifr.ifr_hwaddr.sa_family;
  if (type == ARPHRD_ETHER || type == ARPHRD_LOOPBACK) return idx;
  std::string why = "interface '" + name + "' has link type " + std::to_string(type) + " (" +
                    link_type_name(type) +
                    "), not Ethernet: the classifier parses Ethernet frames only and would pass "
                    "this interface's traffic unseen, enforce mode included. Attach to the "
                    "Ethernet interface the traffic arrives on, or leave '" +
                    name + "' out of --iface";
  if (!refused) throw common::UsageError(why);
  *refused = std::move(why);
  return -1;
}

}  // namespace sshring::bpf
