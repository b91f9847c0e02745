// Publishing the current Snapshot, and reloading it when the policy file or the grant store changes.
//
// Readers never lock on the fast path: a SnapshotReader keeps its own shared_ptr and compares the
// cache's generation (one atomic load) between events; only when it changed does it re-fetch the
// pointer (std::atomic<std::shared_ptr> load). A reader holding an old snapshot keeps it alive.
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
#include "policy/snapshot.h"

namespace sshring::metrics {
struct PolicyMetrics;
}

namespace sshring::policy {

class PolicyCache {
 public:
  // Publishes a new snapshot and bumps the generation (release order).
  void publish(std::shared_ptr<const Snapshot> s);
  [[nodiscard]] std::shared_ptr<const Snapshot> current() const {
    return current_.load(std::memory_order_acquire);
  }
  [[nodiscard]] uint64_t generation() const noexcept { return generation_.load(std::memory_order_acquire); }

 private:
  std::atomic<std::shared_ptr<const Snapshot>> current_;
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

struct ReloaderOptions {
  std::string policy_path = "/etc/sshring/policy.yaml";
  // Overrides the policy's grant_store (tests); empty = use the policy's.
  std::string grant_store;
  metrics::PolicyMetrics* metrics = nullptr;  // optional
  bool watch = true;                          // inotify on the policy file's directory and the grant store
  bool handle_sighup = true;                  // install a SIGHUP handler that requests a reload
  int debounce_ms = 100;                      // coalesce bursts of file events
  int gauge_interval_ms = 5000;  // refresh grant gauges (expiry needs no reload: decisions take now)
  // Called (on the reloading thread) once for each stored grant a reload refuses to honour (bad or
  // missing signature, unknown key, missing rule, outside its rule, ...): the caller counts it
  // (sshring_grants_rejected_total{reason}) and writes its grant_reject audit record. A grant is
  // reported again only if its content changes.
  std::function<void(const CheckedGrant&)> on_grant_rejected;
};

// Loads the policy and the grants into a Snapshot and publishes it into the cache. The background
// thread (start()) reloads on inotify events and SIGHUP; a failed reload keeps the last good
// snapshot, logs the error and counts sshring_policy_reloads_total{result="failure"}.
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

 private:
  void run();
  void update_gauges();
  void report_rejected(const Snapshot& snap);
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
  SignatureCache signatures_;                 // verified signatures, across reloads
  std::unordered_set<std::string> rejected_;  // grants already reported to on_grant_rejected
};

}  // namespace sshring::policy
