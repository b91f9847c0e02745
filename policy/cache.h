// Publishing the current Snapshot, and reloading it when the policy file or the grant store changes
// (or, with a SnapshotSource such as etcd, when the source says so).
//
// Readers never lock on the fast path: a SnapshotReader keeps its own shared_ptr and compares the
// cache's generation (one atomic load) between events; only when it changed does it re-fetch the
// pointer, under a mutex held for one shared_ptr copy. A reader holding an old snapshot keeps it
// alive. (Not std::atomic<std::shared_ptr>: libstdc++ 12's lock bit inside it is invisible to
// ThreadSanitizer, which then reports every publish against every fetch; a re-fetch happens once per
// reload per worker, so the mutex costs nothing measurable.)
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>

#include "common/unique_fd.h"
#include "policy/decision_ledger.h"
#include "policy/grant_memo.h"
#include "policy/grant_store.h"
#include "policy/snapshot.h"
#include "policy/snapshot_cache.h"

namespace sshring::policy {

class PolicyCache {
 public:
  // Publishes a new snapshot and bumps the generation (release order).
  void publish(std::shared_ptr<const Snapshot> s);
  [[nodiscard]] std::shared_ptr<const Snapshot> current() const {
    std::lock_guard lock(mu_);
    return current_;
  }
  [[nodiscard]] uint64_t generation() const noexcept { return generation_.load(std::memory_order_acquire); }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const Snapshot> current_;  // under mu_
  std::atomic<uint64_t> generation_{0};
};

// One per worker thread. refresh() between events; get() on the hot path (no atomics at all).
class SnapshotReader {
 public:
  explicit SnapshotReader(const PolicyCache& cache) : cache_(&cache) { refresh(); }
  // Returns true if a newer snapshot was picked up.
  bool refresh() {
    uint64_t g = cache_->generation();
    if (g == seen_ && snap_) return false;
    snap_ = cache_->current();
    seen_ = g;
    return true;
  }
  // May be null before the first publish.
  [[nodiscard]] const Snapshot* get() const noexcept { return snap_.get(); }
  [[nodiscard]] const std::shared_ptr<const Snapshot>& shared() const noexcept { return snap_; }

 private:
  const PolicyCache* cache_;
  std::shared_ptr<const Snapshot> snap_;
  uint64_t seen_ = 0;
};

// A store that delivers policy and grants and says when they changed (etcd: policy/etcd/source.h).
// The reloader builds snapshots from read(); the source keeps its own connection and watch.
class SnapshotSource {
 public:
  struct Status {
    bool up = false;            // connected and watching
    int64_t revision = 0;       // the store revision the data is current to
    UnixSeconds last_sync = 0;  // last time the source confirmed it is current (0: never)
    uint64_t misplaced = 0;     // grant values skipped, each time seen: stored under another key
  };
  virtual ~SnapshotSource() = default;
  // Starts watching; `changed` (called from the source's thread) asks for a reload. Called once.
  virtual void start(std::function<void()> changed) = 0;
  virtual void stop() = 0;
  // The current data. Throws (naming the store and the fix) when the source has never synced.
  virtual SourceData read() = 0;
  [[nodiscard]] virtual Status status() const = 0;
  // Names the source in logs and keys its disk cache: "etcd://127.0.0.1:2379/sshring".
  [[nodiscard]] virtual std::string id() const = 0;
  // A local policy file the source reads the policy from (empty: the policy is in the store too).
  [[nodiscard]] virtual std::string policy_file() const { return {}; }
};

// What the reloader reports; the caller owns what it reports to (metrics, tests), so policy depends
// on no exporter. Called from the reloader's thread and from reload() callers.
class ReloadObserver {
 public:
  virtual ~ReloadObserver() = default;
  virtual void reloaded(bool ok, UnixSeconds now) = 0;
  virtual void grants(size_t live, size_t expiring_within_hour) = 0;
  // Only with a SnapshotSource; on every reload and every gauge tick.
  virtual void source(bool up, int64_t revision, UnixSeconds last_sync, UnixSeconds now) = 0;
  // Break-glass grants in force and those past their review deadline; on every gauge tick.
  virtual void break_glass(size_t /*live*/, size_t /*reviews_overdue*/) {}
  // Once per stored grant a reload refuses (the reason is a stable code: docs/policy.md).
  virtual void grant_rejected(const std::string& /*reason*/) {}
  // A snapshot from the source the disk cache could not take (called from the cache's writer thread).
  virtual void cache_write_failed() {}
  // With a source: the running total of grant values it skipped for their key (Status::misplaced).
  virtual void source_misplaced(uint64_t /*total*/) {}
  // Once per check of a stored grant that lacks a revocation or denial this reader had verified
  // before (policy/decision_ledger.h): the reader applies it anyway, but someone removed it.
  virtual void decision_restored() {}
};

// Adapts any object with these member functions (metrics::PolicyMetrics has them) without
// policy naming its type. Null in, null out.
template <class Sink>
std::shared_ptr<ReloadObserver> observe(Sink* sink) {
  struct Forward final : ReloadObserver {
    explicit Forward(Sink* s) : s_(s) {}
    void reloaded(bool ok, UnixSeconds now) override { s_->reloaded(ok, now); }
    void grants(size_t live, size_t expiring) override { s_->grants(live, expiring); }
    void source(bool up, int64_t rev, UnixSeconds last_sync, UnixSeconds now) override {
      s_->source(up, rev, last_sync, now);
    }
    // Optional on the sink: one that reports only reloads and the source need not have these.
    void break_glass(size_t live, size_t overdue) override {
      if constexpr (requires { s_->break_glass(live, overdue); }) s_->break_glass(live, overdue);
    }
    void grant_rejected(const std::string& reason) override {
      if constexpr (requires { s_->grant_rejected(reason); }) s_->grant_rejected(reason);
    }
    void cache_write_failed() override {
      if constexpr (requires { s_->cache_write_failed(); }) s_->cache_write_failed();
    }
    void source_misplaced(uint64_t total) override {
      if constexpr (requires { s_->source_misplaced(total); }) s_->source_misplaced(total);
    }
    void decision_restored() override {
      if constexpr (requires { s_->decision_restored(); }) s_->decision_restored();
    }
    Sink* s_;
  };
  if (!sink) return nullptr;
  return std::make_shared<Forward>(sink);
}

struct ReloaderOptions {
  std::string policy_path = "/etc/sshring/policy.yaml";
  // Overrides the policy's grant_store (tests); empty = use the policy's.
  std::string grant_store;
  // Policy and grants come from here instead of policy_path/grant_store (etcd). With a source, the
  // last good data is kept in cache_dir and used when the source cannot deliver (etcd down).
  std::shared_ptr<SnapshotSource> source;
  std::string cache_dir = std::string(kDefaultCacheDir);  // empty: no disk cache
  // Where the revocations and denials this reader verified are kept across restarts
  // (policy/decision_ledger.h); empty: in memory only.
  std::string ledger_path;
  size_t max_store_files = kMaxStoreFiles;   // a directory store's name limit (tests lower it)
  std::shared_ptr<ReloadObserver> observer;  // optional
  bool watch = true;                         // inotify on the policy file's directory and the grant store
  bool handle_sighup = true;                 // install a SIGHUP handler that requests a reload
  int debounce_ms = 100;                     // coalesce bursts of file events
  int gauge_interval_ms = 5000;  // refresh grant gauges (expiry needs no reload: decisions take now)
  // Called (on the reloading thread) once for each stored grant a reload refuses to honour (bad or
  // missing signature, unknown key, missing rule, outside its rule, ...), after the observer's
  // grant_rejected (which counts sshring_grants_rejected_total{reason}): the caller writes its
  // grant_reject audit record. A grant is reported again only if its content changes.
  std::function<void(const CheckedGrant&)> on_grant_rejected;
};

// Loads the policy and the grants into a Snapshot and publishes it into the cache. The background
// thread (start()) reloads on inotify events, SIGHUP and source changes; a failed reload keeps the
// last good snapshot, logs the error and reports it to the observer.
//
// With a source: every good load is also written to the disk cache; when the source has nothing
// (etcd down at start-up) the first load comes from the cache instead, and when there is no valid
// cache either, reload_or_throw() throws: a consumer never decides on an empty policy.
class Reloader {
 public:
  Reloader(PolicyCache& cache, ReloaderOptions opts);
  ~Reloader();  // stops the thread
  Reloader(const Reloader&) = delete;
  Reloader& operator=(const Reloader&) = delete;

  // Synchronous reload, callable from any thread. Returns true on success; on failure keeps the current
  // snapshot and, if `error` is given, stores the message there. Never throws.
  bool reload(std::string* error = nullptr);
  // Like reload() but throws the error (for start-up, where no last good snapshot exists).
  void reload_or_throw();
  // Async-signal-safe: asks the thread to reload.
  void request_reload() noexcept;
  void start();
  void stop();
  [[nodiscard]] uint64_t reloads_ok() const noexcept { return ok_.load(); }
  [[nodiscard]] uint64_t reloads_failed() const noexcept { return failed_.load(); }
  [[nodiscard]] std::string last_error() const;
  // True while the published snapshot came from the disk cache (the source has not delivered yet).
  [[nodiscard]] bool serving_cache() const noexcept { return from_cache_.load(); }
  // Returns once the disk cache holds the last snapshot loaded from the source (it is written on a
  // thread of its own; the destructor flushes too).
  void flush_cache();

 private:
  void run();
  void load_from_source();
  void report_source();
  void update_gauges();
  // True if a pending grant of the current snapshot is due to be checked again (pending_until).
  [[nodiscard]] bool pending_due() const;
  void report_rejected(const Snapshot& snap);
  void report_restored(const std::vector<std::string>& ids);
  void save_ledger();
  void watch_store();
  PolicyCache& cache_;
  ReloaderOptions opts_;
  common::UniqueFd wake_;  // eventfd: reload requests
  common::UniqueFd stop_;  // eventfd: stop
  std::thread thread_;
  // Serializes reloads (the thread and callers of reload(), e.g. a relay's signal path) so snapshots
  // publish in build order; guards last_error_ and watched_store_.
  mutable std::mutex mu_;
  std::atomic<uint64_t> ok_{0};
  std::atomic<uint64_t> failed_{0};
  std::string last_error_;
  std::string watched_store_;  // the store of the last good policy
  common::UniqueFd inotify_;   // set up in start(), before the thread, so no event is missed
  int policy_wd_ = -1;
  int store_wd_ = -1;
  std::string watching_store_;  // the store inotify currently watches
  std::atomic<uint64_t> next_generation_{1};
  std::atomic<bool> from_cache_{false};
  bool published_ = false;     // under mu_
  SignatureCache signatures_;  // verified signatures, across reloads
  GrantMemo memo_;             // the previous build's checks (source reloads), under mu_
  DecisionLedger ledger_;      // remembered revocations and denials, under mu_
  std::unique_ptr<SnapshotCacheWriter> cache_writer_;  // under mu_; made at the first source load
  std::unordered_set<std::string> rejected_;           // grants already reported to on_grant_rejected
};

}  // namespace sshring::policy
