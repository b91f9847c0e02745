// Prometheus exposition: one prometheus-cpp Exposer, the control-plane Registry and scrape-time
// collectors that sum per-worker LocalCounters.
#include "metrics/server.h"

#include <poll.h>
#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/text_serializer.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "common/error.h"
#include "common/sockaddr.h"
#include "common/unique_fd.h"
#include "common/version.h"

namespace sshring::metrics {

namespace {

// Adapts scrape-time collector functions to prometheus-cpp's Collectable. Collectors may be added
// after the exposer started serving, so the list is guarded (the lock is on the scrape path only).
class CollectorSet : public prometheus::Collectable {
 public:
  void add(Collector fn) {
    std::lock_guard lock(mu_);
    fns_.push_back(std::move(fn));
  }
  std::vector<prometheus::MetricFamily> Collect() const override {
    std::lock_guard lock(mu_);
    std::vector<prometheus::MetricFamily> out;
    for (const auto& fn : fns_) {
      auto fams = fn();
      for (auto& f : fams) out.push_back(std::move(f));
    }
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::vector<Collector> fns_;
};

prometheus::MetricFamily family(std::string name, std::string help, prometheus::MetricType type) {
  prometheus::MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

// Debian's civetweb is built without IPv6, so the Exposer cannot bind "[::1]:9100". For IPv6 addresses
// we serve GET /metrics ourselves: one thread, one connection at a time (Prometheus scrapes rarely),
// bounded request size and a receive timeout so a stuck client cannot hold the endpoint.
class Ipv6Endpoint {
 public:
  using Render = std::function<std::string()>;

  Ipv6Endpoint(const common::SockAddr& addr, Render render) : render_(std::move(render)) {
    listen_.reset(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listen_) common::throw_errno("socket");
    int one = 1;
    ::setsockopt(listen_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    ::setsockopt(listen_.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (::bind(listen_.get(), addr.get(), addr.len()) != 0) common::throw_errno("bind " + addr.to_string());
    if (::listen(listen_.get(), 16) != 0) common::throw_errno("listen " + addr.to_string());
    common::SockAddr bound;
    *bound.len_mut() = common::SockAddr::kCapacity;
    if (::getsockname(listen_.get(), bound.get_mut(), bound.len_mut()) != 0)
      common::throw_errno("getsockname");
    port_ = bound.port();
    wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_) common::throw_errno("eventfd");
    thread_ = std::thread([this] { loop(); });
  }
  ~Ipv6Endpoint() {
    uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof(one));
    thread_.join();
  }
  Ipv6Endpoint(const Ipv6Endpoint&) = delete;
  Ipv6Endpoint& operator=(const Ipv6Endpoint&) = delete;

  [[nodiscard]] uint16_t port() const { return port_; }

 private:
  void loop() {
    while (true) {
      pollfd fds[2] = {{listen_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fds[1].revents) return;
      common::UniqueFd conn(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (conn) serve(conn.get());
    }
  }

  void serve(int fd) {
    timeval tv{2, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    std::string req;
    char buf[2048];
    while (req.find("\r\n\r\n") == std::string::npos && req.size() < 8192) {
      ssize_t n = ::read(fd, buf, sizeof(buf));
      if (n <= 0) return;
      req.append(buf, static_cast<size_t>(n));
    }
    std::string status = "200 OK", body;
    std::string type = "text/plain; version=0.0.4; charset=utf-8";
    if (req.rfind("GET ", 0) != 0) {
      status = "405 Method Not Allowed";
    } else if (req.rfind("GET /metrics ", 0) != 0 && req.rfind("GET /metrics?", 0) != 0) {
      status = "404 Not Found";
      type = "text/plain";
      body = "not found: use /metrics\n";
    } else {
      body = render_();
    }
    std::string resp = "HTTP/1.1 " + status + "\r\nContent-Type: " + type +
                       "\r\nContent-Length: " + std::to_string(body.size()) +
                       "\r\nConnection: close\r\n\r\n" + body;
    std::string_view rest = resp;
    while (!rest.empty()) {
      ssize_t n = ::send(fd, rest.data(), rest.size(), MSG_NOSIGNAL);
      if (n <= 0) return;
      rest.remove_prefix(static_cast<size_t>(n));
    }
  }

  Render render_;
  common::UniqueFd listen_, wake_;
  uint16_t port_ = 0;
  std::thread thread_;
};

}  // namespace

prometheus::MetricFamily counter_family(std::string name, std::string help) {
  return family(std::move(name), std::move(help), prometheus::MetricType::Counter);
}

prometheus::MetricFamily gauge_family(std::string name, std::string help) {
  return family(std::move(name), std::move(help), prometheus::MetricType::Gauge);
}

void add_sample(prometheus::MetricFamily& family, const Labels& labels, double value) {
  prometheus::ClientMetric m;
  for (const auto& [k, v] : labels) m.label.push_back({k, v});
  switch (family.type) {
    case prometheus::MetricType::Counter:
      m.counter.value = value;
      break;
    case prometheus::MetricType::Gauge:
      m.gauge.value = value;
      break;
    default:
      m.untyped.value = value;
      break;
  }
  family.metric.push_back(std::move(m));
}

struct Server::Impl {
  std::shared_ptr<CollectorSet> collectors = std::make_shared<CollectorSet>();
  common::SockAddr addr;
  std::unique_ptr<prometheus::Exposer> exposer;  // IPv4
  std::unique_ptr<Ipv6Endpoint> ipv6;            // IPv6 (see Ipv6Endpoint)
};

Server::Server(const std::string& listen, std::string component) : Server(std::move(component)) {
  this->listen(listen);
}

Server::Server(std::string component)
    : impl_(std::make_unique<Impl>()), registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::BuildGauge()
      .Name("sshring_build_info")
      .Help("Build information; always 1.")
      .Register(*registry_)
      .Add({{"version", common::version()}, {"component", component}})
      .Set(1);
}

void Server::listen(const std::string& listen) {
  if (impl_->exposer || impl_->ipv6) throw std::runtime_error("metrics: already listening");
  // Validate here so the error names the flag's form rather than a civetweb message.
  auto addr = common::SockAddr::parse(listen);
  if (!addr) {
    throw std::runtime_error("metrics listen address '" + listen +
                             "' is not ADDR:PORT (e.g. 127.0.0.1:9100 or [::1]:9100)");
  }
  try {
    if (addr->family() == AF_INET6) {
      impl_->ipv6 =
          std::make_unique<Ipv6Endpoint>(*addr, [registry = registry_, collectors = impl_->collectors] {
            auto families = registry->Collect();
            for (auto& f : collectors->Collect()) families.push_back(std::move(f));
            return prometheus::TextSerializer().Serialize(families);
          });
    } else {
      impl_->exposer = std::make_unique<prometheus::Exposer>(addr->to_string(), 1);
      impl_->addr = *addr;
    }
  } catch (const std::exception& e) {
    throw std::runtime_error("metrics: cannot listen on " + listen + ": " + e.what() +
                             " (is the port in use or the address not local?)");
  }
  if (impl_->exposer) {
    impl_->exposer->RegisterCollectable(registry_);
    impl_->exposer->RegisterCollectable(impl_->collectors);
  }
}

Server::~Server() {
  stop();
}

void Server::stop() {
  // Stop serving before the registry and collectors (and whatever they read) go away.
  if (impl_->exposer) {
    // civetweb's accept loop re-checks its stop flag only after a 2 s poll timeout; connecting while
    // it stops wakes it at once, so a relay or agent shuts down without that delay.
    common::SockAddr target = impl_->addr;
    target.set_port(port());
    if (target.ip_string() == "0.0.0.0") target = *common::SockAddr::from_ip("127.0.0.1", target.port());
    std::atomic<bool> stopped{false};
    std::thread waker([&] {
      while (!stopped.load()) {
        common::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (fd) (void)::connect(fd.get(), target.get(), target.len());
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    });
    impl_->exposer.reset();
    stopped = true;
    waker.join();
  }
  impl_->ipv6.reset();
}

void Server::add_collector(Collector fn) {
  impl_->collectors->add(std::move(fn));
}

uint16_t Server::port() const {
  if (impl_->ipv6) return impl_->ipv6->port();
  if (!impl_->exposer) return 0;  // stopped
  auto ports = impl_->exposer->GetListeningPorts();
  return ports.empty() ? 0 : static_cast<uint16_t>(ports.front());
}

}  // namespace sshring::metrics
