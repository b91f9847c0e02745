#include "relay/worker.h"

#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <exception>
#include <utility>

#include "common/clock.h"
#include "common/error.h"
#include "common/log.h"
#include "common/session_id.h"

namespace sshring::relay {
namespace {

constexpr uint64_t kTickNs = 100'000'000;  // timeouts (idle, handshake) are checked this often
constexpr int kInlineBudget = 8;           // splice rounds per direction per event (fairness)
constexpr unsigned kSpliceFlags = SPLICE_F_NONBLOCK | SPLICE_F_MOVE;

uint64_t mono_ns() {
  return static_cast<uint64_t>(common::clock_ns(CLOCK_MONOTONIC));
}

__kernel_timespec to_kts(uint64_t ns) {
  __kernel_timespec ts{};
  ts.tv_sec = static_cast<int64_t>(ns / 1'000'000'000ull);
  ts.tv_nsec = static_cast<long long>(ns % 1'000'000'000ull);
  return ts;
}

void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// Makes close() send RST instead of FIN, so the peer sees a reset rather than a clean EOF.
void set_rst_on_close(int fd) {
  linger l{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
}

bool is_fd_exhaustion(int err) {
  return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

uint64_t ms_to_ns(std::chrono::milliseconds ms) {
  return static_cast<uint64_t>(ms.count()) * 1'000'000ull;
}

}  // namespace

int PipePool::acquire(PipePair& out) {
  if (!free_.empty()) {
    out = std::move(free_.back());
    free_.pop_back();
    ++in_use_;
    return 0;
  }
  int fds[2];
  if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return -errno;
  out.r.reset(fds[0]);
  out.w.reset(fds[1]);
  // Larger pipes mean fewer splices per GB. The kernel may refuse (per-user pipe page limit):
  // keep whatever size it granted.
  int got = ::fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(pipe_size_));
  if (got < 0) got = ::fcntl(fds[1], F_GETPIPE_SZ);
  out.capacity = got > 0 ? static_cast<uint32_t>(got) : 65536u;
  ++in_use_;
  return 0;
}

void PipePool::release(PipePair& p, bool clean) {
  if (!p.valid()) return;
  --in_use_;
  // Either way the session's slot is left empty (no descriptors, no capacity).
  PipePair taken = std::exchange(p, PipePair{});
  if (clean && free_.size() < keep_) free_.push_back(std::move(taken));
}

Worker::Limits Worker::limits_from(const RelayConfig& cfg, unsigned nworkers) {
  Limits l;
  l.max_sessions = (cfg.max_sessions + nworkers - 1) / nworkers;
  l.connect_timeout_ns = ms_to_ns(cfg.connect_timeout);
  l.idle_timeout_ns = ms_to_ns(cfg.idle_timeout);
  l.handshake_timeout_ns = ms_to_ns(cfg.handshake_timeout);
  l.first_byte_timeout_ns = ms_to_ns(cfg.startups.first_byte_timeout);
  return l;
}

Worker::Worker(unsigned index, unsigned nworkers, const RelayConfig& cfg)
    : index_(index),
      nworkers_(nworkers),
      cfg_(cfg),
      limits_(limits_from(cfg, nworkers)),
      pipes_(cfg.pipe_size, cfg.pipe_pool) {
  cfg_.routes.clear();
  int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) common::throw_errno("eventfd for relay worker");
  wake_fd_.reset(fd);
}

Worker::~Worker() {
  // Sessions first: their handshakes mark themselves ended, so an off-loop answer (resolver, nonce
  // claim) arriving now posts nothing; post_mu_ and posted_ would otherwise go before them.
  slots_.clear();
}

void Worker::add_listener(const Route& route, const common::SockAddr& bound, common::UniqueFd fd) {
  RouteSlot slot;
  slot.route = route;
  slot.bound = bound;
  slot.listen_fd = std::move(fd);
  routes_.push_back(std::move(slot));
}

void Worker::wait_ready() {
  std::unique_lock lk(ready_mu_);
  ready_cv_.wait(lk, [&] { return ready_; });
}

void Worker::post(std::function<void()> fn) {
  {
    std::lock_guard lk(post_mu_);
    posted_.push_back(std::move(fn));
  }
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof(one));
}

void Worker::request_drain() {
  post([this] {
    draining_ = true;
    close_listeners();
  });
}

void Worker::request_stop() {
  post([this] { stop_now(); });
}

void Worker::stop_now() {
  // During a hand-over the sessions are the hand-over's (parked, it may be sending their
  // descriptors right now): they end once it lets go, here on resume; a commit drops them anyway.
  // The hand-over's own timeouts bound the wait, and HandoverServer::abort() shortens it.
  if (hold_ != Hold::kNone) {
    stop_after_hold_ = true;
    return;
  }
  stopping_ = true;
  draining_ = true;
  close_listeners();
  for (auto& sp : slots_) {
    Session& s = *sp;
    if (s.phase == Session::Phase::kFree) continue;
    end(s, EndReason::kDrained);
    settle(s);
  }
}

void Worker::request_reload(const RelayConfig& cfg, std::vector<Route> table, std::vector<bool> removed,
                            const std::shared_ptr<std::vector<RouteSlot>>& added) {
  post([this, cfg, table = std::move(table), removed = std::move(removed), added] {
    limits_ = limits_from(cfg, nworkers_);
    cfg_.log_sessions = cfg.log_sessions;
    for (size_t i = 0; i < routes_.size() && i < table.size(); ++i) {
      routes_[i].route = table[i];
      if (i < removed.size() && removed[i] && !routes_[i].removed) {
        routes_[i].removed = true;
        if (routes_[i].accepting) {
          io_uring_sqe* sqe = get_sqe();
          io_uring_prep_cancel64(sqe, make_user_data(static_cast<uint32_t>(i), Op::kAccept), 0);
          io_uring_sqe_set_data64(sqe, make_user_data(0, Op::kCancel));
        } else {
          routes_[i].listen_fd.reset();
        }
      }
    }
    if (added) {
      for (auto& slot : *added) {
        routes_.push_back(std::move(slot));
        if (!draining_) arm_accept(static_cast<uint32_t>(routes_.size() - 1));
      }
    }
  });
}

void Worker::submit_now() {
  if (ring_failed_) return;
  // EINTR/EAGAIN/EBUSY are transient (the kernel is short of memory or the completion queue is
  // backed up); anything else means the ring is unusable, and the worker stops rather than spin.
  int r = io_uring_submit(ring_.get());
  if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
    common::log_error("relay worker: io_uring_submit failed; worker stops",
                      {{"worker", std::to_string(index_)}, {"error", strerror(-r)}});
    ring_failed_ = true;
  }
}

io_uring_sqe* Worker::get_sqe() {
  io_uring_sqe* sqe = ring_failed_ ? nullptr : io_uring_get_sqe(ring_.get());
  while (sqe == nullptr && !ring_failed_) {
    submit_now();  // the submission queue is full: hand it to the kernel
    if (!ring_failed_) sqe = io_uring_get_sqe(ring_.get());
  }
  if (sqe != nullptr) return sqe;
  scratch_sqe_ = {};
  return &scratch_sqe_;
}

void Worker::arm_wake() {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_poll_multishot(sqe, wake_fd_.get(), POLLIN);
  io_uring_sqe_set_data64(sqe, make_user_data(0, Op::kWake));
}

void Worker::arm_tick() {
  tick_ts_ = to_kts(kTickNs);
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_timeout(sqe, &tick_ts_, 0, 0);
  io_uring_sqe_set_data64(sqe, make_user_data(0, Op::kTick));
}

void Worker::arm_accept(uint32_t route) {
  RouteSlot& r = routes_[route];
  if (r.accepting || r.removed || !r.listen_fd || hold_ != Hold::kNone || held_) return;
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_multishot_accept(sqe, r.listen_fd.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, make_user_data(route, Op::kAccept));
  r.accepting = true;
}

void Worker::close_listeners() {
  for (uint32_t i = 0; i < routes_.size(); ++i) {
    RouteSlot& r = routes_[i];
    if (r.accepting) {
      // The ring holds a reference to the listener: cancel first, close when the accept completes.
      io_uring_sqe* sqe = get_sqe();
      io_uring_prep_cancel64(sqe, make_user_data(i, Op::kAccept), 0);
      io_uring_sqe_set_data64(sqe, make_user_data(0, Op::kCancel));
    } else {
      r.listen_fd.reset();
    }
  }
}

void Worker::run() {
  io_uring_params p{};
  const unsigned attempts[] = {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                               IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN,
                               IORING_SETUP_COOP_TASKRUN, 0};
  int ret = -EINVAL;
  for (unsigned flags : attempts) {
    std::memset(&p, 0, sizeof(p));
    p.flags = flags | IORING_SETUP_CQSIZE;
    p.cq_entries = cfg_.ring_entries * 8;
    ret = ring_.init(cfg_.ring_entries, p);
    if (ret == 0) break;
  }
  {
    std::lock_guard lk(ready_mu_);
    if (ret != 0) setup_error_.store(-ret);
    ready_ = true;
  }
  ready_cv_.notify_all();
  if (ret != 0) {
    exited_.store(true, std::memory_order_release);
    return;
  }

  now_ns_ = mono_ns();
  arm_wake();
  arm_tick();
  for (auto& im : imports_) import_session(im.s, im.route, std::move(im.hs));
  imports_.clear();
  for (uint32_t i = 0; i < routes_.size(); ++i) arm_accept(i);

  while (!((draining_ || stopping_) && active_ == 0) && !ring_failed_) {
    int r = io_uring_submit_and_wait(ring_.get(), 1);
    if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY && r != -ETIME) {
      common::log_error("relay worker ring failed",
                        {{"worker", std::to_string(index_)}, {"error", strerror(-r)}});
      break;
    }
    now_ns_ = mono_ns();
    unsigned head;
    unsigned n = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(ring_.get(), head, cqe) {
      dispatch(cqe);
      ++n;
    }
    io_uring_cq_advance(ring_.get(), n);
    if (hold_ == Hold::kDraining || hold_ == Hold::kParking) check_park();
  }
  // Every session is gone; pending accepts, the tick and the wake poll die with the ring.
  ring_.reset();
  for (auto& r : routes_) r.listen_fd.reset();
  exited_.store(true, std::memory_order_release);
}

void Worker::dispatch(io_uring_cqe* cqe) {
  uint64_t ud = io_uring_cqe_get_data64(cqe);
  Op op = user_data_op(ud);
  uint32_t idx = user_data_index(ud);
  switch (op) {
    case Op::kAccept:
      on_accept(idx, cqe->res, cqe->flags);
      return;
    case Op::kWake:
      on_wake(cqe->flags);
      return;
    case Op::kTick:
      on_tick();
      return;
    case Op::kCancel:
      return;
    default:
      break;
  }
  if (idx >= slots_.size()) return;
  Session& s = *slots_[idx];
  on_session_cqe(s, op, cqe->res, cqe->flags);
  settle(s);
}

void Worker::refuse(int fd) {
  set_rst_on_close(fd);
  ::close(fd);
}

void Worker::on_accept(uint32_t route, int res, uint32_t flags) {
  if (route >= routes_.size()) {
    if (res >= 0) refuse(res);
    return;
  }
  RouteSlot& r = routes_[route];
  if (!(flags & IORING_CQE_F_MORE)) r.accepting = false;
  const bool closing = draining_ || r.removed;
  if (res < 0) {
    if (res != -ECANCELED) stats_.accept_errors.add();
    if (is_fd_exhaustion(-res)) {
      // Out of descriptors: stop accepting until the next tick instead of spinning on the backlog.
      if (!accept_paused_ && now_ns_ - last_exhaustion_log_ns_ >= 10'000'000'000ull) {
        last_exhaustion_log_ns_ = now_ns_;
        common::log_warn("accept paused: out of file descriptors",
                         {{"listen", r.bound.to_string()}, {"error", strerror(-res)}});
      }
      accept_paused_ = true;
    } else if (!r.accepting && !closing) {
      arm_accept(route);
    }
    if (!r.accepting && closing) r.listen_fd.reset();
    return;
  }
  if (!r.accepting) {
    if (closing) {
      r.listen_fd.reset();
    } else if (!accept_paused_) {
      arm_accept(route);
    }
  }
  if (closing) {
    refuse(res);
    return;
  }
  common::SockAddr peer;
  peer.set_len(common::SockAddr::kCapacity);
  if (::getpeername(res, peer.get_mut(), peer.len_mut()) != 0) peer = {};
  // Handshake routes: unauthenticated connections take a startup slot, not a session slot.
  const bool startup = r.route.handshake != nullptr && cfg_.admission != nullptr;
  Admission::SourceKey key{};
  if (startup ? !admit_startup(peer, key) : active_ - startups_ >= limits_.max_sessions) {
    if (!startup) stats_.sessions_total[static_cast<size_t>(EndReason::kOverloaded)].add();
    refuse(res);
    return;
  }
  Session* s = alloc_session();
  s->client.reset(res);
  set_nodelay(res);
  s->client_addr = peer;
  s->startup = startup;
  s->startup_key = key;
  if (startup) {
    ++startups_;
    stats_.startups_active.add(1);
  }
  s->listen_addr = r.bound;
  s->route = route;
  s->start_ns = now_ns_;
  s->last_active_ns = now_ns_;
  s->id = ++seq_ * nworkers_ + index_;
  ++active_;
  stats_.sessions_active.add(1);
  if (r.route.handshake) {
    s->factory = r.route.handshake;
    start_handshake(*s);
  } else {
    start_connect(*s, *r.route.upstream);
  }
  settle(*s);
}

bool Worker::admit_startup(const common::SockAddr& client, Admission::SourceKey& key) {
  auto refused = cfg_.admission->enter(client, key);
  if (!refused) return true;
  stats_.startups_refused[static_cast<size_t>(*refused)].add();
  return false;
}

bool Worker::leave_startup(Session& s, bool authenticated) {
  if (!s.startup) return true;
  s.startup = false;
  --startups_;
  stats_.startups_active.add(-1);
  cfg_.admission->leave(s.startup_key);
  if (authenticated && active_ - startups_ > limits_.max_sessions) {
    end(s, EndReason::kOverloaded);  // every session slot is held by an authenticated session
    return false;
  }
  return true;
}

void Worker::on_wake(uint32_t flags) {
  uint64_t v;
  [[maybe_unused]] ssize_t n = ::read(wake_fd_.get(), &v, sizeof(v));
  if (!(flags & IORING_CQE_F_MORE)) arm_wake();
  {
    std::lock_guard lk(post_mu_);
    running_.swap(posted_);
  }
  for (auto& fn : running_) {
    try {
      fn();
    } catch (const std::exception& e) {
      common::log_error("relay worker: posted task failed", {{"error", e.what()}});
    }
  }
  running_.clear();
}

void Worker::on_tick() {
  if (!(draining_ && active_ == 0)) arm_tick();
  if (accept_paused_) {
    accept_paused_ = false;
    if (!draining_)
      for (uint32_t i = 0; i < routes_.size(); ++i) arm_accept(i);
  }
  for (auto& sp : slots_) {
    Session& s = *sp;
    if (s.phase == Session::Phase::kFree || s.ending) continue;
    if (s.startup && s.hs_len == 0 && now_ns_ - s.start_ns >= limits_.first_byte_timeout_ns) {
      stats_.startups_refused[static_cast<size_t>(StartupRefusal::kFirstByteTimeout)].add();
      end(s, EndReason::kHandshakeTimeout);
    } else if ((s.phase == Session::Phase::kHandshake || s.phase == Session::Phase::kPending) &&
               now_ns_ >= s.deadline_ns) {
      end(s, EndReason::kHandshakeTimeout);
    } else if (limits_.idle_timeout_ns && s.phase == Session::Phase::kSplicing && !parking() &&
               now_ns_ - s.last_active_ns >= limits_.idle_timeout_ns) {
      end(s, EndReason::kIdleTimeout);
    }
    settle(s);
  }
}

Session* Worker::alloc_session() {
  if (free_slots_.empty()) {
    auto s = std::make_unique<Session>();
    s->index = static_cast<uint32_t>(slots_.size());
    slots_.push_back(std::move(s));
    return slots_.back().get();
  }
  uint32_t i = free_slots_.back();
  free_slots_.pop_back();
  return slots_[i].get();
}

void Worker::take_hs_buf(Session& s) {
  if (s.hs_buf.size() == kMaxHandshakeBytes) return;
  if (!hs_bufs_.empty()) {
    s.hs_buf = std::move(hs_bufs_.back());
    hs_bufs_.pop_back();
    return;
  }
  s.hs_buf.resize(kMaxHandshakeBytes);
}

// Only with no receive into the buffer in the ring (the handshake decided, or the session is done).
void Worker::release_hs_buf(Session& s) {
  if (s.hs_buf.size() == kMaxHandshakeBytes && hs_bufs_.size() < kKeepHsBufs)
    hs_bufs_.push_back(std::move(s.hs_buf));
  std::vector<uint8_t>().swap(s.hs_buf);
}

void Worker::start_handshake(Session& s) {
  s.phase = Session::Phase::kHandshake;
  take_hs_buf(s);
  s.hs_len = 0;
  s.deadline_ns = now_ns_ + limits_.handshake_timeout_ns;
  uint32_t idx = s.index;
  uint32_t gen = s.gen;
  HandshakeResume resume = [this, idx, gen](HandshakeStep step) {
    if (idx >= slots_.size()) return;
    Session& t = *slots_[idx];
    if (t.gen != gen || t.ending) return;
    if (t.in_hs_call) {  // called from inside on_data(): apply once it has returned kPending
      t.early_step = std::make_unique<HandshakeStep>(std::move(step));
      return;
    }
    if (t.phase != Session::Phase::kPending) return;
    apply_step(t, std::move(step));
    settle(t);
  };
  try {
    s.hs = s.factory->create(s.id, s.client_addr, s.listen_addr, *this, std::move(resume));
  } catch (const std::exception& e) {
    common::log_error("handshake create failed",
                      {{"session", common::session_id_string(s.id)}, {"error", e.what()}});
  }
  if (!s.hs) {
    end(s, EndReason::kDenied);
    return;
  }
  submit_recv_hs(s);
}

void Worker::submit_recv_hs(Session& s) {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_recv(sqe, s.client.get(), s.hs_buf.data() + s.hs_len, kMaxHandshakeBytes - s.hs_len, 0);
  io_uring_sqe_set_data64(sqe, make_user_data(s.index, Op::kRecvHs));
  track(s, Op::kRecvHs);
}

void Worker::apply_step(Session& s, HandshakeStep step) {
  // Any step but kNeedMore means the handshake decided: the connection leaves the startup budget.
  if (step.kind != HandshakeStep::Kind::kNeedMore &&
      !leave_startup(s, step.kind != HandshakeStep::Kind::kReject))
    return;
  switch (step.kind) {
    case HandshakeStep::Kind::kNeedMore:
      s.phase = Session::Phase::kHandshake;
      if (s.hs_len >= kMaxHandshakeBytes) {
        end(s, EndReason::kDenied);  // the handshake had to decide within the buffer
      } else {
        submit_recv_hs(s);
      }
      return;
    case HandshakeStep::Kind::kPending:
      s.phase = Session::Phase::kPending;
      return;
    case HandshakeStep::Kind::kConnect: {
      size_t consumed = step.consumed < s.hs_len ? step.consumed : s.hs_len;
      s.to_upstream.assign(s.hs_buf.begin() + static_cast<ptrdiff_t>(consumed),
                           s.hs_buf.begin() + static_cast<ptrdiff_t>(s.hs_len));
      s.to_upstream_off = 0;
      release_hs_buf(s);
      start_connect(s, step.upstream);
      return;
    }
    case HandshakeStep::Kind::kReject:
      s.phase = Session::Phase::kRejecting;
      s.after_reply = EndReason::kDenied;
      s.to_client = std::move(step.reply);
      s.to_client_off = 0;
      if (s.to_client.empty()) {
        end(s, EndReason::kDenied);
      } else {
        submit_send_client(s);
      }
      return;
  }
}

void Worker::start_connect(Session& s, const common::SockAddr& upstream) {
  s.phase = Session::Phase::kConnecting;
  s.upstream_addr = upstream;
  int fd = ::socket(upstream.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    s.error = errno;
    stats_.accept_errors.add();
    end(s, is_fd_exhaustion(errno) ? EndReason::kOverloaded : EndReason::kConnectFailed);
    return;
  }
  s.upstream.reset(fd);
  set_nodelay(fd);
  // The connect and its linked timeout must land in the same submission.
  if (io_uring_sq_space_left(ring_.get()) < 2) submit_now();
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_connect(sqe, fd, s.upstream_addr.get(), s.upstream_addr.len());
  sqe->flags |= IOSQE_IO_LINK;
  io_uring_sqe_set_data64(sqe, make_user_data(s.index, Op::kConnect));
  track(s, Op::kConnect);
  s.connect_ts = to_kts(limits_.connect_timeout_ns);
  sqe = get_sqe();
  io_uring_prep_link_timeout(sqe, &s.connect_ts, 0);
  io_uring_sqe_set_data64(sqe, make_user_data(s.index, Op::kLinkTimeout));
  track(s, Op::kLinkTimeout);
}

void Worker::on_connected(Session& s, int res) {
  if (res < 0) {
    s.error = res == -ECANCELED ? ETIMEDOUT : -res;
    if (s.hs) {
      std::string reply;
      try {
        reply = s.hs->on_upstream_failed(s.error);
      } catch (const std::exception& e) {
        common::log_error("handshake on_upstream_failed threw", {{"error", e.what()}});
      }
      s.phase = Session::Phase::kRejecting;
      s.after_reply = EndReason::kConnectFailed;
      s.to_client = std::move(reply);
      s.to_client_off = 0;
      if (!s.to_client.empty()) {
        submit_send_client(s);
        return;
      }
    }
    end(s, EndReason::kConnectFailed);
    return;
  }
  s.upstream_local.set_len(common::SockAddr::kCapacity);
  if (::getsockname(s.upstream.get(), s.upstream_local.get_mut(), s.upstream_local.len_mut()) != 0)
    s.upstream_local = {};
  s.phase = Session::Phase::kReplying;
  if (s.hs) {
    try {
      s.to_client = s.hs->on_upstream_connected(s.upstream_local);
    } catch (const std::exception& e) {
      common::log_error("handshake on_upstream_connected threw", {{"error", e.what()}});
      end(s, EndReason::kDenied);
      return;
    }
    s.to_client_off = 0;
  }
  if (!s.to_client.empty()) submit_send_client(s);
  if (!s.to_upstream.empty()) submit_send_upstream(s);
  maybe_start_splicing(s);
}

void Worker::submit_send_client(Session& s) {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_send(sqe, s.client.get(), s.to_client.data() + s.to_client_off,
                     s.to_client.size() - s.to_client_off, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, make_user_data(s.index, Op::kSendClient));
  track(s, Op::kSendClient);
}

void Worker::submit_send_upstream(Session& s) {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_send(sqe, s.upstream.get(), s.to_upstream.data() + s.to_upstream_off,
                     s.to_upstream.size() - s.to_upstream_off, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, make_user_data(s.index, Op::kSendUpstream));
  track(s, Op::kSendUpstream);
}

void Worker::maybe_start_splicing(Session& s) {
  if (s.ending || s.phase != Session::Phase::kReplying) return;
  if (s.to_client_off < s.to_client.size() || s.to_upstream_off < s.to_upstream.size()) return;
  // Sent: a session that lives for hours must not keep its reply frame and glued bytes
  // (to_upstream_off stays: it counts bytes).
  std::string().swap(s.to_client);
  s.to_client_off = 0;
  std::vector<uint8_t>().swap(s.to_upstream);
  s.phase = Session::Phase::kSplicing;
  s.pump[0].set_eager(cfg_.splice_mode == SpliceMode::kInline);
  s.pump[1].set_eager(cfg_.splice_mode == SpliceMode::kInline);
  drive(s, 0, s.pump[0].start());
  drive(s, 1, s.pump[1].start());
}

// What differs between the two directions of a session, in one place.
struct Worker::DirIo {
  int d;
  int src, dst;
  EndReason src_reset, dst_reset;
  Op poll_in, poll_out, splice_in, splice_out;
  metrics::LocalCounter* bytes;
};

namespace {
struct DirOps {
  EndReason src_reset, dst_reset;
  Op poll_in, poll_out, splice_in, splice_out;
};
// [0]: client -> upstream, [1]: upstream -> client.
constexpr DirOps kDirOps[2] = {
    {EndReason::kClientReset, EndReason::kUpstreamReset, Op::kPollIn0, Op::kPollOut0, Op::kSpliceIn0,
     Op::kSpliceOut0},
    {EndReason::kUpstreamReset, EndReason::kClientReset, Op::kPollIn1, Op::kPollOut1, Op::kSpliceIn1,
     Op::kSpliceOut1},
};
constexpr uint32_t kPollOps =
    (1u << static_cast<uint8_t>(Op::kPollIn0)) | (1u << static_cast<uint8_t>(Op::kPollIn1)) |
    (1u << static_cast<uint8_t>(Op::kPollOut0)) | (1u << static_cast<uint8_t>(Op::kPollOut1));
}  // namespace

Worker::DirIo Worker::dir_io(Session& s, int d) {
  const DirOps& o = kDirOps[d];
  const int fds[2] = {s.client.get(), s.upstream.get()};
  metrics::LocalCounter* bytes[2] = {&stats_.bytes_client_to_upstream, &stats_.bytes_upstream_to_client};
  return {d,         fds[d],     fds[1 - d],  o.src_reset,  o.dst_reset,
          o.poll_in, o.poll_out, o.splice_in, o.splice_out, bytes[d]};
}

void Worker::on_session_cqe(Session& s, Op op, int res, uint32_t flags) {
  (void)flags;
  untrack(s, op);
  if (s.ending) return;  // results of cancelled requests; the session is being torn down
  switch (op) {
    case Op::kRecvHs:
      on_recv_hs(s, res);
      return;
    case Op::kConnect:
      on_connected(s, res);
      return;
    case Op::kLinkTimeout:
      return;
    case Op::kSendClient:
      on_send_client(s, res);
      return;
    case Op::kSendUpstream:
      on_send_upstream(s, res);
      return;
    case Op::kPollIn0:
    case Op::kPollIn1:
    case Op::kPollOut0:
    case Op::kPollOut1:
    case Op::kSpliceIn0:
    case Op::kSpliceIn1:
    case Op::kSpliceOut0:
    case Op::kSpliceOut1:
      on_pump_cqe(s, op, res);
      return;
    default:
      return;
  }
}

void Worker::on_recv_hs(Session& s, int res) {
  if (res <= 0) {
    s.error = -res;
    end(s, res == 0 ? EndReason::kClosed : EndReason::kClientReset);
    return;
  }
  s.hs_len += static_cast<size_t>(res);
  HandshakeStep step;
  s.in_hs_call = true;
  try {
    step = s.hs->on_data(std::span<const uint8_t>(s.hs_buf.data(), s.hs_len));
  } catch (const std::exception& e) {
    s.in_hs_call = false;
    common::log_error("handshake on_data threw", {{"error", e.what()}});
    end(s, EndReason::kDenied);
    return;
  }
  s.in_hs_call = false;
  if (step.kind == HandshakeStep::Kind::kPending && s.early_step) step = std::move(*s.early_step);
  s.early_step.reset();
  apply_step(s, std::move(step));
}

void Worker::on_send_client(Session& s, int res) {
  if (res < 0) {
    s.error = -res;
    end(s, s.phase == Session::Phase::kRejecting ? s.after_reply : EndReason::kClientReset);
    return;
  }
  s.to_client_off += static_cast<size_t>(res);
  if (s.to_client_off < s.to_client.size()) {
    submit_send_client(s);
  } else if (s.phase == Session::Phase::kRejecting) {
    end(s, s.after_reply);
  } else {
    maybe_start_splicing(s);
  }
}

void Worker::on_send_upstream(Session& s, int res) {
  if (res < 0) {
    s.error = -res;
    end(s, EndReason::kUpstreamReset);
    return;
  }
  s.to_upstream_off += static_cast<size_t>(res);
  stats_.bytes_client_to_upstream.add(static_cast<uint64_t>(res));
  if (s.to_upstream_off < s.to_upstream.size()) {
    submit_send_upstream(s);
  } else {
    maybe_start_splicing(s);
  }
}

void Worker::on_pump_cqe(Session& s, Op op, int res) {
  for (int d = 0; d < 2; ++d) {
    const DirOps& o = kDirOps[d];
    Pump& p = s.pump[d];
    if (op == o.poll_in || op == o.poll_out) {
      if (res == -ECANCELED) {
        // Parked for a hand-over: the pump stays where it was. A hand-over that gave up while this
        // cancel was on its way has resumed already and skipped this session (it was not quiet
        // yet): poll again, or it would wait for nothing until its idle timeout.
        if (!parking() && !s.ending && s.phase == Session::Phase::kSplicing)
          arm_poll(s, dir_io(s, d), op == o.poll_out);
        return;
      }
      drive(s, d, op == o.poll_in ? p.on_readable() : p.on_writable());
      return;
    }
    if (op == o.splice_in) {
      if (res > 0) s.last_active_ns = now_ns_;
      drive(s, d, p.on_spliced_in(res, s.pipe[d].capacity));
      return;
    }
    if (op == o.splice_out) {
      if (res > 0) dir_io(s, d).bytes->add(static_cast<uint64_t>(res));
      drive(s, d, p.on_spliced_out(res));
      return;
    }
  }
}

Pump::Action Worker::arm_poll(Session& s, const DirIo& io, bool out) {
  PipePair& pipe = s.pipe[io.d];
  if (!out && pipe.valid()) {
    pipes_.release(pipe, true);
    stats_.pipes_in_use.set(pipes_.in_use());
  }
  if (parking()) return Pump::Action::kNone;  // parked: the pump waits in kPollIn/kPollOut
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_poll_add(sqe, out ? io.dst : io.src, out ? POLLOUT : POLLIN);
  const Op op = out ? io.poll_out : io.poll_in;
  io_uring_sqe_set_data64(sqe, make_user_data(s.index, op));
  track(s, op);
  return Pump::Action::kNone;
}

Pump::Action Worker::splice_in(Session& s, const DirIo& io, int& budget) {
  PipePair& pipe = s.pipe[io.d];
  Pump& p = s.pump[io.d];
  if (!pipe.valid()) {
    int r = pipes_.acquire(pipe);
    stats_.pipes_in_use.set(pipes_.in_use());
    if (r < 0) {
      s.error = -r;
      stats_.accept_errors.add();
      end(s, EndReason::kOverloaded);
      return Pump::Action::kNone;
    }
  }
  if (cfg_.splice_mode != SpliceMode::kInline) {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_splice(sqe, io.src, -1, pipe.w.get(), -1, pipe.capacity, kSpliceFlags);
    io_uring_sqe_set_data64(sqe, make_user_data(s.index, io.splice_in));
    track(s, io.splice_in);
    return Pump::Action::kNone;
  }
  if (budget-- <= 0) return p.yield();
  ssize_t n = ::splice(io.src, nullptr, pipe.w.get(), nullptr, pipe.capacity, kSpliceFlags);
  int res = n < 0 ? -errno : static_cast<int>(n);
  if (res > 0) s.last_active_ns = now_ns_;
  if (res < 0 && res != -EAGAIN) s.error = -res;
  return p.on_spliced_in(res, pipe.capacity);
}

Pump::Action Worker::splice_out(Session& s, const DirIo& io) {
  PipePair& pipe = s.pipe[io.d];
  Pump& p = s.pump[io.d];
  if (cfg_.splice_mode != SpliceMode::kInline) {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_splice(sqe, pipe.r.get(), -1, io.dst, -1, p.in_pipe(), kSpliceFlags);
    io_uring_sqe_set_data64(sqe, make_user_data(s.index, io.splice_out));
    track(s, io.splice_out);
    return Pump::Action::kNone;
  }
  ssize_t n = ::splice(pipe.r.get(), nullptr, io.dst, nullptr, p.in_pipe(), kSpliceFlags);
  int res = n < 0 ? -errno : static_cast<int>(n);
  if (res > 0) io.bytes->add(static_cast<uint64_t>(res));
  if (res < 0 && res != -EAGAIN) s.error = -res;
  return p.on_spliced_out(res);
}

Pump::Action Worker::shutdown_dst(Session& s, const DirIo& io) {
  PipePair& pipe = s.pipe[io.d];
  if (pipe.valid()) {
    pipes_.release(pipe, true);
    stats_.pipes_in_use.set(pipes_.in_use());
  }
  ::shutdown(io.dst, SHUT_WR);
  if (s.pump[0].done() && s.pump[1].done()) end(s, EndReason::kClosed);
  return Pump::Action::kNone;
}

void Worker::drive(Session& s, int d, Pump::Action a) {
  const DirIo io = dir_io(s, d);
  int budget = kInlineBudget;
  while (a != Pump::Action::kNone && !s.ending) {
    switch (a) {
      case Pump::Action::kNone:
        break;
      case Pump::Action::kArmPollIn:
        a = arm_poll(s, io, false);
        break;
      case Pump::Action::kSpliceIn:
        a = splice_in(s, io, budget);
        break;
      case Pump::Action::kSpliceOut:
        a = splice_out(s, io);
        break;
      case Pump::Action::kArmPollOut:
        a = arm_poll(s, io, true);
        break;
      case Pump::Action::kShutdownDst:
        a = shutdown_dst(s, io);
        break;
      case Pump::Action::kFailSrc:
        end(s, io.src_reset);
        a = Pump::Action::kNone;
        break;
      case Pump::Action::kFailDst:
        end(s, io.dst_reset);
        a = Pump::Action::kNone;
        break;
    }
  }
}

void Worker::end(Session& s, EndReason reason) {
  if (s.ending || s.phase == Session::Phase::kFree) return;
  s.ending = true;
  s.reason = reason;
  switch (reason) {
    case EndReason::kClosed:
    case EndReason::kDenied:
      s.rst = false;  // the client must still read the reply / the last bytes
      break;
    case EndReason::kConnectFailed:
      s.rst = !s.hs;  // static route: the client learns of the failure through a reset
      break;
    default:
      s.rst = true;
      break;
  }
  for (uint8_t b = 0; b < 32; ++b) {
    if (!(s.inflight & (1u << b)) || b == static_cast<uint8_t>(Op::kLinkTimeout)) continue;
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_cancel64(sqe, make_user_data(s.index, static_cast<Op>(b)), 0);
    io_uring_sqe_set_data64(sqe, make_user_data(0, Op::kCancel));
  }
}

void Worker::settle(Session& s) {
  if (s.ending && s.inflight == 0 && s.phase != Session::Phase::kFree) finalize(s);
}

SessionSummary Worker::summary_of(const Session& s) const {
  SessionSummary sum;
  sum.session_id = s.id;
  sum.client = s.client_addr;
  sum.upstream = s.upstream_addr;
  sum.upstream_local = s.upstream_local;
  sum.bytes_client_to_upstream = s.pump[0].bytes() + s.to_upstream_off;
  sum.bytes_upstream_to_client = s.pump[1].bytes();
  sum.duration_ns = now_ns_ - s.start_ns;
  sum.reason = s.reason;
  return sum;
}

void Worker::log_session_end(const Session& s, const SessionSummary& sum) {
  std::initializer_list<common::LogField> fields = {
      {"session", common::session_id_string(sum.session_id)},
      {"client", sum.client.to_string()},
      {"listen", s.listen_addr.to_string()},
      {"upstream", s.upstream_addr.len() ? sum.upstream.to_string() : "-"},
      {"upstream_local", s.upstream_local.len() ? sum.upstream_local.to_string() : "-"},
      {"bytes_c2u", std::to_string(sum.bytes_client_to_upstream)},
      {"bytes_u2c", std::to_string(sum.bytes_upstream_to_client)},
      {"duration_ms", std::to_string(sum.duration_ns / 1'000'000)},
      {"reason", end_reason_name(sum.reason)},
      {"error",
       s.error ? strerrorname_np(s.error) ? strerrorname_np(s.error) : std::to_string(s.error) : "-"},
  };
  common::log_info("session end", fields);
}

void Worker::finalize(Session& s) {
  const SessionSummary sum = summary_of(s);
  for (int d = 0; d < 2; ++d) {
    if (!s.pipe[d].valid()) continue;
    const bool clean = s.pump[d].in_pipe() == 0 && s.pump[d].state() != Pump::State::kSpliceIn;
    pipes_.release(s.pipe[d], clean);
  }
  stats_.pipes_in_use.set(pipes_.in_use());
  if (s.rst) {
    if (s.client) set_rst_on_close(s.client.get());
    if (s.upstream) set_rst_on_close(s.upstream.get());
  }
  s.client.reset();
  s.upstream.reset();
  leave_startup(s, false);

  if (s.hs) {
    try {
      s.hs->on_end(sum);
    } catch (const std::exception& e) {
      common::log_error("handshake on_end threw", {{"error", e.what()}});
    }
  }
  if (cfg_.on_session_end) {
    try {
      cfg_.on_session_end(sum);
    } catch (const std::exception& e) {
      common::log_error("session end callback threw", {{"error", e.what()}});
    }
  }
  if (cfg_.log_sessions) log_session_end(s, sum);
  stats_.sessions_total[static_cast<size_t>(sum.reason)].add();
  stats_.sessions_active.add(-1);
  release_hs_buf(s);
  s.reset();
  free_slots_.push_back(s.index);
  --active_;
}

// ---- Hand-over (relay/handover.h) ----

void Worker::request_park(std::function<void(Parked)> done) {
  post([this, done = std::move(done)]() mutable {
    on_parked_ = std::move(done);
    hold_ = Hold::kDraining;
    // Stop accepting but keep the listeners: clients queue in the backlog for whoever serves next.
    for (uint32_t i = 0; i < routes_.size(); ++i) {
      if (!routes_[i].accepting) continue;
      io_uring_sqe* sqe = get_sqe();
      io_uring_prep_cancel64(sqe, make_user_data(i, Op::kAccept), 0);
      io_uring_sqe_set_data64(sqe, make_user_data(0, Op::kCancel));
    }
    check_park();
  });
}

void Worker::cancel_polls(Session& s) {
  for (uint8_t b = 0; b < 32; ++b) {
    if (!(s.inflight & kPollOps & (1u << b))) continue;
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_cancel64(sqe, make_user_data(s.index, static_cast<Op>(b)), 0);
    io_uring_sqe_set_data64(sqe, make_user_data(0, Op::kCancel));
  }
}

// Moves the hand-over on once this worker is quiet: no handshake left (they finish here), then no
// request in flight for any established session.
//
// Called after every batch of completions while parking, so each call resumes where the last one
// stopped (park_cursor_): a session found quiet stays quiet, nothing arms it again. Scanning every
// session on every call made parking 10,000 sessions take over 100 ms.
void Worker::check_park() {
  auto busy = [](const Session& s) {
    return s.phase != Session::Phase::kFree &&
           (s.ending || s.inflight != 0 || !s.pump[0].parked() || !s.pump[1].parked());
  };
  if (hold_ == Hold::kDraining) {
    for (auto& sp : slots_) {
      const Session& s = *sp;
      if (s.phase == Session::Phase::kFree) continue;
      if (s.phase != Session::Phase::kSplicing || s.ending) return;  // a handshake or an end is under way
    }
    hold_ = Hold::kParking;
    park_cursor_ = 0;
    for (auto& sp : slots_)
      if (sp->phase == Session::Phase::kSplicing) cancel_polls(*sp);
  }
  for (; park_cursor_ < slots_.size(); ++park_cursor_)
    if (busy(*slots_[park_cursor_])) return;
  for (const auto& r : routes_)
    if (r.accepting) return;  // the accept cancel has not completed yet
  // Once more from the start before the state leaves this thread.
  for (uint32_t i = 0; i < slots_.size(); ++i)
    if (busy(*slots_[i])) {
      park_cursor_ = i;
      return;
    }
  hold_ = Hold::kParked;
  Parked out;
  out.seq = seq_;
  for (auto& sp : slots_)
    if (sp->phase == Session::Phase::kSplicing) out.sessions.push_back(export_session(*sp));
  for (const auto& r : routes_) {
    if (r.removed || !r.listen_fd) continue;
    out.listeners.push_back(
        {r.bound.to_string(), index_, common::UniqueFd(::fcntl(r.listen_fd.get(), F_DUPFD_CLOEXEC, 0))});
  }
  if (on_parked_) on_parked_(std::move(out));
  on_parked_ = nullptr;
}

// The export borrows the session's descriptors: parked, the session is left alone until the
// hand-over commits (drop_parked closes them) or resumes.
SessionExport Worker::export_session(const Session& s) {
  auto borrow = [](const common::UniqueFd& fd) { return HandoverFd::borrow(fd.get()); };
  SessionExport e;
  e.id = s.id;
  e.worker = index_;
  e.route = routes_[s.route].bound.to_string();
  e.client_addr = s.client_addr;
  e.listen_addr = s.listen_addr;
  e.upstream_addr = s.upstream_addr;
  e.upstream_local = s.upstream_local;
  e.age_ns = now_ns_ - s.start_ns;
  e.idle_ns = now_ns_ - s.last_active_ns;
  e.client = borrow(s.client);
  e.upstream = borrow(s.upstream);
  for (int d = 0; d < 2; ++d) {
    e.dir[d].state = s.pump[d].state();
    e.dir[d].in_pipe = s.pump[d].in_pipe();
    e.dir[d].bytes = s.pump[d].bytes() + (d == 0 ? s.to_upstream_off : 0);
    if (e.dir[d].in_pipe > 0) {
      e.dir[d].pipe_r = borrow(s.pipe[d].r);
      e.dir[d].pipe_w = borrow(s.pipe[d].w);
    }
  }
  if (s.hs) e.handshake = s.hs->handover_state();
  return e;
}

void Worker::rearm_parked(Session& s) {
  for (int d = 0; d < 2; ++d) {
    const DirIo io = dir_io(s, d);
    if (s.pump[d].state() == Pump::State::kPollIn) arm_poll(s, io, false);
    if (s.pump[d].state() == Pump::State::kPollOut) arm_poll(s, io, true);
  }
}

void Worker::request_resume() {
  post([this] {
    hold_ = Hold::kNone;
    held_ = false;
    on_parked_ = nullptr;
    for (auto& sp : slots_)
      if (sp->phase == Session::Phase::kSplicing && !sp->ending && sp->inflight == 0) rearm_parked(*sp);
    if (!draining_)
      for (uint32_t i = 0; i < routes_.size(); ++i) arm_accept(i);
    if (std::exchange(stop_after_hold_, false)) stop_now();
  });
}

// The other process owns these sockets now: close this process's copies without a trace of an end
// (no audit record, no end-reason count; its session_end comes from the new process).
void Worker::drop_parked(Session& s) {
  for (auto& p : s.pipe) pipes_.release(p, false);
  stats_.pipes_in_use.set(pipes_.in_use());
  s.client.reset();
  s.upstream.reset();
  s.hs.reset();
  stats_.sessions_active.add(-1);
  release_hs_buf(s);
  s.reset();
  free_slots_.push_back(s.index);
  --active_;
}

void Worker::request_commit() {
  post([this] {
    hold_ = Hold::kNone;  // a stop that waited for the hand-over finds nothing left to end
    for (auto& sp : slots_)
      if (sp->phase == Session::Phase::kSplicing) drop_parked(*sp);
    draining_ = true;
    for (auto& r : routes_)
      if (!r.accepting) r.listen_fd.reset();
    close_listeners();
  });
}

void Worker::add_import(SessionExport s, uint32_t route, std::unique_ptr<Handshake> hs) {
  imports_.push_back({std::move(s), route, std::move(hs)});
}

// New side, worker thread before the loop: the session continues exactly where the old process
// parked it; it stays parked (held_) until request_resume().
void Worker::import_session(SessionExport& e, uint32_t route, std::unique_ptr<Handshake> hs) {
  Session* s = alloc_session();
  s->phase = Session::Phase::kSplicing;
  s->id = e.id;
  s->route = route;
  s->client = e.client.take();
  s->upstream = e.upstream.take();
  s->client_addr = e.client_addr;
  s->listen_addr = e.listen_addr;
  s->upstream_addr = e.upstream_addr;
  s->upstream_local = e.upstream_local;
  s->start_ns = now_ns_ - std::min(now_ns_, e.age_ns);
  s->last_active_ns = now_ns_ - std::min(now_ns_, e.idle_ns);
  s->hs = std::move(hs);
  const bool eager = cfg_.splice_mode == SpliceMode::kInline;
  for (int d = 0; d < 2; ++d) {
    auto& x = e.dir[d];
    s->pump[d].restore(x.state, x.in_pipe, x.bytes, eager);
    if (x.in_pipe > 0) {
      s->pipe[d].r = x.pipe_r.take();
      s->pipe[d].w = x.pipe_w.take();
      int cap = ::fcntl(s->pipe[d].w.get(), F_GETPIPE_SZ);
      s->pipe[d].capacity = cap > 0 ? static_cast<uint32_t>(cap) : 65536u;
      pipes_.adopt();
    }
  }
  stats_.pipes_in_use.set(pipes_.in_use());
  ++active_;
  stats_.sessions_active.add(1);
  if (!held_) rearm_parked(*s);
}

}  // namespace sshring::relay
