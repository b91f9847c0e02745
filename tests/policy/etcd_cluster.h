// A real etcd cluster for tests: N members on loopback (free ports), data in a temp dir, TLS with a
// throwaway CA made here with the openssl CLI, client-certificate auth on, and the least-privilege
// roles of deploy/etcd/roles.sh (so the tests exercise that script too). Members are started and
// killed by PID; the destructor stops all of them.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tests/support/process.h"

namespace sshring::testing {

class EtcdCluster {
 public:
  // Certificates for these users are made: root, sshring-agent, sshring-relay, sshring-grant,
  // sshring-policy (CN = user name).
  // With `netns`, the members run inside that network namespace (on its loopback), for consumers
  // that run there (an agent attached to a veth of the namespace); etcdctl runs there too, and so
  // must every other client (`in_ns()` prefixes a shell command).
  explicit EtcdCluster(int members = 1, bool auth = true, std::string netns = "");
  ~EtcdCluster();

  // "https://127.0.0.1:P1,https://127.0.0.1:P2,..." (all members, or only member i).
  [[nodiscard]] std::string endpoints() const;
  [[nodiscard]] std::string endpoint(int i) const;
  [[nodiscard]] int size() const { return static_cast<int>(members_.size()); }
  [[nodiscard]] const std::string& ca() const { return ca_; }
  [[nodiscard]] std::string cert(const std::string& user) const { return dir_.file(user + ".pem"); }
  [[nodiscard]] std::string key(const std::string& user) const { return dir_.file(user + "-key.pem"); }
  // --etcd ... --etcd-cacert ... --etcd-cert ... --etcd-key ... for a sshring command run as `user`.
  [[nodiscard]] std::vector<std::string> flags(const std::string& user) const;
  // Runs etcdctl as root; returns its exit code (output in *out).
  int etcdctl(const std::string& args, std::string* out = nullptr) const;

  void kill(int i);   // SIGKILL
  void start(int i);  // (re)start a member with its data dir
  void stop_all();
  void start_all();
  [[nodiscard]] bool running(int i) { return members_[i].proc && members_[i].proc->running(); }
  [[nodiscard]] pid_t pid(int i) const { return members_[i].proc ? members_[i].proc->pid() : -1; }
  // Index of the current leader (-1 if none answers).
  int leader() const;
  // Waits until every running member answers `endpoint health`.
  bool wait_healthy(int timeout_s = 60) const;
  [[nodiscard]] const std::string& dir() const { return dir_.path(); }
  // "ip netns exec NS " when the members run in a namespace, else "".
  [[nodiscard]] std::string in_ns() const { return netns_.empty() ? "" : "ip netns exec " + netns_ + " "; }

 private:
  struct Member {
    std::string name;
    uint16_t client_port = 0;
    uint16_t peer_port = 0;
    std::unique_ptr<Process> proc;
  };
  void make_certs();
  TempDir dir_;
  std::string netns_;
  std::string ca_;
  std::vector<Member> members_;
  std::string token_;
};

}  // namespace sshring::testing
