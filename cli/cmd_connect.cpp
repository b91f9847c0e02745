// `sshring connect`: the client side of the authenticated relay, made to be ssh's ProxyCommand.
#include <unistd.h>

#include <iostream>

#include "cli/command.h"
#include "client/client.h"
#include "client/stdio.h"
#include "common/error.h"
#include "common/flags.h"

namespace {

namespace protocol = sshring::protocol;
namespace client = sshring::client;
using sshring::common::Flags;

std::string exit_code_table() {
  std::string t =
      "Exit codes: 0 ok (fd passing: socket handed to ssh), 1 error (relay unreachable, agent, I/O),\n"
      "2 usage, and for each DENY reason 20 + its code:\n";
  for (uint16_t r = 1; r <= protocol::kMaxReason; ++r) {
    auto reason = static_cast<protocol::Reason>(r);
    t += "  " + std::to_string(protocol::exit_code_for(reason)) + "  " + protocol::reason_name(reason) +
         ": " + protocol::reason_description(reason) + "\n";
  }
  t += "  " + std::to_string(protocol::kExitCodeBase + protocol::kMaxReason + 1) +
       "  a reason newer than this client\n";
  t += "\n~/.ssh/config (sshring ssh-config prints this for you):\n"
       "  Host *.corp.example\n"
       "    ProxyCommand sshring connect --relay relay.corp.example:2222 %h %p\n"
       "    ProxyUseFdpass yes\n";
  return t;
}

int run(const std::vector<std::string>& args) {
  Flags f("connect", "sshring connect --relay HOST:PORT [OPTIONS] TARGET PORT",
          "Opens an authenticated session to TARGET:PORT through an sshring relay, for use as ssh's "
          "ProxyCommand. Signs the preamble with ssh-agent (SSH_AUTH_SOCK) unless --identity names an "
          "unencrypted ed25519 key file. When ssh runs it with ProxyUseFdpass yes (stdin and stdout are "
          "one unnamed Unix socket) it hands the connected socket to ssh and exits; otherwise it moves "
          "stdin/stdout to the session with splice(2) (no copy through user space when they are pipes, "
          "as ssh makes them).");
  f.value("relay", "HOST:PORT", "the relay to connect to")
      .value("principal", "NAME", "who you are in the relay's policy (default: $USER)")
      .value("identity", "KEYFILE", "sign with this OpenSSH ed25519 private key file instead of ssh-agent")
      .value("agent-key", "PUBFILE",
             "with ssh-agent: use the key in this .pub file (default: first ed25519 key)")
      .value("relay-id", "ID", "the relay's id as configured on the relay (default: HOST of --relay)")
      .value("timeout", "SECONDS", "connect and handshake timeout", "15")
      .boolean(
          "fdpass",
          "always pass the connected socket over stdout (default: when stdout is ssh's fd-passing socket)")
      .boolean("stdio", "never pass the socket: relay stdin/stdout even when stdout is a Unix socket")
      .epilog(exit_code_table());
  std::string sent_relay_id;
  try {
    if (!f.parse(args)) return 0;
    if (f.positionals().size() != 2) throw sshring::common::UsageError("expected TARGET PORT (e.g. %h %p)");
    client::ConnectOptions o;
    o.relay = f.require("relay");
    o.relay_id = f.get_or("relay-id", "");
    o.principal = f.get_or("principal", "");
    o.target = f.positionals()[0];
    char* end = nullptr;
    long port = std::strtol(f.positionals()[1].c_str(), &end, 10);
    if (*end != '\0' || port < 1 || port > 65535)
      throw sshring::common::UsageError("PORT '" + f.positionals()[1] + "': expected 1-65535");
    o.port = static_cast<uint16_t>(port);
    o.timeout = std::chrono::seconds(f.get_int("timeout", 15, 1, 3600));
    client::Signer signer = f.has("identity") ? client::file_signer(f.require("identity"))
                                              : client::agent_signer(f.get_or("agent-key", ""));
    if (f.flag("fdpass") && f.flag("stdio"))
      throw sshring::common::UsageError("--fdpass and --stdio exclude each other");
    // Decided before connecting, so a wrong guess costs no session.
    bool fdpass =
        f.flag("fdpass") || (!f.flag("stdio") && client::is_fdpass_channel(STDIN_FILENO, STDOUT_FILENO));
    sent_relay_id = client::effective_relay_id(o);
    client::Connected c = client::connect_via_relay(o, signer);
    if (fdpass) {
      client::send_fd(STDOUT_FILENO, c.fd.get());
      return 0;
    }
    return client::run_stdio(c.fd.get());
  } catch (const client::DeniedError& e) {
    std::cerr << "sshring connect: " << e.what() << "\n";
    if (std::string hint = client::deny_hint(e, sent_relay_id); !hint.empty())
      std::cerr << "sshring connect: " << hint << "\n";
    return e.exit_code();
  } catch (const sshring::common::UsageError& e) {
    std::cerr << "sshring connect: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "sshring connect: " << e.what() << "\n";
    return 1;
  }
}

const sshring::cli::Registrar kConnect{
    {"connect", "open an authenticated session through a relay (ssh ProxyCommand)", run}};

}  // namespace
