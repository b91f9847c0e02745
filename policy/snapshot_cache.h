// The last good inputs of a consumer's Snapshot on local disk, so a relay or agent whose store
// (etcd) is away keeps deciding, and starts after a reboot, on what it last knew.
//
// One file per source (<dir>/snapshot-<hash of the source>.json) holding the policy text, every
// grant's JSON as the store holds it, the store revision and a SHA-256 over all of it. Written
// atomically (temp file, fsync, rename, fsync of the directory); on load the checksum, the format
// and the source must match, otherwise the file is refused (and the caller fails closed).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "policy/model.h"

namespace sshring::policy {

inline constexpr std::string_view kDefaultCacheDir = "/var/lib/sshring/cache";
inline constexpr size_t kMaxCacheBytes = 256u << 20;  // 8 MiB policy + 100,000 grants of a few KiB

// The inputs of one Snapshot as a source delivers them.
struct SourceData {
  std::string policy_text;          // YAML, as pushed
  std::string policy_origin;        // names the policy in errors ("etcd:/sshring/policy@42")
  std::vector<std::string> grants;  // one serialized grant per entry, as stored
  int64_t revision = 0;             // the store's revision (0 for sources without one)
};

struct CachedSnapshot {
  SourceData data;
  std::string source;  // what it came from ("etcd://127.0.0.1:2379/sshring")
  UnixSeconds saved_at = 0;
};

// Throws common::SystemError naming the file on I/O errors.
void save_cached_snapshot(const std::string& dir, const std::string& source, const SourceData& data,
                          UnixSeconds now);
// nullopt with *why when there is no usable cache (missing, corrupt, other source).
std::optional<CachedSnapshot> load_cached_snapshot(const std::string& dir, const std::string& source,
                                                   std::string* why);
// The file save/load use for `source` in `dir`.
std::string cached_snapshot_path(const std::string& dir, const std::string& source);

}  // namespace sshring::policy
