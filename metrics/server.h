// Prometheus exposition for relay and agent (prometheus-cpp pull exposer).
//
// Contract used by relay/ and bpf/: data-path counters are plain per-worker `LocalCounter`s (single
// writer, relaxed atomics, no lock, no shared cache line); a collector registered with
// `Server::add_collector` sums them at scrape time on the exposer's thread.
#pragma once

#include <prometheus/family.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace sshring::metrics {

// A counter written by exactly one thread and read by the scraper: no read-modify-write, no lock.
class LocalCounter {
 public:
  void add(uint64_t n = 1) noexcept {
    v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  [[nodiscard]] uint64_t value() const noexcept { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> v_{0};
};

// A gauge written by one thread (e.g. a worker's active sessions).
class LocalGauge {
 public:
  void set(int64_t v) noexcept { v_.store(v, std::memory_order_relaxed); }
  void add(int64_t d) noexcept {
    v_.store(v_.load(std::memory_order_relaxed) + d, std::memory_order_relaxed);
  }
  [[nodiscard]] int64_t value() const noexcept { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> v_{0};
};

using Labels = std::map<std::string, std::string>;
using Collector = std::function<std::vector<prometheus::MetricFamily>()>;

// Scrape-time family builders for collectors.
prometheus::MetricFamily counter_family(std::string name, std::string help);
prometheus::MetricFamily gauge_family(std::string name, std::string help);
void add_sample(prometheus::MetricFamily& family, const Labels& labels, double value);

class Server {
 public:
  // Binds "ADDR:PORT" ("[::1]:9100" for IPv6; port 0 picks one, see port()). Registers
  // sshring_build_info{version,component}. Throws std::runtime_error naming the address on failure.
  Server(const std::string& listen, std::string component);
  // Families and collectors can be registered at once; scrapes are served only after listen()
  // (a relay taking over binds the port once the old process let go of it).
  explicit Server(std::string component);
  // Starts serving on "ADDR:PORT" (once). Throws std::runtime_error like the constructor.
  void listen(const std::string& listen);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Ordinary prometheus-cpp families for the control plane (reloads, grants, histograms).
  prometheus::Registry& registry() { return *registry_; }
  // Registers a scrape-time collector; it runs on the exposer thread and must only read atomics or
  // data it synchronizes itself.
  void add_collector(Collector fn);
  [[nodiscard]] uint16_t port() const;  // 0 once stopped
  // Stops serving scrapes (idempotent). Families and collectors stay registered, so control-plane
  // code may still update them; what collectors read may be freed after this returns.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::shared_ptr<prometheus::Registry> registry_;
};

}  // namespace sshring::metrics
