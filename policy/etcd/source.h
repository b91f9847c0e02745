// A policy::SnapshotSource on etcd: what relays and agents started with --etcd read their snapshot
// from.
//
// One thread lists the prefix (grants and the policy, at one revision), then watches it from the
// next revision and applies each event to an in-memory copy; every change calls the reloader's
// `changed`. Every second it asks etcd for a watch progress report: a report (or any event) is a
// sync, i.e. proof that the copy is current to that revision; no report for kStallSeconds cancels the
// watch. When the watch ends (member gone, etcd down) the thread reconnects with a backoff (to any
// member) and resumes from the last revision it applied; when etcd compacted past that revision the
// resume is refused and the thread lists everything again, so no change is lost either way.
//
// With `policy_file`, the policy comes from that local file (a policy naming
// `grant_store: etcd://...`) and only the grants come from etcd.
#pragma once

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "policy/cache.h"
#include "policy/etcd/client.h"
#include "policy/etcd/store.h"

namespace sshring::policy::etcd {

class EtcdSource final : public SnapshotSource {
 public:
  EtcdSource(std::shared_ptr<Client> client, std::string prefix, std::string policy_file = {});
  ~EtcdSource() override;

  // Lists once synchronously (so a consumer whose etcd is up starts current), then watches.
  void start(std::function<void()> changed) override;
  void stop() override;
  SourceData read() override;
  [[nodiscard]] Status status() const override;
  [[nodiscard]] std::string id() const override;
  [[nodiscard]] std::string policy_file() const override { return policy_file_; }

  // Watches re-created after a compaction (tests, and a log line each time).
  [[nodiscard]] uint64_t relists() const noexcept { return relists_.load(); }
  // Grant values skipped (each time seen) because their key is not keys.grant(their id).
  [[nodiscard]] uint64_t misplaced() const noexcept { return misplaced_.load(); }

 private:
  void run();
  bool list();
  void watch_once();
  bool apply(const WatchBatch& b);
  bool is_misplaced(const KeyValue& kv);
  void mark_synced(int64_t revision);
  bool wait_for(std::chrono::milliseconds d);

  std::shared_ptr<Client> client_;
  Keys keys_;
  std::string policy_file_;
  std::function<void()> changed_;

  mutable std::mutex mu_;                    // guards everything below
  std::map<std::string, GrantText> grants_;  // key -> grant JSON (a new object when it changes)
  std::optional<PublishedPolicy> policy_;
  bool synced_ = false;  // a list succeeded at least once
  bool up_ = false;
  int64_t revision_ = 0;
  UnixSeconds last_sync_ = 0;
  std::string last_error_;
  WatchStream* watch_ = nullptr;
  bool stopping_ = false;
  std::condition_variable cv_;

  std::atomic<uint64_t> relists_{0};
  std::atomic<uint64_t> misplaced_{0};
  std::thread thread_;
  std::thread ticker_;
};

}  // namespace sshring::policy::etcd
