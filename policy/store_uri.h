// Where a policy names its grant store: a directory (the embedded one-machine store) or
// `etcd://HOST:PORT[,HOST:PORT...]/PREFIX` (the fleet store, policy/etcd/). Parsing lives here, in
// the policy core, so `policy check` validates the URI without linking the etcd client.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sshring::policy {

struct EtcdUri {
  std::vector<std::string> endpoints;  // "HOST:PORT"
  std::string prefix;                  // "/sshring": starts with '/', no trailing '/'
};

inline constexpr std::string_view kEtcdScheme = "etcd://";
inline constexpr std::string_view kDefaultEtcdPrefix = "/sshring";

[[nodiscard]] inline bool is_etcd_uri(std::string_view s) noexcept {
  return s.starts_with(kEtcdScheme);
}
// nullopt and *why on a malformed URI ("endpoint 'x' is not HOST:PORT").
std::optional<EtcdUri> parse_etcd_uri(std::string_view uri, std::string* why);
// Checks a key prefix ("/sshring", "/fleet/a"): absolute, no trailing '/', printable, no "//".
bool valid_etcd_prefix(std::string_view prefix, std::string* why);

}  // namespace sshring::policy
