#include "policy/grant_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "common/log.h"
#include "common/unique_fd.h"

namespace sshring::policy {
namespace {

using common::UniqueFd;

constexpr std::string_view kSuffix = ".grant";

bool valid_id(std::string_view id) {
  return id.size() == 14 && id.starts_with("g-") && std::all_of(id.begin() + 2, id.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

void mkdirs(const std::string& dir) {
  for (size_t i = 1; i <= dir.size(); ++i) {
    if (i == dir.size() || dir[i] == '/') {
      std::string part = dir.substr(0, i);
      if (::mkdir(part.c_str(), 0750) != 0 && errno != EEXIST)
        common::throw_errno("create grant store " + part);
    }
  }
}

// Exclusive writer lock on <dir>/.lock, released on destruction (and by the kernel if we die).
class DirLock {
 public:
  explicit DirLock(const std::string& dir) {
    std::string path = dir + "/.lock";
    fd_ = UniqueFd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640));
    if (!fd_) common::throw_errno("open grant store lock " + path);
    while (::flock(fd_.get(), LOCK_EX) != 0) {
      if (errno != EINTR) common::throw_errno("lock grant store " + path);
    }
  }

 private:
  UniqueFd fd_;
};

bool read_small(const std::string& path, std::string* out, size_t limit) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return false;
  out->clear();
  char buf[8192];
  while (true) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) break;
    out->append(buf, static_cast<size_t>(n));
    if (out->size() > limit) return false;
  }
  return true;
}

void fsync_dir(const std::string& dir) {
  UniqueFd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!d) common::throw_errno("open grant store " + dir);
  if (::fsync(d.get()) != 0) common::throw_errno("fsync grant store " + dir);
}

std::optional<Grant> read_grant(const std::string& path) {
  std::string data;
  if (!read_small(path, &data, kMaxGrantFileBytes)) return std::nullopt;
  try {
    return grant_from_json(nlohmann::json::parse(data));
  } catch (const std::exception& e) {
    common::log_warn("skipping unreadable grant file", {{"file", path}, {"error", e.what()}});
    return std::nullopt;
  }
}

}  // namespace

std::string new_grant_id() {
  unsigned char b[6];
  size_t got = 0;
  while (got < sizeof b) {
    ssize_t n = ::getrandom(b + got, sizeof b - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      common::throw_errno("getrandom");
    }
    got += static_cast<size_t>(n);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = "g-";
  for (unsigned char c : b) {
    id += kHex[c >> 4];
    id += kHex[c & 15];
  }
  return id;
}

DirGrantStore::DirGrantStore(std::string dir, bool create) : dir_(std::move(dir)) {
  while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
  if (dir_.empty()) throw common::UsageError("grant store: empty directory path");
  if (create) mkdirs(dir_);
  struct stat st {};
  if (::stat(dir_.c_str(), &st) != 0) common::throw_errno("grant store " + dir_);
  if (!S_ISDIR(st.st_mode)) throw common::UsageError("grant store " + dir_ + " is not a directory");
}

std::vector<Grant> DirGrantStore::load() const {
  std::vector<Grant> out;
  DIR* d = ::opendir(dir_.c_str());
  if (!d) common::throw_errno("open grant store " + dir_);
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string_view n = e->d_name;
    if (n.size() > kSuffix.size() && n.ends_with(kSuffix) && n[0] != '.') names.emplace_back(n);
    if (names.size() > kMaxGrants) break;
  }
  ::closedir(d);
  if (names.size() > kMaxGrants) {
    throw common::UsageError("grant store " + dir_ + " holds more than " + std::to_string(kMaxGrants) +
                             " grants; revoke or prune some");
  }
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    // A file can vanish between readdir and open (pruned by a writer): that is not an error.
    if (auto g = read_grant(dir_ + "/" + n)) out.push_back(std::move(*g));
  }
  return out;
}

void DirGrantStore::write_locked(const Grant& g) {
  if (!valid_id(g.id)) throw common::UsageError("grant id '" + g.id + "' is malformed (expected g-<12 hex>)");
  std::string tmp = dir_ + "/." + g.id + ".tmp";
  std::string final_path = dir_ + "/" + g.id + std::string(kSuffix);
  std::string data = grant_to_json(g).dump(2) + "\n";
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640));
    if (!fd) common::throw_errno("create " + tmp);
    size_t off = 0;
    while (off < data.size()) {
      ssize_t n = ::write(fd.get(), data.data() + off, data.size() - off);
      if (n < 0) {
        if (errno == EINTR) continue;
        common::throw_errno("write " + tmp);
      }
      off += static_cast<size_t>(n);
    }
    if (::fsync(fd.get()) != 0) common::throw_errno("fsync " + tmp);
  }
  if (::rename(tmp.c_str(), final_path.c_str()) != 0) common::throw_errno("rename " + tmp);
  fsync_dir(dir_);
}

void DirGrantStore::add(const Grant& g) {
  DirLock lock(dir_);
  // Leftovers of writers that died mid-write: never renamed, so never acknowledged.
  if (DIR* d = ::opendir(dir_.c_str())) {
    while (dirent* e = ::readdir(d)) {
      std::string_view n = e->d_name;
      if (n.starts_with(".g-") && n.ends_with(".tmp")) ::unlinkat(::dirfd(d), e->d_name, 0);
    }
    ::closedir(d);
  }
  std::string final_path = dir_ + "/" + g.id + std::string(kSuffix);
  if (::access(final_path.c_str(), F_OK) == 0) throw common::UsageError("grant " + g.id + " already exists");
  write_locked(g);
}

std::optional<Grant> DirGrantStore::revoke(std::string_view id, std::string_view by, std::string_view reason,
                                           UnixSeconds now) {
  if (!valid_id(id)) return std::nullopt;
  DirLock lock(dir_);
  auto g = read_grant(dir_ + "/" + std::string(id) + std::string(kSuffix));
  if (!g) return std::nullopt;
  if (g->revoked_at) {
    throw common::UsageError("grant " + g->id + " was already revoked at " + format_rfc3339(*g->revoked_at));
  }
  g->revoked_at = now;
  g->revoked_by = by;
  g->revoke_reason = reason;
  write_locked(*g);
  return g;
}

std::vector<Grant> DirGrantStore::sweep(UnixSeconds now, int64_t retention_seconds) {
  DirLock lock(dir_);
  std::vector<Grant> newly_expired;
  bool removed = false;
  for (auto& g : load()) {
    if (g.effective_expiry() + retention_seconds < now) {
      std::string path = dir_ + "/" + g.id + std::string(kSuffix);
      if (::unlink(path.c_str()) == 0) removed = true;
      continue;
    }
    if (!g.live(now) && !g.expire_recorded && !g.revoked_at) {
      g.expire_recorded = true;
      write_locked(g);
      newly_expired.push_back(std::move(g));
    }
  }
  if (removed) fsync_dir(dir_);
  return newly_expired;
}

}  // namespace sshring::policy
