// Network namespaces and veth links created by a test and removed on destruction (only what it made).
#pragma once

#include <string>
#include <vector>

namespace sshring::testing {

class NetNs {
 public:
  // Creates namespace `name` (prefixed with a per-process tag to avoid clashes) with lo up.
  explicit NetNs(const std::string& name);
  NetNs(const NetNs&) = delete;
  NetNs& operator=(const NetNs&) = delete;
  ~NetNs();
  [[nodiscard]] const std::string& name() const { return name_; }
  // Runs a shell command inside the namespace; returns its exit code.
  int exec(const std::string& cmd, std::string* out = nullptr) const;

 private:
  std::string name_;
};

// A veth pair between two namespaces with addresses ("10.9.0.1/24", optional IPv6 "fd09::1/64").
void link_veth(const NetNs& a, const std::string& a_if, const std::string& a_addr, const NetNs& b,
               const std::string& b_if, const std::string& b_addr, const std::string& a_addr6 = "",
               const std::string& b_addr6 = "");

// True when the test can create namespaces (root with CAP_NET_ADMIN); otherwise skip with a reason.
bool can_use_netns(std::string* why);

}  // namespace sshring::testing
