// `sshring ssh-config`: prints the ~/.ssh/config stanza that sends matching hosts through a relay, so
// users do not hand-write ProxyCommand quoting, %-escaping or the fd-passing line.
#include <iostream>

#include "cli/command.h"
#include "client/client.h"
#include "common/error.h"
#include "common/flags.h"

namespace client = sshring::client;

namespace {

using sshring::common::Flags;
using sshring::common::UsageError;

// ssh hands ProxyCommand to `sh -c` after expanding %-tokens: escape '%' for ssh, then quote for sh.
std::string proxy_arg(const std::string& v) {
  std::string pct;
  for (char c : v) pct += c == '%' ? std::string("%%") : std::string(1, c);
  bool plain = !pct.empty();
  for (char c : pct)
    plain = plain && (std::isalnum(static_cast<unsigned char>(c)) ||
                      std::string_view("@%+=:,./-_[]").find(c) != std::string_view::npos);
  if (plain) return pct;
  std::string q = "'";
  for (char c : pct) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

void check_line(const std::string& v, std::string_view flag) {
  if (v.find_first_of("\n\r\"") != std::string::npos)
    throw UsageError(std::string(flag) + ": newlines and double quotes cannot go into ~/.ssh/config");
}

int run(const std::vector<std::string>& args) {
  Flags f("ssh-config", "sshring ssh-config --relay HOST:PORT [OPTIONS] 'HOST-PATTERN...'",
          "Prints a ~/.ssh/config stanza that sends the hosts matching HOST-PATTERN (ssh_config Host "
          "syntax, e.g. '*.prod.example !bastion.prod.example') through the relay with `sshring connect` "
          "and fd passing (ssh gets the relay socket; no process stays in the data path). Append it to "
          "~/.ssh/config: sshring ssh-config ... >> ~/.ssh/config");
  f.value("relay", "HOST:PORT", "the relay to connect to")
      .value("principal", "NAME", "who you are in the relay's policy (default at connect time: $USER)")
      .value("relay-id", "ID", "the relay's id, when it is not the HOST of --relay")
      .value("identity", "KEYFILE", "sign with this ed25519 key file instead of ssh-agent")
      .value("agent-key", "PUBFILE", "with ssh-agent: use the key in this .pub file")
      .value("sshring", "PATH", "the sshring binary ssh should run", "sshring")
      .boolean("no-fdpass", "omit ProxyUseFdpass (OpenSSH before 6.5): sshring connect then splices stdio");
  try {
    if (!f.parse(args)) return 0;
    if (f.positionals().size() != 1) throw UsageError("expected one HOST-PATTERN argument (quote it)");
    std::string relay = f.require("relay");
    (void)client::split_host_port(relay, "--relay");  // fail now, not at ssh time
    std::string pattern = f.positionals()[0];
    check_line(pattern, "HOST-PATTERN");
    if (pattern.find_first_not_of(" \t") == std::string::npos) throw UsageError("HOST-PATTERN is empty");
    std::string cmd = proxy_arg(f.get_or("sshring", "sshring")) + " connect --relay " + proxy_arg(relay);
    for (const char* name : {"principal", "relay-id", "identity", "agent-key"}) {
      if (!f.has(name)) continue;
      check_line(f.require(name), std::string("--") + name);
      cmd += std::string(" --") + name + " " + proxy_arg(f.require(name));
    }
    std::cout << "Host " << pattern << "\n    ProxyCommand " << cmd << " %h %p\n";
    if (!f.flag("no-fdpass")) std::cout << "    ProxyUseFdpass yes\n";
    return 0;
  } catch (const UsageError& e) {
    std::cerr << "sshring ssh-config: " << e.what() << "\n";
    return 2;
  }
}

const sshring::cli::Registrar kSshConfig{
    {"ssh-config", "print a ~/.ssh/config stanza for hosts behind a relay", run}};

}  // namespace
