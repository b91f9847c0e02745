// This host's own addresses, as the relay and the agent need them: a protected host is protected on
// every address it answers on, and a name must not lead the relay back to its own host.
#pragma once

#include <vector>

#include "policy/cidr.h"

namespace sshring::policy {

// The addresses of this network namespace's interfaces (getifaddrs), sorted and unique. Throws
// common::SystemError when they cannot be listed.
std::vector<IpAddr> local_addresses();

}  // namespace sshring::policy
