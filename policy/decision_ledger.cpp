#include "policy/decision_ledger.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "common/sha256.h"
#include "common/unique_fd.h"
#include "policy/grant_store.h"

namespace sshring::policy {
namespace {

constexpr std::string_view kFormat = "sshring-decisions/v1";
constexpr size_t kMaxFileBytes = size_t{512} * 1024 * 1024;

bool remembered_kind(DecisionKind k) noexcept {
  return k == DecisionKind::kRevoke || k == DecisionKind::kDeny;
}

std::string dir_of(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// Whoever can write the ledger can make a reader forget: it must be this user's alone.
bool safe(const struct stat& st, const std::string& what, std::string* why) {
  if (st.st_uid != ::geteuid()) {
    *why = what + " is owned by uid " + std::to_string(st.st_uid) + ", not this process's " +
           std::to_string(::geteuid());
    return false;
  }
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    *why = what + " is writable by group or others";
    return false;
  }
  return true;
}

bool safe_dir(const std::string& dir, std::string* why) {
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) {
    *why = dir + ": " + std::strerror(errno);
    return false;
  }
  if (!S_ISDIR(st.st_mode)) {
    *why = dir + " is not a directory";
    return false;
  }
  return safe(st, "directory " + dir, why);
}

}  // namespace

DecisionLedger::DecisionLedger(std::string path) : path_(std::move(path)) {}

std::string DecisionLedger::key_of(const GrantRequest& r) {
  std::string k = r.id;
  k.push_back('\0');
  k += common::sha256_hex(canonical_request(r));
  return k;
}

size_t DecisionLedger::restore(SignedGrant& g) const {
  if (map_.empty()) return 0;
  auto it = map_.find(key_of(g.request));
  if (it == map_.end()) return 0;
  size_t added = 0;
  for (const auto& d : it->second.decisions) {
    if (std::find(g.decisions.begin(), g.decisions.end(), d) != g.decisions.end()) continue;
    g.decisions.push_back(d);
    ++added;
  }
  return added;
}

bool DecisionLedger::remember(const CheckedGrant& c) {
  if (c.status == GrantStatus::kRejected) return false;
  const SignedGrant& g = c.object;
  // check() lists one checked decision per stored one, in order, for every grant it did not reject.
  if (c.decisions.size() != g.decisions.size()) return false;
  SignedGrant* kept = nullptr;
  bool learned = false;
  for (size_t i = 0; i < g.decisions.size(); ++i) {
    const GrantDecision& d = g.decisions[i];
    if (!remembered_kind(d.kind) || !c.decisions[i].counted) continue;
    if (!kept) {
      auto [it, fresh] = map_.try_emplace(key_of(g.request));
      kept = &it->second;
      if (fresh) {
        kept->request = g.request;
        kept->signature = g.signature;
      }
    }
    if (std::find(kept->decisions.begin(), kept->decisions.end(), d) != kept->decisions.end()) continue;
    kept->decisions.push_back(d);
    learned = true;
  }
  if (!learned) return false;
  versions_[g.id()] = next_version_++;
  dirty_ = true;
  if (map_.size() > kMaxEntries) {
    // Forget the requests whose effect ends first.
    std::vector<std::pair<UnixSeconds, std::string>> by_end;
    by_end.reserve(map_.size());
    for (const auto& [k, v] : map_) by_end.emplace_back(grant_horizon(v), k);
    const size_t drop = map_.size() - kMaxEntries;
    std::nth_element(by_end.begin(), by_end.begin() + static_cast<std::ptrdiff_t>(drop), by_end.end());
    for (size_t i = 0; i < drop; ++i) map_.erase(by_end[i].second);
  }
  return true;
}

uint64_t DecisionLedger::version(std::string_view id) const noexcept {
  if (versions_.empty()) return 0;
  auto it = versions_.find(std::string(id));
  return it == versions_.end() ? 0 : it->second;
}

void DecisionLedger::prune(UnixSeconds now) {
  const size_t before = map_.size();
  std::erase_if(map_, [&](const auto& kv) { return grant_horizon(kv.second) < now; });
  if (map_.size() != before) dirty_ = true;
}

bool DecisionLedger::load(std::string* why) {
  map_.clear();
  if (path_.empty()) return true;
  common::UniqueFd fd(::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) {
    if (errno == ENOENT) return true;
    *why = path_ + ": " + std::strerror(errno);
    return false;
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    *why = path_ + ": " + std::strerror(errno);
    return false;
  }
  if (!S_ISREG(st.st_mode)) {
    *why = path_ + " is not a regular file";
    return false;
  }
  if (!safe_dir(dir_of(path_), why) || !safe(st, path_, why)) return false;
  if (static_cast<uint64_t>(st.st_size) > kMaxFileBytes) {
    *why = path_ + " is larger than 512 MiB";
    return false;
  }
  std::string text(static_cast<size_t>(st.st_size), '\0');
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::read(fd.get(), text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      *why = path_ + ": short read";
      return false;
    }
    off += static_cast<size_t>(n);
  }
  try {
    auto j = nlohmann::json::parse(text);
    if (j.at("format").get<std::string>() != kFormat) throw std::runtime_error("not " + std::string(kFormat));
    for (const auto& gj : j.at("grants")) {
      SignedGrant g = signed_grant_from_json(gj);
      std::erase_if(g.decisions, [](const GrantDecision& d) { return !remembered_kind(d.kind); });
      if (g.decisions.empty()) continue;
      versions_[g.id()] = next_version_++;
      map_.insert_or_assign(key_of(g.request), std::move(g));
    }
  } catch (const std::exception& e) {
    map_.clear();
    *why = path_ + ": " + e.what();
    return false;
  }
  return true;
}

bool DecisionLedger::save(std::string* why) {
  if (path_.empty() || !dirty_) return true;
  const std::string dir = dir_of(path_);
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    *why = "create " + dir + ": " + std::strerror(errno);
    return false;
  }
  if (!safe_dir(dir, why)) return false;
  nlohmann::json grants = nlohmann::json::array();
  for (const auto& [k, g] : map_) grants.push_back(signed_grant_to_json(g));
  const std::string text = nlohmann::json{{"format", kFormat}, {"grants", std::move(grants)}}.dump() + "\n";
  std::string tmp = path_ + ".XXXXXX";
  common::UniqueFd fd(::mkostemp(tmp.data(), O_CLOEXEC));  // O_EXCL: never a planted file or link
  if (!fd) {
    *why = "create a temp file beside " + path_ + ": " + std::strerror(errno);
    return false;
  }
  auto fail = [&](const std::string& what) {
    *why = what + ": " + std::strerror(errno);
    ::unlink(tmp.c_str());
    return false;
  };
  if (::fchmod(fd.get(), 0600) != 0) return fail("chmod " + tmp);
  for (size_t off = 0; off < text.size();) {
    ssize_t n = ::write(fd.get(), text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail("write " + tmp);
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return fail("fsync " + tmp);
  fd.reset();
  if (::rename(tmp.c_str(), path_.c_str()) != 0) return fail("rename " + tmp);
  common::UniqueFd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!d || ::fsync(d.get()) != 0) {
    *why = "fsync " + dir + ": " + std::strerror(errno);
    return false;
  }
  dirty_ = false;
  return true;
}

}  // namespace sshring::policy
