#include "policy/store_uri.h"

#include <algorithm>

namespace sshring::policy {

bool valid_etcd_prefix(std::string_view prefix, std::string* why) {
  if (prefix.empty() || prefix[0] != '/') {
    *why = "prefix '" + std::string(prefix) + "' must start with '/' (e.g. /sshring)";
    return false;
  }
  if (prefix.size() > 1 && prefix.back() == '/') {
    *why = "prefix '" + std::string(prefix) + "' must not end with '/'";
    return false;
  }
  if (prefix.size() > 256 || prefix.find("//") != std::string_view::npos ||
      !std::all_of(prefix.begin(), prefix.end(), [](char c) { return c > ' ' && c < 0x7f; })) {
    *why = "prefix '" + std::string(prefix) + "': at most 256 printable characters, no '//'";
    return false;
  }
  return true;
}

std::optional<EtcdUri> parse_etcd_uri(std::string_view uri, std::string* why) {
  if (!is_etcd_uri(uri)) {
    *why = "expected etcd://HOST:PORT[,HOST:PORT]/PREFIX";
    return std::nullopt;
  }
  std::string_view rest = uri.substr(kEtcdScheme.size());
  auto slash = rest.find('/');
  std::string_view hosts = rest.substr(0, slash);
  EtcdUri out;
  out.prefix =
      slash == std::string_view::npos ? std::string(kDefaultEtcdPrefix) : std::string(rest.substr(slash));
  if (out.prefix == "/") out.prefix = std::string(kDefaultEtcdPrefix);
  size_t start = 0;
  while (start <= hosts.size()) {
    auto comma = hosts.find(',', start);
    std::string_view h = hosts.substr(start, comma == std::string_view::npos ? hosts.npos : comma - start);
    start = comma == std::string_view::npos ? hosts.size() + 1 : comma + 1;
    auto colon = h.rfind(':');
    bool port_ok = colon != std::string_view::npos && colon > 0 && colon + 1 < h.size() &&
                   std::all_of(h.begin() + colon + 1, h.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!port_ok) {
      *why = "endpoint '" + std::string(h) + "' is not HOST:PORT (etcd://HOST:PORT[,HOST:PORT]/PREFIX)";
      return std::nullopt;
    }
    out.endpoints.emplace_back(h);
  }
  if (!valid_etcd_prefix(out.prefix, why)) return std::nullopt;
  return out;
}

}  // namespace sshring::policy
