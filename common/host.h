// This host's name, as the audit log, the grant command, the session ledger and the relay id name it.
#pragma once

#include <string>
#include <string_view>

namespace sshring::common {

// gethostname(2), or `fallback` when it fails or is empty.
std::string host_name(std::string_view fallback);

}  // namespace sshring::common
