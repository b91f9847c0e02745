#include "policy/etcd/store.h"

#include <openssl/sha.h>
#include <sys/random.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "common/civil_time.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/json_number.h"
#include "common/log.h"
#include "common/sha256.h"

namespace sshring::policy::etcd {
namespace {

constexpr int kCasAttempts = 16;  // rewrites of one grant racing other writers

std::string random_hex(size_t bytes) {
  std::string raw(bytes, '\0');
  size_t got = 0;
  while (got < bytes) {
    ssize_t n = ::getrandom(raw.data() + got, bytes - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      common::throw_errno("getrandom");
    }
    got += static_cast<size_t>(n);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : raw) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

std::string chunk_key(const Keys& k, std::string_view digest_hex, size_t i) {
  char n[16];
  (void)std::snprintf(n, sizeof n, "%04zu", i);
  return k.policy_blob(digest_hex) + n;
}

PolicyMeta meta_from(const KeyValue& kv) {
  auto j = nlohmann::json::parse(kv.value);
  PolicyMeta m;
  m.digest = j.at("digest").get<std::string>();
  auto size = common::json_uint(j, "size"), chunks = common::json_uint(j, "chunks");
  if (!size || !chunks) throw std::runtime_error("policy meta: size and chunks must be whole numbers");
  m.size = *size;
  m.chunks = *chunks;
  m.author = j.value("author", "");
  m.pushed_at = j.value("pushed_at", "");
  m.push_id = j.value("push_id", "");
  m.revision = kv.mod_revision;
  return m;
}

std::string hex_of(const std::string& digest) {
  return digest.starts_with("sha256:") ? digest.substr(7) : digest;
}

std::optional<SignedGrant> parse_grant(const KeyValue& kv) {
  try {
    return signed_grant_from_json(nlohmann::json::parse(kv.value));
  } catch (const std::exception& e) {
    common::log_warn("skipping unreadable grant in etcd", {{"key", kv.key}, {"error", e.what()}});
    return std::nullopt;
  }
}

}  // namespace

std::string sha256_hex(std::string_view data) {
  return common::sha256_hex(data);
}

bool grant_key_matches(const Keys& k, std::string_view key, std::string_view value, std::string* why) {
  auto j = nlohmann::json::parse(value, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return true;
  auto it = j.find("id");
  if (it == j.end() || !it->is_string()) return true;
  const auto& id = it->get_ref<const std::string&>();
  if (key == k.grant(id)) return true;
  if (why)
    *why = "the value is grant " + id.substr(0, 64) + ", which belongs under " + k.grant(id.substr(0, 64));
  return false;
}

EtcdGrantStore::EtcdGrantStore(std::shared_ptr<Client> client, std::string prefix)
    : client_(std::move(client)), keys_(std::move(prefix)) {}

std::string EtcdGrantStore::location() const {
  std::string s = "etcd://";
  const auto& eps = client_->options().endpoints;
  for (size_t i = 0; i < eps.size(); ++i) s += (i ? "," : "") + eps[i];
  return s + keys_.prefix();
}

std::vector<SignedGrant> EtcdGrantStore::load() const {
  auto r = client_->list(keys_.grants(), 0, static_cast<int64_t>(kMaxGrants) + 1);
  if (r.kvs.size() > kMaxGrants) {
    throw common::UsageError(location() + " holds more than " + std::to_string(kMaxGrants) +
                             " grants; revoke or prune some");
  }
  base_revision_ = r.revision;
  std::vector<SignedGrant> out;
  out.reserve(r.kvs.size());
  for (const auto& kv : r.kvs) {
    std::string why;
    if (!grant_key_matches(keys_, kv.key, kv.value, &why)) {
      ++misplaced_;
      common::log_warn("skipping a grant stored under another key than its id",
                       {{"key", kv.key}, {"error", why}});
      continue;
    }
    if (auto g = parse_grant(kv)) out.push_back(std::move(*g));
  }
  return out;
}

// One lease per hour of (expiry + retention): bounded by (max TTL + retention) / 1 h, whatever the
// number of grants. The bucket's lease id lives at PREFIX/leases/<end>, attached to that lease.
int64_t EtcdGrantStore::bucket_lease(UnixSeconds gc_at, UnixSeconds now) {
  const int64_t end = (gc_at / kLeaseBucketSeconds + 1) * kLeaseBucketSeconds;
  const std::string key = keys_.lease(end);
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto r = client_->get(key);
    if (!r.kvs.empty()) {
      int64_t id = std::strtoll(r.kvs[0].value.c_str(), nullptr, 10);
      if (id != 0 && client_->lease_ttl(id) > 0) return id;
    }
    int64_t id = client_->lease_grant(std::max<int64_t>(end - now, 60) + 60);
    auto t = client_->txn({{key, Compare::Target::kMod, r.kvs.empty() ? 0 : r.kvs[0].mod_revision}},
                          {{Op::Kind::kPut, key, std::to_string(id), id}});
    if (t.succeeded) return id;
    client_->lease_revoke(id);  // another writer made the bucket's lease first: use theirs
  }
  throw common::UsageError("etcd: cannot agree on the lease for " + key +
                           " (too many concurrent writers); retry");
}

void EtcdGrantStore::add(const SignedGrant& g) {
  const std::string key = keys_.grant(g.id());
  const std::string value = signed_grant_to_json(g).dump();
  const int64_t lease = bucket_lease(grant_horizon(g) + kDefaultGrantRetentionSeconds, common::unix_now_s());
  auto t = client_->txn({{key, Compare::Target::kCreate, 0}}, {{Op::Kind::kPut, key, value, lease}});
  if (!t.succeeded) {
    // A retried Txn whose first attempt was applied finds its own grant: that is success.
    auto r = client_->get(key);
    if (r.kvs.empty() || r.kvs[0].value != value)
      throw common::UsageError("grant " + g.id() + " already exists in " + location());
    last_revision_ = r.kvs[0].mod_revision;
    return;
  }
  last_revision_ = t.revision;
}

// Read, change, write back only if nobody wrote in between (mod_revision unchanged); on a race the
// change is applied again to the newer object. A change that throws aborts without writing.
std::optional<SignedGrant> EtcdGrantStore::update(std::string_view id,
                                                  const std::function<void(SignedGrant&)>& change) {
  const std::string key = keys_.grant(id);
  for (int attempt = 0; attempt < kCasAttempts; ++attempt) {
    auto r = client_->get(key);
    if (r.kvs.empty()) return std::nullopt;
    auto g = parse_grant(r.kvs[0]);
    if (!g) {
      throw common::UsageError("grant " + std::string(id) + " in " + location() +
                               " is unreadable; see the warning above");
    }
    if (g->id() != id) {
      throw common::UsageError(key + " in " + location() + " holds grant " + g->id() + ", not " +
                               std::string(id) + "; refusing to change it");
    }
    base_revision_ = r.kvs[0].mod_revision;
    change(*g);
    // A decision can move the horizon: the grant follows to the lease of its new bucket.
    const int64_t lease =
        bucket_lease(grant_horizon(*g) + kDefaultGrantRetentionSeconds, common::unix_now_s());
    Op put{Op::Kind::kPut, key, signed_grant_to_json(*g).dump(), lease};
    auto t = client_->txn({{key, Compare::Target::kMod, r.kvs[0].mod_revision}}, {put});
    if (t.succeeded) {
      last_revision_ = t.revision;
      return g;
    }
  }
  throw common::UsageError("grant " + std::string(id) + " keeps changing under concurrent writers; retry");
}

// The bucket leases collect these too, an hour late at most; prune keeps `grant list` exact.
size_t EtcdGrantStore::prune(UnixSeconds now, int64_t retention_seconds) {
  size_t removed = 0;
  auto r = client_->list(keys_.grants());
  for (const auto& kv : r.kvs) {
    auto g = parse_grant(kv);
    if (!g || grant_horizon(*g) + retention_seconds >= now) continue;
    // Compare-and-delete: a concurrent rewrite wins and the next prune looks again.
    auto t = client_->txn({{kv.key, Compare::Target::kMod, kv.mod_revision}}, {{Op::Kind::kDelete, kv.key}});
    if (t.succeeded) {
      ++removed;
      last_revision_ = t.revision;
    }
  }
  return removed;
}

std::optional<PolicyMeta> read_policy_meta(Client& c, const Keys& k) {
  auto r = c.get(k.policy_current());
  if (r.kvs.empty()) return std::nullopt;
  try {
    return meta_from(r.kvs[0]);
  } catch (const std::exception& e) {
    throw common::UsageError(k.policy_current() + ": unreadable policy record (" + e.what() +
                             "); push the policy again");
  }
}

std::optional<PublishedPolicy> read_policy(Client& c, const Keys& k, int64_t revision) {
  auto r = c.get(k.policy_current(), revision);
  if (r.kvs.empty()) return std::nullopt;
  PublishedPolicy p;
  try {
    p.meta = meta_from(r.kvs[0]);
  } catch (const std::exception& e) {
    throw common::UsageError(k.policy_current() + ": unreadable policy record (" + e.what() +
                             "); push the policy again");
  }
  // The chunks as of the same revision: a push racing this read cannot mix two texts.
  auto chunks = c.list(k.policy_blob(hex_of(p.meta.digest)), r.revision);
  for (const auto& kv : chunks.kvs) p.text += kv.value;
  if (chunks.kvs.size() != p.meta.chunks || p.text.size() != p.meta.size ||
      "sha256:" + sha256_hex(p.text) != p.meta.digest) {
    throw common::UsageError(k.policy_blob(hex_of(p.meta.digest)) +
                             ": the stored policy does not match its digest " + p.meta.digest +
                             "; push the policy again");
  }
  return p;
}

PushResult push_policy(Client& c, const Keys& k, const std::string& text, const std::string& author,
                       UnixSeconds now, int64_t base_revision) {
  const std::string hex = sha256_hex(text);
  const size_t chunks = (text.size() + kPolicyChunkBytes - 1) / kPolicyChunkBytes;
  for (size_t i = 0; i < chunks; ++i)
    c.put(chunk_key(k, hex, i), text.substr(i * kPolicyChunkBytes, kPolicyChunkBytes));
  const std::string push_id = random_hex(8);
  nlohmann::json meta = {{"digest", "sha256:" + hex},
                         {"size", text.size()},
                         {"chunks", chunks},
                         {"author", author},
                         {"pushed_at", common::format_rfc3339(now)},
                         {"push_id", push_id}};
  auto t = c.txn({{k.policy_current(), Compare::Target::kMod, base_revision}},
                 {{Op::Kind::kPut, k.policy_current(), meta.dump()}});
  PushResult out;
  auto live = read_policy_meta(c, k);
  if (!t.succeeded && !(live && live->push_id == push_id)) {
    out.live = live;  // someone else pushed since base_revision
    if (!live || hex_of(live->digest) != hex) c.txn({}, {{Op::Kind::kDeletePrefix, k.policy_blob(hex)}});
    return out;
  }
  out.pushed = true;
  out.revision = live ? live->revision : t.revision;
  // Blobs no `current` refers to any more (a reader mid-fetch reads at its own revision, so it still
  // sees them until compaction).
  auto blobs = c.list(k.policy_blobs());
  const std::string keep = k.policy_blob(hex);
  for (const auto& kv : blobs.kvs)
    if (!kv.key.starts_with(keep)) c.del(kv.key);
  return out;
}

}  // namespace sshring::policy::etcd
