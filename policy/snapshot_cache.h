// The last good inputs of a consumer's Snapshot on local disk, so a relay or agent whose store
// (etcd) is away keeps deciding, and starts after a reboot, on what it last knew.
//
// One file per source (<dir>/snapshot-<hash of the source>.json) holding the policy text, every
// grant's JSON as the store holds it, the store revision and a SHA-256 over all of it. Written
// atomically (a fresh temp file, O_EXCL|O_NOFOLLOW, fsync, rename, fsync of the directory); on load
// the checksum, the format and the source must match, otherwise the file is refused (and the caller
// fails closed). The checksum detects corruption, not tampering: it is unkeyed, and anyone who can
// write the file can recompute it. What keeps others from writing it is ownership and mode, which
// both load and save check: the directory and the file must be owned by this process's user (or
// root) and not writable by group or others, and neither may be a symlink.
#pragma once

#include <sys/stat.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "policy/model.h"

namespace sshring::policy {

inline constexpr std::string_view kDefaultCacheDir = "/var/lib/sshring/cache";
inline constexpr size_t kMaxCacheBytes = 256u << 20;  // 8 MiB policy + 100,000 grants of a few KiB

// One stored grant's serialized text. Immutable and shared: a source hands the same object out until
// the grant changes, which lets a reloader recognise an unchanged grant by identity (GrantMemo).
using GrantText = std::shared_ptr<const std::string>;

// The inputs of one Snapshot as a source delivers them.
struct SourceData {
  std::string policy_text;        // YAML, as pushed
  std::string policy_origin;      // names the policy in errors ("etcd:/sshring/policy@42")
  std::vector<GrantText> grants;  // one serialized grant per entry, as stored; never null
  int64_t revision = 0;           // the store's revision (0 for sources without one)
};

struct CachedSnapshot {
  SourceData data;
  std::string source;  // what it came from ("etcd://127.0.0.1:2379/sshring")
  UnixSeconds saved_at = 0;
};

// Throws common::SystemError naming the file on I/O errors, common::UsageError for a directory
// that is not trusted (owner, mode, symlink).
void save_cached_snapshot(const std::string& dir, const std::string& source, const SourceData& data,
                          UnixSeconds now);
// nullopt with *why when there is no usable cache (missing, corrupt, other source, or a directory or
// file that others could have written).
std::optional<CachedSnapshot> load_cached_snapshot(const std::string& dir, const std::string& source,
                                                   std::string* why);
// Writes the newest data handed to it on a thread of its own (at a lower CPU priority), so that
// writing a large cache (65 MiB and about 0.4 s of CPU at 110,000 grants) never holds up the next
// reload; data handed over while a write runs or waits replaces any not yet written (only the newest
// matters), and writes are at least `interval` apart, so a burst of changes costs one write. The
// cache is therefore up to `interval` (plus one write) behind the published snapshot; flush() and the
// destructor write what is pending at once. Errors are logged and counted: deciding goes on.
inline constexpr std::chrono::milliseconds kCacheWriteInterval{2000};
class SnapshotCacheWriter {
 public:
  // `on_failure` (may be empty) is called on the writer's thread after each failed write.
  SnapshotCacheWriter(std::string dir, std::string source, std::function<void()> on_failure = {},
                      std::chrono::milliseconds interval = kCacheWriteInterval);
  ~SnapshotCacheWriter();
  SnapshotCacheWriter(const SnapshotCacheWriter&) = delete;
  SnapshotCacheWriter& operator=(const SnapshotCacheWriter&) = delete;
  void submit(SourceData d, UnixSeconds now);
  // Returns once everything submitted before the call is on disk (or failed).
  void flush();
  [[nodiscard]] uint64_t failed() const;

 private:
  void run();
  const std::string dir_;
  const std::string source_;
  const std::function<void()> on_failure_;
  const std::chrono::milliseconds interval_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::optional<SourceData> pending_;
  UnixSeconds pending_at_ = 0;
  uint64_t submitted_ = 0;
  uint64_t done_ = 0;  // submissions covered by a finished write
  uint64_t failed_ = 0;
  bool stopping_ = false;
  int flushing_ = 0;    // callers waiting in flush()
  std::thread thread_;  // last: starts after the members it uses
};

// The file save/load use for `source` in `dir`.
// The trust rule of a cache directory and everything in it (the snapshot, the decision ledger):
// written by this process's user or root, and by nobody through group or other write bits. A
// checksum only detects corruption; whoever can write the directory can rewrite what a consumer
// starts from, so ownership and mode are what keep others out. Empty if trusted, else why not
// (with the fix).
std::string untrusted(const struct stat& st, const std::string& what);
// The cache directory, opened without following a symlink and checked (untrusted); -1 with *why.
int open_cache_dir(const std::string& dir, std::string* why);

std::string cached_snapshot_path(const std::string& dir, const std::string& source);

}  // namespace sshring::policy
