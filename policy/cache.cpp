#include "policy/cache.h"
#include "common/clock.h"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <utility>

#include "common/civil_time.h"
#include "common/error.h"
#include "common/log.h"
#include "policy/grant_store.h"
#include "policy/parser.h"
#include "policy/snapshot_cache.h"

namespace sshring::policy {
namespace {

std::atomic<int> g_sighup_fd{-1};

void on_sighup(int) {
  int fd = g_sighup_fd.load(std::memory_order_relaxed);
  if (fd >= 0) {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(fd, &one, sizeof one);
  }
}

UnixSeconds unix_now() {
  return common::unix_now_s();
}

std::string dir_of(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string base_of(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

void PolicyCache::publish(std::shared_ptr<const Snapshot> s) {
  std::shared_ptr<const Snapshot> old;
  {
    std::lock_guard lock(mu_);
    old = std::exchange(current_, std::move(s));
  }
  // The generation moves after the pointer: a reader that sees it has changed fetches the new one.
  generation_.fetch_add(1, std::memory_order_acq_rel);
  // `old` is released here, outside the lock: the last reference may free a large snapshot.
}

Reloader::Reloader(PolicyCache& cache, ReloaderOptions opts)
    : cache_(cache), opts_(std::move(opts)), ledger_(opts_.ledger_path) {
  if (std::string why; !ledger_.load(&why)) {
    common::log_error("cannot read the remembered grant decisions; starting without them",
                      {{"file", opts_.ledger_path}, {"error", why}});
  }
  wake_ = common::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  stop_ = common::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_ || !stop_) common::throw_errno("eventfd for policy reloader");
  if (opts_.source) {
    // The file the source reads the policy from (grant_store: etcd://... in a local policy) is
    // watched like a plain policy file; otherwise there is no file to watch.
    opts_.policy_path = opts_.source->policy_file();
    // Changes arrive before start(): the eventfd keeps them until the thread runs.
    opts_.source->start([this] { request_reload(); });
  }
}

Reloader::~Reloader() {
  stop();
  if (opts_.source) opts_.source->stop();
}

std::string Reloader::last_error() const {
  std::lock_guard lock(mu_);
  return last_error_;
}

bool Reloader::reload(std::string* error) {
  try {
    reload_or_throw();
    return true;
  } catch (const std::exception& e) {
    failed_.fetch_add(1);
    {
      std::lock_guard lock(mu_);
      last_error_ = e.what();
    }
    if (error) *error = e.what();
    common::log_error("policy reload failed; keeping the last good policy",
                      {{"file", opts_.source ? opts_.source->id() : opts_.policy_path}, {"error", e.what()}});
    if (opts_.observer) opts_.observer->reloaded(false, unix_now());
    report_source();
    return false;
  }
}

void Reloader::reload_or_throw() {
  std::lock_guard lock(mu_);
  if (opts_.source) {
    load_from_source();
  } else {
    auto policy = std::make_shared<Policy>(load_policy_file(opts_.policy_path));
    std::string store = opts_.grant_store.empty() ? policy->grant_store : opts_.grant_store;
    std::vector<SignedGrant> grants;
    std::string store_error;
    struct stat st {};
    if (::stat(store.c_str(), &st) == 0) {
      try {
        grants = DirGrantStore(store, false, opts_.max_store_files).load();
      } catch (const std::exception& e) {
        // A store that cannot be read (flooded, broken permissions) must not hold back the policy
        // (a principal removed from it): the new policy goes out with the grants of the last
        // snapshot from the same store, each checked again against it. At start there are none.
        auto last = cache_.current();
        if (!published_ || !last || store != watched_store_) throw;
        store_error = e.what();
        try {
          // Each of them read again by its own name, which no flood of other files can hide: a
          // revoke written since counts, and a grant whose file is gone is gone.
          const DirGrantStore ds(store, false, opts_.max_store_files);
          for (const auto& c : last->checked_grants())
            if (auto g = ds.get(c.object.id())) grants.push_back(std::move(*g));
        } catch (const std::exception&) {  // not even that (an unsafe directory): as they were
          grants.clear();
          for (const auto& c : last->checked_grants()) grants.push_back(c.object);
        }
      }
    } else {
      common::log_warn("grant store missing; no grants loaded", {{"store", store}});
    }
    size_t n = grants.size();
    std::vector<std::string> restored;
    for (auto& g : grants)
      if (ledger_.restore(g) > 0) restored.push_back(g.id());
    auto snap = Snapshot::build_checked(std::move(policy), grants, unix_now(), &signatures_,
                                        next_generation_.fetch_add(1));
    for (const auto& c : snap->checked_grants()) ledger_.remember(c);
    report_restored(restored);
    report_rejected(*snap);
    cache_.publish(snap);
    save_ledger();  // after publishing: a revocation must not wait on a disk
    watched_store_ = store;
    if (!store_error.empty()) {
      common::log_error("grant store unreadable; the policy is in force with the last grants read",
                        {{"file", opts_.policy_path}, {"store", store}, {"error", store_error}});
      failed_.fetch_add(1);
      last_error_ = "grant store unreadable: " + store_error;
      if (opts_.observer) opts_.observer->reloaded(false, unix_now());
      update_gauges();
      return;
    }
    common::log_info("policy loaded", {{"file", opts_.policy_path},
                                       {"grants", std::to_string(n)},
                                       {"generation", std::to_string(snap->generation())}});
  }
  published_ = true;
  ok_.fetch_add(1);
  if (opts_.observer) opts_.observer->reloaded(true, unix_now());
  update_gauges();
  report_source();
}

namespace {

// Parses and checks what a source (or the disk cache) delivered, reusing what the memo kept of the
// previous build. A grant the store holds but this build cannot read is skipped with a warning (once
// per text), as the directory store does with unreadable files.
std::shared_ptr<const Snapshot> build_from(const SourceData& d, GrantMemo& memo, SignatureCache* signatures,
                                           DecisionLedger& ledger, std::vector<std::string>& restored,
                                           uint64_t generation) {
  auto r = memo.build(d.policy_text, d.policy_origin, d.grants, unix_now(), signatures, &ledger);
  for (const auto& why : r.unreadable)
    common::log_warn("skipping unreadable grant", {{"policy", d.policy_origin}, {"error", why}});
  restored = std::move(r.restored);
  return Snapshot::build_from_checked(std::move(r.policy), std::move(r.checked), generation);
}

}  // namespace

// Under mu_. The source first; at start-up (nothing published yet) the disk cache when the source has
// nothing. A cache is written only from source data that built into a snapshot.
void Reloader::load_from_source() {
  SourceData d;
  try {
    d = opts_.source->read();
  } catch (const std::exception& e) {
    if (published_ || opts_.cache_dir.empty()) throw;
    std::string why;
    auto c = load_cached_snapshot(opts_.cache_dir, opts_.source->id(), &why);
    if (!c) {
      throw common::UsageError(std::string(e.what()) + "; and no usable cached snapshot (" + why +
                               "): cannot start without a policy");
    }
    std::vector<std::string> restored;
    auto snap = build_from(c->data, memo_, &signatures_, ledger_, restored, next_generation_.fetch_add(1));
    report_restored(restored);
    report_rejected(*snap);
    cache_.publish(snap);
    save_ledger();  // after publishing: a revocation must not wait on a disk
    from_cache_.store(true);
    common::log_warn("policy source unavailable; deciding on the cached snapshot",
                     {{"source", opts_.source->id()},
                      {"revision", std::to_string(c->data.revision)},
                      {"saved_at", common::format_rfc3339(c->saved_at)},
                      {"error", e.what()}});
    return;
  }
  std::vector<std::string> restored;
  auto snap = build_from(d, memo_, &signatures_, ledger_, restored, next_generation_.fetch_add(1));
  report_restored(restored);
  report_rejected(*snap);
  cache_.publish(snap);
  save_ledger();  // after publishing: a revocation must not wait on a disk
  from_cache_.store(false);
  common::log_info("policy loaded", {{"source", opts_.source->id()},
                                     {"revision", std::to_string(d.revision)},
                                     {"grants", std::to_string(d.grants.size())},
                                     {"generation", std::to_string(snap->generation())}});
  if (!opts_.cache_dir.empty()) {
    if (!cache_writer_)
      cache_writer_ =
          std::make_unique<SnapshotCacheWriter>(opts_.cache_dir, opts_.source->id(), [o = opts_.observer] {
            if (o) o->cache_write_failed();
          });
    cache_writer_->submit(std::move(d), unix_now());
  }
}

void Reloader::flush_cache() {
  std::lock_guard lock(mu_);
  if (cache_writer_) cache_writer_->flush();
}

void Reloader::report_source() {
  if (!opts_.observer || !opts_.source) return;
  auto st = opts_.source->status();
  opts_.observer->source(st.up && !from_cache_.load(), st.revision, st.last_sync, unix_now());
  opts_.observer->source_misplaced(st.misplaced);
}

void Reloader::report_restored(const std::vector<std::string>& ids) {
  for (const auto& id : ids) {
    common::log_error("a signed revocation or denial is gone from the grant store; still applying it",
                      {{"grant", id}, {"store", opts_.source ? opts_.source->id() : watched_store_}});
    if (opts_.observer) opts_.observer->decision_restored();
  }
}

// Under mu_, after each build: what the ledger learned is on disk before the next one.
void Reloader::save_ledger() {
  ledger_.prune(unix_now());
  std::string why;
  if (!ledger_.save(&why))
    common::log_warn("cannot save the remembered grant decisions; they stay in memory",
                     {{"file", ledger_.path()}, {"error", why}});
}

void Reloader::report_rejected(const Snapshot& snap) {
  std::unordered_set<std::string> now_rejected;
  for (const auto& c : snap.checked_grants()) {
    if (c.status != GrantStatus::kRejected) continue;
    std::string key = c.object.id() + "\n" + canonical_request(c.object.request) + c.object.signature +
                      std::to_string(c.object.decisions.size()) + c.reject_reason;
    if (!rejected_.count(key)) {
      common::log_warn("grant rejected",
                       {{"grant", c.object.id()}, {"reason", c.reject_reason}, {"detail", c.detail}});
      if (opts_.observer) opts_.observer->grant_rejected(c.reject_reason);
      if (opts_.on_grant_rejected) opts_.on_grant_rejected(c);
    }
    now_rejected.insert(std::move(key));
  }
  rejected_ = std::move(now_rejected);
}

bool Reloader::pending_due() const {
  auto s = cache_.current();
  if (!s) return false;
  const UnixSeconds now = unix_now();
  for (const auto& c : s->checked_grants())
    if (c.status == GrantStatus::kPending && c.pending_until <= now) return true;
  return false;
}

void Reloader::update_gauges() {
  if (!opts_.observer) return;
  auto s = cache_.current();
  if (!s) return;
  UnixSeconds now = unix_now();
  opts_.observer->grants(s->live_grants(now), s->live_grants(now, 3600));
  opts_.observer->break_glass(s->break_glass_live(now), s->reviews_overdue(now));
}

void Reloader::request_reload() noexcept {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_.get(), &one, sizeof one);
}

void Reloader::watch_store() {
  std::lock_guard lock(mu_);
  if (opts_.source) return;  // the source watches its store
  if (!inotify_ || watched_store_ == watching_store_) return;
  // The store's parent may be the policy's directory (same inode, same wd): never drop that watch.
  if (store_wd_ >= 0 && store_wd_ != policy_wd_) ::inotify_rm_watch(inotify_.get(), store_wd_);
  store_wd_ = ::inotify_add_watch(inotify_.get(), watched_store_.c_str(),
                                  IN_MOVED_TO | IN_DELETE | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MASK_ADD);
  watching_store_ = watched_store_;
  if (store_wd_ < 0) {
    // Typically the store does not exist yet: watch its parent for its creation.
    store_wd_ = ::inotify_add_watch(inotify_.get(), dir_of(watched_store_).c_str(),
                                    IN_CREATE | IN_MOVED_TO | IN_MASK_ADD);
    watching_store_.clear();  // retry the real directory after the next reload
    if (store_wd_ < 0) {
      common::log_warn("cannot watch grant store; reload with SIGHUP",
                       {{"store", watched_store_}, {"error", std::strerror(errno)}});
    }
  }
}

void Reloader::start() {
  if (thread_.joinable()) return;
  if (opts_.watch && !opts_.policy_path.empty()) {
    inotify_ = common::UniqueFd(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
    if (!inotify_) common::throw_errno("inotify_init1 for policy reloader");
    const std::string policy_dir = dir_of(opts_.policy_path);
    policy_wd_ = ::inotify_add_watch(inotify_.get(), policy_dir.c_str(),
                                     IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_ATTRIB | IN_DELETE);
    if (policy_wd_ < 0) common::throw_errno("watch policy directory " + policy_dir);
    watch_store();
  }
  if (opts_.handle_sighup) {
    g_sighup_fd.store(wake_.get());
    struct sigaction sa {};
    sa.sa_handler = on_sighup;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (::sigaction(SIGHUP, &sa, nullptr) != 0) common::throw_errno("sigaction SIGHUP");
  }
  thread_ = std::thread([this] { run(); });
}

void Reloader::stop() {
  if (!thread_.joinable()) return;
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(stop_.get(), &one, sizeof one);
  thread_.join();
  if (opts_.handle_sighup) {
    int expected = wake_.get();
    g_sighup_fd.compare_exchange_strong(expected, -1);
  }
}

void Reloader::run() {
  const std::string policy_base = base_of(opts_.policy_path);
  using Clock = std::chrono::steady_clock;
  bool pending = false;
  Clock::time_point due{};
  uint64_t due_tried_generation = 0;
  Clock::time_point next_gauges = Clock::now() + std::chrono::milliseconds(opts_.gauge_interval_ms);
  while (true) {
    auto now = Clock::now();
    auto until = pending ? std::min(due, next_gauges) : next_gauges;
    int timeout = static_cast<int>(
        std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::milliseconds>(until - now).count()));
    pollfd fds[3] = {
        {stop_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}, {inotify_ ? inotify_.get() : -1, POLLIN, 0}};
    int rc = ::poll(fds, 3, timeout);
    if (rc < 0 && errno != EINTR) {
      common::log_error("policy reloader poll failed", {{"error", std::strerror(errno)}});
      return;
    }
    if (fds[0].revents) return;
    if (fds[1].revents) {
      uint64_t v;
      [[maybe_unused]] ssize_t n = ::read(wake_.get(), &v, sizeof v);
      pending = true;
      due = Clock::now();  // explicit requests (SIGHUP) reload at once
    }
    if (fds[2].revents & POLLIN) {
      alignas(inotify_event) char buf[4096];
      ssize_t n;
      bool relevant = false;
      std::string store_base;
      {
        std::lock_guard lock(mu_);
        store_base = base_of(watched_store_);
      }
      while ((n = ::read(inotify_.get(), buf, sizeof buf)) > 0) {
        for (ssize_t off = 0; off < n;) {
          auto* ev = reinterpret_cast<inotify_event*>(buf + off);
          std::string_view name = ev->len ? std::string_view(ev->name) : std::string_view{};
          if (ev->wd == policy_wd_) {
            // Kubernetes-style config maps swap a "..data" symlink; editors rename over the file.
            if (name == policy_base || name.starts_with("..")) relevant = true;
          }
          if (ev->wd == store_wd_) {
            // Grant files change, or (watching the parent) the store directory appears.
            if (name.ends_with(".grant") || (watching_store_.empty() && name == store_base)) relevant = true;
          }
          off += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
        }
      }
      if (relevant && !pending) {
        pending = true;
        due = Clock::now() + std::chrono::milliseconds(opts_.debounce_ms);
      }
    }
    now = Clock::now();
    if (pending && now >= due) {
      pending = false;
      reload();
      watch_store();
    }
    if (now >= next_gauges) {
      update_gauges();
      report_source();
      next_gauges = now + std::chrono::milliseconds(opts_.gauge_interval_ms);
      // A pending grant whose time has come (one dated a little ahead of this clock starts; one
      // awaiting approval expires) changes only when checked again: nothing else may change by then.
      // Once per snapshot: a reload that fails publishes nothing, and is not retried every tick.
      if (const uint64_t gen = cache_.generation();
          !pending && gen != due_tried_generation && pending_due()) {
        due_tried_generation = gen;
        pending = true;
        due = now;
      }
    }
  }
}

}  // namespace sshring::policy
