#include "tests/metrics/scrape.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sstream>
#include <stdexcept>

#include "common/sockaddr.h"
#include "common/unique_fd.h"

namespace sshring::metrics::testing {

std::string http_get(const std::string& host, uint16_t port, const std::string& path) {
  auto addr = common::SockAddr::from_ip(host, port);
  if (!addr) throw std::runtime_error("bad host " + host);
  common::UniqueFd fd(::socket(addr->family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd || ::connect(fd.get(), addr->get(), addr->len()) != 0) {
    throw std::runtime_error("connect " + addr->to_string() + " failed");
  }
  std::string req = "GET " + path + " HTTP/1.0\r\nHost: " + host + "\r\n\r\n";
  if (::write(fd.get(), req.data(), req.size()) != static_cast<ssize_t>(req.size()))
    throw std::runtime_error("write");
  // Read until Content-Length is satisfied: civetweb lingers before closing, so EOF comes late.
  std::string resp;
  char buf[8192];
  size_t want = std::string::npos;
  size_t hdr_end = std::string::npos;
  while (want == std::string::npos || resp.size() < want) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n <= 0) break;
    resp.append(buf, static_cast<size_t>(n));
    if (hdr_end == std::string::npos && (hdr_end = resp.find("\r\n\r\n")) != std::string::npos) {
      auto cl = resp.find("Content-Length: ");
      if (cl != std::string::npos && cl < hdr_end) want = hdr_end + 4 + std::stoul(resp.substr(cl + 16));
    }
  }
  if (hdr_end == std::string::npos) throw std::runtime_error("no HTTP header in response");
  if (resp.find(" 200 ") == std::string::npos || resp.find(" 200 ") > resp.find("\r\n")) {
    throw std::runtime_error("HTTP status: " + resp.substr(0, resp.find("\r\n")));
  }
  return resp.substr(hdr_end + 4);
}

std::map<std::string, double> parse_samples(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    auto sp = line.rfind(' ');
    if (sp == std::string::npos) continue;
    std::string value = line.substr(sp + 1);
    double v = value == "+Inf" ? 1.0 / 0.0 : std::stod(value);
    out[line.substr(0, sp)] = v;
  }
  return out;
}

std::map<std::string, std::string> parse_types(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("# TYPE ", 0) != 0) continue;
    std::istringstream ls(line.substr(7));
    std::string name, type;
    ls >> name >> type;
    out[name] = type;
  }
  return out;
}

std::optional<double> sample(const std::string& text, const std::string& key) {
  auto all = parse_samples(text);
  auto it = all.find(key);
  if (it == all.end()) return std::nullopt;
  return it->second;
}

}  // namespace sshring::metrics::testing
