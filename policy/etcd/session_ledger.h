// Fleet-wide session counts in etcd (policy::SessionLedger), what `sshring relay --etcd` uses so a
// principal's max_sessions holds across every relay of the fleet.
//
// Each relay process holds one lease (TTL 10 s, kept alive every 3 s) and writes its live count of
// each principal to PREFIX/sessions/counts/<principal>/<instance> under that lease, where <instance>
// is random per process (relays behind one load balancer share a relay id, and a hand-over starts a
// second process beside the first). One thread writes: it coalesces changes (only the latest count
// of a principal is written, many principals in one Txn) and keeps the lease alive; a lost lease is
// re-granted and every count written again. Another thread lists PREFIX/sessions/counts/ and watches
// it, keeping the sum of the other instances' counts per principal; a watch that ends or fell behind
// a compaction lists again. Each keep-alive round asks the watch for a progress report; a watch that
// has said nothing for kWatchStall (a member that hangs rather than refuses) is cancelled and listed
// again, through whichever member answers.
//
// What that guarantees (docs/etcd.md): a relay admits a session only if its own count plus what the
// others reported is below the limit. Two relays may each admit the last slot within one watch round
// trip. A relay that dies stops counting when its lease expires (at most the TTL); a relay that stops
// cleanly revokes its lease, so its counts vanish at once. While etcd is unreachable each relay keeps
// the others' last counts (never less than it knew) and its own limit still holds; it republishes
// when etcd returns.
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "policy/etcd/client.h"
#include "policy/session_ledger.h"

namespace sshring::policy::etcd {

struct LedgerOptions {
  std::string relay_id;  // written into each value, for operators reading etcd
  std::chrono::seconds ttl{10};
};

class EtcdSessionLedger final : public SessionLedger {
 public:
  EtcdSessionLedger(std::shared_ptr<Client> client, std::string prefix, LedgerOptions opts);
  // Stops both threads and revokes the lease (bounded by the client's call timeout).
  ~EtcdSessionLedger() override;
  EtcdSessionLedger(const EtcdSessionLedger&) = delete;
  EtcdSessionLedger& operator=(const EtcdSessionLedger&) = delete;

  // Starts the writer and the watcher with every signal blocked (the caller's thread takes them).
  void start();

  void publish(std::string_view principal, uint32_t count) override;
  [[nodiscard]] uint32_t others(std::string_view principal) const override;

  struct Status {
    bool up = false;         // own counts written and the others' watched, both current
    uint64_t others = 0;     // sessions the other instances report, over all principals
    uint64_t errors = 0;     // failed etcd calls (writes, keep-alives, lists, watches)
    uint64_t published = 0;  // counts written (puts and deletes)
    uint64_t instances = 0;  // other relay processes that report counts
  };
  [[nodiscard]] Status status() const;
  [[nodiscard]] const std::string& instance() const noexcept { return instance_; }

 private:
  void write_loop();
  void watch_loop();
  struct Remote {
    std::string principal;
    std::string instance;
    uint32_t count = 0;
  };
  using RemoteMap = std::map<std::string, Remote>;                 // etcd key -> another instance's count
  using TotalsMap = std::map<std::string, uint64_t, std::less<>>;  // principal -> sum over RemoteMap

  bool write_dirty();
  bool keep_alive();
  void check_watch();
  void relist_and_watch();
  void apply(const std::string& key, const std::string* value, RemoteMap& remote, TotalsMap& totals,
             uint64_t* errors) const;
  void fail(const char* what, const std::exception& e);
  bool wait(std::unique_lock<std::mutex>& lock, std::chrono::steady_clock::time_point until);

  std::shared_ptr<Client> client_;
  std::string prefix_;  // PREFIX/sessions/counts/
  LedgerOptions opts_;
  std::string instance_;
  std::string host_;  // written into each value

  mutable std::mutex mu_;  // guards everything below
  std::condition_variable cv_;
  bool stopping_ = false;
  std::map<std::string, uint32_t, std::less<>> mine_;  // principal -> this process's live count
  std::set<std::string, std::less<>> dirty_;           // principals whose count etcd does not have yet
  int64_t lease_ = 0;                                  // 0: none held
  std::chrono::steady_clock::time_point next_keepalive_{};
  bool write_up_ = false;
  bool watch_up_ = false;
  RemoteMap remote_;
  TotalsMap totals_;
  WatchStream* watch_ = nullptr;
  std::chrono::steady_clock::time_point watch_heard_{};  // last message on watch_ (progress included)
  uint64_t errors_ = 0;
  uint64_t published_ = 0;

  std::thread writer_;
  std::thread watcher_;
};

}  // namespace sshring::policy::etcd
