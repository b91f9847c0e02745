// Standard base64 (RFC 4648 alphabet), as OpenSSH uses it for keys and fingerprints.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace sshring::common {

std::string base64_encode(std::string_view data, bool pad = true);
// Strict: padded or unpadded input, no whitespace, no other characters, zero leftover bits (so each
// value has one encoding). nullopt on anything else.
std::optional<std::string> base64_decode(std::string_view text);

}  // namespace sshring::common
