#include "policy/etcd/source.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "common/log.h"
#include "common/unique_fd.h"

namespace sshring::policy::etcd {
namespace {

constexpr auto kTick = std::chrono::seconds(1);  // progress requests
constexpr int64_t kStallSeconds = 10;            // no report this long: reconnect
constexpr auto kMinBackoff = std::chrono::milliseconds(200);
constexpr auto kMaxBackoff = std::chrono::milliseconds(5000);

UnixSeconds unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string read_policy_file(const std::string& path) {
  common::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) common::throw_errno("open policy " + path);
  std::string out;
  char buf[65536];
  while (true) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      common::throw_errno("read policy " + path);
    }
    if (n == 0) return out;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > kMaxPolicyBytes) throw common::UsageError(path + ": policy larger than 8 MiB");
  }
}

}  // namespace

EtcdSource::EtcdSource(std::shared_ptr<Client> client, std::string prefix, std::string policy_file)
    : client_(std::move(client)), keys_(std::move(prefix)), policy_file_(std::move(policy_file)) {}

EtcdSource::~EtcdSource() {
  stop();
}

std::string EtcdSource::id() const {
  std::string s = "etcd://";
  const auto& eps = client_->options().endpoints;
  for (size_t i = 0; i < eps.size(); ++i) s += (i ? "," : "") + eps[i];
  return s + keys_.prefix();
}

void EtcdSource::start(std::function<void()> changed) {
  changed_ = std::move(changed);
  list();
  thread_ = std::thread([this] { run(); });
  ticker_ = std::thread([this] {
    std::unique_lock lock(mu_);
    auto watch_since = unix_now();
    WatchStream* seen = nullptr;
    while (!cv_.wait_for(lock, kTick, [this] { return stopping_; })) {
      if (!watch_) continue;
      if (watch_ != seen) seen = watch_, watch_since = unix_now();
      if (unix_now() - std::max(last_sync_, watch_since) > kStallSeconds) {
        common::log_warn("etcd watch stalled; reconnecting", {{"source", id()}});
        watch_->cancel();
        continue;
      }
      watch_->request_progress();
    }
  });
}

void EtcdSource::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    if (watch_) watch_->cancel();
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (ticker_.joinable()) ticker_.join();
}

bool EtcdSource::wait_for(std::chrono::milliseconds d) {
  std::unique_lock lock(mu_);
  return !cv_.wait_for(lock, d, [this] { return stopping_; });
}

// Grants and policy at one revision. False (and the error kept for read()) when etcd is away.
bool EtcdSource::list() {
  try {
    auto r = client_->list(keys_.grants());
    std::optional<PublishedPolicy> p;
    if (policy_file_.empty()) p = read_policy(*client_, keys_, r.revision);
    {
      std::lock_guard lock(mu_);
      // An unchanged grant keeps its text object, so the reloader reuses its check after a re-list.
      std::map<std::string, GrantText> listed;
      for (auto& kv : r.kvs) {
        if (is_misplaced(kv)) continue;
        auto old = grants_.find(kv.key);
        GrantText text = old != grants_.end() && *old->second == kv.value
                             ? old->second
                             : std::make_shared<const std::string>(std::move(kv.value));
        listed.emplace(std::move(kv.key), std::move(text));
      }
      grants_ = std::move(listed);
      policy_ = std::move(p);
      revision_ = r.revision;
      synced_ = true;
      up_ = true;
      last_sync_ = unix_now();
    }
    common::log_info("etcd snapshot listed", {{"source", id()}, {"revision", std::to_string(r.revision)}});
    if (changed_) changed_();
    return true;
  } catch (const std::exception& e) {
    std::lock_guard lock(mu_);
    if (up_ || last_error_ != e.what())
      common::log_warn("etcd unreachable; keeping the last snapshot",
                       {{"source", id()}, {"error", e.what()}});
    up_ = false;
    last_error_ = e.what();
    return false;
  }
}

// A value under another key than its own id's (etcd/store.h grant_key_matches) is never a grant.
bool EtcdSource::is_misplaced(const KeyValue& kv) {
  std::string why;
  if (grant_key_matches(keys_, kv.key, kv.value, &why)) return false;
  misplaced_.fetch_add(1);
  common::log_warn("skipping a grant stored under another key than its id",
                   {{"source", id()}, {"key", kv.key}, {"error", why}});
  return true;
}

void EtcdSource::mark_synced(int64_t revision) {
  revision_ = std::max(revision_, revision);
  up_ = true;
  last_sync_ = unix_now();
}

// Applies one watch message; true if grants or the policy changed.
bool EtcdSource::apply(const WatchBatch& b) {
  std::optional<PublishedPolicy> fetched;
  bool policy_event = false;
  for (const auto& ev : b.events) {
    if (ev.kv.key != keys_.policy_current() || !policy_file_.empty()) continue;
    policy_event = true;
    fetched.reset();
    if (ev.type == EventType::kPut) fetched = read_policy(*client_, keys_, ev.kv.mod_revision);
  }
  std::lock_guard lock(mu_);
  bool changed = policy_event;
  if (policy_event) policy_ = std::move(fetched);
  for (const auto& ev : b.events) {
    if (!ev.kv.key.starts_with(keys_.grants())) continue;
    changed = true;
    if (ev.type == EventType::kPut && !is_misplaced(ev.kv)) {
      grants_[ev.kv.key] = std::make_shared<const std::string>(ev.kv.value);
    } else {
      grants_.erase(ev.kv.key);
    }
  }
  if (!b.events.empty()) {
    mark_synced(b.events.back().kv.mod_revision);
  } else if (!b.created) {
    mark_synced(b.revision);  // a progress report: every event up to b.revision was delivered
  }
  return changed;
}

void EtcdSource::watch_once() {
  int64_t from;
  {
    std::lock_guard lock(mu_);
    from = revision_ + 1;
  }
  std::unique_ptr<WatchStream> w;
  try {
    w = client_->watch(keys_.grants(), from, keys_.snapshot_range_end());
  } catch (const std::exception& e) {
    std::lock_guard lock(mu_);
    if (up_ || last_error_ != e.what())
      common::log_warn("etcd watch cannot start; retrying", {{"source", id()}, {"error", e.what()}});
    up_ = false;
    last_error_ = e.what();
    return;
  }
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    watch_ = w.get();
  }
  WatchBatch b;
  bool relist = false;
  try {
    while (w->next(&b)) {
      if (b.compact_revision != 0) {
        // etcd no longer has the events after `from`: list everything again.
        common::log_warn("etcd compacted past the watch; listing again",
                         {{"source", id()},
                          {"from", std::to_string(from)},
                          {"compacted", std::to_string(b.compact_revision)}});
        relist = true;
        break;
      }
      if (b.canceled) {
        common::log_warn("etcd canceled the watch", {{"source", id()}});
        break;
      }
      if (apply(b) && changed_) changed_();
    }
  } catch (const std::exception& e) {
    common::log_warn("etcd watch failed", {{"source", id()}, {"error", e.what()}});
  }
  {
    std::lock_guard lock(mu_);
    watch_ = nullptr;
    up_ = false;
  }
  w.reset();
  if (relist) {
    relists_.fetch_add(1);
    list();
  }
}

void EtcdSource::run() {
  auto backoff = kMinBackoff;
  while (true) {
    bool synced;
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      synced = synced_;
    }
    if (!synced && !list()) {
      if (!wait_for(backoff)) return;
      backoff = std::min(backoff * 2, kMaxBackoff);
      continue;
    }
    auto started = std::chrono::steady_clock::now();
    watch_once();
    if (std::chrono::steady_clock::now() - started > std::chrono::seconds(5)) backoff = kMinBackoff;
    if (!wait_for(backoff)) return;
    backoff = std::min(backoff * 2, kMaxBackoff);
  }
}

SourceData EtcdSource::read() {
  SourceData d;
  {
    std::lock_guard lock(mu_);
    if (!synced_) {
      throw common::UsageError(id() + ": no snapshot from etcd yet (" + last_error_ +
                               "); check --etcd, the TLS flags and the etcd user");
    }
    if (policy_file_.empty()) {
      if (!policy_) {
        throw common::UsageError(id() + ": no policy under " + keys_.policy_current() +
                                 "; publish one with: sshring policy push FILE --etcd ...");
      }
      d.policy_text = policy_->text;
      d.policy_origin = "etcd:" + keys_.policy_current() + "@" + std::to_string(policy_->meta.revision);
    }
    d.grants.reserve(grants_.size());
    for (const auto& [k, v] : grants_) d.grants.push_back(v);
    d.revision = revision_;
  }
  if (!policy_file_.empty()) {
    d.policy_text = read_policy_file(policy_file_);
    d.policy_origin = policy_file_;
  }
  return d;
}

SnapshotSource::Status EtcdSource::status() const {
  std::lock_guard lock(mu_);
  return {up_, revision_, last_sync_, misplaced_.load()};
}

}  // namespace sshring::policy::etcd
