#include "relay/auth/resolver.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "common/error.h"

namespace sshring::relay::auth {
namespace {

std::once_flag g_ares_init;

struct InFlight {
  AresResolver* self;
  uint16_t port;
  Resolver::Callback cb;
};

}  // namespace

AresResolver::AresResolver(ResolverOptions opts) : opts_(std::move(opts)) {
  std::call_once(g_ares_init, [] { ares_library_init(ARES_LIB_INIT_ALL); });
  ares_options o{};
  o.timeout = static_cast<int>(opts_.timeout.count());
  o.tries = opts_.tries;
  int rc = ares_init_options(&channel_, &o, ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
  if (rc != ARES_SUCCESS) throw std::runtime_error(std::string("c-ares init: ") + ares_strerror(rc));
  wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_) {
    ares_destroy(channel_);
    common::throw_errno("eventfd (resolver)");
  }
  // The resolver thread takes no signals: the process's signal handling stays with its owner.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  thread_ = std::thread([this] { run(); });
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

AresResolver::~AresResolver() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof(one));
  thread_.join();
  ares_destroy(channel_);  // runs the callbacks of requests still in flight with ARES_EDESTRUCTION
}

void AresResolver::resolve(std::string name, uint16_t port, Callback cb) {
  // Pinned names and IP literals need no DNS; answer them on the caller's thread.
  if (auto it = opts_.static_hosts.find(name); it != opts_.static_hosts.end()) {
    std::vector<common::SockAddr> out;
    for (const auto& ip : it->second)
      if (auto a = common::SockAddr::from_ip(ip, port)) out.push_back(*a);
    if (out.empty()) return cb("no usable address for " + name, {});
    return cb({}, std::move(out));
  }
  {
    std::lock_guard lock(mu_);
    if (stop_) return cb("resolver stopped", {});
    if (pending_ >= opts_.max_pending) return cb("resolver overloaded", {});
    ++pending_;
    queue_.push_back(Request{std::move(name), port, std::move(cb)});
  }
  uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof(one));
}

void AresResolver::on_result(void* arg, int status, int /*timeouts*/, ares_addrinfo* res) {
  std::unique_ptr<InFlight> f(static_cast<InFlight*>(arg));
  std::vector<common::SockAddr> out;
  std::string error;
  if (status == ARES_SUCCESS && res != nullptr) {
    for (auto* n = res->nodes; n != nullptr; n = n->ai_next) {
      if (n->ai_family != AF_INET && n->ai_family != AF_INET6) continue;
      common::SockAddr a(n->ai_addr, static_cast<socklen_t>(n->ai_addrlen));
      a.set_port(f->port);
      out.push_back(a);
    }
    if (out.empty()) error = "no address";
  } else {
    error = ares_strerror(status);
  }
  if (res != nullptr) ares_freeaddrinfo(res);
  {
    std::lock_guard lock(f->self->mu_);
    --f->self->pending_;
  }
  f->cb(std::move(error), std::move(out));
}

void AresResolver::run() {
  for (;;) {
    std::deque<Request> batch;
    {
      std::lock_guard lock(mu_);
      if (stop_) {
        batch.swap(queue_);
        pending_ -= batch.size();
        for (auto& r : batch) r.cb("resolver stopped", {});
        return;
      }
      batch.swap(queue_);
    }
    for (auto& r : batch) {
      ares_addrinfo_hints hints{};
      hints.ai_family = AF_UNSPEC;
      hints.ai_socktype = SOCK_STREAM;
      auto* f = new InFlight{this, r.port, std::move(r.cb)};
      ares_getaddrinfo(channel_, r.name.c_str(), nullptr, &hints, &AresResolver::on_result, f);
    }

    ares_socket_t socks[ARES_GETSOCK_MAXNUM];
    int bits = ares_getsock(channel_, socks, ARES_GETSOCK_MAXNUM);
    pollfd pfds[ARES_GETSOCK_MAXNUM + 1];
    nfds_t n = 0;
    pfds[n++] = pollfd{wake_.get(), POLLIN, 0};
    for (int i = 0; i < ARES_GETSOCK_MAXNUM; ++i) {
      short ev = 0;
      if (ARES_GETSOCK_READABLE(bits, i)) ev |= POLLIN;
      if (ARES_GETSOCK_WRITABLE(bits, i)) ev |= POLLOUT;
      if (ev) pfds[n++] = pollfd{socks[i], ev, 0};
    }
    timeval max_tv{1, 0};
    timeval tv{};
    timeval* t = ares_timeout(channel_, &max_tv, &tv);
    int timeout_ms = static_cast<int>(t->tv_sec * 1000 + t->tv_usec / 1000);
    int rc = ::poll(pfds, n, timeout_ms);
    if (rc < 0 && errno != EINTR) continue;
    if (pfds[0].revents & POLLIN) {
      uint64_t v;
      (void)!::read(wake_.get(), &v, sizeof(v));
    }
    bool any = false;
    for (nfds_t i = 1; i < n; ++i) {
      if (pfds[i].revents == 0) continue;
      any = true;
      ares_socket_t rfd = (pfds[i].revents & (POLLIN | POLLERR | POLLHUP)) ? pfds[i].fd : ARES_SOCKET_BAD;
      ares_socket_t wfd = (pfds[i].revents & POLLOUT) ? pfds[i].fd : ARES_SOCKET_BAD;
      ares_process_fd(channel_, rfd, wfd);
    }
    if (!any) ares_process_fd(channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // timeouts
  }
}

}  // namespace sshring::relay::auth
