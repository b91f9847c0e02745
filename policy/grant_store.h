// Where grants live. GrantStore is the seam for a fleet store later (etcd); DirGrantStore is the
// embedded one-machine store.
//
// DirGrantStore layout: <dir>/<id>.grant, one JSON object per grant. Writers take flock(LOCK_EX) on
// <dir>/.lock, write <dir>/.<id>.tmp, fsync it, rename it over <id>.grant and fsync the directory:
// a reader sees either the old or the new complete file, never a torn one, and a grant is on disk
// before add() returns. A writer killed mid-write leaves only a .tmp file, which readers ignore and
// the next writer removes. Readers take no lock.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "policy/grant.h"

namespace sshring::policy {

class GrantStore {
 public:
  virtual ~GrantStore() = default;
  // Every stored grant (live, expired and revoked), sorted by id.
  [[nodiscard]] virtual std::vector<Grant> load() const = 0;
  // Stores a new grant durably. Throws if the id exists.
  virtual void add(const Grant& g) = 0;
  // Marks a grant revoked (kept, so flows that still use it classify as bypass_expired). Returns
  // the updated grant, or nullopt if no grant has that id. Throws if it is already revoked.
  virtual std::optional<Grant> revoke(std::string_view id, std::string_view by, std::string_view reason,
                                      UnixSeconds now) = 0;
  // Marks grants that have expired since the last sweep (returned, so the caller writes
  // grant_expire audit records) and deletes grants whose expiry is older than `retention_seconds`.
  virtual std::vector<Grant> sweep(UnixSeconds now, int64_t retention_seconds) = 0;
  // Where it lives (a directory for the embedded store), for messages and inotify.
  [[nodiscard]] virtual std::string location() const = 0;
};

inline constexpr int64_t kDefaultGrantRetentionSeconds = 7 * 86400;
inline constexpr size_t kMaxGrants = 100000;
inline constexpr size_t kMaxGrantFileBytes = 64 * 1024;

class DirGrantStore final : public GrantStore {
 public:
  // Creates the directory (0750) if missing when `create` is true. Throws common::SystemError.
  explicit DirGrantStore(std::string dir, bool create = true);
  [[nodiscard]] std::vector<Grant> load() const override;
  void add(const Grant& g) override;
  std::optional<Grant> revoke(std::string_view id, std::string_view by, std::string_view reason,
                              UnixSeconds now) override;
  std::vector<Grant> sweep(UnixSeconds now, int64_t retention_seconds) override;
  [[nodiscard]] std::string location() const override { return dir_; }

 private:
  void write_locked(const Grant& g);
  std::string dir_;
};

// "g-" + 12 random hex digits.
std::string new_grant_id();

}  // namespace sshring::policy
