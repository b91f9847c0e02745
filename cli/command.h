// Subcommand registry. Each cli/cmd_*.cpp registers its subcommand with a static Registrar, so adding a
// subcommand touches only its own file.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace sshring::cli {

struct Command {
  std::string name;     // "relay"
  std::string summary;  // one line for `sshring --help`
  // Receives the arguments after the subcommand name. Returns the process exit code.
  std::function<int(const std::vector<std::string>&)> run;
};

std::vector<Command>& commands();

struct Registrar {
  explicit Registrar(Command c) { commands().push_back(std::move(c)); }
};

}  // namespace sshring::cli
