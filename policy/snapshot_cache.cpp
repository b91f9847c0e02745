#include "policy/snapshot_cache.h"

#include <fcntl.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/error.h"
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

bool read_all(const std::string& path, std::string* out, std::string* why) {
  common::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    *why = path + ": " + std::strerror(errno);
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
  return {{"format", kFormat},      {"source", source},        {"saved_at", saved_at},
          {"revision", d.revision}, {"policy", d.policy_text}, {"policy_origin", d.policy_origin},
          {"grants", d.grants}};
}

}  // namespace

std::string cached_snapshot_path(const std::string& dir, const std::string& source) {
  return dir + "/snapshot-" + sha256_hex(source).substr(0, 16) + ".json";
}

void save_cached_snapshot(const std::string& dir, const std::string& source, const SourceData& data,
                          UnixSeconds now) {
  if (::mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST)
    common::throw_errno("create cache directory " + dir);
  nlohmann::json j = body(source, data, now);
  std::string text = j.dump();
  j["sha256"] = sha256_hex(text);
  text = j.dump();
  const std::string path = cached_snapshot_path(dir, source);
  const std::string tmp = path + ".tmp";
  {
    common::UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640));
    if (!fd) common::throw_errno("create " + tmp);
    write_all(fd.get(), text, tmp);
    if (::fsync(fd.get()) != 0) common::throw_errno("fsync " + tmp);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) common::throw_errno("rename " + tmp + " to " + path);
  common::UniqueFd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!d || ::fsync(d.get()) != 0) common::throw_errno("fsync cache directory " + dir);
}

std::optional<CachedSnapshot> load_cached_snapshot(const std::string& dir, const std::string& source,
                                                   std::string* why) {
  const std::string path = cached_snapshot_path(dir, source);
  std::string text;
  if (!read_all(path, &text, why)) return std::nullopt;
  try {
    auto j = nlohmann::json::parse(text);
    std::string sum = j.at("sha256").get<std::string>();
    CachedSnapshot c;
    c.source = j.at("source").get<std::string>();
    c.saved_at = j.at("saved_at").get<UnixSeconds>();
    c.data.revision = j.at("revision").get<int64_t>();
    c.data.policy_text = j.at("policy").get<std::string>();
    c.data.policy_origin = j.at("policy_origin").get<std::string>();
    c.data.grants = j.at("grants").get<std::vector<std::string>>();
    // Compared as JSON: a get<int>() would wrap a crafted 4294967297 onto format 1.
    if (j.at("format") != nlohmann::json(kFormat)) {
      *why = path + ": cache format " + j.at("format").dump() + " is not " + std::to_string(kFormat);
      return std::nullopt;
    }
    if (sha256_hex(body(c.source, c.data, c.saved_at).dump()) != sum) {
      *why = path + ": checksum mismatch (a torn or edited cache file); it is ignored";
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

}  // namespace sshring::policy
