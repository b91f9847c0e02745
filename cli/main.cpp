// The one `sshring` binary: dispatches to subcommands registered by cli/cmd_*.cpp.
#include <algorithm>
#include <exception>
#include <iostream>

#include "cli/command.h"
#include "common/error.h"
#include "common/version.h"

namespace sshring::cli {

std::vector<Command>& commands() {
  static std::vector<Command> all;
  return all;
}

namespace {

void print_help() {
  auto cmds = commands();
  std::sort(cmds.begin(), cmds.end(), [](const Command& a, const Command& b) { return a.name < b.name; });
  std::cout << "Usage: sshring COMMAND [OPTIONS]\n\n"
               "sshring is an SSH access relay: sessions go through an io_uring relay that authenticates\n"
               "the client and checks policy, and host agents (eBPF) count and tag every direct SSH flow.\n\n"
               "Commands:\n";
  for (const auto& c : cmds) {
    std::cout << "  " << c.name << std::string(c.name.size() < 10 ? 10 - c.name.size() : 1, ' ') << c.summary
              << "\n";
  }
  std::cout << "\nRun 'sshring COMMAND --help' for the options of a command.\n";
}

}  // namespace
}  // namespace sshring::cli

int main(int argc, char** argv) {
  using namespace sshring::cli;
  if (argc < 2 || std::string_view(argv[1]) == "--help" || std::string_view(argv[1]) == "-h" ||
      std::string_view(argv[1]) == "help") {
    print_help();
    return argc < 2 ? 2 : 0;
  }
  std::string_view name = argv[1];
  if (name == "--version") {
    std::cout << "sshring " << sshring::common::version() << "\n";
    return 0;
  }
  for (const auto& c : commands()) {
    if (c.name != name) continue;
    std::vector<std::string> args(argv + 2, argv + argc);
    try {
      return c.run(args);
    } catch (const sshring::common::UsageError& e) {
      std::cerr << "sshring " << name << ": " << e.what() << "\n";
      return 2;
    } catch (const std::exception& e) {
      std::cerr << "sshring " << name << ": error: " << e.what() << "\n";
      return 1;
    }
  }
  std::cerr << "sshring: unknown command '" << name << "' (see sshring --help)\n";
  return 2;
}
