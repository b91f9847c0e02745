#include "tests/support/netns.h"

#include <unistd.h>

#include <stdexcept>

#include "tests/support/process.h"

namespace sshring::testing {

NetNs::NetNs(const std::string& name) : name_("sr" + std::to_string(::getpid() % 100000) + "-" + name) {
  if (run({"ip", "netns", "add", name_}) != 0) throw std::runtime_error("ip netns add " + name_ + " failed");
  run({"ip", "-n", name_, "link", "set", "lo", "up"});
}

NetNs::~NetNs() {
  run({"ip", "netns", "del", name_});
}

int NetNs::exec(const std::string& cmd, std::string* out) const {
  return run({"ip", "netns", "exec", name_, "sh", "-c", cmd}, out);
}

void link_veth(const NetNs& a, const std::string& a_if, const std::string& a_addr, const NetNs& b,
               const std::string& b_if, const std::string& b_addr, const std::string& a_addr6,
               const std::string& b_addr6) {
  auto must = [](const std::vector<std::string>& argv) {
    if (run(argv) != 0) {
      std::string cmd;
      for (const auto& s : argv) cmd += s + " ";
      throw std::runtime_error("failed: " + cmd);
    }
  };
  must({"ip", "link", "add", a_if, "netns", a.name(), "type", "veth", "peer", "name", b_if, "netns",
        b.name()});
  must({"ip", "-n", a.name(), "addr", "add", a_addr, "dev", a_if});
  must({"ip", "-n", b.name(), "addr", "add", b_addr, "dev", b_if});
  if (!a_addr6.empty()) must({"ip", "-n", a.name(), "addr", "add", a_addr6, "dev", a_if, "nodad"});
  if (!b_addr6.empty()) must({"ip", "-n", b.name(), "addr", "add", b_addr6, "dev", b_if, "nodad"});
  must({"ip", "-n", a.name(), "link", "set", a_if, "up"});
  must({"ip", "-n", b.name(), "link", "set", b_if, "up"});
}

bool can_use_netns(std::string* why) {
  if (::geteuid() != 0) {
    if (why) *why = "needs root (CAP_NET_ADMIN) to create network namespaces";
    return false;
  }
  std::string name = "sr-probe-" + std::to_string(::getpid());
  if (run({"ip", "netns", "add", name}) != 0) {
    if (why) *why = "ip netns add failed (no CAP_NET_ADMIN or no iproute2)";
    return false;
  }
  run({"ip", "netns", "del", name});
  return true;
}

}  // namespace sshring::testing
