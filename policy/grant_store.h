// Where grants live: whole signed grant objects (SignedGrant, serialized as JSON by
// signed_grant_to_json), so every store carries the signatures as written. GrantStore is the seam
// for a fleet store (etcd); DirGrantStore is the embedded one-machine store. Stores do not judge
// grants: readers check them (check_grant) against the policy.
//
// DirGrantStore layout: <dir>/<id>.grant, one JSON object per grant. Writers take flock(LOCK_EX) on
// <dir>/.lock, write a mkstemp temp file <dir>/.tmp-XXXXXX, fsync it, rename it over <id>.grant and
// fsync the directory: a reader sees either the old or the new complete file, never a torn one, and a
// grant is on disk before add() returns. A writer killed mid-write leaves only a .tmp- file, which
// readers ignore and the next writer removes. Readers take no lock.
//
// The store is a root-owned place other users may be able to reach, so every open is relative to
// the directory's fd with O_NOFOLLOW (a planted symlink is refused, never followed), temp files are
// created with O_EXCL by mkstemp, readers open with O_NONBLOCK and read only regular files of at most
// kMaxGrantFileBytes (a FIFO or device never hangs or feeds them), and a directory writable by
// others (o+w), or owned by someone other than us or root, is refused.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "policy/grant.h"

namespace sshring::policy {

class GrantStore {
 public:
  virtual ~GrantStore() = default;
  // Every stored grant object, sorted by id. Unreadable entries are skipped with a warning.
  [[nodiscard]] virtual std::vector<SignedGrant> load() const = 0;
  // Stores a new grant durably. Throws if the id exists.
  virtual void add(const SignedGrant& g) = 0;
  // Read-modify-write of one grant, serialized with other writers: `change` edits the stored object
  // (e.g. appends a signed decision) and may throw to abort without writing. Returns the stored
  // result, or nullopt if no grant has that id.
  virtual std::optional<SignedGrant> update(std::string_view id,
                                            const std::function<void(SignedGrant&)>& change) = 0;
  // Deletes grants that can no longer matter: grant_horizon(g) + retention_seconds < now. Returns
  // how many it deleted.
  virtual size_t prune(UnixSeconds now, int64_t retention_seconds) = 0;
  // Where it lives (a directory for the embedded store), for messages and inotify.
  [[nodiscard]] virtual std::string location() const = 0;
  // For audit records, which are durable before the write they describe and so cannot name its
  // revision: inside update's `change`, the revision of the object being changed (the write applies
  // to exactly that version or not at all); elsewhere the store's revision at its last load(). 0 for
  // a store without revisions (the directory store).
  [[nodiscard]] virtual int64_t base_revision() const noexcept { return 0; }
};

inline constexpr int64_t kDefaultGrantRetentionSeconds = int64_t{7} * 86400;
inline constexpr size_t kMaxGrants = 100000;
// A directory store reads at most this many *.grant names per load (grants and whatever else).
inline constexpr size_t kMaxStoreFiles = kMaxGrants * 4;
inline constexpr size_t kMaxGrantFileBytes = size_t{64} * 1024;

// The last second at which anything in the object could still take effect, from its own (unverified)
// times: its latest time plus its TTL plus the longest request_ttl a policy may set.
UnixSeconds grant_horizon(const SignedGrant& g) noexcept;

class DirGrantStore final : public GrantStore {
 public:
  // Creates the directory (0750) if missing when `create` is true. Throws common::SystemError, or
  // common::UsageError when the directory is unsafe (a symlink, writable by others, foreign owner).
  // `max_files`: how many *.grant names load() reads at most (tests lower it).
  explicit DirGrantStore(std::string dir, bool create = true, size_t max_files = kMaxStoreFiles);
  [[nodiscard]] std::vector<SignedGrant> load() const override;
  // One grant by its id (<id>.grant), without listing the directory; nullopt if it is not there or
  // not a readable grant.
  [[nodiscard]] std::optional<SignedGrant> get(std::string_view id) const;
  void add(const SignedGrant& g) override;
  std::optional<SignedGrant> update(std::string_view id,
                                    const std::function<void(SignedGrant&)>& change) override;
  size_t prune(UnixSeconds now, int64_t retention_seconds) override;
  [[nodiscard]] std::string location() const override { return dir_; }

 private:
  [[nodiscard]] int open_dir() const;  // O_DIRECTORY | O_NOFOLLOW, checked; caller owns the fd
  void write_locked(int dfd, const SignedGrant& g);
  std::string dir_;
  size_t max_files_;
};

// "g-" + 12 random hex digits.
std::string new_grant_id();

}  // namespace sshring::policy
