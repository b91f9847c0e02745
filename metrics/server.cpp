// Prometheus exposition: one prometheus-cpp Exposer, the control-plane Registry and scrape-time
// collectors that sum per-worker LocalCounters.
#include "metrics/server.h"

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>

#include <mutex>
#include <stdexcept>

#include "common/sockaddr.h"

#ifndef SSHRING_METRICS_VERSION
#define SSHRING_METRICS_VERSION "unknown"
#endif

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
  std::unique_ptr<prometheus::Exposer> exposer;
};

Server::Server(const std::string& listen, std::string component)
    : impl_(std::make_unique<Impl>()), registry_(std::make_shared<prometheus::Registry>()) {
  // Validate here so the error names the flag's form rather than a civetweb message.
  auto addr = common::SockAddr::parse(listen);
  if (!addr) {
    throw std::runtime_error("metrics listen address '" + listen +
                             "' is not ADDR:PORT (e.g. 127.0.0.1:9100 or [::1]:9100)");
  }
  try {
    // civetweb takes "[::1]:9100" for IPv6 and "127.0.0.1:9100" for IPv4, the same forms we accept.
    impl_->exposer = std::make_unique<prometheus::Exposer>(addr->to_string(), 1);
  } catch (const std::exception& e) {
    throw std::runtime_error("metrics: cannot listen on " + listen + ": " + e.what() +
                             " (is the port in use or the address not local?)");
  }
  prometheus::BuildGauge()
      .Name("sshring_build_info")
      .Help("Build information; always 1.")
      .Register(*registry_)
      .Add({{"version", SSHRING_METRICS_VERSION}, {"component", std::move(component)}})
      .Set(1);
  impl_->exposer->RegisterCollectable(registry_);
  impl_->exposer->RegisterCollectable(impl_->collectors);
}

Server::~Server() {
  // Stop serving before the registry and collectors (and whatever they read) go away.
  impl_->exposer.reset();
}

void Server::add_collector(Collector fn) {
  impl_->collectors->add(std::move(fn));
}

uint16_t Server::port() const {
  auto ports = impl_->exposer->GetListeningPorts();
  return ports.empty() ? 0 : static_cast<uint16_t>(ports.front());
}

}  // namespace sshring::metrics
