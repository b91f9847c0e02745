// `sshring version`: placeholder-free; prints the build version (same as --version).
#include <iostream>

#include "cli/command.h"
#include "common/version.h"

namespace {
const sshring::cli::Registrar kVersion{{"version", "print the version", [](const std::vector<std::string>&) {
                                          std::cout << "sshring " << sshring::common::version() << "\n";
                                          return 0;
                                        }}};
}  // namespace
