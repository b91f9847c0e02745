// Preamble nonces claimed in etcd (policy::NonceClaims), what `sshring relay --etcd` uses so that a
// preamble replayed to another relay with the same relay id is refused.
//
// A claim is one Txn: create PREFIX/sessions/nonces/<relay-id>/<nonce hex> if it does not exist
// (compare create_revision == 0); a failed compare is a replay. Keys expire with a lease shared by
// every claim of this process in one period: a lease granted at t with TTL 2 x window takes claims
// until t + window / 2, so each key outlives the preamble's freshness window by half a window (room
// for relays whose clocks disagree; the relay refuses older timestamps itself) and this process holds
// at most four live leases, however many claims it makes.
//
// Claims run on 16 threads of their own (gRPC calls block), from a bounded queue; a full queue,
// etcd unreachable (or too slow: one pass over the members) answers kUnavailable; after that, claims
// answer kUnavailable at once and one claim every 2 s asks etcd again. A full queue, or an error
// etcd answered with (permission, quota), answers kFailed: the relay refuses those sessions. A claim
// whose compare failed is a replay even if reading the key back then fails (fail closed). Cost: one etcd
// write (a Raft proposal) per authenticated handshake, measured in bench/fleet.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "policy/etcd/client.h"
#include "policy/nonce_claims.h"

namespace sshring::policy::etcd {

struct NonceClaimOptions {
  std::chrono::milliseconds window{35000};  // the relay's max skew + max future skew
  size_t threads = 16;  // claims in flight at once (bench/fleet: 4 -> 16 doubles claims/s)
  size_t queue = 4096;  // claims waiting; beyond this: kUnavailable
};

class EtcdNonceClaims final : public NonceClaims {
 public:
  EtcdNonceClaims(std::shared_ptr<Client> client, std::string prefix, NonceClaimOptions opts);
  // Answers every queued claim kUnavailable and joins the threads.
  ~EtcdNonceClaims() override;
  EtcdNonceClaims(const EtcdNonceClaims&) = delete;
  EtcdNonceClaims& operator=(const EtcdNonceClaims&) = delete;

  // Starts the claim threads with every signal blocked.
  void start();
  void claim(std::string_view relay_id, std::string_view principal, const std::array<uint8_t, 16>& nonce,
             std::function<void(Result)> done) override;

  struct Counts {
    uint64_t fresh = 0, replayed = 0, unavailable = 0, failed = 0;
  };
  [[nodiscard]] Counts counts() const;

 private:
  struct Job {
    std::string key;
    std::string principal;
    std::function<void(Result)> done;
  };
  void run();
  Result attempt(const Job& j);
  Result failed(const std::exception& e, bool unreachable);
  void mark_up();
  int64_t current_lease();  // throws EtcdError

  std::shared_ptr<Client> client_;
  std::string prefix_;  // PREFIX/sessions/nonces/
  NonceClaimOptions opts_;
  std::string instance_;  // random per process: part of each claim's value

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  bool stopping_ = false;
  Counts counts_;

  std::mutex lease_mu_;  // one lease grant at a time (claims that find etcd down never take it)
  int64_t lease_ = 0;
  std::chrono::steady_clock::time_point lease_until_{};  // take claims on lease_ until then
  std::atomic<int64_t> probe_at_ns_{0};  // while down_: steady-clock ns of the next claim that asks etcd

  std::atomic<uint64_t> token_{0};
  std::atomic<bool> down_{false};  // the last claim failed (log transitions only)

  std::vector<std::thread> threads_;
};

}  // namespace sshring::policy::etcd
