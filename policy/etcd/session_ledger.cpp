#include "policy/etcd/session_ledger.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <limits>
#include <random>

#include <nlohmann/json.hpp>

#include "common/host.h"
#include "common/log.h"

namespace sshring::policy::etcd {
namespace {

constexpr auto kMinBackoff = std::chrono::milliseconds(200);
constexpr auto kMaxBackoff = std::chrono::milliseconds(5000);
constexpr size_t kOpsPerTxn = 64;  // etcd takes 128 per Txn by default
// A watch silent this long, progress reports included (one is asked for every keep-alive round,
// ttl / 3), is stuck on a hung member: it is cancelled and the counts listed again.
constexpr auto kWatchStall = std::chrono::seconds(5);

std::string random_instance() {
  std::random_device rd;
  static const char* k = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 4; ++i) {
    uint32_t v = rd();
    for (int j = 0; j < 4; ++j, v >>= 8) s += {k[(v >> 4) & 15], k[v & 15]};
  }
  return s;
}

// A count another relay wrote; nullopt if the value is not ours (it is then ignored and counted).
std::optional<uint32_t> parse_count(const std::string& value) {
  auto j = nlohmann::json::parse(value, nullptr, false);
  if (!j.is_object() || !j.contains("count") || !j["count"].is_number_unsigned()) return std::nullopt;
  return static_cast<uint32_t>(std::min<uint64_t>(j["count"].get<uint64_t>(), UINT32_MAX));
}

}  // namespace

EtcdSessionLedger::EtcdSessionLedger(std::shared_ptr<Client> client, std::string prefix, LedgerOptions opts)
    : client_(std::move(client)),
      prefix_(std::move(prefix) + "/sessions/counts/"),
      opts_(std::move(opts)),
      instance_(random_instance()),
      host_(common::host_name("")) {}

EtcdSessionLedger::~EtcdSessionLedger() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    if (watch_) watch_->cancel();
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  if (watcher_.joinable()) watcher_.join();
}

void EtcdSessionLedger::start() {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  writer_ = std::thread([this] { write_loop(); });
  watcher_ = std::thread([this] { watch_loop(); });
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

void EtcdSessionLedger::publish(std::string_view principal, uint32_t count) {
  {
    std::lock_guard lock(mu_);
    auto it = mine_.find(principal);
    if (it == mine_.end()) it = mine_.emplace(std::string(principal), 0).first;
    it->second = count;
    if (!dirty_.contains(principal)) dirty_.emplace(principal);
  }
  cv_.notify_all();
}

uint32_t EtcdSessionLedger::others(std::string_view principal) const {
  std::lock_guard lock(mu_);
  auto it = totals_.find(principal);
  return it == totals_.end() ? 0 : static_cast<uint32_t>(std::min<uint64_t>(it->second, UINT32_MAX));
}

EtcdSessionLedger::Status EtcdSessionLedger::status() const {
  std::lock_guard lock(mu_);
  Status s;
  s.up = write_up_ && watch_up_;
  for (const auto& [p, n] : totals_) s.others += n;
  std::set<std::string_view> inst;
  for (const auto& [k, r] : remote_) inst.insert(r.instance);
  s.instances = inst.size();
  s.errors = errors_;
  s.published = published_;
  return s;
}

void EtcdSessionLedger::fail(const char* what, const std::exception& e) {
  bool was_up;
  {
    std::lock_guard lock(mu_);
    ++errors_;
    was_up = write_up_ && watch_up_;
  }
  if (was_up)
    common::log_warn(what, {{"etcd", client_->describe()}, {"error", e.what()}, {"instance", instance_}});
}

bool EtcdSessionLedger::wait(std::unique_lock<std::mutex>& lock,
                             std::chrono::steady_clock::time_point until) {
  cv_.wait_until(lock, until, [&] { return stopping_ || !dirty_.empty(); });
  return !stopping_;
}

// Writes every dirty count in Txns of kOpsPerTxn (put under the lease, or delete at 0). False (and
// the counts dirty again) when etcd refused or was away.
bool EtcdSessionLedger::write_dirty() {
  std::vector<Op> ops;
  std::vector<std::string> names;
  int64_t lease;
  {
    std::lock_guard lock(mu_);
    lease = lease_;
    for (const auto& p : dirty_) {
      const uint32_t n = mine_[p];
      Op op;
      op.key = prefix_ + p + "/" + instance_;
      if (n == 0) {
        op.kind = Op::Kind::kDelete;
      } else {
        op.value =
            nlohmann::json{{"count", n}, {"relay_id", opts_.relay_id}, {"host", host_}, {"pid", ::getpid()}}
                .dump();
        op.lease = lease;
      }
      ops.push_back(std::move(op));
      names.push_back(p);
    }
    dirty_.clear();
    for (auto it = mine_.begin(); it != mine_.end();) it = it->second == 0 ? mine_.erase(it) : std::next(it);
  }
  size_t done = 0;
  try {
    for (; done < ops.size(); done += kOpsPerTxn) {
      std::vector<Op> batch(ops.begin() + static_cast<ptrdiff_t>(done),
                            ops.begin() + static_cast<ptrdiff_t>(std::min(ops.size(), done + kOpsPerTxn)));
      client_->txn({}, batch);
      std::lock_guard lock(mu_);
      published_ += batch.size();
    }
    return true;
  } catch (const std::exception& e) {
    fail("fleet session counts not written; retrying", e);
    std::lock_guard lock(mu_);
    // What was not written is written again (with the count it has by then); a zero that went out
    // of mine_ is a delete again.
    for (size_t i = done; i < names.size(); ++i) {
      if (!mine_.contains(names[i])) mine_.emplace(names[i], 0);
      dirty_.insert(names[i]);
    }
    write_up_ = false;
    return false;
  }
}

bool EtcdSessionLedger::keep_alive() {
  int64_t lease;
  {
    std::lock_guard lock(mu_);
    lease = lease_;
  }
  try {
    if (lease == 0) {
      lease = client_->lease_grant(opts_.ttl.count());
    } else if (client_->lease_keepalive(lease) <= 0) {
      // Expired while etcd was away (or revoked): every count went with it.
      common::log_warn("fleet session lease lost; writing every count again", {{"instance", instance_}});
      lease = client_->lease_grant(opts_.ttl.count());
    }
    std::lock_guard lock(mu_);
    lease_ = lease;
    next_keepalive_ = std::chrono::steady_clock::now() + opts_.ttl / 3;
    // Every count again, each round: an unconditional put that a retried call delivered late (after
    // a newer one) would otherwise stand until this relay's count changed; so it stands a round at most.
    for (const auto& [p, n] : mine_)
      if (n > 0) dirty_.insert(p);
    return true;
  } catch (const std::exception& e) {
    fail("fleet session lease not kept alive; retrying", e);
    std::lock_guard lock(mu_);
    write_up_ = false;
    next_keepalive_ = std::chrono::steady_clock::now() + kMinBackoff * 5;
    return false;
  }
}

// On the writer's keep-alive rounds: a progress request keeps a healthy watch talking; a silent one
// is cancelled (the watcher lists again). Under mu_.
void EtcdSessionLedger::check_watch() {
  if (!watch_) return;
  if (std::chrono::steady_clock::now() - watch_heard_ > kWatchStall) {
    common::log_warn("fleet session watch silent; listing again", {{"instance", instance_}});
    ++errors_;
    watch_up_ = false;
    watch_->cancel();
    return;
  }
  watch_->request_progress();
}

void EtcdSessionLedger::write_loop() {
  auto backoff = kMinBackoff;
  bool lease_ok = false;  // the last keep-alive (or grant) succeeded
  std::unique_lock lock(mu_);
  while (!stopping_) {
    const bool keepalive_due = lease_ == 0 || std::chrono::steady_clock::now() >= next_keepalive_;
    if (keepalive_due) {
      lock.unlock();
      lease_ok = keep_alive();
      lock.lock();
      check_watch();
      if (lease_ == 0) {  // no lease: nothing can be written yet, however many counts wait
        if (cv_.wait_for(lock, backoff, [&] { return stopping_; })) break;
        backoff = std::min(backoff * 2, kMaxBackoff);
        continue;
      }
    }
    if (!dirty_.empty()) {
      lock.unlock();
      const bool ok = write_dirty();
      lock.lock();
      if (!ok) {
        cv_.wait_for(lock, backoff, [&] { return stopping_; });
        backoff = std::min(backoff * 2, kMaxBackoff);
        continue;
      }
    }
    backoff = kMinBackoff;
    write_up_ = lease_ok;  // counts written and the lease they live on kept alive
    if (!wait(lock, next_keepalive_)) break;
  }
  const int64_t lease = lease_;
  const bool reachable = write_up_;
  lock.unlock();
  if (lease == 0 || !reachable) return;  // etcd away: the lease expires by itself within the TTL
  try {
    client_->lease_revoke(lease);  // this process's counts leave etcd now, not after the TTL
  } catch (const std::exception& e) {
    common::log_warn("fleet session lease not revoked; it expires by itself",
                     {{"error", e.what()}, {"ttl_s", std::to_string(opts_.ttl.count())}});
  }
}

// One key of another instance into `remote` and `totals` (value null: deleted).
void EtcdSessionLedger::apply(const std::string& key, const std::string* value, RemoteMap& remote,
                              TotalsMap& totals, uint64_t* errors) const {
  if (!key.starts_with(prefix_)) return;
  const std::string rest = key.substr(prefix_.size());
  const size_t slash = rest.rfind('/');
  if (slash == std::string::npos || slash == 0) return;
  Remote r{rest.substr(0, slash), rest.substr(slash + 1), 0};
  if (r.instance == instance_) return;
  if (value) {
    auto n = parse_count(*value);
    if (!n) {
      ++*errors;
      return;
    }
    r.count = *n;
  }
  auto it = remote.find(key);
  if (it != remote.end()) {
    auto t = totals.find(it->second.principal);
    if (t != totals.end() && (t->second -= it->second.count) == 0) totals.erase(t);
    remote.erase(it);
  }
  if (!value || r.count == 0) return;
  totals[r.principal] += r.count;
  remote.emplace(key, std::move(r));
}

void EtcdSessionLedger::relist_and_watch() {
  RangeResult all = client_->list(prefix_);
  // Built outside the lock (workers wait on it under the session counters' lock), swapped in.
  RemoteMap remote;
  TotalsMap totals;
  uint64_t bad = 0;
  for (const auto& kv : all.kvs) apply(kv.key, &kv.value, remote, totals, &bad);
  if (bad) common::log_warn("fleet session counts not understood; ignored", {{"keys", std::to_string(bad)}});
  {
    std::lock_guard lock(mu_);
    remote_.swap(remote);
    totals_.swap(totals);
    errors_ += bad;
    if (stopping_) return;
  }
  auto w = client_->watch(prefix_, all.revision + 1);
  struct Clear {  // watch_ never outlives the stream, however this returns
    EtcdSessionLedger* self;
    ~Clear() {
      std::lock_guard lock(self->mu_);
      self->watch_ = nullptr;
      self->watch_up_ = false;
    }
  } clear{this};
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    watch_ = w.get();
    watch_heard_ = std::chrono::steady_clock::now();
    watch_up_ = true;
  }
  WatchBatch b;
  while (w->next(&b)) {
    if (b.compact_revision != 0 || b.canceled) break;  // list again
    std::lock_guard lock(mu_);
    watch_heard_ = std::chrono::steady_clock::now();
    for (const auto& ev : b.events)
      apply(ev.kv.key, ev.type == EventType::kPut ? &ev.kv.value : nullptr, remote_, totals_, &errors_);
  }
}

void EtcdSessionLedger::watch_loop() {
  auto backoff = kMinBackoff;
  while (true) {
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
    }
    auto started = std::chrono::steady_clock::now();
    try {
      relist_and_watch();
    } catch (const std::exception& e) {
      fail("fleet session counts not watched; keeping the last ones", e);
    }
    if (std::chrono::steady_clock::now() - started > std::chrono::seconds(5)) backoff = kMinBackoff;
    std::unique_lock lock(mu_);
    if (cv_.wait_for(lock, backoff, [&] { return stopping_; })) return;
    backoff = std::min(backoff * 2, kMaxBackoff);
  }
}

}  // namespace sshring::policy::etcd
