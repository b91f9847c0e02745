// A real OpenSSH sshd for tests: throwaway host and user keys, a high port, no PAM, only the test's
// user key accepted. Runs as root (tests run as root) with its own config; killed by PID at the end.
#pragma once

#include <string>
#include <vector>

#include "tests/support/process.h"

namespace sshring::testing {

class Sshd {
 public:
  struct Options {
    std::string listen_addr = "127.0.0.1";  // may be an address inside `netns`
    uint16_t port = 0;                      // 0: pick a free one (loopback only)
    std::string netns;                      // run inside this network namespace
    int max_startups = 1000;                // concurrent unauthenticated connections
  };
  Sshd() : Sshd(Options{}) {}
  explicit Sshd(const Options& opts);
  ~Sshd() = default;

  [[nodiscard]] uint16_t port() const { return port_; }
  [[nodiscard]] const std::string& addr() const { return opts_.listen_addr; }
  [[nodiscard]] const std::string& dir() const { return dir_.path(); }
  // Private key (OpenSSH ed25519, unencrypted) accepted for the current user.
  [[nodiscard]] std::string user_key() const { return dir_.file("id_ed25519"); }
  [[nodiscard]] std::string user_pubkey() const;  // "ssh-ed25519 AAAA... comment"
  [[nodiscard]] std::string known_hosts() const { return dir_.file("known_hosts"); }
  [[nodiscard]] std::string log_path() const { return dir_.file("sshd.log"); }
  // ssh arguments that trust this sshd's host key and use the user key, without port/host.
  [[nodiscard]] std::vector<std::string> ssh_base_args() const;

 private:
  Options opts_;
  TempDir dir_;
  uint16_t port_ = 0;
  Process proc_;
};

}  // namespace sshring::testing
