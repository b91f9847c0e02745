#include "policy/etcd/nonce_claims.h"

#include <pthread.h>
#include <signal.h>

#include <random>

#include "common/log.h"

namespace sshring::policy::etcd {
namespace {
constexpr auto kProbeEvery = std::chrono::seconds(2);
}  // namespace

EtcdNonceClaims::EtcdNonceClaims(std::shared_ptr<Client> client, std::string prefix, NonceClaimOptions opts)
    : client_(std::move(client)),
      prefix_(std::move(prefix) + "/sessions/nonces/"),
      opts_(opts),
      instance_(std::to_string(std::random_device{}()) + std::to_string(std::random_device{}())) {
  if (opts_.threads == 0) opts_.threads = 1;
}

EtcdNonceClaims::~EtcdNonceClaims() {
  std::deque<Job> left;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    left.swap(queue_);
  }
  cv_.notify_all();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  for (auto& j : left) j.done(Result::kFailed);
}

void EtcdNonceClaims::start() {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  for (size_t i = 0; i < opts_.threads; ++i) threads_.emplace_back([this] { run(); });
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

void EtcdNonceClaims::claim(std::string_view relay_id, std::string_view principal,
                            const std::array<uint8_t, 16>& nonce, std::function<void(Result)> done) {
  static const char* k = "0123456789abcdef";
  Job j;
  j.key.reserve(prefix_.size() + relay_id.size() + 1 + 2 * nonce.size());
  j.key.append(prefix_).append(relay_id).push_back('/');
  for (uint8_t b : nonce) j.key += {k[b >> 4], k[b & 15]};
  j.principal = principal;
  j.done = std::move(done);
  {
    std::lock_guard lock(mu_);
    if (!stopping_ && queue_.size() < opts_.queue && !threads_.empty()) {
      queue_.push_back(std::move(j));
      cv_.notify_one();
      return;
    }
    ++counts_.failed;  // a burst beyond what etcd takes: refused, not decided without the claim
  }
  j.done(Result::kFailed);
}

EtcdNonceClaims::Counts EtcdNonceClaims::counts() const {
  std::lock_guard lock(mu_);
  return counts_;
}

int64_t EtcdNonceClaims::current_lease() {
  std::lock_guard lock(lease_mu_);
  const auto now = std::chrono::steady_clock::now();
  if (lease_ == 0 || now >= lease_until_) {
    const auto ttl = std::chrono::duration_cast<std::chrono::seconds>(2 * opts_.window).count() + 1;
    lease_ = client_->lease_grant(ttl);
    lease_until_ = now + opts_.window / 2;
  }
  return lease_;
}

NonceClaims::Result EtcdNonceClaims::attempt(const Job& j) {
  const int64_t now_ns = std::chrono::steady_clock::now().time_since_epoch().count();
  // etcd was unreachable a moment ago: answer at once instead of holding every handshake for a
  // timeout; one claim per kProbeEvery (whoever swaps the probe time first) asks again.
  if (down_.load()) {
    int64_t at = probe_at_ns_.load();
    if (now_ns < at ||
        !probe_at_ns_.compare_exchange_strong(at, now_ns + std::chrono::nanoseconds(kProbeEvery).count()))
      return Result::kUnavailable;
  }
  Op put;
  put.key = j.key;
  // The token tells this claim's own write from another relay's: a Txn the client retried on
  // another member after its first attempt applied fails its compare on our own key.
  put.value = j.principal + " " + std::to_string(token_.fetch_add(1)) + "@" + instance_;
  TxnResult r;
  try {
    put.lease = current_lease();
    r = client_->txn({Compare{j.key, Compare::Target::kCreate, 0}}, {put});
  } catch (const EtcdError& e) {
    return failed(e, e.unavailable());
  } catch (const std::exception& e) {
    return failed(e, false);
  }
  mark_up();
  if (r.succeeded) return Result::kFresh;
  try {
    auto now = client_->get(j.key);
    if (now.kvs.size() == 1 && now.kvs[0].value == put.value) return Result::kFresh;
  } catch (const std::exception&) {
    // The key exists and we cannot tell whose it is: a replay (fail closed).
  }
  return Result::kReplayed;
}

NonceClaims::Result EtcdNonceClaims::failed(const std::exception& e, bool unreachable) {
  if (!unreachable) {
    common::log_error("nonce claim refused by etcd; refusing the session",
                      {{"etcd", client_->describe()}, {"error", e.what()}});
    return Result::kFailed;
  }
  if (!down_.exchange(true)) {
    probe_at_ns_.store(std::chrono::steady_clock::now().time_since_epoch().count() +
                       std::chrono::nanoseconds(kProbeEvery).count());
    common::log_warn("nonce claims failing; etcd does not answer",
                     {{"etcd", client_->describe()}, {"error", e.what()}});
  }
  std::lock_guard lock(lease_mu_);
  lease_ = 0;  // the lease may have expired while etcd was away: take a new one
  return Result::kUnavailable;
}

void EtcdNonceClaims::mark_up() {
  if (down_.exchange(false)) common::log_info("nonce claims answered again", {{"etcd", client_->describe()}});
}

void EtcdNonceClaims::run() {
  std::unique_lock lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (stopping_) return;
    Job j = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    const Result r = attempt(j);
    lock.lock();
    switch (r) {
      case Result::kFresh:
        ++counts_.fresh;
        break;
      case Result::kReplayed:
        ++counts_.replayed;
        break;
      case Result::kUnavailable:
        ++counts_.unavailable;
        break;
      case Result::kFailed:
        ++counts_.failed;
        break;
    }
    lock.unlock();
    j.done(r);
    lock.lock();
  }
}

}  // namespace sshring::policy::etcd
