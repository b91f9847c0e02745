// SHA-256 as lowercase hex: the audit chain, grant request digests, the policy blob keys in etcd and
// the snapshot cache checksum all use this one.
#pragma once

#include <string>
#include <string_view>

namespace sshring::common {

std::string sha256_hex(std::string_view data);

}  // namespace sshring::common
