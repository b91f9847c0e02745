// Name resolution off the relay's event loop: c-ares driven by one resolver thread. Results are
// delivered on that thread; the handshake hands them back to its worker with HandshakeContext::post.
#pragma once

#include <ares.h>

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/sockaddr.h"
#include "common/unique_fd.h"

namespace sshring::relay::auth {

class Resolver {
 public:
  // `error` is empty on success; `addrs` have `port` set, in resolver order (never empty on success).
  using Callback = std::function<void(std::string error, std::vector<common::SockAddr> addrs)>;
  virtual ~Resolver() = default;
  // Never blocks and never throws; `cb` runs exactly once, on another thread or (for immediate
  // failures) inline.
  virtual void resolve(std::string name, uint16_t port, Callback cb) = 0;
};

struct ResolverOptions {
  std::chrono::milliseconds timeout{2000};  // per try
  int tries = 2;
  size_t max_pending = 4096;  // queued + in flight; beyond it requests fail at once
  // Fixed answers checked before DNS and /etc/hosts (name -> IP literals). Lets an operator pin
  // names, and lets tests resolve names without touching the system's resolver configuration.
  std::map<std::string, std::vector<std::string>, std::less<>> static_hosts;
};

class AresResolver : public Resolver {
 public:
  // Throws std::runtime_error if c-ares cannot be initialised (control plane).
  explicit AresResolver(ResolverOptions opts = {});
  ~AresResolver() override;  // fails pending requests ("resolver stopped") and joins the thread
  AresResolver(const AresResolver&) = delete;
  AresResolver& operator=(const AresResolver&) = delete;

  void resolve(std::string name, uint16_t port, Callback cb) override;

 private:
  struct Request {
    std::string name;
    uint16_t port;
    Callback cb;
  };
  void run();
  static void on_result(void* arg, int status, int timeouts, ares_addrinfo* res);

  ResolverOptions opts_;
  ares_channel channel_ = nullptr;
  common::UniqueFd wake_;  // eventfd
  std::mutex mu_;
  std::deque<Request> queue_;
  size_t pending_ = 0;  // queued + in flight (guarded by mu_)
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace sshring::relay::auth
