#include "policy/local_addresses.h"

#include <ifaddrs.h>
#include <sys/socket.h>

#include <algorithm>

#include "common/error.h"

namespace sshring::policy {

std::vector<IpAddr> local_addresses() {
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) common::throw_errno("getifaddrs");
  std::vector<IpAddr> out;
  for (const ifaddrs* i = list; i; i = i->ifa_next) {
    if (!i->ifa_addr || (i->ifa_addr->sa_family != AF_INET && i->ifa_addr->sa_family != AF_INET6)) continue;
    if (auto a = IpAddr::from_sockaddr(i->ifa_addr)) out.push_back(*a);
  }
  ::freeifaddrs(list);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace sshring::policy
