#include "relay/relay.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>

#include "common/error.h"
#include "common/log.h"
#include "relay/worker.h"

namespace sshring::relay {

const char* end_reason_name(EndReason r) {
  auto i = static_cast<size_t>(r);
  return i < metrics::kNumSessionOutcomes ? metrics::kSessionOutcomes[i] : "unknown";
}

void validate(const RelayConfig& cfg) {
  if (cfg.routes.empty())
    throw common::UsageError("no routes: give --listen and --upstream, or a --config file with 'routes:'");
  for (size_t i = 0; i < cfg.routes.size(); ++i) {
    const Route& r = cfg.routes[i];
    std::string where = "route " + std::to_string(i + 1) + " (listen " + r.listen.to_string() + ")";
    if (r.listen.len() == 0)
      throw common::UsageError("route " + std::to_string(i + 1) + ": listen address missing");
    if (r.upstream.has_value() == (r.handshake != nullptr))
      throw common::UsageError(where + ": needs exactly one of a static upstream or a handshake");
    if (r.upstream && r.upstream->port() == 0)
      throw common::UsageError(where + ": upstream " + r.upstream->to_string() +
                               " has port 0; give a real port");
    for (size_t j = 0; j < i; ++j) {
      if (cfg.routes[j].listen.port() != 0 && cfg.routes[j].listen.to_string() == r.listen.to_string())
        throw common::UsageError(where + ": listen address repeats route " + std::to_string(j + 1));
    }
  }
  if (cfg.max_sessions == 0) throw common::UsageError("max_sessions must be at least 1");
  validate(cfg.startups);
  static_assert(kHandoverMaxWorkers == 256, "a hand-over accepts as many workers as a relay may run");
  if (cfg.workers > kHandoverMaxWorkers)
    throw common::UsageError("workers must be between 0 (one per CPU) and 256");
  if (cfg.connect_timeout.count() <= 0) throw common::UsageError("connect_timeout must be positive");
  if (cfg.handshake_timeout.count() <= 0) throw common::UsageError("handshake_timeout must be positive");
  if (cfg.idle_timeout.count() < 0) throw common::UsageError("idle_timeout must be 0 (none) or positive");
  if (cfg.pipe_size < 4096 || cfg.pipe_size > (1u << 30))
    throw common::UsageError("pipe_size must be 4096..1 GiB");
  if (cfg.ring_entries < 8 || cfg.ring_entries > 32768)
    throw common::UsageError("ring_entries must be between 8 and 32768");
}

namespace {

// One listener per worker and route; SO_REUSEPORT spreads connections across them.
common::UniqueFd bind_listener(const common::SockAddr& addr) {
  common::UniqueFd fd(::socket(addr.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) common::throw_errno("socket for listener " + addr.to_string());
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
    common::throw_errno("SO_REUSEPORT on " + addr.to_string());
  if (addr.family() == AF_INET6) ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (::bind(fd.get(), addr.get(), addr.len()) != 0) common::throw_errno("bind " + addr.to_string());
  if (::listen(fd.get(), 4096) != 0) common::throw_errno("listen " + addr.to_string());
  return fd;
}

// Binds `route.listen` once per worker; the first bind resolves port 0 for the others.
std::vector<common::UniqueFd> bind_all(const common::SockAddr& listen, unsigned n, common::SockAddr& bound) {
  std::vector<common::UniqueFd> fds;
  common::SockAddr addr = listen;
  for (unsigned w = 0; w < n; ++w) {
    fds.push_back(bind_listener(addr));
    if (w == 0) {
      common::SockAddr got;
      got.set_len(common::SockAddr::kCapacity);
      if (::getsockname(fds[0].get(), got.get_mut(), got.len_mut()) != 0) common::throw_errno("getsockname");
      addr = got;
      bound = got;
    }
  }
  return fds;
}

}  // namespace

struct DrainTimer {
  std::mutex mu;
  std::condition_variable cv;
  bool cancelled = false;
};

Relay::Relay(RelayConfig cfg) : cfg_(std::move(cfg)), timer_(std::make_unique<DrainTimer>()) {}

Relay::~Relay() {
  if (started_) {
    stop();
    wait();
  }
}

void Relay::prepare_start() {
  if (started_) throw common::UsageError("relay already started");
  validate(cfg_);
  // Writes to a peer that went away must fail with EPIPE, not kill the process.
  (void)::signal(SIGPIPE, SIG_IGN);
  // The pre-authentication budget (--max-startups, the per-source cap, the first-byte timeout): every
  // way of starting goes through here, so no start path can leave the front door without it.
  if (!cfg_.admission) cfg_.admission = std::make_shared<Admission>(cfg_.startups);
}

void Relay::start() {
  prepare_start();
  unsigned n = cfg_.workers ? cfg_.workers : std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::vector<common::UniqueFd>> fds;  // [route][worker]
  bound_.clear();
  for (const Route& r : cfg_.routes) {
    common::SockAddr b;
    fds.push_back(bind_all(r.listen, n, b));
    bound_.push_back(b);
  }
  for (unsigned w = 0; w < n; ++w) {
    auto worker = std::make_unique<Worker>(w, n, cfg_);
    for (size_t i = 0; i < cfg_.routes.size(); ++i)
      worker->add_listener(cfg_.routes[i], bound_[i], std::move(fds[i][w]));
    workers_.push_back(std::move(worker));
  }
  launch();
}

void Relay::launch() {
  for (auto& w : workers_) threads_.emplace_back([wp = w.get()] { wp->run(); });
  started_ = true;
  for (auto& w : workers_) {
    w->wait_ready();
    if (int err = w->setup_error()) {
      stop();
      wait();
      common::throw_errno("io_uring setup for relay worker", err);
    }
  }
  removed_.assign(cfg_.routes.size(), false);
  table_ = cfg_.routes;
}

std::optional<RelayExport> Relay::park_for_handover(std::chrono::milliseconds timeout) {
  struct Collect {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<Worker::Parked> parked;
  };
  auto c = std::make_shared<Collect>();
  for (auto& w : workers_)
    w->request_park([c](Worker::Parked p) {
      std::lock_guard lk(c->mu);
      c->parked.push_back(std::move(p));
      c->cv.notify_all();
    });
  std::unique_lock lk(c->mu);
  if (!c->cv.wait_for(lk, timeout, [&] { return c->parked.size() == workers_.size(); })) {
    lk.unlock();
    resume_after_handover();
    return std::nullopt;
  }
  RelayExport out;
  out.workers = static_cast<uint32_t>(workers_.size());
  for (auto& p : c->parked) {
    out.next_seq = std::max(out.next_seq, p.seq);
    for (auto& l : p.listeners) out.listeners.push_back(std::move(l));
    for (auto& s : p.sessions) out.sessions.push_back(std::move(s));
  }
  // Every worker is parked: no HELLO is being checked, so each replay cache is complete.
  std::vector<const HandshakeFactory*> seen;
  for (size_t i = 0; i < table_.size(); ++i) {
    const HandshakeFactory* h = table_[i].handshake.get();
    if (removed_[i] || !h || std::find(seen.begin(), seen.end(), h) != seen.end()) continue;
    seen.push_back(h);
    if (auto parts = h->handover_replay(); !parts.empty())
      out.replay.push_back({bound_[i].to_string(), std::move(parts)});
  }
  return out;
}

void Relay::resume_after_handover() {
  for (auto& w : workers_) w->request_resume();
}

void Relay::commit_handover() {
  draining_ = true;
  for (auto& w : workers_) w->request_commit();
}

namespace {

// The route slot a handed-over listener or session belongs to: same bound address.
size_t route_of(const std::vector<Route>& routes, const std::vector<common::SockAddr>& bound,
                const std::string& addr) {
  for (size_t i = 0; i < routes.size(); ++i)
    if (bound[i].to_string() == addr || routes[i].listen.to_string() == addr) return i;
  return routes.size();
}

}  // namespace

void Relay::start_from(RelayExport in) {
  prepare_start();
  const unsigned n = in.workers ? in.workers : 1;
  // [route][worker]: the old process's listener, else a new one in the same SO_REUSEPORT group.
  std::vector<std::vector<common::UniqueFd>> fds(cfg_.routes.size());
  for (auto& row : fds) row.resize(n);
  bound_.clear();
  for (const Route& r : cfg_.routes) bound_.push_back(r.listen);
  for (auto& l : in.listeners) {
    size_t i = route_of(cfg_.routes, bound_, l.route);
    if (i == cfg_.routes.size() || l.worker >= n) {
      common::log_warn("hand-over: closing a listener this configuration has no route for",
                       {{"listen", l.route}});
      continue;
    }
    fds[i][l.worker] = std::move(l.fd);
  }
  for (size_t i = 0; i < cfg_.routes.size(); ++i)
    for (unsigned w = 0; w < n; ++w)
      if (!fds[i][w]) fds[i][w] = bind_listener(bound_[i]);
  for (unsigned w = 0; w < n; ++w) {
    auto worker = std::make_unique<Worker>(w, n, cfg_);
    for (size_t i = 0; i < cfg_.routes.size(); ++i)
      worker->add_listener(cfg_.routes[i], bound_[i], std::move(fds[i][w]));
    worker->set_seq(in.next_seq);
    worker->hold();
    workers_.push_back(std::move(worker));
  }
  for (auto& s : in.sessions) {
    size_t i = route_of(cfg_.routes, bound_, s.route);
    if (i == cfg_.routes.size())
      throw common::UsageError(
          "hand-over: a session arrived on " + s.route +
          ", a route this relay does not have (give the same --listen/--config as the running relay)");
    std::unique_ptr<Handshake> hs;
    if (cfg_.routes[i].handshake) {
      hs = cfg_.routes[i].handshake->adopt(s.id, s.client_addr, s.listen_addr, s.handshake);
      if (!hs)
        throw common::UsageError("hand-over: cannot read the handshake state of session " +
                                 std::to_string(s.id) + " on " + s.route +
                                 " (an authenticated route needs --policy, as the running relay has)");
    }
    uint32_t w = s.worker % n;
    workers_[w]->add_import(std::move(s), static_cast<uint32_t>(i), std::move(hs));
  }
  adopt_replay(in);
  launch();
}

void Relay::adopt_replay(const RelayExport& in) {
  // By route; a route this relay lacks hands its cache to the first authenticated route here (the
  // CLI shares one handshake factory, so one cache, between all of them).
  std::vector<HandshakeFactory*> adopted;
  auto first_auth = [&]() -> HandshakeFactory* {
    for (const Route& r : cfg_.routes)
      if (r.handshake) return r.handshake.get();
    return nullptr;
  };
  for (const ReplayExport& r : in.replay) {
    const size_t i = route_of(cfg_.routes, bound_, r.route);
    HandshakeFactory* h =
        i < cfg_.routes.size() && cfg_.routes[i].handshake ? cfg_.routes[i].handshake.get() : first_auth();
    if (!h) continue;  // no authenticated route here: nothing to protect
    if (std::find(adopted.begin(), adopted.end(), h) != adopted.end()) {
      common::log_warn("hand-over: a second replay cache for one handshake; keeping the first",
                       {{"listen", r.route}});
      continue;
    }
    if (!h->adopt_replay(r.parts))
      throw common::UsageError("hand-over: cannot read the replay cache state of " + r.route);
    adopted.push_back(h);
  }
  if (in.state_version < 2 && first_auth()) {
    common::log_warn(
        "hand-over: the running relay hands over no replay cache (state version 1): HELLOs timestamped "
        "before now are refused (stale), as after a restart");
    for (const Route& r : cfg_.routes)
      if (r.handshake) r.handshake->refuse_hellos_from_before_start();
  }
}

std::vector<common::SockAddr> Relay::listen_addresses() const {
  std::vector<common::SockAddr> out;
  for (size_t i = 0; i < table_.size(); ++i)
    if (!removed_[i]) out.push_back(bound_[i]);
  return out;
}

void Relay::begin_drain() {
  if (!started_ || draining_.exchange(true)) return;
  for (auto& w : workers_) w->request_drain();
  auto deadline = cfg_.drain_timeout;
  DrainTimer& t = *timer_;
  drain_timer_ = std::thread([this, deadline, &t] {
    std::unique_lock lk(t.mu);
    if (t.cv.wait_for(lk, deadline, [&] { return t.cancelled; })) return;
    lk.unlock();
    common::log_warn("drain deadline reached: closing remaining sessions");
    for (auto& w : workers_) w->request_stop();
  });
}

void Relay::stop() {
  if (!started_) return;
  draining_ = true;
  for (auto& w : workers_)
    if (!w->exited()) w->request_stop();
}

void Relay::wait() {
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  if (drain_timer_.joinable()) {
    DrainTimer& t = *timer_;
    {
      std::lock_guard lk(t.mu);
      t.cancelled = true;
    }
    t.cv.notify_all();
    drain_timer_.join();
  }
}

bool Relay::finished() const {
  for (auto& w : workers_)
    if (!w->exited()) return false;
  return started_;
}

void Relay::reload(RelayConfig cfg) {
  validate(cfg);
  if (!started_) {
    cfg_ = std::move(cfg);
    return;
  }
  // Startups in progress stay counted across reloads. A started relay always has its admission
  // (prepare_start); should it not, the reload creates one rather than following a null pointer.
  cfg.admission = cfg_.admission;
  if (cfg.admission)
    cfg.admission->configure(cfg.startups);
  else
    cfg.admission = std::make_shared<Admission>(cfg.startups);
  unsigned n = static_cast<unsigned>(workers_.size());
  std::vector<Route> table = table_;
  std::vector<bool> removed = removed_;
  std::vector<common::SockAddr> bound = bound_;
  std::vector<bool> seen(table.size(), false);
  std::vector<std::vector<common::UniqueFd>> new_fds;  // per added route, per worker
  std::vector<size_t> added_index;
  for (const Route& r : cfg.routes) {
    size_t found = table.size();
    for (size_t i = 0; i < table.size(); ++i) {
      if (removed[i] || seen[i] || r.listen.port() == 0) continue;
      // A route keeps its listener when its listen address is unchanged (or names the port bound for 0).
      if (table[i].listen.to_string() == r.listen.to_string() ||
          bound[i].to_string() == r.listen.to_string()) {
        found = i;
        break;
      }
    }
    if (found < table.size()) {
      Route keep = r;
      keep.listen = table[found].listen;
      table[found] = keep;
      seen[found] = true;
      continue;
    }
    common::SockAddr b;
    new_fds.push_back(bind_all(r.listen, n, b));  // throws before anything changed
    added_index.push_back(table.size());
    table.push_back(r);
    removed.push_back(false);
    bound.push_back(b);
  }
  for (size_t i = 0; i < seen.size(); ++i)
    if (!seen[i]) removed[i] = true;
  for (unsigned w = 0; w < n; ++w) {
    auto added = std::make_shared<std::vector<RouteSlot>>();
    for (size_t k = 0; k < added_index.size(); ++k) {
      RouteSlot slot;
      slot.route = table[added_index[k]];
      slot.bound = bound[added_index[k]];
      slot.listen_fd = std::move(new_fds[k][w]);
      added->push_back(std::move(slot));
    }
    workers_[w]->request_reload(cfg, table, removed, added);
  }
  table_ = std::move(table);
  removed_ = std::move(removed);
  bound_ = std::move(bound);
  auto routes = std::move(cfg.routes);
  if (!cfg.on_session_end) cfg.on_session_end = std::move(cfg_.on_session_end);  // workers keep theirs too
  cfg_ = std::move(cfg);
  cfg_.routes = std::move(routes);
}

std::vector<const metrics::RelayWorkerStats*> Relay::stats() const {
  std::vector<const metrics::RelayWorkerStats*> out;
  for (auto& w : workers_) out.push_back(&w->stats());
  return out;
}

int64_t Relay::sessions_active() const {
  int64_t n = 0;
  for (auto& w : workers_) n += w->stats().sessions_active.value();
  return n;
}

uint64_t Relay::sessions_total(EndReason r) const {
  uint64_t n = 0;
  for (auto& w : workers_) n += w->stats().sessions_total[static_cast<size_t>(r)].value();
  return n;
}

int64_t Relay::pipes_in_use() const {
  int64_t n = 0;
  for (auto& w : workers_) n += w->stats().pipes_in_use.value();
  return n;
}

}  // namespace sshring::relay
