#include "policy/snapshot_cache.h"

#include <fcntl.h>
#include <openssl/sha.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/log.h"
#include "common/sha256.h"
#include "common/unique_fd.h"

namespace sshring::policy {
namespace {

constexpr int kFormat = 1;

using common::sha256_hex;

void write_all(int fd, std::string_view data, const std::string& path) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      common::throw_errno("write " + path);
    }
    off += static_cast<size_t>(n);
  }
}

bool read_all(int dfd, const std::string& name, const std::string& path, std::string* out, std::string* why) {
  common::UniqueFd fd(::openat(dfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd) {
    *why = errno == ELOOP ? path + ": a symlink (refused)" : path + ": " + std::strerror(errno);
    return false;
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    *why = path + ": " + std::strerror(errno);
    return false;
  }
  if (!S_ISREG(st.st_mode)) {
    *why = path + ": not a regular file (refused)";
    return false;
  }
  if (auto no = untrusted(st, path); !no.empty()) {
    *why = no;
    return false;
  }
  char buf[65536];
  while (true) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      *why = path + ": " + std::strerror(errno);
      return false;
    }
    if (n == 0) return true;
    out->append(buf, static_cast<size_t>(n));
    if (out->size() > kMaxCacheBytes) {
      *why = path + ": larger than " + std::to_string(kMaxCacheBytes) + " bytes";
      return false;
    }
  }
}

// The checksummed part: everything but the checksum itself (nlohmann sorts keys: deterministic).
nlohmann::json body(const std::string& source, const SourceData& d, UnixSeconds saved_at) {
  auto grants = nlohmann::json::array();
  for (const auto& g : d.grants) grants.push_back(*g);
  return {{"format", kFormat},          {"source", source},        {"saved_at", saved_at},
          {"revision", d.revision},     {"policy", d.policy_text}, {"policy_origin", d.policy_origin},
          {"grants", std::move(grants)}};
}

}  // namespace

std::string untrusted(const struct stat& st, const std::string& what) {
  if (st.st_uid != ::geteuid() && st.st_uid != 0)
    return what + " is owned by uid " + std::to_string(st.st_uid) + ", neither us (uid " +
           std::to_string(::geteuid()) + ") nor root; chown it to the service user";
  if (st.st_mode & (S_IWGRP | S_IWOTH))
    return what + " is writable by group or others; run chmod go-w " + what;
  return {};
}

int open_cache_dir(const std::string& dir, std::string* why) {
  common::UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) {
    *why = errno == ENOTDIR || errno == ELOOP
               ? "cache directory " + dir + " is not a directory (symlinks are refused)"
               : "cache directory " + dir + ": " + std::strerror(errno);
    return -1;
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    *why = "stat cache directory " + dir + ": " + std::strerror(errno);
    return -1;
  }
  if (auto no = untrusted(st, "cache directory " + dir); !no.empty()) {
    *why = no;
    return -1;
  }
  return fd.release();
}

std::string cached_snapshot_path(const std::string& dir, const std::string& source) {
  return dir + "/snapshot-" + sha256_hex(source).substr(0, 16) + ".json";
}

void save_cached_snapshot(const std::string& dir, const std::string& source, const SourceData& data,
                          UnixSeconds now) {
  if (::mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST)
    common::throw_errno("create cache directory " + dir);
  std::string why;
  common::UniqueFd dfd(open_cache_dir(dir, &why));
  if (!dfd) throw common::UsageError(why);
  // The checksum is over the body as dumped; load re-dumps the body it parsed and compares. The
  // member is appended to the same text rather than dumping everything a second time (at 100,000
  // grants that is tens of MiB); key order in the file does not matter to the parser.
  std::string text = body(source, data, now).dump();
  const std::string sum = sha256_hex(text);
  text.pop_back();  // the closing brace
  text += R"(,"sha256":")" + sum + "\"}";
  const std::string path = cached_snapshot_path(dir, source);
  const std::string name = path.substr(dir.size() + 1), tmp_name = name + ".tmp", tmp = path + ".tmp";
  {
    // Never an existing file: a planted symlink or file at the temp name is not written through.
    // One left by a write that died (or planted) is removed first; unlink removes a symlink itself.
    constexpr int kFlags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
    common::UniqueFd fd(::openat(dfd.get(), tmp_name.c_str(), kFlags, 0640));
    if (!fd && errno == EEXIST) {
      if (::unlinkat(dfd.get(), tmp_name.c_str(), 0) != 0 && errno != ENOENT)
        common::throw_errno("remove stale " + tmp);
      fd = common::UniqueFd(::openat(dfd.get(), tmp_name.c_str(), kFlags, 0640));
    }
    if (!fd) common::throw_errno("create " + tmp);
    write_all(fd.get(), text, tmp);
    if (::fsync(fd.get()) != 0) common::throw_errno("fsync " + tmp);
  }
  if (::renameat(dfd.get(), tmp_name.c_str(), dfd.get(), name.c_str()) != 0)
    common::throw_errno("rename " + tmp + " to " + path);
  if (::fsync(dfd.get()) != 0) common::throw_errno("fsync cache directory " + dir);
}

std::optional<CachedSnapshot> load_cached_snapshot(const std::string& dir, const std::string& source,
                                                   std::string* why) {
  const std::string path = cached_snapshot_path(dir, source);
  common::UniqueFd dfd(open_cache_dir(dir, why));
  if (!dfd) return std::nullopt;
  std::string text;
  if (!read_all(dfd.get(), path.substr(dir.size() + 1), path, &text, why)) return std::nullopt;
  try {
    auto j = nlohmann::json::parse(text);
    std::string sum = j.at("sha256").get<std::string>();
    CachedSnapshot c;
    c.source = j.at("source").get<std::string>();
    c.saved_at = j.at("saved_at").get<UnixSeconds>();
    c.data.revision = j.at("revision").get<int64_t>();
    c.data.policy_text = j.at("policy").get<std::string>();
    c.data.policy_origin = j.at("policy_origin").get<std::string>();
    for (auto& g : j.at("grants").get<std::vector<std::string>>())
      c.data.grants.push_back(std::make_shared<const std::string>(std::move(g)));
    // Compared as JSON: a get<int>() would wrap a crafted 4294967297 onto format 1.
    if (j.at("format") != nlohmann::json(kFormat)) {
      *why = path + ": cache format " + j.at("format").dump() + " is not " + std::to_string(kFormat);
      return std::nullopt;
    }
    if (sha256_hex(body(c.source, c.data, c.saved_at).dump()) != sum) {
      *why = path + ": checksum mismatch (a corrupt or torn cache file); it is ignored";
      return std::nullopt;
    }
    if (c.source != source) {
      *why = path + ": caches " + c.source + ", not " + source;
      return std::nullopt;
    }
    return c;
  } catch (const std::exception& e) {
    *why = path + ": unreadable cache (" + e.what() + ")";
    return std::nullopt;
  }
}

SnapshotCacheWriter::SnapshotCacheWriter(std::string dir, std::string source,
                                         std::function<void()> on_failure, std::chrono::milliseconds interval)
    : dir_(std::move(dir)),
      source_(std::move(source)),
      on_failure_(std::move(on_failure)),
      interval_(interval),
      thread_([this] { run(); }) {}

SnapshotCacheWriter::~SnapshotCacheWriter() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();  // writes what is pending first
}

void SnapshotCacheWriter::submit(SourceData d, UnixSeconds now) {
  {
    std::lock_guard lock(mu_);
    pending_ = std::move(d);
    pending_at_ = now;
    ++submitted_;
  }
  cv_.notify_all();
}

void SnapshotCacheWriter::flush() {
  std::unique_lock lock(mu_);
  const uint64_t want = submitted_;
  ++flushing_;
  cv_.notify_all();  // a write held back by the interval goes now
  cv_.wait(lock, [&] { return done_ >= want; });
  --flushing_;
}

uint64_t SnapshotCacheWriter::failed() const {
  std::lock_guard lock(mu_);
  return failed_;
}

void SnapshotCacheWriter::run() {
  // Below the threads that decide: at 100,000 grants a write is a few hundred ms of CPU.
  ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 10);
  std::unique_lock lock(mu_);
  auto next_write = std::chrono::steady_clock::now();
  while (true) {
    cv_.wait(lock, [&] { return pending_ || stopping_; });
    if (!pending_) return;  // stopping, nothing left
    // At most one write per interval (bursts of changes become one write of the newest data), except
    // when someone waits for it or the writer is going away.
    cv_.wait_until(lock, next_write, [&] { return stopping_ || flushing_ > 0; });
    SourceData d = std::move(*pending_);
    pending_.reset();
    const UnixSeconds at = pending_at_;
    const uint64_t covers = submitted_;  // everything submitted so far is this or older
    lock.unlock();
    bool ok = true;
    try {
      save_cached_snapshot(dir_, source_, d, at);
    } catch (const std::exception& e) {
      // Deciding goes on; only a restart during an outage would miss this snapshot.
      common::log_error("cannot write the snapshot cache", {{"dir", dir_}, {"error", e.what()}});
      ok = false;
    }
    if (!ok && on_failure_) on_failure_();
    lock.lock();
    next_write = std::chrono::steady_clock::now() + interval_;
    if (!ok) ++failed_;
    done_ = covers;
    cv_.notify_all();
  }
}

}  // namespace sshring::policy
