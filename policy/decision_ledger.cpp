#include "policy/decision_ledger.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "common/sha256.h"
#include "common/unique_fd.h"
#include "policy/grant_store.h"
#include "policy/snapshot_cache.h"

namespace sshring::policy {
namespace {

constexpr std::string_view kFormat = "sshring-decisions/v1";
constexpr size_t kMaxFileBytes = size_t{512} * 1024 * 1024;

bool remembered_kind(DecisionKind k) noexcept {
  return k == DecisionKind::kRevoke || k == DecisionKind::kDeny;
}

std::string base_of(const std::string& path) {
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string dir_of(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

DecisionLedger::DecisionLedger(std::string path, size_t max_entries)
    : path_(std::move(path)), max_entries_(max_entries) {}

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
  // The same decision in another armor is the same decision: compare what was signed.
  size_t added = 0;
  for (const auto& d : it->second.decisions) {
    const std::string signed_text = canonical_decision(g.request, d);
    if (std::any_of(g.decisions.begin(), g.decisions.end(), [&](const GrantDecision& x) {
          return x.kind == d.kind && canonical_decision(g.request, x) == signed_text;
        }))
      continue;
    g.decisions.push_back(d);
    ++added;
  }
  return added;
}

// What decides a request is its earliest counted revoke (any principal may revoke) and its earliest
// counted deny, and which deny counts depends on the policy (its signer must be an approver). So
// the earliest counted revoke is kept, and the earliest counted deny of each signer: a handful per
// request however many copies (the same decision in another armor, more of them) a writer plants.
bool DecisionLedger::remember(const CheckedGrant& c) {
  if (c.status == GrantStatus::kRejected) return false;
  const SignedGrant& g = c.object;
  // check() lists one checked decision per stored one, in order, for every grant it did not reject.
  if (c.decisions.size() != g.decisions.size()) return false;
  const GrantDecision* revoke = nullptr;
  std::vector<const GrantDecision*> denies;  // earliest per signer
  for (size_t i = 0; i < g.decisions.size(); ++i) {
    const GrantDecision& d = g.decisions[i];
    if (!remembered_kind(d.kind) || !c.decisions[i].counted) continue;
    if (d.kind == DecisionKind::kRevoke) {
      if (!revoke || d.at < revoke->at) revoke = &d;
      continue;
    }
    auto same = std::find_if(denies.begin(), denies.end(),
                             [&](const GrantDecision* x) { return x->signer == d.signer; });
    if (same == denies.end()) {
      denies.push_back(&d);
    } else if (d.at < (*same)->at) {
      *same = &d;
    }
  }
  if (!revoke && denies.empty()) return false;
  auto [it, fresh] = map_.try_emplace(key_of(g.request));
  SignedGrant& kept = it->second;
  if (fresh) {
    kept.request = g.request;
    kept.signature = g.signature;
  }
  bool learned = false;
  auto keep = [&](const GrantDecision& d) {
    auto same = std::find_if(kept.decisions.begin(), kept.decisions.end(), [&](const GrantDecision& k) {
      return k.kind == d.kind && (d.kind == DecisionKind::kRevoke || k.signer == d.signer);
    });
    if (same == kept.decisions.end()) {
      kept.decisions.push_back(d);
    } else if (d.at < same->at) {
      *same = d;
    } else {
      return;
    }
    learned = true;
  };
  if (revoke) keep(*revoke);
  for (const GrantDecision* d : denies) keep(*d);
  if (!learned) return false;
  versions_[g.id()] = next_version_++;
  learned_at_[it->first] = next_version_;
  dirty_ = true;
  if (map_.size() > max_entries_) evict();
  return true;
}

// Over the cap, the requesters holding the most entries lose their oldest, so nobody can push out
// another principal's revocations by minting and withdrawing requests of their own. It goes 1%
// below the cap at once, so the sort is paid once per that many new entries, not on each one.
void DecisionLedger::evict() {
  const size_t target = max_entries_ - max_entries_ / 100;
  std::unordered_map<std::string, std::vector<std::pair<uint64_t, const std::string*>>> by_requester;
  for (const auto& [k, v] : map_) by_requester[v.request.requester].emplace_back(learned_at_[k], &k);
  // Newest last, so the oldest is popped from the back.
  for (auto& [r, list] : by_requester) std::sort(list.begin(), list.end(), std::greater<>());
  std::vector<std::pair<size_t, std::string>> heap;  // (entries, requester): the largest on top
  heap.reserve(by_requester.size());
  for (const auto& [r, list] : by_requester) heap.emplace_back(list.size(), r);
  std::make_heap(heap.begin(), heap.end());
  std::vector<std::string> drop;
  size_t left = map_.size();
  while (left > target && !heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    auto& [n, requester] = heap.back();
    auto& list = by_requester[requester];
    drop.push_back(*list.back().second);
    list.pop_back();
    --left;
    if (--n == 0) {
      heap.pop_back();
    } else {
      std::push_heap(heap.begin(), heap.end());
    }
  }
  for (const auto& k : drop) {
    learned_at_.erase(k);
    map_.erase(k);
  }
}

uint64_t DecisionLedger::version(std::string_view id) const noexcept {
  if (versions_.empty()) return 0;
  auto it = versions_.find(std::string(id));
  return it == versions_.end() ? 0 : it->second;
}

void DecisionLedger::prune(UnixSeconds now) {
  const size_t before = map_.size();
  std::erase_if(map_, [&](const auto& kv) {
    if (grant_horizon(kv.second) >= now) return false;
    learned_at_.erase(kv.first);
    return true;
  });
  if (map_.size() == before) return;
  dirty_ = true;
  std::unordered_map<std::string, uint64_t> live;
  for (const auto& [k, v] : map_)
    if (auto it = versions_.find(v.id()); it != versions_.end()) live.insert(*it);
  versions_ = std::move(live);
}

bool DecisionLedger::load(std::string* why, bool read_only) {
  map_.clear();
  learned_at_.clear();
  if (path_.empty()) return true;
  // Whoever can write the ledger can make a reader forget: the cache directory's rule.
  const std::string dir = dir_of(path_);
  struct stat dst {};
  if (::lstat(dir.c_str(), &dst) != 0 && errno == ENOENT) return true;  // nothing kept yet
  common::UniqueFd dfd(open_cache_dir(dir, why));
  if (!dfd) return false;
  common::UniqueFd fd(::openat(dfd.get(), base_of(path_).c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
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
  if (auto no = untrusted(st, path_); !no.empty()) {
    *why = no;
    return false;
  }
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
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
    if (!j.is_object() || j.value("format", "") != kFormat || !j.contains("grants") ||
        !j["grants"].is_array())
      throw std::runtime_error("not a " + std::string(kFormat) + " file");
  } catch (const std::exception& e) {
    if (read_only) {
      *why = path_ + ": " + e.what();
      return false;
    }
    // Kept for whoever investigates, and out of the way of the next save.
    const std::string aside = path_ + ".unreadable";
    (void)::rename(path_.c_str(), aside.c_str());
    *why = path_ + ": " + e.what() + " (moved to " + aside + ")";
    return false;
  }
  // One bad entry costs that entry only.
  size_t bad = 0;
  for (const auto& gj : j["grants"]) {
    try {
      SignedGrant g = signed_grant_from_json(gj);
      std::erase_if(g.decisions, [](const GrantDecision& d) { return !remembered_kind(d.kind); });
      if (g.decisions.empty()) continue;
      versions_[g.id()] = next_version_++;
      std::string key = key_of(g.request);
      learned_at_[key] = next_version_;
      map_.insert_or_assign(std::move(key), std::move(g));
    } catch (const std::exception&) {
      ++bad;
    }
  }
  if (bad > 0) {
    *why = path_ + ": " + std::to_string(bad) + " unreadable entries skipped";
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
  if (common::UniqueFd dfd(open_cache_dir(dir, why)); !dfd) return false;
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
