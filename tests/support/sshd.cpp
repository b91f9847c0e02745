#include "tests/support/sshd.h"

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stdexcept>

namespace sshring::testing {

Sshd::Sshd(const Options& opts) : opts_(opts) {
  port_ = opts.port ? opts.port : free_port();
  if (run({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", dir_.file("host_ed25519")}) != 0 ||
      run({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sshring-test", "-f",
           dir_.file("id_ed25519")}) != 0)
    throw std::runtime_error("ssh-keygen failed");
  write_file(dir_.file("authorized_keys"), read_file(dir_.file("id_ed25519.pub")), 0600);
  std::string host_pub = read_file(dir_.file("host_ed25519.pub"));
  std::string host_for_known =
      opts.listen_addr.find(':') != std::string::npos ? "[" + opts.listen_addr + "]" : opts.listen_addr;
  write_file(known_hosts(), "[" + opts.listen_addr + "]:" + std::to_string(port_) + " " + host_pub);
  (void)host_for_known;
  std::string cfg;
  cfg += "Port " + std::to_string(port_) + "\n";
  cfg += "ListenAddress " + opts.listen_addr + "\n";
  cfg += "HostKey " + dir_.file("host_ed25519") + "\n";
  cfg += "AuthorizedKeysFile " + dir_.file("authorized_keys") + "\n";
  cfg += "PidFile " + dir_.file("sshd.pid") + "\n";
  cfg += "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n";
  cfg += "PermitRootLogin prohibit-password\nStrictModes no\n";
  cfg += "MaxStartups " + std::to_string(opts.max_startups) + "\nMaxSessions 100\n";
  cfg += "LogLevel ERROR\n";
  write_file(dir_.file("sshd_config"), cfg);
  ::mkdir("/run/sshd", 0755);
  Process::Options po;
  po.netns = opts.netns;
  po.stderr_path = log_path();
  proc_ = Process({"/usr/sbin/sshd", "-D", "-e", "-f", dir_.file("sshd_config")}, po);
  if (!wait_for_port(opts.listen_addr, port_, std::chrono::seconds(10), opts.netns))
    throw std::runtime_error("sshd did not start; log: " + read_file(log_path()));
}

std::string Sshd::user_pubkey() const {
  std::string s = read_file(dir_.file("id_ed25519.pub"));
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

std::vector<std::string> Sshd::ssh_base_args() const {
  return {"ssh",
          "-F",
          "/dev/null",
          "-i",
          user_key(),
          "-o",
          "IdentitiesOnly=yes",
          "-o",
          "BatchMode=yes",
          "-o",
          "UserKnownHostsFile=" + known_hosts(),
          "-o",
          "StrictHostKeyChecking=yes",
          "-o",
          "LogLevel=ERROR",
          "-o",
          "ConnectTimeout=10",
          "-l",
          getpwuid(getuid())->pw_name};
}

}  // namespace sshring::testing
