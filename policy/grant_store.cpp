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
#include <cstdlib>
#include <cstring>

#include "common/error.h"
#include "common/log.h"
#include "common/unique_fd.h"

namespace sshring::policy {
namespace {

using common::UniqueFd;

constexpr std::string_view kSuffix = ".grant";
constexpr std::string_view kTmpPrefix = ".tmp-";

void mkdirs(const std::string& dir) {
  for (size_t i = 1; i <= dir.size(); ++i) {
    if (i == dir.size() || dir[i] == '/') {
      std::string part = dir.substr(0, i);
      if (::mkdir(part.c_str(), 0750) != 0 && errno != EEXIST)
        common::throw_errno("create grant store " + part);
    }
  }
}

// Exclusive writer lock on <dir>/.lock, released on destruction (and by the kernel if we die). The lock
// file is opened without following a symlink and must be a regular file.
class DirLock {
 public:
  DirLock(int dfd, const std::string& dir) {
    fd_ = UniqueFd(::openat(dfd, ".lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0640));
    if (!fd_) common::throw_errno("open grant store lock " + dir + "/.lock (a symlink there is refused)");
    struct stat st {};
    if (::fstat(fd_.get(), &st) != 0 || !S_ISREG(st.st_mode))
      throw common::UsageError("grant store lock " + dir + "/.lock is not a regular file; remove it");
    while (::flock(fd_.get(), LOCK_EX) != 0) {
      if (errno != EINTR) common::throw_errno("lock grant store " + dir + "/.lock");
    }
  }

 private:
  UniqueFd fd_;
};

// Reads a regular file of at most `limit` bytes without following symlinks or blocking (FIFOs,
// devices and sockets are refused). False with *why on anything else.
bool read_small(int dfd, const std::string& name, std::string* out, size_t limit, std::string* why) {
  UniqueFd fd(::openat(dfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
  if (!fd) {
    *why = errno == ELOOP ? "is a symlink" : std::strerror(errno);
    return false;
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    *why = "is not a regular file";
    return false;
  }
  if (static_cast<uint64_t>(st.st_size) > limit) {
    *why = "is larger than " + std::to_string(limit) + " bytes";
    return false;
  }
  out->clear();
  char buf[8192];
  while (true) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      *why = std::strerror(errno);
      return false;
    }
    if (n == 0) break;
    out->append(buf, static_cast<size_t>(n));
    if (out->size() > limit) {
      *why = "is larger than " + std::to_string(limit) + " bytes";
      return false;
    }
  }
  return true;
}

// Why a file is skipped goes to *skip (empty: a file that vanished, with quiet_missing); null logs it.
std::optional<SignedGrant> read_grant(int dfd, const std::string& dir, const std::string& name,
                                      bool quiet_missing, std::string* skip = nullptr) {
  std::string data, why;
  auto skipped = [&](const char* what, const std::string& err) {
    if (skip) {
      *skip = err;
    } else {
      common::log_warn(what, {{"file", dir + "/" + name}, {"error", err}});
    }
    return std::nullopt;
  };
  if (!read_small(dfd, name, &data, kMaxGrantFileBytes, &why)) {
    if (quiet_missing && why == std::strerror(ENOENT)) return std::nullopt;
    return skipped("skipping grant file", why);
  }
  try {
    auto g = signed_grant_from_json(nlohmann::json::parse(data));
    if (name != g.id() + std::string(kSuffix))
      throw common::UsageError("file name does not match its id " + g.id());
    return g;
  } catch (const std::exception& e) {
    return skipped("skipping unreadable grant file", e.what());
  }
}

std::vector<std::string> list_names(int dfd, const std::string& dir, std::string_view prefix,
                                    std::string_view suffix, size_t limit) {
  int d2 = ::dup(dfd);
  if (d2 < 0) common::throw_errno("dup grant store fd");
  DIR* d = ::fdopendir(d2);
  if (!d) {
    ::close(d2);
    common::throw_errno("open grant store " + dir);
  }
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string_view n = e->d_name;
    if (n.size() > suffix.size() + prefix.size() && n.starts_with(prefix) && n.ends_with(suffix))
      names.emplace_back(n);
    if (names.size() > limit) break;
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

UnixSeconds grant_horizon(const SignedGrant& g) noexcept {
  UnixSeconds last = g.request.created;
  for (const auto& d : g.decisions) last = std::max(last, d.at);
  return last + std::max<int64_t>(g.request.ttl_seconds, 0) + kMaxRequestTtlSeconds;
}

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

DirGrantStore::DirGrantStore(std::string dir, bool create, size_t max_files)
    : dir_(std::move(dir)), max_files_(max_files) {
  while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
  if (dir_.empty()) throw common::UsageError("grant store: empty directory path");
  if (create) mkdirs(dir_);
  UniqueFd fd(open_dir());
}

int DirGrantStore::open_dir() const {
  UniqueFd fd(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOTDIR || errno == ELOOP)
      throw common::UsageError("grant store " + dir_ + " is not a directory (symlinks are refused)");
    common::throw_errno("grant store " + dir_);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) common::throw_errno("stat grant store " + dir_);
  if (st.st_mode & S_IWOTH)
    throw common::UsageError("grant store " + dir_ + " is writable by everyone; run chmod o-w " + dir_);
  if (st.st_uid != 0 && st.st_uid != ::geteuid())
    throw common::UsageError("grant store " + dir_ + " is owned by uid " + std::to_string(st.st_uid) +
                             ", neither root nor us; chown it");
  return fd.release();
}

std::vector<SignedGrant> DirGrantStore::load() const {
  UniqueFd dfd(open_dir());
  // Only grants count toward kMaxGrants: files that are not one (planted by whoever can write the
  // store) are skipped with one warning per load, so junk cannot push the real grants over the
  // limit. The names read are bounded too, at a multiple of it.
  auto names = list_names(dfd.get(), dir_, "", kSuffix, max_files_);
  if (names.size() > max_files_) {
    throw common::UsageError("grant store " + dir_ + " holds more than " + std::to_string(max_files_) +
                             " *.grant files; remove the ones that are not grants, or prune");
  }
  std::vector<SignedGrant> out;
  out.reserve(std::min(names.size(), kMaxGrants));
  size_t skipped = 0;
  std::string first_skip;
  for (const auto& n : names) {
    if (n[0] == '.') continue;
    std::string why;
    // A file can vanish between readdir and open (pruned by a writer): that is not an error.
    if (auto g = read_grant(dfd.get(), dir_, n, true, &why)) {
      out.push_back(std::move(*g));
    } else if (!why.empty() && skipped++ == 0) {
      first_skip = n;
      first_skip += ": ";
      first_skip += why;
    }
  }
  if (skipped > 0)
    common::log_warn("skipping files in the grant store that are not readable grants",
                     {{"store", dir_}, {"files", std::to_string(skipped)}, {"first", first_skip}});
  if (out.size() > kMaxGrants) {
    throw common::UsageError("grant store " + dir_ + " holds more than " + std::to_string(kMaxGrants) +
                             " grants; revoke or prune some");
  }
  return out;
}

void DirGrantStore::write_locked(int dfd, const SignedGrant& g) {
  if (!valid_grant_id(g.id()))
    throw common::UsageError("grant id '" + g.id() + "' is malformed (expected g-<12 hex>)");
  std::string final_name = g.id() + std::string(kSuffix);
  std::string data = signed_grant_to_json(g).dump(2) + "\n";
  if (data.size() > kMaxGrantFileBytes) throw common::UsageError("grant " + g.id() + " would exceed 64 KiB");
  std::string tmpl = dir_ + "/" + std::string(kTmpPrefix) + "XXXXXX";
  {
    UniqueFd fd(::mkostemp(tmpl.data(), O_CLOEXEC));  // O_EXCL: a planted file or symlink is never reused
    if (!fd) common::throw_errno("create temp file in " + dir_);
    ::fchmod(fd.get(), 0640);
    size_t off = 0;
    while (off < data.size()) {
      ssize_t n = ::write(fd.get(), data.data() + off, data.size() - off);
      if (n < 0) {
        if (errno == EINTR) continue;
        ::unlink(tmpl.c_str());
        common::throw_errno("write " + tmpl);
      }
      off += static_cast<size_t>(n);
    }
    if (::fsync(fd.get()) != 0) common::throw_errno("fsync " + tmpl);
  }
  std::string tmp_name = tmpl.substr(dir_.size() + 1);
  if (::renameat(dfd, tmp_name.c_str(), dfd, final_name.c_str()) != 0) common::throw_errno("rename " + tmpl);
  if (::fsync(dfd) != 0) common::throw_errno("fsync grant store " + dir_);
}

void DirGrantStore::add(const SignedGrant& g) {
  UniqueFd dfd(open_dir());
  DirLock lock(dfd.get(), dir_);
  // Leftovers of writers that died mid-write: never renamed, so never acknowledged.
  for (const auto& n : list_names(dfd.get(), dir_, kTmpPrefix, "", kMaxGrants))
    ::unlinkat(dfd.get(), n.c_str(), 0);
  std::string final_name = g.id() + std::string(kSuffix);
  struct stat st {};
  if (::fstatat(dfd.get(), final_name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0)
    throw common::UsageError("grant " + g.id() + " already exists");
  write_locked(dfd.get(), g);
}

std::optional<SignedGrant> DirGrantStore::get(std::string_view id) const {
  if (!valid_grant_id(id)) return std::nullopt;
  UniqueFd dfd(open_dir());
  return read_grant(dfd.get(), dir_, std::string(id) + std::string(kSuffix), true);
}

std::optional<SignedGrant> DirGrantStore::update(std::string_view id,
                                                 const std::function<void(SignedGrant&)>& change) {
  if (!valid_grant_id(id)) return std::nullopt;
  UniqueFd dfd(open_dir());
  DirLock lock(dfd.get(), dir_);
  auto g = read_grant(dfd.get(), dir_, std::string(id) + std::string(kSuffix), true);
  if (!g) return std::nullopt;
  change(*g);
  if (g->id() != id) throw common::UsageError("a grant update may not change its id");
  write_locked(dfd.get(), *g);
  return g;
}

size_t DirGrantStore::prune(UnixSeconds now, int64_t retention_seconds) {
  UniqueFd dfd(open_dir());
  DirLock lock(dfd.get(), dir_);
  size_t removed = 0;
  for (const auto& g : load()) {
    if (grant_horizon(g) + retention_seconds >= now) continue;
    std::string name = g.id() + std::string(kSuffix);
    if (::unlinkat(dfd.get(), name.c_str(), 0) == 0) ++removed;
  }
  if (removed && ::fsync(dfd.get()) != 0) common::throw_errno("fsync grant store " + dir_);
  return removed;
}

}  // namespace sshring::policy
